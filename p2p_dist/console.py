"""The one console factory of every command (p2p-train, p2p-data, p2p-translate, p2p-eval, p2p-convert).

On a terminal: rich as usual (colour, live progress bars, wrapping at the terminal's width).
Anywhere else (a SLURM log, `> log`, a pipe, a test's captured output) rich would hard-wrap at 80
columns and split a long path over several lines, which breaks grep and log parsers. There the
console never wraps (one message, one line; tables as wide as their content) and progress bars
become plain lines: one when a task starts, one every PROGRESS_EVERY of its total (or every
PROGRESS_SECONDS, whichever comes first) and one when it ends.
"""

from __future__ import annotations

import time

from rich.console import Console

LOG_WIDTH = 100_000  # "no limit" for tables and rules; plain text is never wrapped (soft_wrap)
PROGRESS_EVERY = 0.1  # a log line per tenth of a task
PROGRESS_SECONDS = 60.0  # and at least one a minute while a task runs


def make_console(stderr: bool = True, highlight: bool = False) -> Console:
    """A rich Console on stderr (or stdout) that hard-wraps nothing unless it writes to a terminal."""
    console = Console(stderr=stderr, highlight=highlight)
    if console.is_terminal:
        return console
    return Console(stderr=stderr, highlight=highlight, soft_wrap=True, width=LOG_WIDTH)


def make_progress(*columns, console: Console, disable: bool = False, transient: bool = False):
    """A rich Progress on a terminal; elsewhere a LineProgress with the same calls."""
    if console.is_terminal:
        from rich.progress import Progress

        return Progress(*columns, console=console, disable=disable, transient=transient)
    return LineProgress(console, disable=disable)


class _Task:
    def __init__(self, description: str, total: float | None, completed: float, fields: dict):
        self.description, self.total, self.completed, self.fields = description, total, completed, fields
        self.started_at = time.monotonic()
        self.last_line_at = self.started_at
        self.last_line_completed = completed
        self.finished_line = False


class LineProgress:
    """The subset of rich.progress.Progress the commands use, as plain log lines."""

    def __init__(self, console: Console, *, disable: bool = False):
        self.console = console
        self.disable = disable
        self._tasks: dict[int, _Task] = {}

    def __enter__(self) -> LineProgress:
        self.start()
        return self

    def __exit__(self, *exc) -> bool:
        self.stop()
        return False

    def start(self) -> None:
        pass

    def stop(self) -> None:
        for task in self._tasks.values():
            self._line(task, final=True)

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **fields) -> int:
        task_id = len(self._tasks)
        self._tasks[task_id] = task = _Task(description, total, completed, fields)
        if not self.disable:
            self.console.print(f"{description}: started" + (f", {task.total:g} to do" if task.total else ""))
        return task_id

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def update(
        self,
        task_id: int,
        *,
        total: float | None = None,
        completed: float | None = None,
        advance: float | None = None,
        description: str | None = None,
        **fields,
    ) -> None:
        task = self._tasks[task_id]
        if total is not None:
            task.total = total
        if completed is not None:
            task.completed = completed
        if advance is not None:
            task.completed += advance
        if description is not None:
            task.description = description
        task.fields.update(fields)
        now = time.monotonic()
        step = (task.total or 0) * PROGRESS_EVERY
        by_count = step and task.completed - task.last_line_completed >= step
        due = by_count or now - task.last_line_at >= PROGRESS_SECONDS
        if task.total and task.completed >= task.total:
            self._line(task, final=True)
        elif due:
            self._line(task)

    def _line(self, task: _Task, final: bool = False) -> None:
        if self.disable or (final and task.finished_line):
            return
        task.finished_line = final
        task.last_line_at, task.last_line_completed = time.monotonic(), task.completed
        elapsed = task.last_line_at - task.started_at
        done = (
            f"{task.completed:g}/{task.total:g} ({100 * task.completed / task.total:.0f}%)"
            if task.total
            else f"{task.completed:g}"
        )
        info = task.fields.get("info")
        self.console.print(
            f"{task.description}: {done}"
            + (f"  {info}" if info else "")
            + f", {elapsed:.1f} s"
            + (self._ending(task) if final else "")
        )

    @staticmethod
    def _ending(task: _Task) -> str:
        return ", done" if not task.total or task.completed >= task.total else ", stopped"
