"""Systems: loss weights and schedules, optimizers and schedulers, dynamic ray sampling, loss terms."""
from pathlib import Path

import pytest
import torch

import models
import systems
from systems.config import RunContext
from systems.losses import weight_at
from systems.optim import OptimizerConfig, SchedulerConfig, make_optimizer, make_scheduler
from systems.ray_budget import DynamicRayBudget
from utils.config import ConfigError, parse_component

MODEL = {
    "name": "neus", "radius": 1.0, "num_samples_per_ray": 64, "grid": {"resolution": 8},
    "geometry": {"name": "volume-sdf", "feature_dim": 4,
                 "xyz_encoding": {"name": "with-xyz", "inner": {"name": "triplane", "resolution": 8, "n_features": 2}}},
    "texture": {"name": "volume-radiance"},
}


def neus_system(**system_cfg):
    ctx = RunContext(save_dir=Path("unused"), scene_to_world=torch.eye(4))
    return systems.make("neus-system", system_cfg, models.make("neus", MODEL), ctx)


def test_weight_schedule_is_piecewise_linear():
    assert weight_at(0.3, 100) == 0.3
    schedule = [[0, 0.0], [100, 1.0], [200, 0.5]]
    assert [weight_at(schedule, s) for s in (-5, 0, 50, 100, 150, 200, 999)] == [0.0, 0.0, 0.5, 1.0, 0.75, 0.5, 0.5]


def test_bad_schedule_is_refused_naming_the_key():
    with pytest.raises(ValueError, match="system.loss.lambda_eikonal"):
        neus_system(loss={"lambda_eikonal": [[0, 1, 2]]})


def test_per_module_learning_rates():
    system = neus_system()
    cfg = OptimizerConfig(name="Adam", lr=0.01, params={"geometry.encoding": {"lr": 0.05}, "variance": {"lr": 0.001}})
    opt = make_optimizer(cfg, system.model)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == {"geometry.encoding": 0.05, "variance": 0.001, "rest": 0.01}
    grouped = sum(len(g["params"]) for g in opt.param_groups)
    assert grouped == len([p for p in system.model.parameters() if p.requires_grad])
    with pytest.raises(ConfigError, match="geometry.encodng"):
        make_optimizer(OptimizerConfig(params={"geometry.encodng": {"lr": 1.0}}), system.model)
    with pytest.raises(ConfigError, match="Adamm"):
        make_optimizer(OptimizerConfig(name="Adamm"), system.model)


def test_schedulers_warmup_exponential_and_sequential():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = make_scheduler(SchedulerConfig(name="warmup-exponential",
                                           args={"warmup_steps": 10, "decay_to": 0.1, "total_steps": 110}), opt, 110)
    lrs = []
    for _ in range(110):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    opt2 = torch.optim.SGD([param], lr=1.0)
    seq = parse_component(SchedulerConfig, {
        "name": "SequentialLR", "milestones": [5],
        "schedulers": [{"name": "LinearLR", "args": {"start_factor": 0.5, "total_iters": 5}},
                       {"name": "ExponentialLR", "args": {"gamma": 0.5}}],
    })
    sched2 = make_scheduler(seq, opt2, 100)
    for _ in range(7):
        opt2.step()
        sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.25)
    with pytest.raises(ConfigError, match="milestones"):
        make_scheduler(parse_component(SchedulerConfig, {**seq.__dict__, "milestones": [],
                                                         "schedulers": [s.__dict__ for s in seq.schedulers]}), opt2, 10)


def test_dynamic_ray_sampling_moves_toward_the_target():
    budget = DynamicRayBudget(initial_rays=100, target_samples_per_step=10000, min_rays=64, max_rays=1000)
    for _ in range(60):
        budget.update(budget.n_rays, budget.n_rays * 20.0)  # 20 samples per ray
    assert abs(budget.n_rays - 500) <= 5  # within 1%: the damped update has a small dead band
    for _ in range(100):
        budget.update(budget.n_rays, budget.n_rays * 0.01)  # nearly empty rays: capped
    assert budget.n_rays == 1000
    for _ in range(200):
        budget.update(budget.n_rays, budget.n_rays * 1000.0)  # very full rays: floored
    assert budget.n_rays == 64
    fixed = DynamicRayBudget(initial_rays=100, target_samples_per_step=10000, min_rays=64, max_rays=1000,
                             enabled=False)
    assert fixed.update(100, 100 * 20.0) == 100


def render_rays_at_the_origin(system, n=32):
    """A training batch of n rays from z = -2.5 towards the origin (random targets, all foreground)
    and the system's model output for it -> (batch, out)."""
    rays_o = torch.tensor([[0.0, 0.0, -2.5]]).expand(n, 3)
    rays_d = torch.nn.functional.normalize(torch.randn(n, 3) * 0.1 + torch.tensor([0.0, 0.0, 1.0]), dim=-1)
    batch = {"rays_o": rays_o, "rays_d": rays_d, "background": torch.ones(n, 3), "rgb": torch.rand(n, 3),
             "alpha": torch.ones(n)}
    return batch, system.model(rays_o, rays_d, batch["background"])


