"""Importing this module registers every dataset loader."""
from datasets import blender, colmap, dtu, ngp, synthetic  # noqa: F401
