"""Where the evaluated pairs come from: `FolderPairs`, `PredictionsOnShards` and `TranslateShards`.

Each source yields `Sample`s for one process (`rank` of `world_size`; every sample goes to exactly
one process) and collects `problems` (missing or extra names, size mismatches) instead of raising,
so that all processes can agree on one error (`raise_problems`: one line listing the first few).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from p2p_dist import imageio
from p2p_dist.data.transforms import resize
from p2p_dist.errors import UserError
from p2p_eval.scoring import Sample, describe

SHOW = 5  # how many offending names an error lists


def images_by_name(folder: str | Path) -> dict[str, Path]:
    """Relative path without extension (posix) -> file, for the images under `folder`
    (`p2p_dist.imageio.list_images`, subfolders included): how --pred and --target pair up."""
    folder = Path(folder)
    found: dict[str, Path] = {}
    for path in imageio.list_images(folder, recursive=True):
        key = path.relative_to(folder).with_suffix("").as_posix()
        if key in found:
            raise UserError(f"{folder} holds two images named {key} ({found[key].name}, {path.name})")
        found[key] = path
    return found


def _listing(items: list[str]) -> str:
    more = f" (and {len(items) - SHOW} more)" if len(items) > SHOW else ""
    return ", ".join(items[:SHOW]) + more


def raise_problems(problems: dict[str, list[str]]) -> None:
    """One UserError naming every kind of mismatch with its first few offenders."""
    kinds = (
        ("missing_pred", "sample(s) have no prediction", ""),
        ("missing_target", "prediction(s) have no target", ""),
        ("size", "size mismatch(es)", " (pass --resize to resize predictions to the reference size)"),
        ("depth", "bit depth or channel mismatch(es)", ""),
    )
    parts = [
        f"{len(problems[k])} {what}: {_listing(sorted(problems[k]))}{hint}"
        for k, what, hint in kinds
        if problems.get(k)
    ]
    if parts:
        raise UserError("; ".join(parts))


def read_pair(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Stored prediction and target pixels made comparable: as they are when bit depth and channels
    agree; 8-bit grey, RGB and RGBA files of both kinds as RGB (grey repeated, alpha dropped, as
    every image was read before 16-bit and multichannel data); None when they cannot be compared."""
    if pred.dtype == target.dtype and pred.shape[2] == target.shape[2]:
        return pred, target
    if pred.dtype == target.dtype == np.uint8 and max(pred.shape[2], target.shape[2]) <= 4:
        return imageio.convert_stored(pred, "RGB"), imageio.convert_stored(target, "RGB")
    return None


def mine(key: str, rank: int, world_size: int) -> bool:
    """Deterministic split of named files over processes."""
    if world_size <= 1:
        return True
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % world_size == rank


class FolderPairs:
    """Predictions and targets from two folders matched by name (plus optional inputs), read as
    stored (8 or 16 bits, any channel count; `read_pair`)."""

    def __init__(
        self, pred_dir, target_dir, input_dir=None, resize: bool = False, rank: int = 0, world_size: int = 1
    ) -> None:
        self.preds = images_by_name(pred_dir)
        self.targets = images_by_name(target_dir)
        self.inputs = images_by_name(input_dir) if input_dir else {}
        self.resize = resize
        self.rank, self.world_size = rank, world_size
        self.problems: dict[str, list[str]] = {
            "missing_pred": sorted(set(self.targets) - set(self.preds)),
            "missing_target": sorted(set(self.preds) - set(self.targets)),
            "size": [],
            "depth": [],
        }
        self.keys = sorted(set(self.preds) & set(self.targets))
        if not self.keys and not self.problems["missing_pred"] and not self.problems["missing_target"]:
            raise UserError(f"no images found in {pred_dir} and {target_dir}")
        if not resize:
            for key in self.keys:
                ps, ts = imageio.image_size(self.preds[key]), imageio.image_size(self.targets[key])
                if ps != ts:
                    self.problems["size"].append(f"{key} ({ps[1]}x{ps[0]} vs {ts[1]}x{ts[0]})")
        self.expected = len(self.keys)
        raise_problems(self.problems)  # every process sees the same files: fail before scoring

    def __iter__(self) -> Iterator[Sample]:
        for key in self.keys:
            if not mine(key, self.rank, self.world_size):
                continue
            target = imageio.read_image(self.targets[key], "stored")
            pred = resize(imageio.read_image(self.preds[key], "stored"), target.shape[:2])
            pair = read_pair(pred, target)
            if pair is None:
                self.problems["depth"].append(f"{key} ({describe(pred)} vs {describe(target)})")
                continue
            inp = imageio.read_image(self.inputs[key], "stored") if key in self.inputs else None
            yield Sample(key=key, pred=pair[0], target=pair[1], input=inp)


