"""Where shards are and how their samples come out of them.

`expand_shards` turns a source string (README: a folder, a glob, a brace pattern, a `pipe:`
command, several joined by `::`) into the ordered list of shard URLs and refuses (one line)
patterns that match nothing and shard files that do not exist.

`iter_raw_samples` yields the *undecoded* samples of one shard, grouped by key the way webdataset
groups them (`dir/key.ext` -> key `dir/key`, field `ext`; the key ends at the first dot of the
file name). Plain local `.tar` files are read lazily: only the tar headers are scanned, and a
field's bytes are read when the sample is decoded, so skipping samples (exact resume) and holding
them in a shuffle buffer costs almost nothing. Other URLs are streamed and read eagerly.
"""

from __future__ import annotations

import glob
import os
import re
import tarfile
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from braceexpand import braceexpand

from p2p_dist.data.errors import DataError

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_GLOB_CHARS = re.compile(r"[*?\[]")


# --- sources ------------------------------------------------------------------------------------


def split_source(source: str) -> list[str]:
    """`a::b::c` -> ['a', 'b', 'c'] (empty parts dropped)."""
    if not isinstance(source, str) or not source.strip():
        raise DataError("no shards given (the shard source is empty)")
    return [p.strip() for p in source.split("::") if p.strip()]


def is_remote(part: str) -> bool:
    """True for `pipe:` commands and URLs other than file://."""
    return part.startswith("pipe:") or (bool(_URL.match(part)) and not part.startswith("file://"))


def _local(part: str) -> str:
    if part.startswith("file://"):
        part = part[len("file://") :]
    return os.path.expanduser(part)


def expand_part(part: str) -> list[str]:
    """One source part -> its shard URLs (see the module docstring)."""
    if is_remote(part):
        return list(braceexpand(part))
    part = _local(part)
    if os.path.basename(part) == "index.json" and os.path.isfile(part):
        part = os.path.dirname(part) or "."
    out: list[str] = []
    expansions = list(braceexpand(part))
    missing: list[str] = []
    for item in expansions:
        if os.path.isdir(item):
            found = sorted(glob.glob(os.path.join(glob.escape(item), "*.tar")))
            if not found:
                raise DataError(f"folder {item} holds no *.tar shards")
            out += found
        elif _GLOB_CHARS.search(item):
            found = sorted(p for p in glob.glob(item) if os.path.isfile(p))
            if not found:
                raise DataError(f"shard pattern {item} matches no files")
            out += found
        elif os.path.isfile(item):
            out.append(item)
        else:
            missing.append(item)
    if missing:
        if len(expansions) == 1:
            raise DataError(f"shard file {missing[0]} does not exist")
        raise DataError(f"{len(missing)} of the {len(expansions)} shards of {part} do not exist (first: {missing[0]})")
    return out


def expand_shards(source: str) -> list[str]:
    """The ordered, de-duplicated shard URLs of a source string; DataError when nothing matches."""
    urls: list[str] = []
    seen: set[str] = set()
    for part in split_source(source):
        for url in expand_part(part):
            if url not in seen:
                seen.add(url)
                urls.append(url)
    if not urls:
        raise DataError(f"no shards found in {source!r}")
    return urls


# --- raw samples --------------------------------------------------------------------------------


class SampleError(Exception):
    """A sample that cannot be used (corrupt image, missing member, short read): skipped and counted."""


@dataclass(frozen=True)
class _Ref:
    """Bytes of one tar member, read later: (file, its identity when scanned, offset, size)."""

    path: str
    ident: tuple[int, int, int]  # (device, inode, mtime_ns): a rewritten shard is a different file
    offset: int
    size: int


class _FileCache:
    """A few open file descriptors for lazy reads (pread: no shared file offsets)."""

    def __init__(self, limit: int = 8):
        self.limit = limit
        self.fds: OrderedDict[tuple, int] = OrderedDict()
        self.pid = os.getpid()

    def read(self, ref: _Ref) -> bytes:
        if self.pid != os.getpid():  # a forked worker: never reuse the parent's descriptors
            self.fds.clear()
            self.pid = os.getpid()
        cache_key = (ref.path, ref.ident)
        fd = self.fds.get(cache_key)
        if fd is None:
            try:
                fd = os.open(ref.path, os.O_RDONLY)
            except OSError as exc:
                raise SampleError(f"cannot open shard ({exc.strerror})") from None
            if _identity(os.fstat(fd)) != ref.ident:
                os.close(fd)
                raise SampleError("the shard file was replaced while it was being read")
            self.fds[cache_key] = fd
            while len(self.fds) > self.limit:
                _, old = self.fds.popitem(last=False)
                os.close(old)
        else:
            self.fds.move_to_end(cache_key)
        data = os.pread(fd, ref.size, ref.offset)
        if len(data) != ref.size:
            raise SampleError(f"truncated member ({len(data)} of {ref.size} bytes)")
        return data

    def close(self) -> None:
        if self.pid == os.getpid():
            for fd in self.fds.values():
                os.close(fd)
        self.fds.clear()


