"""Image <-> tensor conversions, the Lab colour space of the colorization task, and the paper's jitter.

Conventions: images are numpy uint8 arrays HxWxC (RGB) or HxW (greyscale, label maps); tensors are
float32 CHW (or BCHW) in [-1, 1]. Colorization uses L/50 - 1 (1 channel) and ab/110 (2 channels),
with the colour conversion done by scikit-image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

# --- tensors ------------------------------------------------------------------------------------


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 HxWxC (or HxW) -> float32 CxHxW in [-1, 1] (x / 127.5 - 1)."""
    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        raise TypeError(f"to_tensor expects uint8 pixels, got {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    t = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
    return t.float().div_(127.5).sub_(1.0)


def to_uint8(tensor: torch.Tensor) -> np.ndarray:
    """float CxHxW (or BxCxHxW) in [-1, 1] -> uint8 HxWxC (or BxHxWxC), rounded and clipped."""
    t = tensor.detach().float().cpu()
    if t.ndim not in (3, 4):
        raise ValueError(f"to_uint8 expects CHW or BCHW, got shape {tuple(t.shape)}")
    arr = ((t + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8).numpy()
    return np.ascontiguousarray(np.moveaxis(arr, -3, -1))


# --- Lab ----------------------------------------------------------------------------------------


def rgb_to_lab_tensors(rgb: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 RGB HxWx3 -> (L: 1xHxW = L/50 - 1, ab: 2xHxW = ab/110), float32."""
    from skimage.color import rgb2lab

    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"rgb_to_lab_tensors expects HxWx3 RGB, got shape {arr.shape}")
    lab = rgb2lab(arr.astype(np.float64) / 255.0).astype(np.float32)
    L = torch.from_numpy(np.ascontiguousarray(lab[:, :, 0]))[None] / 50.0 - 1.0
    ab = torch.from_numpy(np.ascontiguousarray(lab[:, :, 1:].transpose(2, 0, 1))) / 110.0
    return L, ab


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


# --- resizing -----------------------------------------------------------------------------------


def resize(img: np.ndarray, size_hw: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """Resize to (H, W): bicubic for photos (as the reference), nearest for label maps."""
    h, w = size_hw
    if img.shape[0] == h and img.shape[1] == w:
        return img
    resample = Image.NEAREST if nearest else Image.BICUBIC
    return np.asarray(Image.fromarray(img).resize((w, h), resample=resample))


def resize_shorter(img: np.ndarray, shorter: int, nearest: bool = False) -> np.ndarray:
    """Resize so that the shorter side is `shorter` pixels, keeping the aspect ratio."""
    h, w = img.shape[:2]
    scale = shorter / min(h, w)
    return resize(img, (max(1, round(h * scale)), max(1, round(w * scale))), nearest=nearest)


# --- the paper's jitter -------------------------------------------------------------------------


@dataclass(frozen=True)
class JitterDraw:
    """The random part of one sample's jitter; the same draw is applied to A, B and the labels."""

    top: int = 0
    left: int = 0
    flip: bool = False


@dataclass(frozen=True)
class Jitter:
    """Resize to `load_size` (square), random crop `crop_size`, random horizontal flip.

    `load_size=None` keeps the stored size; `crop_size=None` means no crop. Built from the data
    config by `from_config`:
      resize and crop -> resize to load_size, random crop crop_size (the paper: 286 -> 256);
      resize only     -> resize straight to crop_size;
      crop only       -> random crop crop_size from the stored image;
      neither         -> images are used at their stored size (they must all be the same size).
    """

    load_size: int | None = None
    crop_size: int | None = None
    flip: bool = False

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

    def output_size(self, size_hw: tuple[int, int]) -> tuple[int, int]:
        if self.crop_size:
            return (self.crop_size, self.crop_size)
        return self.loaded_size(size_hw)

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

    def apply(self, img: np.ndarray, d: JitterDraw, nearest: bool = False) -> np.ndarray:
        if self.load_size:
            img = resize(img, (self.load_size, self.load_size), nearest=nearest)
        if self.crop_size:
            img = img[d.top : d.top + self.crop_size, d.left : d.left + self.crop_size]
        if d.flip:
            img = img[:, ::-1]
        return np.ascontiguousarray(img)
