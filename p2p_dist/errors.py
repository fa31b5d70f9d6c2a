"""User-facing errors and the console-command wrapper that turns them into one line + exit 2."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

EXIT_USAGE = 2  # bad input: config, paths, data, checkpoints
EXIT_PREEMPTED = 75  # stopped by SIGUSR1/SIGTERM after writing a checkpoint (EX_TEMPFAIL)
EXIT_NONFINITE = 3  # too many consecutive non-finite losses
EXIT_STORAGE = 74  # a checkpoint or export could not be written: disk full, quota, I/O error (EX_IOERR)
EXIT_PARTIAL = 65  # done, but some inputs were unreadable and skipped (listed); EX_DATAERR
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT), the shell's 128 + 2; training checkpoints first


class UserError(Exception):
    """A problem with the user's input that deserves one clear line, never a traceback."""

    exit_code = EXIT_USAGE


class StorageError(UserError):
    """A file could not be written (disk full, quota, file size limit, permissions, I/O error)."""

    exit_code = EXIT_STORAGE


def _os_error_line(exc: OSError) -> str:
    where = f": {exc.filename}" if exc.filename else ""
    return f"{exc.strerror or type(exc).__name__}{where}" if exc.strerror else (str(exc) or type(exc).__name__)


def console_entry(main: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a console command: UserError -> `error: ...` on stderr and its exit code (2 by default);
    an OSError that got this far -> one line and exit code 74, never a traceback."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        try:
            rc = main(argv)
        except UserError as exc:
            if not getattr(exc, "quiet", False):  # quiet: another process of the run printed the reason
                print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(getattr(exc, "exit_code", EXIT_USAGE)) from None
        except OSError as exc:  # what the OS refused (disk full, permissions, a file where a folder goes)
            print(f"error: {_os_error_line(exc)}", file=sys.stderr)
            raise SystemExit(EXIT_STORAGE) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(EXIT_INTERRUPTED) from None
        return 0 if rc is None else int(rc)

    return wrapper
