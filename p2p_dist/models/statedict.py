"""State-dict helpers shared by our checkpoint format and the reference converter: unwrap
wrapped modules, strip wrapper prefixes, and compare a state dict against a model strictly."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from p2p_dist.errors import UserError

# DataParallel/DistributedDataParallel add `module.`, torch.compile adds `_orig_mod.`
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def unwrap_module(module: nn.Module) -> nn.Module:
    """The plain module inside DDP/DataParallel/DeepSpeed (`.module`) or torch.compile (`._orig_mod`)."""
    while True:
        if hasattr(module, "_orig_mod") and isinstance(module._orig_mod, nn.Module):
            module = module._orig_mod
        elif hasattr(module, "module") and isinstance(module.module, nn.Module):
            module = module.module
        else:
            return module


def strip_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes (`module.`, `_orig_mod.`, in any order and repetition) from every key."""
    out = {}
    for key, value in state_dict.items():
        k = key
        changed = True
        while changed:
            changed = False
            for p in WRAPPER_PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p) :], True
        if k in out:
            raise UserError(f"state dict has two entries for {k!r} once wrapper prefixes are removed")
        out[k] = value
    return out


def state_dict_of(module_or_state_dict: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A clean (prefix-free, detached, contiguous, CPU) state dict from a module or a state dict."""
    if isinstance(module_or_state_dict, nn.Module):
        sd = unwrap_module(module_or_state_dict).state_dict()
    elif isinstance(module_or_state_dict, Mapping):
        sd = module_or_state_dict
    else:
        raise TypeError(f"expected an nn.Module or a state dict, got {type(module_or_state_dict).__name__}")
    sd = strip_prefixes(sd)
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            raise UserError(f"state dict entry {k!r} is a {type(v).__name__}, not a tensor")
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}


def describe_key_mismatch(wanted, present) -> str:
    """'' when the key sets agree, else "missing key 'x' (and N more), unexpected key 'y'"."""
    missing = [k for k in wanted if k not in present]
    wanted_set = set(wanted)
    unexpected = [k for k in present if k not in wanted_set]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            parts.append(f"{label} key {keys[0]!r}" + (f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""))
    return ", ".join(parts)


def check_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise UserError naming the first missing key, the first unexpected key, or the first shape
    mismatch between `state_dict` and `model` (`what` names the file in the message)."""
    expected = model.state_dict()
    mismatch = describe_key_mismatch(expected, state_dict)
    if mismatch:
        raise UserError(f"{what} does not match the architecture: {mismatch}")
    for k, v in expected.items():
        got = state_dict[k]
        if tuple(got.shape) != tuple(v.shape):
            raise UserError(
                f"{what} does not match the architecture: {k!r} has shape {tuple(got.shape)}, expected {tuple(v.shape)}"
            )


def load_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> nn.Module:
    """Check, then load every entry of `state_dict` into `model` (nothing partial)."""
    check_state_dict(model, state_dict, what)
    model.load_state_dict(dict(state_dict), strict=True)
    return model
