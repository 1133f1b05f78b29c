"""The learned background beyond the scene box (model.background): compositing, sampling reach,
losses, gradients, optimizer groups, training, and launch end to end."""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import launch
import models
import systems
from models.rendering import contract, ray_aabb_intersect
from systems.config import RunContext
from systems.optim import OptimizerConfig, make_optimizer
from tests.conftest import TINY_SCENE
from tests.test_launch import TINY_RUN, synthetic_overrides
from utils.config import load_config

TINY_HASH = {"name": "hashgrid", "n_levels": 4, "log2_hashmap_size": 12, "base_resolution": 8}
BACKGROUND = {"name": "nerf-background", "n_samples": 8, "far_plane": 200.0,
              "geometry": {"feature_dim": 4, "xyz_encoding": TINY_HASH,
                           "mlp_network": {"name": "mlp", "n_neurons": 16, "n_hidden_layers": 1}},
              "texture": {"dir_encoding": {"name": "spherical-harmonics", "degree": 2},
                          "mlp_network": {"name": "mlp", "n_neurons": 16, "n_hidden_layers": 1,
                                          "output_activation": "sigmoid"}}}
NERF = {"name": "nerf", "radius": 1.0, "num_samples_per_ray": 16, "grid": {"enabled": False},
        "geometry": {"name": "volume-density", "feature_dim": 4, "xyz_encoding": TINY_HASH},
        "texture": {"name": "volume-radiance"}}
NEUS = {"name": "neus", "radius": 1.0, "num_samples_per_ray": 32, "grid": {"enabled": False},
        "geometry": {"name": "volume-sdf", "feature_dim": 4, "xyz_encoding": {"name": "with-xyz", "inner": TINY_HASH}},
        "texture": {"name": "volume-radiance"}}


def make_model(raw, background=True, **extra):
    raw = {**raw, **extra}
    if background:
        raw["background"] = BACKGROUND
    return models.make(raw["name"], raw)


def make_system(model_raw, system_name, **system_cfg):
    ctx = RunContext(save_dir=Path("unused"), scene_to_world=torch.eye(4))
    return systems.make(system_name, system_cfg, models.make(model_raw["name"], model_raw), ctx)


def constant_field(module, density, colour):
    """Replace a density field + radiance texture by constants (density [scalar], colour [3])."""
    module.geometry.forward = lambda pts: {"density": torch.full((pts.shape[0],), density),
                                           "feature": pts.new_zeros(pts.shape[0], 4)}
    module.texture.forward = lambda feat, dirs, normal=None: torch.tensor(colour).expand(feat.shape[0], 3)


