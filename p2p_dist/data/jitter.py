"""The paper's jitter, batched, on the device where the batch lives: uint8 pixels -> the step's tensors
(docs/architecture.md, "One sample, from shard to step", step 7).

Every reader hands over a `Pixels` batch: each sample's decoded, untransformed uint8 images in one
flat tensor, with the draws (crop top, crop left, flip) the reader made from its position-seeded RNG,
so where the pixels are transformed never changes what is drawn. `jitter_batch` moves the bytes to
the device, resizes to `load_size` (`transforms.resize_batch`; label maps nearest neighbours), crops
`crop_size` at the drawn place and flips where drawn (the same for A, B and the labels), and scales
to [-1, 1] (`transforms.normalize` with the jitter's `scale`, 8-bit RGB's x / 127.5 - 1 by default;
colorization: the crop's Lab, L/50 - 1 and ab/110). Images of different stored sizes in one batch
are resized one by one, then stacked. Crop and flip take the draws as a tensor and run as a few
whole-batch ops (`crop_flip`, no loop over samples); `jitter_fields` is that second half, which the
resident set (p2p_dist/data/resident.py) runs on its gathered batches.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
import torch

from p2p_dist.data.errors import DataError
from p2p_dist.data.transforms import RGB8, PixelRange, normalize, resize_batch, rgb_to_lab

__all__ = ["Jitter", "JitterDraw", "Pixels", "crop_flip", "jitter_batch", "jitter_fields"]


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
    one flat uint8 tensor (int32 with a 16-bit side; one shared-memory segment, one file-descriptor
    handover across a worker's queue: A, B and the draws as three tensors cost 11.6 ms of CPU per
    batch of 4 at 256 px, one tensor 7.5, bench/README.md), the draws (N x 3: top, left, flip) and
    the keys.

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


def resized(images, jitter: Jitter, nearest: bool) -> torch.Tensor | list[torch.Tensor]:
    """A field's images resized to `load_size`, as N x H x W x C (the layout in which crop and flip copy
    whole rows), whatever the resize's memory format; a list when sizes differ and nothing resizes."""
    size = (jitter.load_size, jitter.load_size) if jitter.load_size else None
    if isinstance(images, torch.Tensor):
        x = _nchw(images)
        return (resize_batch(x, size, nearest) if size else x).permute(0, 2, 3, 1)
    if size:  # stored sizes differ: resize one by one, then the images share a size
        return torch.cat([resize_batch(_nchw(img[None]), size, nearest) for img in images]).permute(0, 2, 3, 1)
    return [img[..., None] if img.ndim == 2 else img for img in images]


