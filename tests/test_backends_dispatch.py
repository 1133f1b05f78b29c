"""Every dispatch decision, on a CPU: stand-ins for tinycudann and nerfacc (tests/stand_ins) with
CUDA reported as available. Checked: which implementation each call takes, that CPU tensors never
reach a CUDA library, that forcing a kernel on CPU tensors names the config key, that analytic
normals and second derivatives work when a kernel lacks them, and that every preset trains,
renders and exports with the libraries installed."""
import logging
import sys
import types
from pathlib import Path

import pytest
import torch

import launch
from models import encodings, geometries
from models.networks import networks
from models.rendering import OccupancyGrid, accumulate_along_rays, ray_marching, render_packed
from models.rendering.packed import PackedSamples
from models.rendering.volume import FieldValues
from tests import capture_fixtures as fx
from tests.conftest import TINY_SCENE
from tests.stand_ins import pretend_cpu_is_cuda
from tests.test_launch import TINY_RUN, synthetic_overrides
from utils import backends

HASHGRID = {"name": "hashgrid", "n_levels": 4, "n_features_per_level": 2, "log2_hashmap_size": 10,
            "base_resolution": 4, "per_level_scale": 1.6}
INNER_KEY = "model.geometry.xyz_encoding.inner.backend"


def sdf_geometry(inner=None, grad_type="analytic", mlp=None):
    inner = dict(HASHGRID, **(inner or {}))
    cfg = {"feature_dim": 4, "grad_type": grad_type, "xyz_encoding": {"name": "with-xyz", "inner": inner}}
    if mlp is not None:
        cfg["mlp_network"] = mlp
    torch.manual_seed(0)
    return geometries.make("volume-sdf", cfg, radius=1.0, path="model.geometry")


def points(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, generator=g) * 1.6 - 0.8


def randomize(module, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.rand(p.shape, generator=g, dtype=p.dtype) * 0.2 - 0.1)


# ------------------------------------------------------------------------------------------------
# CPU tensors never reach a CUDA library
# ------------------------------------------------------------------------------------------------
def test_cpu_tensors_take_pytorch_even_with_the_libraries_and_cuda(stand_ins):
    assert torch.cuda.is_available()  # as on a CUDA machine with tinycudann and nerfacc installed
    geo = sdf_geometry()
    texture = networks.make("tcnn-mlp", {"n_neurons": 16}, n_input_dims=5, n_output_dims=3)
    p = points()
    out = geo(p)
    loss = out["sdf"].sum() + ((out["grad"].norm(dim=-1) - 1) ** 2).sum() + texture(out["feature"]).sum()
    loss.backward()
    grid = OccupancyGrid([-1, -1, -1, 1, 1, 1], resolution=8)
    grid.set_binary(torch.ones(1, 8, 8, 8, dtype=torch.bool))
    o, d = torch.zeros(16, 3) - 2.0, torch.nn.functional.normalize(torch.ones(16, 3), dim=-1)
    ray_indices, t0, t1 = ray_marching(o, d, grid=grid, render_step_size=0.05)
    samples = PackedSamples(ray_indices, t0, t1, n_rays=16)
    acc, _ = render_packed(samples, lambda s: FieldValues(rgb=torch.rand(len(s), 3), sigma=torch.rand(len(s))))
    assert acc.rgb.shape == (16, 3) and len(samples) > 0
    assert stand_ins.calls() == []


def test_auto_on_cpu_is_bit_identical_to_torch(stand_ins):
    geo_auto, geo_torch = sdf_geometry(), sdf_geometry({"backend": "torch"})
    randomize(geo_auto)
    geo_torch.load_state_dict(geo_auto.state_dict())
    p = points()
    a, b = geo_auto(p), geo_torch(p)
    assert torch.equal(a["sdf"], b["sdf"]) and torch.equal(a["grad"], b["grad"])


