"""Which step of the recipe a training step stands for, so a run can be sized by time.

A preset is a recipe of ``trainer.max_steps`` steps: the learning-rate warm-up and decay, NeuS's
cosine annealing, the hash grid's levels, the occupancy grid's warm-up and hull hold, loss-weight
schedules are all written in its steps. With ``trainer.max_minutes`` the run trains for at most
that long, and every one of those schedules is stretched over the time it has: the *schedule
step* handed to them is

    schedule_step = max_steps * max(step / max_steps, training seconds / (60 * max_minutes))

so a slow machine moves through the recipe by the clock (reaching its end when the minutes are
up) and a fast one by the steps (running the whole recipe if it fits). Training stops when the
schedule step reaches max_steps. Time spent validating does not count. Without max_minutes the
schedule step is the step itself, and nothing depends on time.
"""
from __future__ import annotations

import time
from typing import Any, Dict, Optional


class TrainingSchedule:
    """The schedule step of each training step (see the module docstring)."""

    def __init__(self, max_steps: int, max_minutes: Optional[float] = None, clock=time.monotonic) -> None:
        self.max_steps = int(max_steps)
        self.budget_s = None if max_minutes is None else 60.0 * float(max_minutes)
        self._clock = clock
        self._spent = 0.0  # training seconds before the current stretch
        self._since: Optional[float] = None  # start of the current stretch (None: paused)

    @property
    def timed(self) -> bool:
        return self.budget_s is not None

    # --------------------------------------------------------------- the clock
    def start(self) -> None:
        """Count training time from now (training starts, or resumes after a validation)."""
        if self._since is None:
            self._since = self._clock()

    def pause(self) -> None:
        """Stop counting (a validation starts, or training ends)."""
        if self._since is not None:
            self._spent += self._clock() - self._since
            self._since = None

    def training_seconds(self) -> float:
        running = 0.0 if self._since is None else self._clock() - self._since
        return self._spent + running

    # --------------------------------------------------------------- steps
    def fraction(self, step: int) -> float:
        """How far through the recipe training is at ``step``, in [0, 1]."""
        by_steps = step / max(1, self.max_steps)
        if not self.timed:
            return min(1.0, by_steps)
        return min(1.0, max(by_steps, self.training_seconds() / self.budget_s))

    def schedule_step(self, step: int) -> int:
        """The recipe step the schedules see at training step ``step``."""
        if not self.timed:
            return int(step)
        return max(int(step), int(self.fraction(step) * self.max_steps))

    def finished(self, step: int) -> bool:
        """Whether training should stop after ``step`` steps."""
        return step >= self.max_steps or (self.timed and self.fraction(step) >= 1.0)

    # --------------------------------------------------------------- checkpoints
    def state_dict(self) -> Dict[str, Any]:
        return {"training_seconds": self.training_seconds()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        running = self._since is not None
        self._spent = float(state.get("training_seconds", 0.0))
        self._since = self._clock() if running else None
