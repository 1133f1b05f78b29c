import torch

from datasets.blender import BlenderScene
from datasets.datamodule import ImageRays, RandomRays, SceneDataModule, composite
from utils.config import parse_component


def scene(root, **kw):
    return BlenderScene(parse_component(BlenderScene.Config, {"root_dir": str(root), **kw}))


def test_random_rays_shapes_and_ground_truth(tiny_scene_dir):
    split = scene(tiny_scene_dir).load_split("train")
    rays = RandomRays(split, n_rays=50, image_sampling=False, background="black", seed=0)
    batch = next(iter(rays))
    assert batch["rays_o"].shape == (50, 3) and batch["rgb"].shape == (50, 3) and batch["alpha"].shape == (50,)
    assert torch.allclose(batch["rays_d"].norm(dim=-1), torch.ones(50), atol=1e-5)
    # black background: colour is premultiplied by coverage
    assert torch.all(batch["rgb"] <= batch["alpha"][:, None] + 1e-6)
    # the same seed gives the same stream; another seed another one
    again = next(iter(RandomRays(split, 50, False, "black", seed=0)))
    other = next(iter(RandomRays(split, 50, False, "black", seed=1)))
    assert torch.equal(batch["rays_d"], again["rays_d"]) and not torch.equal(batch["rays_d"], other["rays_d"])


def test_batch_image_sampling_draws_from_one_camera(tiny_scene_dir):
    split = scene(tiny_scene_dir).load_split("train")
    batch = next(iter(RandomRays(split, 64, True, "white", seed=0)))
    assert torch.unique(batch["rays_o"], dim=0).shape[0] == 1


def test_batch_size_can_change_between_batches(tiny_scene_dir):
    split = scene(tiny_scene_dir).load_split("train")
    rays = RandomRays(split, 16, False, "random", seed=0)
    stream = iter(rays)
    assert next(stream)["rays_o"].shape[0] == 16
    rays.n_rays = 400
    batch = next(stream)
    assert batch["rays_o"].shape[0] == 400
    # random backgrounds show exactly where the image is transparent, and not where it is opaque
    clear, solid = batch["alpha"] == 0, batch["alpha"] == 1
    assert clear.any() and solid.any()
    assert torch.equal(batch["rgb"][clear], batch["background"][clear])
    assert not torch.allclose(batch["rgb"][solid], batch["background"][solid])


def test_composite_by_hand():
    rgb = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.2, 0.4, 0.6]])
    alpha = torch.tensor([1.0, 0.0, 0.5])
    background = torch.tensor([[0.0, 0.0, 1.0]]).expand(3, 3)
    expected = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.1, 0.2, 0.8]])
    assert torch.allclose(composite(rgb, alpha, background), expected)


def test_image_rays_cover_the_image_in_order(tiny_scene_dir):
    split = scene(tiny_scene_dir).load_split("val")
    item = ImageRays(split, "white")[1]
    h, w = split.size(1)
    n = w * h
    assert item["rays_o"].shape == (n, 3) and item["rgb"].shape == (n, 3) and int(item["index"]) == 1
    assert (item["height"], item["width"]) == (h, w)
    expected = composite(split.image(1).reshape(-1, 3), split.mask(1).reshape(-1), torch.ones(n, 3))
    assert torch.allclose(item["rgb"], expected)


def test_datamodule_stages(tiny_scene_dir):
    dm = SceneDataModule(scene(tiny_scene_dir), scene(tiny_scene_dir).cfg, train_num_rays=32, seed=0)
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))["rays_o"].shape == (32, 3)
    assert len(dm.val_dataloader()) == 2
    dm.setup("predict")
    assert "rgb" not in next(iter(dm.predict_dataloader()))
