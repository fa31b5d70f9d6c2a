"""Process-group glue for evaluation under `accelerate launch` / `torchrun`.

Both launchers export RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; with
WORLD_SIZE > 1 we join a torch.distributed group (NCCL on GPUs, gloo on CPU). Each process
scores its own split of the samples; `gather_to_main` collects the per-sample records on rank 0,
which checks that every key arrived exactly once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from p2p_dist.errors import UserError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self) -> torch.device:
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank % max(1, torch.cuda.device_count()))
        return torch.device("cpu")


def init_from_env() -> DistInfo:
    """Join the launcher's process group (if any); a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if world <= 1:
        return DistInfo()
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local % torch.cuda.device_count())
    dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local, initialized_here=True)


def gather_to_main(items: list, info: DistInfo) -> list | None:
    """All processes' lists concatenated on rank 0 (None elsewhere)."""
    if info.world_size <= 1:
        return list(items)
    parts: list | None = [None] * info.world_size if info.is_main else None
    dist.gather_object(items, parts, dst=0)
    if not info.is_main:
        return None
    return [item for part in parts for item in part]


def broadcast_from_main(obj, info: DistInfo):
    """Rank 0's object on every rank (used to share a UserError message or the result)."""
    if info.world_size <= 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def check_exactly_once(records: list[dict], expected: int | None = None) -> list[dict]:
    """Records sorted by key; UserError when a key appears twice or the count is off."""
    seen: dict[str, int] = {}
    for r in records:
        seen[r["key"]] = seen.get(r["key"], 0) + 1
    dups = sorted(k for k, c in seen.items() if c > 1)
    if dups:
        more = f" and {len(dups) - 5} more" if len(dups) > 5 else ""
        raise UserError(f"samples scored more than once (duplicate keys in the data?): {', '.join(dups[:5])}{more}")
    if expected is not None and len(records) != expected:
        raise UserError(f"scored {len(records)} samples but the shard index lists {expected}")
    return sorted(records, key=lambda r: r["key"])


def finish(info: DistInfo) -> None:
    if info.initialized_here and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
