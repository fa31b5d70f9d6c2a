"""What a run keeps beside the training step: the EMA generator, the health alarms, validation
and the best checkpoint. `Run` (p2p_dist/train/run.py) calls these hooks; each piece lives in its
own module (ema.py, health.py, validation.py)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from torch import nn

from p2p_dist.config import Config
from p2p_dist.train.ema import GeneratorEMA, export_generators
from p2p_dist.train.health import HealthMonitor
from p2p_dist.train.validation import BestTracker, Validator

BEST_DIR = "best"
BEST_FILE = "best.json"


class RunExtras:
    def __init__(self, cfg: Config, engine, G: nn.Module) -> None:
        t = cfg.train
        self.cfg, self.engine, self.G = cfg, engine, G  # G: the plain module its optimizer updates
        self.ema = GeneratorEMA(G, t.ema_decay) if t.ema_decay else None
        self.health = HealthMonitor(t.health, G, engine.device, compiled=t.compile)
        if t.health.enabled:
            engine.on_grad_norm = self.health.add_grad_norm  # each network's gradient norm, every step
        self.validator = Validator(cfg, engine.rank, engine.world_size, engine.device) if t.val_every else None
        self.best = BestTracker(t.best_metric, t.best_mode)
        self.last_val: dict[str, float] = {}

    def describe(self) -> str:
        parts = []
        if self.ema is not None:
            parts.append(f"EMA of G (decay {self.ema.decay})")
        if self.validator is not None:
            off = ", ".join(sorted(self.validator.unavailable()))
            parts.append(
                f"validation every {self.cfg.train.val_every} steps on {self.cfg.data.val}"
                + (f" ({off} unavailable: weights or evaluator missing)" if off else "")
            )
            if self.validator.left_out:
                parts.append(
                    f"{', '.join(self.validator.left_out)} left out (they need 8-bit RGB; the validation "
                    f"images are {self.validator.not_rgb})"
                )
        if self.best.metric:
            parts.append(f"best {self.best.metric} ({'min' if self.best.lower else 'max'}) kept in checkpoints/best")
        return "; ".join(parts)

    # --- resume ---------------------------------------------------------------------------
    def restore(self, folder: Path, extra: dict) -> None:
        if self.ema is not None:
            self.ema.load(folder)
        self.health.load_state_dict(extra.get("health"))
        self.best = BestTracker(self.cfg.train.best_metric, self.cfg.train.best_mode, extra.get("best"))

    def into_state(self, extra: dict) -> None:
        extra["health"] = self.health.state_dict()
        if self.best.metric:
            extra["best"] = self.best.state()

    # --- in the loop ----------------------------------------------------------------------
    def after_step(self, skipped) -> None:
        """After every step (every rank); `skipped`, its non-finite flag on the device, masks the EMA update."""
        if self.ema is not None:
            self.ema.update(self.G, skipped)

    def at_log(self, step: int, losses: dict[str, float], monitor) -> None:
        for alarm in self.health.check(step, losses, self.engine):
            monitor.alarm(alarm.record())

    def generator(self) -> nn.Module:
        """The generator that is exported and validated: the EMA one when on."""
        return self.ema.module if self.ema is not None else self.G

    def validate(self, step: int, final: bool, monitor) -> bool:
        """Validation when due (every rank together); True when it set a new best."""
        every = self.cfg.train.val_every
        if self.validator is None or not (step % every == 0 or final):
            return False
        values = self.validator.run(self.engine.inference_view(self.generator()))  # the run's autocast
        self.last_val = values
        monitor.log_values(step, values)
        return self.best.offer(step, values)

    # --- files ----------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        """Into a checkpoint folder being written (rank 0)."""
        if self.ema is not None:
            self.ema.save(folder)

    def export(self, spec, folder: Path) -> None:
        export_generators(self.G, self.ema, spec, folder)

    def keep_best(self, checkpoint: Path) -> Path:
        """Rank 0: checkpoints/best/ becomes a copy of `checkpoint` (hard links where the file system
        allows: a finished checkpoint's files are never rewritten), with best.json. It is not a
        `step-*` folder, so rotation never removes it."""
        import json

        from p2p_dist.fsutil import atomic_dir, atomic_write_text

        def link_or_copy(src, dst):
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)

        final = checkpoint.parent / BEST_DIR
        with atomic_dir(final) as tmp:
            shutil.copytree(checkpoint, tmp, dirs_exist_ok=True, copy_function=link_or_copy)
            atomic_write_text(
                tmp / BEST_FILE, json.dumps({**self.best.state(), "checkpoint": checkpoint.name}, indent=2) + "\n"
            )
        return final

    def summary_rows(self) -> dict[str, str]:
        rows = {
            "health alarms": (", ".join(f"{k} x{v}" for k, v in sorted(self.health.state.counts.items())) or "none")
        }
        if self.last_val:
            rows["validation"] = ", ".join(
                f"{k} {v:.4g}" for k, v in self.last_val.items() if k not in ("val_samples", "val_seconds")
            )
        if self.best.metric and self.best.value is not None:
            rows["best checkpoint"] = f"step {self.best.step}: {self.best.metric} {self.best.value:.4g}"
        if self.ema is not None:
            rows["exported"] = "EMA generator (online G: generator_raw.safetensors)"
        return rows

    def close(self) -> None:
        self.health.close()
