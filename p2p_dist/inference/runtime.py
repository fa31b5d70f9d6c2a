"""Generators exported by `p2p-export`, loaded back as callables for `translate_batch`.

An exported file FILE comes with FILE.json (written by `p2p_dist/inference/export.py`): its format
(onnx, torchscript, exported), the generator's spec, the input/output names. ONNX files run in
onnxruntime (the optional `export` extra), the others in torch.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from p2p_dist.errors import UserError

FORMATS = ("onnx", "torchscript", "exported")
META_SUFFIX = ".json"
META_KIND = "p2p_dist.exported_generator"
EXTRA_HINT = "pip install 'p2p-dist[export]'"


def meta_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + META_SUFFIX)


def is_exported(path: str | Path) -> bool:
    """True for a file written by p2p-export (it has FILE.json beside it)."""
    path = Path(path)
    return path.is_file() and meta_path(path).is_file()


def read_meta(path: str | Path) -> dict:
    meta_file = meta_path(path)
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {meta_file}: {exc}") from None
    if not isinstance(meta, dict) or meta.get("kind") != META_KIND or meta.get("format") not in FORMATS:
        raise UserError(f"{meta_file} does not describe a p2p-export file (kind {META_KIND}, format in {FORMATS})")
    return meta


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise UserError(f"ONNX needs onnxruntime, which is not installed: {EXTRA_HINT}") from None
    return onnxruntime


class OnnxGenerator:
    """An ONNX generator in onnxruntime; called like the torch module (float32 tensors in and out)."""

    def __init__(
        self,
        path: str | Path,
        input_name: str = "input",
        output_name: str = "output",
        device: torch.device | str = "cpu",
    ) -> None:
        ort = import_onnxruntime()
        providers = ["CPUExecutionProvider"]
        if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
            raise UserError(f"onnxruntime cannot load {path}: {str(exc).strip().splitlines()[0][:200]}") from None
        self.input_name, self.output_name = input_name, output_name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = self.session.run([self.output_name], {self.input_name: x.detach().float().cpu().numpy()})[0]
        return torch.from_numpy(y).to(x.device)


class TorchExportedGenerator:
    """A TorchScript or torch.export file in torch (eval-mode network, no train/eval switch)."""

    def __init__(self, path: str | Path, fmt: str, device: torch.device | str = "cpu") -> None:
        try:
            if fmt == "torchscript":
                self.module = torch.jit.load(str(path), map_location=device)
            else:
                self.module = torch.export.load(str(path)).module().to(device)
        except (RuntimeError, OSError, ValueError) as exc:
            raise UserError(f"cannot load {fmt} file {path}: {str(exc).strip().splitlines()[0][:200]}") from None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.module(x)


def load_exported(path: str | Path, device: torch.device | str = "cpu"):
    """(callable generator, GeneratorSpec, meta) for a p2p-export file."""
    from p2p_dist.models import GeneratorSpec

    meta = read_meta(path)
    spec = GeneratorSpec.from_dict(meta["generator"])
    if meta["format"] == "onnx":
        model = OnnxGenerator(path, meta["input"]["name"], meta["output"]["name"], device)
    else:
        model = TorchExportedGenerator(path, meta["format"], device)
    return model, spec, meta
