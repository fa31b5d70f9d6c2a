"""Typed training configuration: dataclasses, loaded from YAML, overridden by dotted key=value.

Every section is its own dataclass. `load_config(path, overrides)` reads the YAML, applies the
overrides and validates everything before training starts; any problem raises `ConfigError`
(a `UserError`) with one line naming the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from p2p_dist.errors import UserError
from p2p_dist.metric_table import VALIDATION
from p2p_dist.models import registry

RECIPES = Path(__file__).resolve().parent / "recipes"  # the built-in recipes (a link to recipes/ in a clone)
PERCENTILES = (0.1, 0.5, 1.0, 2.0)  # data.percentile's choices besides 0; index.json records each and 100 - each
PERCENTILE_CHOICES = ", ".join(f"{p:g}" for p in (0, *PERCENTILES))


class ConfigError(UserError):
    pass


def choice(default: str, *choices: str, help: str = "") -> Any:
    return field(default=default, metadata={"choices": (default, *choices), "help": help})


def registry_choice(default: str, names, help: str = "") -> Any:
    """A choice among a model registry's names (p2p_dist.models.registry), the default listed first."""
    return choice(default, *(n for n in names if n != default), help=help)


def opt(default: Any, help: str = "", minimum: float | None = None) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, "min": minimum})
    return field(default=default, metadata={"help": help, "min": minimum})


@dataclass
class DataConfig:
    train: str = opt("", "training shards: a glob, brace pattern ({000000..000099}) or pipe: URL")
    val: str = opt("", "validation shards (finite read, used for sample grids)")
    task: str = registry_choice("translation", registry.TASKS, help="translation: A->B images; colorization: L->ab")
    direction: str = registry_choice("AtoB", registry.DIRECTIONS, help="which side of a pair is the input")
    load_size: int = opt(286, "resize both images to this size before cropping", minimum=1)
    crop_size: int = opt(256, "random crop size (the network's input size)", minimum=1)
    resize: bool = opt(True, "resize to data.load_size (the paper's jitter, first half)")
    crop: bool = opt(True, "random crop to data.crop_size (else resize straight to crop_size)")
    flip: bool = opt(True, "random horizontal flip, the same for A and B")
    placement: str = choice(
        "auto",
        "device",
        "stream",
        help="where the training pixels live. device: the whole set (each process its rank's share) decoded "
        "once, resized to data.load_size and kept as uint8 (int32 with a 16-bit side) on the training device "
        "(host memory on a CPU), each batch gathered and jittered there with no loader workers; refused when it "
        "needs more than half the device's free memory (per process on a CPU). stream: shards read and decoded "
        "every pass (the loader workers below). auto: device when the set fits that budget, else stream. The "
        "batches are the same either way",
    )
    num_workers: int = opt(
        2,
        "data loader worker processes per training process (the order of the batches depends on it, whatever "
        "data.placement; a resident set is loaded by this many threads)",
        minimum=0,
    )
    shuffle_buffer: int = opt(500, "samples in the shuffle buffer per worker", minimum=0)
    cache_mb: int = opt(
        2048,
        "MB of decoded training images kept in memory per training process (split among its workers) "
        "and reused on later passes over the shards (on a CPU device, pairs resized to data.load_size); "
        "0 = decode every time",
        minimum=0,
    )
    decode: str = choice(
        "auto",
        "cpu",
        "gpu",
        help="where streamed JPEG members are decoded: gpu = nvJPEG through torchvision on the training "
        "device (pixels differ slightly from the CPU's libjpeg-turbo); auto = gpu where CUDA and torchvision "
        "can, else cpu",
    )
    epoch_samples: int = opt(0, "samples per epoch for train.epochs (0: read from the shard index)", minimum=0)
    max_bad_fraction: float = opt(0.01, "stop when more than this fraction of samples is corrupt", minimum=0)
    normalize: str = choice(
        "bitdepth",
        "percentile",
        help="translation: how stored pixels map to [-1, 1] per channel: bitdepth, 0 .. 2^bits - 1 (8-bit: "
        "x / 127.5 - 1); percentile, the data.percentile-th to (100 - data.percentile)-th percentile measured "
        "over data.train at pack time (index.json), values beyond clipped; recorded in the checkpoint",
    )
    percentile: float = opt(1.0, f"data.normalize=percentile: one of {PERCENTILE_CHOICES} (0: min and max)", minimum=0)


