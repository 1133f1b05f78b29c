"""Importing this module registers every network."""
from models.networks import mlp, siren  # noqa: F401
