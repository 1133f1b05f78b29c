"""Geometry fields: an encoding of the position feeding a small network.

``volume-sdf`` predicts a signed distance (negative inside) plus a feature vector, with the
SDF's spatial gradient computed analytically (the encodings' explicit Jacobians chained through
the network's hand-written input gradient: a first-order graph only), by autograd with
``create_graph``, or by central finite differences. A call whose encoding runs on a kernel
without a jacobian (tiny-cuda-nn's hash grid, see ``Encoding.has_explicit_jacobian``) takes the
analytic gradient by autograd instead, with a one-line notice: tiny-cuda-nn's grid encodings
have the second derivatives the eikonal loss needs. ``volume-density`` predicts a density.
Points are given in scene coordinates inside the box [-radius, radius]^3; ``radius`` is the
model's (``model.radius``), handed over when the model builds its geometry.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Dict, Iterator, Literal, Tuple, Union

import torch
from torch import Tensor, nn

from models import geometries
from models.encodings import encodings
from models.networks import networks
from utils import backends
from utils.config import at_least, checked, component, key_of, rule


# a finite-difference step: > 0 scene units, or 'progressive'
FD_EPS = rule(lambda v: v == "progressive" or (not isinstance(v, str) and v > 0), "must be > 0 or 'progressive'")


class BaseGeometry(nn.Module):
    """Shared parts: unit-cube mapping, encoding, network, per-step updates and regularizers."""

    def __init__(self, cfg: Any, radius: float, n_outputs: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.radius = float(radius)
        if not self.radius > 0:
            raise ValueError(f"model.radius must be > 0, got {radius}")
        self.feature_dim = int(cfg.feature_dim)  # features handed to the texture
        self.encoding = encodings.make(cfg.xyz_encoding.name, cfg.xyz_encoding, n_input_dims=3)
        self.network = networks.make(
            cfg.mlp_network.name, cfg.mlp_network, n_input_dims=self.encoding.n_output_dims, n_output_dims=n_outputs
        )

    def to_unit_cube(self, points: Tensor) -> Tensor:
        """Scene points [N, 3] in [-radius, radius]^3 -> [N, 3] in [0, 1]^3."""
        return points / (2.0 * self.radius) + 0.5

    def update_step(self, epoch: int, global_step: int) -> None:
        if hasattr(self.encoding, "update_step"):
            self.encoding.update_step(epoch, global_step)

    def regularizations(self) -> Dict[str, Tensor]:
        return self.encoding.regularizations() if hasattr(self.encoding, "regularizations") else {}


@geometries.register("volume-sdf")
class VolumeSDF(BaseGeometry):
    @dataclasses.dataclass
    class Config:
        feature_dim: int = checked(at_least(0), default=13)  # features handed to the texture, besides the SDF
        xyz_encoding: Any = component(
            "encoding", {"name": "with-xyz", "inner": {"name": "hashgrid"}}, help="position encoding"
        )
        mlp_network: Any = component(
            "network", {"name": "mlp", "n_neurons": 64, "n_hidden_layers": 1, "activation": "softplus",
                        "sphere_init": True, "sphere_init_radius": 0.5},
        )
        grad_type: Literal["analytic", "autograd", "finite_difference"] = "analytic"
        # finite-difference step in scene units, or 'progressive' to follow the finest active hash-grid level
        finite_difference_eps: Union[float, Literal["progressive"]] = checked(FD_EPS, default=1e-3)

        def check(self) -> Iterator[Tuple[str, str]]:
            enc = self.xyz_encoding
            inner = getattr(enc, "inner", None) if enc.name == "with-xyz" else enc
            if self.finite_difference_eps == "progressive" and getattr(inner, "name", None) != "progressive-hashgrid":
                yield "finite_difference_eps", "'progressive' needs a progressive hash grid encoding (progressive-hashgrid)"

    def __init__(self, cfg: "VolumeSDF.Config", radius: float = 1.0) -> None:
        super().__init__(cfg, radius, 1 + cfg.feature_dim)
        if cfg.finite_difference_eps == "progressive" and not hasattr(self.encoding, "finest_active_resolution"):
            raise ValueError(
                "model.geometry.finite_difference_eps='progressive' needs a progressive hash grid encoding"
            )

    # ------------------------------------------------------------------ queries
    def fd_eps(self) -> float:
        """The finite-difference step in scene units."""
        eps = self.cfg.finite_difference_eps
        if eps == "progressive":
            return 2.0 * self.radius / float(self.encoding.finest_active_resolution)
        return float(eps)

    def sdf(self, points: Tensor) -> Tensor:
        """points [N, 3] -> sdf [N]."""
        return self.network(self.encoding(self.to_unit_cube(points)))[:, 0]

    def forward(self, points: Tensor, with_grad: bool = True, with_laplace: bool = False) -> Dict[str, Tensor]:
        """points [N, 3] -> sdf [N], feature [N, F], and (with_grad) grad [N, 3], (with_laplace) laplace [N]."""
        x = self.to_unit_cube(points)
        out: Dict[str, Tensor] = {}
        grad_type = self.cfg.grad_type
        if with_grad and grad_type == "analytic" and not self.encoding.has_explicit_jacobian(x):
            backends.notice_once(
                f"{key_of(self.cfg, 'grad_type', 'model.geometry')}=analytic: the position encoding gives no "
                "explicit jacobian on its kernel (tiny-cuda-nn computes none); the SDF gradient is taken by "
                "autograd through it"
            )
            grad_type = "autograd"
        if not with_grad:
            raw = self.network(self.encoding(x))
        elif grad_type == "analytic":
            feats, jac = self.encoding.forward_with_jacobian(x)  # jac [N, F_enc, 3] w.r.t. unit-cube coords
            raw, d_sdf_d_feats = self.network.forward_with_input_grad(feats)
            out["grad"] = torch.einsum("nf,nfd->nd", d_sdf_d_feats, jac) / (2.0 * self.radius)
        elif grad_type == "autograd":
            raw, out["grad"] = self._autograd_grad(points)
        else:
            raw = self.network(self.encoding(x))
            out["grad"] = self._fd_grad(points)
        out["sdf"] = raw[:, 0]
        out["feature"] = raw[:, 1:]
        if with_laplace:
            out["laplace"] = self._fd_laplace(points, out["sdf"])
        return out

    def _autograd_grad(self, points: Tensor) -> Tuple[Tensor, Tensor]:
        """points [N, 3] -> (raw network output [N, 1 + F], d sdf / d points [N, 3]), the gradient
        differentiable (create_graph) while training, for the eikonal loss."""
        create_graph = self.training
        # kernels without second derivatives (tiny-cuda-nn networks) step aside while training
        marked = backends.double_backward() if create_graph else contextlib.nullcontext()
        # evaluation runs in inference mode (Lightning's default), where autograd records nothing
        with torch.inference_mode(False), torch.enable_grad(), marked:
            if points.is_inference():
                points = points.clone()  # an inference tensor cannot enter a recorded graph
            pts = points if points.requires_grad else points.detach().requires_grad_(True)
            raw = self.network(self.encoding(self.to_unit_cube(pts)))
            (grad,) = torch.autograd.grad(raw[:, 0].sum(), pts, create_graph=create_graph)
        return raw, grad

    def _offsets(self, points: Tensor) -> Tensor:
        eps = self.fd_eps()
        return torch.eye(3, dtype=points.dtype, device=points.device) * eps

    def _fd_grad(self, points: Tensor) -> Tensor:
        """Central differences: points [N, 3] -> grad [N, 3] (6 extra SDF evaluations)."""
        offsets = self._offsets(points)
        shifted = torch.cat([points[None] + offsets[:, None], points[None] - offsets[:, None]], dim=0)
        values = self.sdf(shifted.reshape(-1, 3)).reshape(2, 3, -1)
        return ((values[0] - values[1]) / (2.0 * self.fd_eps())).T

    def _fd_laplace(self, points: Tensor, sdf: Tensor) -> Tensor:
        """Sum of second central differences: points [N, 3], sdf [N] -> laplace [N]."""
        offsets = self._offsets(points)
        shifted = torch.cat([points[None] + offsets[:, None], points[None] - offsets[:, None]], dim=0)
        values = self.sdf(shifted.reshape(-1, 3)).reshape(2, 3, -1)
        return (values.sum(dim=(0, 1)) - 6.0 * sdf) / self.fd_eps() ** 2


@geometries.register("volume-density")
class VolumeDensity(BaseGeometry):
    @dataclasses.dataclass
    class Config:
        feature_dim: int = checked(at_least(0), default=15)
        xyz_encoding: Any = component("encoding", {"name": "hashgrid"})
        mlp_network: Any = component("network", {"name": "mlp", "n_neurons": 64, "n_hidden_layers": 1})
        density_activation: Literal["trunc_exp", "exp", "softplus", "relu"] = "trunc_exp"
        density_bias: float = -1.0

    def __init__(self, cfg: "VolumeDensity.Config", radius: float = 1.0) -> None:
        super().__init__(cfg, radius, 1 + cfg.feature_dim)

    def activate(self, raw: Tensor) -> Tensor:
        raw = raw + self.cfg.density_bias
        kind = self.cfg.density_activation
        if kind == "trunc_exp":
            return TruncExp.apply(raw)
        if kind == "exp":
            return torch.exp(raw)
        if kind == "softplus":
            return nn.functional.softplus(raw)
        return torch.relu(raw)

    def density(self, points: Tensor) -> Tensor:
        """points [N, 3] -> density [N]."""
        return self.activate(self.network(self.encoding(self.to_unit_cube(points)))[:, 0])

    def forward(self, points: Tensor) -> Dict[str, Tensor]:
        """points [N, 3] -> density [N], feature [N, F]."""
        raw = self.network(self.encoding(self.to_unit_cube(points)))
        return {"density": self.activate(raw[:, 0]), "feature": raw[:, 1:]}


class TruncExp(torch.autograd.Function):
    """exp(x) whose gradient is clamped at x = 15, so a large density cannot blow up the step."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(max=15.0))
