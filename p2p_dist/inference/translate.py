"""The work of `p2p-translate`: decide the plan, read images (folder or shards) into network
inputs, run the generator (whole, padded or tiled) and write PNGs.

Pixels map to [-1, 1] as x/127.5 - 1 and back. Colorization generators (1 channel in, 2 out) read
L from the image and write RGB through Lab, keeping the input's own L at its original resolution.
How an image reaches the network (`Plan.how`):

* whole: as it is, when its sides are multiples of the network's size step (--resize auto/never);
* resized: to --size x --size and back (--resize always, or auto for sizes the network cannot take);
* padded: reflected up to the next multiple and cropped back (--resize pad);
* tiled: overlapping --tile x --tile tiles blended back (`p2p_dist/inference/tiling.py`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
import torch.nn.functional as F

from p2p_dist.errors import UserError
from p2p_dist.inference.forward import translate_batch
from p2p_dist.inference.options import TranslateOptions
from p2p_dist.inference.tiling import Padding, crop, pad_to_multiple, translate_tiled

RESIZE_MODES = ("auto", "always", "never", "pad")


@dataclass(frozen=True)
class Plan:
    """What the command decided before reading any image."""

    colorization: bool
    in_channels: int
    out_channels: int
    direction: str
    multiple: int
    size: int
    resize: str
    mode: str
    tile: int | None = None
    overlap: int = 0

    def fits(self, h: int, w: int) -> bool:
        return h % self.multiple == 0 and w % self.multiple == 0

    def target(self, h: int, w: int, where: str) -> tuple[int, int]:
        """The network input size for an image of h x w (before any padding)."""
        if self.tile or self.resize == "pad":
            return h, w
        if self.resize == "always" or (self.resize == "auto" and not self.fits(h, w)):
            return self.size, self.size
        if not self.fits(h, w):
            raise UserError(
                f"{where} is {w}x{h} but the generator needs sides that are multiples of "
                f"{self.multiple}: pass --resize auto, always or pad, or --tile"
            )
        return h, w


def _tile_size(text: str, size: int) -> int:
    if text == "auto":
        return size
    try:
        return int(text)
    except ValueError:
        raise UserError(f"--tile {text!r}: give a number of pixels or auto") from None


def make_plan(opts: TranslateOptions, spec, mode: str) -> Plan:
    from p2p_dist.inference.tiling import check_tiling
    from p2p_dist.models import native_size, size_multiple

    colorization = spec.is_colorization
    if colorization and (spec.in_channels, spec.out_channels) != (1, 2):
        raise UserError(
            f"a colorization generator takes 1 channel and gives 2, this one has "
            f"{spec.in_channels} -> {spec.out_channels}"
        )
    if not colorization and (spec.in_channels not in (1, 3) or spec.out_channels not in (1, 3)):
        raise UserError(
            f"cannot write images for a generator with {spec.in_channels} input and "
            f"{spec.out_channels} output channels (supported: 1 or 3 each, or 1 -> 2 colorization)"
        )
    multiple = size_multiple(spec.name)
    size = opts.size if opts.size is not None else spec.image_size or native_size(spec.name)
    if size < 1 or size % multiple:
        raise UserError(f"--size {size} does not fit {spec.name}: it must be a positive multiple of {multiple}")
    tile, overlap = None, 0
    if opts.tile is not None:
        if opts.resize != "auto":
            raise UserError(f"--tile and --resize {opts.resize} exclude each other (tiles keep the image's size)")
        tile = _tile_size(opts.tile, size)
        overlap = tile // 4 if opts.overlap is None else opts.overlap
        problem = check_tiling(tile, overlap, multiple)
        if problem:
            raise UserError(problem)
    elif opts.overlap is not None:
        raise UserError("--overlap needs --tile")
    return Plan(
        colorization=colorization,
        in_channels=spec.in_channels,
        out_channels=spec.out_channels,
        direction=opts.direction or spec.direction or "AtoB",
        multiple=multiple,
        size=size,
        resize=opts.resize,
        mode=mode,
        tile=tile,
        overlap=overlap,
    )


# --- network inputs -------------------------------------------------------------------------------------
@dataclass
class Item:
    """One prepared input: the network input and what is needed to write the result."""

    key: str  # names the input for the paper-mode seeds
    out_path: Path
    x: torch.Tensor  # CxHxW in the network's value range, at the network size (padded if pad is set)
    orig_hw: tuple[int, int]
    L: torch.Tensor | None = None  # colorization: the input's own L (1xHxW, original size)
    resized: bool = False
    pad: Padding | None = None


def make_item(
    key: str, out_path: Path, img: np.ndarray | None, plan: Plan, where: str, x: torch.Tensor | None = None
) -> Item:
    """An Item from a uint8 image (folder input) or from a ready network input `x` (shards)."""
    from p2p_dist.data.transforms import resize, rgb_to_lab_tensors, to_tensor

    L = None
    if x is None:
        h, w = img.shape[:2]
        th, tw = plan.target(h, w, where)
        net_img = resize(img, (th, tw))
        if plan.colorization:
            L, _ = rgb_to_lab_tensors(img)
            x = L if (th, tw) == (h, w) else rgb_to_lab_tensors(net_img)[0]
        else:
            x = to_tensor(net_img)
    else:
        h, w = x.shape[-2:]
        if plan.colorization:
            L = x
    pad = None
    if plan.resize == "pad" and not plan.tile:
        x, pad = pad_to_multiple(x, plan.multiple)
    return Item(key, out_path, x, (h, w), L=L, resized=tuple(x.shape[-2:]) != (h, w) and pad is None, pad=pad)


def batches(items: Iterable[Item], batch_size: int) -> Iterator[list[Item]]:
    """Consecutive items of the same network size, at most batch_size at a time."""
    pending: list[Item] = []
    for item in items:
        if pending and (len(pending) == batch_size or pending[0].x.shape != item.x.shape):
            yield pending
            pending = []
        pending.append(item)
    if pending:
        yield pending


class Translator:
    """Applies the generator to Items: batched whole images, or tile by tile."""

    def __init__(
        self, model, plan: Plan, device: torch.device, *, seed: int = 0, batch_size: int = 1, precision: str = "fp32"
    ) -> None:
        self.model, self.plan, self.device = model, plan, device
        self.seed, self.batch_size, self.precision = seed, batch_size, precision

    def forward(self, x: torch.Tensor, keys) -> torch.Tensor:
        return translate_batch(
            self.model, x.to(self.device), mode=self.plan.mode, keys=keys, seed=self.seed, precision=self.precision
        )

    def __call__(self, batch: list[Item]) -> list[torch.Tensor]:
        """Outputs (C'xHxW, float32, on the CPU) at each item's network size, padding removed."""
        p = self.plan
        if p.tile:
            return [
                translate_tiled(
                    self.forward, it.x, it.key, tile=p.tile, overlap=p.overlap, batch_size=self.batch_size
                ).cpu()
                for it in batch
            ]
        y = self.forward(torch.stack([it.x for it in batch]), [it.key for it in batch]).cpu()
        return [crop(yi, it.pad) if it.pad else yi for it, yi in zip(batch, y)]


def finish(item: Item, y: torch.Tensor, plan: Plan) -> np.ndarray:
    """Generator output (CxHxW at the network size) -> uint8 image at the item's original size."""
    from p2p_dist.data.transforms import lab_tensors_to_rgb, resize, to_uint8

    h, w = item.orig_hw
    if plan.colorization:
        ab = y.float().cpu()
        if tuple(ab.shape[-2:]) != (h, w):
            ab = F.interpolate(ab[None], size=(h, w), mode="bicubic", align_corners=False)[0].clamp_(-1, 1)
        return lab_tensors_to_rgb(item.L, ab)
    out = to_uint8(y)
    if out.shape[:2] != (h, w):
        out = resize(out[:, :, 0] if out.shape[2] == 1 else out, (h, w))
    return out


# --- folder input ---------------------------------------------------------------------------------------
def list_inputs(folder: str) -> list[Path]:
    """The images to translate, checked for an empty folder and clashing output names."""
    from p2p_dist.imageio import IMAGE_EXTENSIONS, list_images

    paths = list_images(folder)
    if not paths:
        raise UserError(f"input folder {folder} holds no images ({' '.join(IMAGE_EXTENSIONS)})")
    names: dict[str, Path] = {}
    for p in paths:
        out = p.stem + ".png"
        if out in names:
            raise UserError(f"{names[out].name} and {p.name} would both be written as {out}")
        names[out] = p
    return paths


def check_sizes(paths: list[Path], plan: Plan, aligned: bool) -> None:
    """With --resize never, refuse an image that does not fit before anything is written (reads
    only the image headers)."""
    from PIL import Image, UnidentifiedImageError

    for p in paths:
        try:
            with Image.open(p) as im:
                w, h = im.size
        except (UnidentifiedImageError, OSError) as exc:
            raise UserError(f"cannot read image {p}: {exc}") from None
        plan.target(h, w // 2 if aligned else w, str(p))


class _Failed:
    """A UserError raised while decoding in a loader worker, re-raised in the main process as one line."""

    def __init__(self, message: str) -> None:
        self.message = message


class FolderImages(torch.utils.data.Dataset):
    """Decodes and prepares one folder image per index (run by DataLoader workers with --workers)."""

    def __init__(self, paths: list[Path], plan: Plan, aligned: bool, out_dir: Path) -> None:
        self.paths, self.plan, self.aligned, self.out_dir = paths, plan, aligned, out_dir

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Item | _Failed:
        from p2p_dist.imageio import read_image, split_aligned

        path = self.paths[i]
        try:
            grey_in = self.plan.in_channels == 1 and not self.plan.colorization
            img = read_image(path, "L" if grey_in else "RGB")
            if self.aligned:
                img = split_aligned(img, "A" if self.plan.direction == "AtoB" else "B")
            return make_item(path.stem, self.out_dir / (path.stem + ".png"), img, self.plan, str(path))
        except UserError as exc:
            return _Failed(str(exc))


def folder_items(paths: list[Path], plan: Plan, opts: TranslateOptions) -> Iterator[Item]:
    loader = torch.utils.data.DataLoader(
        FolderImages(paths, plan, opts.aligned, Path(opts.output)), batch_size=None, num_workers=opts.workers
    )
    for item in loader:
        if isinstance(item, _Failed):
            raise UserError(item.message)
        yield item


# --- shard input ----------------------------------------------------------------------------------------
def key_path(out_dir: Path, key: str) -> Path:
    rel = PurePosixPath(key)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise UserError(f"sample key {key!r} can not be used as a file name")
    return out_dir.joinpath(*rel.parts[:-1], rel.parts[-1] + ".png")


@dataclass
class ShardInput:
    loader: Iterable[dict]
    total: int | None
    resized: bool  # the loader resizes to --size (outputs are written at that size)


def open_shards(opts: TranslateOptions, plan: Plan) -> ShardInput:
    """The eval loader over --shards, resizing only when needed (or asked)."""
    from p2p_dist.data.index import read_index
    from p2p_dist.data.stream import make_eval_loader

    index = read_index(opts.shards)
    task = "colorization" if plan.colorization else "translation"
    if index and index.get("task") and index["task"] != task:
        raise UserError(f"{opts.shards} holds {index['task']} samples but the generator does {task}")
    stored = (index or {}).get("image_size")
    size = None
    misfit = bool(stored) and not plan.fits(int(stored[0]), int(stored[1]))
    if not plan.tile and plan.resize != "pad" and (plan.resize == "always" or (plan.resize == "auto" and misfit)):
        size = plan.size
    loader = make_eval_loader(
        opts.shards,
        task=task,
        direction=plan.direction,
        size=size,
        batch_size=opts.batch_size,
        num_workers=opts.workers,
    )
    total = int(index["total"]) if index and index.get("total") else None
    return ShardInput(loader, total, size is not None)


def shard_items(source: ShardInput, plan: Plan, opts: TranslateOptions) -> Iterator[Item]:
    out_dir = Path(opts.output)
    seen: set[str] = set()
    for batch in source.loader:
        A = batch["A"]
        if A.shape[1] != plan.in_channels:
            raise UserError(f"shard samples have {A.shape[1]} input channels, the generator takes {plan.in_channels}")
        for key, x in zip(batch["key"], A):
            if key in seen:  # two shards hold the same key: the second would overwrite the first's image
                raise UserError(
                    f"sample key {key!r} occurs twice in {opts.shards}; keys must be unique "
                    "(repack with p2p-data pack, which refuses duplicates)"
                )
            seen.add(key)
            h, w = x.shape[-2:]
            if not (plan.tile or plan.resize == "pad" or plan.fits(h, w)):
                raise UserError(
                    f"shard images are {w}x{h} but the generator needs multiples of {plan.multiple}: "
                    "pass --resize always (with --size), --resize pad or --tile"
                )
            item = make_item(key, key_path(out_dir, key), None, plan, opts.shards, x=x)
            item.resized = source.resized
            yield item
    if not seen:
        raise UserError(f"{opts.shards} yielded no samples")


def run(items: Iterable[Item], translator: Translator, plan: Plan, progress, task_id) -> tuple[int, int]:
    """Translate and write every item; returns (written, resized)."""
    from p2p_dist.imageio import write_png

    written = resized = 0
    for batch in batches(items, translator.batch_size if not plan.tile else 1):
        for item, y in zip(batch, translator(batch)):
            write_png(item.out_path, finish(item, y, plan))
            written += 1
            resized += item.resized
        progress.advance(task_id, len(batch))
    return written, resized