# ------------------------------------------------------------------------------------------------
# which kernel a call takes
# ------------------------------------------------------------------------------------------------
def test_each_hash_grid_call_picks_its_kernel(stand_ins, monkeypatch):
    pretend_cpu_is_cuda(monkeypatch, stand_ins)
    enc_auto = encodings.make("hashgrid", HASHGRID)
    enc_torch = encodings.make("hashgrid", dict(HASHGRID, backend="torch"))
    x = torch.rand(10, 3)
    assert enc_auto.backend_for(x) == "tcnn" and enc_torch.backend_for(x) == "torch"
    enc_torch(x)
    assert stand_ins.calls() == []
    enc_auto(x)
    assert stand_ins.tcnn.calls == [("encoding", "cpu")]
    # a grid tiny-cuda-nn cannot compute (3 features per level) stays on PyTorch under auto ...
    odd = encodings.make("hashgrid", dict(HASHGRID, n_features_per_level=3))
    assert odd.backend_for(x) == "torch"
    # ... and forcing tcnn on it says why, naming the key
    forced = encodings.make("hashgrid", dict(HASHGRID, n_features_per_level=3, backend="tcnn"), path="enc")
    with pytest.raises(backends.BackendError, match=r"enc.backend='tcnn' cannot be used: .*1, 2, 4 or 8 features"):
        forced(x)


def test_triton_is_next_when_tinycudann_is_missing(make_stand_ins, monkeypatch):
    installed = make_stand_ins(tcnn=False, triton=False)
    pretend_cpu_is_cuda(monkeypatch, installed)
    enc = encodings.make("hashgrid", HASHGRID)
    x = torch.rand(4, 3)
    assert enc.backend_for(x) == "torch"  # neither tinycudann nor triton
    # triton usable: the library, this grid and the compiled kernels (all faked; the real kernels:
    # test_backends_parity.py)
    monkeypatch.setattr(backends, "kernel_unavailable_reason", lambda name: None if name == "triton" else "absent")
    monkeypatch.setattr(type(enc), "_veto", lambda self, name: None)
    kernels = types.ModuleType("models.encodings.triton_hashgrid")
    kernels.kernels_work = lambda device, n_features, smoothstep: None
    monkeypatch.setitem(sys.modules, "models.encodings.triton_hashgrid", kernels)
    assert enc.backend_for(x) == "triton"


def test_rendering_calls_go_to_nerfacc_for_kernel_devices_only(stand_ins, monkeypatch):
    w = torch.rand(6)
    ray_indices = torch.tensor([0, 0, 1, 1, 1, 3])
    ref = accumulate_along_rays(w, None, ray_indices, 4, backend="torch")
    assert torch.equal(accumulate_along_rays(w, None, ray_indices, 4, backend="auto"), ref)
    assert stand_ins.calls() == []
    pretend_cpu_is_cuda(monkeypatch, stand_ins)
    torch.testing.assert_close(accumulate_along_rays(w, None, ray_indices, 4, backend="auto"), ref)
    assert stand_ins.nerfacc.calls == [("accumulate_along_rays", "cpu")]
    accumulate_along_rays(w, None, ray_indices, 4, backend="torch")
    assert len(stand_ins.nerfacc.calls) == 1  # model.backend: torch is honoured


def test_nerfacc_without_kernels_falls_back_under_auto(make_stand_ins, monkeypatch, caplog):
    installed = make_stand_ins(nerfacc_kernels_built=False)
    pretend_cpu_is_cuda(monkeypatch, installed)
    w, ray_indices = torch.rand(3), torch.tensor([0, 0, 1])
    with caplog.at_level(logging.INFO, logger="utils.backends"):
        accumulate_along_rays(w, None, ray_indices, 2, backend="auto")
    assert installed.nerfacc.calls == []
    assert any("model.backend: not using nerfacc (nerfacc's CUDA kernels did not build" in r.getMessage()
               for r in caplog.records)
    with pytest.raises(backends.BackendError, match="model.backend='nerfacc' cannot be used"):
        accumulate_along_rays(w, None, ray_indices, 2, backend="nerfacc")


