"""Time budgets: the schedule step a training step stands for, the schedules that follow it, the
profile a preset applies on a CPU or a GPU, and a budgeted run end to end."""
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import launch
from models.rendering import OccupancyGrid
from systems.build import choose_profile, load_experiment
from systems.schedule import TrainingSchedule
from tests.test_launch import TINY_RUN, synthetic_overrides
from utils.config import ConfigError


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_without_a_budget_the_schedule_step_is_the_step():
    schedule = TrainingSchedule(max_steps=1000)
    assert [schedule.schedule_step(s) for s in (0, 1, 999)] == [0, 1, 999]
    assert not schedule.finished(999) and schedule.finished(1000)


def test_a_slow_machine_moves_through_the_recipe_by_the_clock():
    clock = FakeClock()
    schedule = TrainingSchedule(max_steps=20000, max_minutes=10, clock=clock)
    schedule.start()
    clock.now += 150.0  # a quarter of the budget, after only 100 steps
    assert schedule.schedule_step(100) == 5000
    schedule.pause()
    clock.now += 1000.0  # validating: does not count
    assert schedule.schedule_step(100) == 5000
    schedule.start()
    clock.now += 300.0
    assert schedule.schedule_step(300) == 15000 and not schedule.finished(300)
    clock.now += 150.0
    assert schedule.schedule_step(400) == 20000 and schedule.finished(400)


def test_a_fast_machine_moves_by_the_steps_and_runs_the_whole_recipe():
    clock = FakeClock()
    schedule = TrainingSchedule(max_steps=1000, max_minutes=10, clock=clock)
    schedule.start()
    clock.now += 60.0  # a tenth of the budget, but 600 of 1000 steps done
    assert schedule.schedule_step(600) == 600 and not schedule.finished(600)
    assert schedule.finished(1000)


def test_the_schedule_clock_survives_a_checkpoint():
    clock = FakeClock()
    schedule = TrainingSchedule(max_steps=100, max_minutes=1, clock=clock)
    schedule.start()
    clock.now += 30.0
    state = schedule.state_dict()
    resumed = TrainingSchedule(max_steps=100, max_minutes=1, clock=clock)
    resumed.load_state_dict(state)
    resumed.start()
    clock.now += 15.0
    assert resumed.schedule_step(10) == 75


def test_grid_updates_when_a_multiple_of_n_is_crossed():
    """Steps that advance by one update exactly at the multiples of n; steps that jump (a stretched
    schedule) update once for each jump across a multiple."""
    grid = OccupancyGrid([-1, -1, -1, 1, 1, 1], resolution=4)
    calls = []

    def field(x):
        calls.append(1)
        return torch.zeros(x.shape[0])

    def run(steps):
        calls.clear()
        previous, done = None, []
        for s in steps:
            if grid.update_every_n_steps(s, field, n=16, warmup_steps=0, previous_step=previous):
                done.append(s)
            previous = s
        return done

    assert run(range(0, 50)) == [0, 16, 32, 48]
    assert run([0, 23, 46, 69, 92]) == [0, 23, 46, 69, 92]  # each jump crosses a multiple of 16
    assert run([0, 5, 10, 15, 20]) == [0, 20]
    assert run([3, 10, 17]) == [17]  # a resume at step 3: no update until the next multiple


