"""Our checkpoint format for a trained generator, so that loading needs no guessing: a folder with
`generator.safetensors` (the state dict, our module names) and `generator.json` (the architecture,
`GeneratorSpec.to_dict()`). The spec is also stored in the safetensors metadata, which is used when
generator.json is missing (a weights file copied on its own).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from p2p_dist.errors import StorageError, UserError
from p2p_dist.fsutil import atomic_path, atomic_write_text
from p2p_dist.models.spec import GeneratorSpec
from p2p_dist.models.statedict import check_state_dict, load_strict, state_dict_of

WEIGHTS_NAME = "generator.safetensors"
SPEC_NAME = "generator.json"
_META_KEY = "p2p_dist.generator_spec"


def save_generator(
    module_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
    spec: GeneratorSpec,
    folder: str | os.PathLike,
    weights_name: str = WEIGHTS_NAME,
) -> Path:
    """Write `folder/generator.safetensors` (or `weights_name`) and `folder/generator.json`, each atomically.

    Accepts a module (also wrapped by DDP/DeepSpeed or torch.compile) or a state dict (wrapper
    prefixes `module.`/`_orig_mod.` are stripped). The weights are checked against `spec` before
    anything is written. Returns the path of the weights file.
    """
    sd = state_dict_of(module_or_state_dict)
    with torch.device("meta"):
        reference = spec.build()
    check_state_dict(reference, sd, "generator state dict")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    spec_json = json.dumps(spec.to_dict(), indent=2) + "\n"
    weights = folder / weights_name
    try:
        with atomic_path(weights, suffix=".safetensors") as tmp:
            save_file(sd, str(tmp), metadata={"format": "pt", _META_KEY: json.dumps(spec.to_dict())})
    except SafetensorError as exc:  # safetensors reports a failed write (disk full) as its own error
        raise StorageError(f"could not write {weights}: {str(exc).strip().splitlines()[0][:200]}") from None
    atomic_write_text(folder / SPEC_NAME, spec_json)
    return weights


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The weights file a user meant: `generator.safetensors` itself, its `generator.json`, the
    folder holding them, or a training run folder (its `final/` export)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist")
    if path.is_dir():
        for cand in (path / WEIGHTS_NAME, path / "final" / WEIGHTS_NAME):
            if cand.is_file():
                return cand
        raise UserError(f"checkpoint folder {path} holds no {WEIGHTS_NAME} (nor final/{WEIGHTS_NAME})")
    if path.name == SPEC_NAME or path.suffix == ".json":
        cand = path.with_name(WEIGHTS_NAME)
        if not cand.is_file():
            raise UserError(f"{path} has no {WEIGHTS_NAME} beside it")
        return cand
    return path


def read_spec(weights: Path) -> GeneratorSpec:
    """The spec of a weights file: generator.json beside it, else the safetensors metadata."""
    spec_file = weights.with_name(SPEC_NAME)
    if spec_file.is_file():
        try:
            d = json.loads(spec_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"cannot read {spec_file}: {exc}") from None
        return GeneratorSpec.from_dict(d)
    try:
        with safe_open(str(weights), framework="pt") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{weights} is not a safetensors file ({exc})") from None
    if _META_KEY not in meta:
        raise UserError(f"{weights} has no {SPEC_NAME} beside it and no architecture in its metadata")
    try:
        return GeneratorSpec.from_dict(json.loads(meta[_META_KEY]))
    except json.JSONDecodeError as exc:
        raise UserError(f"{weights}: architecture metadata is not JSON ({exc})") from None


def load_generator(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, GeneratorSpec]:
    """Load a generator saved by `save_generator` from the weights file, its JSON, the folder
    holding them, or a run folder (uses `final/`). Returns (module, spec); the module is in
    train mode as built: pick the inference mode with `set_inference_mode`."""
    weights = resolve_checkpoint(path)
    if weights.suffix in (".pth", ".pt", ".ckpt"):
        raise UserError(
            f"{weights} looks like a PyTorch file, not our generator.safetensors; "
            "for a reference checkpoint use --from-reference --arch NAME"
        )
    spec = read_spec(weights)
    try:
        sd = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{weights} is not a readable safetensors file ({exc})") from None
    model = spec.build()
    load_strict(model, sd, str(weights))
    return model.to(map_location), spec


INFERENCE_MODES = ("paper", "eval")


def set_inference_mode(model: nn.Module, mode: str) -> nn.Module:
    """`paper`: the paper's test-time behaviour (train mode: dropout on, BatchNorm with the test
    batch's statistics), the reference's default; `eval`: model.eval() (no dropout, running stats)."""
    if mode == "paper":
        return model.train()
    if mode == "eval":
        return model.eval()
    raise ValueError(f"unknown inference mode {mode!r}; choose one of: {', '.join(INFERENCE_MODES)}")
