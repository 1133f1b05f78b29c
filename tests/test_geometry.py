"""Geometry, texture and variance parts: gradients three ways, Laplacian, shapes, NeuS opacity."""
import math

import pytest
import torch

import models
from models import geometries, textures
from models.neus import neus_alpha
from models.rendering import visual_hull_cells
from models.variance import VarianceConfig, VarianceNetwork

SDF_CFG = {
    "feature_dim": 5,
    "xyz_encoding": {"name": "with-xyz", "inner": {"name": "triplane", "resolution": 16, "n_features": 4}},
    "mlp_network": {"name": "mlp", "n_neurons": 32, "n_hidden_layers": 1, "activation": "softplus",
                    "sphere_init": True, "sphere_init_radius": 0.5},
}


def sdf_geometry(**kw):
    torch.manual_seed(0)
    return geometries.make("volume-sdf", {**SDF_CFG, **kw}, radius=1.0)


def points(n=200, scale=0.8):
    g = torch.Generator().manual_seed(1)
    return (torch.rand(n, 3, generator=g) * 2 - 1) * scale


def test_sdf_outputs_and_shapes():
    geo = sdf_geometry()
    out = geo(points(), with_grad=True)
    assert out["sdf"].shape == (200,) and out["feature"].shape == (200, 5) and out["grad"].shape == (200, 3)
    assert out["sdf"].dtype == torch.float32


def test_sphere_init_makes_a_sphere_of_the_given_radius():
    geo = sdf_geometry(mlp_network={**SDF_CFG["mlp_network"], "n_neurons": 64})
    x = points(500, 0.9)
    with torch.no_grad():
        err = (geo.sdf(x) - (x.norm(dim=-1) - 0.5)).abs()
    assert float(err.mean()) < 0.15


@pytest.mark.parametrize("grad_type", ["autograd", "finite_difference"])
def test_analytic_gradient_matches_other_ways(grad_type):
    torch.manual_seed(0)
    analytic = sdf_geometry(grad_type="analytic")
    # a trained-looking field: random plane features, not just the init
    with torch.no_grad():
        for p in analytic.encoding.parameters():
            p.normal_(0, 0.3)
    other = sdf_geometry(grad_type=grad_type, finite_difference_eps=1e-3)
    other.load_state_dict(analytic.state_dict())
    x = points(100, 0.7).double()
    analytic.double(), other.double()
    g_a = analytic(x)["grad"]
    g_o = other(x)["grad"]
    tol = 1e-6 if grad_type == "autograd" else 5e-2
    assert torch.allclose(g_a, g_o, atol=tol, rtol=tol), (g_a - g_o).abs().max()


def test_analytic_gradient_trains_the_fields_parameters():
    geo = sdf_geometry()
    with torch.no_grad():  # sphere init starts the feature columns at 0; as after a few steps:
        for p in geo.network.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    out = geo(points(), with_grad=True)
    ((out["grad"].norm(dim=-1) - 1) ** 2).mean().backward()
    table_grads = [p.grad for p in geo.encoding.parameters()]
    assert all(g is not None and float(g.abs().sum()) > 0 for g in table_grads)


def test_laplace_of_sphere_init_field():
    """For sdf = |x| - r, the Laplacian is 2 / |x|; the sphere-initialized field approximates it."""
    geo = sdf_geometry(grad_type="finite_difference", finite_difference_eps=1e-2)
    x = torch.tensor([[0.4, 0.3, 0.2], [-0.3, 0.5, 0.1]])
    lap = geo(x, with_laplace=True)["laplace"]
    assert lap.shape == (2,)
    assert torch.allclose(lap, 2.0 / x.norm(dim=-1), rtol=0.5)


def test_progressive_eps_follows_finest_level():
    geo = geometries.make("volume-sdf", {
        "xyz_encoding": {"name": "with-xyz", "inner": {"name": "progressive-hashgrid", "n_levels": 4,
                                                       "log2_hashmap_size": 12, "base_resolution": 4,
                                                       "per_level_scale": 2.0, "start_level": 1,
                                                       "update_steps": 10}},
        "finite_difference_eps": "progressive", "grad_type": "finite_difference",
    })
    first = geo.fd_eps()
    geo.update_step(0, 100)
    assert geo.fd_eps() < first


def test_progressive_eps_needs_a_progressive_grid():
    with pytest.raises(ValueError, match="progressive"):
        geometries.make("volume-sdf", {"finite_difference_eps": "progressive"})


@pytest.mark.parametrize("activation", ["trunc_exp", "exp", "softplus", "relu"])
def test_density_is_non_negative(activation):
    geo = geometries.make("volume-density", {"density_activation": activation, "feature_dim": 4,
                                         "xyz_encoding": {"name": "dense-grid", "resolution": 8}})
    out = geo(points())
    assert out["density"].shape == (200,) and out["feature"].shape == (200, 4)
    assert float(out["density"].min()) >= 0


