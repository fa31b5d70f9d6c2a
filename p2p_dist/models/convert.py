"""Reference checkpoints in: `latest_net_G.pth`-style files of the reference implementation
(junyanz/pytorch-CycleGAN-and-pix2pix, models/networks.py) for unet_256, unet_128 and
resnet_9blocks with batch or instance norm, loaded into our generators with identical outputs.

The key mapping is explicit (`reference_module_name`) and strict: a file that does not match
raises a UserError naming the first missing or unexpected key; nothing is ever partly loaded.

Reference layouts
-----------------
U-Net: `UnetGenerator.model` is the outermost `UnetSkipConnectionBlock`; every block has a `.model`
Sequential:
  outermost     [downconv, submodule, uprelu, upconv, tanh]                          submodule at 1
  intermediate  [downrelu, downconv, downnorm, submodule, uprelu, upconv, upnorm(, dropout)]  at 3
  innermost     [downrelu, downconv, uprelu, upconv, upnorm]
so level i (0 = outermost) lives under `model.model.` (i=0) or
`model.model.1.` + `model.3.` * (i-1) + `model.` (i >= 1).
ResNet: one flat Sequential `model.N`: 0 pad, 1 conv7, 2 norm, 3 relu, 4/5/6 and 7/8/9 the two
downsampling conv/norm/relu, 10-18 the ResnetBlocks (`conv_block`: 0 pad, 1 conv, 2 norm, 3 relu,
[4 dropout], pad, conv, norm -> conv/norm at 5/6, or 6/7 with dropout), 19/20/21 and 22/23/24 the
transposed convs, 25 pad, 26 conv7, 27 tanh.

Legacy files: InstanceNorm in the reference has no running statistics, but files saved by old
PyTorch versions may carry `running_mean`/`running_var`/`num_batches_tracked` for InstanceNorm
layers; the reference deletes them when loading (patch_instance_norm_state_dict) and so do we,
explicitly (`ConversionReport.dropped`). Files from before PyTorch 0.4.1 lack BatchNorm's
`num_batches_tracked`; it is set to 0 (`ConversionReport.filled`): it does not affect outputs.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from p2p_dist.errors import UserError
from p2p_dist.models.generator import build_generator
from p2p_dist.models.registry import GENERATORS, REFERENCE_GENERATORS, REFERENCE_NORMS, unet_levels
from p2p_dist.models.statedict import describe_key_mismatch, state_dict_of, strip_prefixes

_LEGACY_INSTANCE_KEYS = ("running_mean", "running_var", "num_batches_tracked")


def _check_arch(arch: str, norm: str) -> None:
    if arch not in REFERENCE_GENERATORS:
        extra = " (the reference has no encoder-decoder generator)" if arch in GENERATORS else ""
        raise UserError(
            f"no reference layout for generator {arch!r}{extra}; choose one of: {', '.join(REFERENCE_GENERATORS)}"
        )
    if norm not in REFERENCE_NORMS:
        raise UserError(
            f"reference checkpoints are supported with norm batch or instance, not {norm!r} "
            "(the reference's norm 'none' drops every conv bias; ours keeps them)"
        )


def _unet_level_prefix(level: int) -> str:
    if level == 0:
        return "model.model."
    return "model.model.1." + "model.3." * (level - 1) + "model."


def reference_module_name(arch: str, module_name: str, dropout: bool = True) -> str:
    """The reference's name of our module `module_name` (e.g. `down.2.1` -> `model.model.1.model.3.model.1`
    for unet_256). Raises KeyError for modules that have no counterpart holding state."""
    if arch.startswith("unet_"):
        levels = unet_levels(arch)
        m = re.fullmatch(r"(down|up)\.(\d+)\.(\d+)", module_name)
        if not m:
            raise KeyError(module_name)
        side, level, idx = m.group(1), int(m.group(2)), int(m.group(3))
        if level == 0:
            table = {("down", 0): 0, ("up", 1): 3}
        elif level == levels - 1:
            table = {("down", 1): 1, ("up", 1): 3, ("up", 2): 4}
        else:
            table = {("down", 1): 1, ("down", 2): 2, ("up", 1): 5, ("up", 2): 6}
        if (side, idx) not in table or not 0 <= level < levels:
            raise KeyError(module_name)
        return f"{_unet_level_prefix(level)}{table[side, idx]}"
    if arch == "resnet_9blocks":
        fixed = {
            "stem.1": 1,
            "stem.2": 2,
            "down.0.0": 4,
            "down.0.1": 5,
            "down.1.0": 7,
            "down.1.1": 8,
            "up.0.0": 19,
            "up.0.1": 20,
            "up.1.0": 22,
            "up.1.1": 23,
            "head.1": 26,
        }
        if module_name in fixed:
            return f"model.{fixed[module_name]}"
        m = re.fullmatch(r"blocks\.(\d)\.(conv1|conv2)\.([12])", module_name)
        if not m:
            raise KeyError(module_name)
        block, part, idx = int(m.group(1)), m.group(2), int(m.group(3))
        inner = idx if part == "conv1" else idx + 4 + (1 if dropout else 0)
        return f"model.{10 + block}.conv_block.{inner}"
    raise KeyError(module_name)


def _stateful_modules(model: nn.Module):
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nn.InstanceNorm2d)):
            yield name, module


def reference_key_map(
    arch: str, norm: str = "batch", in_channels: int = 3, out_channels: int = 3, ngf: int = 64, dropout: bool = True
) -> dict[str, str]:
    """Our state-dict key -> the reference's key, for every entry of our generator's state dict."""
    _check_arch(arch, norm)
    with torch.device("meta"):
        model = build_generator(arch, in_channels, out_channels, ngf, norm, dropout)
    mapping = {}
    for key in model.state_dict():
        module_name, _, leaf = key.rpartition(".")
        mapping[key] = f"{reference_module_name(arch, module_name, dropout)}.{leaf}"
    return mapping


@dataclass
class ConversionReport:
    """What a conversion did besides renaming: legacy keys dropped, missing counters filled."""

    dropped: list[str] = field(default_factory=list)
    filled: list[str] = field(default_factory=list)


def guess_reference_layout(keys) -> str | None:
    """A short description of what a reference state dict looks like, for error messages."""
    keys = list(keys)
    if not keys:
        return None
    norm = "batch" if any(k.endswith("running_mean") for k in keys) else "instance or none"
    if any(".conv_block." in k for k in keys):
        drop = any(re.search(r"conv_block\.7\.", k) for k in keys) or (
            norm != "batch" and any(re.search(r"conv_block\.6\.weight", k) for k in keys)
        )
        return f"resnet with {norm} norm, dropout={'on' if drop else 'off'}"
    if all(k.startswith("model.model.") for k in keys):
        # + 2: the outermost level and level 1, then one level per `model.3.` nesting
        depth = max(len(re.findall(r"model\.3\.(?=model\.)", k)) for k in keys) + 2
        name = {8: "unet_256", 7: "unet_128"}.get(depth, f"a {depth}-level U-Net")
        return f"{name} with {norm} norm"
    return None


def from_reference_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    arch: str,
    norm: str = "batch",
    in_channels: int = 3,
    out_channels: int = 3,
    ngf: int = 64,
    dropout: bool = True,
    what: str = "reference state dict",
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Rename a reference state dict to our keys, strictly. Returns (our state dict, report)."""
    _check_arch(arch, norm)
    sd = strip_prefixes(state_dict)
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            raise UserError(f"{what}: entry {k!r} is a {type(v).__name__}, not a tensor")
    with torch.device("meta"):
        model = build_generator(arch, in_channels, out_channels, ngf, norm, dropout)
    expected = model.state_dict()
    mapping = reference_key_map(arch, norm, in_channels, out_channels, ngf, dropout)
    report = ConversionReport()
    # legacy running statistics of InstanceNorm layers (the reference deletes them too)
    instance_refs = {
        reference_module_name(arch, name, dropout)
        for name, m in _stateful_modules(model)
        if isinstance(m, nn.InstanceNorm2d)
    }
    # (a layer with a weight is a BatchNorm of another file, not a legacy InstanceNorm: left to fail)
    file_keys = list(sd)
    for key in file_keys:
        module, _, leaf = key.rpartition(".")
        if module in instance_refs and leaf in _LEGACY_INSTANCE_KEYS and f"{module}.weight" not in sd:
            report.dropped.append(key)
            del sd[key]
    # counters missing from files written before PyTorch 0.4.1
    # (only for BatchNorm layers whose other statistics are in the file)
    for ref in mapping.values():
        module = ref[: -len(".num_batches_tracked")]
        if ref.endswith(".num_batches_tracked") and ref not in sd and f"{module}.running_mean" in sd:
            sd[ref] = torch.tensor(0, dtype=torch.long)
            report.filled.append(ref)
    mismatch = describe_key_mismatch(list(mapping.values()), sd)
    if mismatch:
        guess = guess_reference_layout(file_keys)
        hint = f"; the file looks like {guess}" if guess else ""
        raise UserError(
            f"{what} does not match reference {arch} with {norm} norm "
            f"(dropout={'on' if dropout else 'off'}): " + mismatch + hint
        )
    out = {}
    for ours, ref in mapping.items():
        value = sd[ref]
        if tuple(value.shape) != tuple(expected[ours].shape):
            raise UserError(
                f"{what} does not match reference {arch} with in_channels={in_channels}, "
                f"out_channels={out_channels}, ngf={ngf}: {ref!r} has shape {tuple(value.shape)}, "
                f"expected {tuple(expected[ours].shape)}"
            )
        out[ours] = value
    return out, report


