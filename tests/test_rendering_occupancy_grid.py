"""Occupancy grid: EMA update rule, warm-up, queries, pyramid, state-dict round trip."""
import math

import pytest
import torch

from models.rendering import OccupancyGrid

BOX = [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]


class Recorder:
    """An occ_eval_fn that records the points it was given; value = x + 1 (in [0, 2] in the box)."""

    def __init__(self, fn=None):
        self.points = []
        self.fn = fn or (lambda x: x[:, 0] + 1.0)

    def __call__(self, x):
        assert not torch.is_grad_enabled()
        self.points.append(x.clone())
        return self.fn(x)

    @property
    def all_points(self):
        return torch.cat(self.points)


def cell_of(grid, x, level=0):
    """Flat cell id (over all levels) of points known to lie in ``level``'s box."""
    box = grid.aabbs[level]
    res = torch.tensor(grid.resolution)
    idx = ((x - box[:3]) / (box[3:] - box[:3]) * res).floor().long()
    idx = torch.minimum(idx.clamp_min(0), res - 1)
    rx, ry, rz = grid.resolution
    return level * grid.cells_per_level + (idx[:, 0] * ry + idx[:, 1]) * rz + idx[:, 2]


def test_warmup_evaluates_every_cell_once():
    grid = OccupancyGrid(BOX, resolution=(4, 3, 5), levels=2)
    rec = Recorder()
    grid.update(step=0, occ_eval_fn=rec, warmup_steps=10, generator=torch.Generator().manual_seed(0))
    x = rec.all_points
    n = grid.cells_per_level
    assert x.shape == (2 * n, 3)
    # the first n points are one per level-0 cell, the next n one per level-1 cell
    assert torch.equal(cell_of(grid, x[:n], 0).sort().values, torch.arange(n))
    assert torch.equal(cell_of(grid, x[n:], 1).sort().values, torch.arange(n, 2 * n))
    # level-1 points spread over the doubled box
    assert x[n:].abs().max() > 1.0 and x[n:].abs().max() <= 2.0


def test_after_warmup_quarter_uniform_plus_occupied():
    grid = OccupancyGrid(BOX, resolution=8)
    mask = torch.zeros(8, 8, 8, dtype=torch.bool)
    mask[:2] = True  # 128 occupied cells = 512 // 4
    grid.set_binary(mask)
    rec = Recorder()
    grid.update(step=1000, occ_eval_fn=rec, warmup_steps=10, generator=torch.Generator().manual_seed(0))
    x = rec.all_points
    assert x.shape[0] == 128 + 128
    assert bool(mask.reshape(-1)[cell_of(grid, x[128:])].all())  # the second half: occupied cells


def test_frozen_cells_are_never_evaluated():
    grid = OccupancyGrid(BOX, resolution=8)
    hull = torch.zeros(8, 8, 8, dtype=torch.bool)
    hull[2:6, 2:6, 2:6] = True  # 64 live cells, the other 448 frozen empty
    grid.set_binary(hull, freeze_empty=True)
    for step, expected in ((0, 64), (1000, 16 + 16)):  # warm-up: every live cell; later a quarter + occupied
        rec = Recorder()
        grid.update(step=step, occ_eval_fn=rec, warmup_steps=10, generator=torch.Generator().manual_seed(step))
        cells = cell_of(grid, rec.all_points)
        assert cells.shape[0] == expected
        assert bool(hull.reshape(-1)[cells].all())


def test_ema_rule():
    grid = OccupancyGrid(BOX, resolution=4)
    g = torch.Generator().manual_seed(1)
    old = torch.rand(grid.occs.shape, generator=g)
    old[:5] = -1.0  # never-visible cells
    grid.occs.copy_(old)
    rec = Recorder(lambda x: (x[:, 0] + 1.0) / 2)
    decay = 0.9
    grid.update(step=500, occ_eval_fn=rec, occ_thre=0.3, ema_decay=decay, warmup_steps=256, generator=g)
    x = rec.all_points
    values = (x[:, 0] + 1.0) / 2
    cells = cell_of(grid, x)
    expected = old.clone()
    for c in cells.unique().tolist():
        if old[c] >= 0:
            expected[c] = max(old[c].item() * decay, values[cells == c].max().item())
    assert cells.unique().numel() < grid.cells_per_level  # some cells were not evaluated ...
    assert torch.allclose(grid.occs, expected)  # ... and kept their value
    thre = min(expected[expected > 0].mean().item(), 0.3)
    assert torch.equal(grid.binaries.reshape(-1), expected > thre)
    assert (grid.occs[:5] == -1).all()


def test_binarize_threshold_uses_mean_when_lower():
    grid = OccupancyGrid(BOX, resolution=2)
    values = torch.tensor([0.0, 0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.1])
    grid.update(step=0, occ_eval_fn=lambda x: values[cell_of(grid, x)], occ_thre=0.5, ema_decay=0.0)
    mean_pos = values[values > 0].mean().item()  # ~0.0173 < 0.5
    assert torch.equal(grid.binaries.reshape(-1), values > mean_pos)


def test_update_every_n_steps():
    grid = OccupancyGrid(BOX, resolution=2)
    rec = Recorder()
    assert not grid.update_every_n_steps(3, rec, n=4)
    assert rec.points == []
    assert grid.update_every_n_steps(8, rec, n=4)
    assert len(rec.points) == 1