def diagonal_rays():
    """Rays through the box centre at distance 3 from it, along an axis, a face diagonal and a space
    diagonal: their chords through [-1, 1]^3 are 2, 2 sqrt 2 and 2 sqrt 3."""
    d = F.normalize(torch.tensor([[0.0, 0.0, 1.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]), dim=-1)
    return -3.0 * d, d, [2.0, 2.0 * math.sqrt(2.0), 2.0 * math.sqrt(3.0)]


# ------------------------------------------------------------------------------------------------
# off by default
# ------------------------------------------------------------------------------------------------
def test_background_is_off_in_the_presets_and_adds_nothing():
    for preset in ("neus-synthetic", "neus-blender", "neus-triplane-sso", "nerf-blender"):
        raw = load_config(f"configs/{preset}.yaml")
        assert raw.model.get("background") is None, preset
    model = make_model(NEUS, background=False)
    assert model.cfg.background is None and model.background is None
    assert not [k for k in model.state_dict() if "background" in k]
    with_bg = make_model(NEUS)
    assert [k for k in with_bg.state_dict() if k.startswith("background.")]


def test_textures_take_their_geometry_features():
    """The texture's input size is derived from its geometry's feature_dim, not configured twice."""
    model = make_model({**NERF, "geometry": {**NERF["geometry"], "feature_dim": 6}})
    sh_degree_4, sh_degree_2 = 16, 4
    assert model.texture.network.layers[0].in_features == 6 + sh_degree_4
    assert model.background.texture.network.layers[0].in_features == BACKGROUND["geometry"]["feature_dim"] + sh_degree_2


# ------------------------------------------------------------------------------------------------
# compositing
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("with_background", [False, True])
def test_compositing_matches_a_hand_computation(with_background):
    """Constant fields: foreground density 0.3 and colour c_f in the box, background density 0.002
    and colour c_b beyond it to the far plane (200), per-ray background colours behind."""
    model = make_model(NERF, background=with_background).eval()
    sigma_f, c_f, sigma_b, c_b = 0.3, [0.9, 0.2, 0.1], 0.002, [0.1, 0.3, 0.8]
    constant_field(model, sigma_f, c_f)
    if with_background:
        constant_field(model.background, sigma_b, c_b)
    rays_o, rays_d, chords = diagonal_rays()
    bg_colour = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.2, 0.7, 0.4]])
    with torch.no_grad():
        out = model(rays_o, rays_d, bg_colour)
    step = 2.0 * math.sqrt(3.0) / 16  # box diagonal / num_samples_per_ray
    for i, chord in enumerate(chords):
        # the steps of a lattice starting at the box entry whose midpoints fall inside the box
        length = math.ceil(chord / step - 0.5 - 1e-6) * step
        op_f = 1.0 - math.exp(-sigma_f * length)
        assert float(out.opacity[i]) == pytest.approx(op_f, rel=1e-5)
        fg = torch.tensor(c_f) * op_f
        if with_background:
            op_b = 1.0 - math.exp(-sigma_b * (200.0 - (3.0 + chord / 2)))  # from the box exit to the far plane
            assert float(out.background.opacity[i]) == pytest.approx(op_b, rel=1e-4)
            assert torch.allclose(out.background.rgb[i], torch.tensor(c_b) * op_b, rtol=1e-4)
            behind = torch.tensor(c_b) * op_b + (1.0 - op_b) * bg_colour[i]
        else:
            behind = bg_colour[i]
        expected = fg + (1.0 - op_f) * behind
        assert torch.allclose(out.rgb[i], expected, atol=1e-5), (i, out.rgb[i], expected)


def test_neus_composites_its_foreground_over_the_background():
    """NeuS with a background: rgb = fg + (1 - opacity) (bg + (1 - bg_opacity) colour), with the
    foreground taken from the same weights rendered without a background."""
    torch.manual_seed(0)
    plain = make_model(NEUS, background=False).eval()
    model = make_model(NEUS).eval()
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("background.") for k in missing)
    constant_field(model.background, 0.01, [0.3, 0.6, 0.9])
    rays_o = torch.tensor([[0.0, 0.0, -3.0]]).expand(6, 3)
    rays_d = F.normalize(torch.tensor([[0.0, 0.0, 1.0]]) + 0.15 * torch.randn(6, 3), dim=-1)
    colour = torch.rand(6, 3)
    with torch.no_grad():
        ref = plain(rays_o, rays_d, colour)
        out = model(rays_o, rays_d, colour)
    op = ref.opacity
    assert op.min() > 0.05 and op.max() < 0.999  # both layers matter
    fg = ref.rgb - (1.0 - op) * colour
    _, t_exit, _ = ray_aabb_intersect(rays_o, rays_d, [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])
    op_b = 1.0 - torch.exp(-0.01 * (200.0 - t_exit))[:, None]
    expected = fg + (1.0 - op) * (torch.tensor([0.3, 0.6, 0.9]) * op_b + (1.0 - op_b) * colour)
    assert torch.allclose(out.rgb, expected, atol=1e-5)
    for key in ("opacity", "depth", "normal"):  # the foreground's outputs are unchanged
        assert torch.allclose(getattr(out, key), getattr(ref, key), atol=1e-6), key
    assert out.rgb.shape == (6, 3) and out.normal.shape == (6, 3) and out.depth.shape == (6, 1)


