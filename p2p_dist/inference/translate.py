"""The work of `p2p-translate`: decide the settings, read images (folder or shards) into network
inputs, run the generator (whole, resized, padded or tiled: `TranslateSettings.target`, as --resize
and --tile say in --help) and write images. Colorization generators (1 channel in, 2 out) read L from
the image and write RGB through Lab, keeping the input's own L at its original resolution.

A generator trained on 16-bit or multichannel data carries its input and output pixel ranges
(GeneratorSpec.input_range/output_range, from the shards): inputs are read as stored and mapped to
[-1, 1] with the input's range, outputs mapped back to the output's range and written at its bit
depth, PNG up to 4 channels and TIFF beyond (`p2p_dist.imageio.image_suffix`). Without ranges
(every 8-bit RGB or greyscale generator) images are read as RGB or L and written as 8-bit PNG.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import KW_ONLY, dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
import torch.nn.functional as F

from p2p_dist.data.transforms import RGB8, PixelRange
from p2p_dist.errors import UserError
from p2p_dist.inference.forward import translate_batch
from p2p_dist.inference.options import TranslateOptions
from p2p_dist.inference.tiling import Padding, crop, pad_to_multiple, translate_tiled


@dataclass(frozen=True)
class TranslateSettings:
    """How one p2p-translate run feeds images to its generator (channels, size step, network size,
    resizing, tiling, direction, mode), decided from the options and the checkpoint before any image is read."""

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
    input_range: PixelRange | None = None  # None: 8-bit RGB or grey, x / 127.5 - 1
    output_range: PixelRange | None = None

    @property
    def suffix(self) -> str:
        """The written files' type: PNG up to 4 channels (8-bit RGB and grey too), TIFF beyond."""
        from p2p_dist.imageio import image_suffix

        return image_suffix(self.out_channels)

    @property
    def stored_input(self) -> bool:
        """Inputs read exactly as stored (16-bit, or a channel count other than grey or RGB)."""
        rng = self.input_range
        return rng is not None and (rng.bits != 8 or rng.channels not in (1, 3))

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


