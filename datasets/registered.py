"""Importing this module registers every dataset loader."""
from datasets import blender, synthetic  # noqa: F401
