"""`p2p-eval score`: pick the inputs, score every sample once (over all processes), write the
score folder: scores.json (what `p2p-eval compare` reads), report.md/json/html and samples/.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from p2p_dist.errors import UserError
from p2p_dist.fsutil import atomic_dir, atomic_write_text, check_writable_dir
from p2p_dist.imageio import write_image
from p2p_dist.metric_table import GROUPS
from p2p_eval import dist as pdist
from p2p_eval.labels import ClassInfo, class_info_from_index
from p2p_eval.report import SCORES_FORMAT, SCORES_NAME, load_variant, write_reports
from p2p_eval.scoring import GridKeeper, Scorer, shown


@dataclass
class ScoreOptions:
    out: str
    pred: str | None = None
    target: str | None = None
    inputs: str | None = None
    shards: str | None = None
    checkpoint: str | None = None
    fcn: str | None = None
    mode: str = "auto"
    task: str = "auto"
    direction: str = "auto"
    size: int | None = None
    resize: bool = False
    metrics: list[str] = field(default_factory=lambda: list(GROUPS))
    batch_size: int = 8
    eval_mode: bool = False
    seed: int = 0
    name: str | None = None
    grid: int = 6
    num_workers: int = 0
    precision: str = "fp32"
    rgb_bands: tuple[int, ...] | None = None


@dataclass
class ResolvedInputs:
    task: str
    direction: str
    mode: str
    classes: ClassInfo | None
    size: int | None
    index: dict | None


def _safe_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key)[:80]


def resolve_inputs(opts: ScoreOptions, fcn=None, run_cfg: dict | None = None, spec=None) -> ResolvedInputs:
    """Task, direction, scoring mode, classes and size from the options, then the generator's
    spec and the run's config.yaml (with --checkpoint), then the shard index."""
    index = None
    if opts.shards:
        from p2p_dist.data.index import read_index

        index = read_index(opts.shards)
    data_cfg = dict((run_cfg or {}).get("data") or {}) if isinstance(run_cfg, dict) else {}
    if spec is not None:
        for key, value in (("task", spec.task), ("direction", spec.direction), ("crop_size", spec.image_size)):
            if value is not None:
                data_cfg[key] = value
    task = opts.task if opts.task != "auto" else (index or {}).get("task") or data_cfg.get("task") or "translation"
    has_labels = bool((index or {}).get("has_labels"))
    direction = opts.direction
    if direction == "auto":
        direction = data_cfg.get("direction") or ("BtoA" if has_labels else "AtoB")
    classes = class_info_from_index(index) if has_labels else None
    mode = opts.mode
    if mode == "auto":
        if task == "colorization" or classes is None or opts.shards is None:
            mode = "image"
        else:
            # labelled sets (cityscapes, scenes) keep the photo in A and the colour label map in B
            mode = "photo" if direction == "BtoA" else "labels"
    if mode in ("photo", "labels") and not opts.shards:
        raise UserError(f"--mode {mode} needs label maps: score against a labelled shard set (--shards)")
    if mode in ("photo", "labels") and classes is None:
        raise UserError(f"--mode {mode}: shard set {opts.shards} has no label maps (index.json has_labels is false)")
    if (
        mode == "photo"
        and fcn is not None
        and classes is not None
        and list(fcn.classes.classes) != list(classes.classes)
    ):
        raise UserError(
            f"the FCN evaluator's {fcn.classes.num_classes} classes do not match the data's "
            f"{classes.num_classes} ({', '.join(classes.classes[:4])}...): train one on this dataset"
        )
    if mode == "photo" and fcn is not None:
        classes = fcn.classes
    size = opts.size
    if size is None and opts.checkpoint:
        size = data_cfg.get("crop_size")
    return ResolvedInputs(task, direction, mode, classes, size, index)


def build_source(opts: ScoreOptions, resolved: ResolvedInputs, info: pdist.DistInfo, device, generator=None, spec=None):
    from p2p_eval import inputs

    with_labels = resolved.mode in ("photo", "labels")
    common = dict(
        scale=inputs.shard_scale(
            resolved.index,
            resolved.task,
            resolved.direction,
            translating=spec is not None,
            input_range=getattr(spec, "input_range", None),
        ),
        task=resolved.task,
        direction=resolved.direction,
        size=resolved.size,
        with_labels=with_labels,
        batch_size=opts.batch_size,
        rank=info.rank,
        world_size=info.world_size,
        num_workers=opts.num_workers,
    )
    if opts.checkpoint:
        if resolved.size is None and resolved.index and resolved.index.get("image_size"):
            h, w = resolved.index["image_size"]
            from p2p_dist.models.generator import size_multiple

            m = size_multiple(spec.name)
            if h % m or w % m:
                raise UserError(f"images of {w}x{h} do not fit generator {spec.name} (multiples of {m}): pass --size")
        return inputs.TranslateShards(
            generator,
            opts.shards,
            eval_mode=opts.eval_mode,
            seed=opts.seed,
            device=device,
            precision=opts.precision,
            output_range=spec.output_range,
            **common,
        ), {"generator": spec.to_dict()}
    if opts.pred and opts.shards:
        return inputs.PredictionsOnShards(
            opts.pred, opts.shards, resize=opts.resize, labels_are_target=resolved.mode == "labels", **common
        ), {}
    if opts.pred and opts.target:
        return inputs.FolderPairs(
            opts.pred, opts.target, opts.inputs, resize=opts.resize, rank=info.rank, world_size=info.world_size
        ), {}
    raise UserError("give --pred DIR --target DIR, --pred DIR --shards SOURCE, or --checkpoint GEN --shards SOURCE")


