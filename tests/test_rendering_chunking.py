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
    assert torch.equal(out["rgb"], full["rgb"]) and torch.equal(out["depth"], full["depth"])
    assert int(out["num_samples"]) == 309 and out["count"] == 103  # scalars are summed
    assert out["name"] == "render"  # other values: the first chunk's


def test_chunked_moves_outputs():
    out = chunked(lambda x: {"y": x * 2}, 10, 4, torch.arange(10.0), move_to="cpu")
    assert torch.equal(out["y"], torch.arange(10.0) * 2)
