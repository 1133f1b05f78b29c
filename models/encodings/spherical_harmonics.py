"""Real spherical harmonics of view directions, any degree, with an analytic jacobian.

Basis (orthonormal on the unit sphere, Condon-Shortley phase included, the convention of
tiny-cuda-nn and of ``scipy.special.sph_harm_y``'s real parts): for band l and order m,

    Y_l0  = K_l0 P_l(z)
    Y_lm  = sqrt(2) K_lm (-1)^m Re((x + i y)^m) P_l^(m)(z)      m > 0
    Y_l-m = sqrt(2) K_lm (-1)^m Im((x + i y)^m) P_l^(m)(z)      m > 0

with K_lm = sqrt((2l + 1) / (4 pi) (l - m)! / (l + m)!) and P_l^(m) the m-th derivative of the
Legendre polynomial P_l: on the unit sphere (x + i y)^m P_l^(m)(z) is the associated Legendre
function times e^{i m phi}, so every basis function is a polynomial in x, y, z. Outputs are
ordered by l, then m = -l..l (index l^2 + l + m).

Inputs are unit direction vectors with components in [-1, 1] (not the [0, 1] that
tiny-cuda-nn's encoding takes); they are not renormalized.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple

import numpy as np
import torch
from numpy.polynomial import legendre as npleg
from numpy.polynomial import polynomial as nppoly

from models.encodings import register
from models.encodings.base import Encoding
from utils.config import checked, in_range

MAX_DEGREE = 8


def _tables(degree: int):
    """Per output: (order |m|, uses Im, constant, z-polynomial coefficients (power basis))."""
    rows = []
    for l in range(degree):
        p_l = npleg.leg2poly([0] * l + [1])  # P_l in the power basis
        for m in range(-l, l + 1):
            am = abs(m)
            q = nppoly.polyder(p_l, am) if am > 0 else p_l
            k = math.sqrt((2 * l + 1) / (4 * math.pi) * math.factorial(l - am) / math.factorial(l + am))
            const = k if m == 0 else math.sqrt(2.0) * k * (-1) ** am
            coef = np.zeros(degree)
            coef[: len(q)] = q
            rows.append((am, m < 0, const, coef))
    return rows


@register("spherical-harmonics")
class SphericalHarmonics(Encoding):
    """Unit directions d [N, 3] (components in [-1, 1]) -> real SH up to band degree-1: [N, degree^2]."""

    @dataclass
    class Config:
        degree: int = checked(in_range(1, MAX_DEGREE), default=4)  # number of bands: degree 4 -> 16 outputs

    def __init__(self, cfg: "SphericalHarmonics.Config", n_input_dims: int = 3):
        super().__init__()
        if n_input_dims != 3:
            raise ValueError(f"spherical-harmonics needs 3 input dims, got {n_input_dims}")
        if not 1 <= cfg.degree <= MAX_DEGREE:
            raise ValueError(f"spherical-harmonics degree must be in 1..{MAX_DEGREE}, got {cfg.degree}")
        self.cfg = cfg
        self.degree = cfg.degree
        self.n_input_dims = 3
        self.n_output_dims = cfg.degree**2
        rows = _tables(cfg.degree)
        # column of [A_0..A_{deg-1}, B_0..B_{deg-1}] each output multiplies
        ab_col = [am + (cfg.degree if im else 0) for am, im, _, _ in rows]
        self.register_buffer("ab_col", torch.tensor(ab_col, dtype=torch.long), persistent=False)
        self.register_buffer(
            "const", torch.tensor([c for _, _, c, _ in rows], dtype=torch.float64), persistent=False
        )
        coef = np.stack([c for _, _, _, c in rows])  # [F, degree]: z^j coefficient
        dcoef = np.zeros_like(coef)  # d/dz of each z-polynomial
        dcoef[:, :-1] = coef[:, 1:] * np.arange(1, cfg.degree)
        self.register_buffer("zcoef", torch.tensor(coef, dtype=torch.float64), persistent=False)
        self.register_buffer("dzcoef", torch.tensor(dcoef, dtype=torch.float64), persistent=False)

    def _parts(self, d: torch.Tensor, with_jac: bool):
        x, y, z = d.unbind(-1)
        deg = self.degree
        A = [torch.ones_like(x)]
        B = [torch.zeros_like(x)]
        for _ in range(1, deg):
            a, b = A[-1], B[-1]
            A.append(x * a - y * b)  # Re((x + iy)^m)
            B.append(x * b + y * a)  # Im((x + iy)^m)
        zp = [torch.ones_like(z)]
        for _ in range(1, deg):
            zp.append(zp[-1] * z)
        Z = torch.stack(zp, dim=-1)  # [N, deg]
        AB = torch.stack(A + B, dim=-1)  # [N, 2 deg]
        dt = d.dtype
        const = self.const.to(dt)
        q = Z @ self.zcoef.to(dt).t()  # [N, F]
        ab = AB[:, self.ab_col]
        out = const * ab * q
        if not with_jac:
            return out, None
        # d/dx (x+iy)^m = m (x+iy)^{m-1}; d/dy = i m (x+iy)^{m-1}
        m = torch.arange(deg, dtype=dt, device=d.device)
        Am1 = torch.stack([torch.zeros_like(x)] + A[:-1], dim=-1)  # A_{m-1} (0 for m = 0)
        Bm1 = torch.stack([torch.zeros_like(x)] + B[:-1], dim=-1)
        dA_dx, dA_dy = m * Am1, -m * Bm1
        dB_dx, dB_dy = m * Bm1, m * Am1
        dAB_dx = torch.cat([dA_dx, dB_dx], dim=-1)[:, self.ab_col]
        dAB_dy = torch.cat([dA_dy, dB_dy], dim=-1)[:, self.ab_col]
        dq = Z @ self.dzcoef.to(dt).t()
        jac = torch.stack([const * dAB_dx * q, const * dAB_dy * q, const * ab * dq], dim=-1)
        return out, jac

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        """d [N, 3] unit directions -> [N, degree^2]."""
        return self._parts(d, False)[0]

    def forward_with_jacobian(self, d: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """d [N, 3] -> (features [N, F], d features / d d [N, F, 3]) of the polynomials (no renormalization)."""
        return self._parts(d, True)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, degree={self.degree}"
