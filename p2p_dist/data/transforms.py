"""Image <-> tensor conversions, the normalisation of stored pixels to [-1, 1] and back, the Lab
colour space of the colorization task, and the one resize.

Conventions: images are numpy arrays HxWxC or HxW (greyscale, label maps), uint8 (8-bit RGB, label
maps) or uint16 (16-bit data); tensors are float32 CHW (or BCHW) in [-1, 1]. A side's `PixelRange`
says how its stored values map to [-1, 1] (`normalize`, `denormalize`; 8-bit RGB: x / 127.5 - 1).
Colorization uses L/50 - 1 (1 channel) and ab/110 (2 channels). Every resize in the package (the
jitter, evaluation, translation, packing, the demo) is `resize_batch`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from p2p_dist.errors import UserError

# --- stored pixels <-> [-1, 1] ---------------------------------------------------------------------

BIT_DEPTHS = (8, 16)


@dataclass(frozen=True)
class PixelRange:
    """How one side's stored pixels map to the networks' [-1, 1]: per channel, `lo` -> -1 and `hi` -> 1
    (linear; values outside are clipped). `bits` is the stored depth (8 or 16); the range is the bit
    depth's own (`full`: 0 .. 2^bits - 1) or one measured over the training set
    (data.normalize=percentile; p2p_dist/data/index.py `pixel_ranges`)."""

    bits: int
    lo: tuple[float, ...]
    hi: tuple[float, ...]

    def __post_init__(self) -> None:
        top = 2**self.bits - 1 if self.bits in BIT_DEPTHS else None
        if top is None or not self.lo or len(self.lo) != len(self.hi):
            raise UserError(f"invalid pixel range: {self.bits} bits, lo {list(self.lo)}, hi {list(self.hi)}")
        if any(not 0 <= lo < hi <= top for lo, hi in zip(self.lo, self.hi)):
            raise UserError(f"invalid pixel range: each channel needs 0 <= lo < hi <= {top}, got {self.to_dict()}")

    @classmethod
    def full(cls, bits: int, channels: int) -> PixelRange:
        return cls(bits, (0.0,) * channels, (float(2**bits - 1),) * channels)

    @property
    def channels(self) -> int:
        return len(self.lo)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8 if self.bits == 8 else np.uint16)

    def to_dict(self) -> dict:
        return {"bits": self.bits, "lo": list(self.lo), "hi": list(self.hi)}

    @classmethod
    def from_dict(cls, d) -> PixelRange:
        try:
            return cls(int(d["bits"]), tuple(float(v) for v in d["lo"]), tuple(float(v) for v in d["hi"]))
        except (KeyError, TypeError, ValueError):
            raise UserError(f"invalid pixel range {d!r}: expected {{bits, lo, hi}}") from None


RGB8 = PixelRange.full(8, 3)  # what every side was before 16-bit and multichannel data


@functools.lru_cache(maxsize=64)
def _per_channel(values: tuple[float, ...], device: torch.device, ndim: int, dim: int) -> torch.Tensor:
    """`values` as a float32 tensor that broadcasts along channel axis `dim` of an `ndim`-d tensor
    (made once per range and device: no host-to-device copy per batch)."""
    shape = [1] * ndim
    shape[dim] = len(values)
    return torch.tensor(values, dtype=torch.float32, device=device).view(shape)


def _affine(x: torch.Tensor, rng: PixelRange, dim: int) -> tuple[torch.Tensor | None, torch.Tensor | float]:
    """(lo, (hi - lo) / 2) of `rng` for `x`, channels along `dim`: (None, one number) when every
    channel has lo = 0 and one width (8-bit: x / 127.5 - 1, any channel count, as before multichannel
    data), else per-channel tensors."""
    half = {(h - lo) / 2 for lo, h in zip(rng.lo, rng.hi)}
    if len(half) == 1 and not any(rng.lo):
        return None, half.pop()
    if x.shape[dim] != rng.channels:
        raise ValueError(f"the tensor has {x.shape[dim]} channels, the pixel range {rng.channels}")
    widths = tuple((h - v) / 2 for v, h in zip(rng.lo, rng.hi))
    return _per_channel(rng.lo, x.device, x.ndim, dim), _per_channel(widths, x.device, x.ndim, dim)


def normalize(
    x: torch.Tensor, rng: PixelRange = RGB8, *, dim: int = -1, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Stored pixels (uint8, or uint16 values in a wider integer tensor) with channels along `dim`
    -> float32 in [-1, 1]: (x - lo) / ((hi - lo) / 2) - 1 per channel, clipped (a range narrower than
    the bit depth's; an 8-bit side carried as int32 beside a 16-bit one, whose bicubic resize may
    overshoot 255)."""
    lo, half = _affine(x, rng, dim)
    y = torch.div(x, half, out=out) if lo is None else torch.sub(x.float(), lo, out=out).div_(half)
    return y.sub_(1.0).clamp_(-1.0, 1.0)


