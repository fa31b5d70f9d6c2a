"""The paper's jitter on the training device: uint8 batches from the stream -> float tensors in [-1, 1].

The training stream (p2p_dist/data/stream.py) ships translation batches as decoded, untransformed
uint8 pixels, N x H x W x 3, with each sample's draw (crop top, crop left, flip) as an N x 3 int64
tensor: the draws come from the stream's position-seeded RNG, so exact resume is untouched by where
the pixels are transformed. `prepare_batch` moves the bytes (a quarter of float32's), then resizes,
crops, flips and normalises them on the device, batched:

    resize: PIL's bicubic (a = -0.5; the support widens when shrinking), which is what the reference
            implementation's transforms use; torch's `antialias=True` bicubic is that filter, and on
            the CPU it has a uint8 kernel for 3- and 4-channel images. Results are rounded to uint8
            as PIL's are. Label maps use nearest neighbours (PIL's pixel-centre rule, `nearest-exact`).
    crop:   the same window for A and B (and labels) of one sample.
    flip:   horizontal, the same for A and B.
    scale:  x / 127.5 - 1, exactly as `transforms.to_tensor`.

Where the training device is the CPU, the stream resizes each pair to `load_size` itself, with the
same uint8 kernel, A and B as a batch of 2 (`resize_pair_hwc`, the same pixels as the whole batch's
call), so that its decoded-image cache keeps resized pairs and later passes skip the resize;
`prepare_batch` then finds the images at `load_size` and only crops, flips and scales them.

Batches that were transformed on the host (evaluation, colorization, whose Lab split needs the
jittered RGB first) already hold float tensors; `prepare_batch` only moves those.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from p2p_dist.data.transforms import Jitter, JitterDraw

__all__ = [
    "prepare_batch",
    "jitter_batch",
    "resize_bicubic",
    "resize_nearest",
    "draws_tensor",
    "to_device_float",
    "host_jitter",
    "resize_pair_hwc",
    "intraop_threads",
]


def draws_tensor(draws: list[JitterDraw]) -> torch.Tensor:
    """N draws -> int64 N x 3 (top, left, flip)."""
    return torch.tensor([[d.top, d.left, int(d.flip)] for d in draws], dtype=torch.int64).reshape(-1, 3)


def resize_bicubic(x: torch.Tensor, size: int, uint8_kernel: bool | None = None) -> torch.Tensor:
    """uint8 N x C x H x W -> uint8 N x C x size x size with PIL's bicubic (see the module docstring).

    `uint8_kernel` (default: where it exists, the CPU with 3 or 4 channels) picks torch's uint8 kernel
    over the float one (CUDA has only the latter); they differ by the uint8 kernel rounding between
    its two passes, as PIL does (a few levels at most, tests/unit/test_data_device.py)."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    if uint8_kernel is None:
        uint8_kernel = x.device.type == "cpu" and x.shape[1] in (3, 4)
    if uint8_kernel:
        # the uint8 kernel: its fast path wants channels_last, which HWC pixels already are
        x = x.contiguous(memory_format=torch.channels_last)
        return F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    y = F.interpolate(x.float(), size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return y.round_().clamp_(0, 255).to(torch.uint8)


def resize_nearest(x: torch.Tensor, size: int) -> torch.Tensor:
    """N x C x H x W (any integer dtype) -> N x C x size x size, PIL's nearest neighbours: lossless for labels."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="nearest-exact")


def _resized(x: torch.Tensor, jitter: Jitter, nearest: bool) -> torch.Tensor:
    if not jitter.load_size:
        return x
    return resize_nearest(x, jitter.load_size) if nearest else resize_bicubic(x, jitter.load_size)


def _crops_hwc(x: torch.Tensor, draws: torch.Tensor, jitter: Jitter) -> list[torch.Tensor]:
    """Each sample's crop (and flip) as a C-innermost H x W x C tensor: the layout in which both are
    cheap (whole rows of pixels are copied), whatever `x`'s memory format."""
    c = jitter.crop_size
    out = []
    for i, (top, left, flip) in enumerate(draws.tolist()):
        xi = x[i].permute(1, 2, 0)
        if c:
            xi = xi[top : top + c, left : left + c]
        out.append(xi.flip(1) if flip else xi)
    return out


def jitter_batch(x: torch.Tensor, draws: torch.Tensor, jitter: Jitter, nearest: bool = False) -> torch.Tensor:
    """Resize to `jitter.load_size`, crop `jitter.crop_size` at each sample's (top, left), flip where drawn.

    `x`: N x C x H x W uint8 (or integer label maps with `nearest`); `draws`: N x 3 as `draws_tensor`.
    The result is N x C x h x w in channels_last memory."""
    x = _resized(x, jitter, nearest)
    return torch.stack(_crops_hwc(x, draws, jitter)).permute(0, 3, 1, 2)


def to_device_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 N x C x H x W -> float32 in [-1, 1] (x / 127.5 - 1, as `transforms.to_tensor`), NCHW-contiguous."""
    return x.to(torch.float32, memory_format=torch.contiguous_format).div_(127.5).sub_(1.0)


def _jittered_float(x: torch.Tensor, draws: torch.Tensor, jitter: Jitter, channels_last: bool) -> torch.Tensor:
    """`jitter_batch` and `to_device_float` in one pass over the pixels: each uint8 crop is divided
    straight into its slot of a float buffer (channels_last: N x H x W x C, else N x C x H x W), then
    1 is subtracted in place; the same float32 arithmetic as `to_device_float`, so the same values."""
    crops = _crops_hwc(_resized(x, jitter, False), draws, jitter)
    h, w, c = crops[0].shape
    if channels_last:
        out = torch.empty((len(crops), h, w, c), dtype=torch.float32, device=x.device)
        for i, crop in enumerate(crops):
            torch.div(crop, 127.5, out=out[i])
        return out.sub_(1.0).permute(0, 3, 1, 2)
    out = torch.empty((len(crops), c, h, w), dtype=torch.float32, device=x.device)
    for i, crop in enumerate(crops):
        torch.div(crop.permute(2, 0, 1), 127.5, out=out[i])
    return out.sub_(1.0)


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


def prepare_batch(
    batch: dict, device: torch.device | str, *, channels_last: bool = False, non_blocking: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """A training (or evaluation) batch -> (real_A, real_B): float32 N x C x H x W in [-1, 1] on `device`,
    in channels_last memory when `channels_last`, else contiguous.

    Pixel batches from the training stream ({"A", "B": uint8 N x H x W x 3, "draws", "jitter"}) are
    jittered here; batches that hold float tensors already are only moved."""
    device = torch.device(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if "draws" not in batch:
        return tuple(batch[k].to(device, non_blocking=non_blocking).contiguous(memory_format=fmt) for k in "AB")
    jitter: Jitter = batch["jitter"]
    draws = batch["draws"]
    out = []
    with intraop_threads(device):
        for name in ("A", "B"):
            x = batch[name].to(device, non_blocking=non_blocking).permute(0, 3, 1, 2)  # NHWC -> NCHW view
            out.append(_jittered_float(x, draws, jitter, channels_last))
    return out[0], out[1]


def resize_pair_hwc(a: np.ndarray, b: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Two uint8 H x W x 3 images of one size -> size x size x 3 each, on the CPU, with `resize_bicubic`'s
    uint8 kernel: the pixels `prepare_batch` gives on the CPU. The two are resized as one batch of 2: a
    single image (N = 1) is taken for NCHW and runs a 2-3x slower path. The caller sets the intra-op
    threads (the training stream holds one per batch, `intraop_threads`)."""
    if a.shape[:2] == (size, size):
        return a, b
    x = torch.from_numpy(np.stack([a, b])).permute(0, 3, 1, 2)  # N x C x H x W view, channels_last
    y = resize_bicubic(x, size).permute(0, 2, 3, 1).numpy()  # channels_last out: HWC arrays, no copy
    return y[0], y[1]


def host_jitter(pixels: list[np.ndarray], draws: list[JitterDraw], jitter: Jitter) -> list[np.ndarray]:
    """The same transform, one sample at a time on the host, as uint8 HxWxC arrays: the stream's way
    with batches whose images differ in stored size (they cannot be stacked before resizing)."""
    out = []
    for img, d in zip(pixels, draws):
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None]
        y = jitter_batch(x, draws_tensor([d]), jitter)[0]
        out.append(np.ascontiguousarray(y.permute(1, 2, 0).numpy()))
    return out
