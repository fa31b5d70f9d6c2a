"""One run per output folder: an advisory `fcntl.flock` on `train.output_dir/run.lock`, held by
global rank 0 for the whole run (README: what it guarantees on NFS and Lustre).

The kernel drops the lock when its process dies in any way, so no stale lock blocks the next start.
The file records the holder (host, pid, SLURM job id, start time) for a refused start to name, and
is emptied on a clean release: a non-empty file found while the lock is free means its holder died.
Rank 0's answer goes to every rank (`hold_output_dir`), so a refused run exits 2 on all ranks
together. Forked data loader workers close their copy of the descriptor (os.register_at_fork).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from p2p_dist.errors import UserError
from p2p_dist.fsutil import open_own_file

LOCK_FILE = "run.lock"
_held: list[RunLock] = []  # the locks this process holds (at most one run at a time)


class FolderInUse(UserError):
    """Another live run holds the output folder (exit 2)."""


def _holder_text(info: dict) -> str:
    if not info:
        return "another run (it has not written its details yet)"
    job = info.get("slurm_job_id")
    since = info.get("started")
    return (
        f"pid {info.get('pid', '?')} on host {info.get('host', '?')}"
        + (f", SLURM job {job}" if job else "")
        + (f", since {since}" if since else "")
    )


def _read_info(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 65536).decode("utf-8", "replace").strip()
        return json.loads(data) if data else {}
    except (OSError, ValueError):
        return {}


class RunLock:
    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder) / LOCK_FILE
        self.fd: int | None = None
        self.taken_over: dict = {}  # the record of a holder that died without releasing

    def acquire(self) -> RunLock:
        """Take the lock or raise FolderInUse naming the holder; a dead holder's lock is taken over."""
        fd = open_own_file(self.path, os.O_RDWR | os.O_CREAT, "run's lock file")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                info = _read_info(fd)
                os.close(fd)
                raise FolderInUse(
                    f"train.output_dir {self.path.parent} is in use by {_holder_text(info)} "
                    f"(lock {self.path}); stop that run or choose another train.output_dir"
                ) from None
            os.close(fd)
            if exc.errno in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                print(
                    f"warning: the filesystem of {self.path.parent} does not support locks "
                    f"({exc.strerror}); nothing stops a second run on this folder",
                    file=sys.stderr,
                    flush=True,
                )
                return self
            raise
        self.taken_over = _read_info(fd)
        info = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        os.fsync(fd)
        self.fd = fd
        _held.append(self)
        return self

    def release(self) -> None:
        """Empty the record and drop the lock (the file stays: unlinking a lock file races a new holder)."""
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the last descriptor releases the flock
        if self in _held:
            _held.remove(self)

    def _close_in_child(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)  # the parent's descriptor keeps the lock
            self.fd = None


def _after_fork_in_child() -> None:
    for lock in list(_held):
        lock._close_in_child()
    _held.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def release_held() -> None:
    """Release every lock this process holds (the end of an in-process run, or its failure)."""
    for lock in list(_held):
        lock.release()


def hold_output_dir(engine, folder: Path) -> RunLock | None:
    """Rank 0 makes the folder and takes the lock; every rank learns the outcome, and a refused run
    raises on all of them (one line from rank 0, the others quiet). Returns the lock on rank 0."""
    from p2p_dist.fsutil import check_writable_dir
    from p2p_dist.train.monitor import METRICS_FILE

    lock, error = None, None
    if engine.is_main:
        try:
            check_writable_dir(folder, "train.output_dir")
            lock = RunLock(folder).acquire()
            os.close(open_own_file(folder / METRICS_FILE, os.O_WRONLY | os.O_CREAT, "run's metrics log"))
        except UserError as exc:
            error = exc
    if engine.any_rank(error is not None):
        if error is None:
            error = FolderInUse(f"train.output_dir {folder} cannot be used (rank 0 names the reason)")
            error.quiet = True  # rank 0 printed the reason
        # every rank leaves the process group before exiting: a gloo group still alive at interpreter
        # shutdown can abort the process ("terminate called without an active exception", exit -6)
        engine.end()
        raise error
    if lock is not None and lock.taken_over:
        print(
            f"taking over {lock.path}: its holder ({_holder_text(lock.taken_over)}) is gone",
            file=sys.stderr,
            flush=True,
        )
    return lock
