"""YAML configs: loading with ``extends``, resolvers, command-line overrides, strict typed checks.

A config file is OmegaConf YAML. A preset may name a base with ``extends: base/neus.yaml``
(a path relative to the preset, or a list of them, merged in order, the preset last).

Every component declares a ``Config`` dataclass. ``parse_component`` checks a raw mapping
against it and returns an instance; all problems are gathered into one ``ConfigError`` that
names each full key path and, for unknown keys and bad choices, the nearest valid names.
When configs are merged (bases, then the preset, then overrides), a mapping that names another
component (a different ``name``) replaces the base's mapping instead of merging into it, so
switching e.g. ``xyz_encoding.inner.name`` from hashgrid to triplane drops the hash-grid options.

A field made with ``component("geometry")`` holds a nested component chosen by its ``name``
from that kind of registry, and is checked against the chosen class's own ``Config``. This module
knows no registries: the caller passes a ``components`` lookup (kind -> table of classes, see
``utils.registry.Registry.find``), so data flows one way (registry -> config).

Ranges are declared where a field is declared, and checked with the types (see "value rules"):

    max_steps: int = checked(at_least(1), default=20000)
    occ_thre: float = checked(fraction(), default=0.001)
    region: Optional[List[float]] = checked(length(4, 6), default=None)   # None is always allowed

Checks that involve several fields are a ``check(self)`` method of the dataclass yielding
``(key, message)`` pairs (key relative to the dataclass, "" for itself); it runs once the
dataclass's own fields parsed cleanly, and its problems join the same ConfigError.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import time
import typing
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Mapping, Optional, Protocol, Sequence, Tuple, Union

from omegaconf import DictConfig, ListConfig, OmegaConf

MISSING = "???"
EXTENDS_KEY = "extends"


class ConfigError(ValueError):
    """A config that cannot be used; the message names every key at fault."""


class ComponentTable(Protocol):
    """What parsing needs of a registry: its names and the class behind a name."""

    def names(self) -> List[str]: ...

    def get(self, name: str) -> type: ...

    def __contains__(self, name: str) -> bool: ...


#: kind (e.g. "geometry") -> its table of classes; raises KeyError for an unknown kind
ComponentLookup = Callable[[str], ComponentTable]


# --------------------------------------------------------------------------- resolvers
def _register_resolvers() -> None:
    resolvers = {
        "add": lambda a, b: a + b,
        "sub": lambda a, b: a - b,
        "mul": lambda a, b: a * b,
        "div": lambda a, b: a / b,
        "idiv": lambda a, b: a // b,
        # per-step factor of an exponential decay that reaches `factor` after `n` steps
        "calc_exp_lr_decay_rate": lambda factor, n: factor ** (1.0 / n),
        "basename": lambda p: os.path.basename(str(p).rstrip("/")),
        "timestamp": lambda fmt="%Y%m%d-%H%M%S": time.strftime(fmt),
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            # cached so that e.g. ${timestamp:} gives one value for the whole run
            _register_resolver(name, fn, use_cache=name == "timestamp")


def _register_resolver(name: str, fn: Callable[..., Any], use_cache: bool) -> None:
    """OmegaConf 2.4 has ``register_resolver(..., use_cache=)`` and deprecates
    ``register_new_resolver``; 2.1-2.3 have ``register_new_resolver`` and a legacy
    ``register_resolver`` without ``use_cache``. Pick by signature, not by version string."""
    import inspect

    legacy = getattr(OmegaConf, "register_resolver", None)
    if legacy is not None and "use_cache" in inspect.signature(legacy).parameters:
        legacy(name, fn, use_cache=use_cache)
    else:
        OmegaConf.register_new_resolver(name, fn, use_cache=use_cache)


_register_resolvers()


# --------------------------------------------------------------------------- loading
def _yaml_problem(err: Exception) -> str:
    """A YAML error in one line: what is wrong and where (line and column, 1-based)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None)
    if mark is not None and problem:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    if isinstance(err, UnicodeDecodeError):
        return "not a text file (a YAML config is text)"
    return " ".join(str(err).split())


def _load_yaml(path: Path) -> DictConfig:
    try:
        cfg = OmegaConf.load(path)
    except Exception as err:  # yaml scanner errors carry line numbers; keep them
        raise ConfigError(f"cannot read config file '{path}': {_yaml_problem(err)}") from err
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"config file '{path}' must hold a mapping at the top level")
    return cfg


