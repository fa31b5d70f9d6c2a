"""Packers: folders of images -> shards + index.json, one function per `p2p-data pack` kind
(aligned, paired, colorization, cityscapes; see p2p_dist/data/cli.py), sharing `PackOptions`
(shard size, workers, resize, JPEG quality, stored format, pixels) and the writer in
p2p_dist/data/writer.py.

Pixels (--pixels, translation packs): `rgb` stores 8-bit RGB as every pack before 16-bit data did
(16-bit scaled, alpha dropped); `stored` keeps every value as the file holds it (8 or 16-bit, 1 to N
channels; TIFF page stacks and per-band files as channels) in PNG up to 4 channels and TIFF beyond
(`imageio.encode_image`); `auto` (the default) keeps 16-bit images and those of more than 4 channels
as stored and stores 8-bit images of up to 4 channels as 8-bit RGB. Each side keeps one format over
the set (the writer refuses a change), recorded with its value statistics in index.json's "pixels".
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from p2p_dist.data import cityscapes
from p2p_dist.data.encode import encode_image, encode_png
from p2p_dist.data.errors import DataError
from p2p_dist.data.transforms import resize as resize_to
from p2p_dist.data.transforms import resize_shorter
from p2p_dist.data.writer import Packed, PackResult, Skipped, pack, prepare_output
from p2p_dist.imageio import (
    LOSSLESS_EXTENSIONS,
    PNG_MAX_CHANNELS,
    decode_image,
    image_suffix,
    is_greyscale,
    list_images,
    open_image,
    sample_key,
    to_array,
)
from p2p_dist.imageio import encode_image as encode_stored

SPLITS = ("train", "val", "test")
PIXELS = ("auto", "stored", "rgb")
Progress = Callable[[str, int], Callable[[int], None] | None]


@dataclass(frozen=True)
class PackOptions:
    """Packing options. Only those that change a sample's bytes appear in repr(), which is part of
    the fingerprint that decides whether a resumed pack may keep a finished shard."""

    shard_size: int = field(default=1000, repr=False)
    workers: int = field(default=1, repr=False)
    resize: int | None = None
    keep_aspect: bool = False
    quality: int = 95
    format: str = "auto"  # auto (as the source), png or jpg; for 8-bit RGB sides
    pixels: str = "auto"  # see the module docstring
    overwrite: bool = field(default=False, repr=False)
    resume: bool = field(default=False, repr=False)
    name: str | None = field(default=None, repr=False)

    def check(self) -> None:
        if self.resize is not None and self.resize < 1:
            raise DataError(f"--resize must be positive, got {self.resize}")
        if not 1 <= self.quality <= 100:
            raise DataError(f"--quality must lie in 1..100, got {self.quality}")
        if self.format not in ("auto", "png", "jpg"):
            raise DataError(f"--format must be auto, png or jpg, got {self.format!r}")
        if self.pixels not in PIXELS:
            raise DataError(f"--pixels must be one of {', '.join(PIXELS)}, got {self.pixels!r}")
        if self.workers < 1:
            raise DataError(f"--workers must be at least 1, got {self.workers}")
        if self.shard_size < 1:
            raise DataError(f"--shard-size must be at least 1, got {self.shard_size}")

    def fmt_for(self, path: str) -> str:
        if self.format != "auto":
            return self.format
        return "png" if Path(path).suffix.lower() in LOSSLESS_EXTENSIONS else "jpg"

    def sized(self, img: np.ndarray, nearest: bool = False) -> np.ndarray:
        if self.resize is None:
            return img
        if self.keep_aspect:
            return resize_shorter(img, self.resize, nearest=nearest)
        return resize_to(img, (self.resize, self.resize), nearest=nearest)

    def read(self, path: str | list[str]) -> np.ndarray:
        """A translation side's pixels under --pixels: uint8 RGB (HxWx3), or as stored (HxWxC, uint8 or
        uint16). A list of paths is one image per band, stacked in order as channels."""
        if isinstance(path, list):
            bands = [decode_image(p, "stored") for p in path]
            if len({b.shape[:2] for b in bands}) > 1 or len({b.dtype for b in bands}) > 1:
                kinds = ", ".join(f"{Path(p).name} {b.shape[1]}x{b.shape[0]} {b.dtype}" for p, b in zip(path, bands))
                raise ValueError(f"bands differ in size or depth ({kinds})")
            return np.concatenate(bands, axis=2)
        if self.pixels == "rgb" or Path(path).suffix.lower() not in LOSSLESS_EXTENSIONS:
            return decode_image(path)  # JPEG, WebP: 8-bit photos
        img = decode_image(path, "stored")
        if self.pixels == "stored" or img.dtype != np.uint8 or img.shape[2] > PNG_MAX_CHANNELS:
            return img
        grey = img.shape[2] < 3  # L, LA: the grey channel three times, as Pillow's convert("RGB")
        return np.ascontiguousarray(np.repeat(img[:, :, :1], 3, axis=2) if grey else img[:, :, :3])

    def encode(self, img: np.ndarray, path: str | list[str]) -> tuple[str, bytes]:
        """(extension, bytes) of a side: 8-bit RGB as --format says, anything else losslessly."""
        if img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and self.pixels != "stored":
            return encode_image(img, self.fmt_for(path if isinstance(path, str) else path[0]), self.quality)
        return image_suffix(img.shape[2])[1:], encode_stored(img)

    def meta(self) -> dict:
        return {"resize": self.resize, "keep_aspect": self.keep_aspect if self.resize else None}


# --- finding files -------------------------------------------------------------------------


def _dir(path: str | os.PathLike, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise DataError(f"{what} {p} is not a folder")
    return p


# --- per-sample encoders (top-level: they run in worker processes) ------------------------------


def aligned_sample(job: tuple[str, str, PackOptions]) -> Packed | Skipped:
    path, key, opts = job
    img = opts.read(path)
    h, w = img.shape[:2]
    if w < 2:
        return Skipped("too narrow", path)
    half = w // 2
    a, b = opts.sized(img[:, :half]), opts.sized(img[:, half : 2 * half])
    ea, da = opts.encode(a, path)
    eb, db = opts.encode(b, path)
    return Packed(key, {f"a.{ea}": da, f"b.{eb}": db}, a.shape[:2]).with_pixels(a=a, b=b)


def paired_sample(job: tuple[str | list[str], str | list[str], str, PackOptions]) -> Packed | Skipped:
    path_a, path_b, key, opts = job
    a, b = opts.read(path_a), opts.read(path_b)
    if opts.resize is None and a.shape[:2] != b.shape[:2]:
        return Skipped("size mismatch", f"{key}: {a.shape[1]}x{a.shape[0]} vs {b.shape[1]}x{b.shape[0]}")
    a = opts.sized(a)
    b = resize_to(opts.sized(b), a.shape[:2])  # keep_aspect: B follows A's size
    ea, da = opts.encode(a, path_a)
    eb, db = opts.encode(b, path_b)
    return Packed(key, {f"a.{ea}": da, f"b.{eb}": db}, a.shape[:2]).with_pixels(a=a, b=b)


def colorization_sample(job: tuple[str, str, PackOptions]) -> Packed | Skipped:
    path, key, opts = job
    with open_image(path) as img:
        if is_greyscale(img):
            return Skipped("greyscale", path)
        rgb = to_array(img, "RGB")
    rgb = opts.sized(rgb)
    ext, data = encode_image(rgb, opts.fmt_for(path), opts.quality)
    return Packed(key, {f"img.{ext}": data}, rgb.shape[:2])


def cityscapes_sample(job: tuple[str, str, str, str, PackOptions]) -> Packed | Skipped:
    photo_path, colour_path, ids_path, key, opts = job
    if not (os.path.isfile(colour_path) and os.path.isfile(ids_path)):
        return Skipped("missing gtFine", key)
    photo = decode_image(photo_path)
    colour = decode_image(colour_path)
    ids = decode_image(ids_path, "label")
    if not (photo.shape[:2] == colour.shape[:2] == ids.shape[:2]):
        return Skipped("size mismatch", key)
    photo, colour, ids = opts.sized(photo), opts.sized(colour, nearest=True), opts.sized(ids, nearest=True)
    ea, da = encode_image(photo, opts.fmt_for(photo_path), opts.quality)
    fields = {
        f"a.{ea}": da,
        "b.png": encode_png(colour),
        "label.png": encode_png(cityscapes.label_ids_to_train_ids(ids)),
        "labelids.png": encode_png(ids),
    }
    return Packed(key, fields, photo.shape[:2])


# --- packers -------------------------------------------------------------------------------


def _callback(progress: Progress | None, split: str, n: int):
    return progress(split, n) if progress else None


def _check_unique_keys(jobs: list) -> None:
    """Keys name the samples everywhere downstream (translated files, reports): two sources whose
    names clean up to the same key (`a.1.png`, `a 1.png` -> `a_1`) are refused before packing."""
    first: dict[str, str] = {}
    for job in jobs:  # every packer's job is (source path, ..., key, options)
        key, source = job[-2], job[0]
        if key in first:
            raise DataError(
                f"{first[key]} and {source} both become sample key {key!r} (dots, spaces and "
                "other characters turn into '_'): rename one of them"
            )
        first[key] = source


def _pack(out, name, jobs, encode, opts: PackOptions, progress, split, task, source, has_labels=False, **extra):
    """Pack `jobs` into OUT; the index records the task, dataset, source, split, `extra` and the options."""
    _check_unique_keys(jobs)
    meta = {"task": task, "dataset": name, "source": source, "split": split, "has_labels": has_labels}
    return pack(
        out,
        name,
        jobs,
        encode,
        {**meta, **extra, **opts.meta()},
        shard_size=opts.shard_size,
        workers=opts.workers,
        overwrite=opts.overwrite,
        resume=opts.resume,
        progress=_callback(progress, split, len(jobs)),
    )


def _refuse_existing(outs: list[Path], name: str, opts: PackOptions) -> None:
    """Check every output folder before writing any (a multi-split pack fails as a whole)."""
    if opts.overwrite:
        return
    for out in outs:
        prepare_output(out, name, overwrite=False, resume=opts.resume)


def _not_packed(src: Path, folders: list[Path]) -> list[str]:
    """What a source holds that the pack will not read, for the summary: symbolic links to folders
    (never followed: a link can loop or lead out of the tree) and, beside split folders, loose images."""
    notes = []
    for folder in folders:
        for root, dirs, _ in os.walk(folder):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            links = sorted(d for d in dirs if os.path.islink(os.path.join(root, d)))
            notes += [f"not followed: {Path(root) / d} is a symbolic link to a folder" for d in links]
    if folders and folders != [src]:
        loose = [p.name for p in list_images(src) if p.parent == src]
        if loose:
            split_names = ", ".join(f.name for f in folders)
            notes.append(f"not packed: {len(loose)} image(s) in {src} beside {split_names}: {', '.join(loose[:4])}")
    return notes


def pack_aligned(
    src, out, *, splits: list[str] | None = None, opts: PackOptions = PackOptions(), progress: Progress | None = None
) -> dict[str, PackResult]:
    """SRC/{split}/*.jpg (A left, B right) -> OUT/{split}/NAME-*.tar; no split folders: SRC -> OUT."""
    opts.check()
    src, out = _dir(src, "source folder"), Path(out)
    name = opts.name or src.name
    present = [s for s in SPLITS if (src / s).is_dir()]
    if splits:
        missing = [s for s in splits if not (src / s).is_dir()]
        if missing:
            raise DataError(f"{src} has no split folder {missing[0]} (found: {', '.join(present) or 'none'})")
        chosen = [(s, src / s, out / s) for s in splits]
    elif present:
        chosen = [(s, src / s, out / s) for s in present]
    else:
        chosen = [("all", src, out)]
    _refuse_existing([o for _, _, o in chosen], name, opts)
    notes = _not_packed(src, [f for _, f, _ in chosen])
    source = str(src.resolve())
    results = {}
    for split, folder, dest in chosen:
        files = list_images(folder, recursive=True)
        if not files:
            raise DataError(f"no images found in {folder}")
        jobs = [(str(p), sample_key(p.relative_to(folder)), opts) for p in files]
        results[split] = _pack(
            dest, name, jobs, aligned_sample, opts, progress, split, "translation", source, layout="aligned A|B"
        )
    results[chosen[0][0]].notes = notes
    return results


def _paths(p: Path | list[Path]) -> str | list[str]:
    return [str(x) for x in p] if isinstance(p, list) else str(p)


@dataclass
class PairedResult:
    result: PackResult
    a_only: list[str]
    b_only: list[str]


def match_by_stem(
    a_dir: Path, b_dir: Path, bands: bool = False
) -> tuple[list[tuple[Path | list[Path], Path | list[Path], str]], list[str], list[str]]:
    """Pairs of files with the same relative path minus suffix; plus the unmatched on each side.
    With `bands`, a side whose images lie in subfolders has one sample per such folder (its relative
    path is the stem), the folder's images being the bands in natural name order (B2 before B10)."""

    def stems(folder: Path) -> dict[str, Path | list[Path]]:
        files = list_images(folder, recursive=True)
        if bands and any(p.parent != folder for p in files):
            loose = [p.name for p in files if p.parent == folder]
            if loose:
                raise DataError(f"{folder} holds band folders and loose images ({', '.join(loose[:3])})")
            groups: dict[str, list[Path]] = {}
            for p in files:
                groups.setdefault(p.parent.relative_to(folder).as_posix(), []).append(p)
            return {k: sorted(v, key=_natural) for k, v in groups.items()}
        out: dict[str, Path | list[Path]] = {}
        for p in files:
            stem = p.relative_to(folder).with_suffix("").as_posix()
            if stem in out:
                raise DataError(f"{folder} holds two images with the stem {stem!r} ({out[stem].name}, {p.name})")
            out[stem] = p
        return out

    a, b = stems(a_dir), stems(b_dir)
    pairs = [(a[s], b[s], sample_key(s + ".x")) for s in sorted(a.keys() & b.keys())]
    return pairs, sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())


def _natural(path: Path) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def pack_paired(
    a_dir,
    b_dir,
    out,
    *,
    split: str = "train",
    bands: bool = False,
    opts: PackOptions = PackOptions(),
    progress: Progress | None = None,
) -> PairedResult:
    """A_DIR/x.* with B_DIR/x.* -> OUT; with `bands`, a folder of per-band images is one side of a
    sample (see `match_by_stem`)."""
    opts.check()
    a_dir, b_dir = _dir(a_dir, "A folder"), _dir(b_dir, "B folder")
    pairs, a_only, b_only = match_by_stem(a_dir, b_dir, bands)
    if not pairs:
        raise DataError(
            f"no file stems match between {a_dir} and {b_dir} ({len(a_only)} images only in A, {len(b_only)} only in B)"
        )
    name = opts.name or Path(out).name
    jobs = [(_paths(pa), _paths(pb), key, opts) for pa, pb, key in pairs]
    source = f"{a_dir.resolve()} + {b_dir.resolve()}"
    unmatched = {"a_only": len(a_only), "b_only": len(b_only)}
    result = _pack(out, name, jobs, paired_sample, opts, progress, split, "translation", source, unmatched=unmatched)
    result.notes = _not_packed(a_dir, [a_dir]) + _not_packed(b_dir, [b_dir])
    return PairedResult(result, a_only, b_only)


def pack_colorization(
    src, out, *, split: str = "train", opts: PackOptions = PackOptions(), progress: Progress | None = None
) -> PackResult:
    opts.check()
    src = _dir(src, "source folder")
    files = list_images(src, recursive=True)
    if not files:
        raise DataError(f"no images found under {src}")
    name = opts.name or src.name
    jobs = [(str(p), sample_key(p.relative_to(src)), opts) for p in files]
    result = _pack(out, name, jobs, colorization_sample, opts, progress, split, "colorization", str(src.resolve()))
    result.notes = _not_packed(src, [src])
    return result


def cityscapes_jobs(root: Path, split: str, opts: PackOptions) -> list[tuple]:
    photos_dir = root / "leftImg8bit" / split
    if not photos_dir.is_dir():
        raise DataError(f"{photos_dir} does not exist (expected ROOT/leftImg8bit/{split}/CITY/*_leftImg8bit.png)")
    jobs = []
    for p in list_images(photos_dir, recursive=True):
        if not p.name.endswith("_leftImg8bit" + p.suffix):
            continue
        stem = p.name[: -len("_leftImg8bit" + p.suffix)]
        city = p.parent.name
        gt = root / "gtFine" / split / city
        jobs.append(
            (
                str(p),
                str(gt / f"{stem}_gtFine_color.png"),
                str(gt / f"{stem}_gtFine_labelIds.png"),
                sample_key(stem),
                opts,
            )
        )
    if not jobs:
        raise DataError(f"no *_leftImg8bit images under {photos_dir}")
    return jobs


def pack_cityscapes(
    root, out, *, splits: list[str] | None = None, opts: PackOptions = PackOptions(), progress: Progress | None = None
) -> dict[str, PackResult]:
    """ROOT/leftImg8bit/{split} + ROOT/gtFine/{split} -> OUT/{split}/cityscapes-*.tar.

    A = photo, B = gtFine colour map, label.png = the 19 trainIds (255 ignore), labelids.png = raw.
    """
    opts.check()
    root, out = _dir(root, "Cityscapes root"), Path(out)
    splits = splits or [s for s in ("train", "val") if (root / "leftImg8bit" / s).is_dir()]
    if not splits:
        raise DataError(f"{root} has no leftImg8bit/train or leftImg8bit/val folder")
    bad = [s for s in splits if s not in SPLITS]
    if bad:
        raise DataError(f"unknown split {bad[0]!r}; Cityscapes splits are train, val, test")
    name = opts.name or "cityscapes"
    all_jobs = {s: cityscapes_jobs(root, s, opts) for s in splits}
    _refuse_existing([out / s for s in splits], name, opts)
    source = str(root.resolve())
    extra = {
        "classes": list(cityscapes.CLASS_NAMES),
        "palette": cityscapes.PALETTE,
        "ignore_index": cityscapes.IGNORE,
        "sides": {"a": "photo", "b": "gtFine colour map"},
    }
    results = {}
    for split, jobs in all_jobs.items():
        results[split] = _pack(
            out / split, name, jobs, cityscapes_sample, opts, progress, split, "translation", source, True, **extra
        )
        photos = root / "leftImg8bit" / split
        results[split].notes = _not_packed(photos, [photos])
    return results
