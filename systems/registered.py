"""Importing this module registers every system."""
from systems import nerf, neus  # noqa: F401
