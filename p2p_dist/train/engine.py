"""Distributed glue: one Engine over Accelerate that the training loop talks to.

The loop never calls Accelerate directly; it asks the engine to prepare the models, to run a
backward pass and an optimizer step for "G" or "D", to agree across ranks (finite losses, stop
requests), and to save or load state. DDP (and a single process) go through `accelerator.prepare`.

Facts this module relies on (DESIGN.md section 4): on a host without CUDA the Accelerator must be
created with `cpu=True` or several launched processes each think they are alone; SyncBatchNorm
only exists on CUDA; BatchNorm D called twice before one backward needs `broadcast_buffers=False`.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from p2p_dist.config import Config
from p2p_dist.errors import UserError
from p2p_dist.train import comm

TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}


def trackers(log_with: str) -> list[str] | None:
    """Accelerate trackers for train.log_with; a named tracker whose package is missing is an error,
    `all` takes those that are installed."""
    import importlib.util

    def installed(name: str) -> bool:
        return any(importlib.util.find_spec(pkg) is not None for pkg in TRACKER_PACKAGES[name])

    if log_with == "none":
        return None
    if log_with == "all":
        return [name for name in TRACKER_PACKAGES if installed(name)] or None
    if not installed(log_with):
        raise UserError(f"train.log_with={log_with} needs the {TRACKER_PACKAGES[log_with][0]} package "
                        f"(pip install {TRACKER_PACKAGES[log_with][0]}), or set train.log_with=none")
    return [log_with]


@dataclass
class Prepared:
    G: nn.Module
    D: nn.Module | None
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer | None


class Engine:
    """Accelerate (single process or DDP)."""

    kind = "ddp"
    save_state_has_collectives = False  # Accelerate's save_state for DDP: each rank writes, no collective

    def __init__(self, cfg: Config):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        self.cfg = cfg
        cpu = not torch.cuda.is_available()
        log_with = trackers(cfg.train.log_with)
        self.accelerator = Accelerator(
            cpu=cpu,
            mixed_precision=cfg.train.mixed_precision,
            log_with=log_with,
            project_dir=cfg.train.output_dir,
            kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False, **comm.ddp_kwargs(cfg))],
        )
        self.device = self.accelerator.device
        self.optimizers: dict[str, torch.optim.Optimizer] = {}

    # --- topology -----------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0

    @property
    def world_size(self) -> int:
        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    @property
    def local_rank(self) -> int:
        return int(os.environ.get("LOCAL_RANK", "0"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def num_machines(self) -> int:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size))
        return max(1, self.world_size // max(1, local_world))

    # --- models -------------------------------------------------------------------------------
    def prepare(self, G: nn.Module, D: nn.Module | None, opt_G, opt_D) -> Prepared:
        if self.device.type == "cuda" and self.world_size > 1:
            G = nn.SyncBatchNorm.convert_sync_batchnorm(G)
            if D is not None:
                D = nn.SyncBatchNorm.convert_sync_batchnorm(D)
        with warnings.catch_warnings():
            # torch deprecates broadcast_buffers in favour of forward_sync_buffers, which Accelerate's
            # DDP kwargs cannot pass yet; the flag still does what we need (no buffer sync per forward)
            warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated", category=FutureWarning)
            if D is None:
                G, opt_G = self.accelerator.prepare(G, opt_G)
            else:
                G, D, opt_G, opt_D = self.accelerator.prepare(G, D, opt_G, opt_D)
        comm.register_comm_hooks(self.cfg, G, D)  # train.grad_compression
        self.optimizers = {"G": opt_G} if opt_D is None else {"G": opt_G, "D": opt_D}
        return Prepared(G, D, opt_G, opt_D)

    def unwrap(self, model: nn.Module) -> nn.Module:
        return self.accelerator.unwrap_model(model)

    def autocast(self):
        if self.cfg.train.mixed_precision == "no":
            return contextlib.nullcontext()
        return self.accelerator.autocast()

    def backward_step(self, name: str, loss: torch.Tensor) -> None:
        """Backward pass of `loss`, then the step of optimizer `name` ("G" or "D")."""
        opt = self.optimizers[name]
        self.accelerator.backward(loss)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def set_lr(self, lr: float) -> None:
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group["lr"] = lr

    # --- agreement across ranks ---------------------------------------------------------------
    def _all_reduce_max(self, values: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(values, op=dist.ReduceOp.MAX)
        return values

    def all_finite(self, loss: torch.Tensor) -> bool:
        """True when the loss is finite on every rank (one small collective, all ranks agree)."""
        bad = (~torch.isfinite(loss.detach().float())).float().reshape(1)
        return bool(self._all_reduce_max(bad).item() == 0)

    def any_rank(self, flag: bool) -> bool:
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        return bool(self._all_reduce_max(value).item() > 0)

    def mean_over_ranks(self, values: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            values = values.clone()
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
            values /= self.world_size
        return values

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    # --- state --------------------------------------------------------------------------------
    def save_state(self, folder: str) -> None:
        """Models, optimizers and RNG states of every rank (all ranks call this)."""
        self.accelerator.save_state(folder)

    def load_state(self, folder: str) -> None:
        if (Path(folder) / "engine.json").is_file():  # written by the DeepSpeed engine only
            raise UserError(
                f"checkpoint {folder} was written by DeepSpeed; resume it with a DeepSpeed accelerate config "
                "(recipes/accelerate/deepspeed_zero2.yaml) or start a new run with train.resume=none"
            )
        self.accelerator.load_state(folder)

    def end(self) -> None:
        """Trackers finished, then the process group destroyed. The DDP wrappers are released first
        (the caller drops its own references before): a DDP object that outlives its gloo group into
        interpreter shutdown can abort the process ("terminate called without an active exception")."""
        self.optimizers = {}
        self.accelerator.free_memory()
        self.accelerator.end_training()


def build_engine(cfg: Config) -> Engine:
    """The DeepSpeed engine when `accelerate launch` was given a DeepSpeed config, else Accelerate."""
    from p2p_dist.train.deepspeed_engine import DeepSpeedEngine, deepspeed_request

    request = deepspeed_request()
    if request is None:
        return Engine(cfg)
    return DeepSpeedEngine(cfg, request)