def make_settings(opts: TranslateOptions, spec, mode: str) -> TranslateSettings:
    from p2p_dist.inference.tiling import check_tiling
    from p2p_dist.models import native_size, size_multiple

    colorization = spec.is_colorization
    if colorization and (spec.in_channels, spec.out_channels) != (1, 2):
        raise UserError(
            f"a colorization generator takes 1 channel and gives 2, this one has "
            f"{spec.in_channels} -> {spec.out_channels}"
        )
    if not colorization and (
        (spec.input_range is None and spec.in_channels not in (1, 3))
        or (spec.output_range is None and spec.out_channels not in (1, 3))
    ):
        raise UserError(
            f"cannot write images for a generator with {spec.in_channels} input and "
            f"{spec.out_channels} output channels and no recorded pixel ranges (supported: 1 or 3 each, "
            "1 -> 2 colorization, or any count for generators trained on shards that record them)"
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
    return TranslateSettings(
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
        input_range=None if colorization else spec.input_range,
        output_range=None if colorization else spec.output_range,
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


def to_network(img: np.ndarray, rng: PixelRange | None) -> torch.Tensor:
    """Stored pixels HxWxC (or HxW; uint8, or uint16 with a range) -> CxHxW in [-1, 1]."""
    from p2p_dist.data.transforms import normalize

    arr = img if img.ndim == 3 else img[:, :, None]
    wide = arr.dtype == np.uint16  # torch's uint16 has few kernels: through int32
    t = torch.from_numpy(np.require(arr.transpose(2, 0, 1), np.int32 if wide else np.uint8, ("C", "W")))
    return normalize(t, rng or RGB8, dim=-3)


def from_network(y: torch.Tensor, rng: PixelRange | None) -> np.ndarray:
    """Generator output CxHxW in [-1, 1] -> stored pixels HxWxC at the range's bit depth (8-bit without one)."""
    from p2p_dist.data.transforms import denormalize

    return denormalize(y, rng or RGB8)


def read_input(path: Path, settings: TranslateSettings) -> np.ndarray:
    """A folder image as the generator takes it: as stored, checked against its input range, or
    (8-bit generators) read as RGB or L whatever the file holds, as always."""
    from p2p_dist.imageio import read_image

    rng = settings.input_range
    if not settings.stored_input:
        grey_in = settings.in_channels == 1 and not settings.colorization
        return read_image(path, "L" if grey_in else "RGB")
    img = read_image(path, "stored")
    if img.shape[2] != rng.channels or img.dtype != rng.dtype:
        raise UserError(
            f"{path} is {8 * img.dtype.itemsize}-bit with {img.shape[2]} channel(s); the generator takes "
            f"{rng.bits}-bit images with {rng.channels}"
        )
    return img


def make_item(
    key: str,
    out_path: Path,
    img: np.ndarray | None,
    settings: TranslateSettings,
    where: str,
    x: torch.Tensor | None = None,
) -> Item:
    """An Item from stored pixels (folder input) or from a ready network input `x` (shards)."""
    from p2p_dist.data.transforms import resize, rgb_to_lab_tensors

    L = None
    if x is None:
        h, w = img.shape[:2]
        th, tw = settings.target(h, w, where)
        net_img = resize(img, (th, tw))
        if settings.colorization:
            L, _ = rgb_to_lab_tensors(img)
            x = L if (th, tw) == (h, w) else rgb_to_lab_tensors(net_img)[0]
        else:
            x = to_network(net_img, settings.input_range)
    else:
        h, w = x.shape[-2:]
        if settings.colorization:
            L = x
    pad = None
    if settings.resize == "pad" and not settings.tile:
        x, pad = pad_to_multiple(x, settings.multiple)
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


@dataclass(eq=False)
class Translator:
    """Applies the generator to Items: batched whole images, or tile by tile."""

    model: Callable  # a torch module or an exported generator
    settings: TranslateSettings
    device: torch.device
    _: KW_ONLY
    seed: int = 0
    batch_size: int = 1
    precision: str = "fp32"

    def forward(self, x: torch.Tensor, keys) -> torch.Tensor:
        return translate_batch(
            self.model, x.to(self.device), mode=self.settings.mode, keys=keys, seed=self.seed, precision=self.precision
        )

    def __call__(self, batch: list[Item]) -> list[torch.Tensor]:
        """Outputs (C'xHxW, float32, on the CPU) at each item's network size, padding removed."""
        p = self.settings
        if p.tile:
            return [
                translate_tiled(
                    self.forward, it.x, it.key, tile=p.tile, overlap=p.overlap, batch_size=self.batch_size
                ).cpu()
                for it in batch
            ]
        y = self.forward(torch.stack([it.x for it in batch]), [it.key for it in batch]).cpu()
        return [crop(yi, it.pad) if it.pad else yi for it, yi in zip(batch, y)]


def finish(item: Item, y: torch.Tensor, settings: TranslateSettings) -> np.ndarray:
    """Generator output (CxHxW at the network size) -> stored pixels at the item's original size
    (uint8, or the output range's depth)."""
    from p2p_dist.data.transforms import lab_tensors_to_rgb, resize

    h, w = item.orig_hw
    if settings.colorization:
        ab = y.float().cpu()
        if tuple(ab.shape[-2:]) != (h, w):
            ab = F.interpolate(ab[None], size=(h, w), mode="bicubic", align_corners=False)[0].clamp_(-1, 1)
        return lab_tensors_to_rgb(item.L, ab)
    rng = settings.output_range
    out = from_network(y, rng)
    if out.shape[:2] != (h, w):
        out = resize(out, (h, w))
        if rng is not None:  # the bicubic's overshoot kept inside the recorded range
            out = np.clip(out, np.ceil(rng.lo), np.floor(rng.hi)).astype(out.dtype)
    return out


def check_output_apart(opts: TranslateOptions) -> None:
    """Refuse an --output folder that holds the inputs: the PNGs would land among them, over any
    input of the same name (--input D --output D overwrote D's PNGs with their translations)."""
    import os

    from p2p_dist.data.shards import expand_shards, is_remote
    from p2p_dist.fsutil import same_file

    if opts.input:
        folders = {opts.input}
    else:
        folders = {os.path.dirname(os.path.abspath(u)) for u in expand_shards(opts.shards) if not is_remote(u)}
    for folder in sorted(folders):
        if same_file(opts.output, folder):
            what = "input images" if opts.input else "shards"
            raise UserError(
                f"--output {opts.output} is the folder of the {what} ({folder}); the translations would be "
                "written among (and over) them: choose another --output folder"
            )


# --- folder input ---------------------------------------------------------------------------------------
def list_inputs(folder: str, suffix: str = ".png") -> list[Path]:
    """The images to translate, checked for an empty folder and clashing output names (`suffix`:
    the written files' type)."""
    from p2p_dist.imageio import IMAGE_EXTENSIONS, list_images

    paths = list_images(folder)
    if not paths:
        raise UserError(f"input folder {folder} holds no images ({' '.join(IMAGE_EXTENSIONS)})")
    names: dict[str, Path] = {}
    for p in paths:
        out = p.stem + suffix
        if out in names:
            raise UserError(f"{names[out].name} and {p.name} would both be written as {out}")
        names[out] = p
    return paths


def check_sizes(paths: list[Path], settings: TranslateSettings, aligned: bool) -> None:
    """With --resize never, refuse an image that does not fit before anything is written (reads
    only the image headers)."""
    from p2p_dist.imageio import image_size

    for p in paths:
        try:
            h, w = image_size(p)
        except UserError:
            continue  # skipped and listed when the translation reaches it
        settings.target(h, w // 2 if aligned else w, str(p))


class _Failed:
    """An image that could not be read or prepared (in a loader worker): skipped, and listed at the end."""

    def __init__(self, message: str) -> None:
        self.message = message


class FolderImages(torch.utils.data.Dataset):
    """Decodes and prepares one folder image per index (run by DataLoader workers with --workers)."""

    def __init__(self, paths: list[Path], settings: TranslateSettings, aligned: bool, out_dir: Path) -> None:
        self.paths, self.settings, self.aligned, self.out_dir = paths, settings, aligned, out_dir

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Item | _Failed:
        from p2p_dist.imageio import split_aligned

        path = self.paths[i]
        try:
            img = read_input(path, self.settings)
            if self.aligned:
                img = split_aligned(img, "A" if self.settings.direction == "AtoB" else "B")
            out = self.out_dir / (path.stem + self.settings.suffix)
            return make_item(path.stem, out, img, self.settings, str(path))
        except UserError as exc:
            return _Failed(str(exc))


def folder_items(
    paths: list[Path], settings: TranslateSettings, opts: TranslateOptions, skipped: list[str]
) -> Iterator[Item]:
    """The folder's images as Items; one that cannot be read is left out and its reason appended to `skipped`."""
    loader = torch.utils.data.DataLoader(
        FolderImages(paths, settings, opts.aligned, Path(opts.output)), batch_size=None, num_workers=opts.workers
    )
    for item in loader:
        if isinstance(item, _Failed):
            skipped.append(item.message)
            continue
        yield item


# --- shard input ----------------------------------------------------------------------------------------
def key_path(out_dir: Path, key: str, suffix: str = ".png") -> Path:
    rel = PurePosixPath(key)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise UserError(f"sample key {key!r} can not be used as a file name")
    return out_dir.joinpath(*rel.parts[:-1], rel.parts[-1] + suffix)


@dataclass
class ShardInput:
    loader: Iterable[dict]
    total: int | None
    resized: bool  # the loader resizes every sample to --size (outputs are written at that size)


def open_shards(opts: TranslateOptions, settings: TranslateSettings) -> ShardInput:
    """The eval loader over --shards, resizing only when needed (or asked). A set of one size that
    the network cannot take is read at --size; in a set of mixed (or unrecorded) sizes each sample
    is read as stored, one at a time, and `shard_items` resizes those that do not fit."""
    from p2p_dist.data.index import read_index
    from p2p_dist.data.loader import make_eval_loader

    index = read_index(opts.shards)
    task = "colorization" if settings.colorization else "translation"
    if index and index.get("task") and index["task"] != task:
        raise UserError(f"{opts.shards} holds {index['task']} samples but the generator does {task}")
    stored = (index or {}).get("image_size")
    size = None
    misfit = bool(stored) and not settings.fits(int(stored[0]), int(stored[1]))
    if (
        not settings.tile
        and settings.resize != "pad"
        and (settings.resize == "always" or (settings.resize == "auto" and misfit))
    ):
        size = settings.size
    uniform = bool(stored) or size is not None
    ranges = (settings.input_range, settings.output_range)
    loader = make_eval_loader(
        opts.shards,
        task=task,
        direction=settings.direction,
        size=size,
        batch_size=opts.batch_size if uniform else 1,  # the Translator batches equal sizes again
        num_workers=opts.workers,
        scale=None if ranges == (None, None) else tuple(r or RGB8 for r in ranges),
    )
    total = int(index["total"]) if index and index.get("total") else None
    return ShardInput(loader, total, size is not None)


def shard_items(source: ShardInput, settings: TranslateSettings, opts: TranslateOptions) -> Iterator[Item]:
    out_dir = Path(opts.output)
    seen: set[str] = set()
    for batch in source.loader:
        A = batch["A"]
        if A.shape[1] != settings.in_channels:
            raise UserError(
                f"shard samples have {A.shape[1]} input channels, the generator takes {settings.in_channels}"
            )
        for j, (key, x) in enumerate(zip(batch["key"], A)):
            if key in seen:  # two shards hold the same key: the second would overwrite the first's image
                raise UserError(
                    f"sample key {key!r} occurs twice in {opts.shards}; keys must be unique "
                    "(repack with p2p-data pack, which refuses duplicates)"
                )
            seen.add(key)
            h, w = x.shape[-2:]
            if settings.tile or settings.resize == "pad" or settings.fits(h, w):
                item = make_item(key, key_path(out_dir, key, settings.suffix), None, settings, opts.shards, x=x)
                item.resized = source.resized
            else:  # a set of mixed sizes: resized for the network as --input images are (or refused: --resize never)
                img = from_network(batch["rgb"][j] if settings.colorization else x, settings.input_range)
                img = img[:, :, 0] if img.shape[2] == 1 else img
                where = f"{opts.shards} sample {key}"
                item = make_item(key, key_path(out_dir, key, settings.suffix), img, settings, where)
            yield item
    if not seen:
        raise UserError(f"{opts.shards} yielded no samples")


def run(
    items: Iterable[Item], translator: Translator, settings: TranslateSettings, progress, task_id
) -> tuple[int, int]:
    """Translate and write every item; returns (written, resized)."""
    from p2p_dist.imageio import write_image

    written = resized = 0
    for batch in batches(items, translator.batch_size if not settings.tile else 1):
        for item, y in zip(batch, translator(batch)):
            write_image(item.out_path, finish(item, y, settings))
            written += 1
            resized += item.resized
        progress.advance(task_id, len(batch))
    return written, resized
