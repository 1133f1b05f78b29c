"""Lightning systems by name: ``systems.make(name, cfg, ...)`` -> a LightningModule."""
from utils.registry import Registry

systems = Registry("system")
register = systems.register
make = systems.make
