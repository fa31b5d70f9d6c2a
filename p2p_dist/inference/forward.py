"""`translate_batch`: the one place where a generator is applied at test time (p2p-translate,
`p2p-eval score --checkpoint` and the training's sample grids), so that the same checkpoint, inputs
and seed give the same images everywhere.

Modes (`INFERENCE_MODES`, README "--mode paper"): `eval` runs `model.eval()` on the whole batch;
`paper` forwards each input on its own in train mode, its dropout noise seeded by
`sample_seed(seed, key)`, and leaves the model's buffers and train/eval flag as they were. `model`
may also be an exported generator (p2p_dist/inference/runtime.py), a callable holding the eval-mode
network.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Sequence

import torch

from p2p_dist.models import INFERENCE_MODES, set_inference_mode

PRECISIONS = ("fp32", "bf16")


def sample_seed(seed: int, key: str) -> int:
    """The dropout seed of one network input in paper mode."""
    return (int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:12], 16) + seed) % (2**63)


@contextlib.contextmanager
def _kept_state(model: torch.nn.Module):
    """Restore the train/eval flags and the buffers (BatchNorm running statistics) afterwards."""
    flags = {m: m.training for m in model.modules()}
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, v in saved:
                b.copy_(v)
        for m, flag in flags.items():
            m.training = flag


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def translate_batch(
    model: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    mode: str,
    keys: Sequence[str] | None = None,
    seed: int = 0,
    precision: str = "fp32",
) -> torch.Tensor:
    """Generator outputs (float32, on x's device) for the inputs `x` (BxCxHxW in the network's
    value range). `keys` name the inputs for the paper-mode seeds (default: their positions)."""
    if mode not in INFERENCE_MODES:
        raise ValueError(f"unknown inference mode {mode!r}; choose one of: {', '.join(INFERENCE_MODES)}")
    if not isinstance(model, torch.nn.Module):
        if mode != "eval":
            raise ValueError("an exported generator holds the eval-mode network only")
        return model(x).float()
    keys = [str(i) for i in range(len(x))] if keys is None else list(keys)
    if len(keys) != len(x):
        raise ValueError(f"{len(keys)} keys for {len(x)} inputs")
    with torch.inference_mode(), _kept_state(model), _autocast(x.device, precision):
        if mode == "eval":
            return set_inference_mode(model, "eval")(x).float()
        set_inference_mode(model, "paper")
        outs = []
        devices = [x.device] if x.device.type == "cuda" else []
        for i, key in enumerate(keys):
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(sample_seed(seed, key))
                outs.append(model(x[i : i + 1]).float())
        return torch.cat(outs)
