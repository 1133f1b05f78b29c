"""Evaluation that scales with the run: val/test images at 1/dataset.eval_downscale of their size
(ground truth area-averaged, intrinsics scaled, images of any size), the test's time budget
(system.test_time_share) with views visited in a spread order, the masked PSNR where the data has
masks, and no extra validation when a time budget ends training."""
import json

import numpy as np
import pytest
import torch

import launch
from datasets.base import SceneSplit, downscaled_size, eval_downscale_factor
from datasets.cameras import pixel_directions
from datasets.datamodule import ImageRays, composite, spread_order
from systems.evaluation import image_metrics
from models.outputs import RenderOutput
from tests.conftest import TINY_SCENE
from tests.test_eval_outputs import QUICK, tiny


def split_of(sizes, seed=0, masks=True):
    """A split of random images [H_i, W_i] with random alpha (0 in a corner block when masks)."""
    g = np.random.default_rng(seed)
    images = [g.random((h, w, 3), dtype=np.float32) for h, w in sizes]
    alphas = [g.random((h, w), dtype=np.float32) if masks else np.ones((h, w), np.float32) for h, w in sizes]
    n = len(sizes)
    intrinsics = torch.tensor([[1.5 * w, 1.4 * w, 0.45 * w, 0.55 * h] for h, w in sizes], dtype=torch.float32)
    c2w = torch.eye(4)[:3].expand(n, 3, 4).clone()
    return SceneSplit.from_images(c2w, intrinsics, images, alphas, has_mask=masks, names=[f"v{i}" for i in range(n)])


def test_downscaled_size_rounds_like_img_downscale():
    assert downscaled_size(300, 400, 2) == (150, 200)
    assert downscaled_size(7, 9, 2) == (4, 5)  # 3.5 and 4.5 round up
    assert downscaled_size(1, 1, 4) == (1, 1)


