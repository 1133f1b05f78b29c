"""Optimizers with per-module learning rates and learning-rate schedules, from config.

```yaml
optimizer:
  name: Adam                  # any torch.optim class
  lr: 0.01
  args: {betas: [0.9, 0.99], eps: 1.0e-15}
  params:                     # per-module overrides, by attribute path under the model
    geometry.encoding: {lr: 0.01}
    variance: {lr: 0.001}
scheduler:
  name: SequentialLR          # 'none', 'warmup-exponential', any torch.optim.lr_scheduler class,
  milestones: [500]           # or SequentialLR / ChainedScheduler over nested schedulers
  schedulers:
    - {name: LinearLR, args: {start_factor: 0.01, total_iters: 500}}
    - {name: ExponentialLR, args: {gamma: "${calc_exp_lr_decay_rate:0.1,19500}"}}
```
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn

from utils.config import ConfigError, at_least, checked, each, positive


@dataclasses.dataclass
class OptimizerConfig:
    name: str = "Adam"
    lr: float = checked(positive(), default=0.01)
    args: Dict[str, Any] = dataclasses.field(default_factory=dict)
    # per-module options (lr, weight_decay, ...) keyed by the module's attribute path under the model
    params: Dict[str, Dict[str, Any]] = dataclasses.field(default_factory=dict)

    def check(self) -> Iterator[Tuple[str, str]]:
        if not hasattr(torch.optim, self.name) or self.name.startswith("_"):
            yield "name", f"torch.optim has no optimizer '{self.name}'"
        for path, options in self.params.items():
            lr = options.get("lr")
            if lr is not None and not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0):
                yield f"params.{path}.lr", f"must be > 0, got {lr!r}"


@dataclasses.dataclass
class SchedulerConfig:
    name: str = "none"
    args: Dict[str, Any] = dataclasses.field(default_factory=dict)
    schedulers: List["SchedulerConfig"] = dataclasses.field(default_factory=list)
    milestones: List[int] = checked(each(at_least(1)), factory=list)

    def check(self) -> Iterator[Tuple[str, str]]:
        if list(self.milestones) != sorted(set(self.milestones)):
            yield "milestones", f"must increase, got {list(self.milestones)}"
        if self.name != "warmup-exponential":
            return
        unknown = set(self.args) - set(WARMUP_EXPONENTIAL_ARGS)
        if unknown:
            yield "args", (f"unknown option(s) {sorted(unknown)} for warmup-exponential "
                           f"(valid: {', '.join(WARMUP_EXPONENTIAL_ARGS)})")
        for key, (ok, text) in WARMUP_EXPONENTIAL_ARGS.items():
            value = self.args.get(key)
            if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool) and ok(value)):
                yield f"args.{key}", f"{text}, got {value!r}"


# the options of the 'warmup-exponential' schedule: (check, what it asks)
WARMUP_EXPONENTIAL_ARGS = {
    "warmup_steps": (lambda v: v >= 0, "must be >= 0"),
    "decay_to": (lambda v: v > 0, "must be > 0 (the factor reached at total_steps)"),
    "total_steps": (lambda v: v >= 1, "must be >= 1"),
}


def _module_at(model: nn.Module, path: str, key_path: str) -> nn.Module:
    module = model
    for part in path.split("."):
        if not hasattr(module, part):
            children = [name for name, _ in module.named_children()]
            raise ConfigError(f"{key_path}: the model has no module '{path}' (children here: {', '.join(children)})")
        module = getattr(module, part)
    if isinstance(module, nn.Parameter):
        return module
    if not isinstance(module, nn.Module):
        raise ConfigError(f"{key_path}: '{path}' is not a module or parameter")
    return module


def make_optimizer(cfg: OptimizerConfig, model: nn.Module, key_path: str = "system.optimizer") -> torch.optim.Optimizer:
    """One parameter group per entry of ``cfg.params`` (longest paths first) plus one for the rest."""
    if not hasattr(torch.optim, cfg.name) or cfg.name.startswith("_"):
        raise ConfigError(f"{key_path}.name: torch.optim has no optimizer '{cfg.name}'")
    claimed = set()
    groups = []
    for path in sorted(cfg.params, key=lambda p: -p.count(".")):
        target = _module_at(model, path, f"{key_path}.params.{path}")
        params = [target] if isinstance(target, nn.Parameter) else list(target.parameters())
        params = [p for p in params if p.requires_grad and id(p) not in claimed]
        claimed.update(id(p) for p in params)
        if params:
            groups.append({"params": params, "name": path, **cfg.params[path]})
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in claimed]
    if rest:
        groups.append({"params": rest, "name": "rest"})
    args = dict(cfg.args)
    if "betas" in args:
        args["betas"] = tuple(args["betas"])
    try:
        return getattr(torch.optim, cfg.name)(groups, lr=cfg.lr, **args)
    except (TypeError, ValueError) as err:  # an unknown option, or one torch refuses (e.g. betas >= 1)
        raise ConfigError(f"{key_path}: cannot build torch.optim.{cfg.name}: {err}") from err


def make_scheduler(cfg: SchedulerConfig, optimizer: torch.optim.Optimizer, max_steps: int,
                   key_path: str = "system.scheduler") -> Optional[torch.optim.lr_scheduler.LRScheduler]:
    """A per-step scheduler, or None for name 'none'."""
    if cfg.name == "none":
        return None
    if cfg.name == "warmup-exponential":
        warmup = int(cfg.args.get("warmup_steps", 0))
        decay_to = float(cfg.args.get("decay_to", 0.1))
        total = int(cfg.args.get("total_steps", max_steps))
        unknown = set(cfg.args) - set(WARMUP_EXPONENTIAL_ARGS)
        if unknown:
            raise ConfigError(f"{key_path}.args: unknown option(s) {sorted(unknown)} for warmup-exponential "
                              f"(valid: {', '.join(WARMUP_EXPONENTIAL_ARGS)})")

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            frac = (step - warmup) / max(1, total - warmup)
            return math.exp(math.log(decay_to) * min(1.0, frac))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    sched_mod = torch.optim.lr_scheduler
    if cfg.name in ("SequentialLR", "ChainedScheduler"):
        children = [
            make_scheduler(child, optimizer, max_steps, f"{key_path}.schedulers[{i}]")
            for i, child in enumerate(cfg.schedulers)
        ]
        children = [c for c in children if c is not None]
        if not children:
            raise ConfigError(f"{key_path}.schedulers: {cfg.name} needs at least one scheduler")
        if cfg.name == "SequentialLR":
            if len(cfg.milestones) != len(children) - 1:
                raise ConfigError(f"{key_path}.milestones: SequentialLR needs {len(children) - 1} milestone(s)")
            return sched_mod.SequentialLR(optimizer, children, milestones=list(cfg.milestones))
        return sched_mod.ChainedScheduler(children)
    cls = getattr(sched_mod, cfg.name, None)
    if cls is None or not isinstance(cls, type):
        raise ConfigError(f"{key_path}.name: unknown scheduler '{cfg.name}' (use 'none', 'warmup-exponential' "
                          "or a torch.optim.lr_scheduler class name)")
    try:
        return cls(optimizer, **cfg.args)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{key_path}: cannot build {cfg.name}: {err}") from err
