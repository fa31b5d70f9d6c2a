"""The interface every engine offers the training run, and what all engines share.

What an engine owns: docs/architecture.md (`engines/`). `run.py`, `loop.py` and `monitor.py` talk
to this interface only.

Host syncs: every place where the host waits for a device value or a collective result goes
through `to_host(...)`, which counts it (`host_syncs`; so do the run's flags read at once,
`accounting.StepFlags`); bench/train_throughput.py reports the count per step,
tests/unit/test_train_engines.py holds `train_step` to none (with fused Adam) and
tests/unit/test_train_run_step.py a real run's steady-state step to none.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from p2p_dist.config import Config, ConfigError
from p2p_dist.errors import UserError
from p2p_dist.models.statedict import unwrap_module

TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}

SYNC_BN_NEEDS_CUDA = (
    "model.sync_bn=true needs CUDA GPUs: torch's SyncBatchNorm does not run on CPU tensors "
    "with several processes; set model.sync_bn=false (per-process BatchNorm statistics)"
)


def trackers(log_with: str) -> list[str] | None:
    """Accelerate trackers for train.log_with; a named tracker whose package is missing is an error,
    `all` takes those that are installed."""

    def installed(name: str) -> bool:
        return any(importlib.util.find_spec(pkg) is not None for pkg in TRACKER_PACKAGES[name])

    if log_with == "none":
        return None
    if log_with == "all":
        return [name for name in TRACKER_PACKAGES if installed(name)] or None
    if not installed(log_with):
        raise UserError(
            f"train.log_with={log_with} needs the {TRACKER_PACKAGES[log_with][0]} package "
            f"(pip install {TRACKER_PACKAGES[log_with][0]}), or set train.log_with=none"
        )
    return [log_with]


@dataclass
class StepModels:
    """What the step calls: G and D as the engine prepared them (DDP / DeepSpeed wrappers), and D's
    plain module for the G step, where D is frozen and gets no update (`FrozenParameters`)."""

    G: nn.Module
    D: nn.Module | None  # None for the L1-only objective
    D_frozen: nn.Module | None

    def __post_init__(self):
        self.buffers = KeptBuffers(self.G, self.D)  # D_frozen's buffers are D's


class KeptBuffers:
    """The models' buffers (BatchNorm running statistics and batch counts), put back as they were
    before a skipped step, on the device: a training forward over a non-finite batch writes NaN into
    them, which would leave the eval-mode generator (samples, validation, the exported file) NaN.
    The buffers are grouped by dtype and shape kind, each group saved as one flat tensor: saving is
    one op per group, restoring four (cat, where, split, copy), whatever the number of layers."""

    def __init__(self, *modules: nn.Module | None):
        groups: dict[tuple, list[torch.Tensor]] = {}
        for b in (b for m in modules if m is not None for b in m.buffers()):
            if b.dim() > 1:
                raise ValueError(f"a buffer of shape {tuple(b.shape)}: only 0- and 1-dimensional buffers are kept")
            groups.setdefault((b.dtype, b.device, b.dim()), []).append(b)
        self.groups = list(groups.values())
        self.sizes = [[b.numel() for b in group] for group in self.groups]

    @staticmethod
    def _flat(group: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(group) if group[0].dim() == 0 else torch.cat(group)

    @torch.no_grad()
    def save(self) -> list[torch.Tensor]:
        return [self._flat(group) for group in self.groups]

    @torch.no_grad()
    def restore_if(self, skipped: torch.Tensor, saved: list[torch.Tensor]) -> None:
        """Each buffer back to its `saved` value where `skipped` (the step's 0/1 flag) is set; else
        rewritten with its own value (bit for bit)."""
        if not self.groups:
            return
        skip = skipped != 0
        for group, sizes, before in zip(self.groups, self.sizes, saved):
            kept = torch.where(skip, before, self._flat(group))
            torch._foreach_copy_(group, kept.unbind() if group[0].dim() == 0 else kept.split(sizes))


class FrozenParameters(nn.Module):
    """`module` computed with its parameters detached: gradients reach its input, never its
    parameters (D in the G step, without toggling requires_grad each step). Its buffers are its own:
    BatchNorm statistics move as in any training forward."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        detached = {name: p.detach() for name, p in self.module.named_parameters()}
        return torch.func.functional_call(self.module, detached, args, kwargs)


def autocast_dtype(precision: str) -> torch.dtype | None:
    return {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


class AutocastForward(nn.Module):
    """`module` whose forward runs under torch.autocast, its output cast to float32: the inference
    view of a model trained under autocast (sample grids, validation), and the frozen-D view of an
    engine whose models autocast inside their own forward (DeepSpeed's torch_autocast), so the G step
    computes D in the same precision as D's own step."""

    def __init__(self, module: nn.Module, device_type: str, dtype: torch.dtype):
        super().__init__()
        self.module, self.device_type, self.dtype = module, device_type, dtype
        self.training = module.training  # what a caller that saves and restores the flag should see

    def forward(self, *args, **kwargs):
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.module(*args, **kwargs).float()


class Engine:
    """Base of all engines: topology, agreement across ranks and host-sync counting.

    Subclasses implement `prepare`, `backward_step`, `set_lr`, the trackers, `save_state`,
    `load_state` and `end`, and set `device` (and `name`, the train.engine value they answer to).
    """

    name = "base"
    kind = "base"  # shown in the start-up line
    # the dtype of the step's autocast regions (`autocast`); None where there is no mixed precision or
    # the engine's models autocast inside their own forward (DeepSpeed)
    step_autocast: torch.dtype | None = None
    graphed = False  # the step runs as one CUDA graph (train.cuda_graph; p2p_dist/train/cuda_graph.py)
    save_state_has_collectives = False  # True: a failed save_state cannot wait for the other ranks

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.device = torch.device("cpu")
        self.host_syncs = 0
        # (name, gradient norm on the device): called between each backward pass and update (health.py)
        self.on_grad_norm: Callable[[str, torch.Tensor], None] | None = None

    # --- topology -----------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0

    @property
    def world_size(self) -> int:
        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def num_machines(self) -> int:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size))
        return max(1, self.world_size // max(1, local_world))

    # --- models -------------------------------------------------------------------------------
    def convert_sync_bn(self, *models: nn.Module | None) -> list[nn.Module | None]:
        """SyncBatchNorm per model.sync_bn, the same rule on every backend (CPU refuses with several
        processes, see SYNC_BN_NEEDS_CUDA). The parameters stay the same objects."""
        if not self.cfg.model.sync_bn:
            return list(models)
        if self.device.type == "cpu" and self.world_size > 1:
            raise ConfigError(SYNC_BN_NEEDS_CUDA)
        return [None if m is None else nn.SyncBatchNorm.convert_sync_batchnorm(m) for m in models]

    def masked_step_supported(self, name: str) -> bool:
        """True when `backward_step(name, loss, skip=flag)` can skip on the device (no host sync)."""
        return False

    # --- agreement across ranks ---------------------------------------------------------------
    def to_host(self, value: torch.Tensor) -> list[float]:
        """The one way values come back to the host (counted)."""
        self.host_syncs += 1
        return value.tolist()

    def max_over_ranks(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise max over ranks, on the device (no host sync)."""
        if self.world_size > 1:
            dist.all_reduce(values, op=dist.ReduceOp.MAX)
        return values

    def any_rank(self, flag: bool) -> bool:
        """One collective and one host sync: true on every rank when `flag` is true on any rank."""
        return self.to_host(self.max_over_ranks(torch.tensor([1.0 if flag else 0.0], device=self.device)))[0] > 0

    def mean_over_ranks(self, values: torch.Tensor) -> list[float]:
        if self.world_size > 1:
            values = values.clone()
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
            values /= self.world_size
        return self.to_host(values)

    def broadcast_object(self, obj):
        """Rank 0's `obj` on every rank."""
        if self.world_size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    # --- the rest, per engine -----------------------------------------------------------------
    def prepare(self, G: nn.Module, D: nn.Module | None) -> StepModels:
        raise NotImplementedError

    def backward_step(self, name: str, loss: torch.Tensor, skip: torch.Tensor | None = None) -> None:
        raise NotImplementedError

    def report_grad_norm(self, name: str, params: Iterable[torch.Tensor]) -> None:
        """`on_grad_norm` with the 2-norm of `params`' gradients: four ops on the device (no host
        sync) whatever the parameter count (torch.nn.utils.get_total_norm adds a `.to` per tensor)."""
        if self.on_grad_norm is not None:
            grads = [p.grad for p in params if p.grad is not None]
            if grads:
                self.on_grad_norm(name, torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))))

    # --- gradient accumulation (train.grad_accum; p2p_dist/train/loop.py) ------------------------
    def no_sync(self, inner: bool) -> contextlib.AbstractContextManager:
        """While `inner`, forwards and backward passes of the wrapped models do not all-reduce
        gradients (an inner micro-batch). One process has nothing to all-reduce."""
        return contextlib.nullcontext()

    def backward(self, name: str, loss: torch.Tensor) -> None:
        """Backward pass of an inner micro-batch of network `name`: gradients add up, no step."""
        loss.backward()

    def set_lr(self, lr: float) -> None:
        raise NotImplementedError

    def autocast(self) -> contextlib.AbstractContextManager:
        """One autocast region around each phase of the step (train_step: the forwards of one
        micro-batch's D step; the frozen-D forwards of the G step), never around a backward pass or an
        update. Within one region a weight is cast once however often it is called (the autocast
        cache lives until the region ends, and D's update comes after it)."""
        if self.step_autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.step_autocast)

    def inference_view(self, model: nn.Module) -> nn.Module:
        """The plain module computing as in training (under train.mixed_precision's autocast), for
        sample grids and validation."""
        plain = unwrap_module(model)
        dtype = autocast_dtype(self.cfg.train.mixed_precision)
        return plain if dtype is None else AutocastForward(plain, self.device.type, dtype)

    def init_trackers(self, config: dict) -> None:
        raise NotImplementedError

    def log_trackers(self, values: dict, step: int) -> None:
        raise NotImplementedError

    def save_state(self, folder: str) -> None:
        raise NotImplementedError

    def load_state(self, folder: str) -> None:
        raise NotImplementedError

    def end(self) -> None:
        raise NotImplementedError