@dataclass
class ModelConfig:
    generator: str = registry_choice("unet_256", registry.GENERATORS, help="generator architecture")
    discriminator: str = registry_choice("patch70", registry.DISCRIMINATORS, help="PatchGAN receptive field")
    ngf: int = opt(64, "generator filters in the first layer", minimum=1)
    ndf: int = opt(64, "discriminator filters in the first layer", minimum=1)
    norm: str = registry_choice("batch", registry.NORMS, help="normalisation layer")
    dropout: bool = opt(True, "dropout 0.5 in the generator (the paper's noise z)")
    init_gain: float = opt(0.02, "std of the N(0, gain) weight initialisation", minimum=0)
    sync_bn: bool = opt(
        False,
        "SyncBatchNorm: BatchNorm statistics over the global batch instead of each "
        "process's (CUDA only with several processes; the paper's per-image statistics "
        "at batch 1 need false)",
    )


@dataclass
class LossConfig:
    gan: str = choice("vanilla", "lsgan", "none", help="adversarial loss; none = L1 only")
    conditional: bool = opt(True, "D sees (input, image) pairs; false = the paper's unconditional GAN")
    lambda_l1: float = opt(100.0, "weight of the L1 term (0 = GAN only)", minimum=0)


@dataclass
class OptimConfig:
    lr: float = opt(2e-4, "Adam learning rate for G and D", minimum=0)
    beta1: float = opt(0.5, "Adam beta1", minimum=0)
    beta2: float = opt(0.999, "Adam beta2", minimum=0)
    schedule: str = choice("linear_decay", "constant", help="learning-rate schedule")
    decay_start: float = opt(0.5, "fraction of training after which linear_decay starts", minimum=0)
    fused: bool = opt(
        True,
        "fused Adam kernel (one pass per tensor, CPU and CUDA; false: PyTorch's default Adam kernels); "
        "the same update up to float rounding",
    )


@dataclass
class HealthConfig:
    """Thresholds of the training health alarms (p2p_dist/train/health.py), checked at each log."""

    enabled: bool = opt(True, "check the alarms below at every log (a warning line once per episode)")
    d_loss_below: float = opt(0.05, "D has won: D's loss (0.5 * (D_real + D_fake)) stays under this ...", minimum=0)
    d_window: int = opt(200, "... for this many steps", minimum=1)
    g_climb: float = opt(
        2.0,
        "G's GAN loss climbs steadily: its least-squares rise over a full g_window of steps "
        "exceeds this (and it rose in at least half of the logs)",
        minimum=0,
    )
    g_window: int = opt(200, "steps over which G's GAN loss trend is fitted (at least 5 logs)", minimum=2)
    collapse_std: float = opt(
        0.01,
        "outputs collapse: std of G's outputs across the samples of a logging window "
        "(on the [-1, 1] scale, 16x16 pooled) under this",
        minimum=0,
    )
    grad_factor: float = opt(
        50.0,
        "gradient norm explosion: a window's largest norm of G's or D's gradient above "
        "this many times the median of the earlier windows (or non-finite)",
        minimum=1,
    )
    warmup: int = opt(50, "steps before any alarm is checked (G starts from near-constant outputs)", minimum=0)