def load_yaml_with_extends(path: str | os.PathLike, _chain: Sequence[Path] = ()) -> DictConfig:
    """Load ``path``, merging the files named by its ``extends`` key underneath it."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file '{path}' is a folder (give a YAML file, e.g. configs/neus-synthetic.yaml)")
    if not path.is_file():
        if _chain:
            raise ConfigError(
                f"config '{_chain[-1]}' extends '{path}', which does not exist"
            )
        raise ConfigError(f"config file '{path}' does not exist")
    resolved = path.resolve()
    if resolved in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, resolved))
        raise ConfigError(f"configs extend each other in a cycle: {cycle}")
    cfg = _load_yaml(path)
    bases = cfg.pop(EXTENDS_KEY, None)
    if bases is None:
        return cfg
    if isinstance(bases, str):
        bases = [bases]
    merged = OmegaConf.create()
    for base in bases:
        base_cfg = load_yaml_with_extends(path.parent / str(base), (*_chain, resolved))
        merged = merge_configs(merged, base_cfg)
    return merge_configs(merged, cfg)


def _merge_plain(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        old = out.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            if "name" in value and "name" in old and value["name"] != old["name"]:
                out[key] = value  # another component: the old one's options do not apply
            else:
                out[key] = _merge_plain(old, value)
        else:
            out[key] = value
    return out


def merge_configs(base: DictConfig, over: DictConfig) -> DictConfig:
    """``over`` merged into ``base`` (interpolations kept). Like OmegaConf.merge, except that a
    mapping whose ``name`` differs from the base's (a different component) replaces it whole."""
    plain_base = OmegaConf.to_container(base, resolve=False)
    plain_over = OmegaConf.to_container(over, resolve=False)
    return OmegaConf.create(_merge_plain(plain_base, plain_over))


def parse_overrides(overrides: Sequence[str]) -> DictConfig:
    """``["a.b=1", "tag=x"]`` -> a DictConfig; each item must be ``key=value``."""
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(
                f"command-line override '{item}' is not of the form key=value "
                "(e.g. trainer.max_steps=500)"
            )
    for item in overrides:  # one at a time first, to name the one at fault
        try:
            OmegaConf.from_dotlist([item])
        except Exception as err:
            problem = getattr(err, "problem", None) or (str(err).splitlines() or [type(err).__name__])[0]
            raise ConfigError(f"command-line override '{item}': cannot parse it: {problem} (check its brackets "
                              "and quotes: a list is written key=[1,2])") from err
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except Exception as err:
        raise ConfigError(f"cannot parse command-line overrides {list(overrides)}: {_one_line(err)}") from err


def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> DictConfig:
    """The preset at ``path`` with its bases and the ``key=value`` overrides merged in."""
    cfg = load_yaml_with_extends(path)
    if overrides:
        cfg = merge_configs(cfg, parse_overrides(overrides))
    return cfg


def to_plain(cfg: Any, path: str = "") -> Any:
    """Resolve interpolations and return plain dicts/lists; '???' values are kept as '???'."""
    if isinstance(cfg, (DictConfig, ListConfig)):
        try:
            return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
        except Exception as err:
            key = getattr(err, "full_key", None) or path
            raise ConfigError(f"{key or 'config'}: cannot resolve its value: {_one_line(err)}") from err
    return cfg


def _one_line(err: Exception) -> str:
    """The first line of an error's message (OmegaConf appends full_key/object_type lines)."""
    return (str(err).splitlines() or [type(err).__name__])[0].strip() or type(err).__name__


# --------------------------------------------------------------------------- value rules
@dataclasses.dataclass(frozen=True)
class Rule:
    """A condition on a parsed config value: ``ok(value)``, and ``text``, what a message says when
    it fails ("must be >= 1"). ``items`` rules apply to each item of a list instead."""

    ok: Callable[[Any], bool]
    text: str
    items: bool = False

    def problems(self, value: Any, path: str) -> List[Tuple[str, str]]:
        """(key path, message) for each way ``value`` breaks this rule ([] when it holds)."""
        if value is None:
            return []  # None is a choice of its own (Optional fields), checked by the type
        if self.items:
            if not isinstance(value, (list, tuple)):
                return []
            return [(_join(path, i), f"{self.text}, got {v!r}") for i, v in enumerate(value)
                    if v is not None and not _holds(self.ok, v)]
        return [] if _holds(self.ok, value) else [(path, f"{self.text}, got {value!r}")]


