"""DeepSpeed ZeRO-1/2 for pix2pix: G and D each become their own DeepSpeed engine.

`DeepSpeedEngine` is the same `Engine` the training loop already talks to (`prepare`,
`backward_step`, `save_state`, ...), so DDP and DeepSpeed share one loop. It calls
`deepspeed.initialize` once per model (with the optimizer `run.py` built from `optim.*`), which
avoids Accelerate's multi-plugin route (that one needs `transformers` and misreports ranks,
DESIGN.md section 4). An Accelerator still exists, without DeepSpeed, for the process group,
autocast, trackers and barriers.

How it is selected: `accelerate launch --config_file recipes/accelerate/deepspeed_zero2.yaml`
exports `ACCELERATE_USE_DEEPSPEED=true` and `ACCELERATE_DEEPSPEED_CONFIG_FILE` (or
`ACCELERATE_DEEPSPEED_ZERO_STAGE` when the YAML has no JSON file) to every process;
`deepspeed_request()` reads them and `build_engine` picks this engine.

The DeepSpeed JSON may say "auto" for the batch sizes and for `torch_autocast`; they are filled
from the training config (`train.batch_size`, `train.mixed_precision`). Mixed precision uses
DeepSpeed's `torch_autocast` section: the weights stay fp32 in the module (so the exported
generator is a plain fp32 file, and the numerics match the DDP path), compute runs in bf16/fp16.
The `bf16`/`fp16` sections (16-bit weights) and the `optimizer`/`scheduler` sections (this package
builds Adam and schedules the learning rate itself) are refused with one line saying why.

ZeRO-3 is refused: the G step calls D's plain module with D frozen (two ZeRO engines need that,
deepspeed issue 4923), while ZeRO-3 keeps D's weights partitioned outside D's own engine forward.

A checkpoint folder holds `deepspeed/G/` and `deepspeed/D/` (each engine's own
`save_checkpoint`: module weights from rank 0, optimizer partitions from every rank),
`rng_state_<rank>.pt` for every rank (exact resume), `engine.json` (stage, world size) and
`replicas.json` (a digest of G's and D's parameters on every rank, to show they agree).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import random
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from p2p_dist.config import Config, ConfigError
from p2p_dist.errors import UserError
from p2p_dist.fsutil import atomic_write_text
from p2p_dist.train.engine import Engine, Prepared

ENGINE_FILE = "engine.json"
REPLICAS_FILE = "replicas.json"
DS_FOLDER = "deepspeed"
SUPPORTED_STAGES = (0, 1, 2)
ROOT = Path(__file__).resolve().parents[2]  # the repository (for recipes/accelerate/*.json)

ZERO3_REFUSED = (
    "DeepSpeed ZeRO stage 3 is not supported: pix2pix trains G and D as two DeepSpeed engines and the G step "
    "runs D's plain module with D frozen (required with two ZeRO engines, DeepSpeed issue #4923), but ZeRO-3 "
    "keeps D's weights partitioned outside D's own engine, so that call would see empty tensors; "
    "use ZeRO-2 (recipes/accelerate/deepspeed_zero2.yaml), which shards gradients and optimizer state"
)

# Environment variables `accelerate launch` sets for a DeepSpeed config; masked while the plain
# Accelerator is created so that Accelerate does not set DeepSpeed up a second time.
_ACCELERATE_DS_ENV = ("ACCELERATE_USE_DEEPSPEED",)


@dataclass(frozen=True)
class DeepSpeedRequest:
    """What the launcher asked for: a JSON file, or only a ZeRO stage (then our default JSON)."""

    config_file: Path | None
    zero_stage: int | None


def resolve_config_path(text: str) -> Path:
    """The JSON file as given (relative to the working directory), else relative to the repository,
    so that `recipes/accelerate/ds_zero2.json` works from any directory."""
    path = Path(text).expanduser()
    if path.is_file():
        return path.resolve()
    if not path.is_absolute() and (ROOT / path).is_file():
        return (ROOT / path).resolve()
    raise ConfigError(f"DeepSpeed config file {text} does not exist (deepspeed_config_file in the accelerate config)")


def deepspeed_request(environ: dict | None = None) -> DeepSpeedRequest | None:
    """The DeepSpeed request exported by `accelerate launch`, or None for DDP / one process.

    Options of the accelerate config that this trainer does not implement are refused here, before
    any process group exists, so every rank prints the same one line.
    """
    env = os.environ if environ is None else environ
    if env.get("ACCELERATE_USE_DEEPSPEED", "false").strip().lower() != "true":
        return None
    get = (lambda k: (None if env.get(k, "").strip().lower() in ("", "none") else env[k].strip()))
    accumulation = get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS")
    if accumulation is not None and accumulation != "1":
        raise ConfigError(f"gradient_accumulation_steps={accumulation} in the accelerate config: pix2pix steps G "
                          "and D once per batch; raise train.batch_size instead")
    for key, what in (("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "offload_optimizer_device"),
                      ("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", "offload_param_device")):
        if get(key) is not None:
            raise ConfigError(f"{what}={get(key)} in the accelerate config is not supported here; the models of "
                              "pix2pix fit on one device, ZeRO-1/2 sharding is what the DeepSpeed recipes offer")
    clipping = get("ACCELERATE_GRADIENT_CLIPPING")
    if clipping is not None and clipping not in ("0", "0.0", "false"):
        raise ConfigError(f"gradient_clipping={clipping} in the accelerate config: the pix2pix recipe does not clip "
                          "gradients; put gradient_clipping in the DeepSpeed JSON if you really want it")
    stage_text = get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
    stage = None
    if stage_text is not None:
        try:
            stage = int(stage_text)
        except ValueError:
            raise ConfigError(f"zero_stage={stage_text} in the accelerate config is not a ZeRO stage (0, 1 or 2)") from None
    config_file = get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    request = DeepSpeedRequest(resolve_config_path(config_file) if config_file else None, stage)
    if request.config_file is None and stage is not None:
        _check_stage(stage)
    return request


def _check_stage(stage) -> int:
    if stage == 3:
        raise ConfigError(ZERO3_REFUSED)
    if stage not in SUPPORTED_STAGES:
        raise ConfigError(f"DeepSpeed zero_optimization.stage={stage!r} is not a ZeRO stage this trainer supports (0, 1, 2)")
    return int(stage)


def default_ds_config(stage: int) -> dict:
    """The JSON our recipes ship, for a launch that only named a ZeRO stage."""
    return {
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": stage},
        "torch_autocast": {"enabled": "auto", "dtype": "auto"},
        "steps_per_print": 1_000_000_000,
    }


def read_ds_config(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"DeepSpeed config {path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except OSError as exc:
        raise ConfigError(f"cannot read DeepSpeed config {path}: {exc.strerror}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"DeepSpeed config {path}: expected a JSON object")
    return data


def _is_auto(value) -> bool:
    return isinstance(value, str) and value.strip().lower() == "auto"


def resolve_ds_config(raw: dict, cfg: Config, world_size: int, *, source: str = "DeepSpeed config") -> dict:
    """Fill "auto" values from the training config and refuse what conflicts with it."""
    ds = copy.deepcopy(raw)
    zero = ds.get("zero_optimization", {})
    if not isinstance(zero, dict):
        raise ConfigError(f"{source}: zero_optimization must be an object")
    zero["stage"] = _check_stage(zero.get("stage", 0))
    ds["zero_optimization"] = zero

    for section in ("optimizer", "scheduler"):
        if section in ds:
            raise ConfigError(f"{source}: remove the '{section}' section; p2p-dist builds Adam from optim.* "
                              "(lr, beta1, beta2) and schedules the learning rate itself (optim.schedule)")
    for section in ("bf16", "fp16"):
        enabled = ds.get(section, {}).get("enabled", False) if isinstance(ds.get(section), dict) else False
        if enabled is True or _is_auto(enabled):
            raise ConfigError(f"{source}: '{section}' keeps 16-bit weights in the models; set train.mixed_precision="
                              f"{section} and use the torch_autocast section (enabled/dtype: auto) instead, which "
                              "keeps fp32 weights so the exported generator is exact")
        ds.pop(section, None)

    micro = cfg.train.batch_size
    checks = {"train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": 1,
              "train_batch_size": micro * world_size}
    for key, value in checks.items():
        given = ds.get(key, "auto")
        if _is_auto(given):
            ds[key] = value
        elif given != value:
            origin = {"train_micro_batch_size_per_gpu": "train.batch_size",
                      "gradient_accumulation_steps": "one step per batch",
                      "train_batch_size": f"train.batch_size x {world_size} processes"}[key]
            raise ConfigError(f"{source}: {key}={given!r} disagrees with {origin} ({value}); set it to \"auto\"")

    precision = cfg.train.mixed_precision
    wanted = {"no": None, "bf16": "bfloat16", "fp16": "float16"}[precision]
    autocast = ds.get("torch_autocast", {"enabled": "auto", "dtype": "auto"})
    if not isinstance(autocast, dict):
        raise ConfigError(f"{source}: torch_autocast must be an object")
    enabled, dtype = autocast.get("enabled", False), autocast.get("dtype", "auto")
    if _is_auto(enabled):
        enabled = wanted is not None
    if bool(enabled) != (wanted is not None):
        raise ConfigError(f"{source}: torch_autocast.enabled={enabled} disagrees with train.mixed_precision="
                          f"{precision}; set enabled to \"auto\"")
    if enabled:
        if _is_auto(dtype):
            dtype = wanted
        if str(dtype).replace("torch.", "") not in (wanted, {"bfloat16": "bf16", "float16": "fp16"}[wanted]):
            raise ConfigError(f"{source}: torch_autocast.dtype={dtype} disagrees with train.mixed_precision="
                              f"{precision}; set dtype to \"auto\"")
        ds["torch_autocast"] = {**autocast, "enabled": True, "dtype": wanted}
    else:
        ds.pop("torch_autocast", None)
    ds.setdefault("steps_per_print", 1_000_000_000)  # our monitor logs; keep DeepSpeed's step log quiet
    return ds


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


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def _masked_env(names):
    saved = {n: os.environ.pop(n) for n in names if n in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


class DeepSpeedEngine(Engine):
    """G and D as two DeepSpeed engines (ZeRO 0/1/2), behind the `Engine` interface."""

    save_state_has_collectives = True  # DeepSpeed's save_checkpoint and our digest gather

    def __init__(self, cfg: Config, request: DeepSpeedRequest):
        if cfg.train.compile:
            raise ConfigError("train.compile=true is not supported with the DeepSpeed engines; "
                              "train with DDP to compile, or set train.compile=false")
        if cfg.train.grad_compression != "none":
            raise ConfigError("train.grad_compression applies to the DDP engine; with DeepSpeed set "
                              "communication_data_type in the DeepSpeed JSON, or train.grad_compression=none")
        if request.config_file is not None:
            raw = read_ds_config(request.config_file)
            source = f"DeepSpeed config {request.config_file}"
            stage = raw.get("zero_optimization", {}).get("stage", 0) if isinstance(raw.get("zero_optimization"), dict) else 0
            _check_stage(stage)
            if request.zero_stage is not None and request.zero_stage != stage:
                raise ConfigError(f"{source} sets zero_optimization.stage={stage} but the accelerate config says "
                                  f"zero_stage={request.zero_stage}; keep one of them")
        else:
            stage = _check_stage(2 if request.zero_stage is None else request.zero_stage)
            raw, source = default_ds_config(stage), f"DeepSpeed ZeRO-{stage} defaults"
        if not torch.cuda.is_available():
            os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before the first `import deepspeed`
        with _masked_env(_ACCELERATE_DS_ENV):
            super().__init__(cfg)
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
    def prepare(self, G: nn.Module, D: nn.Module | None, opt_G, opt_D) -> Prepared:
        import deepspeed

        if self.device.type == "cuda" and self.world_size > 1:
            G = nn.SyncBatchNorm.convert_sync_batchnorm(G)
            if D is not None:
                D = nn.SyncBatchNorm.convert_sync_batchnorm(D)
        prepared = {}
        for name, model, opt in (("G", G, opt_G), ("D", D, opt_D)):
            if model is None:
                continue
            # ZeRO flattens the parameters into contiguous buffers: channels_last (train.memory_format)
            # then applies to activations only
            model = model.to(device=self.device, memory_format=torch.contiguous_format)
            engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=opt,
                                                           config=copy.deepcopy(self.ds_config))
            self.engines[name] = engine
            self.optimizers[name] = optimizer
            prepared[name] = (engine, optimizer)
        G_e, opt_G = prepared["G"]
        D_e, opt_D = prepared.get("D", (None, None))
        return Prepared(G_e, D_e, opt_G, opt_D)

    def unwrap(self, model: nn.Module) -> nn.Module:
        from deepspeed import DeepSpeedEngine as _DSEngine

        while isinstance(model, _DSEngine):
            model = model.module
        return super().unwrap(model)

    def backward_step(self, name: str, loss: torch.Tensor) -> None:
        engine = self.engines[name]
        engine.backward(loss)
        engine.step()  # also zeroes the gradients

    def set_lr(self, lr: float) -> None:
        for engine in self.engines.values():
            for group in engine.optimizer.param_groups:
                group["lr"] = lr

    # --- state --------------------------------------------------------------------------------
    def save_state(self, folder: str) -> None:
        """Every rank: each engine's checkpoint (optimizer partitions), RNG state; rank 0 the rest."""
        root = Path(folder)
        for name, engine in self.engines.items():
            frozen = [p for p in engine.module.parameters() if not p.requires_grad]
            for p in frozen:  # D is frozen between steps; save it as the trainable model it is
                p.requires_grad_(True)
            try:
                engine.save_checkpoint(str(root / DS_FOLDER), tag=name, save_latest=False)
            finally:
                for p in frozen:
                    p.requires_grad_(False)
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
            atomic_write_text(root / ENGINE_FILE, json.dumps({
                "engine": "deepspeed", "zero_stage": self.zero_stage, "world_size": self.world_size,
                "models": sorted(self.engines), "mixed_precision": self.cfg.train.mixed_precision,
            }, indent=2))

    def load_state(self, folder: str) -> None:
        root = Path(folder)
        meta_path = root / ENGINE_FILE
        if not meta_path.is_file() or not (root / DS_FOLDER).is_dir():
            raise UserError(f"checkpoint {root} was not written by the DeepSpeed engine; resume it with the launcher "
                            "config that wrote it, or start a new run (train.resume=none)")
        meta = json.loads(meta_path.read_text())
        if meta.get("world_size") != self.world_size:
            raise UserError(f"checkpoint {root} was written by {meta.get('world_size')} DeepSpeed processes and ZeRO "
                            f"partitions the optimizer state per process; resume it with {meta.get('world_size')} "
                            f"processes (this launch has {self.world_size})")
        if sorted(meta.get("models", [])) != sorted(self.engines):
            raise UserError(f"checkpoint {root} holds models {meta.get('models')} but this run trains "
                            f"{sorted(self.engines)} (did loss.gan change?)")
        for name, engine in self.engines.items():
            path, _ = engine.load_checkpoint(str(root / DS_FOLDER), tag=name, load_optimizer_states=True,
                                             load_lr_scheduler_states=False)
            if path is None:
                raise UserError(f"checkpoint {root}: DeepSpeed could not load {DS_FOLDER}/{name}")
        rng = root / f"rng_state_{self.rank}.pt"
        if not rng.is_file():
            raise UserError(f"checkpoint {root} has no {rng.name}; it is incomplete")
        _set_rng_state(torch.load(rng, map_location="cpu", weights_only=False))

    def end(self) -> None:
        for engine in self.engines.values():
            engine.destroy()
        super().end()
