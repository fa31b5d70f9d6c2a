"""Export an eval-mode generator to ONNX, TorchScript or torch.export, write FILE.json beside it,
and check the written file against PyTorch on a probe batch (README, `p2p-export`).

If the outputs differ by more than `TOLERANCE` (max abs), nothing is kept and the export fails.
Our checkpoint format (`p2p_dist/models/generator_file.py`) stays the way to keep and reload
weights in PyTorch.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path

import torch

from p2p_dist.errors import StorageError, UserError
from p2p_dist.fsutil import atomic_path, atomic_write_text
from p2p_dist.inference.runtime import EXTRA_HINT, FORMATS, META_KIND, load_exported, meta_path

TOLERANCE = 1e-4
DEFAULT_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "input", "output"
SUFFIXES = {"onnx": ".onnx", "torchscript": ".ts", "exported": ".pt2"}


def check_extra(fmt: str) -> None:
    """One clear line when the optional `export` extra (onnx, onnxruntime) is missing."""
    if fmt != "onnx":
        return
    missing = []
    for name in ("onnx", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UserError(f"--format onnx needs {' and '.join(missing)}, not installed: {EXTRA_HINT}")


def check_output_apart(output: str | Path, checkpoint: str | Path, from_reference: bool) -> None:
    """Refuse an --output whose file or FILE.json is a file the generator is read from (e.g.
    `--output RUN/final/generator` would replace the checkpoint's generator.json)."""
    from p2p_dist.fsutil import same_file
    from p2p_dist.models.generator_file import SPEC_NAME, resolve_checkpoint

    if from_reference:
        inputs = [Path(checkpoint)]
    else:
        weights = resolve_checkpoint(checkpoint)
        inputs = [weights, weights.with_name(SPEC_NAME)]
    for written in (Path(output), meta_path(output)):
        for read in inputs:
            if same_file(written, read):
                raise UserError(
                    f"--output {output} would write {written}, which is the checkpoint's {read}: "
                    "choose another --output file"
                )


def value_ranges(spec) -> tuple[dict, dict]:
    if spec.is_colorization:
        return (
            {"range": [-1.0, 1.0], "encoding": "L/50 - 1 (Lab lightness)"},
            {"range": [-1.0, 1.0], "encoding": "ab/110 (Lab chroma)"},
        )
    if spec.input_range is None and spec.output_range is None:  # 8-bit grey or RGB
        names = {1: "grey", 3: "RGB"}
        return (
            {"range": [-1.0, 1.0], "encoding": f"{names[spec.in_channels]} pixels x/127.5 - 1"},
            {"range": [-1.0, 1.0], "encoding": f"{names[spec.out_channels]} pixels (y + 1) * 127.5 (tanh)"},
        )
    from p2p_dist.data.transforms import PixelRange

    def side(rng, channels: int, formula: str) -> dict:
        rng = rng or PixelRange.full(8, channels)
        return {"range": [-1.0, 1.0], "encoding": f"{rng.bits}-bit pixels, per channel {formula}", **rng.to_dict()}

    return (
        side(spec.input_range, spec.in_channels, "(x - lo) / ((hi - lo) / 2) - 1"),
        side(spec.output_range, spec.out_channels, "(y + 1) * (hi - lo) / 2 + lo (tanh)"),
    )


def probe_input(spec, multiple: int) -> torch.Tensor:
    """A fixed, non-square probe batch of 2 in the input's value range."""
    side = max(multiple, 64)  # a multiple of every size step (4 for resnet_9blocks, 2^levels for U-Nets)
    g = torch.Generator().manual_seed(0)
    return torch.rand(2, spec.in_channels, side, 2 * side, generator=g) * 2 - 1


@contextlib.contextmanager
def _quiet():
    """torch's exporters warn about the shape check in our forward() (traced as a constant) and
    about their own deprecations; neither concerns the user of the exported file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def _naming(path: Path):
    """A write the OS refused (disk full, file size limit, permissions): one line naming the file."""
    try:
        yield
    except OSError as exc:
        raise StorageError(f"could not write {path}: {exc.strerror or exc}") from None


# The writers fill a buffer: torch's own file writer aborts the process when a write fails (a C++
# exception in a destructor), so the bytes reach the disk through Python, where a failure is an OSError.
def _write_onnx(model, example, path: io.BytesIO, opset: int) -> None:
    axes = {0: "batch", 2: "height", 3: "width"}
    with _quiet():
        torch.onnx.export(
            model,
            (example,),
            path,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
        )


def _write_torchscript(model, example, path: io.BytesIO) -> None:
    with _quiet():
        torch.jit.save(torch.jit.trace(model, example), path)


def _write_exported(model, example, path: io.BytesIO, multiple: int) -> None:
    from torch.export import Dim

    rows, cols = Dim("rows", min=1, max=2**12), Dim("cols", min=1, max=2**12)
    shapes = ({0: Dim("batch", min=1, max=2**16), 2: multiple * rows, 3: multiple * cols},)
    # without size-oblivious shapes torch.export assumes a symbolic size is never 1 and guards
    # on it, so a 1-block-high input (e.g. 256 px for unet_256) would be refused by the program
    import torch.fx.experimental._config as fx_config

    # an example of 1 block in a side would be specialised as a constant: trace on 2 x 3 blocks
    example = torch.zeros(2, example.shape[1], 2 * multiple, 3 * multiple)
    with _quiet(), fx_config.patch(backed_size_oblivious=True):
        program = torch.export.export(model, (example,), dynamic_shapes=shapes)
    torch.export.save(program, path)


def export_generator(
    model: torch.nn.Module, spec, fmt: str, output: str | Path, *, opset: int = DEFAULT_OPSET, source: str | None = None
) -> dict:
    """Write `output` (and output.json) and return the JSON's content. Raises UserError when the
    file's outputs differ from PyTorch's by more than TOLERANCE (then nothing is written)."""
    from p2p_dist.models import size_multiple

    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    check_extra(fmt)
    output = Path(output)
    multiple = size_multiple(spec.name)
    model = model.cpu().eval()
    probe = probe_input(spec, multiple)
    with torch.inference_mode():
        expected = model(probe)
    inp, out = value_ranges(spec)
    meta = {
        "kind": META_KIND,
        "format": fmt,
        "file": output.name,
        "mode": "eval",
        "opset": opset if fmt == "onnx" else None,
        "torch": torch.__version__,
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", spec.in_channels, "height", "width"],
            "dtype": "float32",
            **inp,
        },
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["batch", spec.out_channels, "height", "width"],
            "dtype": "float32",
            **out,
        },
        "size_multiple": multiple,
        "generator": spec.to_dict(),
        "source": source,
    }
    buffer = io.BytesIO()
    if fmt == "onnx":
        _write_onnx(model, probe, buffer, opset)
    elif fmt == "torchscript":
        _write_torchscript(model, probe, buffer)
    else:
        _write_exported(model, probe, buffer, multiple)
    with _naming(output), atomic_path(output, suffix=SUFFIXES[fmt]) as tmp:
        tmp.write_bytes(buffer.getbuffer())
        del buffer
        atomic_write_text(meta_path(tmp), json.dumps(meta))
        try:
            runner, _, _ = load_exported(tmp)
            got = runner(probe)
        finally:
            meta_path(tmp).unlink(missing_ok=True)
        diff = float((got.float() - expected).abs().max())
        if not diff <= TOLERANCE:
            raise UserError(
                f"the {fmt} file's outputs differ from PyTorch's by {diff:.3g} (max abs, limit "
                f"{TOLERANCE:g}) on a {'x'.join(map(str, probe.shape))} probe; nothing written"
            )
    meta["verification"] = {
        "probe_shape": list(probe.shape),
        "max_abs_diff": diff,
        "tolerance": TOLERANCE,
        "runtime": "onnxruntime" if fmt == "onnx" else "torch",
    }
    with _naming(meta_path(output)):
        atomic_write_text(meta_path(output), json.dumps(meta, indent=2) + "\n")
    return meta
