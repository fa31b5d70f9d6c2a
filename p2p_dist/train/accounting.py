"""What a run keeps between steps: the loss window for the log line and the non-finite guard."""

from __future__ import annotations

from collections.abc import Callable

import torch

from p2p_dist.errors import EXIT_NONFINITE, UserError
from p2p_dist.train.engines.base import Engine


class NonFiniteError(UserError):
    exit_code = EXIT_NONFINITE


class LossWindow:
    """Sum of each loss over the steps since the last log line, on the device (no host sync per step);
    `means()` is the mean over the window and over ranks (one collective, one host sync). The run
    adds the steps that were not skipped."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.names: list[str] = []
        self.sums: torch.Tensor | None = None  # the losses' sums, then the count of steps

    def add(self, losses: dict[str, torch.Tensor]) -> None:
        names = sorted(losses)
        stacked = torch.stack([losses[k].float().reshape(()) for k in names])
        stacked = torch.cat([stacked, torch.ones_like(stacked[:1])])  # the count
        if self.sums is None or names != self.names:
            self.names, self.sums = names, torch.zeros_like(stacked)
        self.sums += stacked

    def means(self) -> dict[str, float] | None:
        """Means over the window and the ranks (every rank calls this), then the window restarts."""
        if self.sums is None:
            return None
        *sums, count = self.engine.mean_over_ranks(self.sums)
        self.sums.zero_()
        return dict(zip(self.names, (s / count for s in sums))) if count > 0 else None


class NonFiniteGuard:
    """Counts skipped steps; `max_nonfinite` in a row stops the run with one line naming the step,
    the last good checkpoint and the likely causes."""

    def __init__(
        self, max_nonfinite: int, message: Callable[[str], None], last_good: Callable[[int], object], causes: str
    ):
        self.max_nonfinite, self.message = max_nonfinite, message
        self.last_good, self.causes = last_good, causes
        self.consecutive = 0
        self.total = 0

    @property
    def in_streak(self) -> bool:
        return self.consecutive > 0

    def after_step(self, step: int, skipped: bool) -> None:
        """`skipped`: the step's non-finite flag as every rank agreed it."""
        if not skipped:
            self.consecutive = 0
            return
        self.total += 1
        self.consecutive += 1
        self.message(f"step {step}: non-finite loss, step skipped ({self.consecutive} in a row)")
        if self.consecutive >= self.max_nonfinite:
            # the newest checkpoint written before this streak began holds finite weights
            last = self.last_good(step - self.consecutive)
            raise NonFiniteError(
                f"stopped at step {step}: {self.consecutive} consecutive non-finite losses; "
                f"last good checkpoint: {last or 'none'}; likely causes: {self.causes}"
            )
