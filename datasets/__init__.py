"""Scene loaders by name: ``datasets.make(name, cfg)`` -> a scene (see datasets.base)."""
from utils.registry import Registry

datasets = Registry("dataset")
register = datasets.register
make = datasets.make
