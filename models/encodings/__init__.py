"""Input encodings (positions in the unit cube, or directions), made by name.

``encodings.make(name, cfg, n_input_dims=3)`` -> an ``nn.Module`` with ``n_output_dims``.
"""
from utils.registry import Registry

encodings = Registry("encoding")
register = encodings.register
make = encodings.make