def test_trunc_exp_gradient_is_clamped():
    from models.geometry import TruncExp

    x = torch.tensor([0.0, 20.0], requires_grad=True)
    TruncExp.apply(x).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([1.0, math.exp(15.0)]))


def test_textures():
    rad = textures.make("volume-radiance", {"use_normal": True}, n_feature_dims=5)
    feats, dirs = torch.randn(10, 5), torch.nn.functional.normalize(torch.randn(10, 3), dim=-1)
    rgb = rad(feats, dirs, dirs)
    assert rgb.shape == (10, 3) and float(rgb.min()) >= 0 and float(rgb.max()) <= 1
    with pytest.raises(ValueError, match="use_normal"):
        rad(feats, dirs)
    col = textures.make("volume-color", {}, n_feature_dims=5)
    assert col(feats).shape == (10, 3)


def test_variance_inv_s_and_modulation():
    var = VarianceNetwork(VarianceConfig(init_val=0.3))
    assert float(var.inv_s) == pytest.approx(math.exp(3.0))
    mod = VarianceNetwork(VarianceConfig(init_val=0.9, modulate=True, mod_start_steps=0, reach_max_steps=100,
                                         max_inv_s=100.0))
    mod.update_step(0, 0)
    assert float(mod.inv_s) == pytest.approx(math.exp(9.0))  # capped at the start value
    mod.update_step(0, 1000)
    assert float(mod.inv_s) == pytest.approx(100.0)  # capped at max_inv_s


def test_variance_floor_schedule():
    var = VarianceNetwork(VarianceConfig(init_val=0.3, min_inv_s=[[100, 0.0], [200, 1000.0]]))
    var.update_step(0, 50)
    assert float(var.inv_s) == pytest.approx(math.exp(3.0))  # no floor yet: the learned value
    var.update_step(0, 150)
    assert float(var.inv_s) == pytest.approx(500.0)  # halfway up the ramp
    var.inv_s.backward()
    assert float(var.variance.grad) == 0.0  # held by the floor: no gradient to the learned value
    var.update_step(0, 10_000)
    assert float(var.inv_s) == pytest.approx(1000.0)
    with pytest.raises(ValueError, match="min_inv_s"):
        VarianceNetwork(VarianceConfig(min_inv_s=[[0, 1, 2]]))


def test_neus_alpha_hand_case():
    """A section crossing the surface head-on: sdf +d/2 -> -d/2 at the ends."""
    sdf = torch.tensor([0.0])
    grad = torch.tensor([[0.0, 0.0, -1.0]])
    dirs = torch.tensor([[0.0, 0.0, 1.0]])
    dist, inv_s = torch.tensor([0.2]), torch.tensor(10.0)
    alpha = neus_alpha(sdf, grad, dirs, dist, inv_s, cos_anneal_ratio=1.0)
    prev, nxt = torch.sigmoid(torch.tensor(1.0)), torch.sigmoid(torch.tensor(-1.0))
    assert torch.allclose(alpha, ((prev - nxt + 1e-5) / (prev + 1e-5)).reshape(1))
    # leaving the surface (sdf growing along the ray) is transparent once annealed
    out = neus_alpha(sdf, -grad, dirs, dist, inv_s, cos_anneal_ratio=1.0)
    assert float(out) < 1e-3


@pytest.mark.parametrize("grid_mode", ["alpha", "shell"])
def test_mesh_extraction_skips_only_space_known_to_be_empty(grid_mode):
    """A 'shell' grid also empties the object's inside, so only the frozen (visual-hull) cells may
    be skipped when meshing; an 'alpha' grid's empty cells are all empty space."""
    model = models.make("neus", {"radius": 1.0, "grid": {"resolution": 4, "mode": grid_mode},
                                 "geometry": {"name": "volume-sdf", **SDF_CFG}})
    hull = torch.zeros(4, 4, 4, dtype=torch.bool)
    hull[1:3, 1:3, 1:3] = True
    model.grid.set_binary(hull, freeze_empty=True)
    model.grid.binaries[0, 1, 1, 1] = False  # e.g. the inside of the object in shell mode
    skip = model.known_empty_fn()
    pts = torch.tensor([[-0.25, -0.25, -0.25], [0.25, 0.25, 0.25], [-0.75, 0.75, 0.75]])
    expected = [grid_mode == "alpha", False, True]
    assert skip(pts).tolist() == expected


