"""User-facing errors and the console-command wrapper that turns them into one line + exit 2."""

from __future__ import annotations

import functools
import sys
from typing import Callable

EXIT_USAGE = 2  # bad input: config, paths, data, checkpoints
EXIT_PREEMPTED = 75  # stopped by SIGUSR1/SIGTERM after writing a checkpoint (EX_TEMPFAIL)
EXIT_NONFINITE = 3  # too many consecutive non-finite losses
EXIT_STORAGE = 74  # a checkpoint or export could not be written: disk full, quota, I/O error (EX_IOERR)


class UserError(Exception):
    """A problem with the user's input that deserves one clear line, never a traceback."""

    exit_code = EXIT_USAGE


def console_entry(main: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a console command: UserError -> `error: ...` on stderr and exit code 2."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        try:
            rc = main(argv)
        except UserError as exc:
            if not getattr(exc, "quiet", False):  # quiet: another process of the run printed the reason
                print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(getattr(exc, "exit_code", EXIT_USAGE)) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130) from None
        return 0 if rc is None else int(rc)

    return wrapper
