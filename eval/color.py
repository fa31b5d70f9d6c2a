"""Colour statistics in Lab (the paper's colour analysis, Fig. 7).

Marginal histograms of L, a and b over a whole set of images are accumulated as integer counts
(so they can be summed across processes exactly), normalised, and compared with the ground
truth's by histogram intersection: sum_i min(p_i, q_i), 1 = identical distributions.
"""

from __future__ import annotations

import numpy as np
from skimage.color import rgb2lab

# (name, low, high, bins): L in [0, 100] in 1-unit bins; a and b in [-129, 129] in 2-unit bins
# centred on even values, so the neutral axis a = b = 0 lies mid-bin (rounding noise stays in it)
CHANNELS = (("L", 0.0, 100.0, 100), ("a", -129.0, 129.0, 129), ("b", -129.0, 129.0, 129))


def lab_histograms(rgb: np.ndarray) -> dict[str, np.ndarray]:
    """Integer histograms of L, a, b for uint8 RGB images ([H, W, 3] or [N, H, W, 3])."""
    img = np.asarray(rgb)
    if img.ndim == 3:
        img = img[None]
    lab = rgb2lab(img.reshape(-1, img.shape[-2], 3).astype(np.float64) / 255.0).reshape(-1, 3)
    out = {}
    for c, (name, lo, hi, bins) in enumerate(CHANNELS):
        counts, _ = np.histogram(np.clip(lab[:, c], lo, hi), bins=bins, range=(lo, hi))
        out[name] = counts.astype(np.int64)
    return out


def histogram_intersection(p_counts: np.ndarray, q_counts: np.ndarray) -> float:
    """Intersection of two count histograms after normalising each to sum 1."""
    p = np.asarray(p_counts, dtype=np.float64)
    q = np.asarray(q_counts, dtype=np.float64)
    if p.sum() <= 0 or q.sum() <= 0:
        return float("nan")
    return float(np.minimum(p / p.sum(), q / q.sum()).sum())


def color_scores(pred_hist: dict[str, np.ndarray], target_hist: dict[str, np.ndarray]) -> dict[str, float]:
    """`color_L`, `color_a`, `color_b` intersections and their mean `color_lab`."""
    scores = {f"color_{name}": histogram_intersection(pred_hist[name], target_hist[name]) for name, *_ in CHANNELS}
    scores["color_lab"] = float(np.mean([scores[f"color_{name}"] for name, *_ in CHANNELS]))
    return scores
