"""Pretrained backbone weights from the local torch cache, with a clear message when absent.

Nothing is ever downloaded. Files are looked up in `$TORCH_HOME/hub/checkpoints/` (the folder
torch.hub uses; TORCH_HOME defaults to ~/.cache/torch), so weights that torchvision or
pytorch-fid fetched on another machine can be copied there as they are.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch


class MetricUnavailable(Exception):
    """A metric cannot run here (missing weights, images too small): reported, never fatal."""


def checkpoints_dir() -> Path:
    """`$TORCH_HOME/hub/checkpoints` (torch.hub's cache folder)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_weight_file(patterns: list[str], what: str, source: str) -> Path:
    """The first file in the cache matching one of `patterns`; MetricUnavailable naming the
    expected file, the folder and where it comes from otherwise."""
    folder = checkpoints_dir()
    for pattern in patterns:
        hits = sorted(folder.glob(pattern)) if folder.is_dir() else []
        if hits:
            return hits[0]
    raise MetricUnavailable(
        f"{what} weights not found: put {patterns[0]} ({source}) into {folder} "
        f"(set TORCH_HOME to use another cache; nothing is downloaded)"
    )


def load_state_dict_file(path: Path, what: str) -> dict[str, torch.Tensor]:
    """A state dict from a .pth/.pt (torch.load, weights only) or .safetensors file."""
    try:
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file: the metric is unavailable, say why
        raise MetricUnavailable(f"{what} weights {path} could not be read ({type(exc).__name__}: {exc})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise MetricUnavailable(f"{what} weights {path} do not hold a state dict")
    return state


def load_checked(module: torch.nn.Module, state: dict, path: Path, what: str,
                 optional_suffixes: tuple[str, ...] = ("num_batches_tracked",),
                 prefix: str = "") -> None:
    """Load `state` (keys optionally under `prefix`) into `module` after an explicit key check.

    Every parameter/buffer of `module` must be present with the right shape (keys ending in one
    of `optional_suffixes` may be absent); extra keys in the file (classifier heads, auxiliary
    logits) are ignored. Problems raise MetricUnavailable naming the first offending keys.
    """
    expected = module.state_dict()
    picked: dict[str, torch.Tensor] = {}
    missing, wrong = [], []
    for key, ref in expected.items():
        src = state.get(prefix + key)
        if src is None:
            if not key.endswith(optional_suffixes):
                missing.append(prefix + key)
            continue
        if tuple(src.shape) != tuple(ref.shape):
            wrong.append(f"{prefix + key} {tuple(src.shape)} (expected {tuple(ref.shape)})")
            continue
        picked[key] = src.to(ref.dtype)
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise MetricUnavailable(f"{what} weights {path} lack key(s) {', '.join(missing[:3])}{more}")
    if wrong:
        more = f" and {len(wrong) - 3} more" if len(wrong) > 3 else ""
        raise MetricUnavailable(f"{what} weights {path} have wrong shapes: {'; '.join(wrong[:3])}{more}")
    module.load_state_dict(picked, strict=False)


def describe_cache() -> str:
    """One line for --help texts and reports."""
    env = os.environ.get("TORCH_HOME")
    return f"{checkpoints_dir()}" + ("" if env else " (TORCH_HOME unset: the default cache)")
