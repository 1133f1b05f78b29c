"""Learnable parts and whole models, each kind made by name from its own registry:

- ``geometries``: fields of the shape (an SDF or a density) with features for the colour;
- ``textures``: colour fields fed by the geometry's features;
- ``backgrounds``: what lies beyond the scene box;
- ``models``: NeuS and NeRF, which own the parts above and render rays with them.
"""
from utils.registry import Registry

models = Registry("model")
geometries = Registry("geometry")
textures = Registry("texture")
backgrounds = Registry("background")
register = models.register
make = models.make