def test_eval_in_chunks_gives_same_points():
    grid = OccupancyGrid(BOX, resolution=4)
    rec1, rec2 = Recorder(), Recorder()
    grid.update(0, rec1, generator=torch.Generator().manual_seed(3))
    grid2 = OccupancyGrid(BOX, resolution=4)
    grid2.update(0, rec2, generator=torch.Generator().manual_seed(3), eval_chunk_size=10)
    assert len(rec2.points) == math.ceil(64 / 10)
    assert torch.equal(rec1.all_points, rec2.all_points)
    assert torch.equal(grid.occs, grid2.occs)


def test_query_levels_and_outside():
    grid = OccupancyGrid(BOX, resolution=4, levels=2)
    mask = torch.zeros(2, 4, 4, 4, dtype=torch.bool)
    mask[1, 0, 0, 0] = True  # level-1 corner cell: [-2, -1]^3
    mask[1, 1, 1, 1] = True  # level-1 cell [-1, 0]^3, but inside level 0's box: level 0 decides
    mask[0, 3, 3, 3] = True  # level-0 cell [0.5, 1]^3
    grid.set_binary(mask)
    x = torch.tensor(
        [
            [-1.5, -1.5, -1.5],  # level 1, occupied
            [-0.5, -0.5, -0.5],  # level 0 cell (1,1,1): empty, although level 1's cell is set
            [0.75, 0.75, 0.75],  # level 0, occupied
            [1.5, 1.5, 1.5],  # level 1 cell (3,3,3): empty
            [-2.5, 0.0, 0.0],  # outside every level
            [1.0, 1.0, 1.0],  # corner of level 0 (closed box): cell (3,3,3)
        ]
    )
    assert grid.query(x).tolist() == [True, False, True, False, False, True]


def test_set_binary_freeze_and_fraction():
    grid = OccupancyGrid(BOX, resolution=4)
    mask = torch.zeros(4, 4, 4, dtype=torch.bool)
    mask[1:3, 1:3, 1:3] = True
    grid.set_binary(mask, freeze_empty=True)
    assert grid.occupied_fraction() == pytest.approx(8 / 64)
    grid.update(step=0, occ_eval_fn=lambda x: torch.ones(x.shape[0]), occ_thre=0.5)
    assert torch.equal(grid.binaries[0], mask)  # frozen empty cells stay empty whatever the field says
    with pytest.raises(ValueError):
        grid.set_binary(torch.zeros(3, 3, 3, dtype=torch.bool))


def test_pyramid_pools_any_and_all():
    grid = OccupancyGrid(BOX, resolution=(37, 20, 9), levels=2)
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(grid.binaries.shape, generator=g) < 0.2
    mask[:, :8, :8, :8] = True  # one fully occupied 8x8x8 block -> an all-cell at the 4x-coarser level
    grid.set_binary(mask)
    maps = grid.pyramid()
    assert torch.equal(maps[-1][0], mask)
    for j in range(len(maps) - 1):
        f = 4 ** (len(maps) - 1 - j)
        any_map, all_map = maps[j]
        for idx in torch.cartesian_prod(*[torch.arange(s) for s in any_map.shape]).tolist()[::7]:
            l, i, k, m = idx
            block = mask[l, i * f : (i + 1) * f, k * f : (k + 1) * f, m * f : (m + 1) * f]
            assert bool(any_map[l, i, k, m]) == bool(block.any())
            assert bool(all_map[l, i, k, m]) == bool(block.all())
    assert maps[-2][1][:, :2, :2, :2].all()
    # cached, and refreshed after an in-place change
    assert grid.pyramid() is maps
    grid.binaries.zero_()
    assert not grid.pyramid()[0][0].any()


def test_state_dict_round_trip():
    grid = OccupancyGrid(BOX, resolution=8, levels=2)
    grid.update(0, lambda x: torch.exp(-4 * x.norm(dim=-1)), occ_thre=0.05, generator=torch.Generator().manual_seed(2))
    assert 0 < grid.occupied_fraction() < 1
    state = grid.state_dict()
    assert set(state) == {"occs", "binaries"}
    fresh = OccupancyGrid(BOX, resolution=8, levels=2)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.binaries, grid.binaries) and torch.equal(fresh.occs, grid.occs)
    x = torch.rand(1000, 3, generator=torch.Generator().manual_seed(3)) * 5 - 2.5
    assert torch.equal(fresh.query(x), grid.query(x))
    # what a freshly built grid would answer differs, so the comparison above is meaningful
    assert not torch.equal(OccupancyGrid(BOX, resolution=8, levels=2).query(x), grid.query(x))


def test_query_frozen_empty_tells_carved_cells_from_merely_empty_ones():
    grid = OccupancyGrid(BOX, resolution=4)
    hull = torch.zeros(4, 4, 4, dtype=torch.bool)
    hull[1:3, 1:3, 1:3] = True
    grid.set_binary(hull, freeze_empty=True)
    # the field then empties one cell inside the hull: empty now, but not for good
    grid.update(step=0, occ_eval_fn=lambda x: (x[:, 0] > 0).float(), occ_thre=0.5, ema_decay=0.0)
    inside_emptied = torch.tensor([[-0.25, -0.25, -0.25]])  # cell (1, 1, 1): x < 0
    inside_kept = torch.tensor([[0.25, 0.25, 0.25]])  # cell (2, 2, 2)
    carved = torch.tensor([[-0.75, 0.75, 0.75]])  # cell (0, 3, 3), outside the hull
    outside_box = torch.tensor([[3.0, 0.0, 0.0]])
    pts = torch.cat([inside_emptied, inside_kept, carved, outside_box])
    assert grid.query(pts).tolist() == [False, True, False, False]
    assert grid.query_frozen_empty(pts).tolist() == [False, False, True, False]
