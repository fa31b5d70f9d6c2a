"""`p2p-convert` / `python -m p2p_dist.models`: a reference generator file (latest_net_G.pth) ->
our checkpoint folder (generator.safetensors + generator.json); see p2p_dist.models.convert.

`add_reference_options` and `reference_spec` describe a reference file's architecture on the
command line; `p2p-translate --from-reference` takes the same options.

Exit codes: 0 done, 2 bad input (one line says what), 74 the output could not be written.
"""

from __future__ import annotations

import argparse

from p2p_dist.cliargs import positive_int
from p2p_dist.errors import console_entry
from p2p_dist.models.registry import DIRECTIONS, GENERATORS, REFERENCE_GENERATORS, REFERENCE_NORMS, TASKS


def add_reference_options(group, arch_required: bool = True) -> None:
    """--arch, --norm, --ngf, --in-channels, --out-channels and --no-dropout: the reference's own
    option names (--netG, --norm, --ngf, --input_nc, --output_nc, --no_dropout) in our spelling.
    Without `arch_required` (p2p-translate, p2p-export), --arch accepts every generator and is
    checked against our checkpoints too."""
    if arch_required:
        group.add_argument("--arch", required=True, choices=REFERENCE_GENERATORS, help="the file's generator (--netG)")
    else:
        group.add_argument(
            "--arch",
            choices=GENERATORS,
            help="the generator (--netG; required with --from-reference, otherwise checked against the checkpoint)",
        )
    group.add_argument("--norm", default="batch", choices=REFERENCE_NORMS, help="the file's norm (default: batch)")
    group.add_argument("--ngf", type=positive_int, default=64, help="filters in the first layer (default 64)")
    group.add_argument("--in-channels", type=positive_int, default=3, help="input channels (--input_nc; default 3)")
    group.add_argument(
        "--out-channels",
        type=positive_int,
        default=3,
        help="output channels (--output_nc; default 3; 1 in and 2 out is colorization)",
    )
    group.add_argument(
        "--no-dropout",
        action="store_true",
        help="the file was trained without dropout (--no_dropout; CycleGAN's default); for "
        "resnet_9blocks this changes the file's layout",
    )


def reference_spec(args: argparse.Namespace):
    """The GeneratorSpec that `add_reference_options` (and --task/--direction, where given) describe."""
    from p2p_dist.models.spec import GeneratorSpec

    return GeneratorSpec(
        name=args.arch,
        in_channels=args.in_channels,
        out_channels=args.out_channels,
        ngf=args.ngf,
        norm=args.norm,
        dropout=not args.no_dropout,
        task=getattr(args, "task", None),
        direction=getattr(args, "direction", None),
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="p2p-convert",
        description="Convert a reference pix2pix/CycleGAN generator file (latest_net_G.pth) into our "
        "format: OUT/generator.safetensors + OUT/generator.json.",
    )
    p.add_argument("reference", help="the reference *_net_G.pth file")
    p.add_argument("output", help="folder to write generator.safetensors and generator.json into")
    add_reference_options(p)
    p.add_argument("--task", choices=TASKS, help="recorded in generator.json")
    p.add_argument("--direction", choices=DIRECTIONS, help="recorded in generator.json")
    return p


@console_entry
def main(argv: list[str] | None = None) -> int:
    from p2p_dist.console import make_console
    from p2p_dist.fsutil import check_writable_dir
    from p2p_dist.models.convert import ConversionReport, load_reference_generator
    from p2p_dist.models.generator_file import save_generator

    args = build_parser().parse_args(argv)
    spec = reference_spec(args)
    report = ConversionReport()
    model = load_reference_generator(
        args.reference, spec.name, spec.norm, spec.in_channels, spec.out_channels, spec.ngf, spec.dropout, report=report
    )
    check_writable_dir(args.output)
    weights = save_generator(model, spec, args.output)
    console = make_console(stderr=True)
    if report.dropped:
        console.print(f"dropped {len(report.dropped)} legacy InstanceNorm statistics keys (as the reference does)")
    if report.filled:
        console.print(f"set {len(report.filled)} missing BatchNorm num_batches_tracked counters to 0")
    console.print(f"wrote {weights} and {weights.with_name('generator.json')}", soft_wrap=True)
    return 0
