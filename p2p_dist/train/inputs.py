"""Everything a training run will read, checked before the first step (exit 2 and one line).

Inputs read late must fail early: `data.val` is first read when the first sample grid is drawn,
which in a short recipe is the end of training. Checked here, on every rank, before the process
group and before anything is written:
- the training shards (the same checks `make_train_loader` makes: they exist, hold this task's
  samples and fit the crop);
- the validation shards `data.val`, when set (exist, hold this task's samples);
- an explicit `train.resume` path (a complete checkpoint); with `auto` the newest complete one is
  chosen later, and its architecture is checked against the config before the first step
  (p2p_dist/train/run.py);
- the tracker packages `train.log_with` needs.
Training reads no evaluator: the FCN evaluator belongs to p2p-eval, which checks its own inputs
(eval/cli.py) before scoring.
"""

from __future__ import annotations

from pathlib import Path

from p2p_dist.config import Config, ConfigError
from p2p_dist.errors import UserError


def check_train_shards(cfg: Config) -> None:
    from p2p_dist.data.shards import expand_shards
    from p2p_dist.data.stream import check_source
    from p2p_dist.data.transforms import Jitter

    d = cfg.data
    check_source(d.train, expand_shards(d.train), d.task, Jitter.from_config(d), what="data.task")


def check_val_shards(cfg: Config) -> None:
    """The loader the sample grids use (p2p_dist/train/run.py `_sample_batch`), built and dropped."""
    from p2p_dist.data.stream import make_eval_loader

    d = cfg.data
    if not d.val:
        return
    try:
        make_eval_loader(d.val, task=d.task, direction=d.direction, size=d.crop_size, batch_size=4)
    except UserError as exc:
        raise ConfigError(f"data.val: {exc}") from None


def check_resume_path(cfg: Config) -> None:
    from p2p_dist.train.checkpoint import STATE_FILE

    resume = cfg.train.resume
    if resume in ("auto", "none"):
        return
    if not Path(resume).exists():
        raise ConfigError(f"train.resume={resume}: no such checkpoint folder (use auto, none or a step-* folder)")
    if not (Path(resume) / STATE_FILE).is_file():
        raise ConfigError(f"train.resume={resume}: not a complete checkpoint (no {STATE_FILE} in it)")


def check_run_inputs(cfg: Config) -> None:
    from p2p_dist.train.engines.base import trackers

    check_train_shards(cfg)
    check_val_shards(cfg)
    check_resume_path(cfg)
    trackers(cfg.train.log_with)
