"""Training health alarms: warnings a user should see while the run goes on.

Four alarms (thresholds in `train.health.*`, p2p_dist/config.py `HealthConfig`):

- `d_wins`: D's loss 0.5 * (D_real + D_fake) stays under `d_loss_below` for `d_window` steps;
  D tells real from fake perfectly and G's GAN gradient fades.
- `g_climbs`: G's GAN loss climbs steadily: over a full window of the last `g_window` steps (at
  least 5 logs) its least-squares rise exceeds `g_climb` and it went up in at least half of the
  logs. Early in a run G's GAN loss rises while D learns: `warmup` skips the first steps, and on
  the demo (recipes/demo.yaml, 300 and 2000 steps) the largest rise over any 200 steps after
  warmup was under 1, half the default `g_climb`.
- `collapse`: G's outputs barely differ across the samples it saw during a logging window (the
  standard deviation across those samples of 16x16-pooled outputs, on the [-1, 1] scale, under
  `collapse_std`): G ignores its input.
- `grad_explodes`: the largest gradient norm of G or D in a window is non-finite, or over
  `grad_factor` times the median of the earlier windows.

Nothing here adds a host sync to the training step: the gradient norms (one foreach norm per
network and step, from the engine: `Engine.on_grad_norm`) and pooled outputs (a forward hook on G)
stay on the device and are read at each log with the window's mean losses, averaged over ranks, so
every rank decides alike. An alarm fires once per episode (it re-arms when its condition clears),
is written as a warning line and as `{"step", "alarm", "message"}` in metrics.jsonl, and is counted
in the summary. No alarm is checked before `warmup` steps.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from p2p_dist.config import HealthConfig


@dataclass
class Alarm:
    step: int
    kind: str
    message: str

    def record(self) -> dict:
        return {"step": self.step, "alarm": self.kind, "message": self.message}


def _slope(points: list[tuple[int, float]]) -> float:
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / var if var else 0.0


@dataclass
class HealthState:
    """What the alarms remember between logs (saved in trainer_state.json with a checkpoint)."""

    d_low_since: int | None = None
    g_gan: list = field(default_factory=list)  # [(step, value)]: the logs of the g_window
    grad_history: dict = field(default_factory=dict)  # name -> window maxima seen so far (bounded)
    active: list = field(default_factory=list)  # alarms whose episode is on
    counts: dict = field(default_factory=dict)


class HealthMonitor:
    def __init__(self, cfg: HealthConfig, G: nn.Module, device: torch.device, compiled: bool = False) -> None:
        """`compiled`: G runs under torch.compile (train.compile), which would compile the hook as a
        frame of its own and recompile it at every step (its guard holds the length of the window's
        list): the hook stays eager there."""
        self.cfg = cfg
        self.state = HealthState()
        self.device = device
        # kept in place (a replayed CUDA graph, train.cuda_graph, writes into the tensors it captured)
        self._grad_max = {"G": torch.zeros((), device=device), "D": torch.zeros((), device=device)}
        self._moments: torch.Tensor | None = None  # per pooled output feature: count, sum, sum of squares
        hook = torch.compiler.disable(self._on_output) if compiled else self._on_output
        self._hook = G.register_forward_hook(hook) if cfg.enabled else None

    # --- per step, on the device ------------------------------------------------------------
    def add_grad_norm(self, name: str, norm: torch.Tensor) -> None:
        """Network `name`'s gradient norm of this step (engines call it; see Engine.on_grad_norm)."""
        torch.maximum(self._grad_max[name], norm, out=self._grad_max[name])

    def _on_output(self, module, inputs, output) -> None:
        if torch.is_grad_enabled() and module.training:  # the training forward, not samples/validation
            pooled = F.adaptive_avg_pool2d(output.detach().float(), 16).flatten(1)
            moments = torch.stack([torch.ones_like(pooled), pooled, pooled * pooled]).sum(1, dtype=torch.float64)
            if self._moments is None:
                self._moments = torch.zeros_like(moments)
            self._moments += moments

    def close(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    # --- at each log --------------------------------------------------------------------------
    def _window_figures(self, engine) -> dict[str, float]:
        """Output std across the window's samples and the window's largest gradient norms,
        averaged over ranks (one small collective, at log time only)."""
        std = torch.full((), float("nan"), device=self.device)
        if self._moments is not None:  # the population std across the window's samples, per feature
            n, total, squares = self._moments
            var = (squares / n - (total / n).square()).clamp_min(0)
            std = torch.where(n[0] > 1, var.sqrt().mean(), std)
            self._moments.zero_()
        values = torch.stack([std.float(), self._grad_max["G"], self._grad_max["D"]])
        values = engine.mean_over_ranks(values)  # a list of floats (engines/base.py)
        for v in self._grad_max.values():
            v.zero_()
        return {"output_std": values[0], "grad_G": values[1], "grad_D": values[2]}

    def check(self, step: int, losses: dict[str, float], engine) -> list[Alarm]:
        """The alarms that start at this log (each once per episode)."""
        if not self.cfg.enabled:
            return []
        c, st = self.cfg, self.state
        figures = self._window_figures(engine)
        if step < c.warmup:
            return []
        on: dict[str, str] = {}

        if "D_real" in losses and "D_fake" in losses:
            d = 0.5 * (losses["D_real"] + losses["D_fake"])
            if d < c.d_loss_below:
                st.d_low_since = step if st.d_low_since is None else st.d_low_since
                if step - st.d_low_since + 1 >= c.d_window:
                    on["d_wins"] = (
                        f"D has won: its loss {d:.4f} stayed under {c.d_loss_below} for "
                        f"{step - st.d_low_since + 1} steps (it tells every fake from the real images, so "
                        "G's GAN loss no longer guides G); try a weaker D (a smaller model.ndf, "
                        "model.discriminator=patch16), loss.gan=lsgan, or a lower optim.lr"
                    )
            else:
                st.d_low_since = None

        if "G_GAN" in losses:
            # the logs of the last g_window steps, and never fewer than the last 5 (a trend needs
            # points: with train.log_every 50 a window of 200 steps holds the 5 logs step-200 ... step)
            pts = st.g_gan + [(step, losses["G_GAN"])]
            in_window = [p for p in pts if p[0] >= step - c.g_window]
            st.g_gan = pts = in_window if len(in_window) >= 5 else pts[-5:]
            if len(pts) >= 5 and pts[-1][0] - pts[0][0] >= 0.9 * c.g_window:
                rise = _slope(pts) * (pts[-1][0] - pts[0][0])
                ups = sum(b[1] > a[1] for a, b in zip(pts, pts[1:])) / (len(pts) - 1)
                if rise > c.g_climb and ups >= 0.5:
                    on["g_climbs"] = (
                        f"G's GAN loss climbs steadily: +{rise:.2f} over steps {pts[0][0]}-{step} "
                        f"(now {pts[-1][1]:.3f}); D is pulling ahead"
                    )

        std = figures["output_std"]
        if math.isfinite(std) and std < c.collapse_std:
            on["collapse"] = (
                f"outputs collapse: G's outputs differ by std {std:.4f} across the samples of the "
                f"last window (under {c.collapse_std}): G ignores its input"
            )

        for name in ("G", "D"):
            norm = figures[f"grad_{name}"]
            history = st.grad_history.setdefault(name, [])
            if norm == 0.0 and name == "D" and not history:
                continue  # no D (L1 only): no norm was ever added
            if not math.isfinite(norm):
                on[f"grad_explodes_{name}"] = f"{name}'s gradient norm is {norm} (non-finite)"
            elif len(history) >= 3:
                median = sorted(history)[len(history) // 2]
                if median > 0 and norm > c.grad_factor * median:
                    on[f"grad_explodes_{name}"] = (
                        f"{name}'s gradient norm explodes: {norm:.3g}, "
                        f"{norm / median:.0f}x the median {median:.3g} of earlier windows"
                    )
            if math.isfinite(norm):
                history.append(norm)
                del history[:-200]

        started = [Alarm(step, kind, msg) for kind, msg in on.items() if kind not in st.active]
        st.active = sorted(on)
        for a in started:
            st.counts[a.kind] = st.counts.get(a.kind, 0) + 1
        return started

    # --- resume -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return dataclasses.asdict(self.state)  # g_gan's (step, value) pairs become JSON lists

    def load_state_dict(self, data: dict | None) -> None:
        if data:
            self.state = HealthState(**{**data, "g_gan": [tuple(p) for p in data.get("g_gan", [])]})
