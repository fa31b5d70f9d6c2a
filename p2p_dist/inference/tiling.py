"""Images of any size (README, "Tiling"): reflect padding, overlapping tiles blended by a window
that falls smoothly (sin^2) across the overlap, so that neighbouring ramps sum to exactly 1.

`translate_tiled` tiles, translates and blends (the padding is cropped away); `pad_to_multiple`
(for `--resize pad`) reflects an image up to the next multiple of the network's size; `crop` undoes
either padding. In paper mode tile (r, c) of the image with key K is forwarded as input `K#r,c`, so
its dropout noise depends only on the image's key, the tile's place and --seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


def reflect_indices(n: int, before: int, after: int) -> torch.Tensor:
    """Indices into a length-n axis that extend it by `before` and `after` samples, reflecting at
    the ends (without repeating the edge sample) as often as needed; n = 1 repeats its sample."""
    idx = torch.arange(-before, n + after)
    if n == 1:
        return torch.zeros_like(idx)
    period = 2 * (n - 1)
    idx = idx.remainder(period)
    return torch.where(idx >= n, period - idx, idx)


def reflect_pad(x: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """Reflect-pad the last two dims of a CxHxW or BxCxHxW tensor by any amount."""
    h, w = x.shape[-2:]
    x = x.index_select(-2, reflect_indices(h, top, bottom).to(x.device))
    return x.index_select(-1, reflect_indices(w, left, right).to(x.device))


@dataclass(frozen=True)
class Padding:
    top: int = 0
    left: int = 0
    height: int = 0  # the original size
    width: int = 0


def crop(y: torch.Tensor, pad: Padding) -> torch.Tensor:
    return y[..., pad.top : pad.top + pad.height, pad.left : pad.left + pad.width]


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, Padding]:
    """Reflect-pad a CxHxW tensor to the next multiple of `multiple` in each side (split evenly)."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    pad = Padding(ph // 2, pw // 2, h, w)
    return reflect_pad(x, ph // 2, ph - ph // 2, pw // 2, pw - pw // 2), pad


def axis_tiles(n: int, tile: int, overlap: int) -> tuple[int, list[int]]:
    """(padded length, tile starts) for an axis of n pixels."""
    stride = tile - overlap
    count = 1 if n <= tile else math.ceil((n - tile) / stride) + 1
    return stride * (count - 1) + tile, [i * stride for i in range(count)]


def window_1d(tile: int, overlap: int) -> torch.Tensor:
    """1 in the middle, sin^2 ramps over the first and last `overlap` pixels (never exactly 0)."""
    w = torch.ones(tile, dtype=torch.float64)
    if overlap:
        ramp = torch.sin(math.pi / 2 * (torch.arange(overlap, dtype=torch.float64) + 0.5) / overlap) ** 2
        w[:overlap] = ramp
        w[tile - overlap :] = ramp.flip(0)
    return w.float()


def check_tiling(tile: int, overlap: int, multiple: int) -> str | None:
    """None when (tile, overlap) can be used with a network needing sides in multiples of `multiple`."""
    if tile < 1 or tile % multiple:
        return f"--tile {tile} must be a positive multiple of {multiple} (the generator's size step)"
    if overlap < 0 or overlap * 2 > tile:
        return f"--overlap {overlap} must be between 0 and half the tile ({tile // 2})"
    return None


def translate_tiled(
    run: Callable[[torch.Tensor, Sequence[str]], torch.Tensor],
    x: torch.Tensor,
    key: str,
    *,
    tile: int,
    overlap: int,
    batch_size: int,
) -> torch.Tensor:
    """Translate one CxHxW image tile by tile; `run(batch, keys)` is the generator on a batch of
    tiles (see `translate_batch`). Returns C'xHxW."""
    h, w = x.shape[-2:]
    ph, rows = axis_tiles(h, tile, overlap)
    pw, cols = axis_tiles(w, tile, overlap)
    top, left = (ph - h) // 2, (pw - w) // 2
    padded = reflect_pad(x, top, ph - h - top, left, pw - w - left)
    win1 = window_1d(tile, overlap).to(x.device)
    window = win1[:, None] * win1[None, :]
    places = [(r, c) for r in range(len(rows)) for c in range(len(cols))]
    acc = norm = None
    for start in range(0, len(places), batch_size):
        chunk = places[start : start + batch_size]
        tiles = torch.stack([padded[:, rows[r] : rows[r] + tile, cols[c] : cols[c] + tile] for r, c in chunk])
        out = run(tiles, [f"{key}#{r},{c}" for r, c in chunk]).float()
        if acc is None:
            acc = torch.zeros(out.shape[1], ph, pw, device=out.device)
            norm = torch.zeros(1, ph, pw, device=out.device)
        for (r, c), y in zip(chunk, out):
            acc[:, rows[r] : rows[r] + tile, cols[c] : cols[c] + tile] += y * window
            norm[:, rows[r] : rows[r] + tile, cols[c] : cols[c] + tile] += window
    return crop(acc / norm, Padding(top, left, h, w))
