"""The metric table: every figure of `p2p-eval score` and of validation during training, each
registered once (torch-free and importing nothing, so config, training and p2p_eval all read it;
eval/README.md says what an entry holds and how to add a metric).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    higher: bool | None
    group: str
    digits: int
    val: str
    rgb: bool  # computed on 8-bit RGB photos only (networks trained on them, colour spaces): the
    # images themselves when they are 8-bit RGB or grey, else the bands named by --rgb-bands

    @property
    def title(self) -> str:
        """The display name with ↑ (higher is better) or ↓ (lower is better)."""
        return self.label + {True: " ↑", False: " ↓", None: ""}[self.higher]

    @property
    def direction(self) -> str:
        return {True: "higher is better", False: "lower is better", None: "not ranked"}[self.higher]


METRICS: dict[str, Metric] = {}


def register(
    key: str, label: str, higher: bool | None, group: str = "", digits: int = 3, val: str = "", rgb: bool = False
) -> None:
    METRICS[key] = Metric(key, label, higher, group or key, digits, val, rgb)


# the paper's FCN-score (photo mode) or label-map scores (labels mode), from eval/confusion.py
register("pixel_acc", "Per-pixel acc.", True, group="classes", val="val_pixel_acc", rgb=True)
register("class_acc", "Per-class acc.", True, group="classes", val="val_class_acc", rgb=True)
register("class_iou", "Class IOU", True, group="classes", val="val_class_iou", rgb=True)
register("class_acc_present", "Per-class acc. (present classes)", True, group="classes", rgb=True)
register("class_iou_present", "Class IOU (present classes)", True, group="classes", rgb=True)
# eval/perceptual.py, eval/lpips.py, eval/inception.py; L1, PSNR, (MS-)SSIM on every channel at
# the images' bit depth (PSNR's peak 2^bits - 1)
register("l1", "L1", False, val="val_L1")
register("psnr", "PSNR (dB)", True, digits=2, val="val_PSNR")
register("ssim", "SSIM", True, val="val_SSIM")
register("ms_ssim", "MS-SSIM", True)
register("lpips_alex", "LPIPS (alex)", False, val="val_LPIPS", rgb=True)
register("lpips_vgg", "LPIPS (vgg)", False, rgb=True)
register("fid", "FID", False, digits=2, val="val_FID", rgb=True)
register("kid", "KID", False, digits=4, rgb=True)
register("kid_std", "KID std. over subsets", None, group="kid", digits=4, rgb=True)
# eval/color.py
register("color_L", "Lab hist. intersection L", True, group="color", rgb=True)
register("color_a", "Lab hist. intersection a", True, group="color", rgb=True)
register("color_b", "Lab hist. intersection b", True, group="color", rgb=True)
register("color_lab", "Lab hist. intersection (mean)", True, group="color", rgb=True)

GROUPS = tuple(dict.fromkeys(m.group for m in METRICS.values()))  # `--metrics` names, in table order
RGB_GROUPS = tuple(g for g in GROUPS if any(m.rgb for m in METRICS.values() if m.group == g))
VALIDATION = {m.val: m for m in METRICS.values() if m.val}  # val_* key -> metric


def fmt(key: str, value) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return "n/a"
    return f"{value:.{METRICS[key].digits}f}"
