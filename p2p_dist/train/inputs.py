"""Everything a training run will read, checked before the first step (exit 2 and one line).

Inputs read late must fail early (`data.val` is first read when the first sample grid is drawn).
Checked here, on every rank, before anything is written: the training shards (the checks
`make_train_loader` makes, `data.decode` among them), `data.val` when set, and an explicit `train.resume` path
(`checkpoint.explicit_checkpoint`; `auto` is checked later by `checkpoint.check_resume`, still
before the run writes anything). `train.log_with` is checked by the engine (engines/base.py).
The ranks agree on the outcome: when only some fail, rank 0 names the first of them, its host and
its reason, and every rank exits 2 together.
"""

from __future__ import annotations

import socket

from p2p_dist.config import Config, ConfigError
from p2p_dist.errors import UserError


def check_train_shards(cfg: Config) -> None:
    from p2p_dist.data.device_decode import decode_on_device
    from p2p_dist.data.jitter import Jitter
    from p2p_dist.data.loader import check_source
    from p2p_dist.data.shards import expand_shards

    d = cfg.data
    try:
        check_source(d.train, expand_shards(d.train), d.task, Jitter.from_config(d), what="data.task")
    except UserError as exc:
        raise ConfigError(f"data.train: {exc}") from None
    decode_on_device(d.decode)  # data.decode=gpu where it cannot run: one line naming the key


def check_val_shards(cfg: Config) -> None:
    """The loader the sample grids use (p2p_dist/train/run.py `_sample_batch`), built and dropped."""
    from p2p_dist.data.loader import make_eval_loader

    d = cfg.data
    if not d.val:
        return
    try:
        make_eval_loader(d.val, task=d.task, direction=d.direction, size=d.crop_size, batch_size=4)
    except UserError as exc:
        raise ConfigError(f"data.val: {exc}") from None


def _first_problem(cfg: Config) -> UserError | None:
    from p2p_dist.train.checkpoint import explicit_checkpoint

    try:
        check_train_shards(cfg)
        check_val_shards(cfg)
        if cfg.train.resume not in ("auto", "none"):
            explicit_checkpoint(cfg.train.resume)
    except UserError as exc:
        return exc
    return None


def check_run_inputs(cfg: Config, engine) -> None:
    """Every rank checks its inputs; all ranks agree (one small collective) and stop together."""
    error = _first_problem(cfg)
    if engine.world_size > 1:
        import torch.distributed as dist

        seen: list = [None] * engine.world_size
        dist.all_gather_object(seen, None if error is None else (socket.gethostname(), str(error)))
        failed = [(rank, found) for rank, found in enumerate(seen) if found is not None]
        if failed and seen[0] is None:  # rank 0 sees its inputs, another rank does not
            rank, (host, reason) = failed[0]
            more = f" (and {len(failed) - 1} other rank(s))" if len(failed) > 1 else ""
            error = ConfigError(
                f"rank {rank} on host {host}{more}: {reason}; every machine must see the run's inputs at the "
                "same path (a shared filesystem, or the same copy on each)"
            )
        elif failed and error is None:
            error = ConfigError("another process found a problem in the inputs (rank 0 names it)")
        if error is not None:
            error.quiet = not engine.is_main  # one line, from rank 0
    if error is not None:
        engine.end()  # the process group left before exiting (p2p_dist/train/lock.py says why)
        raise error