def _holds(ok: Callable[[Any], bool], value: Any) -> bool:
    try:
        return bool(ok(value))
    except (TypeError, ValueError):  # e.g. a rule on numbers meeting a string of a Union
        return False


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not (isinstance(v, float) and math.isnan(v))


def rule(ok: Callable[[Any], bool], text: str) -> Rule:
    """A rule of one's own: ``rule(lambda v: v % 8 == 0, "must be a multiple of 8")``."""
    return Rule(ok, text)


def at_least(lo: float) -> Rule:
    return Rule(lambda v: _number(v) and v >= lo, f"must be >= {lo}")


def at_most(hi: float) -> Rule:
    return Rule(lambda v: _number(v) and v <= hi, f"must be <= {hi}")


def positive() -> Rule:
    return Rule(lambda v: _number(v) and v > 0, "must be > 0")


def non_negative() -> Rule:
    return Rule(lambda v: _number(v) and v >= 0, "must be >= 0")


def in_range(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> Rule:
    """lo <= v <= hi, with either end excluded when ``lo_open`` / ``hi_open``."""
    def ok(v: Any) -> bool:
        return _number(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)

    return Rule(ok, f"must be in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}")


def fraction() -> Rule:
    """A value in [0, 1] (an opacity, a probability, a decay)."""
    return in_range(0, 1)


def length(*allowed: int, at_least: Optional[int] = None) -> Rule:
    """A list of exactly one of the ``allowed`` lengths, or of at least ``at_least`` items."""
    if at_least is not None:
        return Rule(lambda v: len(v) >= at_least,
                    "must not be empty" if at_least == 1 else f"must have at least {at_least} items")
    shown = " or ".join(str(n) for n in allowed)
    return Rule(lambda v: len(v) in allowed, f"must have {shown} items")


def each(inner: Rule) -> Rule:
    """``inner`` applied to every item of a list (problems name the item: ``key[2]``)."""
    return Rule(inner.ok, inner.text, items=True)


def schedule(values: Rule) -> Rule:
    """A number or a piecewise-linear schedule ``[[step, value], ...]`` (utils/schedules.py) with
    steps >= 0 and every value meeting ``values``."""
    def ok(v: Any) -> bool:
        if not isinstance(v, (list, tuple)):
            return values.ok(v)
        return bool(v) and all(isinstance(p, (list, tuple)) and len(p) == 2 and _number(p[0]) and p[0] >= 0
                               and values.ok(p[1]) for p in v)

    return Rule(ok, f"must be a number or a list of [step >= 0, value] pairs; each value {values.text}")


def folder_name(allow_empty: bool = False) -> Rule:
    """A string that can name one folder: no '/', not '.' or '..'."""
    def ok(v: Any) -> bool:
        if v == "":
            return allow_empty
        return isinstance(v, str) and "/" not in v and "\\" not in v and "\0" not in v and v not in (".", "..")

    return Rule(ok, "must be a single folder name (no '/', not '.' or '..')" + ("" if allow_empty else ", not empty"))


def checked(*rules: Rule, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING,
            **metadata: Any) -> Any:
    """A dataclass field whose value must meet ``rules`` (checked when a config is parsed, with
    the types); give ``default`` or ``factory`` as for ``dataclasses.field``."""
    meta = {**metadata, "rules": tuple(rules)}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def field_rules(fld: dataclasses.Field) -> Tuple[Rule, ...]:
    """The rules declared on a dataclass field (() when none)."""
    return tuple(fld.metadata.get("rules", ()))


# --------------------------------------------------------------------------- schema
def component(registry: str, default: Any = None, help: str = "") -> Any:
    """A dataclass field holding a nested component chosen by name from ``registry``.

    Its raw value is a mapping with a ``name`` key; the rest is checked against that
    class's ``Config``. ``default`` is a raw mapping (or None for an optional component).
    """
    meta = {"registry": registry, "help": help}
    if default is None:
        return dataclasses.field(default=None, metadata=meta)
    return dataclasses.field(default_factory=lambda: dict(default), metadata=meta)


def _deep_merge(base: Mapping, over: Mapping) -> Dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _merge_component_default(default: Any, raw: Any) -> Any:
    """A component's raw mapping over its default, when both choose the same class (or raw names none)."""
    if isinstance(raw, (DictConfig, ListConfig)):
        raw = to_plain(raw)
    if not isinstance(default, Mapping) or not isinstance(raw, Mapping):
        return raw
    if "name" in raw and raw["name"] != default.get("name"):
        return raw  # another class: the default's options belong to a different schema
    return _deep_merge(default, raw)


def nearest(name: str, options: Sequence[str]) -> str:
    """" Did you mean 'x'?" for the options closest to ``name`` ("" when none is close)."""
    close = difflib.get_close_matches(str(name), [str(o) for o in options], n=3, cutoff=0.5)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def _join(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


class _Parser:
    """Walks a raw value against a type annotation, gathering errors."""

    def __init__(self, components: Optional[ComponentLookup] = None) -> None:
        self.errors: List[str] = []
        self.components = components

    def fail(self, path: str, msg: str) -> None:
        self.errors.append(f"{path or '<root>'}: {msg}")

    def dataclass(self, schema: type, raw: Any, path: str) -> Any:
        if isinstance(raw, (DictConfig, ListConfig)):
            raw = to_plain(raw, path)
        if not isinstance(raw, Mapping):
            self.fail(path, f"expected a mapping of options, got {type(raw).__name__} {raw!r}")
            return None
        hints = typing.get_type_hints(schema)
        fields = {f.name: f for f in dataclasses.fields(schema) if f.init}
        for key in raw:
            if key not in fields and key != "name":
                self.fail(
                    _join(path, key),
                    f"unknown key '{key}'.{nearest(key, list(fields))} "
                    f"Valid keys here: {', '.join(sorted(fields))}",
                )
        values: Dict[str, Any] = {}
        errors_before = len(self.errors)
        for name, fld in fields.items():
            key_path = _join(path, name)
            if name in raw:
                value = raw[name]
            elif fld.default is not dataclasses.MISSING:
                value = fld.default
            elif fld.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                value = fld.default_factory()  # type: ignore[misc]
            else:
                self.fail(key_path, "missing mandatory value (no default; set it in the config)")
                continue
            if isinstance(value, str) and value == MISSING:
                self.fail(key_path, "missing mandatory value '???' (set it in the config or on the command line)")
                continue
            registry = fld.metadata.get("registry")
            if registry is not None:
                if name in raw and fld.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                    value = _merge_component_default(fld.default_factory(), value)  # type: ignore[misc]
                values[name] = self.component(registry, value, key_path)
            else:
                before = len(self.errors)
                values[name] = self.value(hints[name], value, key_path)
                if len(self.errors) == before:  # ranges only of values of the right type
                    for rule in field_rules(fld):
                        for where, msg in rule.problems(values[name], key_path):
                            self.fail(where, msg)
        try:
            instance = schema(**values)
        except Exception as err:  # a __post_init__ check of the schema itself
            self.fail(path, str(err))
            return None
        if len(self.errors) == errors_before:  # cross-field checks need clean fields
            self.check_instance(instance, path)
        return instance

    def check_instance(self, instance: Any, path: str) -> None:
        """The dataclass's own ``check()`` problems, as (key relative to it, message) pairs."""
        check = getattr(instance, "check", None)
        if not callable(check):
            return
        try:
            for key, msg in check() or ():
                self.fail(_join(path, key) if key else path, msg)
        except Exception as err:  # noqa: BLE001 (a check that trips over a value is a problem with it)
            self.fail(path, f"{type(err).__name__}: {err}")

    def component(self, registry_kind: str, raw: Any, path: str) -> Any:
        if raw is None:
            return None
        if isinstance(raw, (DictConfig, ListConfig)):
            raw = to_plain(raw, path)
        if not isinstance(raw, Mapping) or "name" not in raw:
            article = "an" if registry_kind[:1] in "aeiou" else "a"
            self.fail(path, f"expected a mapping with a 'name' key choosing {article} {registry_kind}")
            return None
        if self.components is None:
            raise TypeError(f"config schema at '{path}' holds a {registry_kind} component: "
                            "parse it with a components lookup (utils.registry.parse_config)")
        registry = self.components(registry_kind)
        name = raw["name"]
        if name == MISSING:
            self.fail(_join(path, "name"), f"missing mandatory value '???' (choose a {registry_kind})")
            return None
        if name not in registry:
            self.fail(
                _join(path, "name"),
                f"unknown {registry_kind} '{name}'.{nearest(name, registry.names())} "
                f"Known: {', '.join(registry.names())}",
            )
            return None
        cls = registry.get(name)
        schema = getattr(cls, "Config", None)
        if schema is None:
            self.fail(path, f"{registry_kind} '{name}' declares no Config")
            return None
        parsed = self.dataclass(schema, raw, path)
        if parsed is not None:
            parsed.name = name  # which class to make; kept beside the typed options
            parsed.key_path = path  # where it sits, for messages (see key_of)
        return parsed

    def value(self, tp: Any, raw: Any, path: str) -> Any:
        if isinstance(raw, (DictConfig, ListConfig)):
            raw = to_plain(raw, path)
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if tp is Any:
            return raw
        if isinstance(raw, str) and raw == MISSING:
            self.fail(path, "missing mandatory value '???'")
            return None
        if dataclasses.is_dataclass(tp):
            if isinstance(raw, tp):  # a default instance: already valid
                return raw
            return self.dataclass(tp, raw, path)
        if origin is Literal:
            if raw not in args:
                self.fail(
                    path,
                    f"{raw!r} is not one of the choices {list(args)}.{nearest(str(raw), [str(a) for a in args])}",
                )
            return raw
        if origin is Union:
            if raw is None and type(None) in args:
                return None
            options = [a for a in args if a is not type(None)]
            # the option of raw's own type first: typing caches Union[int, float] and
            # Union[float, int] as one, so the declared order cannot be relied on (1 must stay an int)
            options.sort(key=lambda o: o is not type(raw))
            for option in options:
                probe = _Parser(self.components)
                out = probe.value(option, raw, path)
                if not probe.errors:
                    return out
            if len(options) == 1:
                return self.value(options[0], raw, path)
            names = " or ".join(getattr(o, "__name__", str(o)) for o in options)
            self.fail(path, f"expected {names}, got {type(raw).__name__} {raw!r}")
            return None
        if origin in (list, List, Sequence, tuple):
            if not isinstance(raw, (list, tuple)):
                self.fail(path, f"expected a list, got {type(raw).__name__} {raw!r}")
                return None
            if origin is tuple and args and args[-1] is not Ellipsis:
                if len(raw) != len(args):
                    self.fail(path, f"expected a list of {len(args)} items, got {len(raw)}")
                    return None
                return tuple(self.value(a, v, _join(path, i)) for i, (a, v) in enumerate(zip(args, raw)))
            item_tp = args[0] if args else Any
            items = [self.value(item_tp, v, _join(path, i)) for i, v in enumerate(raw)]
            return tuple(items) if origin is tuple else items
        if origin in (dict, Dict, Mapping):
            if not isinstance(raw, Mapping):
                self.fail(path, f"expected a mapping, got {type(raw).__name__} {raw!r}")
                return None
            val_tp = args[1] if len(args) == 2 else Any
            return {k: self.value(val_tp, v, _join(path, k)) for k, v in raw.items()}
        if tp is bool:
            if not isinstance(raw, bool):
                self.fail(path, f"expected true or false, got {type(raw).__name__} {raw!r}")
            return raw
        if tp is int:
            if isinstance(raw, bool) or not isinstance(raw, int):
                if isinstance(raw, float) and raw.is_integer():
                    return int(raw)
                self.fail(path, f"expected an integer, got {type(raw).__name__} {raw!r}")
                return None
            return raw
        if tp is float:
            if isinstance(raw, bool):
                self.fail(path, f"expected a number, got bool {raw!r}")
                return None
            if isinstance(raw, (int, float)):
                return float(raw)
            if isinstance(raw, str):
                try:
                    out = float(raw)
                    if not math.isnan(out):
                        return out
                except ValueError:
                    pass
            self.fail(path, f"expected a number, got {type(raw).__name__} {raw!r}")
            return None
        if tp is str:
            if not isinstance(raw, str):
                self.fail(path, f"expected a string, got {type(raw).__name__} {raw!r}")
                return None
            return raw
        raise TypeError(f"config schema at '{path}' uses an unsupported type {tp!r}")


def parse_component(schema: type, raw: Any, path: str = "", components: Optional[ComponentLookup] = None) -> Any:
    """Check ``raw`` against the dataclass ``schema``; return an instance or raise ConfigError.

    ``components`` finds the class table of a component kind; it is needed when ``schema`` (or a
    nested schema) has ``component(...)`` fields."""
    parser = _Parser(components)
    out = parser.dataclass(schema, raw, path)
    if parser.errors:
        raise config_error(parser.errors)
    return out


def key_of(cfg: Any, field: str, default_prefix: str) -> str:
    """The full key of ``cfg``'s ``field`` for messages, e.g. ``model.geometry.xyz_encoding.inner.backend``
    (``default_prefix`` when ``cfg`` was not parsed as a component of a larger config)."""
    return f"{getattr(cfg, 'key_path', None) or default_prefix}.{field}"


def config_error(problems: Sequence[str]) -> ConfigError:
    """One ConfigError for ``problems`` ("key: what is wrong" each): one line for one problem
    (``key: what is wrong``), else a count and a line per problem."""
    if len(problems) == 1:
        return ConfigError(problems[0])
    lines = "\n".join(f"  - {e}" for e in problems)
    return ConfigError(f"invalid config ({len(problems)} problems):\n{lines}")


def config_to_dict(cfg: Any) -> Any:
    """A parsed config (dataclasses, with component names) back to plain dicts, for saving."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        out = {}
        if hasattr(cfg, "name") and "name" not in {f.name for f in dataclasses.fields(cfg)}:
            out["name"] = cfg.name
        for f in dataclasses.fields(cfg):
            out[f.name] = config_to_dict(getattr(cfg, f.name))
        return out
    if isinstance(cfg, (list, tuple)):
        return [config_to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: config_to_dict(v) for k, v in cfg.items()}
    return cfg


# --------------------------------------------------------------------------- renamed keys
@dataclasses.dataclass(frozen=True)
class KeyChange:
    """A key that moved or became derived. ``new``: where it lives now (its value moves there);
    or ``derived_from``: the key it is now computed from (a value equal to that key's, or an
    interpolation, is dropped; any other value is refused, naming the key to set instead)."""

    old: str
    new: Optional[str] = None
    derived_from: Optional[str] = None
    note: str = ""


MISSING_KEY = object()  # "no such key" (None is a value)


def _pop_path(tree: Dict[str, Any], path: str) -> Any:
    *parents, last = path.split(".")
    node = tree
    for key in parents:
        node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            return MISSING_KEY
    return node.pop(last, MISSING_KEY) if last in node else MISSING_KEY


def _get_path(tree: Dict[str, Any], path: str) -> Any:
    node: Any = tree
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return MISSING_KEY
        node = node[key]
    return node


def _set_path(tree: Dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node = tree
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value


def migrate_keys(cfg: DictConfig, changes: Sequence[KeyChange]) -> DictConfig:
    """``cfg`` with the old keys of ``changes`` moved to their new places (with a warning that
    names the new key) or dropped when they are now derived. Raises ConfigError when an old key
    and its new key are both set, or a derived key is set to something else than it derives to."""
    import logging

    log = logging.getLogger("config")
    tree = OmegaConf.to_container(cfg, resolve=False)
    errors: List[str] = []
    for change in changes:
        value = _pop_path(tree, change.old)
        if value is MISSING_KEY:
            continue
        if change.new is not None:
            if _get_path(tree, change.new) is not MISSING_KEY:
                errors.append(f"{change.old}: this key is now {change.new}, which is set too; remove {change.old}")
                continue
            _set_path(tree, change.new, value)
            log.warning("config key '%s' is now '%s': used as that (please update the config)", change.old, change.new)
            continue
        source = change.derived_from
        if isinstance(value, str) and value.startswith("${"):
            continue  # an interpolation: what the derivation does now
        derived = OmegaConf.select(cfg, source, default=None) if source else None
        if derived is not None and value == derived:
            log.warning("config key '%s' is no longer a setting (%s); ignored", change.old, change.note)
            continue
        errors.append(f"{change.old}: no longer a setting ({change.note}); "
                      + (f"set {source} instead" if source else "remove it"))
    if errors:
        raise config_error(errors)
    return OmegaConf.create(tree)
