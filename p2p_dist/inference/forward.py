"""`translate_batch`: the one place where a generator is applied at test time.

Used by `p2p-translate`, `p2p-eval score --checkpoint` and the training's sample grids, so that the
same checkpoint, inputs and seed give the same images everywhere.

Modes (`INFERENCE_MODES`):

* `eval`: `model.eval()` (BatchNorm running statistics, no dropout); the whole batch in one
  forward pass; deterministic.
* `paper`: the paper's test-time behaviour (train mode: dropout on, BatchNorm with the test
  image's own statistics, as the reference at its default test batch size 1). Every input is
  forwarded on its own, its dropout noise seeded from its key: `sample_seed(seed, key)`. So an
  image's output depends on the checkpoint, the image, its key and `--seed`, never on batching,
  order or the number of processes. Keys are the sample key for shards, the file name without
  extension for folders, and `KEY#r,c` for tile (r, c) of a tiled image (`p2p_dist/inference/tiling.py`).
  The model's buffers (BatchNorm running statistics) and its train/eval flag are left as they were.

`model` may also be an exported generator loaded by `p2p_dist/inference/runtime.py` (any callable
that maps a float32 BxCxHxW tensor to one); those hold the eval-mode network only.
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
