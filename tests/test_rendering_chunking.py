"""Chunked evaluation equals one big call."""
import torch

from models.rendering import chunked


def render(rays_o, rays_d, scale):
    return {
        "rgb": torch.sigmoid(rays_o * scale + rays_d),
        "depth": rays_d.norm(dim=-1),
        "num_samples": torch.tensor(rays_o.shape[0] * 3),
        "count": rays_o.shape[0],
        "name": "render",
    }


def test_chunked_matches_single_call():
    g = torch.Generator().manual_seed(0)
    o, d = torch.randn(103, 3, generator=g), torch.randn(103, 3, generator=g)
    calls = []

    def fn(*args):
        calls.append(args[0].shape[0])
        assert args[2] == 2.0  # non-tensor arguments pass through unchanged
        return render(*args)

    out = chunked(fn, 103, 25, o, d, 2.0)
    full = render(o, d, 2.0)
    assert calls == [25, 25, 25, 25, 3]
    # equal up to rounding: vectorized kernels may round a short tail chunk differently
    assert torch.allclose(out["rgb"], full["rgb"], rtol=0, atol=1e-6)
    assert torch.allclose(out["depth"], full["depth"], rtol=0, atol=1e-6)
    assert int(out["num_samples"]) == 309 and out["count"] == 103  # scalars are summed
    assert out["name"] == "render"  # other values: the first chunk's


def test_chunked_moves_outputs():
    out = chunked(lambda x: {"y": x * 2}, 10, 4, torch.arange(10.0), move_to="cpu")
    assert torch.equal(out["y"], torch.arange(10.0) * 2)


def test_chunked_merges_dataclasses_field_by_field():
    """A RenderOutput-like dataclass (with a nested one and None fields) merges like a dict."""
    import dataclasses
    from typing import Optional

    @dataclasses.dataclass
    class Inner:
        value: torch.Tensor
        count: torch.Tensor

    @dataclasses.dataclass
    class Out:
        rgb: torch.Tensor
        count: torch.Tensor
        extra: Optional[torch.Tensor] = None
        inner: Optional[Inner] = None

    def fn(x):
        return Out(rgb=x * 2, count=torch.tensor(float(x.shape[0])), inner=Inner(x + 1, torch.tensor(1.0)))

    out = chunked(fn, 10, 4, torch.arange(10.0))
    assert isinstance(out, Out) and out.extra is None
    assert torch.equal(out.rgb, torch.arange(10.0) * 2) and float(out.count) == 10.0
    assert isinstance(out.inner, Inner) and torch.equal(out.inner.value, torch.arange(10.0) + 1)
    assert float(out.inner.count) == 3.0  # three chunks
