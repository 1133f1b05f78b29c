"""Small networks (MLP, SIREN), made by name.

``networks.make(name, cfg, n_input_dims=..., n_output_dims=...)`` -> an ``nn.Module``.
"""
from utils.registry import Registry

networks = Registry("network")
register = networks.register
make = networks.make