def test_visual_hull_is_held_occupied_then_the_shell_grid_follows_the_field():
    torch.manual_seed(0)
    model = models.make("neus", {"radius": 1.0, "num_samples_per_ray": 128,
                                 "grid": {"resolution": 16, "mode": "shell", "update_every": 1, "warmup_steps": 100,
                                          "hull_hold_steps": 3},
                                 "variance": {"init_val": 0.6},  # inv_s = exp(6): a sharp surface
                                 "geometry": {"name": "volume-sdf", **SDF_CFG}})
    # one camera on the +z axis looking down whose mask is all foreground: nothing is carved
    c2w = torch.tensor([[[1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 4.0]]])
    hull = visual_hull_cells(model.grid, c2w, torch.tensor([[8.0, 8.0, 8.0, 8.0]]), torch.ones(1, 16, 16))
    kept = model.start_grid_from_hull(hull)
    assert kept == 1.0 and bool(model.visual_hull.all())
    model.train()
    for step in range(3):
        model.update_step(0, step)
        assert bool(model.grid.binaries.all())  # held: the whole hull stays occupied
    model.update_step(0, 3)
    # released: only cells near the sphere-init surface (radius 0.5) stay; the centre and the corners go
    occupied = model.grid.binaries[0]
    assert 0.05 < occupied.float().mean() < 0.9
    assert not bool(occupied[7:9, 7:9, 7:9].any()) and not bool(occupied[0, 0, 0])


def test_visual_hull_carves_what_a_silhouette_rules_out():
    """Four cameras around a sphere of radius 0.4 with its exact silhouettes as masks: every cell
    inside the sphere stays, the box's corners and most of the rest go."""
    import math

    from datasets.cameras import camera_rays, look_at, pixel_directions

    model = models.make("neus", {"radius": 1.0, "grid": {"resolution": 16}, "geometry": {"name": "volume-sdf", **SDF_CFG}})
    size, focal = 48, 40.0
    intrinsics = torch.tensor([[focal, focal, size / 2, size / 2]]).expand(4, 4)
    c2ws, masks = [], []
    for k in range(4):
        angle = 2 * math.pi * k / 4 + 0.3
        eye = torch.tensor([3.0 * math.cos(angle), 3.0 * math.sin(angle), 0.8])
        c2w = look_at(eye, torch.zeros(3), torch.tensor([0.0, 0.0, 1.0]))
        dirs = pixel_directions(size, size, intrinsics[k]).reshape(-1, 3)
        rays_o, rays_d = camera_rays(dirs, c2w)
        # a ray hits the sphere when it passes within 0.4 of the centre
        closest = (-(rays_o * rays_d).sum(-1, keepdim=True)) * rays_d + rays_o
        masks.append((closest.norm(dim=-1) < 0.4).float().reshape(size, size))
        c2ws.append(c2w)
    hull = visual_hull_cells(model.grid, torch.stack(c2ws), intrinsics, masks)
    centres = (torch.stack(torch.meshgrid(*[torch.arange(16.0)] * 3, indexing="ij"), -1) + 0.5) / 16 * 2 - 1
    inside = centres.norm(dim=-1) < 0.4
    assert bool(hull[inside].all())  # conservative: never carves the object
    assert not bool(hull[0, 0, 0]) and not bool(hull[-1, -1, -1]) and not bool(hull[0, -1, 0])
    assert 0.02 < float(hull.float().mean()) < 0.25  # most of the box is carved


def test_cosine_annealing_blends_the_two_cosines():
    """At ratio r NeuS uses -(relu(-cos/2 + 1/2)(1 - r) + relu(-cos) r) as the SDF's slope: the
    annealed alpha lies between the ratio-0 and ratio-1 ones, and update_step sets r = step / end."""
    sdf = torch.tensor([0.05, 0.05])
    grad = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    dirs = torch.tensor([[0.0, 0.0, -0.5], [0.0, 0.0, 0.5]])  # facing the surface, and facing away
    dists, inv_s = torch.full((2,), 0.1), torch.tensor(20.0)

    def by_hand(r):
        cos = (dirs * grad).sum(-1)
        slope = -(torch.relu(-cos * 0.5 + 0.5) * (1 - r) + torch.relu(-cos) * r)
        prev = torch.sigmoid((sdf - slope * dists * 0.5) * inv_s)
        nxt = torch.sigmoid((sdf + slope * dists * 0.5) * inv_s)
        return ((prev - nxt + 1e-5) / (prev + 1e-5)).clamp(0, 1)

    for r in (0.0, 0.5, 1.0):
        assert torch.allclose(neus_alpha(sdf, grad, dirs, dists, inv_s, r), by_hand(r), atol=1e-6)
    half = neus_alpha(sdf, grad, dirs, dists, inv_s, 0.5)
    ends = torch.stack([neus_alpha(sdf, grad, dirs, dists, inv_s, r) for r in (0.0, 1.0)])
    assert bool(((half >= ends.min(0).values - 1e-7) & (half <= ends.max(0).values + 1e-7)).all())
    assert float(half[1]) > 1000 * float(ends[1, 1])  # facing away: the annealed slope still gives it opacity
    model = models.make("neus", {"radius": 1.0, "cos_anneal_end": 200, "grid": {"enabled": False},
                                 "geometry": {"name": "volume-sdf", **SDF_CFG}})
    model.update_step(0, 50)
    assert model.cos_anneal_ratio == pytest.approx(0.25)
    model.update_step(0, 500)
    assert model.cos_anneal_ratio == 1.0
