"""The paper's jitter, batched, on the device where the batch lives: uint8 pixels -> the step's tensors
(docs/architecture.md, "One sample, from shard to step", step 7).

Every reader hands over a `Pixels` batch: each sample's decoded, untransformed uint8 images in one
flat tensor, with the draws (crop top, crop left, flip) the reader made from its position-seeded RNG,
so where the pixels are transformed never changes what is drawn. `jitter_batch` moves the bytes to
the device, resizes to `load_size` (`transforms.resize_batch`; label maps nearest neighbours), crops
`crop_size` at the drawn place and flips where drawn (the same for A, B and the labels), and scales
to [-1, 1] (`transforms.normalize` with the jitter's `scale`, 8-bit RGB's x / 127.5 - 1 by default;
colorization: the crop's Lab, L/50 - 1 and ab/110). Images of different stored sizes in
one batch are resized one by one, then stacked.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
import torch

from p2p_dist.data.errors import DataError
from p2p_dist.data.transforms import RGB8, PixelRange, normalize, resize_batch, rgb_to_lab

__all__ = ["Jitter", "JitterDraw", "Pixels", "jitter_batch"]


@dataclass(frozen=True)
class JitterDraw:
    """The random part of one sample's jitter; the same draw is applied to A, B and the labels."""

    top: int = 0
    left: int = 0
    flip: bool = False


@dataclass(frozen=True)
class Jitter:
    """Resize to `load_size` (square; None keeps the stored size), random crop `crop_size` (None: no
    crop), random horizontal flip; `from_config` maps data.resize/crop onto them (the paper: 286 -> 256).
    `scale`: how fields A and B's stored pixels map to [-1, 1] (None: 8-bit, x / 127.5 - 1)."""

    load_size: int | None = None
    crop_size: int | None = None
    flip: bool = False
    scale: tuple[PixelRange, PixelRange] | None = None

    @classmethod
    def from_config(cls, cfg) -> Jitter:
        if cfg.resize and cfg.crop:
            return cls(cfg.load_size, cfg.crop_size, cfg.flip)
        if cfg.resize:
            return cls(cfg.crop_size, None, cfg.flip)
        if cfg.crop:
            return cls(None, cfg.crop_size, cfg.flip)
        return cls(None, None, cfg.flip)

    def loaded_size(self, size_hw: tuple[int, int]) -> tuple[int, int]:
        return (self.load_size, self.load_size) if self.load_size else tuple(size_hw)

    def check_fits(self, size_hw: tuple[int, int]) -> str | None:
        """None when an image of this size can be jittered, else the reason it cannot."""
        h, w = self.loaded_size(size_hw)
        if self.crop_size and (h < self.crop_size or w < self.crop_size):
            return f"image {w}x{h} is smaller than the crop size {self.crop_size}"
        return None

    def draw(self, rng: np.random.Generator, size_hw: tuple[int, int]) -> JitterDraw:
        """Draw crop offsets and flip for an image of the given stored size (always the same draws)."""
        h, w = self.loaded_size(size_hw)
        top = left = 0
        # always consume the same random numbers, whatever the options, so draws stay aligned
        u = rng.random(3)
        if self.crop_size:
            top = int(u[0] * (h - self.crop_size + 1))
            left = int(u[1] * (w - self.crop_size + 1))
        return JitterDraw(top=top, left=left, flip=bool(self.flip and u[2] < 0.5))


@dataclass
class Pixels:
    """A batch as a reader hands it over: every image of its N samples, decoded and untransformed, in
    one flat uint8 tensor (one shared-memory segment, one file-descriptor handover across a worker's
    queue: A, B and the draws as three tensors cost 11.6 ms of CPU per batch of 4 at 256 px, one
    tensor 7.5, bench/README.md), the draws (N x 3: top, left, flip) and the keys.

    `fields` names the images of a sample in the order they are stored ("A", "B"[, "label"] for
    translation, "rgb" for colorization); `shapes` holds each image's shape, sample by sample within a
    field (H x W x 3, or H x W for label maps)."""

    data: torch.Tensor
    fields: tuple[str, ...]
    shapes: list[tuple[int, ...]]
    draws: np.ndarray
    jitter: Jitter
    key: list[str]

    def images(self, data: torch.Tensor | None = None) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Each field's images as views of `data` (default: this batch's): one N x H x W [x C] tensor
        where the field's images share a size, else a list of N tensors."""
        data = self.data if data is None else data
        n, out, at = len(self.key), {}, 0
        for f, name in enumerate(self.fields):
            shapes = self.shapes[f * n : (f + 1) * n]
            views = []
            for shape in shapes:
                size = int(np.prod(shape))
                views.append(data[at : at + size].view(shape))
                at += size
            if len(set(shapes)) == 1:
                start = at - n * views[0].numel()
                views = data[start:at].view(n, *shapes[0])
            out[name] = views
        return out

    def pin_memory(self) -> Pixels:
        """The DataLoader's pin-memory thread calls this (on CUDA): page-locked pixels copy to the GPU
        asynchronously."""
        return replace(self, data=self.data.pin_memory())


