"""`p2p-translate`: apply a trained generator to a folder of images or to shards, writing PNGs.

    p2p-translate --checkpoint runs/facades/final --input photos/ --output out/
    p2p-translate --checkpoint latest_net_G.pth --from-reference --arch unet_256 \\
        --input val/ --aligned --direction BtoA --output out/
    p2p-translate --checkpoint runs/demo/final --shards data/val --output out/

Pixels map to [-1, 1] as x/127.5 - 1 and back. `--mode paper` (default) keeps the network in
train mode as the paper and the reference do at test time (dropout on, BatchNorm with the test
batch's statistics; results then depend on --batch-size and --seed); `--mode eval` uses
model.eval(). Colorization generators (1 channel in, 2 out) read L from the image and write RGB
through Lab, keeping the input's own L at its original resolution.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from p2p_dist.cliargs import positive_int
from p2p_dist.errors import UserError, console_entry

if TYPE_CHECKING:
    from p2p_dist.models import GeneratorSpec

RESIZE_MODES = ("auto", "always", "never")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="p2p-translate",
        description="Apply a pix2pix generator to a folder of images (or to shards) and write PNGs "
                    "with the same names.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  p2p-translate --checkpoint runs/facades/final --input photos/ --output out/\n"
               "  p2p-translate --checkpoint latest_net_G.pth --from-reference --arch unet_256 \\\n"
               "      --input val/ --aligned --direction BtoA --output out/\n"
               "  p2p-translate --checkpoint runs/demo/final --shards data/val --output out/",
    )
    p.add_argument("--checkpoint", required=True,
                   help="our generator: generator.safetensors, its generator.json, the folder holding "
                        "them, or a run folder (its final/); with --from-reference a reference *_net_G.pth")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", metavar="DIR", help="folder of images (not recursive)")
    src.add_argument("--shards", metavar="SOURCE",
                     help="shard set: a folder, glob, brace pattern or pipe: URL (several joined by ::); "
                          "outputs are named KEY.png")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for the PNGs (created if needed)")
    p.add_argument("--aligned", action="store_true",
                   help="--input images are A|B pairs side by side; --direction picks the input half")
    p.add_argument("--direction", choices=("AtoB", "BtoA"),
                   help="which side is the input (default: the checkpoint's recorded direction, else AtoB)")
    p.add_argument("--mode", choices=("paper", "eval"), default="paper",
                   help="paper: dropout on and BatchNorm with batch statistics, as in the paper (default); "
                        "eval: model.eval()")
    p.add_argument("--batch-size", type=int, default=1,
                   help="images per forward pass (default 1, as the reference; in paper mode the batch's "
                        "statistics affect the outputs)")
    p.add_argument("--device", default="auto", help="auto (cuda when available, else cpu), cpu, cuda, cuda:N")
    p.add_argument("--resize", choices=RESIZE_MODES, default="auto",
                   help="auto: resize only images whose size the network can not take (default); "
                        "always: resize every image to --size; never: fail on such images. Resized "
                        "--input images are resized back to their own size when written")
    p.add_argument("--size", type=int,
                   help="network input size for resizing (default: the checkpoint's training size, else "
                        "256 for unet_256/encoder_decoder_256/resnet_9blocks and 128 for *_128)")
    p.add_argument("--seed", type=int, default=0, help="seed of the dropout noise in paper mode (default 0)")
    p.add_argument("--workers", type=int, default=0, help="data loader workers for --shards (default 0)")
    ref = p.add_argument_group("reference checkpoints (--from-reference)")
    ref.add_argument("--from-reference", action="store_true",
                     help="--checkpoint is a reference pix2pix/CycleGAN *_net_G.pth file")
    ref.add_argument("--arch", choices=("unet_256", "unet_128", "encoder_decoder_256", "encoder_decoder_128",
                                        "resnet_9blocks"),
                     help="the generator (required with --from-reference; otherwise checked against the checkpoint)")
    ref.add_argument("--norm", choices=("batch", "instance"), default="batch", help="reference norm (default batch)")
    ref.add_argument("--ngf", type=positive_int, default=64, help="reference filters in the first layer (default 64)")
    ref.add_argument("--in-channels", type=positive_int, default=3, help="reference input channels (default 3)")
    ref.add_argument("--out-channels", type=positive_int, default=3,
                     help="reference output channels (default 3; 1 in and 2 out is colorization)")
    ref.add_argument("--no-dropout", action="store_true",
                     help="the reference file was trained with --no_dropout (CycleGAN's default); for "
                          "resnet_9blocks this changes the file's layout")
    return p


# --- setup ---------------------------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {name!r} is not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    return device


def load_model(args) -> tuple[torch.nn.Module, GeneratorSpec]:
    from p2p_dist.models import GeneratorSpec, load_generator, load_reference_generator

    if args.from_reference:
        if not args.arch:
            raise UserError("--from-reference needs --arch (the reference's --netG, e.g. unet_256)")
        model = load_reference_generator(args.checkpoint, args.arch, args.norm, args.in_channels,
                                         args.out_channels, args.ngf, dropout=not args.no_dropout)
        spec = GeneratorSpec(name=args.arch, in_channels=args.in_channels, out_channels=args.out_channels,
                             ngf=args.ngf, norm=args.norm, dropout=not args.no_dropout)
        return model, spec
    model, spec = load_generator(args.checkpoint)
    if args.arch and args.arch != spec.name:
        raise UserError(f"checkpoint {args.checkpoint} holds a {spec.name} generator, not {args.arch}")
    return model, spec


@dataclass
class Plan:
    """What the command decided before reading any image."""

    colorization: bool
    in_channels: int
    out_channels: int
    direction: str
    multiple: int
    size: int
    resize: str

    def fits(self, h: int, w: int) -> bool:
        return h % self.multiple == 0 and w % self.multiple == 0

    def target(self, h: int, w: int, where: str) -> tuple[int, int]:
        """The network input size for an image of h x w."""
        if self.resize == "always" or (self.resize == "auto" and not self.fits(h, w)):
            return self.size, self.size
        if not self.fits(h, w):
            raise UserError(f"{where} is {w}x{h} but the generator needs sides that are multiples of "
                            f"{self.multiple}: pass --resize auto or --resize always")
        return h, w


def make_plan(args, spec) -> Plan:
    from p2p_dist.models import native_size, size_multiple

    colorization = spec.is_colorization
    if colorization and (spec.in_channels, spec.out_channels) != (1, 2):
        raise UserError(f"a colorization generator takes 1 channel and gives 2, this one has "
                        f"{spec.in_channels} -> {spec.out_channels}")
    if not colorization and (spec.in_channels not in (1, 3) or spec.out_channels not in (1, 3)):
        raise UserError(f"cannot write images for a generator with {spec.in_channels} input and "
                        f"{spec.out_channels} output channels (supported: 1 or 3 each, or 1 -> 2 colorization)")
    multiple = size_multiple(spec.name)
    size = args.size if args.size is not None else spec.image_size or native_size(spec.name)
    if size < 1 or size % multiple:
        raise UserError(f"--size {size} does not fit {spec.name}: it must be a positive multiple of {multiple}")
    return Plan(colorization=colorization, in_channels=spec.in_channels, out_channels=spec.out_channels,
                direction=args.direction or spec.direction or "AtoB", multiple=multiple, size=size,
                resize=args.resize)


# --- folder input ---------------------------------------------------------------------------------------
@dataclass
class Item:
    """One prepared input image: the network input and what is needed to write the result."""

    out_name: str
    x: torch.Tensor  # CxHxW in [-1, 1], at the network size
    orig_hw: tuple[int, int]
    L: torch.Tensor | None = None  # colorization: the input's own L (1xHxW, original size)
    resized: bool = False


def prepare(path: Path, plan: Plan, aligned: bool) -> Item:
    from p2p_dist.data.transforms import resize, rgb_to_lab_tensors, to_tensor
    from p2p_dist.imageio import read_image, split_aligned

    grey_in = plan.in_channels == 1 and not plan.colorization
    img = read_image(path, "L" if grey_in else "RGB")
    if aligned:
        img = split_aligned(img, "A" if plan.direction == "AtoB" else "B")
    h, w = img.shape[:2]
    th, tw = plan.target(h, w, str(path))
    net_img = resize(img, (th, tw))
    out_name = path.stem + ".png"
    if plan.colorization:
        L_orig, _ = rgb_to_lab_tensors(img)
        L_net = L_orig if (th, tw) == (h, w) else rgb_to_lab_tensors(net_img)[0]
        return Item(out_name, L_net, (h, w), L=L_orig, resized=(th, tw) != (h, w))
    return Item(out_name, to_tensor(net_img), (h, w), resized=(th, tw) != (h, w))


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


def translate_folder(model, plan: Plan, args, device, paths: list[Path], progress, task_id) -> tuple[int, int]:
    from p2p_dist.imageio import write_png

    out_dir = Path(args.output)
    written = resized = 0
    for batch in batches((prepare(p, plan, args.aligned) for p in paths), args.batch_size):
        x = torch.stack([it.x for it in batch]).to(device)
        y = model(x)
        for item, yi in zip(batch, y):
            write_png(out_dir / item.out_name, finish(item, yi, plan))
            written += 1
            resized += item.resized
        progress.advance(task_id, len(batch))
    return written, resized


# --- shard input ----------------------------------------------------------------------------------------
def _key_path(out_dir: Path, key: str) -> Path:
    rel = PurePosixPath(key)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise UserError(f"sample key {key!r} can not be used as a file name")
    return out_dir.joinpath(*rel.parts[:-1], rel.parts[-1] + ".png")


@dataclass
class ShardInput:
    loader: Iterable[dict]
    total: int | None
    resized: bool


def open_shards(args, plan: Plan) -> ShardInput:
    """The eval loader over --shards, resizing only when needed (or asked)."""
    from p2p_dist.data.index import read_index
    from p2p_dist.data.stream import make_eval_loader

    index = read_index(args.shards)
    task = "colorization" if plan.colorization else "translation"
    if index and index.get("task") and index["task"] != task:
        raise UserError(f"{args.shards} holds {index['task']} samples but the generator does {task}")
    stored = (index or {}).get("image_size")
    size = None
    if plan.resize == "always" or (plan.resize == "auto" and stored and not plan.fits(int(stored[0]), int(stored[1]))):
        size = plan.size
    loader = make_eval_loader(args.shards, task=task, direction=plan.direction, size=size,
                              batch_size=args.batch_size, num_workers=args.workers)
    total = int(index["total"]) if index and index.get("total") else None
    return ShardInput(loader, total, size is not None)


def translate_shards(model, plan: Plan, args, device, source: ShardInput, progress, task_id) -> tuple[int, int]:
    from p2p_dist.data.transforms import lab_tensors_to_rgb, to_uint8
    from p2p_dist.imageio import write_png

    out_dir = Path(args.output)
    written = 0
    seen: set[str] = set()
    for batch in source.loader:
        A = batch["A"]
        if A.shape[1] != plan.in_channels:
            raise UserError(f"shard samples have {A.shape[1]} input channels, the generator takes {plan.in_channels}")
        h, w = A.shape[-2:]
        if not plan.fits(h, w):
            raise UserError(f"shard images are {w}x{h} but the generator needs multiples of {plan.multiple}: "
                            "pass --resize always (with --size)")
        y = model(A.to(device)).float().cpu()
        images = lab_tensors_to_rgb(A, y) if plan.colorization else to_uint8(y)
        for key, img in zip(batch["key"], images):
            if key in seen:  # two shards hold the same key: the second would overwrite the first's image
                raise UserError(f"sample key {key!r} occurs twice in {args.shards}; keys must be unique "
                                "(repack with p2p-data pack, which refuses duplicates)")
            seen.add(key)
            write_png(_key_path(out_dir, key), img)
            written += 1
        progress.advance(task_id, len(batch["key"]))
    if written == 0:
        raise UserError(f"{args.shards} yielded no samples")
    return written, written if source.resized else 0


# --- main -----------------------------------------------------------------------------------------------
@console_entry
def main(argv: list[str] | None = None) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from p2p_dist.console import make_console, make_progress
    from p2p_dist.fsutil import check_writable_dir
    from p2p_dist.models import set_inference_mode

    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if args.workers < 0:
        raise UserError("--workers must be 0 or more")
    console = make_console(stderr=True)
    device = resolve_device(args.device)
    model, spec = load_model(args)
    plan = make_plan(args, spec)
    check_writable_dir(args.output)
    model = set_inference_mode(model.to(device), args.mode)
    if args.shards:
        source = open_shards(args, plan)
        total, run = source.total, translate_shards
    else:
        source = list_inputs(args.input)
        if plan.resize == "never":
            check_sizes(source, plan, args.aligned)
        total, run = len(source), translate_folder
    torch.manual_seed(args.seed)
    columns = (TextColumn("[bold]translate"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    with torch.inference_mode(), make_progress(*columns, console=console) as progress:
        task_id = progress.add_task("translate", total=total)
        written, resized = run(model, plan, args, device, source, progress, task_id)
    what = "colorized" if plan.colorization else "translated"
    note = f", {resized} resized to {plan.size}x{plan.size} for the network" if resized else ""
    console.print(f"{what} {written} image(s) with {spec.name} ({args.mode} mode, {device}) into {args.output}{note}",
                  soft_wrap=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
