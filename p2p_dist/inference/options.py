"""The options of `p2p-translate` and `p2p-export`, as dataclasses built once from argparse
(`p2p_dist.cliargs.options_from_args`: every field is taken from the parsed namespace by its name)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelOptions:
    """Which generator: our checkpoint, a p2p-export file, or a reference *_net_G.pth."""

    checkpoint: str
    from_reference: bool = False
    arch: str | None = None
    norm: str = "batch"
    ngf: int = 64
    in_channels: int = 3
    out_channels: int = 3
    no_dropout: bool = False


@dataclass(frozen=True)
class TranslateOptions(ModelOptions):
    output: str = ""
    input: str | None = None
    shards: str | None = None
    aligned: bool = False
    direction: str | None = None
    mode: str | None = None  # None: paper for PyTorch checkpoints, eval for exported files
    batch_size: int = 1
    device: str = "auto"
    resize: str = "auto"
    size: int | None = None
    tile: str | None = None  # "auto" or a number of pixels
    overlap: int | None = None
    seed: int = 0
    workers: int = 0
    precision: str = "fp32"


@dataclass(frozen=True)
class ExportOptions(ModelOptions):
    output: str = ""
    format: str = "onnx"
    mode: str = "eval"
    opset: int = 17
