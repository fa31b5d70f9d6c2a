"""Confusion matrices (rows ground truth, columns prediction) and the reference FCN-score definitions
(phillipi/pix2pix, scripts/eval_cityscapes; eval/README.md, "Class scores")."""

from __future__ import annotations

import numpy as np

EPS = 1e-12  # the reference get_scores' denominator guard


def confusion_matrix(pred, target, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """`num_classes` x `num_classes` int64 counts of (target row, predicted column).

    Pixels whose target is `ignore_index` (or otherwise outside [0, num_classes)) are skipped;
    a prediction outside the class range is a programming error and raises ValueError.
    """
    pred = np.asarray(pred).reshape(-1).astype(np.int64)
    target = np.asarray(target).reshape(-1).astype(np.int64)
    if pred.shape != target.shape:
        raise ValueError(f"prediction has {pred.size} pixels, target {target.size}")
    keep = (target >= 0) & (target < num_classes) & (target != ignore_index)
    pred, target = pred[keep], target[keep]
    if pred.size and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(f"predicted class ids must lie in [0, {num_classes})")
    counts = np.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def scores_from_confusion(matrix) -> dict:
    """FCN-scores of a confusion matrix: `pixel_acc`, `class_acc` and `class_iou` (means over ALL
    classes, each denominator + 1e-12 as in the reference), their per-class lists, the `_present`
    means over classes with ground-truth pixels (NaN when none), `present` and `pixels`."""
    hist = np.asarray(matrix, dtype=np.float64)
    if hist.ndim != 2 or hist.shape[0] != hist.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {hist.shape}")
    diag = np.diag(hist)
    rows = hist.sum(axis=1)
    cols = hist.sum(axis=0)
    total = hist.sum()
    per_acc = diag / (rows + EPS)
    per_iou = diag / (rows + cols - diag + EPS)
    present = rows > 0
    n_present = int(present.sum())
    return {
        "pixel_acc": float(diag.sum() / (total + EPS)),
        "class_acc": float(per_acc.mean()) if hist.size else float("nan"),
        "class_iou": float(per_iou.mean()) if hist.size else float("nan"),
        "class_acc_present": float(per_acc[present].mean()) if n_present else float("nan"),
        "class_iou_present": float(per_iou[present].mean()) if n_present else float("nan"),
        "per_class_acc": [float(v) for v in per_acc],
        "per_class_iou": [float(v) for v in per_iou],
        "present": [bool(v) for v in present],
        "pixels": int(total),
    }
