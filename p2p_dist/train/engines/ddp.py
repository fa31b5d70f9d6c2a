"""`train.engine=ddp`: Accelerate, one process or DDP (gloo on CPU, NCCL on GPUs).

Mixed precision has one mechanism here: the step's autocast regions (`Engine.autocast`, one per
phase of `train_step`; `inference_view` for samples and validation), not Accelerate's, which wraps
each model's forward in its own region and casts its outputs to float32: D's weights are cast once
for its two calls of the D step, and G's bf16 output reaches D's input pairs without a float32
round trip. The Accelerator is told only about fp16 (its GradScaler in `backward`/`step`; the
forward wrapper it then adds is taken off in `prepare`), so engines of several precisions can live
in one process (Accelerate's state is process-wide).

With the graph step (train.cuda_graph, p2p_dist/train/cuda_graph.py) the engine builds capturable fused
Adams that read one learning-rate tensor (`self.lr`, written by `set_lr`), and with several processes
it leaves the models unwrapped (no DDP reducer in the graph) and all-reduces each network's gradients
over one flat buffer in `backward_step` (comm.all_reduce_flat).

Facts this module relies on: on a host without CUDA the Accelerator must be created with
`cpu=True` or several launched processes each think they are alone; BatchNorm D called twice
before one backward needs `broadcast_buffers=False` (pytorch issues 22095, 110363).
"""

from __future__ import annotations

import contextlib
import warnings

import torch
from torch import nn

from p2p_dist.config import Config
from p2p_dist.errors import UserError
from p2p_dist.models.statedict import unwrap_module
from p2p_dist.train import comm
from p2p_dist.train.engines.base import (
    Engine,
    FrozenParameters,
    StepModels,
    autocast_dtype,
    ready_for_engine,
    trackers,
)
from p2p_dist.train.engines.deepspeed_config import ENGINE_FILE


