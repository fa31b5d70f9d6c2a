"""Gradient traffic of the DDP engine: `train.ddp_bucket_mb`, `train.gradient_as_bucket_view` and
`train.grad_compression=bf16` (bench/README.md: what each does and the communication model).

bf16 compression all-reduces each bucket as bfloat16, summed in bfloat16, then copies it back into
the float32 gradients. torch's bf16_compress_hook refuses gloo (DDP checks it by name), so the hook
is written here for every backend.
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
