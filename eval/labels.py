"""Class lists, palettes and label decoding.

Cityscapes: the 19 evaluation classes (trainIds 0..18, everything else 255 = ignore), their
official colours, and the labelId -> trainId mapping used by the reference evaluation.
Generated colour label maps (photo -> labels) are decoded back to class ids by the nearest
palette colour.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

IGNORE_INDEX = 255

CITYSCAPES_CLASSES = [
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
]

CITYSCAPES_PALETTE = [
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
]

# labelId -> trainId for the 19 evaluated classes (cityscapesScripts' labels.py); others ignore.
CITYSCAPES_LABELID_TO_TRAINID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
    25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}


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
    def from_dict(cls, d: dict) -> "ClassInfo":
        return cls(
            classes=[str(c) for c in d["classes"]],
            palette=[tuple(int(v) for v in c) for c in d.get("palette") or []],
            ignore_index=int(d.get("ignore_index", IGNORE_INDEX)),
        )


def cityscapes_classes() -> ClassInfo:
    return ClassInfo(list(CITYSCAPES_CLASSES), list(CITYSCAPES_PALETTE), IGNORE_INDEX)


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


def labelids_to_trainids(labelids: np.ndarray) -> np.ndarray:
    """Cityscapes labelIds (uint8 image) -> trainIds 0..18, 255 elsewhere."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label_id, train_id in CITYSCAPES_LABELID_TO_TRAINID.items():
        lut[label_id] = train_id
    return lut[np.asarray(labelids, dtype=np.uint8)]


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


def colorize(label: np.ndarray, palette, ignore_colour=(0, 0, 0)) -> np.ndarray:
    """Class ids -> uint8 RGB with the palette (ignore and unknown ids in `ignore_colour`)."""
    pal = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    lut = np.tile(np.asarray(ignore_colour, dtype=np.uint8), (256, 1))
    lut[: len(pal)] = pal
    return lut[np.clip(np.asarray(label), 0, 255).astype(np.uint8)]
