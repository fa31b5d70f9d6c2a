"""Engines: how a run uses its processes and devices. `build_engine(cfg)` picks one by `train.engine`.

Each engine is one module of this package named after its `train.engine` value, exporting `ENGINE`
(a subclass of `base.Engine`; docs/architecture.md, `engines/`). A new engine's name also goes among
train.engine's choices in p2p_dist/config.py (tests/unit/test_train_engines.py checks that the two
lists agree).
"""

from __future__ import annotations

import importlib
import pkgutil

from p2p_dist.config import Config
from p2p_dist.train.engines.base import Engine, StepModels

NOT_ENGINES = {"base", "deepspeed_config"}


def engine_names() -> list[str]:
    """The engine modules of this package (without importing them)."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in NOT_ENGINES)


def resolve_engine_name(requested: str) -> str:
    """`auto`: DeepSpeed when `accelerate launch` was given a DeepSpeed config, else DDP."""
    if requested != "auto":
        return requested
    from p2p_dist.train.engines.deepspeed_config import deepspeed_request

    return "ddp" if deepspeed_request() is None else "deepspeed"


def build_engine(cfg: Config) -> Engine:
    module = importlib.import_module(f"{__name__}.{resolve_engine_name(cfg.train.engine)}")
    return module.ENGINE(cfg)


__all__ = ["Engine", "StepModels", "build_engine", "engine_names", "resolve_engine_name"]