# ------------------------------------------------------------------------------------------------
# forcing a kernel on CPU tensors
# ------------------------------------------------------------------------------------------------
def test_forcing_a_kernel_on_cpu_tensors_names_the_key(stand_ins):
    geo = sdf_geometry({"backend": "tcnn"})
    with pytest.raises(backends.BackendError, match=rf"{INNER_KEY}='tcnn' needs CUDA tensors, but they are on 'cpu'"):
        geo(points())
    tex = networks.make("tcnn-mlp", {"backend": "tcnn"}, n_input_dims=4, n_output_dims=3,
                        path="model.texture.mlp_network")
    with pytest.raises(backends.BackendError, match=r"model.texture.mlp_network.backend='tcnn' needs CUDA"):
        tex(torch.rand(5, 4))
    o, d = torch.zeros(4, 3), torch.ones(4, 3)
    with pytest.raises(backends.BackendError, match=r"model.backend='nerfacc' needs CUDA tensors"):
        ray_marching(o, d, aabb=[-1, -1, -1, 1, 1, 1], render_step_size=0.1, backend="nerfacc")
    assert stand_ins.calls() == []


def test_mlp_backend_tcnn_is_refused_with_the_network_to_use():
    with pytest.raises(ValueError, match=r"model.geometry.mlp_network.backend='tcnn'.*tcnn-mlp"):
        networks.make("mlp", {"backend": "tcnn"}, n_input_dims=3, n_output_dims=1, path="model.geometry.mlp_network")


# ------------------------------------------------------------------------------------------------
# analytic normals and second derivatives on kernels without them
# ------------------------------------------------------------------------------------------------
def test_analytic_normals_on_tcnn_are_taken_by_autograd(stand_ins, monkeypatch, caplog):
    pretend_cpu_is_cuda(monkeypatch, stand_ins)
    fast, ref = sdf_geometry(), sdf_geometry({"backend": "torch"})
    randomize(fast)
    ref.load_state_dict(fast.state_dict())
    p = points()
    with caplog.at_level(logging.INFO, logger="utils.backends"):
        a = fast(p)
        fast(p)
    b = ref(p)  # the explicit jacobian, in PyTorch
    notices = [r.getMessage() for r in caplog.records if "grad_type=analytic" in r.getMessage()]
    assert len(notices) == 1 and notices[0].startswith("model.geometry.grad_type=analytic")
    assert ("encoding", "cpu") in stand_ins.tcnn.calls
    torch.testing.assert_close(a["sdf"], b["sdf"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a["grad"], b["grad"], rtol=1e-4, atol=1e-5)

    def eikonal(out):
        return ((out["grad"].norm(dim=-1) - 1) ** 2).mean() + out["sdf"].abs().mean()

    # the eikonal loss differentiates the gradient again: through the stand-in's grid encoding
    g_fast = torch.autograd.grad(eikonal(a), list(fast.parameters()), allow_unused=True)
    g_ref = torch.autograd.grad(eikonal(b), list(ref.parameters()), allow_unused=True)
    for x, y in zip(g_fast, g_ref):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)


def test_tcnn_mlp_steps_aside_where_second_derivatives_are_needed(stand_ins, monkeypatch, caplog):
    pretend_cpu_is_cuda(monkeypatch, stand_ins)
    mlp = {"name": "tcnn-mlp", "n_neurons": 16, "n_hidden_layers": 1, "activation": "softplus"}
    geo = sdf_geometry({"backend": "torch"}, grad_type="autograd", mlp=mlp).train()
    p = points(50)
    with caplog.at_level(logging.INFO, logger="utils.backends"):
        out = geo(p)
        ((out["grad"].norm(dim=-1) - 1) ** 2).mean().backward()  # raises if tcnn's network ran
    assert stand_ins.calls() == []
    assert any("no second derivatives" in r.getMessage() for r in caplog.records)
    geo(p, with_grad=False)["sdf"].sum().backward()  # no double backward here: tiny-cuda-nn runs
    assert stand_ins.tcnn.calls == [("network", "cpu")]


# ------------------------------------------------------------------------------------------------
# whole runs
# ------------------------------------------------------------------------------------------------
PRESETS = sorted(p.stem for p in Path("configs").glob("*.yaml"))
SHORT = [*TINY_RUN, "trainer.max_steps=2", "trainer.val_check_interval=2", "checkpoint.every_n_train_steps=1000",
         "export.resolution=32", "system.eval_mesh_points=500", "system.save_video=false"]
