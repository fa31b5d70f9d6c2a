"""Stop requests: SIGUSR1 / SIGTERM (preemption) and SIGINT (Ctrl-C) ask the run to checkpoint and
stop after the current step (exit codes: README and `p2p-train --help`).

The first signal only sets a flag; the loop checks it once per step together with the other ranks,
so all ranks stop at the same step. A second signal (a different one, or the same one more than
REPEAT_WINDOW_S later: a second Ctrl-C) exits at once; checkpoints are written under a temporary
name and renamed, so the last complete checkpoint is never damaged.

Ctrl-C in a terminal reaches the whole foreground process group: the training process and its
data loader workers (a single process), or `accelerate launch`, which passes SIGINT on to each
training process's own process group (trainer and workers; torchrun starts each in a new session).
The workers must not die of it before the checkpoint: they are forked after `install` (the
loader starts them at the first batch) and inherit the handler, which does nothing in a process
other than the one that installed it; the training process ends its workers itself when it exits.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from p2p_dist.errors import EXIT_INTERRUPTED, EXIT_PREEMPTED

HANDLED = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
# torchrun forwards a signal it received to its children, which may already have it from the
# process group: the same signal again within this window is that echo, not a second request.
REPEAT_WINDOW_S = 1.0


def exit_code_for(signal_name: str | None) -> int:
    return EXIT_INTERRUPTED if signal_name == "SIGINT" else EXIT_PREEMPTED


class StopRequest:
    def __init__(self) -> None:
        self.signal_name: str | None = None
        self.first_at = 0.0
        self._previous: dict[int, object] = {}
        self._pid = os.getpid()

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    @property
    def interrupted(self) -> bool:
        return self.signal_name == "SIGINT"

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self._pid:
            return  # a forked data loader worker: the training process handles the request
        name = signal.Signals(signum).name
        now = time.monotonic()
        if self.signal_name == name and now - self.first_at < REPEAT_WINDOW_S:
            return  # the same signal delivered twice (to the process group and forwarded by the launcher)
        if self.signal_name is not None:
            print(f"received {name} again: exiting now (last complete checkpoint kept)", file=sys.stderr, flush=True)
            os._exit(exit_code_for(name))
        self.signal_name, self.first_at = name, now
        again = "Ctrl-C again" if name == "SIGINT" else "a second signal"
        print(
            f"received {name}: will checkpoint after the current step and exit ({again} exits at once)",
            file=sys.stderr,
            flush=True,
        )

    def install(self) -> StopRequest:
        self._pid = os.getpid()
        for sig in HANDLED:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)
        self._previous.clear()


def stopped_message(signal_name: str | None, step: int, exit_code: int) -> str:
    by = signal_name or ("Ctrl-C on another rank" if exit_code == EXIT_INTERRUPTED else "a signal on another rank")
    return (
        f"stopped by {by} at step {step}; to resume, run the same command again "
        "(train.resume=auto continues from the checkpoint just written)"
    )
