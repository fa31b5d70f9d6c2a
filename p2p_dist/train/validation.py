"""Validation during training (`train.val_every`): the generator on `data.val`, scored by p2p_eval
(README: the metrics, their `val_*` keys, and the training state left untouched).

Every rank translates its own share of the validation set in the paper's test mode, one image at a
time, dropout seeded from the sample key (the result does not depend on the number of processes);
the per-sample records are gathered on rank 0, checked to hold every sample once, reduced in key
order and shared with every rank. Afterwards the torch, numpy and Python RNGs and G's buffers
(which test-mode BatchNorm updates) are restored, so a run resumes bit for bit as one without it.
"""

from __future__ import annotations

import contextlib
import random
import time

import numpy as np
import torch
from torch import nn

from p2p_dist.config import Config
from p2p_dist.errors import UserError
from p2p_dist.metric_table import METRICS, VALIDATION


@contextlib.contextmanager
def training_state_kept(G: nn.Module, device: torch.device):
    """Restore every RNG and G's buffers after the block (validation must not change training)."""
    py, npy = random.getstate(), np.random.get_state()
    buffers = {n: b.clone() for n, b in G.named_buffers()}
    was_training = G.training
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        try:
            yield
        finally:
            with torch.no_grad():
                for n, b in G.named_buffers():
                    b.copy_(buffers[n])
            G.train(was_training)
            random.setstate(py)
            np.random.set_state(npy)


def rgb_not_applying(cfg: Config) -> str:
    """'' when validation's targets are 8-bit RGB or grey, else their format ('16-bit, 1 channel'),
    on which the metrics that need 8-bit RGB (the table's `rgb`) do not apply. The targets are
    data.train's output side (data.val must hold the same pixel format: train/inputs.py)."""
    from p2p_dist.data.transforms import RGB8
    from p2p_eval.scoring import describe, rgb_view

    ranges = cfg.pixel_ranges
    out = ranges[1] if ranges else RGB8
    probe = np.zeros((1, 1, 1, out.channels), out.dtype)
    return "" if rgb_view(probe) is not None else describe(probe)


class Validator:
    """Scores the stored pixels exactly as `p2p-eval score --checkpoint` does: the inputs mapped with
    the run's input range, the targets read at their stored depth, the outputs mapped back with the
    run's output range (`p2p_eval.inputs.shard_scale`, `TranslateShards`); the metrics that need 8-bit
    RGB are left out, and named up front, when the targets are not 8-bit RGB or grey."""

    def __init__(self, cfg: Config, rank: int, world_size: int, device: torch.device) -> None:
        from p2p_dist.data.index import read_index
        from p2p_eval.inputs import shard_scale
        from p2p_eval.scoring import Scorer

        self.cfg, self.rank, self.world_size, self.device = cfg, rank, world_size, device
        d, ranges = cfg.data, cfg.pixel_ranges
        self.output_range = ranges[1] if ranges else None
        self.scale = shard_scale(
            read_index(d.val), d.task, d.direction, translating=True, input_range=ranges[0] if ranges else None
        )
        self.not_rgb = rgb_not_applying(cfg)
        groups = {m.group for m in VALIDATION.values() if not (m.rgb and self.not_rgb)}
        self.left_out = [  # the val_* keys that would have been logged
            k for k, m in VALIDATION.items() if m.rgb and self.not_rgb and (m.group != "classes" or cfg.train.val_fcn)
        ]
        fcn = None
        if cfg.train.val_fcn and not self.not_rgb:
            from p2p_eval.fcn import load_fcn

            fcn = load_fcn(cfg.train.val_fcn)
        self.mode = "photo" if fcn is not None else "image"
        if fcn is None:
            groups.discard("classes")
        self.scorer = Scorer(groups, self.mode, fcn=fcn, device=device)
        from p2p_eval import dist as pdist

        # records travel on a gloo group with a long timeout, not the training group (NCCL on GPUs)
        self.group = pdist.object_group() if world_size > 1 else None

    def unavailable(self) -> dict[str, str]:
        return dict(self.scorer.unavailable)

    @torch.no_grad()
    def run(self, G: nn.Module) -> dict[str, float]:
        """The val_* figures, identical on every rank (all ranks must call this together)."""
        from p2p_eval import dist as pdist
        from p2p_eval.inputs import TranslateShards

        t0 = time.perf_counter()
        d = self.cfg.data
        info = pdist.DistInfo(rank=self.rank, world_size=self.world_size, object_group=self.group)
        with training_state_kept(G, self.device):
            source = TranslateShards(
                G,
                d.val,
                task=d.task,
                direction=d.direction,
                size=d.crop_size,
                with_labels=self.mode == "photo",
                seed=self.cfg.train.seed,
                batch_size=1,
                rank=self.rank,
                world_size=self.world_size,
                device=self.device,
                scale=self.scale,
                output_range=self.output_range,
            )
            records = [self.scorer.score(sample) for sample in source]
        gathered = pdist.gather_to_main(records, info)
        result: dict | str = {}
        if info.is_main:
            try:
                merged = pdist.check_exactly_once(gathered)
                agg = self.scorer.aggregate(merged)
                result = {METRICS[k].val: float(v) for k, v in agg["metrics"].items() if METRICS[k].val}
                result["val_samples"] = len(merged)
                result["val_seconds"] = round(time.perf_counter() - t0, 3)
            except UserError as exc:
                result = str(exc)
        result = pdist.broadcast_from_main(result, info)
        if isinstance(result, str):
            raise UserError(f"validation on {d.val}: {result}")
        return result


class BestTracker:
    """`train.best_metric`: the best value so far (saved in trainer_state.json) and whether a new
    validation beats it."""

    def __init__(self, metric: str, mode: str, saved: dict | None = None) -> None:
        self.metric = metric
        self.lower = mode == "min" if mode != "auto" or not metric else not VALIDATION[metric].higher
        saved = saved or {}
        self.value = saved.get("value") if saved.get("metric") == metric else None
        self.step = saved.get("step") if self.value is not None else None

    def offer(self, step: int, values: dict[str, float]) -> bool:
        if not self.metric:
            return False
        if self.metric not in values:
            raise UserError(
                f"train.best_metric={self.metric} is not among the validation figures "
                f"({', '.join(sorted(values))}); its weights or evaluator may be missing"
            )
        v = values[self.metric]
        if v == v and (self.value is None or (v < self.value if self.lower else v > self.value)):  # NaN never wins
            self.value, self.step = v, step
            return True
        return False

    def state(self) -> dict:
        return {
            "metric": self.metric,
            "value": self.value,
            "step": self.step,
            "direction": "min" if self.lower else "max",
        }
