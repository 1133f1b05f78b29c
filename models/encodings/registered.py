"""Importing this module registers every encoding."""
from models.encodings import basic, frequency, grids, hashgrid, spherical_harmonics  # noqa: F401