@dataclass
class TrainConfig:
    batch_size: int = opt(1, "images per process per step", minimum=1)
    max_steps: int = opt(0, "optimisation steps (0: derive from train.epochs)", minimum=0)
    epochs: float = opt(0.0, "passes over data.epoch_samples (used when max_steps is 0)", minimum=0)
    mixed_precision: str = choice(
        "no", "bf16", "fp16", help="autocast precision (fp16 needs CUDA); weights and gradient reduction stay float32"
    )
    engine: str = choice(
        "auto",
        "ddp",
        "deepspeed",
        help="auto: deepspeed when accelerate launch was given a "
        "DeepSpeed config, else ddp (Accelerate: one process or DDP)",
    )
    checkpoint_every: int = opt(1000, "steps between checkpoints (0: only at the end)", minimum=0)
    keep_checkpoints: int = opt(3, "newest checkpoints kept", minimum=1)
    output_dir: str = opt("runs/pix2pix", "run folder: checkpoints, metrics.jsonl, samples")
    seed: int = opt(0, "global seed (each rank and worker derives its own)", minimum=0)
    resume: str = opt("auto", "auto (newest complete checkpoint), none, or a checkpoint path")
    resume_mismatch: str = choice(
        "refuse",
        "accept",
        help="a checkpoint written with another data.train, data.task, data.direction, train.batch_size or "
        "train.seed, or without the RNG state of a rank: refuse names each difference; accept resumes with "
        "this config (not exact)",
    )
    stop_after: int = opt(
        0, "checkpoint and stop after this many steps of this invocation (0: run to the end)", minimum=0
    )
    time_limit: float = opt(
        0.0,
        "minutes of training per invocation (0: none); the first step begun past it, or the next (the verdict "
        "reaches the host a step late), is the last, and the run ends as at max_steps (checkpoint, final "
        "validation, generator exported); a later start resumes toward max_steps",
        minimum=0,
    )
    sample_every: int = opt(500, "steps between sample grids (0: never)", minimum=0)
    log_every: int = opt(10, "steps between loss logs (two host syncs each: loss means, the step's flags)", minimum=1)
    log_with: str = choice("none", "tensorboard", "wandb", "all", help="Accelerate trackers")
    deterministic: bool = opt(
        False,
        "strict deterministic kernels (an op without one is an error), cudnn.benchmark "
        "off: bit-exact resume on one GPU",
    )
    max_nonfinite: int = opt(10, "consecutive non-finite steps before the run stops", minimum=1)
    memory_format: str = choice(
        "auto",
        "channels_last",
        "contiguous",
        help="layout of conv weights and activations; auto: channels_last on CUDA, PyTorch's default "
        "(contiguous) on CPU",
    )
    compile: bool = opt(False, "torch.compile G and D (DDP engine; for GPUs: slower on CPU)")
    cuda_graph: str = choice(
        "auto",
        "on",
        "off",
        help="the whole step (D and G steps, both Adam updates, health figures, loss sums, EMA) as one CUDA graph "
        "replayed each step; auto: on with the DDP engine on CUDA GPUs (one or more), off with DeepSpeed and on CPU; "
        "needs optim.fused=true and no fp16; several processes all-reduce one flat gradient buffer per "
        "network inside the graph (DDP's bucket options do not apply)",
    )
    grad_compression: str = choice(
        "none",
        "bf16",
        help="DDP gradient all-reduce in bfloat16 (half the bytes; the averaged gradient is rounded to bf16)",
    )
    grad_accum: int = opt(
        1,
        "gradient accumulation: each step of D and of G sums the gradients of this many micro-batches of "
        "train.batch_size per process and all-reduces once (DDP no_sync on the inner ones); the same math as "
        "a batch this many times bigger for model.norm=instance|none, not for BatchNorm (its statistics stay "
        "per micro-batch); DDP engine only",
        minimum=1,
    )
    ddp_bucket_mb: int = opt(25, "DDP gradient bucket size in MB", minimum=1)
    gradient_as_bucket_view: bool = opt(
        False, "DDP: .grad tensors are views into the all-reduce buckets (one gradient copy less)"
    )
    ema_decay: float = opt(
        0.0,
        "EMA of G's weights (e.g. 0.999; 0 = off); exported as generator.safetensors, "
        "the online G as generator_raw.safetensors",
        minimum=0,
    )
    val_every: int = opt(0, "steps between validations on data.val (0: never): val_* metrics", minimum=0)
    val_fcn: str = opt("", "FCN evaluator folder (p2p-eval fcn-train) for the FCN-score during validation")
    best_metric: str = opt("", "logged key (e.g. val_L1) whose best value keeps checkpoints/best/ ('' = off)")
    best_mode: str = choice(
        "auto",
        "min",
        "max",
        help="direction of train.best_metric (auto: the metric's own, from p2p_dist/metric_table.py)",
    )
    health: HealthConfig = field(default_factory=HealthConfig)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    # --- derived values -------------------------------------------------------------------
    @property
    def pixel_ranges(self):
        """(input, output) `PixelRange`s of a translation run, from data.train's index.json and
        data.normalize; None for colorization and for 8-bit RGB by the bit depth (x / 127.5 - 1)."""
        from p2p_dist.data.index import read_index, run_ranges

        d = self.data
        if d.task != "translation" or not d.train:
            return None
        return run_ranges(read_index(d.train), d.direction, d.normalize, d.percentile)

    @property
    def in_channels(self) -> int:
        ranges = self.pixel_ranges
        return ranges[0].channels if ranges else registry.task_channels(self.data.task)[0]

    @property
    def out_channels(self) -> int:
        ranges = self.pixel_ranges
        return ranges[1].channels if ranges else registry.task_channels(self.data.task)[1]

    @property
    def d_in_channels(self) -> int:
        return registry.discriminator_in_channels(self.in_channels, self.out_channels, self.loss.conditional)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def flat_dict(self) -> dict:
        """{"train.health.warmup": 50, ...}: every leaf under its dotted key (for trackers)."""
        return {
            key: value
            for section_f in dataclasses.fields(self)
            for key, _, value in _leaves(getattr(self, section_f.name), f"{section_f.name}.")
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --- loading and validation -------------------------------------------------------------------

_TYPE_NAMES = {bool: "a boolean (true/false)", int: "an integer", float: "a number", str: "a string"}


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(key: str, value: Any, typ: Any) -> Any:
    value = _coerce_type(key, value, typ)
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: expected a finite number, got {value!r}")
    return value


def _coerce_type(key: str, value: Any, typ: Any) -> Any:
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif typ is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{key}: expected {_TYPE_NAMES.get(typ, typ)}, got {value!r}")


def _apply(section_obj: Any, section: str, values: dict) -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"{section}: expected a mapping of keys, got {values!r}")
    types_ = _field_types(type(section_obj))
    for key, value in values.items():
        if key not in types_:
            allowed = ", ".join(types_)
            raise ConfigError(f"unknown key {section}.{key}; allowed keys in {section}: {allowed}")
        if dataclasses.is_dataclass(types_[key]):  # a nested group such as train.health
            _apply(getattr(section_obj, key), f"{section}.{key}", values[key])
            continue
        choices = {f.name: f.metadata.get("choices") for f in dataclasses.fields(section_obj)}[key] or ()
        if isinstance(value, bool) and {"on", "off"} <= set(choices):  # YAML 1.1 reads on/off as booleans
            value = "on" if value else "off"
        setattr(section_obj, key, _coerce(f"{section}.{key}", value, types_[key]))


