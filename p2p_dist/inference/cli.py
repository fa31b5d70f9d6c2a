"""Console commands `p2p-translate` (apply a generator to images or shards) and `p2p-export`
(write an ONNX / TorchScript / torch.export file of a generator and check it)."""

from __future__ import annotations

import argparse

from p2p_dist.cliargs import non_negative_int, options_from_args, positive_int
from p2p_dist.errors import EXIT_PARTIAL, UserError, console_entry
from p2p_dist.inference.options import ExportOptions, TranslateOptions
from p2p_dist.models import registry
from p2p_dist.models.cli import add_reference_options


def add_model_args(p: argparse.ArgumentParser, checkpoint_help: str) -> None:
    p.add_argument("--checkpoint", required=True, help=checkpoint_help)
    ref = p.add_argument_group("reference checkpoints (--from-reference)")
    ref.add_argument(
        "--from-reference", action="store_true", help="--checkpoint is a reference pix2pix/CycleGAN *_net_G.pth file"
    )
    add_reference_options(ref, arch_required=False)


# --- p2p-translate --------------------------------------------------------------------------------------
TRANSLATE_EPILOG = """examples:
  p2p-translate --checkpoint runs/facades/final --input photos/ --output out/
  p2p-translate --checkpoint latest_net_G.pth --from-reference --arch unet_256 \\
      --input val/ --aligned --direction BtoA --output out/
  p2p-translate --checkpoint runs/demo/final --shards data/val --output out/
  p2p-translate --checkpoint runs/maps/final --input aerial_2k/ --tile auto --overlap 64 --output out/
  p2p-translate --checkpoint G.onnx --input photos/ --output out/     (a p2p-export ONNX file)

paper-mode seeds: every network input is forwarded on its own with its dropout noise seeded from
its key and --seed (the file name without extension, the shard sample key, or KEY#r,c for the tile
in row r, column c), so outputs do not depend on --batch-size, order or process count, and
p2p-eval score --checkpoint gives the same images.

exit codes: 0 done; 65 done, but some --input images could not be read (skipped, and listed at the
end); 2 bad input, one line (nothing written; also when no image could be read); 74 a write failed.
--output may not be the folder that holds the inputs."""


def build_translate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="p2p-translate",
        description="Apply a pix2pix generator to a folder of images (or to shards) and write images "
        "with the same names: 8-bit PNGs, or for a generator trained on 16-bit or multichannel shards "
        "images at its output's bit depth mapped back to the pixel range recorded in the checkpoint "
        "(PNG up to 4 channels, TIFF beyond).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=TRANSLATE_EPILOG,
    )
    add_model_args(
        p,
        "our generator: generator.safetensors, its generator.json, the folder holding them, or "
        "a run folder (its final/); a p2p-export ONNX file (FILE.onnx with FILE.json beside it); "
        "with --from-reference a reference *_net_G.pth. TorchScript and torch.export files are refused: "
        "loading them runs the code pickled in them",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", metavar="DIR", help="folder of images (not recursive)")
    src.add_argument(
        "--shards",
        metavar="SOURCE",
        help="shard set: a folder, glob, brace pattern or pipe: URL (several joined by ::); outputs are named "
        "KEY.png (KEY.tif beyond 4 channels)",
    )
    p.add_argument("--output", required=True, metavar="DIR", help="folder for the images (created if needed)")
    p.add_argument(
        "--aligned",
        action="store_true",
        help="--input images are A|B pairs side by side; --direction picks the input half",
    )
    p.add_argument(
        "--direction",
        choices=registry.DIRECTIONS,
        help="which side is the input (default: the checkpoint's recorded direction, else AtoB)",
    )
    p.add_argument(
        "--mode",
        choices=("paper", "eval"),
        default=None,
        help="paper: dropout on and BatchNorm with each input's own statistics, as in the paper "
        "(default for PyTorch checkpoints); eval: model.eval() (default, and the only mode, "
        "for p2p-export files)",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=1,
        help="images (or tiles) per forward pass in eval mode (default 1); outputs do not depend on it",
    )
    p.add_argument("--device", default="auto", help="auto (cuda when available, else cpu), cpu, cuda, cuda:N")
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="fp32 (default) or bf16 autocast, meant for GPUs (on CPUs without native bf16 it is much slower)",
    )
    p.add_argument(
        "--resize",
        choices=("auto", "always", "never", "pad"),
        default="auto",
        help="auto: resize only images whose size the network can not take (default); "
        "always: resize every image to --size; never: fail on such images; pad: reflect-pad "
        "to the next multiple of the network's size step and crop back. Resized --input "
        "images are resized back to their own size when written",
    )
    p.add_argument(
        "--size",
        type=positive_int,
        help="network input size for resizing and --tile auto (default: the checkpoint's training "
        "size, else 256 for unet_256/encoder_decoder_256/resnet_9blocks and 128 for *_128)",
    )
    p.add_argument(
        "--tile",
        metavar="N|auto",
        help="translate any image size in overlapping N x N tiles blended by a smooth window "
        "(auto: the training size); the output has the input's size",
    )
    p.add_argument(
        "--overlap",
        type=non_negative_int,
        metavar="M",
        help="pixels shared by neighbouring tiles (default: a quarter of the tile; 0 shows seams)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the dropout noise in paper mode (default 0)")
    p.add_argument(
        "--workers",
        type=non_negative_int,
        default=0,
        help="data loader processes decoding the images (default 0: in this process)",
    )
    return p


def resolve_mode(requested: str | None, exported: bool) -> str:
    if requested is None:
        return "eval" if exported else "paper"
    if exported and requested == "paper":
        raise UserError(
            "--mode paper needs the PyTorch checkpoint: an exported file holds the eval-mode generator only"
        )
    return requested


