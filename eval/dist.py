"""Process-group glue for evaluation under `accelerate launch` / `torchrun`.

Both launchers export RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; with
WORLD_SIZE > 1 we join a torch.distributed group (NCCL on GPUs, gloo on CPU). Each process
scores its own split of the samples; `gather_to_main` collects the per-sample records on rank 0,
which checks that every key arrived exactly once.

The per-sample records travel through object collectives (pickled, CPU). Those run on a gloo
group of their own with a long timeout (`P2P_EVAL_DIST_TIMEOUT` seconds, default 4 hours): ranks
get uneven work (an FCN on some samples, different image sizes), and the default group's
10-minute NCCL timeout would abort a rank that waits for a slower one; gloo also spares NCCL
object collectives their GPU copies.
"""

from __future__ import annotations

import datetime
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
    object_group: object = None  # gloo group for gather/broadcast of Python objects (None: default group)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self) -> torch.device:
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank % max(1, torch.cuda.device_count()))
        return torch.device("cpu")


DEFAULT_TIMEOUT_S = 4 * 3600


def collective_timeout() -> datetime.timedelta:
    """`P2P_EVAL_DIST_TIMEOUT` (seconds) or 4 hours: how long a rank waits for the others."""
    raw = os.environ.get("P2P_EVAL_DIST_TIMEOUT", "")
    try:
        seconds = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        seconds = -1
    if not seconds > 0:
        raise UserError(f"P2P_EVAL_DIST_TIMEOUT={raw!r}: expected a positive number of seconds")
    return datetime.timedelta(seconds=seconds)


def object_group(timeout: datetime.timedelta | None = None):
    """A gloo group over all ranks for object collectives (every rank must call this together)."""
    return dist.new_group(backend="gloo", timeout=timeout or collective_timeout())


def init_from_env() -> DistInfo:
    """Join the launcher's process group (if any); a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if world <= 1:
        return DistInfo()
    timeout = collective_timeout()
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local, object_group=object_group(timeout))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local % torch.cuda.device_count())
    dist.init_process_group(backend=backend, timeout=timeout)
    return DistInfo(
        dist.get_rank(), dist.get_world_size(), local, initialized_here=True, object_group=object_group(timeout)
    )


def gather_to_main(items: list, info: DistInfo) -> list | None:
    """All processes' lists concatenated on rank 0 (None elsewhere)."""
    if info.world_size <= 1:
        return list(items)
    parts: list | None = [None] * info.world_size if info.is_main else None
    dist.gather_object(items, parts, dst=0, group=info.object_group)
    if not info.is_main:
        return None
    return [item for part in parts for item in part]


def broadcast_from_main(obj, info: DistInfo):
    """Rank 0's object on every rank (used to share a UserError message or the result)."""
    if info.world_size <= 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=info.object_group)
    return box[0]


def check_exactly_once(records: list[dict]) -> list[dict]:
    """Records sorted by key; UserError when a key appears twice."""
    seen: dict[str, int] = {}
    for r in records:
        seen[r["key"]] = seen.get(r["key"], 0) + 1
    dups = sorted(k for k, c in seen.items() if c > 1)
    if dups:
        more = f" and {len(dups) - 5} more" if len(dups) > 5 else ""
        raise UserError(f"samples scored more than once (duplicate keys in the data?): {', '.join(dups[:5])}{more}")
    return sorted(records, key=lambda r: r["key"])


def finish(info: DistInfo) -> None:
    if info.object_group is not None and dist.is_initialized() and not info.initialized_here:
        dist.destroy_process_group(info.object_group)
    if info.initialized_here and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
