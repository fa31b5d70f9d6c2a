"""Exponential moving average of the generator's weights (`train.ema_decay`, 0 = off).

After every step, on every rank: ema = decay * ema + (1 - decay) * online, for each parameter;
BatchNorm buffers (running mean/var, batch counts) are copied from the online G, which keeps
updating them. A skipped step (non-finite loss) leaves the EMA as it was, masked on the device.
The ranks' online G are identical after each step (DDP averages the gradients, ZeRO-1/2 keep full
parameters), so every rank holds the same EMA without any communication.

Saving, resume and the exported files: README (`train.ema_decay`).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

EMA_FILE = "ema.safetensors"
RAW_WEIGHTS_NAME = "generator_raw.safetensors"


class GeneratorEMA:
    def __init__(self, online: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(online).requires_grad_(False)

    def _tensors(self, online: nn.Module):
        ema_p, on_p = dict(self.module.named_parameters()), dict(online.named_parameters())
        ema_b, on_b = dict(self.module.named_buffers()), dict(online.named_buffers())
        if ema_p.keys() != on_p.keys() or ema_b.keys() != on_b.keys():
            raise ValueError("the EMA generator and the online generator have different parameters")
        return [(ema_p[k], on_p[k]) for k in ema_p], [(ema_b[k], on_b[k]) for k in ema_b]

    @torch.no_grad()
    def update(self, online: nn.Module, skipped: torch.Tensor) -> None:
        """One EMA step from the (unwrapped) online generator, after its optimizer step. `skipped` (the
        step's 0/1 flag on the device) masks it there: a skipped step changes nothing (weight 0, and
        the buffers keep the last good step's values), without a host read."""
        params, buffers = self._tensors(online)
        kept = skipped.reshape(()) == 0
        weight = kept * (1.0 - self.decay)  # a float32 0-dim tensor: 1 - decay, or 0
        torch._foreach_lerp_([e for e, _ in params], [p for _, p in params], [weight] * len(params))
        for e, b in buffers:
            torch.where(kept, b, e, out=e)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()}

    def save(self, folder: str | Path) -> Path:
        from safetensors.torch import save_file

        from p2p_dist.fsutil import atomic_path

        path = Path(folder) / EMA_FILE
        with atomic_path(path, suffix=".safetensors") as tmp:
            save_file(self.state_dict(), str(tmp), metadata={"decay": repr(self.decay)})
        return path

    def load(self, folder: str | Path) -> bool:
        """Restore from a checkpoint folder; False when it holds no EMA (a run that had EMA off:
        the EMA then starts from the online weights as they are)."""
        from safetensors.torch import load_file

        path = Path(folder) / EMA_FILE
        if not path.is_file():
            return False
        state = load_file(str(path))
        own = self.module.state_dict()
        if state.keys() != own.keys():
            from p2p_dist.errors import UserError

            raise UserError(
                f"{path} does not fit this generator (other parameter names): use a new "
                "train.output_dir, or train.resume=none"
            )
        for k, v in state.items():
            own[k].copy_(v)
        return True


def export_generators(online: nn.Module, ema: GeneratorEMA | None, spec, folder: str | Path) -> None:
    """generator.safetensors (+ generator.json): the EMA G when on, else the online G; with EMA
    the online G too, as generator_raw.safetensors."""
    from p2p_dist.models import save_generator

    if ema is None:
        save_generator(online, spec, folder)
        return
    save_generator(online, spec, folder, weights_name=RAW_WEIGHTS_NAME)
    save_generator(ema.module, spec, folder)