_FILES = _FileCache()


@dataclass
class RawSample:
    """One undecoded sample: its key, the shard it came from, and its fields (extension -> bytes)."""

    key: str
    shard: str
    fields: dict = field(default_factory=dict)

    def has(self, ext: str) -> bool:
        return ext in self.fields

    def read(self, ext: str) -> bytes:
        try:
            value = self.fields[ext]
        except KeyError:
            raise SampleError(f"missing member {self.key}.{ext}") from None
        if isinstance(value, _Ref):
            return _FILES.read(value)
        return value

    def identity(self, ext: str) -> tuple[int, int, int] | None:
        """The identity (device, inode, mtime) of the shard file the member is read from, as it was
        when the shard was scanned; None for members read from a stream (remote or compressed)."""
        value = self.fields.get(ext)
        return value.ident if isinstance(value, _Ref) else None


def split_member_name(name: str) -> tuple[str, str] | None:
    """`dir/key.a.png` -> ('dir/key', 'a.png'); None for names without an extension."""
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    if dot <= slash + 1 or dot == len(name) - 1:
        return None
    return name[:dot], name[dot + 1 :].lower()


OnError = Callable[[str, str, str], None]  # (shard, key, reason)


def _group(members: Iterator[tuple[str, object]], shard: str) -> Iterator[RawSample]:
    current: RawSample | None = None
    for name, value in members:
        parts = split_member_name(name)
        if parts is None:
            continue
        key, ext = parts
        if current is None or key != current.key:
            if current is not None:
                yield current
            current = RawSample(key=key, shard=shard)
        current.fields[ext] = value
    if current is not None:
        yield current


def _check_complete(tf: tarfile.TarFile) -> None:
    """tarfile takes a cut-off header for the end of the archive; a complete tar ends with a full
    (zero) block where the next header would be, so anything shorter means truncation."""
    if tf.fileobj.tell() - tf.offset < tarfile.BLOCKSIZE:
        raise tarfile.ReadError("truncated tar: it ends without an end-of-archive block")


def _identity(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_dev, st.st_ino, st.st_mtime_ns)


class _ScannedShards:
    """The member lists of fully scanned local shards, keyed by path and file identity: the training
    stream reads its shards again on every cycle, and a later pass then skips tarfile's header scan
    (0.06-0.1 ms per sample, bench/README.md). A rewritten shard has a new identity and is scanned
    again. Bounded by a total member count; the oldest lists go first."""

    def __init__(self, max_members: int = 500_000):
        self.max_members = max_members
        self.members = 0
        self.lists: OrderedDict[tuple, list[tuple[str, _Ref]]] = OrderedDict()

    def get(self, key: tuple) -> list[tuple[str, _Ref]] | None:
        found = self.lists.get(key)
        if found is not None:
            self.lists.move_to_end(key)
        return found

    def put(self, key: tuple, members: list[tuple[str, _Ref]]) -> None:
        if len(members) > self.max_members or key in self.lists:
            return
        self.lists[key] = members
        self.members += len(members)
        while self.members > self.max_members:
            _, old = self.lists.popitem(last=False)
            self.members -= len(old)


_SCANNED = _ScannedShards()


def _lazy_members(path: str) -> Iterator[tuple[str, _Ref]]:
    known = _SCANNED.get((path, _identity(os.stat(path))))
    if known is not None:
        yield from known
        return
    found = []
    with open(path, "rb") as fh, tarfile.open(fileobj=fh, mode="r:") as tf:
        ident = _identity(os.fstat(fh.fileno()))
        for info in tf:
            if info.isfile():
                member = (info.name, _Ref(path, ident, info.offset_data, info.size))
                found.append(member)
                yield member
        _check_complete(tf)
    _SCANNED.put((path, ident), found)


def _stream_members(url: str) -> Iterator[tuple[str, bytes]]:
    if is_remote(url):
        import webdataset as wds

        stream = wds.gopen(url, "rb")
    else:
        stream = open(_local(url), "rb")  # noqa: SIM115 (closed by the `with` below, like gopen's)
    with stream, tarfile.open(fileobj=stream, mode="r|*") as tf:
        for info in tf:
            if info.isfile():
                fh = tf.extractfile(info)
                data = fh.read() if fh is not None else b""
                if len(data) != info.size:
                    raise tarfile.ReadError(f"truncated member {info.name}")
                yield info.name, data
        _check_complete(tf)


def iter_raw_samples(url: str, on_error: OnError) -> Iterator[RawSample]:
    """The samples of one shard in stored order; a broken shard ends early via `on_error`."""
    local = not is_remote(url)
    path = _local(url) if local else url
    lazy = local and path.endswith(".tar")
    members = _lazy_members(path) if lazy else _stream_members(url)
    last_key = ""
    try:
        for sample in _group(members, url):
            last_key = sample.key
            yield sample
    except FileNotFoundError:
        on_error(url, "", "shard file not found")
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        where = f"after {last_key}" if last_key else "at its start"
        on_error(url, last_key, f"unreadable tar data {where} ({exc or type(exc).__name__})")
