"""What a user watches: a rich progress bar, metrics.jsonl, the engine's trackers, sample grids,
and the closing summary table. Only rank 0 writes; every method is a no-op on the other ranks."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from p2p_dist.console import make_console
from p2p_dist.fsutil import atomic_path, open_own_file

METRICS_FILE = "metrics.jsonl"


class Monitor:
    def __init__(
        self,
        *,
        enabled: bool,
        output_dir: Path,
        max_steps: int,
        start_step: int,
        images_per_step: int,
        trackers: Callable[[dict, int], None] | None = None,
    ):
        self.enabled = enabled
        self.output_dir = output_dir
        self.max_steps = max_steps
        self.images_per_step = images_per_step
        self.trackers = trackers  # (values, step) -> None, e.g. Engine.log_trackers
        self.console = make_console(stderr=True)  # not a terminal: no wrapping, plain step lines
        self.last: dict[str, float] = {}
        self.history_start = time.perf_counter()
        self.window_start = self.history_start
        self.window_step = start_step
        self.start_step = start_step
        self.images_per_s = 0.0
        self.progress: Progress | None = None
        self._metrics = None
        if enabled:
            fd = open_own_file(output_dir / METRICS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, "run's metrics log")
            self._metrics = os.fdopen(fd, "a", buffering=1)  # closed by close()
            self.progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
                disable=not self.console.is_terminal,
            )
            self.task = self.progress.add_task("train", total=max_steps, completed=start_step, info="")
            self.progress.start()

    def log(self, step: int, losses: dict[str, float], lr: float, extra: dict | None = None) -> None:
        now = time.perf_counter()
        if step > self.window_step:
            self.images_per_s = (step - self.window_step) * self.images_per_step / max(now - self.window_start, 1e-9)
        self.window_start, self.window_step = now, step
        self.last = dict(losses)
        if not self.enabled:
            return
        record = {
            "step": step,
            **{k: round(v, 6) for k, v in losses.items()},
            "lr": lr,
            "images_per_s": round(self.images_per_s, 3),
            "time": round(now - self.history_start, 3),
        }
        if extra:
            record.update(extra)
        self._metrics.write(json.dumps(record) + "\n")
        if self.trackers is not None:
            self.trackers({**losses, "lr": lr, "images_per_s": self.images_per_s}, step)
        info = "  ".join(f"{k} {v:.3f}" for k, v in losses.items()) + f"  {self.images_per_s:.2f} img/s"
        if self.progress is not None and self.console.is_terminal:
            self.progress.update(self.task, completed=step, info=info)
        else:
            self.console.print(f"step {step}/{self.max_steps}  {info}", highlight=False)

    def log_values(self, step: int, values: dict[str, float]) -> None:
        """A line of other figures (validation) in metrics.jsonl, the trackers and the console."""
        if not self.enabled:
            return
        self._metrics.write(json.dumps({"step": step, **values}) + "\n")
        if self.trackers is not None:
            self.trackers(values, step)
        shown = "  ".join(f"{k} {v:.4g}" for k, v in values.items() if k != "val_samples")
        self.message(f"step {step}/{self.max_steps}  validation: {shown}")

    def alarm(self, record: dict) -> None:
        """A health alarm: one warning line, and a metrics.jsonl line {"step", "alarm", "message"}."""
        if not self.enabled:
            return
        self._metrics.write(json.dumps(record) + "\n")
        self.message(f"warning: step {record['step']}: {record['message']}")

    def advance(self, step: int) -> None:
        if self.enabled and self.progress is not None and self.console.is_terminal:
            self.progress.update(self.task, completed=step)

    def message(self, text: str) -> None:
        if self.enabled:
            if self.progress is not None and self.console.is_terminal:
                self.progress.console.print(text, highlight=False)
            else:
                self.console.print(text, highlight=False)

    def save_samples(self, step: int, grid: np.ndarray) -> Path | None:
        if not self.enabled:
            return None
        from PIL import Image

        path = self.output_dir / "samples" / f"step-{step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, suffix=".png") as tmp:
            Image.fromarray(grid).save(tmp, format="PNG")
        return path

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None

    def summary(self, rows: dict[str, str], title: str) -> None:
        if not self.enabled:
            return
        table = Table(title=title, show_header=False)
        table.add_column(style="bold")
        table.add_column()
        for k, v in rows.items():
            table.add_row(k, v)
        self.console.print(table)


def sample_grid(real_A: torch.Tensor, fake_B: torch.Tensor, real_B: torch.Tensor, task: str) -> np.ndarray:
    """Rows of input | output | target as one uint8 RGB image (a preview: 3 channels or more show
    their first three, others their first as grey; [-1, 1] at 8 bits whatever the stored depth)."""
    from p2p_dist.data.transforms import denormalize, lab_tensors_to_rgb

    rows = []
    for a, f, b in zip(real_A, fake_B, real_B):
        if task == "colorization":  # A = L, B = ab
            cells = [lab_tensors_to_rgb(a, torch.zeros_like(f)), lab_tensors_to_rgb(a, f), lab_tensors_to_rgb(a, b)]
        else:
            cells = [denormalize(a), denormalize(f), denormalize(b)]
        cells = [c[:, :, :3] if c.shape[2] >= 3 else np.repeat(c[:, :, :1], 3, 2) for c in cells]
        rows.append(np.concatenate(cells, axis=1))
    return np.concatenate(rows, axis=0)