def _set_tree(cfg: Config, tree: dict, source: str) -> None:
    if tree is None:
        return
    if not isinstance(tree, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(tree).__name__}")
    sections = _field_types(Config)
    for section, values in tree.items():
        if section not in sections:
            raise ConfigError(f"unknown section {section!r} in {source}; allowed: {', '.join(sections)}")
        _apply(getattr(cfg, section), section, values)


def parse_override(text: str) -> tuple[str, str, Any]:
    """`section.key=value` -> (section, key, value parsed as YAML scalar); `section.group.key=value`
    (train.health.warmup=0) -> (section, group, {key: value})."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    dotted, raw = text.split("=", 1)
    parts = dotted.strip().split(".")
    if len(parts) == 3 and all(parts):
        section, group, key = parts
        _, _, value = parse_override(f"{section}.{key}={raw}")
        return section, group, {key: value}
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"override key {dotted!r} must be section.key (for example train.batch_size=4)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if value is None:
        value = ""
    if isinstance(value, (dict, list)):
        value = raw  # braces in shard patterns are not YAML mappings
    return parts[0], parts[1], value


def _leaves(obj: Any, prefix: str):
    """(dotted key, field, value) of every leaf of a config dataclass, nested groups included."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, value


def validate(cfg: Config) -> Config:
    for section_f in dataclasses.fields(cfg):
        section = getattr(cfg, section_f.name)
        for key, f, value in _leaves(section, f"{section_f.name}."):
            choices = f.metadata.get("choices")
            if choices and value not in choices:
                raise ConfigError(f"{key}: {value!r} is not allowed; choose one of: {', '.join(choices)}")
            minimum = f.metadata.get("min")
            if minimum is not None and value < minimum:
                raise ConfigError(f"{key}: {value!r} is below the minimum {minimum}")
    d, m, t = cfg.data, cfg.model, cfg.train
    if d.crop and d.resize and d.load_size < d.crop_size:
        raise ConfigError(f"data.load_size ({d.load_size}) must be >= data.crop_size ({d.crop_size})")
    multiple = registry.size_multiple(m.generator)
    if d.crop_size % multiple:
        raise ConfigError(
            f"data.crop_size {d.crop_size} does not fit model.generator {m.generator}: "
            f"it must be a multiple of {multiple}"
        )
    if not 0 <= cfg.optim.beta1 < 1 or not 0 <= cfg.optim.beta2 < 1:
        raise ConfigError("optim.beta1 and optim.beta2 must lie in [0, 1)")
    if not 0 <= cfg.optim.decay_start <= 1:
        raise ConfigError(f"optim.decay_start must lie in [0, 1], got {cfg.optim.decay_start}")
    for key in _PATH_KEYS:  # `train.output_dir=$UNSET` would write into the current folder
        value = getattr(getattr(cfg, key.split(".")[0]), key.split(".")[1])
        if (value and not value.strip()) or (not value and key in _REQUIRED_PATHS):
            raise ConfigError(
                f"{key} is empty{' (only spaces)' if value else ''}: {_REQUIRED_PATHS.get(key, 'give a path')}"
            )
    if cfg.loss.gan == "none" and cfg.loss.lambda_l1 == 0:
        raise ConfigError("loss.gan=none with loss.lambda_l1=0 leaves nothing to train")
    if d.max_bad_fraction > 1:
        raise ConfigError(f"data.max_bad_fraction must lie in [0, 1], got {d.max_bad_fraction}")
    if d.percentile not in (0, *PERCENTILES):
        raise ConfigError(f"data.percentile: {d.percentile:g} is not allowed; choose one of: {PERCENTILE_CHOICES}")
    if not t.ema_decay < 1:
        raise ConfigError(f"train.ema_decay must lie in [0, 1) (0 = off), got {t.ema_decay}")
    if t.val_every and not d.val:
        raise ConfigError("train.val_every needs data.val (the validation shards)")
    if t.val_fcn and not t.val_every:
        raise ConfigError("train.val_fcn needs train.val_every > 0")
    if t.best_metric and t.best_metric not in VALIDATION:
        raise ConfigError(f"train.best_metric={t.best_metric}: choose a validation key: {', '.join(VALIDATION)}")
    if t.best_metric and not t.val_every:
        raise ConfigError("train.best_metric needs train.val_every > 0 (validation produces the val_* keys)")
    if t.mixed_precision == "fp16":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("train.mixed_precision=fp16 needs a CUDA GPU; use bf16 or no on CPU")
    if t.cuda_graph == "on":  # refused up front where it cannot run (the engine checks train.engine=auto again)
        import torch

        from p2p_dist.train import cuda_graph

        engine = "deepspeed" if t.engine == "deepspeed" else "ddp"
        cuda_graph.resolve(cfg, engine, "cuda" if torch.cuda.is_available() else "cpu")
    return cfg