def to_reference_state_dict(
    module_or_state_dict,
    arch: str,
    norm: str = "batch",
    in_channels: int = 3,
    out_channels: int = 3,
    ngf: int = 64,
    dropout: bool = True,
) -> dict[str, torch.Tensor]:
    """Our generator's state dict in the reference's key layout (for users of the reference code)."""
    sd = state_dict_of(module_or_state_dict)
    mapping = reference_key_map(arch, norm, in_channels, out_channels, ngf, dropout)
    if set(sd) != set(mapping):
        missing = sorted(set(mapping) - set(sd))
        extra = sorted(set(sd) - set(mapping))
        raise UserError(
            f"state dict is not a {arch} generator with {norm} norm: "
            + (f"missing {missing[0]!r}" if missing else f"unexpected {extra[0]!r}")
        )
    return {mapping[k]: v for k, v in sd.items()}


def read_torch_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a `.pth` state dict safely (weights_only); UserError when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"reference checkpoint {path} does not exist"
            if not path.exists()
            else f"reference checkpoint {path} is not a file"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types here (UnpicklingError, RuntimeError, EOFError...)
        lines = [x.strip() for x in str(exc).strip().splitlines() if x.strip()]
        if isinstance(exc, pickle.UnpicklingError):  # torch's first line only advises weights_only=False
            advice = ("Weights only load failed", "Please file", "Check the doc")
            detail = [x for x in lines if not x.startswith(advice)]
            reason = f"not a PyTorch state-dict file ({detail[0] if detail else 'unpickling failed'})"
        else:
            reason = lines[0] if lines else type(exc).__name__
        raise UserError(f"cannot read {path} as a PyTorch state dict: {reason}") from None
    if not isinstance(obj, Mapping):
        raise UserError(f"{path} holds a {type(obj).__name__}, not a state dict")
    if not obj:
        raise UserError(f"{path} holds an empty state dict")
    return dict(obj)


def load_reference_generator(
    path: str | os.PathLike,
    arch: str,
    norm: str = "batch",
    in_channels: int = 3,
    out_channels: int = 3,
    ngf: int = 64,
    dropout: bool = True,
    report: ConversionReport | None = None,
) -> nn.Module:
    """Our generator holding the weights of a reference `*_net_G.pth` file, with the reference's
    outputs. `dropout` must be what the file was trained with (for resnet it changes the key
    layout: pix2pix trains with dropout, CycleGAN without). Pass a ConversionReport to learn
    which legacy keys were dropped or filled."""
    _check_arch(arch, norm)
    sd = read_torch_state_dict(path)
    ours, rep = from_reference_state_dict(sd, arch, norm, in_channels, out_channels, ngf, dropout, what=str(path))
    if report is not None:
        report.dropped[:], report.filled[:] = rep.dropped, rep.filled
    model = build_generator(arch, in_channels, out_channels, ngf, norm, dropout)
    model.load_state_dict(ours, strict=True)
    return model
