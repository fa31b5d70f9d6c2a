"""The FCN-8s-style evaluator network: model, save/load, segmentation.

The paper segments generated photos with an FCN-8s trained on real Cityscapes photos. That Caffe
model cannot be downloaded here, so p2p-eval trains its own evaluator (`p2p_eval.fcn_train`) on
the real photos of a labelled shard set, or loads one a user provides.

Architecture: five conv stages (two 3x3 conv + BatchNorm + ReLU each, max-pool 2x2 after each),
widths w, 2w, 4w, 8w, 8w; class scores from the stride-8, stride-16 and stride-32 pooled maps
(1x1 convs) fused FCN-8s style (upsample x2 + add, upsample x2 + add), then bilinear upsampling
to the input size. Inputs are RGB in [-1, 1]; logits [N, classes, H, W].

Files: `fcn.safetensors` (weights) + `fcn.json` (format, arch, width, input_size, classes,
palette, ignore_index, training summary), both written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from p2p_dist.errors import UserError
from p2p_dist.fsutil import atomic_path, atomic_write_text
from p2p_eval.labels import ClassInfo

FCN_FORMAT = 1
ARCH = "fcn8s_small"
WEIGHTS_NAME = "fcn.safetensors"
META_NAME = "fcn.json"


def _stage(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2, 2),
    )


class FCN8s(nn.Module):
    """Small FCN-8s: skip scores at strides 8, 16, 32 fused and upsampled to the input size."""

    def __init__(self, num_classes: int, width: int = 16) -> None:
        super().__init__()
        if num_classes < 1 or width < 1:
            raise ValueError("num_classes and width must be positive")
        w = width
        self.num_classes = num_classes
        self.width = width
        self.stage1 = _stage(3, w)  # stride 2
        self.stage2 = _stage(w, 2 * w)  # 4
        self.stage3 = _stage(2 * w, 4 * w)  # 8
        self.stage4 = _stage(4 * w, 8 * w)  # 16
        self.stage5 = _stage(8 * w, 8 * w)  # 32
        self.score8 = nn.Conv2d(4 * w, num_classes, 1)
        self.score16 = nn.Conv2d(8 * w, num_classes, 1)
        self.score32 = nn.Sequential(
            nn.Conv2d(8 * w, 16 * w, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Dropout2d(0.1),
            nn.Conv2d(16 * w, num_classes, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        p3 = self.stage3(self.stage2(self.stage1(x)))
        p4 = self.stage4(p3)
        p5 = self.stage5(p4)
        s = self.score32(p5)
        s = F.interpolate(s, size=p4.shape[-2:], mode="bilinear", align_corners=False) + self.score16(p4)
        s = F.interpolate(s, size=p3.shape[-2:], mode="bilinear", align_corners=False) + self.score8(p3)
        return F.interpolate(s, size=size, mode="bilinear", align_corners=False)


class FCNEvaluator:
    """A trained FCN with its class list and input size; segments uint8 RGB images."""

    def __init__(self, model: FCN8s, classes: ClassInfo, input_size: tuple[int, int], meta: dict | None = None):
        self.model = model.eval()
        self.classes = classes
        self.input_size = tuple(int(v) for v in input_size)
        self.meta = dict(meta or {})

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device) -> FCNEvaluator:
        self.model.to(device)
        return self

    @torch.no_grad()
    def segment(self, images: np.ndarray | torch.Tensor, out_size: tuple[int, int] | None = None) -> np.ndarray:
        """uint8 images [N, H, W, 3] -> class ids int64 [N, h, w] at `out_size` (default H, W)."""
        x = torch.tensor(np.asarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        out_size = tuple(out_size or x.shape[-2:])
        x = x.to(self.device)
        if tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=True)
        logits = self.model(x)
        if tuple(logits.shape[-2:]) != out_size:
            logits = F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)
        return logits.argmax(1).cpu().numpy().astype(np.int64)


def save_fcn(
    model: FCN8s, classes: ClassInfo, input_size: tuple[int, int], folder: str | Path, extra: dict | None = None
) -> Path:
    """Write `folder/fcn.safetensors` and `folder/fcn.json` (each atomically)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(folder / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp))
    meta = {
        "format": FCN_FORMAT,
        "arch": ARCH,
        "width": model.width,
        "num_classes": model.num_classes,
        "input_size": [int(v) for v in input_size],
        **classes.to_dict(),
        **(extra or {}),
    }
    atomic_write_text(folder / META_NAME, json.dumps(meta, indent=2) + "\n")
    return folder


def load_fcn(path: str | Path, map_location: str | torch.device = "cpu") -> FCNEvaluator:
    """Load an evaluator from its folder (or either of its two files); UserError on problems."""
    from safetensors.torch import load_file

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    meta_path, weights_path = folder / META_NAME, folder / WEIGHTS_NAME
    if not meta_path.is_file() or not weights_path.is_file():
        raise UserError(
            f"FCN evaluator not found at {path}: expected {META_NAME} and {WEIGHTS_NAME} "
            f"(train one with `p2p-eval fcn-train --shards TRAIN --out DIR`)"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{meta_path} is not valid JSON ({exc})") from None
    if meta.get("arch") != ARCH or meta.get("format") != FCN_FORMAT:
        raise UserError(
            f"{meta_path}: unsupported evaluator (arch {meta.get('arch')!r}, format {meta.get('format')!r})"
        )
    try:
        classes = ClassInfo.from_dict(meta)
        model = FCN8s(len(classes.classes), int(meta["width"]))
        state = load_file(str(weights_path))
    except Exception as exc:
        raise UserError(f"FCN evaluator {folder} cannot be read ({type(exc).__name__}: {exc})") from None
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or wrong:
        bad = (missing or wrong)[:3]
        raise UserError(
            f"{weights_path} does not match {meta_path}: {'missing' if missing else 'wrong shape for'} {', '.join(bad)}"
        )
    model.load_state_dict(state)
    return FCNEvaluator(model.to(map_location).eval(), classes, tuple(meta["input_size"]), meta)
