"""Importing this module registers every network."""
from models.networks import mlp, siren, tcnn  # noqa: F401
