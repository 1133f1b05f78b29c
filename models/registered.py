"""Importing this module registers every encoding, network, model part and model."""
from models.encodings import registered as _encodings  # noqa: F401
from models.networks import registered as _networks  # noqa: F401
from models import background, geometry, nerf, neus, texture  # noqa: F401