_PATH_KEYS = ("data.train", "data.val", "train.output_dir", "train.resume", "train.val_fcn")
_REQUIRED_PATHS = {  # the others: empty = not set
    "train.output_dir": "give the run folder, e.g. train.output_dir=runs/facades",
    "train.resume": "use auto, none or a checkpoint path",
}


def require_training_inputs(cfg: Config) -> None:
    """Checks that only matter when training starts (not for --print-config)."""
    if not cfg.data.train:
        raise ConfigError(
            "data.train is empty; set it to a shard pattern, e.g. data.train='shards/train-{000000..000009}.tar'"
        )
    if cfg.train.max_steps == 0 and cfg.train.epochs == 0:
        raise ConfigError("set train.max_steps or train.epochs (both are 0)")


def _read_yaml_tree(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[dict, str]]:
    """The file's sections, preceded by those of its `base:` recipe (a path relative to the file)."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    if path.resolve() in seen:
        raise ConfigError(f"config file {path} includes itself through 'base'")
    try:
        tree = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read ({exc.strerror or exc})") from None
    if tree is None:
        return []
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {path}: expected a mapping of sections, got {type(tree).__name__}")
    layers: list[tuple[dict, str]] = []
    base = tree.pop("base", None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: 'base' must be a path to another recipe")
        layers += _read_yaml_tree(path.parent / base, seen + (path.resolve(),))
    layers.append((tree, str(path)))
    return layers


def recipe_path(text: str | Path) -> Path:
    """The recipe file `text` names: a path as given, else a built-in recipe by name (`demo`,
    `ablations/l1`, `pix2pix_base.yaml`) or by its path in the repository (`recipes/demo.yaml`), so
    that the same command works from a clone and from an installed package."""
    path = Path(text)
    if path.is_file() or path.is_absolute():
        return path
    for candidate in (RECIPES / path, RECIPES / f"{path}.yaml", RECIPES.parent / path):
        if candidate.is_file():
            return candidate
    names = sorted(str(p.relative_to(RECIPES).with_suffix("")) for p in RECIPES.glob("*.yaml"))
    raise ConfigError(
        f"config file {text} does not exist and is no built-in recipe ({', '.join(names)}, ablations/...)"
    )


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults <- the recipe's `base:` chain <- the recipe <- overrides, then validation."""
    cfg = Config()
    if path is not None:
        for tree, source in _read_yaml_tree(recipe_path(path)):
            _set_tree(cfg, tree, source)
    for text in overrides:
        section, key, value = parse_override(text)
        _set_tree(cfg, {section: {key: value}}, f"override {text!r}")
    return validate(cfg)


def describe_keys() -> str:
    """All keys with defaults and help, for --help texts."""
    lines = []
    for section_f in dataclasses.fields(Config):
        section = section_f.default_factory()  # type: ignore[misc]
        for key, f, value in _leaves(section, f"{section_f.name}."):
            choices = f.metadata.get("choices")
            extra = f" {{{'|'.join(choices)}}}" if choices else ""
            lines.append(f"  {key}={value!r}{extra}  {f.metadata.get('help', '')}")
    return "\n".join(lines)


def config_from_dict(tree: dict) -> Config:
    cfg = Config()
    _set_tree(cfg, tree, "saved config")
    return validate(cfg)