# ------------------------------------------------------------------------------------------------
# sampling reach
# ------------------------------------------------------------------------------------------------
def test_background_samples_reach_far_beyond_the_box():
    model = make_model(NERF, background=False)
    bg = models.backgrounds.make("nerf-background", {**BACKGROUND, "far_plane": 1.0e4, "n_samples": 16}).train()
    g = torch.Generator().manual_seed(5)
    rays_o = (torch.rand(64, 3, generator=g) - 0.5) * 1.5  # inside the box
    rays_d = F.normalize(torch.randn(64, 3, generator=g), dim=-1)
    out = bg(rays_o, rays_d, model.aabb)
    t0 = out.samples.t_starts.view(64, 16)
    t1 = out.samples.t_ends.view(64, 16)
    _, t_exit, _ = ray_aabb_intersect(rays_o, rays_d, model.aabb)
    assert torch.allclose(t0[:, 0], t_exit, atol=1e-5)  # starts where the foreground ends
    assert torch.allclose(t1[:, -1], torch.full((64,), 1.0e4))  # t >> the box (|x| <= sqrt 3)
    assert torch.equal(t0[:, 1:], t1[:, :-1]) and (t1 > t0).all()
    assert ((t0[:, -1] + t1[:, -1]) / 2 > 1.0e3).all()  # the last sample itself is far out
    assert (t1[:, -2] > 4.0 * t0[:, 0]).all()  # uniform in disparity: the edges grow fast
    mid = (t0 + t1).reshape(-1, 1) / 2
    u = contract(rays_o[out.samples.ray_indices] + rays_d[out.samples.ray_indices] * mid, model.aabb, "un_bounded_sphere")
    radius = (u - 0.5).norm(dim=-1).view(64, 16)
    assert (radius >= 0.25 - 1e-6).all() and (radius < 0.5).all()  # the shell beyond the box's ball
    assert (radius[:, -1] > 0.49).all()  # the farthest samples reach the edge of contracted space
    s0, s1 = out.s_starts.view(64, 16), out.s_ends.view(64, 16)
    assert torch.allclose(s0[:, 0], torch.zeros(64)) and torch.allclose(s1[:, -1], torch.ones(64))
    assert torch.allclose(s0[:, 1:], s1[:, :-1]) and (s1 >= s0).all()


# ------------------------------------------------------------------------------------------------
# losses, gradients, optimizer
# ------------------------------------------------------------------------------------------------
def brute_distortion(w, a, b):
    m = (a + b) / 2
    return float((w[:, None] * w[None, :] * (m[:, None] - m[None, :]).abs()).sum() + (w.square() * (b - a)).sum() / 3)


def training_batch(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    rays_o = torch.tensor([[0.0, 0.0, -2.5]]).expand(n, 3)
    rays_d = F.normalize(torch.randn(n, 3, generator=g) * 0.4 + torch.tensor([0.0, 0.0, 1.0]), dim=-1)
    return {"rays_o": rays_o, "rays_d": rays_d, "background": torch.rand(n, 3, generator=g),
            "rgb": torch.rand(n, 3, generator=g), "alpha": torch.ones(n)}


def test_distortion_losses_and_gradients_reach_the_background():
    system = make_system({**NEUS, "background": BACKGROUND}, "neus-system",
                         loss={"lambda_distortion": 0.01, "lambda_distortion_bg": 0.01})
    model = system.model.train()
    model.update_step(0, 0)
    batch = training_batch()
    out = model(batch["rays_o"], batch["rays_d"], batch["background"])
    terms = system.losses(batch, out)
    assert {"rgb_l1", "eikonal", "distortion", "distortion_bg"} <= set(terms)
    # background distortion against a brute-force O(n^2) sum over each ray, in normalized disparity
    n = BACKGROUND["n_samples"]
    w = out.background.samples.weights.detach().view(-1, n)
    t0, t1 = out.background.samples.t_starts.view(-1, n), out.background.samples.t_ends.view(-1, n)
    inv0 = 1.0 / t0[:, :1]
    s0 = (inv0 - 1.0 / t0) / (inv0 - 1.0 / 200.0)
    s1 = (inv0 - 1.0 / t1) / (inv0 - 1.0 / 200.0)
    expected = sum(brute_distortion(w[r], s0[r], s1[r]) for r in range(w.shape[0])) / w.shape[0]
    assert float(terms["distortion_bg"].detach()) == pytest.approx(expected, rel=1e-4)
    assert expected > 0
    sum(system.loss_weight(k) * v for k, v in terms.items()).backward()
    for name, p in model.background.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_distortion_bg_needs_a_background():
    with pytest.raises(ValueError, match="model.background"):
        make_system(NERF, "nerf-system", loss={"lambda_distortion_bg": 0.01})
    with pytest.raises(ValueError, match="model.background"):
        make_system(NEUS, "neus-system", loss={"lambda_distortion_bg": 0.01})


def test_background_parameters_are_optimized():
    system = make_system({**NEUS, "background": BACKGROUND}, "neus-system")
    model = system.model
    bg_ids = {id(p) for p in model.background.parameters()}
    # the presets' groups: the background falls in the default-lr group
    opt = make_optimizer(OptimizerConfig(lr=0.01, params={"geometry": {"lr": 0.02}, "texture": {"lr": 0.02},
                                                          "variance": {"lr": 0.001}}), model)
    rest = next(g for g in opt.param_groups if g["name"] == "rest")
    assert bg_ids and bg_ids <= {id(p) for p in rest["params"]} and rest["lr"] == 0.01
    # or its own group
    opt = make_optimizer(OptimizerConfig(lr=0.01, params={"background": {"lr": 0.003}}), model)
    group = next(g for g in opt.param_groups if g["name"] == "background")
    assert {id(p) for p in group["params"]} == bg_ids and group["lr"] == 0.003
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


# ------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------
def test_unbounded_nerf_lowers_the_loss_on_the_tiny_scene(tiny_scene_dir):
    """Random background colours behind the object: the learned background must clear where the
    images are transparent, and the foreground must fit the object."""
    import datasets
    from datasets.datamodule import RandomRays

    torch.manual_seed(0)
    scene = datasets.make("blender", {"root_dir": str(tiny_scene_dir), "img_wh": [24, 24]})
    rays = RandomRays(scene.load_split("train"), 128, False, "random", seed=0)
    system = make_system({**NERF, "background": BACKGROUND}, "nerf-system",
                         loss={"lambda_distortion": 0.001, "lambda_distortion_bg": 0.001})
    model = system.model.train()
    opt = make_optimizer(OptimizerConfig(lr=0.05, args={"betas": [0.9, 0.99], "eps": 1e-15}), model)
    g = torch.Generator().manual_seed(1)
    losses = []
    for step in range(20):
        model.update_step(0, step)
        batch = rays.sample(g)
        out = model(batch["rays_o"], batch["rays_d"], batch["background"])
        terms = system.losses(batch, out)
        loss = sum(system.loss_weight(k) * v for k, v in terms.items())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(terms["rgb_mse"].detach()))
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.5 * first, losses


