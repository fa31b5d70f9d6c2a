"""Device choice and generator loading for the inference commands."""

from __future__ import annotations

import torch

from p2p_dist.errors import UserError
from p2p_dist.inference.options import ModelOptions

UNPICKLING_SUFFIXES = (".ts", ".pt2")  # TorchScript and torch.export archives: loading them unpickles


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


def load_torch_generator(opts: ModelOptions):
    """(module, GeneratorSpec) from our checkpoint or, with --from-reference, a *_net_G.pth."""
    from p2p_dist.models import GeneratorSpec, load_generator, load_reference_generator

    if opts.from_reference:
        if not opts.arch:
            raise UserError("--from-reference needs --arch (the reference's --netG, e.g. unet_256)")
        spec = GeneratorSpec(
            name=opts.arch,
            in_channels=opts.in_channels,
            out_channels=opts.out_channels,
            ngf=opts.ngf,
            norm=opts.norm,
            dropout=not opts.no_dropout,
        )
        model = load_reference_generator(
            opts.checkpoint, spec.name, spec.norm, spec.in_channels, spec.out_channels, spec.ngf, dropout=spec.dropout
        )
        return model, spec
    model, spec = load_generator(opts.checkpoint)
    if opts.arch and opts.arch != spec.name:
        raise UserError(f"checkpoint {opts.checkpoint} holds a {spec.name} generator, not {opts.arch}")
    return model, spec


def load_any_generator(opts: ModelOptions, device: torch.device):
    """(generator, spec, exported) where `exported` says the file came from p2p-export (then the
    generator is a callable holding the eval-mode network)."""
    from pathlib import Path

    from p2p_dist.inference.runtime import is_exported, load_exported, meta_path, read_meta

    suffix = Path(opts.checkpoint).suffix
    if suffix in UNPICKLING_SUFFIXES or (
        is_exported(opts.checkpoint) and read_meta(opts.checkpoint)["format"] != "onnx"
    ):
        raise UserError(
            f"{opts.checkpoint} is a TorchScript or torch.export file, and loading one runs the code pickled "
            "in it: p2p-translate loads generator.safetensors checkpoints (RUN/final) and p2p-export ONNX files"
        )
    if suffix == ".onnx" and not is_exported(opts.checkpoint):
        raise UserError(
            f"{opts.checkpoint} has no {meta_path(opts.checkpoint).name} beside it (p2p-export writes "
            "one): cannot tell its format and generator"
        )
    if not opts.from_reference and is_exported(opts.checkpoint):
        model, spec, meta = load_exported(opts.checkpoint, device)
        if opts.arch and opts.arch != spec.name:
            raise UserError(f"{opts.checkpoint} holds a {spec.name} generator, not {opts.arch}")
        return model, spec, True
    model, spec = load_torch_generator(opts)
    return model.to(device), spec, False
