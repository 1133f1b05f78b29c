"""Shared helpers: registries, typed configs, run folders, saving."""
