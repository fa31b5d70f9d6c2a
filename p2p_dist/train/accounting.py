"""What a run keeps between steps: the loss window for the log line and the non-finite guard."""

from __future__ import annotations

from collections.abc import Callable

import torch

from p2p_dist.errors import EXIT_NONFINITE, UserError
from p2p_dist.train.engines.base import Engine
from p2p_dist.train.loop import StepResult


class NonFiniteError(UserError):
    exit_code = EXIT_NONFINITE


class LossWindow:
    """Sum of each loss over the steps since the last log line, on the device (no host sync per step);
    `means()` is the mean over the window and over ranks (one collective, one host sync). Steps whose
    G update was masked (their flag is a device tensor) do not count."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.names: list[str] = []
        self.sums: torch.Tensor | None = None  # the losses' sums, then the count of steps

    def add(self, result: StepResult) -> None:
        if result.losses is None:
            return
        names = sorted(result.losses)
        stacked = torch.stack(
            [result.losses[k].float().reshape(()) for k in names] + [torch.ones(()).to(result.losses[names[0]].device)]
        )
        if result.g_skipped is not None:  # where, not a product: the masked step's losses may be NaN
            stacked = torch.where(result.g_skipped.reshape(()) > 0, torch.zeros_like(stacked), stacked)
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
    the last good checkpoint and the likely causes. A step whose G update was masked on the device
    is settled later (`pending`), at the next step's collective or by `settle()`."""

    def __init__(
        self,
        engine: Engine,
        max_nonfinite: int,
        message: Callable[[str], None],
        last_good: Callable[[int], object],
        causes: str,
    ):
        self.engine, self.max_nonfinite, self.message = engine, max_nonfinite, message
        self.last_good, self.causes = last_good, causes
        self.consecutive = 0
        self.total = 0
        self.pending: tuple[int, torch.Tensor] | None = None  # (step, its device flag)

    @property
    def in_streak(self) -> bool:
        return self.consecutive > 0

    def settled_in_streak(self) -> bool:
        self.settle()
        return self.in_streak

    def pending_flag(self, device) -> torch.Tensor:
        return self.pending[1].float().reshape(1) if self.pending else torch.zeros(1, device=device)

    def after_step(self, step: int, result: StepResult, pending_was_skipped: bool) -> None:
        """`pending_was_skipped`: the previous pending flag, as it came back with this step's collective."""
        if self.pending is not None:
            self._record(self.pending[0], pending_was_skipped)
            self.pending = None
        if result.skipped_now:
            self._record(step, True)
        elif result.g_skipped is None:
            self._record(step, False)
        else:
            self.pending = (step, result.g_skipped)
            if self.consecutive + 1 >= self.max_nonfinite:
                self.settle()  # this step may end the run: know it now

    def settle(self) -> None:
        """Read a pending flag now (one host sync; for log lines, checkpoints and the end)."""
        if self.pending is not None:
            step, flag = self.pending
            self.pending = None
            self._record(step, bool(self.engine.to_host(flag.reshape(-1))[0]))

    def _record(self, step: int, skipped: bool) -> None:
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
