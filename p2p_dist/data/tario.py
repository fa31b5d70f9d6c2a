"""Writing shards: deterministic tar files under temporary names, renamed when complete.

Same samples in the same order -> byte-identical shards: members are sorted within a sample and
carry fixed metadata (mtime 0, uid/gid 0, mode 0644, no user names).
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

from p2p_dist.fsutil import atomic_path

MTIME = 0


def shard_name(name: str, number: int) -> str:
    return f"{name}-{number:06d}.tar"


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = MTIME
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def add_sample(tf: tarfile.TarFile, key: str, fields: dict[str, bytes]) -> None:
    """Write one sample: members `key.field` in sorted field order."""
    if "." in key.rsplit("/", 1)[-1]:
        raise ValueError(f"sample key {key!r} must not contain a dot")
    for ext in sorted(fields):
        data = fields[ext]
        tf.addfile(_info(f"{key}.{ext}", len(data)), io.BytesIO(data))


def write_shard(final: str | os.PathLike, samples: list[tuple[str, dict[str, bytes]]]) -> Path:
    """Write a whole shard atomically: temp name, fsync, rename onto `final`."""
    final = Path(final)
    with (
        atomic_path(final) as tmp,
        open(tmp, "wb") as fh,
        tarfile.open(fileobj=fh, mode="w", format=tarfile.GNU_FORMAT) as tf,
    ):
        for key, fields in samples:
            add_sample(tf, key, fields)
    return final