@torch.no_grad()
def nonfinite_flag(*losses: torch.Tensor) -> torch.Tensor:
    """1.0 when any of `losses` (scalars) is not finite, else 0.0: a (1,) float tensor on their device
    (six ops whatever their number)."""
    return torch.isfinite(torch.stack(losses)).all().logical_not().float().reshape(1)


def uses_channels_last(cfg, device: torch.device) -> bool:
    """`train.memory_format`: auto is channels_last on CUDA (tensor cores want NHWC) and PyTorch's
    default (contiguous NCHW) on CPU."""
    if cfg.train.memory_format == "auto":
        return device.type == "cuda"
    return cfg.train.memory_format == "channels_last"


def pads_channels(cfg, device: torch.device) -> bool:
    """Under bf16/fp16 autocast on CUDA the convs whose channel counts are not multiples of 8 (the
    networks' 1/2/3/6-channel ends) compute padded to 8, exactly (p2p_dist/models/channel_pad.py)."""
    return device.type == "cuda" and cfg.train.mixed_precision != "no"


def ready_for_engine(engine: Engine, G: nn.Module, D: nn.Module | None, lr: torch.Tensor | None = None):
    """What every engine does before wrapping: SyncBatchNorm (model.sync_bn), the memory format
    (train.memory_format), the channel padding (`pads_channels`), then one Adam per network
    (capturable, reading `lr`, when given). Returns (G, D, opt_G, opt_D)."""
    from p2p_dist.models.channel_pad import pad_channels
    from p2p_dist.train.build import build_optimizer

    G, D = engine.convert_sync_bn(G, D)
    if uses_channels_last(engine.cfg, engine.device):
        G, D = (None if m is None else m.to(memory_format=torch.channels_last) for m in (G, D))
    if pads_channels(engine.cfg, engine.device):
        pad_channels(G), pad_channels(D)
    opt_G = build_optimizer(G, engine.cfg, lr)
    opt_D = build_optimizer(D, engine.cfg, lr) if D is not None else None
    return G, D, opt_G, opt_D
