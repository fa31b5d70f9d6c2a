"""`p2p-eval`: the paper's evaluation (FCN-score, per-pixel label scores) and image metrics;
subcommands fcn-train, score, compare, report and weights (eval/README.md)."""

from __future__ import annotations

import argparse
import sys

from p2p_dist.cliargs import (
    non_negative_int,
    options_from_args,
    positive_float,
    positive_int,
)
from p2p_dist.errors import UserError, console_entry
from p2p_dist.metric_table import GROUPS
from p2p_dist.models.registry import DIRECTIONS, TASKS

EXAMPLES = """examples:
  p2p-eval fcn-train --shards demo/data/train --out demo/fcn
  p2p-eval score --checkpoint demo/run/final --shards demo/data/val --fcn demo/fcn --out demo/report
  p2p-eval score --pred results/fake --target results/real --out scores/run1
  p2p-eval score --pred sat/translated --target sat/real --rgb-bands 3,2,1 --out scores/sat
  accelerate launch --num_processes 2 -m p2p_eval score --checkpoint RUN/final --shards VAL --fcn FCN --out OUT
  p2p-eval compare l1=ablation/l1/score cgan=ablation/cgan/score ablation/l1_cgan/score --out ablation/report
  p2p-eval report demo/run --out demo/run/report
  p2p-eval weights list
  p2p-eval weights fetch --all --mirror file:///shared/torch/hub/checkpoints
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Adds "(default: X)" where a default means something and the help does not say it already."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (
            "default" not in text
            and action.default not in (None, False, argparse.SUPPRESS)
            and action.option_strings
            and not isinstance(action.default, list)
        ):
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line + usage, exit 2 (argparse's own convention)
        self.print_usage(sys.stderr)
        raise UserError(message)


def _metrics(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in GROUPS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown metric(s) {', '.join(unknown) or text!r}; choose from {','.join(GROUPS)}"
        )
    return names


def _bands(text: str) -> tuple[int, ...]:
    try:
        bands = tuple(int(b) for b in text.split(","))
    except ValueError:
        bands = ()
    if len(bands) != 3 or min(bands) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give three band numbers from 1, in R,G,B order (e.g. 3,2,1)")
    return bands


def build_parser() -> argparse.ArgumentParser:
    from p2p_eval.weights import describe_cache

    p = _Parser(
        prog="p2p-eval",
        formatter_class=_Formatter,
        epilog=EXAMPLES,
        description="Evaluate pix2pix outputs with the paper's metrics (FCN-score, per-pixel label "
        "scores) and image metrics (L1, PSNR, SSIM, MS-SSIM, LPIPS, FID, KID, Lab colour "
        "histograms).",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    t = sub.add_parser(
        "fcn-train",
        formatter_class=_Formatter,
        help="train the FCN evaluator on a labelled shard set's real photos",
        description="Train the FCN-8s-style evaluator on the real photos and label.png maps of a "
        "labelled shard set (classes and palette from its index.json; the Cityscapes "
        "19-class list is built in). Writes OUT/fcn.safetensors + OUT/fcn.json and "
        "prints the evaluator's score on real photos (the ground-truth row).",
    )
    t.add_argument("--shards", required=True, help="training shards: folder, glob, brace pattern or pipe: URL")
    t.add_argument("--out", required=True, help="folder for fcn.safetensors and fcn.json")
    t.add_argument(
        "--val", default=None, help="shards to report the real-photo score on (default: the training shards)"
    )
    t.add_argument(
        "--photo-side",
        choices=("A", "B"),
        default="A",
        help="which side of a pair is the photo (A for cityscapes and scenes)",
    )
    t.add_argument(
        "--classes",
        choices=("auto", "cityscapes"),
        default="auto",
        help="class list: auto (from index.json) or the built-in Cityscapes 19 trainIds",
    )
    t.add_argument("--size", type=positive_int, default=128, help="training and input resolution (square, pixels)")
    t.add_argument("--width", type=positive_int, default=16, help="channels of the first stage (then 2x, 4x, 8x, 8x)")
    t.add_argument("--epochs", type=positive_float, default=12.0, help="passes over the training set")
    t.add_argument("--batch-size", type=positive_int, default=8, help="images per step")
    t.add_argument("--lr", type=positive_float, default=2e-3, help="peak Adam learning rate (one-cycle schedule)")
    t.add_argument("--seed", type=non_negative_int, default=0, help="seed for initialisation, shuffling and flips")
    t.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")

    s = sub.add_parser(
        "score",
        formatter_class=_Formatter,
        help="score one variant and write OUT/scores.json + report.{md,json,html}",
        description="Score one variant. Inputs: --pred DIR --target DIR (images matched by name), "
        "--pred DIR --shards SOURCE (predictions named by sample key; targets, inputs and "
        "label maps from the shards) or --checkpoint GEN --shards SOURCE (translate, then "
        "score). Under `accelerate launch`/`torchrun` the samples are split over the "
        "processes and every sample is scored exactly once. Pretrained backbones (LPIPS, "
        f"FID/KID) are read from {describe_cache()}; a metric whose weights are missing is "
        "reported as unavailable, naming the file.",
    )
    s.add_argument("--out", required=True, help="output folder (scores.json, report.*, samples/)")
    s.add_argument("--pred", default=None, help="folder of predicted images")
    s.add_argument("--target", default=None, help="folder of target images (matched to --pred by name)")
    s.add_argument("--inputs", default=None, help="folder of input images for the report grids (with --pred/--target)")
    s.add_argument(
        "--shards", default=None, help="shard set with targets (and labels): folder, glob, brace pattern, pipe: URL"
    )
    s.add_argument(
        "--checkpoint",
        default=None,
        help="generator checkpoint (folder or generator.safetensors) to translate --shards with",
    )
    s.add_argument("--fcn", default=None, help="FCN evaluator folder (from fcn-train) for the FCN-score")
    s.add_argument(
        "--mode",
        choices=("auto", "photo", "labels", "image"),
        default="auto",
        help="photo: FCN-score of generated photos; labels: generated colour label maps decoded by "
        "nearest palette colour; image: image metrics only; auto: from the data and direction",
    )
    s.add_argument(
        "--task",
        choices=("auto", *TASKS),
        default="auto",
        help="data task (auto: the shard index, else the run's config.yaml)",
    )
    s.add_argument(
        "--direction",
        choices=("auto", *DIRECTIONS),
        default="auto",
        help="which side is the input (auto: the run's config.yaml, else BtoA for labelled sets)",
    )
    s.add_argument(
        "--size",
        type=positive_int,
        default=None,
        help="resize shard images to SIZE (default: the run's data.crop_size with --checkpoint, else none)",
    )
    s.add_argument(
        "--resize",
        action="store_true",
        help="resize predictions to the reference size instead of failing on a mismatch",
    )
    s.add_argument(
        "--metrics",
        type=_metrics,
        default=list(GROUPS),
        help="comma-separated subset of: " + ",".join(GROUPS) + " (classes = FCN-score or label scores)",
    )
    s.add_argument(
        "--rgb-bands",
        type=_bands,
        default=None,
        metavar="R,G,B",
        help="the three bands (numbered from 1) that the RGB metrics (FCN-score, LPIPS, FID/KID, Lab colour) "
        "see, 16-bit rounded to 8 bits; without it they score 8-bit RGB or grey images and say they do "
        "not apply to other data (L1, PSNR and SSIM always use every channel at the bit depth's range)",
    )
    s.add_argument(
        "--batch-size",
        type=positive_int,
        default=8,
        help="samples per loader batch, per generator pass in --eval-mode and per metric network pass",
    )
    s.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="generator autocast with --checkpoint: fp32, or bf16 (meant for GPUs; on CPUs without "
        "native bf16 it is much slower)",
    )
    s.add_argument(
        "--eval-mode",
        action="store_true",
        help="translate with BatchNorm running statistics and no dropout (default: the paper's test "
        "mode, dropout on and test-image statistics, seeded per sample)",
    )
    s.add_argument("--seed", type=non_negative_int, default=0, help="offset of the per-sample dropout seeds")
    s.add_argument("--name", default=None, help="variant name in reports (default: the run or folder name)")
    s.add_argument("--grid", type=non_negative_int, default=6, help="samples kept for the report's image grid")
    s.add_argument("--num-workers", type=non_negative_int, default=0, help="data loader workers per process")

    c = sub.add_parser(
        "compare",
        formatter_class=_Formatter,
        help="put scored variants side by side (terminal table, report.md/json/html)",
        description="Compare variants scored with `p2p-eval score`. Each RUN is a score folder or "
        "scores.json file, optionally named NAME=PATH; unnamed, a variant keeps the name it was "
        "scored under (--name, else the run or --pred folder), and variants that share one are "
        "named by the shortest end of their score folder's path that tells them apart. Prints "
        "the table (best per metric marked) and writes OUT/report.md, report.json and a "
        "self-contained report.html.",
    )
    c.add_argument("runs", nargs="+", metavar="RUN", help="score folder or scores.json, optionally NAME=PATH")
    c.add_argument("--out", required=True, help="folder for report.md, report.json and report.html")
    c.add_argument("--grid", type=non_negative_int, default=6, help="image grid rows (samples common to all runs)")

    r = sub.add_parser(
        "report",
        formatter_class=_Formatter,
        help="one self-contained HTML page for a training run folder",
        description="Write OUT/index.html for a training run folder (train.output_dir): loss, "
        "validation, learning-rate and images/s curves (inline SVG, no JavaScript), the "
        "sample grids over time, the health alarms, the config, and the scores of "
        "`p2p-eval score --out RUN/score` when present. Images are embedded: the page is "
        "one file.",
    )
    r.add_argument("run", metavar="RUN", help="training run folder (holds metrics.jsonl and config.yaml)")
    r.add_argument("--out", required=True, help="folder for index.html")
    r.add_argument("--samples", type=positive_int, default=6, help="sample grids shown (evenly spaced over the run)")

    w = sub.add_parser(
        "weights",
        formatter_class=_Formatter,
        help="list or fetch the pretrained files of LPIPS and FID",
        description="The pretrained files that LPIPS and FID/KID read from "
        f"{describe_cache()}. `list` shows which are present and intact (sha256); "
        "`fetch` downloads them from their canonical URLs or a mirror. Evaluation itself "
        "never downloads.",
    )
    wsub = w.add_subparsers(dest="weights_command", metavar="ACTION", parser_class=_Parser)
    wsub.add_parser(
        "list",
        formatter_class=_Formatter,
        help="show each file, its status and what uses it",
        description="Show each file with its status: ok (sha256 matches), missing, wrong hash, or "
        "torchmetrics' copy (LPIPS linear layers shipped inside torchmetrics).",
    )
    f = wsub.add_parser(
        "fetch",
        formatter_class=_Formatter,
        help="download files into the torch cache",
        description="Download the named files (or --all) into the torch cache. Each file is "
        "streamed into a temporary file, its sha256 checked against the published one, "
        "and renamed into place only when it matches; a mismatch is refused and nothing "
        "is kept. Files already present and intact are skipped.",
    )
    f.add_argument("names", nargs="*", metavar="NAME", help="files to fetch (names as `p2p-eval weights list` shows)")
    f.add_argument("--all", action="store_true", help="fetch every file that is missing or damaged")
    f.add_argument(
        "--mirror",
        default=None,
        help="base URL or folder laid out like a torch hub checkpoints folder (MIRROR/FILE), "
        "file:// included; default: each file's canonical URL",
    )
    f.add_argument("--timeout", type=positive_float, default=60.0, help="network timeout per read, seconds")
    return p


def _fcn_train(args) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from p2p_dist.console import make_console, make_progress
    from p2p_dist.fsutil import check_writable_dir
    from p2p_eval.fcn_train import FCNTrainOptions, train_fcn

    check_writable_dir(args.out)
    opts = options_from_args(FCNTrainOptions, args)
    console = make_console(stderr=True)
    with make_progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        _, summary = train_fcn(opts, progress)
    real = summary["real_photo_scores"]
    console.print(
        f"FCN evaluator saved to {args.out} ({summary['samples']} photos, {summary['steps']} steps, "
        f"{summary['seconds']} s); real photos of {real['scored_on']}: per-pixel acc {real['pixel_acc']:.3f}, "
        f"per-class acc {real['class_acc']:.3f}, class IOU {real['class_iou']:.3f}",
        highlight=False,
    )
    return 0


def _score(args) -> int:
    from p2p_dist.console import make_console
    from p2p_eval.evaluate import ScoreOptions, run_score
    from p2p_eval.report import load_variant, print_table

    if args.pred is None and args.checkpoint is None:
        raise UserError("give --pred DIR (with --target or --shards) or --checkpoint GEN --shards SOURCE")
    if args.pred and args.checkpoint:
        raise UserError("--pred and --checkpoint exclude each other")
    if args.target and args.shards:
        raise UserError("--target and --shards exclude each other (targets come from one place)")
    if args.pred and not (args.target or args.shards):
        raise UserError("--pred needs --target DIR or --shards SOURCE")
    opts = options_from_args(ScoreOptions, args)
    result = run_score(opts)
    if result is not None:
        console = make_console(stderr=False)
        print_table([load_variant(args.out)], console)
        console.print(f"wrote {args.out}/scores.json, report.md, report.json, report.html", highlight=False)
    return 0


def _compare(args) -> int:
    from p2p_dist.console import make_console
    from p2p_dist.fsutil import check_writable_dir
    from p2p_eval.report import load_variants, print_table, write_reports

    runs = load_variants(args.runs)
    check_writable_dir(args.out)
    console = make_console(stderr=False)
    print_table(runs, console)
    paths = write_reports(runs, args.out, grid_rows=args.grid)
    console.print("wrote " + ", ".join(str(p) for p in paths.values()), highlight=False)
    return 0


def _report(args) -> int:
    from rich.console import Console

    from p2p_dist.fsutil import check_writable_dir
    from p2p_eval.run_report import write_run_report

    check_writable_dir(args.out)
    path = write_run_report(args.run, args.out, samples=args.samples)
    Console().print(f"wrote {path}", highlight=False)
    return 0


def _weights_status(entry) -> str:
    from p2p_eval.lpips import bundled_lin_file
    from p2p_eval.weights import file_status

    status = file_status(entry)
    if status == "missing" and entry.name.startswith("lpips-") and bundled_lin_file(entry.name[6:]) is not None:
        return "torchmetrics' copy"
    return status


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _weights(args) -> int:
    from rich.console import Console

    from p2p_eval.weights import checkpoints_dir, fetch, registry, select, source_url

    console = Console()
    if args.weights_command is None:
        raise UserError("choose an action: p2p-eval weights list | fetch [--all | NAME...]")
    if args.weights_command == "list":
        # one plain line per file (greppable, never cut to the terminal's width)
        console.print(f"pretrained files in {checkpoints_dir()}:", highlight=False)
        for entry in registry():
            status = _weights_status(entry)
            style = "green" if status in ("ok", "torchmetrics' copy") else "red" if status == "wrong hash" else "yellow"
            console.print(
                f"  {entry.name:<14} [{style}]{status:<18}[/] {_size(entry.size):>9}  {entry.relpath}  "
                f"({entry.used_by})",
                highlight=False,
                soft_wrap=True,
            )
        return 0
    if not args.names and not args.all:
        raise UserError("name the files to fetch (see `p2p-eval weights list`) or give --all")
    for entry in select(args.names, args.all):
        status = _weights_status(entry)
        # torchmetrics' copy of the LPIPS linear layers serves unless that file is asked for by name
        if status == "ok" or (status == "torchmetrics' copy" and entry.name not in args.names):
            console.print(f"{entry.name}: present ({status}), skipped", highlight=False, soft_wrap=True)
            continue
        console.print(
            f"{entry.name}: fetching {_size(entry.size)} from {source_url(entry, args.mirror)}",
            highlight=False,
            soft_wrap=True,
        )
        path = fetch(entry, args.mirror, timeout=args.timeout)
        console.print(f"{entry.name}: {path} (sha256 ok)", highlight=False, soft_wrap=True)
    return 0


@console_entry
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        raise UserError("no command given: choose fcn-train, score, compare, report or weights")
    commands = {"fcn-train": _fcn_train, "score": _score, "compare": _compare, "report": _report, "weights": _weights}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
