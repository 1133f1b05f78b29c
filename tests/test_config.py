"""Config loading: extends, resolvers, overrides, and every kind of error naming its key path."""
import dataclasses
import time
from typing import Any, List, Literal, Optional

import pytest
from omegaconf import OmegaConf

from utils.config import ConfigError, component, load_config, parse_component, to_plain
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