def test_loss_terms_follow_the_weights():
    system = neus_system(loss={"lambda_eikonal_random": 0.1, "lambda_mask": 0.1, "lambda_tv": 0.01,
                               "lambda_distortion": 0.01})
    system.model.train()
    system.model.update_step(0, 0)  # as training does first: the grid evaluates every cell
    batch, out = render_rays_at_the_origin(system)
    terms = system.losses(batch, out)
    assert {"rgb_l1", "eikonal", "eikonal_random", "mask", "tv", "distortion"} <= set(terms)
    assert "sparsity" not in terms and "curvature" not in terms
    sum(terms.values()).backward()
    assert system.model.variance.variance.grad is not None


def test_normal_smoothness_term_compares_normals_at_nearby_surface_points():
    from systems.losses import normal_smoothness_loss

    up = torch.tensor([[0.0, 0.0, 1.0]]).expand(4, 3)
    tilted = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0, 1.0]]), dim=-1).expand(4, 3)
    assert float(normal_smoothness_loss(up, up)) == 0.0
    assert abs(float(normal_smoothness_loss(up, tilted)) - (2.0 - 2.0 ** 0.5)) < 1e-6  # |a - b|^2 = 2 - 2 cos

    torch.manual_seed(0)
    system = neus_system(loss={"lambda_normal_smoothness": 0.1, "normal_smoothness_rays": 8})
    system.model.train()
    system.model.update_step(0, 0)
    batch, out = render_rays_at_the_origin(system)
    points = system.model.surface_points(batch["rays_o"], batch["rays_d"], out, 8)
    assert points.shape == (8, 3)  # the sphere-init surface is hit by every ray; at most 8 are used
    # near the zero level set (still blurry: inv_s ~ 20), on the camera's side of the initial blob
    with torch.no_grad():
        sdf = system.model.geometry.sdf(points)
    assert float(sdf.abs().max()) < 0.1 and bool((points[:, 2] < 0).all())
    terms = system.losses(batch, out)
    assert float(terms["normal_smoothness"]) > 0.0
    terms["normal_smoothness"].backward()
    assert sum(float(p.grad.abs().sum()) for p in system.model.geometry.network.parameters() if p.grad is not None) > 0


def test_curvature_needs_laplace():
    with pytest.raises(ValueError, match="compute_laplace"):
        neus_system(loss={"lambda_curvature": 0.1})


# ------------------------------------------------------------------------------------------------
# loss terms against hand computations
# ------------------------------------------------------------------------------------------------
def test_loss_terms_match_hand_computations():
    import math

    from systems.losses import curvature_loss, eikonal_loss, mask_loss, opaque_loss, sparsity_loss

    # eikonal: gradients of length 1, 2 and 0 -> ((0)^2 + (1)^2 + (-1)^2) / 3
    grads = torch.tensor([[0.0, 0.6, 0.8], [2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert float(eikonal_loss(grads)) == pytest.approx(2.0 / 3.0)
    # mask: binary cross-entropy; opacity is clamped to [1e-3, 1 - 1e-3] first
    opacity, mask = torch.tensor([0.9, 0.2, 1.0]), torch.tensor([1.0, 0.0, 0.0])
    expected = -(math.log(0.9) + math.log(0.8) + math.log(1e-3)) / 3
    assert float(mask_loss(opacity, mask)) == pytest.approx(expected, rel=1e-4)
    # opaque: the binary entropy of opacity, largest at 0.5
    assert float(opaque_loss(torch.tensor([0.5]))) == pytest.approx(math.log(2.0), rel=1e-5)
    assert float(opaque_loss(torch.tensor([0.5, 0.999]))) < float(opaque_loss(torch.tensor([0.5])))
    # sparsity: mean of exp(-scale |sdf|)
    sdf = torch.tensor([0.0, 0.5, -1.0])
    assert float(sparsity_loss(sdf, 2.0)) == pytest.approx((1.0 + math.exp(-1.0) + math.exp(-2.0)) / 3)
    # curvature: mean absolute Laplacian
    assert float(curvature_loss(torch.tensor([1.0, -3.0, 0.5]))) == pytest.approx(1.5)


def test_a_scheduled_loss_weight_is_applied_in_the_training_step(monkeypatch):
    """A [[step, value], ...] weight ramps the term's share of the step's loss with the (schedule) step."""
    system = neus_system(loss={"lambda_eikonal": [[0, 0.0], [100, 1.0]], "lambda_rgb_l1": 0.5})
    monkeypatch.setattr(system, "log", lambda *args, **kwargs: None)  # (no Trainer to log to)
    monkeypatch.setattr(system, "losses", lambda batch, out: {"eikonal": torch.tensor(2.0), "rgb_l1": torch.tensor(5.0)})
    system.model.train()
    batch, _ = render_rays_at_the_origin(system, n=8)
    totals = []
    for step in (0, 50, 100, 400):
        system.schedule_step = step  # as on_train_batch_start sets it
        totals.append(float(system.training_step(batch, 0)["loss"]))
    assert totals == pytest.approx([2.5, 3.5, 4.5, 4.5])
