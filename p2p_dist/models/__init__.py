"""The networks of pix2pix (Isola et al. 2017): generators, discriminators, our checkpoint
format and loading of the reference implementation's checkpoints.

The names below load their module on first use, so that `p2p_dist.models.registry` (the names
and shape rules, no torch) can be imported by the config and the console commands' --help
without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOME = {
    "ConversionReport": "convert",
    "from_reference_state_dict": "convert",
    "load_reference_generator": "convert",
    "reference_key_map": "convert",
    "to_reference_state_dict": "convert",
    "build_discriminator": "discriminator",
    "receptive_field": "discriminator",
    "INFERENCE_MODES": "generator_file",
    "load_generator": "generator_file",
    "resolve_checkpoint": "generator_file",
    "save_generator": "generator_file",
    "set_inference_mode": "generator_file",
    "build_generator": "generator",
    "count_parameters": "layers",
    "init_weights": "layers",
    "DISCRIMINATORS": "registry",
    "GENERATORS": "registry",
    "NORMS": "registry",
    "TASKS": "registry",
    "discriminator_in_channels": "registry",
    "native_size": "registry",
    "size_multiple": "registry",
    "GeneratorSpec": "spec",
}

__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))
