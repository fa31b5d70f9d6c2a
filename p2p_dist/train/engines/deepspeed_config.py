"""DeepSpeed's JSON for `train.engine=deepspeed`: what the launcher asked for, and the JSON resolved
against the training config (README, "DeepSpeed": the "auto" fields, `torch_autocast` with fp32
gradient reduction, and the sections refused).

`accelerate launch --config_file recipes/accelerate/deepspeed_zero2.yaml` exports
`ACCELERATE_USE_DEEPSPEED=true` and `ACCELERATE_DEEPSPEED_CONFIG_FILE` (or
`ACCELERATE_DEEPSPEED_ZERO_STAGE` when the YAML has no JSON file) to every process;
`deepspeed_request()` reads them (`train.engine=auto` picks DeepSpeed when they are there).

ZeRO-3 is refused (README, "ZeRO-3 is refused": the frozen-D call cannot work with it).
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path

from p2p_dist.config import Config, ConfigError

ENGINE_FILE = "engine.json"
REPLICAS_FILE = "replicas.json"
DS_FOLDER = "deepspeed"
LOWER_PRECISION_KEY = "lower_precision_safe_modules"  # deepspeed/runtime/constants.py
SUPPORTED_STAGES = (0, 1, 2)
ROOT = Path(__file__).resolve().parents[2]  # p2p_dist/, which holds recipes/ (installed too): recipes/accelerate/*.json

ZERO3_REFUSED = (
    "DeepSpeed ZeRO stage 3 is not supported: pix2pix trains G and D as two DeepSpeed engines and the G step "
    "runs D's plain module with D frozen (required with two ZeRO engines, DeepSpeed issue #4923), but ZeRO-3 "
    "keeps D's weights partitioned outside D's own engine, so that call would see empty tensors; "
    "use ZeRO-2 (recipes/accelerate/deepspeed_zero2.yaml), which shards gradients and optimizer state"
)


@dataclass(frozen=True)
class DeepSpeedRequest:
    """What the launcher asked for: a JSON file, or only a ZeRO stage (then our default JSON)."""

    config_file: Path | None
    zero_stage: int | None


def resolve_config_path(text: str) -> Path:
    """The JSON file as given (relative to the working directory), else relative to the package, so
    that `recipes/accelerate/ds_zero2.json` works from any directory and from an installed package."""
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
    get = lambda k: None if env.get(k, "").strip().lower() in ("", "none") else env[k].strip()
    accumulation = get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS")
    if accumulation is not None and accumulation != "1":
        raise ConfigError(
            f"gradient_accumulation_steps={accumulation} in the accelerate config: pix2pix steps G "
            "and D once per batch; raise train.batch_size instead (train.grad_accum is the DDP engine's)"
        )
    for key, what in (
        ("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "offload_optimizer_device"),
        ("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", "offload_param_device"),
    ):
        if get(key) is not None:
            raise ConfigError(
                f"{what}={get(key)} in the accelerate config is not supported here; the models of "
                "pix2pix fit on one device, ZeRO-1/2 sharding is what the DeepSpeed recipes offer"
            )
    clipping = get("ACCELERATE_GRADIENT_CLIPPING")
    if clipping is not None and clipping not in ("0", "0.0", "false"):
        raise ConfigError(
            f"gradient_clipping={clipping} in the accelerate config: the pix2pix recipe does not clip "
            "gradients; put gradient_clipping in the DeepSpeed JSON if you really want it"
        )
    stage_text = get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
    stage = None
    if stage_text is not None:
        try:
            stage = int(stage_text)
        except ValueError:
            raise ConfigError(
                f"zero_stage={stage_text} in the accelerate config is not a ZeRO stage (0, 1 or 2)"
            ) from None
    config_file = get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    request = DeepSpeedRequest(resolve_config_path(config_file) if config_file else None, stage)
    if request.config_file is None and stage is not None:
        check_stage(stage)
    return request


def check_stage(stage) -> int:
    if stage == 3:
        raise ConfigError(ZERO3_REFUSED)
    if stage not in SUPPORTED_STAGES:
        raise ConfigError(
            f"DeepSpeed zero_optimization.stage={stage!r} is not a ZeRO stage this trainer supports (0, 1, 2)"
        )
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
    zero["stage"] = check_stage(zero.get("stage", 0))
    ds["zero_optimization"] = zero
    _refuse_sections(ds, source)
    _resolve_batch(ds, cfg.train.batch_size, world_size, source)
    autocast = _resolve_autocast(
        ds.get("torch_autocast", {"enabled": "auto", "dtype": "auto"}), cfg.train.mixed_precision, source
    )
    if autocast is None:
        ds.pop("torch_autocast", None)
    else:
        ds["torch_autocast"] = autocast
    ds.setdefault("steps_per_print", 1_000_000_000)  # our monitor logs; keep DeepSpeed's step log quiet
    return ds


def _refuse_sections(ds: dict, source: str) -> None:
    for section in ("optimizer", "scheduler"):
        if section in ds:
            raise ConfigError(
                f"{source}: remove the '{section}' section; p2p-dist builds Adam from optim.* "
                "(lr, beta1, beta2) and schedules the learning rate itself (optim.schedule)"
            )
    for section in ("bf16", "fp16"):
        enabled = ds.get(section, {}).get("enabled", False) if isinstance(ds.get(section), dict) else False
        if enabled is True or _is_auto(enabled):
            raise ConfigError(
                f"{source}: '{section}' keeps 16-bit weights in the models; set train.mixed_precision="
                f"{section} and use the torch_autocast section (enabled/dtype: auto) instead, which "
                "keeps fp32 weights so the exported generator is exact"
            )
        ds.pop(section, None)


def _resolve_batch(ds: dict, micro: int, world_size: int, source: str) -> None:
    checks = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": 1,
        "train_batch_size": micro * world_size,
    }
    origin = {
        "train_micro_batch_size_per_gpu": "train.batch_size",
        "gradient_accumulation_steps": "one step per batch",
        "train_batch_size": f"train.batch_size x {world_size} processes",
    }
    for key, value in checks.items():
        given = ds.get(key, "auto")
        if _is_auto(given):
            ds[key] = value
        elif given != value:
            raise ConfigError(f'{source}: {key}={given!r} disagrees with {origin[key]} ({value}); set it to "auto"')


def _resolve_autocast(autocast, precision: str, source: str) -> dict | None:
    """The torch_autocast section for train.mixed_precision, or None (no autocast). Gradients reduce in
    fp32: `lower_precision_safe_modules` is emptied (DeepSpeed reads an absent key as its default list)."""
    wanted = {"no": None, "bf16": "bfloat16", "fp16": "float16"}[precision]
    if not isinstance(autocast, dict):
        raise ConfigError(f"{source}: torch_autocast must be an object")
    enabled, dtype = autocast.get("enabled", False), autocast.get("dtype", "auto")
    if _is_auto(enabled):
        enabled = wanted is not None
    if bool(enabled) != (wanted is not None):
        raise ConfigError(
            f"{source}: torch_autocast.enabled={enabled} disagrees with train.mixed_precision="
            f'{precision}; set enabled to "auto"'
        )
    if not enabled:
        return None
    if _is_auto(dtype):
        dtype = wanted
    if str(dtype).replace("torch.", "") not in (wanted, {"bfloat16": "bf16", "float16": "fp16"}[wanted]):
        raise ConfigError(
            f"{source}: torch_autocast.dtype={dtype} disagrees with train.mixed_precision="
            f'{precision}; set dtype to "auto"'
        )
    safe = autocast.get(LOWER_PRECISION_KEY, [])
    if safe not in ([], "auto"):
        raise ConfigError(
            f"{source}: torch_autocast.{LOWER_PRECISION_KEY}={safe!r} would reduce those modules' "
            "gradients in 16 bits; p2p-dist reduces every gradient in fp32 (as with DDP): remove the "
            "key or set it to []"
        )
    return {**autocast, "enabled": True, "dtype": wanted, LOWER_PRECISION_KEY: []}