@console_entry
def translate_main(argv: list[str] | None = None) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from p2p_dist.console import make_console, make_progress
    from p2p_dist.fsutil import check_writable_dir
    from p2p_dist.inference import translate as tr
    from p2p_dist.inference.load import load_any_generator, resolve_device

    opts = options_from_args(TranslateOptions, build_translate_parser().parse_args(argv))
    console = make_console(stderr=True)
    device = resolve_device(opts.device)
    model, spec, exported = load_any_generator(opts, device)
    if exported and opts.precision != "fp32":
        raise UserError("--precision bf16 applies to PyTorch checkpoints; an exported file runs as it was exported")
    settings = tr.make_settings(opts, spec, resolve_mode(opts.mode, exported))
    tr.check_output_apart(opts)
    check_writable_dir(opts.output)
    skipped: list[str] = []  # images that could not be read: translation goes on, they are listed at the end
    if opts.shards:
        source = tr.open_shards(opts, settings)
        total, items = source.total, tr.shard_items(source, settings, opts)
    else:
        paths = tr.list_inputs(opts.input, settings.suffix)
        if settings.resize == "never" and not settings.tile:
            tr.check_sizes(paths, settings, opts.aligned)
        total, items = len(paths), tr.folder_items(paths, settings, opts, skipped)
    translator = tr.Translator(
        model, settings, device, seed=opts.seed, batch_size=opts.batch_size, precision=opts.precision
    )
    columns = (
        TextColumn("[bold]translate"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with make_progress(*columns, console=console) as progress:
        task_id = progress.add_task("translate", total=total)
        written, resized = tr.run(items, translator, settings, progress, task_id)
    what = "colorized" if settings.colorization else "translated"
    how = f", {settings.tile}x{settings.tile} tiles overlapping by {settings.overlap}" if settings.tile else ""
    note = f", {resized} resized to {settings.size}x{settings.size} for the network" if resized else ""
    for message in skipped:
        console.print(f"  skipped: {message}", soft_wrap=True, highlight=False, markup=False)
    if skipped and not written:
        raise UserError(f"none of the {len(skipped)} image(s) in {opts.input} could be read (listed above)")
    console.print(
        f"{what} {written} image(s) with {spec.name} ({settings.mode} mode, {device}{how}) into {opts.output}{note}"
        + (f"; skipped {len(skipped)} unreadable image(s), listed above" if skipped else ""),
        soft_wrap=True,
    )
    return EXIT_PARTIAL if skipped else 0


# --- p2p-export -----------------------------------------------------------------------------------------
EXPORT_EPILOG = """examples:
  p2p-export --checkpoint runs/facades/final --format onnx --output facades_G.onnx
  p2p-export --checkpoint latest_net_G.pth --from-reference --arch unet_256 --format exported --output G.pt2

The file holds the eval-mode generator (BatchNorm running statistics, no dropout), with dynamic
batch and spatial size (sides in multiples of the network's size step). FILE.json beside it names
the format, opset, input/output names and value ranges. The command then runs the file (onnxruntime
for ONNX, torch otherwise) on a probe batch and fails, keeping nothing, if its outputs differ from
PyTorch's by more than 1e-4. ONNX needs the export extra: pip install 'p2p-dist[export]'.
p2p-translate runs ONNX files (TorchScript and torch.export files unpickle when loaded; it refuses them).

exit codes: 0 written and verified; 2 bad input, one line (also an --output that is one of the
checkpoint's files); 74 the file could not be written (disk full, file size limit; one line naming it)."""


def build_export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="p2p-export",
        description="Export a pix2pix generator to ONNX, TorchScript or torch.export and "
        "verify the written file against PyTorch.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXPORT_EPILOG,
    )
    add_model_args(
        p,
        "our generator (generator.safetensors, its folder or a run folder); with --from-reference "
        "a reference *_net_G.pth",
    )
    p.add_argument(
        "--format",
        choices=("onnx", "torchscript", "exported"),
        required=True,
        help="onnx (onnxruntime), torchscript (torch.jit) or exported (torch.export, .pt2)",
    )
    p.add_argument("--output", required=True, metavar="FILE", help="the file to write (FILE.json goes beside it)")
    p.add_argument(
        "--mode", choices=("eval", "paper"), default="eval", help="eval (default; the only mode that can be exported)"
    )
    p.add_argument("--opset", type=positive_int, default=17, help="ONNX opset (default 17)")
    return p


@console_entry
def export_main(argv: list[str] | None = None) -> int:
    from p2p_dist.console import make_console
    from p2p_dist.inference.export import check_extra, check_output_apart, export_generator
    from p2p_dist.inference.load import load_torch_generator

    opts = options_from_args(ExportOptions, build_export_parser().parse_args(argv))
    if opts.mode == "paper":
        raise UserError(
            "--mode paper cannot be exported: its dropout noise and per-image BatchNorm statistics "
            "make outputs random and batch-dependent; exports hold the eval-mode generator"
        )
    check_extra(opts.format)
    check_output_apart(opts.output, opts.checkpoint, opts.from_reference)
    model, spec = load_torch_generator(opts)
    meta = export_generator(model, spec, opts.format, opts.output, opset=opts.opset, source=opts.checkpoint)
    v = meta["verification"]
    make_console(stderr=True).print(
        f"wrote {opts.output} ({opts.format}, {spec.name}, eval mode) and {opts.output}.json; "
        f"{v['runtime']} vs PyTorch on a {'x'.join(map(str, v['probe_shape']))} probe: max abs diff "
        f"{v['max_abs_diff']:.2e} (limit {v['tolerance']:g})",
        soft_wrap=True,
        highlight=False,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(translate_main())
