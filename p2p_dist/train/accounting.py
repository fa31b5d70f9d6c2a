"""What a run keeps between steps: the loss window for the log line, the step flags that reach the
host a step late, and the non-finite guard."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from p2p_dist.errors import EXIT_NONFINITE, UserError
from p2p_dist.train.engines.base import Engine


class NonFiniteError(UserError):
    exit_code = EXIT_NONFINITE


class LossWindow:
    """Sum of each loss over the steps since the last log line, on the device (no host sync per step);
    `means()` is the mean over the window and over ranks (one collective, one host sync). A skipped
    step adds nothing (masked on the device by its flag)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.names: list[str] = []
        self.sums: torch.Tensor | None = None  # the losses' sums, then the count of steps

    def add(self, losses: dict[str, torch.Tensor], skipped: torch.Tensor) -> None:
        """`skipped`: the step's (1,) 0/1 flag on the device (StepResult.skipped)."""
        names = sorted(losses)
        kept = skipped.reshape(()) == 0
        row = torch.where(kept, torch.stack([*(losses[k] for k in names), kept]), 0.0)  # float32: promoted
        if self.sums is None or names != self.names:
            self.names, self.sums = names, torch.zeros_like(row)
        self.sums += row

    def means(self) -> dict[str, float] | None:
        """Means over the window and the ranks (every rank calls this), then the window restarts."""
        if self.sums is None:
            return None
        *sums, count = self.engine.mean_over_ranks(self.sums)
        self.sums.zero_()
        return dict(zip(self.names, (s / count for s in sums))) if count > 0 else None


class Agreed(NamedTuple):
    """One step's flags as every rank agreed them: each true on any rank."""

    stop: bool  # a stop signal (SIGTERM, SIGINT, SIGUSR1)
    time_up: bool  # rank 0's clock passed train.time_limit
    skipped: bool  # a non-finite loss: the step's updates were masked


class StepFlags:
    """Each step's flags (the stop request, rank 0's time-limit verdict, the non-finite flag), agreed
    across ranks on the device (one collective) and read on the host one step late: `push` queues the
    step's copy into a host slot (pinned and non-blocking on CUDA, where an event marks it done),
    `read` hands over the previous step's flags, which are complete by then (on CUDA it waits for that
    step's copy, never for the step just queued), or, with `drain`, this step's too: one host sync,
    taken where the run syncs anyway (log, checkpoint, stop, end)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.cuda = engine.device.type == "cuda"
        self.host = torch.zeros(2, device=engine.device)  # stop, time_up as the host last set them
        self.sent = (False, False)
        self.slots = torch.zeros(2, 3, pin_memory=self.cuda)  # step n's agreed flags in slot n % 2
        self.view = self.slots.numpy()
        self.events = [torch.cuda.Event() for _ in range(2)] if self.cuda else []
        self.pending: list[int] = []  # steps whose flags are not read yet (at most two)

    def push(self, step: int, stop: bool, time_up: bool, skipped: torch.Tensor) -> None:
        for i, (was, now) in enumerate(zip(self.sent, (stop, time_up))):
            if now != was:  # a kernel with the value, no copy from the host (once per run)
                self.host[i].fill_(float(now))
        self.sent = (stop, time_up)
        agreed = self.engine.max_over_ranks(torch.cat([self.host, skipped]))
        self.slots[step % 2].copy_(agreed, non_blocking=True)
        if self.cuda:
            self.events[step % 2].record()
        self.pending.append(step)

    def read(self, drain: bool = False) -> list[tuple[int, Agreed]]:
        """(step, its flags) for each step now readable, oldest first."""
        out = []
        while len(self.pending) > (0 if drain else 1):
            step = self.pending.pop(0)
            if not self.pending:  # the step just queued: the host waits for it
                self.engine.host_syncs += 1
            if self.cuda:
                self.events[step % 2].synchronize()
            out.append((step, Agreed(*(bool(v > 0) for v in self.view[step % 2]))))
        return out


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