@contextmanager
def intraop_threads(device: torch.device):
    """The jitter of one batch on the CPU runs on one intra-op thread. Its tensors are small (a few
    MB): a second thread saves little wall time, and after every parallel region it spins while the
    training process decodes the next batch (in-process loading) or waits for its workers, which
    doubled the data path's CPU time (bench/README.md, "The data path"). The setting is the calling
    thread's and is restored on exit; other devices are untouched."""
    threads = torch.get_num_threads() if device.type == "cpu" else 1
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _nchw(x: torch.Tensor) -> torch.Tensor:
    """N x H x W [x C] -> N x C x H x W view (label maps get C = 1)."""
    return (x[..., None] if x.ndim == 3 else x).permute(0, 3, 1, 2)


def _crops(images, draws: list, jitter: Jitter, nearest: bool) -> list[torch.Tensor]:
    """Each sample resized, cropped and flipped, as a C-innermost h x w x C tensor: the layout in which
    crop and flip are cheap (whole rows of pixels are copied), whatever the resize's memory format."""
    size = (jitter.load_size, jitter.load_size) if jitter.load_size else None
    if isinstance(images, torch.Tensor):
        x = _nchw(images)
        batch = resize_batch(x, size, nearest) if size else x
    elif size:  # stored sizes differ: resize one by one, then the images share a size
        batch = torch.cat([resize_batch(_nchw(img[None]), size, nearest) for img in images])
    else:
        batch = [_nchw(img[None])[0] for img in images]
    c = jitter.crop_size
    out = []
    for i, (top, left, flip) in enumerate(draws):
        xi = batch[i].permute(1, 2, 0)
        if c:
            xi = xi[top : top + c, left : left + c]
        out.append(xi.flip(1) if flip else xi)
    if len({tuple(x.shape) for x in out}) > 1:
        sizes = sorted(f"{x.shape[1]}x{x.shape[0]}" for x in out)
        raise DataError(
            f"images of mixed sizes in one batch ({', '.join(sizes)}); resize them (size / data.resize) "
            "or use batch size 1"
        )
    return out


def _scaled(crops: list[torch.Tensor], channels_last: bool, rng: PixelRange = RGB8) -> torch.Tensor:
    """h x w x C crops of stored pixels -> float32 N x C x h x w in [-1, 1] (`transforms.normalize`:
    8-bit x / 127.5 - 1), each crop written straight into its slot of one buffer (channels_last:
    N x h x w x C memory, else N x C x h x w)."""
    h, w, c = crops[0].shape
    device = crops[0].device
    if channels_last:
        out = torch.empty((len(crops), h, w, c), dtype=torch.float32, device=device)
        for i, crop in enumerate(crops):
            normalize(crop, rng, out=out[i])
        return out.permute(0, 3, 1, 2)
    out = torch.empty((len(crops), c, h, w), dtype=torch.float32, device=device)
    for i, crop in enumerate(crops):
        normalize(crop.permute(2, 0, 1), rng, dim=-3, out=out[i])
    return out


def jitter_batch(
    batch: Pixels, device: torch.device | str, *, channels_last: bool = False, non_blocking: bool = True
) -> dict:
    """A reader's `Pixels` batch -> the step's tensors on `device` (see the module docstring):
    {"A", "B": float32 N x C x h x w, in channels_last memory when `channels_last`, else contiguous;
    "label": int64 N x h x w when the reader shipped label maps; "rgb": the RGB crop in [-1, 1] for
    colorization (A = L/50 - 1, B = ab/110); "key"}."""
    device = torch.device(device)
    data = batch.data.to(device, non_blocking=non_blocking)
    draws = batch.draws.tolist()
    ranges = dict(zip(("A", "B"), batch.jitter.scale or ()))
    out: dict = {}
    with intraop_threads(device):
        for name, images in batch.images(data).items():
            crops = _crops(images, draws, batch.jitter, nearest=name == "label")
            if name == "label":
                out["label"] = torch.stack(crops)[..., 0].long()
            elif name == "rgb":
                rgb = torch.stack(crops).permute(0, 3, 1, 2)
                L, ab = rgb_to_lab(rgb)
                fmt = torch.channels_last if channels_last else torch.contiguous_format
                out["A"], out["B"] = L.contiguous(memory_format=fmt), ab.contiguous(memory_format=fmt)
                out["rgb"] = _scaled(crops, channels_last)
            else:
                out[name] = _scaled(crops, channels_last, ranges.get(name, RGB8))
    out["key"] = batch.key
    return out
