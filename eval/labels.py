"""Class lists, palettes and label decoding.

Cityscapes: the 19 evaluation classes (trainIds 0..18, everything else 255 = ignore), their
official colours and the labelId -> trainId mapping come from `p2p_dist.data.cityscapes` (the one
table, used by packing too). Generated colour label maps (photo -> labels) are decoded back to
class ids by the nearest palette colour.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from p2p_dist.data import cityscapes

IGNORE_INDEX = cityscapes.IGNORE


@dataclass
class ClassInfo:
    """The class list of a labelled dataset: names, colours, ignore id."""

    classes: list[str]
    palette: list[tuple[int, int, int]] = field(default_factory=list)
    ignore_index: int = IGNORE_INDEX

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict:
        return {
            "classes": list(self.classes),
            "palette": [list(map(int, c)) for c in self.palette],
            "ignore_index": int(self.ignore_index),
        }

    @classmethod
    def from_dict(cls, d: dict) -> ClassInfo:
        return cls(
            classes=[str(c) for c in d["classes"]],
            palette=[tuple(int(v) for v in c) for c in d.get("palette") or []],
            ignore_index=int(d.get("ignore_index", IGNORE_INDEX)),
        )


def cityscapes_classes() -> ClassInfo:
    """The built-in Cityscapes 19-class list (p2p_dist.data.cityscapes)."""
    return ClassInfo(list(cityscapes.CLASS_NAMES), [tuple(c) for c in cityscapes.PALETTE], cityscapes.IGNORE)


def class_info_from_index(index: dict | None) -> ClassInfo | None:
    """The class list of a shard set's index.json; the built-in Cityscapes list when the index
    names the cityscapes dataset but lists no classes; None for unlabelled sets."""
    if not index:
        return None
    if index.get("classes"):
        palette = index.get("palette") or []
        return ClassInfo(
            classes=[str(c) for c in index["classes"]],
            palette=[tuple(int(v) for v in c) for c in palette],
            ignore_index=int(index.get("ignore_index", IGNORE_INDEX)),
        )
    if str(index.get("dataset", "")).lower() == "cityscapes" and index.get("has_labels"):
        return cityscapes_classes()
    return None


def decode_palette(rgb: np.ndarray, palette) -> np.ndarray:
    """Class id of the nearest palette colour (squared RGB distance) for each pixel.

    `rgb`: uint8 [..., 3]; returns int64 [...]. Ties go to the lower class id.
    """
    pal = np.asarray(palette, dtype=np.int32).reshape(-1, 3)
    if pal.size == 0:
        raise ValueError("the palette is empty: the dataset's index.json lists no class colours")
    pix = np.asarray(rgb, dtype=np.int32)
    if pix.shape[-1] != 3:
        raise ValueError(f"expected RGB images (last axis 3), got shape {pix.shape}")
    flat = pix.reshape(-1, 3)
    best = np.zeros(flat.shape[0], dtype=np.int64)
    best_d = np.full(flat.shape[0], np.iinfo(np.int64).max, dtype=np.int64)
    for k, colour in enumerate(pal):
        d = ((flat - colour) ** 2).sum(axis=1).astype(np.int64)
        better = d < best_d
        best[better] = k
        best_d[better] = d[better]
    return best.reshape(pix.shape[:-1])
