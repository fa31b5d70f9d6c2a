"""`p2p-data`: build shards from image folders (`pack`), build the built-in demo sets (`demo`),
inspect shards (`inspect`); each subcommand's --help says more.

Exit codes: 0 done, 2 bad input (one line says what), 74 a shard or file could not be written.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from p2p_dist.cliargs import non_negative_int, options_from_args, positive_int
from p2p_dist.errors import console_entry

_DEMO_SAMPLES = {  # (train, val)
    "scenes": (400, 50),
    "photos-edges": (200, 40),
    "photos-color": (200, 40),
    "scenes-depth": (400, 50),
    "scenes-bands": (400, 50),
}


def _pack_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("shard options")
    g.add_argument("--shard-size", type=positive_int, default=1000, help="source samples per shard (default 1000)")
    g.add_argument(
        "--workers", type=positive_int, default=1, help="encoding processes (default 1); shards are the same for any N"
    )
    g.add_argument(
        "--resize",
        type=positive_int,
        default=None,
        metavar="S",
        help="store images resized to SxS (label maps with nearest neighbours); default: as they are",
    )
    g.add_argument("--keep-aspect", action="store_true", help="with --resize: scale the shorter side to S instead")
    g.add_argument("--quality", type=positive_int, default=95, help="JPEG quality of stored photos (default 95)")
    g.add_argument(
        "--format",
        choices=("auto", "png", "jpg"),
        default="auto",
        help="stored format of 8-bit RGB images (default auto: as the source file); other pixels are "
        "always stored losslessly",
    )
    g.add_argument(
        "--pixels",
        choices=("auto", "stored", "rgb"),
        default="auto",
        help="translation packs: 'stored' keeps every value as the file holds it (8/16-bit, 1-N channels; "
        "PNG up to 4 channels, TIFF beyond); 'rgb' stores 8-bit RGB (16-bit scaled, alpha dropped); "
        "default auto: 16-bit images and those of more than 4 channels as stored, the rest as 8-bit RGB",
    )
    g.add_argument(
        "--name",
        default=None,
        help="shard name prefix NAME-000000.tar (default: the source folder's name; "
        "paired: OUT's name; cityscapes: cityscapes)",
    )
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the set already in the output folder: its index.json, the shards it lists and "
        "NAME-*.tar (other sets' shards stay; the removed files are listed)",
    )
    g.add_argument("--resume", action="store_true", help="finish an interrupted pack: keep its complete shards")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="p2p-data",
        description="Build, generate and inspect pix2pix tar shards (WebDataset layout + index.json).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Shard sources (inspect, training, evaluation): a folder, a glob, a brace pattern "
        "x-{000000..000009}.tar or a pipe: command; several joined by '::'.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{pack,demo,inspect}")

    pk = sub.add_parser(
        "pack", help="pack a folder of images into shards", description="Pack a folder of images into shards."
    )
    ps = pk.add_subparsers(dest="kind", required=True, metavar="{aligned,paired,colorization,cityscapes}")

    p = ps.add_parser(
        "aligned",
        help="A|B side-by-side images (facades, cityscapes, maps, edges2*, night2day)",
        description="Pack the reference's aligned datasets: each image holds A (left half) and B "
        "(right half). SRC/train, SRC/val, SRC/test are packed into OUT/train, OUT/val, "
        "OUT/test; a SRC without split folders is packed into OUT.",
    )
    p.add_argument("src", metavar="SRC")
    p.add_argument("out", metavar="OUT")
    p.add_argument(
        "--split",
        action="append",
        choices=("train", "val", "test"),
        help="pack only this split folder (repeatable; default: all that exist)",
    )
    _pack_options(p)

    p = ps.add_parser(
        "paired",
        help="two folders of images matched by file stem",
        description="Pack A_DIR/x.* with B_DIR/x.* (matched by relative path without suffix); "
        "files without a partner are reported and recorded in index.json.",
    )
    p.add_argument("a_dir", metavar="A_DIR")
    p.add_argument("b_dir", metavar="B_DIR")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--split", default="train", help="split name recorded in index.json (default train)")
    p.add_argument(
        "--bands",
        action="store_true",
        help="per-band files (Landsat, Sentinel-2, BigEarthNet, one file per MRI modality): on a side whose "
        "images lie in subfolders, each folder is one sample, its images the channels in natural name order "
        "(B2 before B10); the folder's path is the stem matched with the other side",
    )
    _pack_options(p)

    p = ps.add_parser(
        "colorization",
        help="a folder tree of colour photos (ImageNet layout included)",
        description="Pack every photo under SRC (recursively) as a colorization sample; "
        "greyscale originals are skipped and counted.",
    )
    p.add_argument("src", metavar="SRC")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--split", default="train", help="split name recorded in index.json (default train)")
    _pack_options(p)

    p = ps.add_parser(
        "cityscapes",
        help="Cityscapes leftImg8bit + gtFine",
        description="Pack ROOT/leftImg8bit/{split}/CITY/*_leftImg8bit.png with the gtFine colour maps "
        "(B) and labelIds, mapped to the 19 trainIds (label.png, 255 = ignore; the raw "
        "labelids.png is kept), into OUT/{split}/.",
    )
    p.add_argument("root", metavar="ROOT")
    p.add_argument("out", metavar="OUT")
    p.add_argument(
        "--split",
        action="append",
        choices=("train", "val", "test"),
        help="split to pack (repeatable; default: train and val, those that exist)",
    )
    _pack_options(p)

    d = sub.add_parser(
        "demo",
        help="build a built-in dataset (no download)",
        description="Build a built-in dataset into OUT/train and OUT/val. scenes: procedural street "
        "scenes (A = photo, B = colour label map, label.png; label->photo is BtoA). "
        "photos-edges: crops of scikit-image's photos, A = Canny edges, B = photo. "
        "photos-color: the same crops for colorization. scenes-depth: the scenes as 16-bit greyscale "
        "(A) and 16-bit depth maps in millimetres (B), both one channel. scenes-bands: 4 bands, red, green, "
        "blue and near-infrared, 16-bit (A), with the colour label map (B). Same options, same bytes.",
    )
    d.add_argument("name", choices=tuple(_DEMO_SAMPLES), metavar="NAME", help=", ".join(_DEMO_SAMPLES))
    d.add_argument("out", metavar="OUT")
    d.add_argument("--train", type=positive_int, default=None, help="training samples (scenes* 400, photos-* 200)")
    d.add_argument("--val", type=non_negative_int, default=None, help="validation samples (scenes* 50, photos-* 40)")
    d.add_argument("--size", type=positive_int, default=256, help="image size in pixels (default 256)")
    d.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default 0)")
    d.add_argument("--shard-size", type=positive_int, default=100, help="samples per shard (default 100)")
    d.add_argument("--quality", type=positive_int, default=95, help="JPEG quality of the photos (default 95)")
    d.add_argument(
        "--workers",
        type=positive_int,
        default=min(8, os.cpu_count() or 1),
        help="processes (default: the CPU count, at most 8); the bytes do not depend on it",
    )
    d.add_argument("--overwrite", action="store_true", help="rebuild when OUT already holds the set")

    i = sub.add_parser(
        "inspect",
        help="count shards and samples, write a contact sheet",
        description="Print the shards, sample counts, sizes and task of a shard source, and "
        "optionally write a contact sheet PNG of its first samples.",
    )
    i.add_argument("source", metavar="SOURCE")
    i.add_argument("--out", default=None, metavar="SHEET.png", help="write a contact sheet PNG here")
    i.add_argument("--samples", type=positive_int, default=16, help="samples on the contact sheet (default 16)")
    i.add_argument("--verify", action="store_true", help="decode every image and list the ones that fail")
    return parser


# --- output ------------------------------------------------------------------------------------


class _Progress:
    """A rich progress bar per split; `callback(split, total)` hands the packer its advance function."""

    def __init__(self, console):
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

        from p2p_dist.console import make_progress

        self.progress = make_progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console
        )

    def __enter__(self):
        self.started = False  # the bar appears with the first task: an early error prints no empty line
        return self

    def __exit__(self, *exc):
        if self.started:
            self.progress.stop()
        return False

    def callback(self, split: str, total: int):
        if not self.started:
            self.progress.start()
            self.started = True
        task = self.progress.add_task(f"packing {split}", total=total)
        return lambda n: self.progress.advance(task, n)


def _summary(console, results: dict, title: str) -> None:
    from rich.table import Table

    from p2p_dist.data.writer import name_files

    table = Table(title=title)
    for col in ("split", "folder", "shards", "samples", "image size", "skipped"):
        table.add_column(col)
    for split, r in results.items():
        idx = r.index
        size = "x".join(str(v) for v in reversed(idx["image_size"])) if idx.get("image_size") else "mixed"
        skipped = ", ".join(f"{c} {w}" for w, c in sorted(r.skipped.items())) or "0"
        table.add_row(split, str(r.out), str(len(idx["shards"])), str(idx["total"]), size, skipped)
    console.print(table)
    for r in results.values():
        for why, examples in r.examples.items():
            for ex in examples:
                console.print(f"  skipped ({why}): {ex}")
        if r.kept_shards:
            console.print(f"  resumed {r.out}: kept {r.kept_shards} complete shard(s)")
        if r.removed:
            console.print(f"  --overwrite removed the set it replaced in {r.out}: {name_files(r.removed)}")
        for note in r.notes:
            console.print(f"[yellow]warning[/yellow]: {note}")


def _run_pack(args, console) -> None:
    from p2p_dist.data import pack as packers

    opts = options_from_args(packers.PackOptions, args)
    with _Progress(console) as prog:
        if args.kind == "aligned":
            results = packers.pack_aligned(args.src, args.out, splits=args.split, opts=opts, progress=prog.callback)
        elif args.kind == "paired":
            paired = packers.pack_paired(
                args.a_dir, args.b_dir, args.out, split=args.split, bands=args.bands, opts=opts, progress=prog.callback
            )
            results = {args.split: paired.result}
        elif args.kind == "colorization":
            results = {
                args.split: packers.pack_colorization(
                    args.src, args.out, split=args.split, opts=opts, progress=prog.callback
                )
            }
        else:
            results = packers.pack_cityscapes(args.root, args.out, splits=args.split, opts=opts, progress=prog.callback)
    _summary(console, results, f"p2p-data pack {args.kind}")
    if args.kind == "paired" and (paired.a_only or paired.b_only):
        for side, names in (("A", paired.a_only), ("B", paired.b_only)):
            if names:
                shown = ", ".join(names[:10]) + (f", ... ({len(names) - 10} more)" if len(names) > 10 else "")
                console.print(f"[yellow]unmatched[/yellow]: {len(names)} image(s) only in {side}: {shown}")


def _run_demo(args, console) -> None:
    from p2p_dist.data.demo import build_demo

    train, val = _DEMO_SAMPLES[args.name]
    with _Progress(console) as prog:
        results = build_demo(
            args.name,
            args.out,
            train=train if args.train is None else args.train,
            val=val if args.val is None else args.val,
            size=args.size,
            seed=args.seed,
            shard_size=args.shard_size,
            quality=args.quality,
            workers=args.workers,
            overwrite=args.overwrite,
            progress=prog.callback,
        )
    _summary(console, results, f"p2p-data demo {args.name}")


def _run_inspect(args, console) -> None:
    from rich.table import Table

    from p2p_dist.data.inspect import inspect_source
    from p2p_dist.data.shards import is_remote

    report = inspect_source(args.source, sheet=args.out, sheet_samples=args.samples, verify=args.verify)
    table = Table(title=f"{args.source}")
    for col in ("shard", "samples", "size", "fields", "problems"):
        table.add_column(col)
    for s in report.shards:
        problems = "; ".join(([s.error] if s.error else []) + s.bad[:3]) + (
            f" (+{len(s.bad) - 3})" if len(s.bad) > 3 else ""
        )
        size = "-" if s.bytes is None else f"{s.bytes / 1e6:.1f} MB"
        table.add_row(
            s.url if is_remote(s.url) else os.path.basename(s.url),
            str(s.samples),
            size,
            " ".join(s.fields),
            problems or "",
        )
    console.print(table)
    idx = report.index or {}
    lines = [
        ("task", report.task or "unknown"),
        ("dataset", idx.get("dataset", "-")),
        ("split", idx.get("split", "-")),
        ("shards", str(len(report.shards))),
        (
            "samples",
            f"{report.total}"
            + (f" (index.json says {idx['total']})" if idx.get("total") not in (None, report.total) else ""),
        ),
        (
            "image size",
            "x".join(map(str, reversed(idx["image_size"])))
            if idx.get("image_size")
            else (
                f"mixed, {idx['min_size'][1]}x{idx['min_size'][0]} to {idx['max_size'][1]}x{idx['max_size'][0]}"
                if idx.get("min_size")
                else "-"
            ),
        ),
        ("labels", ", ".join(idx.get("classes", [])) if idx.get("has_labels") else "no"),
    ]
    for side, rec in (idx.get("pixels") or {}).items():
        lines.append(
            (f"pixels {side}", f"{rec['bits']}-bit, {rec['channels']} channel(s), min {rec['min']}, max {rec['max']}")
        )
    if report.sizes:
        lines.append(("decoded sizes", ", ".join(f"{k}: {v}" for k, v in sorted(report.sizes.items()))))
    if report.verified or report.bad:
        lines.append(("unreadable", str(report.bad)))
    if idx.get("skipped"):
        lines.append(("skipped at pack time", ", ".join(f"{c} {w}" for w, c in idx["skipped"].items())))
    summary = Table(show_header=False)
    summary.add_column("key", style="bold")
    summary.add_column("value")
    for k, v in lines:
        summary.add_row(k, v)
    console.print(summary)
    if args.out:
        console.print(f"contact sheet: {args.out}")


@console_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from p2p_dist.console import make_console

    console = make_console(stderr=False)
    if args.command == "pack":
        _run_pack(args, console)
    elif args.command == "demo":
        _run_demo(args, console)
    else:
        _run_inspect(args, console)
    return 0


if __name__ == "__main__":
    sys.exit(main())