# ------------------------------------------------------------------------------------------------
# launch end to end
# ------------------------------------------------------------------------------------------------
BG_OVERRIDES = [
    "model.background.name=nerf-background", "model.background.n_samples=8",
    "model.background.geometry.xyz_encoding.n_levels=4", "model.background.geometry.xyz_encoding.log2_hashmap_size=12",
    "system.loss.lambda_distortion_bg=0.001",
]


@pytest.mark.parametrize("preset", ["neus-synthetic", "nerf-blender"])
def test_launch_with_background_trains_tests_and_exports(preset, tmp_path, tiny_scene_dir):
    from utils.checkpoint import read_checkpoint

    if preset == "neus-synthetic":
        data = synthetic_overrides(tiny_scene_dir)
        extra = []
    else:
        data = [f"dataset.root_dir={tiny_scene_dir}", "dataset.img_wh=[24,24]"]
        extra = ["export.threshold=0.0"]
    argv = ["--exp-dir", str(tmp_path / "exp"), "--runs-dir", str(tmp_path / "runs")]
    code = launch.main([*argv, "--config", f"configs/{preset}.yaml", "--train", *data, *TINY_RUN,
                        "trainer.max_steps=4", "trainer.val_check_interval=2", *BG_OVERRIDES, *extra])
    assert code == 0
    (root,) = [p for name in (tmp_path / "exp").iterdir() for p in name.iterdir()]
    ckpt = read_checkpoint(root / "ckpt" / "last.ckpt")
    assert [k for k in ckpt["state_dict"] if k.startswith("model.background.geometry.encoding")]
    assert "nerf-background" in (root / "config" / "parsed.yaml").read_text()
    assert len(list((root / "save" / "test").glob("*.png"))) == TINY_SCENE["n_test"]
    assert list((root / "save").glob("mesh_*.ply"))
    if preset == "neus-synthetic":  # the saved config rebuilds the background from the checkpoint
        code = launch.main([*argv, "--config", str(root / "config" / "parsed.yaml"), "--export",
                            "--resume", str(root / "ckpt" / "last.ckpt")])
        assert code == 0
