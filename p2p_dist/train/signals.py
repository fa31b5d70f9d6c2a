"""Preemption: SIGUSR1 / SIGTERM ask the run to checkpoint and stop after the current step.

The first signal only sets a flag; the loop checks it once per step together with the other ranks
(any rank signalled -> all ranks stop at the same step), writes a checkpoint and exits with
EXIT_PREEMPTED. A second signal (a different one, or the same one more than REPEAT_WINDOW_S
later) exits at once: checkpoints are written under a temporary name and renamed, so the last
complete checkpoint is never damaged.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from p2p_dist.errors import EXIT_PREEMPTED

HANDLED = (signal.SIGUSR1, signal.SIGTERM)
# torchrun forwards a signal it received to its children, which may already have it from the
# process group: the same signal again within this window is that echo, not a second request.
REPEAT_WINDOW_S = 1.0


class StopRequest:
    def __init__(self) -> None:
        self.signal_name: str | None = None
        self.first_at = 0.0
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        now = time.monotonic()
        if self.signal_name == name and now - self.first_at < REPEAT_WINDOW_S:
            return  # the same signal delivered twice (to the process group and forwarded by the launcher)
        if self.signal_name is not None:
            print(f"received {name} again: exiting now (last complete checkpoint kept)", file=sys.stderr, flush=True)
            os._exit(EXIT_PREEMPTED)
        self.signal_name, self.first_at = name, now
        print(f"received {name}: will checkpoint after the current step and exit", file=sys.stderr, flush=True)

    def install(self) -> "StopRequest":
        for sig in HANDLED:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)
        self._previous.clear()
