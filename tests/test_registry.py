import dataclasses

import pytest

from utils.config import ConfigError
from utils.registry import Registry, RegistryError

things = Registry("test-thing")


@things.register("alpha")
class Alpha:
    @dataclasses.dataclass
    class Config:
        size: int = 1

    def __init__(self, cfg, extra=None):
        self.cfg, self.extra = cfg, extra


def test_make_checks_raw_config_and_passes_extra_args():
    obj = things.make("alpha", {"size": 4}, extra="x")
    assert obj.cfg.size == 4 and obj.extra == "x"
    with pytest.raises(ConfigError, match="test-thing.sise"):
        things.make("alpha", {"sise": 4})


def test_duplicate_name_raises():
    with pytest.raises(RegistryError, match="already registered"):
        things.register("alpha")(type("Other", (), {}))
    assert things.get("alpha") is Alpha


def test_unknown_name_lists_known_and_suggests():
    with pytest.raises(RegistryError) as err:
        things.get("alpah")
    assert "'alpha'" in str(err.value) and "Known test-things: alpha" in str(err.value)


def test_duplicate_registry_kind_raises():
    with pytest.raises(RegistryError):
        Registry("test-thing")


def test_toolkit_registries_are_filled():
    import datasets.registered  # noqa: F401
    import models.registered  # noqa: F401
    import systems.registered  # noqa: F401
    from datasets import datasets
    from models import backgrounds, geometries, models, textures
    from systems import systems

    assert {"blender", "synthetic", "dtu", "colmap", "ngp"} <= set(datasets.names())
    # one registry per kind of part, so a radiance field cannot be parsed as a geometry
    assert set(models.names()) == {"neus", "nerf"}
    assert set(geometries.names()) == {"volume-sdf", "volume-density"}
    assert set(textures.names()) == {"volume-radiance", "volume-color"}
    assert set(backgrounds.names()) == {"nerf-background"}
    assert {"neus-system", "nerf-system"} <= set(systems.names())


def test_a_part_of_the_wrong_kind_is_refused_naming_the_key():
    import models.registered  # noqa: F401
    from models import models

    with pytest.raises(ConfigError, match=r"model.geometry.name: unknown geometry 'volume-radiance'"):
        models.make("neus", {"geometry": {"name": "volume-radiance"}}, path="model")