def test_profiles_apply_by_accelerator_and_are_all_checked(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text(
        "extends: {}\n".format(Path("configs/neus-synthetic.yaml").resolve())
        + "profile: auto\nprofiles:\n  cpu: {trainer: {max_minutes: 7}}\n  gpu: {trainer: {max_steps: 20000}}\n"
    )
    raw, cfg = load_experiment(str(preset), ["trainer.accelerator=cpu"])
    assert cfg.profile == "cpu" and cfg.trainer.max_minutes == 7 and "profiles" not in raw
    _, cfg = load_experiment(str(preset), ["trainer.accelerator=gpu"])
    assert cfg.profile == "gpu" and cfg.trainer.max_minutes is None and cfg.trainer.max_steps == 20000
    _, cfg = load_experiment(str(preset), ["trainer.accelerator=cpu", "trainer.max_minutes=3"])
    assert cfg.trainer.max_minutes == 3  # the command line wins over the profile
    _, cfg = load_experiment(str(preset), ["profile=none"])
    assert cfg.trainer.max_minutes is None and cfg.trainer.max_steps == 850
    # the profile not applied is checked too
    preset.write_text(preset.read_text().replace("max_steps: 20000", "max_stpes: 20000"))
    with pytest.raises(ConfigError, match=r"(?s)profiles.gpu .*trainer.max_stpes"):
        load_experiment(str(preset), ["trainer.accelerator=cpu"])


@pytest.mark.parametrize("preset", ["neus-blender", "neus-dtu", "neus-colmap", "neus-ngp", "nerf-blender", "nerf-colmap"])
def test_a_cpu_run_scores_capture_views_at_a_capped_size(preset):
    """On a CPU the test's time budget must cover every held-out view of a capture of large
    photos: the profile caps the evaluated size; a GPU scores them at their loaded size."""
    _, cpu = load_experiment(f"configs/{preset}.yaml", ["trainer.accelerator=cpu"])
    _, gpu = load_experiment(f"configs/{preset}.yaml", ["trainer.accelerator=gpu"])
    assert cpu.dataset.eval_max_pixels is not None and cpu.dataset.eval_max_pixels <= 400 * 400
    assert gpu.dataset.eval_max_pixels is None


def test_auto_profile_follows_cuda(monkeypatch):
    from omegaconf import OmegaConf

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert choose_profile(OmegaConf.create({})) == "gpu"
    assert choose_profile(OmegaConf.create({"trainer": {"accelerator": "cpu"}})) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_profile(OmegaConf.create({})) == "cpu"


def test_a_budgeted_run_stretches_its_schedules_over_the_time(tmp_path, tiny_scene_dir):
    """max_minutes of a few seconds with a recipe far too long for them: training stops when the
    time is up, the schedules (learning rate, cosine annealing) reached the recipe's end, and the
    test outputs and checkpoint say so."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from utils.checkpoint import read_checkpoint

    argv = ["--exp-dir", str(tmp_path / "exp"), "--runs-dir", str(tmp_path / "runs"),
            "--config", "configs/neus-synthetic.yaml", "--train", *synthetic_overrides(tiny_scene_dir), *TINY_RUN,
            "trainer.max_steps=100000", "trainer.max_minutes=0.1", "trainer.val_check_interval=100000",
            "trainer.log_every_n_steps=1", "checkpoint.every_n_train_steps=100000"]
    assert launch.main(argv) == 0
    (run,) = (tmp_path / "exp" / "neus-synthetic").iterdir()
    ckpt = read_checkpoint(run / "ckpt" / "last.ckpt")
    assert 2 <= ckpt["global_step"] < 2000  # stopped by the clock, far from 100000 steps
    assert ckpt["schedule_step"] == 100000  # the weights stand for the recipe's end
    # the learning rate decayed as over the whole recipe (warmup-exponential to 0.1)
    lr = ckpt["optimizer_states"][0]["param_groups"][0]["lr"]
    assert lr == pytest.approx(0.01 * 0.1, rel=0.1)
    events = EventAccumulator(str(tmp_path / "runs" / "neus-synthetic" / run.name)).Reload()
    steps = [e.value for e in events.Scalars("train/schedule_step")]
    assert steps == sorted(steps) and steps[-1] > steps[0]
    assert list((run / "save").glob("test_metrics_step*.json"))  # then tested as usual
    saved = OmegaConf.load(run / "config" / "parsed.yaml")
    assert saved.trainer.max_minutes == 0.1 and saved.profile == "none"  # the main job applies no profile


def test_progress_line_counts_down_the_time_budget(caplog):
    import logging
    from types import SimpleNamespace

    from utils.callbacks import ConsoleProgress

    now = [100.0]
    schedule = TrainingSchedule(max_steps=2000, max_minutes=2.0, clock=lambda: now[0])
    schedule.start()
    progress = ConsoleProgress(every_s=1.0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("utils.callbacks.time.monotonic", lambda: now[0])
        progress.on_train_start(None, None)
        now[0] += 30.0  # 100 of 2000 steps in 30 s: the steps alone would take 570 s more
        trainer = SimpleNamespace(global_step=100, max_steps=2000, is_global_zero=True, progress_bar_metrics={})
        with caplog.at_level(logging.INFO):
            progress.on_train_batch_end(trainer, SimpleNamespace(schedule=schedule), None, None, 0)
            progress.on_train_batch_end(trainer, SimpleNamespace(schedule=None), None, None, 0)  # too soon: nothing
            now[0] += 2.0
            progress.on_train_batch_end(trainer, SimpleNamespace(schedule=None), None, None, 0)
    lines = [r.getMessage() for r in caplog.records]
    assert "~90s left" in lines[0]  # the budget's 120 s less the 30 spent
    assert len(lines) == 2 and "~608s left" in lines[1]  # no budget: 32 s per 100 steps, 1900 to go
