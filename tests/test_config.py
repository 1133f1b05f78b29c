"""Config loading: extends, resolvers, overrides, and every kind of error naming its key path."""
import dataclasses
import time
from pathlib import Path
from typing import Any, Iterator, List, Literal, Optional, Tuple, Union

import pytest
from omegaconf import OmegaConf

from utils.config import (
    ConfigError, at_least, checked, component, each, field_rules, fraction, in_range, length, load_config, non_negative,
    parse_component, positive, schedule, to_plain,
)
from utils.registry import Registry

widgets = Registry("test-widget")


@widgets.register("gear")
class Gear:
    @dataclasses.dataclass
    class Config:
        teeth: int = 12
        shape: Literal["round", "square"] = "round"

    def __init__(self, cfg):
        self.cfg = cfg


@dataclasses.dataclass
class Inner:
    size: float = 1.0
    tags: List[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Outer:
    name: str = "???"
    count: int = 3
    enabled: bool = True
    ratio: Optional[float] = None
    inner: Inner = dataclasses.field(default_factory=Inner)
    part: Any = component("test-widget", {"name": "gear"})


def parse(schema, raw, path=""):
    """parse_component with this file's widget registry as the only component kind: parsing gets
    its lookup passed in (it imports no registry)."""
    return parse_component(schema, raw, path, components={"test-widget": widgets}.__getitem__)


def write(tmp_path, name, text):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_extends_merges_base_under_preset(tmp_path):
    write(tmp_path, "base/a.yaml", "name: base\ncount: 1\ninner: {size: 2.0, tags: [x]}\n")
    preset = write(tmp_path, "p.yaml", "extends: base/a.yaml\ncount: 5\n")
    cfg = load_config(preset)
    assert cfg.name == "base" and cfg.count == 5 and cfg.inner.size == 2.0
    assert "extends" not in cfg


def test_extends_list_and_chain(tmp_path):
    write(tmp_path, "a.yaml", "name: a\ncount: 1\n")
    write(tmp_path, "b.yaml", "extends: a.yaml\ncount: 2\nenabled: false\n")
    write(tmp_path, "c.yaml", "ratio: 0.5\ncount: 3\n")
    preset = write(tmp_path, "p.yaml", "extends: [b.yaml, c.yaml]\n")
    cfg = load_config(preset)
    assert (cfg.name, cfg.count, cfg.enabled, cfg.ratio) == ("a", 3, False, 0.5)


def test_extends_missing_file_names_both(tmp_path):
    preset = write(tmp_path, "p.yaml", "extends: nowhere.yaml\n")
    with pytest.raises(ConfigError) as err:
        load_config(preset)
    assert "p.yaml" in str(err.value) and "nowhere.yaml" in str(err.value)


def test_extends_cycle_is_reported(tmp_path):
    write(tmp_path, "a.yaml", "extends: b.yaml\n")
    write(tmp_path, "b.yaml", "extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_overrides_merge_and_type(tmp_path):
    preset = write(tmp_path, "p.yaml", "name: a\ninner: {size: 1.0}\n")
    cfg = load_config(preset, ["count=7", "inner.size=0.25", "inner.tags=[a,b]", "part.teeth=30"])
    parsed = parse(Outer, cfg)
    assert parsed.count == 7 and parsed.inner.size == 0.25 and parsed.inner.tags == ["a", "b"]
    assert parsed.part.teeth == 30 and parsed.part.name == "gear"


def test_malformed_override(tmp_path):
    preset = write(tmp_path, "p.yaml", "name: a\n")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(preset, ["count"])


def test_override_of_unknown_key_names_it_and_suggests(tmp_path):
    preset = write(tmp_path, "p.yaml", "name: a\n")
    cfg = load_config(preset, ["inner.sise=3"])
    with pytest.raises(ConfigError) as err:
        parse(Outer, cfg)
    msg = str(err.value)
    assert "inner.sise" in msg and "'size'" in msg


def test_resolvers():
    cfg = OmegaConf.create({
        "a": 6, "b": 4,
        "add": "${add:${a},${b}}", "sub": "${sub:${a},${b}}", "mul": "${mul:${a},${b}}",
        "div": "${div:${a},${b}}", "idiv": "${idiv:${a},${b}}",
        "decay": "${calc_exp_lr_decay_rate:0.1,100}",
        "base": "${basename:/data/scenes/lego/}",
        "stamp": "${timestamp:}",
    })
    out = to_plain(cfg)
    assert (out["add"], out["sub"], out["mul"], out["div"], out["idiv"]) == (10, 2, 24, 1.5, 1)
    assert out["decay"] ** 100 == pytest.approx(0.1)
    assert out["base"] == "lego"
    assert time.strptime(out["stamp"], "%Y%m%d-%H%M%S")


def test_unknown_key_wrong_type_bad_choice_missing_all_reported_with_paths():
    raw = {
        "count": "three",
        "enabled": 1,
        "colour": "red",
        "inner": {"size": [1]},
        "part": {"name": "gear", "shape": "roond", "teth": 3},
    }
    with pytest.raises(ConfigError) as err:
        parse(Outer, raw, path="cfg")
    msg = str(err.value)
    assert "cfg.count: expected an integer" in msg
    assert "cfg.enabled: expected true or false" in msg
    assert "cfg.colour: unknown key" in msg
    assert "cfg.inner.size: expected a number" in msg
    assert "cfg.part.shape" in msg and "'round'" in msg
    assert "cfg.part.teth" in msg and "'teeth'" in msg
    assert "cfg.name: missing mandatory value" in msg


def test_unknown_component_name_lists_known():
    with pytest.raises(ConfigError) as err:
        parse(Outer, {"name": "x", "part": {"name": "geer"}}, path="cfg")
    msg = str(err.value)
    assert "cfg.part.name" in msg and "'gear'" in msg and "Known: gear" in msg


def test_valid_config_parses_with_defaults():
    parsed = parse(Outer, {"name": "x", "ratio": 2})
    assert parsed.ratio == 2.0 and isinstance(parsed.ratio, float)
    assert parsed.inner == Inner() and parsed.part.teeth == 12


def test_switching_a_component_drops_the_old_options(tmp_path):
    write(tmp_path, "base.yaml", "name: a\npart: {name: gear, teeth: 40, shape: square}\ninner: {size: 2.0}\n")
    preset = write(tmp_path, "p.yaml", "extends: base.yaml\ninner: {tags: [t]}\n")
    merged = parse(Outer, load_config(preset))
    assert merged.part.teeth == 40 and merged.inner.size == 2.0 and merged.inner.tags == ["t"]
    other = Registry.all["test-widget"]

    @other.register("spring")
    class Spring:
        @dataclasses.dataclass
        class Config:
            stiffness: float = 1.0

    swapped = parse(Outer, load_config(preset, ["part.name=spring", "part.stiffness=3"]))
    assert swapped.part.name == "spring" and swapped.part.stiffness == 3.0


def test_resolvers_register_on_omegaconf_2_3_and_2_4(monkeypatch):
    """2.4's register_resolver takes use_cache; 2.3's is a legacy one without it, beside
    register_new_resolver: the right one is picked by signature."""
    import utils.config as config

    calls = []

    def legacy(name, resolver):  # omegaconf <= 2.3
        calls.append(("legacy", name))

    def new(name, resolver, *, replace=False, use_cache=False):
        calls.append(("new", name, use_cache))

    monkeypatch.setattr(OmegaConf, "register_resolver", staticmethod(legacy), raising=False)
    monkeypatch.setattr(OmegaConf, "register_new_resolver", staticmethod(new), raising=False)
    config._register_resolver("x", lambda: 1, use_cache=True)
    assert calls == [("new", "x", True)]

    def current(name, resolver, *, replace=False, use_cache=False):  # omegaconf >= 2.4
        calls.append(("current", name, use_cache))

    monkeypatch.setattr(OmegaConf, "register_resolver", staticmethod(current), raising=False)
    config._register_resolver("y", lambda: 1, use_cache=False)
    assert calls[-1] == ("current", "y", False)


# --------------------------------------------------------------------------- value rules
@dataclasses.dataclass
class Ranged:
    steps: int = checked(at_least(1), default=10)
    rate: float = checked(positive(), default=0.1)
    share: float = checked(fraction(), default=0.5)
    angle: float = checked(in_range(0, 180, lo_open=True, hi_open=True), default=40.0)
    region: Optional[List[float]] = checked(length(4, 6), default=None)
    sizes: List[int] = checked(length(at_least=1), each(at_least(2)), factory=lambda: [4])
    weight: Union[float, List[List[float]]] = checked(schedule(non_negative()), default=0.0)
    low: int = 0
    high: int = 5

    def check(self) -> Iterator[Tuple[str, str]]:
        if self.low > self.high:
            yield "low", f"must be <= high ({self.high}), got {self.low}"


@dataclasses.dataclass
class Holder:
    inner: Ranged = dataclasses.field(default_factory=Ranged)
    count: int = 3


def test_ranges_and_types_are_reported_together_with_key_paths():
    raw = {"count": "x", "inner": {"steps": 0, "rate": -1, "share": 1.5, "angle": 180, "region": [1, 2],
                                   "sizes": [4, 1, 8], "weight": [[0, 1.0], [-5, 2.0]]}}
    with pytest.raises(ConfigError) as err:
        parse(Holder, raw, path="cfg")
    msg = str(err.value)
    assert msg.startswith("invalid config (8 problems):")
    for line in ("cfg.count: expected an integer, got str 'x'",
                 "cfg.inner.steps: must be >= 1, got 0",
                 "cfg.inner.rate: must be > 0, got -1.0",
                 "cfg.inner.share: must be in [0, 1], got 1.5",
                 "cfg.inner.angle: must be in (0, 180), got 180.0",
                 "cfg.inner.region: must have 4 or 6 items, got [1.0, 2.0]",
                 "cfg.inner.sizes[1]: must be >= 2, got 1",
                 "cfg.inner.weight: must be a number or a list of [step >= 0, value] pairs"):
        assert line in msg, line
    assert "cfg.inner.sizes[0]" not in msg and "cfg.inner.sizes[2]" not in msg


def test_a_single_problem_is_one_line_naming_the_key():
    with pytest.raises(ConfigError) as err:
        parse(Holder, {"inner": {"steps": -5}})
    assert str(err.value) == "inner.steps: must be >= 1, got -5"


def test_ranges_pass_valid_values_and_none_for_optional_fields():
    parsed = parse(Holder, {"inner": {"steps": 1, "rate": 1e-9, "share": 0, "angle": 179.9, "region": [0, 0, 0, 1],
                                      "sizes": [2], "weight": [[0, 0.0], [100, 0.5]]}})
    assert parsed.inner.steps == 1 and parsed.inner.region == [0.0, 0.0, 0.0, 1.0]
    assert parse(Holder, {"inner": {"region": None}}).inner.region is None


def test_cross_field_check_runs_once_the_fields_are_clean():
    with pytest.raises(ConfigError) as err:
        parse(Holder, {"inner": {"low": 7}}, path="cfg")
    assert str(err.value) == "cfg.inner.low: must be <= high (5), got 7"
    # with a broken field the check does not run (it would see a wrong value); the field is reported
    with pytest.raises(ConfigError) as err:
        parse(Holder, {"inner": {"low": 7, "high": "five"}}, path="cfg")
    assert "cfg.inner.high: expected an integer" in str(err.value) and "cfg.inner.low" not in str(err.value)


def _registered_configs():
    import datasets.registered  # noqa: F401
    import models.registered  # noqa: F401
    import systems.registered  # noqa: F401
    from utils.registry import Registry

    kinds = ("dataset", "model", "geometry", "texture", "background", "encoding", "network", "system")
    return [(kind, name, Registry.find(kind).get(name).Config) for kind in kinds for name in Registry.find(kind).names()]


def test_every_registered_default_config_parses():
    from utils.registry import parse_config

    configs = _registered_configs()
    assert len(configs) >= 20
    for kind, name, schema in configs:
        raw = {"root_dir": "somewhere"} if kind == "dataset" else {}
        parse_config(schema, raw, path=f"{kind}:{name}")  # raises on an invalid default


@pytest.mark.parametrize("preset", sorted(p.name for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")))
def test_every_preset_parses(preset):
    from systems.build import load_experiment

    load_experiment(f"configs/{preset}", ["dataset.root_dir=somewhere"])


# number fields where every value means something (each says why); every other number field
# declares its range, so a bad value is refused with the config
FREE_NUMBERS = {
    "ExportConfig.threshold",  # a level of the SDF (any sign) or a density threshold
    "VarianceConfig.init_val",  # inv_s starts at exp(10 * init_val): any real
    "VolumeDensity.Config.density_bias",  # added before the activation: any real
    "TriPlane.Config.init_mean",  # mean of the initial features: any real
    "WithXYZ.Config.xyz_scale",  # scales the centred coordinates: any real (0 drops them)
}


def _numeric(tp) -> bool:
    import typing

    return tp in (int, float) or any(_numeric(a) for a in typing.get_args(tp) if a is not type(None))


def test_every_number_field_declares_its_range():
    import typing

    from utils.experiment import ExperimentConfig

    undeclared, seen = [], set()

    def walk(schema):
        if schema in seen:
            return
        seen.add(schema)
        hints = typing.get_type_hints(schema)
        for fld in dataclasses.fields(schema):
            tp = hints[fld.name]
            for sub in (tp, *typing.get_args(tp)):
                if dataclasses.is_dataclass(sub):
                    walk(sub)
            if _numeric(tp) and not field_rules(fld) and f"{schema.__qualname__}.{fld.name}" not in FREE_NUMBERS:
                undeclared.append(f"{schema.__module__}.{schema.__qualname__}.{fld.name}")

    walk(ExperimentConfig)
    for _, _, schema in _registered_configs():
        walk(schema)
    assert len(seen) >= 25
    assert undeclared == []