def denormalize(tensor: torch.Tensor, rng: PixelRange = RGB8) -> np.ndarray:
    """float CxHxW (or BxCxHxW) in [-1, 1] -> stored pixels HxWxC (or BxHxWxC) at the range's depth
    (uint8 or uint16): (y + 1) * (hi - lo) / 2 + lo per channel, rounded and clipped to the bit depth."""
    t = tensor.detach().float().cpu()
    if t.ndim not in (3, 4):
        raise ValueError(f"denormalize expects CHW or BCHW, got shape {tuple(t.shape)}")
    top = 2**rng.bits - 1
    lo, half = _affine(t, rng, -3)
    y = (t + 1.0) * half if lo is None else (t + 1.0) * half + lo
    arr = y.round_().clamp_(0, top).to(torch.uint8 if rng.bits == 8 else torch.int32).numpy().astype(rng.dtype)
    return np.ascontiguousarray(np.moveaxis(arr, -3, -1))


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 HxWxC (or HxW) -> float32 CxHxW in [-1, 1] (x / 127.5 - 1)."""
    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        raise TypeError(f"to_tensor expects uint8 pixels, got {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return normalize(torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))), dim=-3)


# --- Lab ---------------------------------------------------------------------------------------

# sRGB (D65) -> XYZ and the D65 white point, as scikit-image's rgb2lab (the inverse below uses it)
_XYZ_FROM_RGB = ((0.412453, 0.357580, 0.180423), (0.212671, 0.715160, 0.072169), (0.019334, 0.119193, 0.950227))
_D65_WHITE = (0.95047, 1.0, 1.08883)


def rgb_to_lab(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 RGB N x 3 x H x W (any device) -> (L/50 - 1: N x 1 x H x W, ab/110: N x 2 x H x W), float32.

    scikit-image's rgb2lab (sRGB gamma, the sRGB matrix, D65, CIE's f), computed in float64 where the
    device has it, then rounded to float32 as the arrays it gave were."""
    dtype = torch.float32 if rgb.device.type == "mps" else torch.float64
    c = rgb.to(dtype) / 255.0
    c = torch.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    m = torch.tensor(_XYZ_FROM_RGB, dtype=dtype, device=rgb.device)
    white = torch.tensor(_D65_WHITE, dtype=dtype, device=rgb.device)
    xyz = torch.einsum("ij,njhw->nihw", m, c) / white.view(1, 3, 1, 1)
    f = torch.where(xyz > 0.008856, xyz.pow(1.0 / 3.0), 7.787 * xyz + 16.0 / 116.0)
    fx, fy, fz = f[:, 0:1], f[:, 1:2], f[:, 2:3]
    L = (116.0 * fy - 16.0).float()
    ab = torch.cat([500.0 * (fx - fy), 200.0 * (fy - fz)], dim=1).float()
    return L / 50.0 - 1.0, ab / 110.0