def test_downscaled_ground_truth_is_the_area_average_of_the_composited_image():
    split = split_of([(6, 8), (4, 10)])
    small = split.downscaled(2)
    assert small.sizes.tolist() == [[3, 4], [2, 5]]
    for i in range(2):
        h, w = split.size(i)
        for bg in (0.0, 1.0, 0.3):
            full = composite(split.image(i), split.mask(i), torch.full((h, w, 3), bg)).numpy()
            block_mean = full.reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3))  # by hand: 2x2 blocks
            shrunk = composite(small.image(i), small.mask(i), torch.full((h // 2, w // 2, 3), bg)).numpy()
            np.testing.assert_allclose(shrunk, block_mean, atol=1e-5)
        np.testing.assert_allclose(small.mask(i).numpy(), split.mask(i).numpy().reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)),
                                   atol=1e-6)


def test_downscaled_rays_pass_through_the_centres_of_the_pixel_blocks():
    split = split_of([(6, 8), (9, 12)], masks=False)
    small = split.downscaled(3)
    assert small.sizes.tolist() == [[2, 3], [3, 4]]
    # image 1 (9 x 12 -> 3 x 4, exact): small pixel (x, y) covers original pixels 3x..3x+2, its
    # centre is the original's continuous coordinate (3x + 1.5, 3y + 1.5)
    fx, fy, cx, cy = split.intrinsics[1].tolist()
    dirs = pixel_directions(4, 3, small.intrinsics[1])
    for y in range(3):
        for x in range(4):
            u, v = 3 * x + 1.5, 3 * y + 1.5
            expected = torch.tensor([(u - cx) / fx, (v - cy) / fy, 1.0])
            assert torch.allclose(dirs[y, x], expected, atol=1e-5)
    # image 0 (6 x 8 -> 2 x 3: 8 / 3 rounds to 3): intrinsics scaled per axis by new / old size
    assert torch.allclose(small.intrinsics[0], split.intrinsics[0] * torch.tensor([3 / 8, 2 / 6, 3 / 8, 2 / 6]))


def test_downscaling_keeps_everything_else_and_refuses_enlarging():
    split = split_of([(5, 7), (8, 8)])
    assert split.downscaled(1) is split
    small = split.downscaled(1.5)
    assert small.sizes.tolist() == [[3, 5], [5, 5]]  # 3.33, 4.67, 5.33 rounded
    assert small.has_mask and small.names == split.names and torch.equal(small.c2w, split.c2w)
    # area averaging keeps the mean coverage of each image (up to the rounding of the size)
    for i in range(2):
        assert float(small.mask(i).mean()) == pytest.approx(float(split.mask(i).mean()), abs=0.05)
    with pytest.raises(ValueError, match="factor must be >= 1"):
        split.downscaled(0.5)


def test_spread_order_is_a_permutation_whose_prefixes_spread():
    for n in (1, 2, 5, 7, 12, 49):
        order = spread_order(n)
        assert sorted(order) == list(range(n))
    assert spread_order(12)[:4] == [0, 6, 3, 9]
    # every prefix of k images leaves no gap between neighbours (cyclically) wider than about 2n/k
    n = 49
    order = spread_order(n)
    for k in range(2, n + 1):
        picked = sorted(order[:k])
        gaps = np.diff(picked + [picked[0] + n])
        assert gaps.max() <= 2 * n / k + 1, (k, picked)


def test_image_rays_serve_images_in_the_order_given():
    split = split_of([(4, 5), (6, 4), (3, 3)])
    items = ImageRays(split, "white", order=[2, 0, 1])
    assert [int(items[p]["index"]) for p in range(3)] == [2, 0, 1]
    assert (items[0]["height"], items[0]["width"]) == (3, 3)
    with pytest.raises(ValueError, match="permutation"):
        ImageRays(split, "white", order=[0, 0, 1])


def test_masked_psnr_counts_the_foreground_pixels_only():
    h, w = 4, 5
    gt = torch.full((h * w, 3), 0.5)
    pred = gt.clone()
    alpha = torch.zeros(h * w)
    alpha[:6] = 1.0
    pred[:6] += 0.1  # an error of 0.1 on the 6 foreground pixels
    pred[10:] += 0.3  # a larger error on background pixels
    out = RenderOutput(rgb=pred, opacity=torch.ones(h * w, 1), depth=torch.zeros(h * w, 1), num_samples=torch.tensor(0))
    with_mask = image_metrics({"rgb": gt, "alpha": alpha, "has_mask": True}, out, h, w)
    assert with_mask["psnr_masked"] == pytest.approx(20.0, abs=1e-4)  # 10 log10(1 / 0.01)
    mse = (6 * 0.01 + 10 * 0.09) / 20
    assert with_mask["psnr"] == pytest.approx(10 * np.log10(1 / mse), abs=1e-4)
    # data without masks (alpha all ones) has no masked PSNR
    assert "psnr_masked" not in image_metrics({"rgb": gt, "alpha": torch.ones(h * w), "has_mask": False}, out, h, w)


def test_eval_max_pixels_raises_the_factor_until_the_largest_image_fits():
    sizes = [(300, 400), (600, 800)]  # (height, width)
    assert eval_downscale_factor(sizes, 1.0, None) == 1.0
    assert eval_downscale_factor(sizes, 1.0, 120_000) == pytest.approx(2.0)  # 480000 px -> 120000
    assert eval_downscale_factor(sizes, 3.0, 120_000) == 3.0  # eval_downscale already shrinks more
    assert eval_downscale_factor(sizes, 1.0, 10**6) == 1.0  # never enlarges
    h, w = downscaled_size(600, 800, eval_downscale_factor(sizes, 1.0, 50_000))
    assert h * w <= 50_000 * 1.01 and h * w > 50_000 * 0.95


@pytest.mark.slow
@pytest.mark.parametrize("option", ["eval_downscale", "eval_max_pixels"])
def test_a_test_at_a_lower_resolution_says_so(tmp_path, tiny_scene_dir, option):
    import imageio.v3 as iio

    from tests.test_eval_outputs import launch_run

    res = TINY_SCENE["resolution"] // 2
    value = 2 if option == "eval_downscale" else res * res
    save = launch_run(tmp_path, tiny_scene_dir, "--test", "system.export_mesh_at_test=false", f"dataset.{option}={value}")
    grids = sorted((save / "test").glob("*.png"))
    assert len(grids) == TINY_SCENE["n_test"] and all(iio.imread(p).shape[0] == res for p in grids)
    data = json.loads(next(save.glob("test_metrics_step*.json")).read_text())
    expected = {"sizes": [f"{res}x{res}"], "eval_downscale": 2.0}
    if option == "eval_max_pixels":
        expected = {"sizes": [f"{res}x{res}"], "eval_downscale": 1.0, "eval_max_pixels": res * res}
    assert data["resolution"] == expected
    assert "psnr_masked" in data["mean"]  # the synthetic scene has masks
    assert "images_not_scored" not in data


@pytest.mark.slow
def test_a_spent_test_budget_scores_the_images_rendered_and_lists_the_others(tmp_path, tiny_scene_dir):
    from tests.test_eval_outputs import launch_run

    save = launch_run(tmp_path, tiny_scene_dir, "--train", "trainer.max_steps=3", "system.export_mesh_at_test=false",
                      "system.test_time_share=1e-9")
    data = json.loads(next(save.glob("test_metrics_step*.json")).read_text())
    n = TINY_SCENE["n_test"]
    # the first image of the spread order is always rendered; the budget was spent after it
    assert data["n_images"] == 1 and [r["index"] for r in data["per_image"]] == [0]
    assert data["images_not_scored"]["indices"] == list(range(1, n))
    assert "system.test_time_share=1e-09" in data["images_not_scored"]["reason"]
    assert sorted(p.name for p in (save / "test").glob("*.png")) == ["000.png"]


@pytest.mark.slow
def test_a_test_without_training_renders_every_image(tmp_path, tiny_scene_dir):
    """(no training time in this run: the share of it is no budget)"""
    from tests.test_eval_outputs import launch_run

    save = launch_run(tmp_path, tiny_scene_dir, "--test", "system.export_mesh_at_test=false",
                      "system.test_time_share=1e-9")
    data = json.loads(next(save.glob("test_metrics_step*.json")).read_text())
    assert data["n_images"] == TINY_SCENE["n_test"] and "images_not_scored" not in data


@pytest.mark.slow
def test_a_run_stopped_by_its_time_budget_is_not_validated_again(tmp_path, tiny_scene_dir):
    argv = ["--exp-dir", str(tmp_path / "exp"), "--runs-dir", str(tmp_path / "runs"),
            "--config", "configs/neus-synthetic.yaml", "--train", *tiny(tiny_scene_dir), *QUICK,
            "trainer.max_steps=100000", "trainer.max_minutes=0.02", "trainer.val_check_interval=100000"]
    assert launch.main(argv) == 0
    (root,) = (tmp_path / "exp" / "neus-synthetic").iterdir()
    assert not (root / "save" / "val").exists()  # no validation: the test follows at once
    assert list((root / "save").glob("test_metrics_step*.json"))
    assert (root / "ckpt" / "last.ckpt").is_file()


def test_test_budget_renders_the_first_image_then_only_while_time_is_left():
    from systems.evaluation_hooks import TestBudget

    now = [0.0]
    budget = TestBudget(0.2, trained_s=100.0, clock=lambda: now[0])  # 20 s of rendering
    now[0] = 50.0
    assert budget.allows_another()  # the first image, however late
    budget.rendered = 1
    assert not budget.allows_another()
    now[0] = 10.0
    assert budget.allows_another()
    assert "system.test_time_share=0.2 of 100 s of training: 20 s" in budget.reason()
    # no share, or no training in this run (a --test of a checkpoint): every image
    for unlimited in (TestBudget(None, 100.0, clock=lambda: 1e9), TestBudget(0.2, 0.0, clock=lambda: 1e9)):
        unlimited.rendered = 5
        assert unlimited.allows_another()
