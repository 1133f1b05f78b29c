"""Pruning samples after marching (model.alpha_thre / model.early_stop_eps) for NeuS and NeRF."""
import torch

import models
from models.neus import neus_alpha, slope_along_rays

SDF_GEOMETRY = {
    "name": "volume-sdf",
    "feature_dim": 5,
    "xyz_encoding": {"name": "with-xyz", "inner": {"name": "triplane", "resolution": 16, "n_features": 4}},
    "mlp_network": {"name": "mlp", "n_neurons": 32, "n_hidden_layers": 1, "activation": "softplus",
                    "sphere_init": True, "sphere_init_radius": 0.5},
}


def rays_at_sphere(n=64):
    """Rays from z = -3 towards random points of the disc of radius 0.45 (all hit the r = 0.5 sphere)."""
    g = torch.Generator().manual_seed(0)
    target = torch.zeros(n, 3)
    target[:, :2] = (torch.rand(n, 2, generator=g) * 2 - 1) * 0.3
    origins = torch.tensor([0.0, 0.0, -3.0]).expand(n, 3).clone()
    return origins, torch.nn.functional.normalize(target - origins, dim=-1)


def test_slope_along_rays_hand_case():
    values = torch.tensor([1.0, 0.5, -1.0, 5.0, 7.0, 7.0])
    t = torch.tensor([0.0, 1.0, 2.0, 0.0, 4.0, 1.0])
    rays = torch.tensor([0, 0, 0, 1, 1, 2])
    # forward differences; a ray's last sample takes the previous one's; a lone sample is head-on (-1)
    expected = torch.tensor([-0.5, -1.5, -1.5, 0.5, 0.5, -1.0])
    assert torch.allclose(slope_along_rays(values, t, rays), expected)


def test_slope_along_a_ray_matches_the_gradient_for_a_plane():
    """For the plane sdf = z, sampled along a ray, the slope is the ray's cosine with the normal."""
    d = torch.nn.functional.normalize(torch.tensor([0.3, 0.2, -1.0]), dim=0)
    t = torch.linspace(0.0, 1.0, 9)
    sdf = 0.5 + t * d[2]
    slope = slope_along_rays(sdf, t, torch.zeros(9, dtype=torch.long))
    assert torch.allclose(slope, d[2].expand(9), atol=1e-6)
    grad = torch.tensor([[0.0, 0.0, 1.0]]).expand(9, 3)
    dists = torch.full((9,), 0.125)
    inv_s = torch.tensor(50.0)
    from models.neus import neus_alpha_from_slope
    assert torch.allclose(neus_alpha_from_slope(sdf, slope, dists, inv_s, 1.0),
                          neus_alpha(sdf, grad, d.expand(9, 3), dists, inv_s, 1.0), atol=1e-6)


def neus_model(**kw):
    torch.manual_seed(0)
    cfg = {"radius": 1.0, "grid": {"enabled": False}, "num_samples_per_ray": 256, "cos_anneal_end": 0,
           "variance": {"init_val": 0.6}, "geometry": SDF_GEOMETRY,
           "texture": {"name": "volume-radiance"}, **kw}  # inv_s = exp(6): a sharp surface
    return models.make("neus", cfg)


def render(model, rays_o, rays_d):
    model.eval()  # no stratified jitter: both models sample the same lattice
    with torch.no_grad():
        return model.render(rays_o, rays_d, torch.ones_like(rays_o))


def test_neus_early_stop_drops_samples_behind_the_surface_and_keeps_the_image():
    rays_o, rays_d = rays_at_sphere()
    a = render(neus_model(), rays_o, rays_d)
    b = render(neus_model(early_stop_eps=1e-4), rays_o, rays_d)
    # every ray enters the sphere: the samples behind its surface (most of the box) go
    assert float(b.num_samples) < 0.5 * float(a.num_samples)
    assert float(a.opacity.min()) > 0.99
    for key, tol in (("rgb", 1e-3), ("opacity", 1e-3), ("depth", 1e-3), ("normal", 1e-2)):
        assert torch.allclose(getattr(a, key), getattr(b, key), atol=tol), key


def test_neus_alpha_threshold_drops_transparent_samples():
    rays_o, rays_d = rays_at_sphere()
    ref = render(neus_model(), rays_o, rays_d)
    out = render(neus_model(alpha_thre=1e-3), rays_o, rays_d)
    # the transparent samples in front of the sphere go (inside it NeuS's alpha is ~1: they stay)
    assert float(out.num_samples) < 0.6 * float(ref.num_samples)
    assert torch.allclose(out.opacity, ref.opacity, atol=1e-2)


def test_nerf_alpha_threshold_takes_effect():
    """model.alpha_thre reaches the marcher (it used to be dropped on the way)."""
    torch.manual_seed(0)
    base = {"radius": 1.0, "grid": {"enabled": False}, "num_samples_per_ray": 128,
            "geometry": {"name": "volume-density", "feature_dim": 4, "density_bias": -4.0,
                         "xyz_encoding": {"name": "triplane", "resolution": 8, "n_features": 4}},
            "texture": {"name": "volume-radiance"}}
    rays_o, rays_d = rays_at_sphere(16)
    counts = []
    for thre in (0.0, 0.5):
        torch.manual_seed(0)
        model = models.make("nerf", {**base, "alpha_thre": thre})
        model.eval()
        with torch.no_grad():
            counts.append(float(model.render(rays_o, rays_d, torch.ones_like(rays_o)).num_samples))
    assert counts[0] > 0 and counts[1] == 0.0  # exp(-4)-ish density: every sample is far below 0.5


def test_front_to_back_estimate_keeps_the_same_samples_and_skips_what_lies_behind():
    """Opacity estimated early_stop_chunk samples per ray at a time keeps exactly the samples the
    one-go estimate keeps, and never evaluates a sample behind the point where its ray turned
    opaque (beyond the chunk it happened in)."""
    from models.rendering import ray_marching

    rays_o, rays_d = rays_at_sphere(64)
    evaluated = []

    def alpha_fn(t_starts, t_ends, ray_indices):  # a solid sphere of radius 0.5, no neighbours used
        evaluated.append(ray_indices.numel())
        mid = (t_starts + t_ends) * 0.5
        pts = rays_o[ray_indices] + rays_d[ray_indices] * mid[:, None]
        return torch.where(pts.norm(dim=-1) < 0.5, torch.full_like(mid, 0.3), torch.full_like(mid, 1e-3))

    common = dict(aabb=[-1.0, -1.0, -1.0, 1.0, 1.0, 1.0], render_step_size=0.01, alpha_fn=alpha_fn,
                  alpha_thre=1e-4, early_stop_eps=1e-3)
    one_go = ray_marching(rays_o, rays_d, **common)
    total = evaluated.pop()
    chunked = ray_marching(rays_o, rays_d, early_stop_chunk=16, **common)
    for a, b in zip(one_go, chunked):
        assert torch.equal(a, b)
    assert sum(evaluated) < 0.6 * total  # the samples behind the sphere's front were never estimated
