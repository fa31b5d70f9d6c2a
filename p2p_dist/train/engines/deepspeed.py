"""`train.engine=deepspeed`: DeepSpeed ZeRO-1/2 for pix2pix, G and D each their own DeepSpeed engine
(README, "DeepSpeed": mixed precision and what a checkpoint holds).

It calls `deepspeed.initialize` once per model (with the optimizer the run builds from `optim.*`),
which avoids Accelerate's multi-plugin route (that one needs `transformers` and misreports ranks).
An Accelerator still exists, as the launcher configured it but without mixed precision, for the
process group, trackers and barriers (the DDP engine's; this class extends it). It never prepares a
model: on GPUs Accelerate sets up DeepSpeed's process group from the launcher's DeepSpeed config, on
a CPU-only host (`cpu=True`) it ignores that config. The frozen-D view (D's plain module, called
outside D's engine) gets the engine's autocast through `inference_view` (`AutocastForward`).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import random
import re
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from p2p_dist.config import Config, ConfigError
from p2p_dist.errors import UserError
from p2p_dist.fsutil import atomic_write_text
from p2p_dist.train.engines.base import FrozenParameters, StepModels, ready_for_engine
from p2p_dist.train.engines.ddp import DDPEngine
from p2p_dist.train.engines.deepspeed_config import (
    DS_FOLDER,
    ENGINE_FILE,
    REPLICAS_FILE,
    DeepSpeedRequest,
    check_stage,
    deepspeed_request,
    default_ds_config,
    read_ds_config,
    resolve_ds_config,
)


def parameter_digest(module: nn.Module) -> str:
    """SHA-256 over the parameters' bytes (names, shapes, dtypes, values): equal on every rank when
    the replicas agree. Buffers (BatchNorm running statistics) are per rank by design."""
    h = hashlib.sha256()
    for name, p in module.named_parameters():
        t = p.detach().to("cpu").contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


@contextlib.contextmanager
def _weights_only_loads(root: Path):
    """Every torch.load in the block reads weights only: nothing in a checkpoint can run code.

    DeepSpeed's `load_checkpoint` calls torch.load(weights_only=False)
    (deepspeed/runtime/checkpoint_engine/torch_checkpoint_engine.py); TORCH_FORCE_WEIGHTS_ONLY_LOAD=1
    overrides that. Allowed besides torch's types: the three data classes that DeepSpeed's ZeRO
    optimizer state holds (deepspeed 0.19) and numpy's array reconstructor (our rng_state_N.pt)."""
    import pickle

    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    core = np._core if hasattr(np, "_core") else np.core
    allowed = [LossScaler, ZeroStageEnum, fragment_address]
    allowed += [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    saved = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals(allowed):
            yield
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        raise UserError(
            f"checkpoint {root} holds an object that could run code when loaded "
            f"({found.group(1) if found else 'not a weight'}); it is not resumed"
        ) from None
    finally:
        if saved is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = saved


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class DeepSpeedEngine(DDPEngine):
    """G and D as two DeepSpeed engines (ZeRO 0/1/2), behind the `Engine` interface."""

    name = "deepspeed"
    save_state_has_collectives = True  # DeepSpeed's save_checkpoint and our digest gather

    def __init__(self, cfg: Config, request: DeepSpeedRequest | None = None):
        request = deepspeed_request() if request is None else request
        if request is None:
            raise ConfigError(
                "train.engine=deepspeed needs a DeepSpeed accelerate config: launch with accelerate "
                "launch --config_file recipes/accelerate/deepspeed_zero2.yaml (or set train.engine=auto)"
            )
        if cfg.train.compile:
            raise ConfigError(
                "train.compile=true is not supported with the DeepSpeed engines; "
                "train with DDP to compile, or set train.compile=false"
            )
        if cfg.train.grad_compression != "none":
            raise ConfigError(
                "train.grad_compression applies to the DDP engine; with DeepSpeed set "
                "communication_data_type in the DeepSpeed JSON, or train.grad_compression=none"
            )
        if cfg.train.grad_accum != 1:
            raise ConfigError(
                f"train.grad_accum={cfg.train.grad_accum} applies to the DDP engine; with DeepSpeed keep "
                "train.grad_accum=1 and raise train.batch_size (ZeRO-2 reduces gradients on every "
                "micro-batch: DeepSpeed's no_sync refuses it, so accumulating saves no traffic)"
            )
        from p2p_dist.train import cuda_graph

        cuda_graph.resolve(cfg, "deepspeed", "cuda" if torch.cuda.is_available() else "cpu")  # `on` is refused
        if request.config_file is not None:
            raw = read_ds_config(request.config_file)
            source = f"DeepSpeed config {request.config_file}"
            zero = raw.get("zero_optimization")
            stage = zero.get("stage", 0) if isinstance(zero, dict) else 0
            check_stage(stage)
            if request.zero_stage is not None and request.zero_stage != stage:
                raise ConfigError(
                    f"{source} sets zero_optimization.stage={stage} but the accelerate config says "
                    f"zero_stage={request.zero_stage}; keep one of them"
                )
        else:
            stage = check_stage(2 if request.zero_stage is None else request.zero_stage)
            raw, source = default_ds_config(stage), f"DeepSpeed ZeRO-{stage} defaults"
        if not torch.cuda.is_available():
            os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before the first `import deepspeed`
        super().__init__(cfg, mixed_precision="no", graphed=False)  # DeepSpeed's torch_autocast does it (one mechanism)
        # validate with the real world size before DeepSpeed touches anything
        self.ds_config = resolve_ds_config(raw, cfg, self.world_size, source=source)
        self.zero_stage = self.ds_config["zero_optimization"]["stage"]
        self.kind = f"DeepSpeed ZeRO-{self.zero_stage}"
        self.engines: dict[str, nn.Module] = {}
        import deepspeed  # noqa: F401  (imported late: it is slow and only needed here)

        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        warnings.filterwarnings("ignore", message=r".*all_gather_into_tensor.* is deprecated", category=FutureWarning)
        if self.device.type == "cpu":
            # DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce kernel on first use
            # (about a minute, needs a C++ toolchain); CPU runs are for testing, gloo is enough.
            import deepspeed.ops

            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False

    # --- models -------------------------------------------------------------------------------
    def prepare(self, G: nn.Module, D: nn.Module | None) -> StepModels:
        import deepspeed

        G, D, opt_G, opt_D = ready_for_engine(self, G, D)
        prepared = {}
        for name, model, opt in (("G", G, opt_G), ("D", D, opt_D)):
            if model is None:
                continue
            # ZeRO flattens the parameters into contiguous buffers: channels_last (train.memory_format)
            # then applies to activations only
            model = model.to(device=self.device, memory_format=torch.contiguous_format)
            engine, optimizer, _, _ = deepspeed.initialize(
                model=model, optimizer=opt, config=copy.deepcopy(self.ds_config)
            )
            self.engines[name] = engine
            self.optimizers[name] = optimizer
            prepared[name] = (engine, optimizer)
        G_e, D_e = prepared["G"][0], prepared.get("D", (None, None))[0]
        return StepModels(G=G_e, D=D_e, D_frozen=None if D_e is None else FrozenParameters(self.inference_view(D_e)))

    def masked_step_supported(self, name: str) -> bool:
        return False

    def backward_step(self, name: str, loss: torch.Tensor, skip: torch.Tensor | None = None) -> None:
        """DeepSpeed's optimizers take no `found_inf`: a `skip` flag is read on the host first."""
        if skip is not None and self.to_host(skip.reshape(-1))[0]:
            return
        engine = self.engines[name]
        engine.backward(loss)
        if not self.zero_stage:  # ZeRO-1/2 partition the gradients and report their global norm from step
            self.report_grad_norm(name, engine.module.parameters())
        engine.step()  # also zeroes the gradients
        norm = engine.get_global_grad_norm() if self.zero_stage else None  # inf after an fp16 overflow
        if norm is not None and self.on_grad_norm is not None:
            self.on_grad_norm(name, torch.as_tensor(norm, device=self.device).float())

    def set_lr(self, lr: float) -> None:
        for engine in self.engines.values():
            for group in engine.optimizer.param_groups:
                group["lr"] = lr

    # --- state --------------------------------------------------------------------------------
    def save_state(self, folder: str) -> None:
        """Every rank: each engine's checkpoint (optimizer partitions), RNG state; rank 0 the rest."""
        root = Path(folder)
        for name, engine in self.engines.items():
            engine.save_checkpoint(str(root / DS_FOLDER), tag=name, save_latest=False)
        torch.save(_rng_state(), root / f"rng_state_{self.rank}.pt")
        digests = {name: parameter_digest(engine.module) for name, engine in self.engines.items()}
        gathered: list = [None] * self.world_size
        if self.world_size > 1:
            dist.all_gather_object(gathered, digests)
        else:
            gathered = [digests]
        if self.is_main:
            replicas = {name: [d[name] for d in gathered] for name in self.engines}
            identical = all(len(set(v)) == 1 for v in replicas.values())
            atomic_write_text(root / REPLICAS_FILE, json.dumps({"identical": identical, "digests": replicas}, indent=2))
            if not identical:
                print(f"warning: model weights differ across ranks in {root.name} (see {REPLICAS_FILE})", flush=True)
            atomic_write_text(
                root / ENGINE_FILE,
                json.dumps(
                    {
                        "engine": "deepspeed",
                        "zero_stage": self.zero_stage,
                        "world_size": self.world_size,
                        "models": sorted(self.engines),
                        "mixed_precision": self.cfg.train.mixed_precision,
                    },
                    indent=2,
                ),
            )

    def load_state(self, folder: str) -> None:
        root = Path(folder)
        meta_path = root / ENGINE_FILE
        if not meta_path.is_file() or not (root / DS_FOLDER).is_dir():
            raise UserError(
                f"checkpoint {root} was not written by the DeepSpeed engine; resume it with the launcher "
                "config that wrote it, or start a new run (train.resume=none)"
            )
        meta = json.loads(meta_path.read_text())
        if meta.get("world_size") != self.world_size:
            raise UserError(
                f"checkpoint {root} was written by {meta.get('world_size')} DeepSpeed processes and ZeRO "
                f"partitions the optimizer state per process; resume it with {meta.get('world_size')} "
                f"processes (this launch has {self.world_size})"
            )
        if sorted(meta.get("models", [])) != sorted(self.engines):
            raise UserError(
                f"checkpoint {root} holds models {meta.get('models')} but this run trains "
                f"{sorted(self.engines)} (did loss.gan change?)"
            )
        rng = root / f"rng_state_{self.rank}.pt"
        if not rng.is_file():
            raise UserError(f"checkpoint {root} has no {rng.name}; it is incomplete")
        with _weights_only_loads(root):
            for name, engine in self.engines.items():
                path, _ = engine.load_checkpoint(
                    str(root / DS_FOLDER), tag=name, load_optimizer_states=True, load_lr_scheduler_states=False
                )
                if path is None:
                    raise UserError(f"checkpoint {root}: DeepSpeed could not load {DS_FOLDER}/{name}")
            _set_rng_state(torch.load(rng, map_location="cpu", weights_only=True))

    def end(self) -> None:
        for engine in self.engines.values():
            engine.destroy()
        super().end()


ENGINE = DeepSpeedEngine
