"""Gradient traffic of the DDP engine: `train.ddp_bucket_mb`, `train.gradient_as_bucket_view` and
`train.grad_compression=bf16` (bench/README.md: what each does and the communication model), and the
graph step's flat all-reduce (`all_reduce_flat`).

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


def all_reduce_flat(grads: list[torch.Tensor], compression: str = "none") -> None:
    """`grads` replaced by their mean over the ranks, with one collective over one flat buffer: the graph
    step's reduction (train.cuda_graph, one call per network inside the graph; DDP's reducer is not used
    there). The arithmetic is DDP's: each rank's gradient times 1/world, summed; with
    train.grad_compression=bf16 that of `bf16_allreduce_hook` (cast to bf16, divided, summed in bf16)."""
    world = dist.get_world_size()
    flat = torch.cat([g.reshape(-1) for g in grads])
    wire = flat.to(torch.bfloat16).div_(world) if compression == "bf16" else flat.mul_(1.0 / world)
    dist.all_reduce(wire)
    if wire is not flat:
        flat.copy_(wire)
    torch._foreach_copy_(grads, [v.view(g.shape) for v, g in zip(flat.split([g.numel() for g in grads]), grads)])
