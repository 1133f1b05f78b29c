"""Name -> class registries, so components can be made from config by name.

Every registered class carries a ``Config`` dataclass describing its options; see
``utils.config`` for how a raw config is checked against it. This module uses ``utils.config``
(never the other way round): parsing is handed ``Registry.find`` to look up component kinds.
"""
from __future__ import annotations

import difflib
from typing import Any, Callable, Dict, List, Type

from utils.config import parse_component


class RegistryError(KeyError):
    """An unknown or duplicate name in a registry."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


class Registry:
    """A named table of classes.

    >>> encodings = Registry("encoding")
    >>> @encodings.register("identity")
    ... class Identity: ...
    >>> encodings.get("identity") is Identity
    True
    """

    # every registry by kind, so configs can name the registry their component lives in
    all: Dict[str, "Registry"] = {}

    def __init__(self, kind: str):
        if kind in Registry.all:
            raise RegistryError(f"a registry of kind '{kind}' already exists")
        self.kind = kind
        self._classes: Dict[str, Type] = {}
        Registry.all[kind] = self

    def register(self, name: str) -> Callable[[Type], Type]:
        def decorator(cls: Type) -> Type:
            if name in self._classes:
                old = self._classes[name]
                raise RegistryError(
                    f"{self.kind} '{name}' is already registered "
                    f"(by {old.__module__}.{old.__qualname__}); pick another name"
                )
            self._classes[name] = cls
            cls.registry_name = name
            return cls

        return decorator

    @classmethod
    def find(cls, kind: str) -> "Registry":
        """The registry of ``kind`` (e.g. "geometry"); what ``parse_component`` looks kinds up with."""
        if kind not in cls.all:
            raise RegistryError(f"no registry of kind '{kind}' (known: {', '.join(sorted(cls.all))})")
        return cls.all[kind]

    def names(self) -> List[str]:
        return sorted(self._classes)

    def __contains__(self, name: str) -> bool:
        return name in self._classes

    def get(self, name: str) -> Type:
        if name not in self._classes:
            close = difflib.get_close_matches(str(name), self.names(), n=3, cutoff=0.5)
            hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise RegistryError(
                f"unknown {self.kind} '{name}'.{hint} Known {self.kind}s: {', '.join(self.names())}"
            )
        return self._classes[name]

    def make(self, name: str, cfg: Any = None, *args: Any, path: str = "", **kwargs: Any) -> Any:
        """Build ``name`` from ``cfg`` (a dict, DictConfig or the class's Config instance).

        A raw mapping is checked against the class's ``Config`` first, so a typo fails here
        with the key path (``path`` is the prefix used in messages, e.g. ``model.geometry``).
        """
        cls = self.get(name)
        schema = getattr(cls, "Config", None)
        if schema is not None and not isinstance(cfg, schema):
            cfg = parse_config(schema, {} if cfg is None else cfg, path=path or self.kind)
            cfg.key_path = path or name
        return cls(cfg, *args, **kwargs)


def parse_config(schema: type, raw: Any, path: str = "") -> Any:
    """``utils.config.parse_component`` with components looked up in the registries."""
    return parse_component(schema, raw, path, components=Registry.find)
