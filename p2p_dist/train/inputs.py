"""Everything a training run will read, checked before the first step (exit 2 and one line).

Inputs read late must fail early (`data.val` is first read when the first sample grid is drawn).
Checked here, on every rank, before anything is written: the training shards (the checks
`make_train_loader` makes, `data.decode` among them), `data.val` when set (with data.train's pixel
format), and an explicit `train.resume` path (`checkpoint.explicit_checkpoint`; `auto` is checked
later by `checkpoint.check_resume`, still before the run writes anything). `train.log_with` is
checked by the engine (engines/base.py).
The ranks agree on the outcome: when only some fail, rank 0 names the first of them, its host and
its reason, and every rank exits 2 together.
"""

from __future__ import annotations

import socket

from p2p_dist.config import Config, ConfigError
from p2p_dist.errors import UserError
from p2p_dist.metric_table import VALIDATION


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


def pixel_format(index: dict | None) -> str:
    """'A 16-bit 1-channel, B 8-bit 3-channel': a translation set's stored pixels by its index.json
    (without pixel statistics: 8-bit RGB, as the loader reads it)."""
    from p2p_dist.data.index import pixel_ranges

    ranges = pixel_ranges(index)
    return ", ".join(f"{side.upper()} {r.bits}-bit {r.channels}-channel" for side, r in ranges.items())


def check_val_shards(cfg: Config) -> None:
    """The loader the sample grids use (p2p_dist/train/run.py `_sample_batch`), built and dropped;
    data.val's pixel format (bit depth, channels per side) is data.train's; a `train.best_metric`
    that validation cannot compute on it is refused."""
    from p2p_dist.data.index import read_index
    from p2p_dist.data.loader import make_eval_loader
    from p2p_dist.train.validation import rgb_not_applying

    d = cfg.data
    if not d.val:
        return
    ranges = cfg.pixel_ranges  # data.train's (its own one-line errors: data.normalize, data.percentile)
    try:
        make_eval_loader(d.val, task=d.task, direction=d.direction, size=d.crop_size, batch_size=4, scale=ranges)
        val, train = (pixel_format(read_index(x)) if d.task == "translation" else "" for x in (d.val, d.train))
    except UserError as exc:
        raise ConfigError(f"data.val: {exc}") from None
    if val != train:
        raise ConfigError(
            f"data.val holds {val} pixels, data.train {train}: sample grids and validation need data.train's format"
        )
    best = VALIDATION.get(cfg.train.best_metric)
    not_rgb = rgb_not_applying(cfg) if best is not None and best.rgb else ""
    if not_rgb:
        raise ConfigError(
            f"train.best_metric={best.val} does not apply: it needs 8-bit RGB, the validation images are {not_rgb}"
        )


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
