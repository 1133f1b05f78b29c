"""Learnable parts and renderers. ``models.make(name, cfg)`` builds any registered model part
(geometry, texture, variance, whole NeuS/NeRF models) from its config."""
from utils.registry import Registry

models = Registry("model")
register = models.register
make = models.make
