"""Train the FCN evaluator on the real photos + label maps of a labelled shard set.

The whole split is decoded once into memory (uint8 photos at the training size and uint8 class
ids: ~0.8 GB for Cityscapes train at 256 px), then trained with cross-entropy (ignore 255) and
Adam, reshuffled every epoch from a seeded generator, with random horizontal flips.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from p2p_dist.errors import UserError
from p2p_eval.confusion import confusion_matrix, scores_from_confusion
from p2p_eval.fcn import FCN8s, FCNEvaluator, save_fcn
from p2p_eval.labels import ClassInfo, cityscapes_classes, class_info_from_index


@dataclass
class FCNTrainOptions:
    shards: str
    out: str
    photo_side: str = "A"  # A = photo for cityscapes and scenes (the shard contract)
    size: int = 128  # training/input resolution (square)
    width: int = 16
    epochs: float = 12.0
    batch_size: int = 8
    lr: float = 2e-3
    seed: int = 0
    classes: str = "auto"  # auto (index.json) or cityscapes
    val: str | None = None  # shards to report the real-photo score on (default: the training set)
    threads: int | None = None


def resolve_classes(shards: str, which: str = "auto") -> ClassInfo:
    from p2p_dist.data.index import read_index

    if which == "cityscapes":
        return cityscapes_classes()
    index = read_index(shards)
    info = class_info_from_index(index)
    if info is None:
        what = "has no index.json" if index is None else "index.json lists no classes (has_labels is false)"
        raise UserError(
            f"shard set {shards} {what}: the FCN evaluator needs label maps "
            f"(use --classes cityscapes for Cityscapes shards with trainId labels)"
        )
    return info


def load_labelled_set(shards: str, photo_side: str, size: int | None, batch_size: int = 16):
    """All (photo uint8 [N,H,W,3], label uint8 [N,H,W], keys) of a labelled shard set."""
    from p2p_dist.data.loader import make_eval_loader
    from p2p_dist.data.transforms import denormalize

    direction = "AtoB" if photo_side == "A" else "BtoA"
    photos, labels, keys = [], [], []
    loader = make_eval_loader(
        shards, task="translation", direction=direction, size=size, batch_size=batch_size, with_labels=True
    )
    for batch in loader:
        if "label" not in batch:
            raise UserError(f"shard set {shards} has no label.png entries")
        photos.append(denormalize(batch["A"]))
        lab = batch["label"].cpu().numpy()
        labels.append(np.where((lab >= 0) & (lab < 255), lab, 255).astype(np.uint8))
        keys += list(batch["key"])
    if not keys:
        raise UserError(f"shard set {shards} holds no samples")
    return np.concatenate(photos), np.concatenate(labels), keys


def evaluate_real(evaluator: FCNEvaluator, photos: np.ndarray, labels: np.ndarray, batch_size: int = 16) -> dict:
    n = evaluator.classes.num_classes
    conf = np.zeros((n, n), dtype=np.int64)
    for i in range(0, len(photos), batch_size):
        pred = evaluator.segment(photos[i : i + batch_size], out_size=labels.shape[1:])
        conf += confusion_matrix(pred, labels[i : i + batch_size], n, evaluator.classes.ignore_index)
    return scores_from_confusion(conf)


def train_fcn(opts: FCNTrainOptions, progress=None) -> tuple[FCNEvaluator, dict]:
    """Train, save to `opts.out` and return (evaluator, summary)."""
    if opts.threads:
        torch.set_num_threads(opts.threads)
    classes = resolve_classes(opts.shards, opts.classes)
    photos, labels, _ = load_labelled_set(opts.shards, opts.photo_side, opts.size)
    n_cls = classes.num_classes
    bad = labels[(labels != 255) & (labels >= n_cls)]
    if bad.size:
        raise UserError(f"label maps in {opts.shards} hold class id {int(bad.max())}, but the set has {n_cls} classes")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(opts.seed)
    model = FCN8s(n_cls, opts.width).to(device)
    optim = torch.optim.Adam(model.parameters(), lr=opts.lr)
    n = len(photos)
    steps_per_epoch = max(1, math.ceil(n / opts.batch_size))
    total_steps = max(1, round(opts.epochs * steps_per_epoch))
    sched = torch.optim.lr_scheduler.OneCycleLR(optim, max_lr=opts.lr, total_steps=total_steps, pct_start=0.15)
    gen = np.random.default_rng(opts.seed)
    step, t0, last_loss = 0, time.time(), float("nan")
    task = progress.add_task("training FCN evaluator", total=total_steps) if progress else None
    model.train()
    while step < total_steps:
        order = gen.permutation(n)
        for i in range(0, n, opts.batch_size):
            if step >= total_steps:
                break
            idx = np.sort(order[i : i + opts.batch_size])
            x = torch.from_numpy(photos[idx]).to(device).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
            y = torch.from_numpy(labels[idx].astype(np.int64)).to(device)
            flip = torch.from_numpy(gen.random(len(idx)) < 0.5).to(device)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            y = torch.where(flip[:, None, None], y.flip(-1), y)
            loss = F.cross_entropy(model(x), y, ignore_index=255)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            sched.step()
            step += 1
            last_loss = float(loss.detach())
            if progress is not None:
                progress.update(task, advance=1, description=f"training FCN evaluator (loss {last_loss:.3f})")
    model.eval()
    size = (int(photos.shape[1]), int(photos.shape[2]))
    evaluator = FCNEvaluator(model, classes, size)
    if opts.val:
        v_photos, v_labels, _ = load_labelled_set(opts.val, opts.photo_side, None)
        scored_on = opts.val
    else:
        v_photos, v_labels, scored_on = photos, labels, opts.shards
    real = evaluate_real(evaluator, v_photos, v_labels)
    summary = {
        "trained_on": opts.shards,
        "samples": n,
        "steps": total_steps,
        "epochs": opts.epochs,
        "batch_size": opts.batch_size,
        "lr": opts.lr,
        "seed": opts.seed,
        "photo_side": opts.photo_side,
        "final_loss": last_loss,
        "seconds": round(time.time() - t0, 1),
        "real_photo_scores": {
            "scored_on": scored_on,
            **{k: real[k] for k in ("pixel_acc", "class_acc", "class_iou", "class_acc_present", "class_iou_present")},
        },
    }
    save_fcn(model.cpu(), classes, size, opts.out, extra={"training": summary})
    evaluator.meta.update({"training": summary})
    return evaluator, summary