def batch_to_samples(batch: dict, task: str, scale=None) -> list[dict]:
    """The shard loader's batch dict -> per-sample images (input, target) as stored (`scale`: the
    loader's (A, B) pixel ranges; None: 8-bit) and labels."""
    from p2p_dist.data.transforms import RGB8, denormalize

    keys = list(batch["key"])
    out = []
    if task == "colorization":
        gray = denormalize(batch["A"].repeat(1, 3, 1, 1))  # L/50 - 1 shown as grey levels
        target = denormalize(batch["rgb"])
        for i, k in enumerate(keys):
            out.append({"key": k, "input": gray[i], "target": target[i], "label": None})
        return out
    a_range, b_range = scale or (RGB8, RGB8)
    inp, target = denormalize(batch["A"], a_range), denormalize(batch["B"], b_range)
    labels = batch.get("label")
    for i, k in enumerate(keys):
        lab = labels[i].cpu().numpy() if labels is not None else None
        out.append({"key": k, "input": inp[i], "target": target[i], "label": lab})
    return out


def shard_scale(index: dict | None, task: str, direction: str, *, translating: bool = False, input_range=None):
    """The (A, B) pixel ranges the shard loader maps to [-1, 1], or None for 8-bit RGB: the targets
    (and, without a generator, the inputs) at their stored bit depth, so that they come back exactly;
    a generator's input (`translating`) in the range it was trained with (`input_range`; None: 8-bit).
    `p2p-eval score` and validation during training both take it from here."""
    from p2p_dist.data.index import run_ranges
    from p2p_dist.data.transforms import RGB8

    stored = run_ranges(index, direction) if task == "translation" else None
    if not translating:
        return stored
    if input_range is None:
        return None if stored is None else (RGB8, stored[1])
    return input_range, stored[1] if stored else RGB8


class _ShardSource:
    """Samples of a shard set for one process; the subclasses take these options as keywords."""

    def __init__(
        self,
        shards: str,
        *,
        task: str,
        direction: str,
        size: int | None,
        with_labels: bool,
        batch_size: int = 8,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        scale=None,
    ) -> None:
        self.shards, self.task, self.direction, self.size = shards, task, direction, size
        self.scale = scale  # (A, B) PixelRanges the loader maps to [-1, 1]: B's the stored depth's, exactly
        self.with_labels, self.batch_size = with_labels, batch_size
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        self.problems: dict[str, list[str]] = {"missing_pred": [], "missing_target": [], "size": [], "depth": []}
        self.seen: list[str] = []

    def batches(self):
        from p2p_dist.data.loader import make_eval_loader

        return make_eval_loader(
            self.shards,
            task=self.task,
            direction=self.direction,
            size=self.size,
            batch_size=self.batch_size,
            rank=self.rank,
            world_size=self.world_size,
            num_workers=self.num_workers,
            with_labels=self.with_labels,
            scale=self.scale,
        )