def _chunks(samples, n: int):
    """Consecutive lists of at most n samples (scored together)."""
    batch = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def run_score(opts: ScoreOptions) -> dict | None:
    """Score and write `opts.out`; returns the scores dict on rank 0 (None on other ranks)."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from p2p_dist.console import make_console, make_progress

    console = make_console(stderr=True)
    info = pdist.init_from_env()
    try:
        out = Path(opts.out)
        if info.is_main:
            check_writable_dir(out)
        device = info.device()
        fcn = None
        if opts.fcn:
            from p2p_eval.fcn import load_fcn

            fcn = load_fcn(opts.fcn)
        from p2p_eval.inputs import find_run_config

        generator = spec = run_cfg = None
        if opts.checkpoint:
            if not opts.shards:
                raise UserError("--checkpoint needs --shards (the data to translate)")
            from p2p_dist.models import load_generator

            generator, spec = load_generator(opts.checkpoint, map_location="cpu")
            run_cfg = find_run_config(opts.checkpoint)
        resolved = resolve_inputs(opts, fcn, run_cfg, spec)
        source, extra_inputs = build_source(opts, resolved, info, device, generator, spec)
        scorer = Scorer(
            opts.metrics, resolved.mode, fcn=fcn, classes=resolved.classes, device=device, rgb_bands=opts.rgb_bands
        )
        records, keeper = [], GridKeeper(opts.grid)
        expected = (resolved.index or {}).get("total") if opts.shards else getattr(source, "expected", None)
        with make_progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=not info.is_main,
        ) as progress:
            total = None if expected is None else -(-expected // info.world_size)
            task = progress.add_task("scoring" + (" (this process)" if info.world_size > 1 else ""), total=total)
            for batch in _chunks(source, opts.batch_size):
                records += scorer.score_batch(batch)
                for sample in batch:
                    keeper.offer(sample)
                progress.advance(task, len(batch))
        local = {
            "records": records,
            "grid": keeper.samples(),
            "problems": source.problems,
            "seen": list(getattr(source, "seen", [])),
            "unavailable": dict(scorer.unavailable),
        }
        gathered = pdist.gather_to_main([local], info)
        error = None
        result = None
        if info.is_main:
            try:
                result = _finish_on_main(opts, resolved, scorer, source, gathered, fcn, extra_inputs, out)
            except UserError as exc:
                error = str(exc)
        error = pdist.broadcast_from_main(error, info)
        if error is not None:
            if info.is_main:
                raise UserError(error)
            raise SystemExit(2)
        return result
    finally:
        pdist.finish(info)


def _finish_on_main(opts, resolved, scorer, source, gathered, fcn, extra_inputs, out: Path) -> dict:
    from p2p_eval.inputs import raise_problems

    problems: dict[str, list[str]] = {}
    records, grid, seen = [], [], []
    for part in gathered:
        records += part["records"]
        grid += part["grid"]
        seen += part["seen"]
        for k, v in part["problems"].items():
            problems.setdefault(k, []).extend(v)
        scorer.unavailable.update(part["unavailable"])
    if hasattr(source, "extra_predictions"):
        problems.setdefault("missing_target", []).extend(source.extra_predictions(seen))
    raise_problems(problems)
    if not records:
        raise UserError("no samples to score")
    records = pdist.check_exactly_once(records)
    results = scorer.aggregate(records)
    keeper = GridKeeper(opts.grid)
    for s in grid:
        keeper.offer(s)
    grid_entries = []
    with atomic_dir(out / "samples") as tmp:
        for i, s in enumerate(keeper.samples()):
            entry = {"key": s.key}
            for part in ("input", "pred", "target"):
                img = getattr(s, part)
                if img is not None:
                    rel = f"samples/{i:03d}-{_safe_name(s.key)}-{part}.png"
                    write_image(tmp / Path(rel).name, shown(img, opts.rgb_bands))
                    entry[part] = rel
            grid_entries.append(entry)
    scores = {
        "format": SCORES_FORMAT,
        "name": opts.name
        or (
            Path(opts.checkpoint).resolve().parent.name
            if opts.checkpoint and Path(opts.checkpoint).name in ("final", "generator.safetensors")
            else Path(opts.checkpoint or opts.pred or opts.out).name
        ),
        "inputs": {
            "pred": opts.pred,
            "target": opts.target,
            "inputs": opts.inputs,
            "shards": opts.shards,
            "checkpoint": opts.checkpoint,
            "fcn": opts.fcn,
            "mode": resolved.mode,
            "task": resolved.task,
            "direction": resolved.direction,
            "size": resolved.size,
            "resize": opts.resize,
            "test_mode": "eval (running statistics, no dropout)"
            if opts.eval_mode
            else "paper (dropout on, test-image BatchNorm statistics, seeded per sample)",
            "seed": opts.seed,
            "rgb_bands": list(opts.rgb_bands) if opts.rgb_bands else None,
            **extra_inputs,
        },
        "fcn": (
            {
                "path": opts.fcn,
                "classes": fcn.classes.classes,
                "input_size": list(fcn.input_size),
                "training": fcn.meta.get("training"),
            }
            if fcn is not None
            else None
        ),
        "results": results,
        "grid": grid_entries,
    }
    atomic_write_text(out / SCORES_NAME, json.dumps(scores, indent=2, sort_keys=True, allow_nan=True) + "\n")
    write_reports([load_variant(str(out))], out, grid_rows=opts.grid)
    return scores