class DDPEngine(Engine):
    """Accelerate (single process or DDP)."""

    name = "ddp"
    kind = "ddp"

    def __init__(self, cfg: Config, *, mixed_precision: str | None = None, graphed: bool | None = None):
        """`graphed`: build for the graph step whatever train.cuda_graph says (tests run its body on CPU)."""
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        from p2p_dist.train import cuda_graph

        super().__init__(cfg)
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
        self.graphed = cuda_graph.resolve(cfg, "ddp", device_type) if graphed is None else graphed
        self.log_with = trackers(cfg.train.log_with)
        precision = cfg.train.mixed_precision if mixed_precision is None else mixed_precision
        self.step_autocast = autocast_dtype(precision)
        self.accelerator = Accelerator(
            cpu=device_type == "cpu",
            mixed_precision="fp16" if precision == "fp16" else "no",
            log_with=self.log_with,
            project_dir=cfg.train.output_dir,
            kwargs_handlers=[DistributedDataParallelKwargs(**self.ddp_kwargs())],
        )
        self.device = self.accelerator.device
        self.lr = cuda_graph.learning_rate(cfg.optim.lr, self.device) if self.graphed else None
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.wrapped: list[nn.Module] = []

    def ddp_kwargs(self) -> dict:
        """Arguments of torch's DistributedDataParallel (Accelerate passes them on)."""
        return {"broadcast_buffers": False, **comm.ddp_kwargs(self.cfg)}  # bucket size, bucket views

    # --- models -------------------------------------------------------------------------------
    def prepare(self, G: nn.Module, D: nn.Module | None) -> StepModels:
        G, D, opt_G, opt_D = ready_for_engine(self, G, D, lr=self.lr)
        with warnings.catch_warnings():
            # torch deprecates broadcast_buffers in favour of forward_sync_buffers, which Accelerate's
            # DDP kwargs cannot pass yet; the flag still does what we need (no buffer sync per forward)
            warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated", category=FutureWarning)
            if self.graphed:  # placed and autocast like the others, never wrapped in DDP (backward_step reduces)
                G, D = (None if m is None else self.accelerator.prepare_model(m, evaluation_mode=True) for m in (G, D))
                opt_G, opt_D = (None if o is None else self.accelerator.prepare_optimizer(o) for o in (opt_G, opt_D))
            elif D is None:
                G, opt_G = self.accelerator.prepare(G, opt_G)
            else:
                G, D, opt_G, opt_D = self.accelerator.prepare(G, D, opt_G, opt_D)
        for m in (G, D):  # fp16: Accelerate's per-forward autocast and float32 outputs off (`autocast` does it
            # per phase): an instance attribute over the class's forward (its unwrap_model imports DeepSpeed)
            if m is not None and unwrap_module(m).__dict__.pop("_original_forward", None) is not None:
                del unwrap_module(m).__dict__["forward"]
        self.optimizers = {"G": opt_G} if opt_D is None else {"G": opt_G, "D": opt_D}
        self._share_lr()
        self.wrapped = [] if self.graphed else [m for m in (G, D) if m is not None]  # DDP modules (no_sync)
        comm.register_comm_hooks(self.cfg, G, D)  # train.grad_compression
        models = StepModels(G=G, D=D, D_frozen=FrozenParameters(unwrap_module(D)) if D is not None else None)
        if self.cfg.train.compile:  # G, D and the frozen D (meant for GPUs: slower on CPU, bench/README.md)
            models = StepModels(
                *(None if m is None else torch.compile(m) for m in (models.G, models.D, models.D_frozen))
            )
        return models

    def _inner(self, name: str) -> torch.optim.Optimizer:
        opt = self.optimizers[name]
        return getattr(opt, "optimizer", opt)  # Accelerate's AcceleratedOptimizer wraps the torch one

    def masked_step_supported(self, name: str) -> bool:
        # the fused Adam kernel skips its update (and its step count) when `found_inf` is set, as it
        # does for GradScaler; fp16 brings Accelerate's own GradScaler, which sets found_inf itself
        return bool(self._inner(name).defaults.get("fused")) and self.cfg.train.mixed_precision != "fp16"

    def backward_step(self, name: str, loss: torch.Tensor, skip: torch.Tensor | None = None) -> None:
        """Backward pass of `loss`, then the step of optimizer `name` ("G" or "D"). `skip` (a 0/1
        device tensor, the same on every rank) makes the step change nothing; on the device when
        `masked_step_supported(name)`, else read on the host."""
        opt = self.optimizers[name]
        masked = skip is not None and self.masked_step_supported(name)
        if skip is not None and not masked and self.to_host(skip.reshape(-1))[0]:
            opt.zero_grad(set_to_none=True)  # every rank read the same flag: nobody steps
            return
        self.accelerator.backward(loss)
        if self.graphed and self.world_size > 1:
            grads = [p.grad for group in opt.param_groups for p in group["params"] if p.grad is not None]
            comm.all_reduce_flat(grads, self.cfg.train.grad_compression)
        self.report_grad_norm(name, (p for group in opt.param_groups for p in group["params"]))
        if masked:
            inner = self._inner(name)
            inner.found_inf = skip.float().reshape(())
            try:
                opt.step()
            finally:
                del inner.found_inf
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)

    def no_sync(self, inner: bool) -> contextlib.AbstractContextManager:
        """DDP's no_sync on G and D while `inner`: their forwards do not arm the all-reduce and their
        backward passes only add up gradients (Accelerate's no_sync is a no-op on one process)."""
        stack = contextlib.ExitStack()
        if inner:
            for model in self.wrapped:
                stack.enter_context(self.accelerator.no_sync(model))
        return stack

    def backward(self, name: str, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)

    def set_lr(self, lr: float) -> None:
        """The graph step's Adams read `self.lr` on the device: written in place (one small kernel, no sync)."""
        if self.lr is not None:
            self.lr.fill_(lr)
            return
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group["lr"] = lr

    def _share_lr(self) -> None:
        """Every param group reads `self.lr` itself: loading an optimizer state (Accelerate's device placement,
        a resume) puts a copy of the saved learning rate there, which the graph would never see change."""
        if self.lr is not None:
            for opt in self.optimizers.values():
                for group in opt.param_groups:
                    group["lr"] = self.lr

    # --- trackers -----------------------------------------------------------------------------
    def init_trackers(self, config: dict) -> None:
        if self.log_with:
            self.accelerator.init_trackers("p2p-dist", config=config)

    def log_trackers(self, values: dict, step: int) -> None:
        if self.log_with:
            self.accelerator.log(values, step=step)

    # --- state --------------------------------------------------------------------------------
    def save_state(self, folder: str) -> None:
        """Models, optimizers and RNG states of every rank (all ranks call this; no collective)."""
        self.accelerator.save_state(folder)

    def load_state(self, folder: str) -> None:
        from pathlib import Path

        if (Path(folder) / ENGINE_FILE).is_file():  # written by the DeepSpeed engine only
            raise UserError(
                f"checkpoint {folder} was written by DeepSpeed; resume it with train.engine=deepspeed and a DeepSpeed "
                "accelerate config (recipes/accelerate/deepspeed_zero2.yaml) or start a new run with train.resume=none"
            )
        self.accelerator.load_state(folder)
        self._share_lr()

    def end(self) -> None:
        """Trackers finished, then the process group destroyed. The DDP wrappers are released first
        (the caller drops its own references before): a DDP object that outlives its gloo group into
        interpreter shutdown can abort the process ("terminate called without an active exception")."""
        self.optimizers, self.wrapped = {}, []
        self.accelerator.free_memory()
        self.accelerator.end_training()


ENGINE = DDPEngine