def rgb_to_lab_tensors(rgb: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 RGB HxWx3 -> (L: 1xHxW = L/50 - 1, ab: 2xHxW = ab/110), float32 (`rgb_to_lab` of one image)."""
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"rgb_to_lab_tensors expects HxWx3 RGB, got shape {arr.shape}")
    L, ab = rgb_to_lab(torch.from_numpy(np.require(arr, requirements=("C", "W"))).permute(2, 0, 1)[None])
    return L[0], ab[0]


def lab_tensors_to_rgb(L: torch.Tensor, ab: torch.Tensor) -> np.ndarray:
    """(L: 1xHxW, ab: 2xHxW) or batched (Bx1xHxW, Bx2xHxW) -> uint8 RGB HxWx3 (or BxHxWx3)."""
    from skimage.color import lab2rgb

    L_ = L.detach().float().cpu()
    ab_ = ab.detach().float().cpu()
    if L_.ndim != ab_.ndim or L_.ndim not in (3, 4) or L_.shape[-3] != 1 or ab_.shape[-3] != 2:
        raise ValueError(
            f"expected L 1xHxW and ab 2xHxW (optionally batched), got {tuple(L_.shape)} and {tuple(ab_.shape)}"
        )
    lab = torch.cat([(L_ + 1.0) * 50.0, ab_ * 110.0], dim=-3).numpy().astype(np.float64)
    lab = np.moveaxis(lab, -3, -1)
    if lab.ndim == 3:
        return _lab_to_uint8(lab2rgb, lab)
    return np.stack([_lab_to_uint8(lab2rgb, x) for x in lab])


def _lab_to_uint8(lab2rgb, lab: np.ndarray) -> np.ndarray:
    import warnings

    with warnings.catch_warnings():  # out-of-gamut values are clipped, which is what we want
        warnings.simplefilter("ignore")
        rgb = lab2rgb(lab)
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)


# --- resizing: one kernel for everything ----------------------------------------------------------


def resize_batch(x: torch.Tensor, size_hw: tuple[int, int], nearest: bool = False) -> torch.Tensor:
    """uint8 N x C x H x W (any device) -> N x C x h x w: PIL's bicubic for photos, PIL's nearest
    neighbours for label maps (lossless). Other integer tensors (16-bit pixels) go through the float
    kernel, rounded and clipped to 0..65535, and keep their dtype.

    Bicubic is torch's `antialias=True` filter (a = -0.5, the support widening when shrinking): PIL's,
    which the reference implementation's transforms use. On the CPU torch's uint8 kernel runs, which
    rounds and clips between its two passes as PIL does (within 2 levels of Pillow,
    tests/unit/test_data_jitter.py); it takes 3 or 4 channels, so other counts go through it one
    channel at a time, as grey RGB. Elsewhere (CUDA) the float kernel runs and is rounded to uint8
    once: a few levels from Pillow where the cubic overshoots."""
    h, w = size_hw
    if tuple(x.shape[-2:]) == (h, w):
        return x
    wide = x.dtype != torch.uint8
    if nearest:
        y = F.interpolate(x.float() if wide else x, size=(h, w), mode="nearest-exact")
        return y.to(x.dtype) if wide else y
    if wide or x.device.type != "cpu":
        y = F.interpolate(x.float(), size=(h, w), mode="bicubic", antialias=True, align_corners=False)
        return y.round_().clamp_(0, 65535 if wide else 255).to(x.dtype)
    n, c = x.shape[:2]
    grey = c not in (3, 4)
    if grey:
        x = x.reshape(n * c, 1, *x.shape[-2:]).expand(-1, 3, -1, -1)
    # the uint8 kernel's fast path wants channels_last, which HWC pixels already are
    x = x.contiguous(memory_format=torch.channels_last)
    y = F.interpolate(x, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
    return y[:, :1].reshape(n, c, h, w) if grey else y


def resize(img: np.ndarray, size_hw: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """uint8 or uint16 HxWxC (or HxW) -> (H, W) with `resize_batch`: bicubic for photos, nearest for
    label maps."""
    h, w = size_hw
    if img.shape[0] == h and img.shape[1] == w:
        return img
    arr = np.asarray(img)
    sixteen = arr.dtype == np.uint16  # torch's uint16 lacks most kernels: through int32
    arr = arr.astype(np.int32) if sixteen else arr
    x = torch.from_numpy(np.require(arr if arr.ndim == 3 else arr[:, :, None], requirements=("C", "W")))
    y = resize_batch(x.permute(2, 0, 1)[None], (h, w), nearest=nearest)[0].permute(1, 2, 0)
    y = y.numpy() if arr.ndim == 3 else y[:, :, 0].numpy()
    return np.ascontiguousarray(y.astype(np.uint16) if sixteen else y)


def resize_shorter(img: np.ndarray, shorter: int, nearest: bool = False) -> np.ndarray:
    """Resize so that the shorter side is `shorter` pixels, keeping the aspect ratio."""
    h, w = img.shape[:2]
    scale = shorter / min(h, w)
    return resize(img, (max(1, round(h * scale)), max(1, round(w * scale))), nearest=nearest)