class PredictionsOnShards(_ShardSource):
    """Predictions named by sample key in a folder; targets/inputs/labels from the shards.

    Predictions that match no sample are found after every process has reported the keys it saw
    (`extra_predictions`).
    """

    def __init__(self, pred_dir, shards: str, *, resize: bool = False, labels_are_target: bool = False, **source):
        super().__init__(shards, **source)
        self.pred_dir = Path(pred_dir)
        self.preds = images_by_name(pred_dir)
        self.resize = resize
        self.labels_are_target = labels_are_target

    def __iter__(self) -> Iterator[Sample]:
        for batch in self.batches():
            for s in batch_to_samples(batch, self.task, self.scale):
                self.seen.append(s["key"])
                path = self.preds.get(s["key"])
                if path is None:
                    self.problems["missing_pred"].append(s["key"])
                    continue
                pred = imageio.read_image(path, "stored")
                th, tw = s["target"].shape[:2]
                if pred.shape[:2] != (th, tw):
                    if not self.resize:
                        self.problems["size"].append(f"{s['key']} ({pred.shape[1]}x{pred.shape[0]} vs {tw}x{th})")
                        continue
                    pred = resize(pred, (th, tw), nearest=self.labels_are_target)
                pair = read_pair(pred, s["target"])
                if pair is None:
                    self.problems["depth"].append(f"{s['key']} ({describe(pred)} vs {describe(s['target'])})")
                    continue
                yield Sample(key=s["key"], pred=pair[0], target=pair[1], input=s["input"], label=s["label"])

    def extra_predictions(self, all_seen: list[str]) -> list[str]:
        return sorted(set(self.preds) - set(all_seen))


def find_run_config(checkpoint: str | Path) -> dict | None:
    """The training run's config.yaml next to or above a checkpoint (final/, checkpoints/step-N/)."""
    import yaml

    path = Path(checkpoint).resolve()
    start = path if path.is_dir() else path.parent
    for folder in [start, *list(start.parents)[:3]]:
        cfg = folder / "config.yaml"
        if cfg.is_file():
            try:
                tree = yaml.safe_load(cfg.read_text())
            except (OSError, yaml.YAMLError):
                return None
            return tree if isinstance(tree, dict) else None
    return None


class TranslateShards(_ShardSource):
    """Translate a shard set with a generator checkpoint through `translate_batch`
    (p2p_dist/inference/forward.py, its modes), as p2p-translate does."""

    def __init__(
        self,
        generator: torch.nn.Module,
        shards: str,
        *,
        eval_mode: bool = False,
        seed: int = 0,
        device: torch.device | str = "cpu",
        precision: str = "fp32",
        output_range=None,
        **source,
    ) -> None:
        super().__init__(shards, **source)
        self.output_range = output_range  # the generator's (None: 8-bit)
        self.device = torch.device(device)
        self.generator = generator.to(self.device)
        self.eval_mode, self.seed, self.precision = eval_mode, seed, precision

    def translate(self, x: torch.Tensor, keys: list[str]) -> torch.Tensor:
        from p2p_dist.inference import translate_batch

        return translate_batch(
            self.generator,
            x.to(self.device),
            mode="eval" if self.eval_mode else "paper",
            keys=keys,
            seed=self.seed,
            precision=self.precision,
        ).cpu()

    def __iter__(self) -> Iterator[Sample]:
        from p2p_dist.data.transforms import RGB8, denormalize, lab_tensors_to_rgb

        for batch in self.batches():
            samples = batch_to_samples(batch, self.task, self.scale)
            keys = [s["key"] for s in samples]
            fake = self.translate(batch["A"], keys)
            if self.task == "colorization":
                preds = lab_tensors_to_rgb(batch["A"].float().cpu(), fake.clamp(-1, 1))
            else:
                preds = denormalize(fake, self.output_range or RGB8)
            for s, pred in zip(samples, preds):
                self.seen.append(s["key"])
                yield Sample(
                    key=s["key"],
                    pred=np.ascontiguousarray(pred),
                    target=s["target"],
                    input=s["input"],
                    label=s["label"],
                )
