"""The streamed batches, staged ahead of the step on the training device (data placement `stream`).

`prefetch(loader, device)` hands out the loader's batches in the loader's order, each a `Pixels` with
its bytes already on `device` (JPEGs the readers shipped encoded are decoded there:
p2p_dist/data/device_decode.py), for `jitter_batch` to transform. On a CUDA device a thread stages
them: it takes the next batch from the loader (so the readers' work runs ahead of the step), decodes
and copies it on its own CUDA stream into one of `slots` static device buffers (grown to the largest
batch seen, then reused), and records an event; the step's stream waits on that event, never on the
host. A buffer is refilled only after the step's stream has passed the point where its batch was
handed out (an event recorded when the next batch is asked for: `jitter_batch` has by then read
it). Elsewhere (a CPU run) the loader is iterated as is, with no thread; `threaded=True` runs the
staging thread on the CPU too (the tests do), without streams or events.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import replace

import torch

from p2p_dist.data.device_decode import Encoded
from p2p_dist.data.jitter import Pixels
from p2p_dist.data.loader import OPEN_READS, StreamLoader

_END = object()


def prefetch(loader: Iterable, device: torch.device | str, *, slots: int = 2, threaded: bool | None = None) -> Iterator:
    """An iterator over `loader`'s batches, staged on `device` (see the module docstring). A staged
    batch's bytes are the step's to read until it asks for the next batch; they are then reused. Any
    loader other than a training `StreamLoader` (one that jitters itself, a resident set) is iterated
    as is."""
    device = torch.device(device)
    staged = device.type == "cuda" if threaded is None else threaded
    if not staged or not isinstance(loader, StreamLoader) or loader.device is not None:
        return iter(loader)
    return _staged(loader.read(encoded=True), device, slots)


def _staged(read: Iterator, device: torch.device, slots: int) -> Iterator[Pixels]:
    first = next(read, _END)  # read here: the loader's workers fork from this thread, not the staging one
    if first is _END:
        return
    stager = _Stager(read, first, device, slots)
    try:
        while True:
            batch = stager.take()
            if batch is _END:
                return
            yield batch
    finally:
        stager.close()


class _Stager:
    """The staging thread, its slots and their events (see the module docstring)."""

    def __init__(self, read: Iterator, first, device: torch.device, slots: int):
        cuda = device.type == "cuda"
        if cuda and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.device, self.read, self.batches = device, read, itertools.chain((first,), read)
        self.stream = torch.cuda.Stream(device) if cuda else None
        self.buffers: list[torch.Tensor | None] = [None] * slots
        self.released: list[torch.cuda.Event | None] = [None] * slots  # the step is past the slot's batch
        self.free: queue.Queue = queue.Queue()
        self.ready: queue.Queue = queue.Queue()
        self.held: int | None = None  # the slot of the batch handed out last
        self.stopping = threading.Event()
        for slot in range(slots):
            self.free.put(slot)
        self.thread = threading.Thread(target=self._fill, name="p2p-prefetch", daemon=True)
        self.thread.start()
        OPEN_READS.add(self)  # closed at exit: the thread then closes its read, and the workers stop

    def _fill(self) -> None:
        try:
            if self.stream is not None:
                torch.cuda.set_device(self.device)  # this thread's own current device: nvJPEG's and the allocator's
            with torch.cuda.stream(self.stream) if self.stream is not None else nullcontext():
                for batch in self.batches:
                    slot = self.free.get()
                    if self.stopping.is_set():
                        return
                    self.ready.put(self._stage(batch, slot))
            self.ready.put((None, _END, None))
        except BaseException as exc:  # raised in the main thread, by take()
            self.ready.put((None, exc, None))
        finally:
            self.read.close()  # the loader's workers stop with it

    def _stage(self, batch: Pixels | Encoded, slot: int):
        if self.released[slot] is not None:
            self.stream.wait_event(self.released[slot])
        n = batch.nbytes if isinstance(batch, Encoded) else batch.data.numel()
        dtype = torch.uint8 if isinstance(batch, Encoded) else batch.data.dtype  # int32: 16-bit pixels
        buffer = self.buffers[slot]
        if buffer is None or buffer.numel() < n or buffer.dtype != dtype:
            buffer = self.buffers[slot] = torch.empty(n, dtype=dtype, device=self.device)
        if isinstance(batch, Encoded):
            staged = batch.decode(self.device, out=buffer)
        else:
            buffer[:n].copy_(batch.data, non_blocking=True)
            staged = replace(batch, data=buffer[:n])
        done = None
        if self.stream is not None:
            done = torch.cuda.Event()
            done.record(self.stream)
        return slot, staged, done

    def take(self):
        """The next staged batch (or _END), the step's stream made to wait for it; the slot of the
        batch handed out before is given back once the step's stream is past it."""
        if self.held is not None:
            if self.stream is not None:
                released = torch.cuda.Event()
                released.record(torch.cuda.current_stream(self.device))
                self.released[self.held] = released
            self.free.put(self.held)
            self.held = None
        slot, batch, done = self.ready.get()
        if isinstance(batch, BaseException):
            raise batch
        if done is not None:
            torch.cuda.current_stream(self.device).wait_event(done)
        self.held = slot
        return batch

    def close(self) -> None:
        """Stop the thread: it ends, closing its read, once its pending read of the loader returns."""
        self.stopping.set()
        self.free.put(None)
        self.thread.join(timeout=30)