FEW_SAMPLES = ["model.num_samples_per_ray=64"]  # the test renders of an untrained field are the slow part


@pytest.fixture(scope="module")
def capture_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("captures")
    return {
        "dtu": fx.write_dtu(root / "dtu", n=3, size=20).root,
        "colmap": fx.write_colmap(root / "colmap", n=3, size=20).root,
        "ngp": fx.write_ngp(root / "ngp", n=3, size=20, missing=0).root,
    }


def preset_data(preset, scene_dir, capture_dirs):
    if preset.endswith("synthetic") or preset.startswith("neus-triplane"):
        return synthetic_overrides(scene_dir)
    if preset.endswith("blender"):
        res = TINY_SCENE["resolution"]
        return [f"dataset.root_dir={scene_dir}", f"dataset.img_wh=[{res},{res}]"]
    layout = preset.split("-")[1]
    return [f"dataset.root_dir={capture_dirs[layout]}", "dataset.img_downscale=1"]


def test_presets_are_all_covered():
    assert {"neus-synthetic", "neus-blender", "nerf-blender", "neus-dtu", "neus-colmap", "nerf-colmap",
            "neus-ngp", "neus-triplane-sso"} <= set(PRESETS)


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_runs_with_the_libraries_installed(preset, stand_ins, tmp_path, tiny_scene_dir, capture_dirs):
    """A CUDA machine with tinycudann and nerfacc, the model kept on the CPU: training steps, a
    test render and the mesh export, all in PyTorch, none of it in the (CUDA-only) libraries."""
    short = [*SHORT, *FEW_SAMPLES]
    if preset.startswith("nerf"):
        # a density field has a surface to export once the occupancy grid has emptied some cells:
        # test_launch's schedule (4 steps, every sample) and threshold
        short = [*SHORT, "trainer.max_steps=4", "export.threshold=0.0"]
    code = launch.main(["--exp-dir", str(tmp_path / "exp"), "--runs-dir", str(tmp_path / "runs"),
                        "--config", f"configs/{preset}.yaml", "--train", "--accelerator", "cpu",
                        *preset_data(preset, tiny_scene_dir, capture_dirs), *short])
    assert code == 0
    (root,) = [p for name in (tmp_path / "exp").iterdir() for p in name.iterdir()]
    assert list((root / "save" / "test").glob("*.png"))
    assert list((root / "save").glob("mesh_*.ply"))
    assert stand_ins.calls() == []


@pytest.mark.slow
@pytest.mark.parametrize("preset,extra", [
    ("neus-synthetic", ["system.loss.lambda_distortion=0.01"]),
    ("nerf-blender", ["system.loss.lambda_distortion=0.01", "system.export_mesh_at_test=false",
                      "model.texture.mlp_network.name=tcnn-mlp", "model.texture.mlp_network.n_neurons=16"]),
])
def test_training_runs_through_the_kernel_paths(preset, extra, stand_ins, monkeypatch, tmp_path, tiny_scene_dir):
    """With CPU tensors sent down the kernel paths: nerfacc marches and composites, tinycudann
    encodes (and, for tcnn-mlp, runs the colour network), the distortion loss stays PyTorch."""
    pretend_cpu_is_cuda(monkeypatch, stand_ins)
    code = launch.main(["--exp-dir", str(tmp_path / "exp"), "--runs-dir", str(tmp_path / "runs"),
                        "--config", f"configs/{preset}.yaml", "--train", "--accelerator", "cpu",
                        *preset_data(preset, tiny_scene_dir, {}), *SHORT, *FEW_SAMPLES, *extra])
    assert code == 0
    kinds = {name for name, _ in stand_ins.calls()}
    assert {"traverse_grids", "accumulate_along_rays", "encoding"} <= kinds
    assert ("render_transmittance_from_alpha" if preset.startswith("neus") else "render_weight_from_density") in kinds
    if preset.startswith("nerf"):
        assert "network" in kinds
