"""Gradient traffic of the DDP engine: bucket size, gradients as bucket views, bf16 compression.

- `train.ddp_bucket_mb`: DDP all-reduces gradients in buckets of this size while the backward pass
  still runs (smaller buckets start sooner, larger ones cost fewer calls).
- `train.gradient_as_bucket_view`: the `.grad` tensors are views into the buckets (one copy of the
  gradients fewer in memory and per step); same values.
- `train.grad_compression=bf16`: each bucket travels as bfloat16 (half the bytes) and is summed in
  bfloat16, then copied back into the float32 gradients: the update changes by bf16 rounding of the
  averaged gradient (8 bits of mantissa). torch's bf16_compress_hook refuses gloo (DDP checks it by
  name), so the hook is written here for every backend.
bench/README.md has the communication model these options are for.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def ddp_kwargs(cfg) -> dict:
    """Keyword arguments for DistributedDataParallel from the config."""
    return {"bucket_cap_mb": cfg.train.ddp_bucket_mb, "gradient_as_bucket_view": cfg.train.gradient_as_bucket_view}


def bf16_allreduce_hook(process_group, bucket):
    """All-reduce the bucket's mean in bfloat16 and write it back into the float32 bucket. (No type
    annotations: DDP checks them against dist.GradBucket, and this module's are strings.)"""
    group = process_group if process_group is not None else dist.group.WORLD
    buffer = bucket.buffer()
    compressed = buffer.to(torch.bfloat16).div_(dist.get_world_size(group))
    future = dist.all_reduce(compressed, group=group, async_op=True).get_future()

    def decompress(fut):
        buffer.copy_(fut.value()[0])
        return buffer

    return future.then(decompress)


def register_comm_hooks(cfg, *models: nn.Module | None) -> int:
    """`train.grad_compression` on every DDP-wrapped model; returns how many got a hook."""
    if cfg.train.grad_compression == "none":
        return 0
    hooked = 0
    for model in models:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model.register_comm_hook(None, bf16_allreduce_hook)
            hooked += 1
    return hooked