def crop_flip(
    images: torch.Tensor, draws: torch.Tensor, crop: int | None, index: torch.Tensor | None = None
) -> torch.Tensor:
    """The crops and flips of a batch as a few whole-batch ops (no loop over samples): images (uint8, int32)
    M x H x W x C (any device) and draws B x 3 (top, left, flip; int64 on that device) -> B x h x w x C,
    contiguous. Sample i is image `index[i]` (default i) cropped to `crop` x `crop` at (top, left) (no
    crop: the whole image) and mirrored left-right where flip is set.

    The crop's rows are copied whole (one index_select) and a mirrored copy of them is made; every
    window of the two is then a row of one strided view (window k starts at pixel k), from which a
    second index_select takes each sample's: whole runs of pixels are copied, where a gather of single
    pixels with index tensors took 5x the CPU time of the per-sample slicing it replaced."""
    m, h_in, w_in, c = images.shape
    h, w = (crop, crop) if crop else (h_in, w_in)
    b, dev = len(draws), images.device
    top, left, flip = draws.unbind(1)
    n = torch.arange(b, device=dev) if index is None else index
    rows = ((n * h_in + top)[:, None] + torch.arange(h, device=dev)).reshape(-1)
    both = torch.empty((2, b, h, w_in, c), dtype=images.dtype, device=dev)
    torch.index_select(images.reshape(m * h_in, w_in * c), 0, rows, out=both[0].view(b * h, w_in * c))
    both[1] = both[0].flip(2)
    windows = both.as_strided((both.numel() // c - (h - 1) * w_in - w + 1, h, w, c), (c, w_in * c, c, 1))
    start = (flip * b + torch.arange(b, device=dev)) * h * w_in + torch.where(flip.bool(), w_in - w - left, left)
    return torch.index_select(windows, 0, start)


def _scaled(x: torch.Tensor, channels_last: bool, rng: PixelRange = RGB8) -> torch.Tensor:
    """N x h x w x C stored pixels -> float32 N x C x h x w in [-1, 1] (`transforms.normalize`: 8-bit
    x / 127.5 - 1), in channels_last memory or contiguous."""
    x = x.permute(0, 3, 1, 2)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return normalize(x, rng, dim=-3, out=torch.empty_like(x, dtype=torch.float32, memory_format=fmt))


def jitter_fields(
    images: dict[str, torch.Tensor],
    draws: torch.Tensor,
    crop: int | None,
    *,
    channels_last: bool,
    index=None,
    scale: tuple[PixelRange, PixelRange] | None = None,
) -> dict:
    """Each field's crops and flips (`crop_flip`) as the step's tensors: "A", "B" float32 N x C x h x w
    in [-1, 1] (channels_last memory or contiguous), "label" int64 N x h x w, colorization's "rgb" and
    its Lab ("A" = L/50 - 1, "B" = ab/110). `images` maps field names to M x H x W x C tensors of stored
    pixels (uint8; int32 for 16-bit); `scale` maps A's and B's to [-1, 1] (None: 8-bit, x / 127.5 - 1)."""
    ranges = dict(zip(("A", "B"), scale or ()))
    out: dict = {}
    for name, x in images.items():
        crops = crop_flip(x, draws, crop, index)
        if name == "label":
            out["label"] = crops[..., 0].long()
        elif name == "rgb":
            L, ab = rgb_to_lab(crops.permute(0, 3, 1, 2))
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            out["A"], out["B"] = L.contiguous(memory_format=fmt), ab.contiguous(memory_format=fmt)
            out["rgb"] = _scaled(crops, channels_last)
        else:
            out[name] = _scaled(crops, channels_last, ranges.get(name, RGB8))
    return out


def _mixed_sizes(images: list[torch.Tensor], draws: torch.Tensor, crop: int | None) -> torch.Tensor:
    """Unresized images of different stored sizes: cropped one by one (not flipped); one tensor when the
    crops agree."""
    crops = [
        crop_flip(img[None], draws[i : i + 1] * draws.new_tensor([1, 1, 0]), crop)[0] for i, img in enumerate(images)
    ]
    if len({tuple(x.shape) for x in crops}) > 1:
        sizes = sorted(f"{x.shape[1]}x{x.shape[0]}" for x in crops)
        raise DataError(
            f"images of mixed sizes in one batch ({', '.join(sizes)}); resize them (size / data.resize) "
            "or use batch size 1"
        )
    return torch.stack(crops)


def jitter_batch(
    batch: Pixels, device: torch.device | str, *, channels_last: bool = False, non_blocking: bool = True
) -> dict:
    """A reader's `Pixels` batch -> the step's tensors on `device` (see the module docstring):
    {"A", "B": float32 N x C x h x w, in channels_last memory when `channels_last`, else contiguous;
    "label": int64 N x h x w when the reader shipped label maps; "rgb": the RGB crop in [-1, 1] for
    colorization (A = L/50 - 1, B = ab/110); "key"}."""
    device = torch.device(device)
    data = batch.data.to(device, non_blocking=non_blocking)
    draws = torch.from_numpy(batch.draws).to(device, non_blocking=non_blocking)
    crop = batch.jitter.crop_size
    with intraop_threads(device):
        images = {name: resized(x, batch.jitter, nearest=name == "label") for name, x in batch.images(data).items()}
        if any(isinstance(x, list) for x in images.values()):
            images = {name: _mixed_sizes(x, draws, crop) for name, x in images.items()}
            draws, crop = draws * draws.new_tensor([0, 0, 1]), None  # cropped; the flips still to do
        out = jitter_fields(images, draws, crop, channels_last=channels_last, scale=batch.jitter.scale)
    out["key"] = batch.key
    return out
