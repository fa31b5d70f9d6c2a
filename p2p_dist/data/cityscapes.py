"""The Cityscapes label table: labelIds (the 34 classes of gtFine *_labelIds.png) -> the 19 trainIds
used for training and for the FCN-score (255 = ignored), with the class names and colours."""

from __future__ import annotations

import numpy as np

IGNORE = 255

# (labelId, name, trainId) for every labelId that appears in gtFine; trainId 255 = ignored
LABELS = [
    (0, "unlabeled", 255),
    (1, "ego vehicle", 255),
    (2, "rectification border", 255),
    (3, "out of roi", 255),
    (4, "static", 255),
    (5, "dynamic", 255),
    (6, "ground", 255),
    (7, "road", 0),
    (8, "sidewalk", 1),
    (9, "parking", 255),
    (10, "rail track", 255),
    (11, "building", 2),
    (12, "wall", 3),
    (13, "fence", 4),
    (14, "guard rail", 255),
    (15, "bridge", 255),
    (16, "tunnel", 255),
    (17, "pole", 5),
    (18, "polegroup", 255),
    (19, "traffic light", 6),
    (20, "traffic sign", 7),
    (21, "vegetation", 8),
    (22, "terrain", 9),
    (23, "sky", 10),
    (24, "person", 11),
    (25, "rider", 12),
    (26, "car", 13),
    (27, "truck", 14),
    (28, "bus", 15),
    (29, "caravan", 255),
    (30, "trailer", 255),
    (31, "train", 16),
    (32, "motorcycle", 17),
    (33, "bicycle", 18),
]

# the 19 training classes in trainId order, with their colours in the gtFine colour maps
TRAIN_CLASSES = [
    ("road", (128, 64, 128)),
    ("sidewalk", (244, 35, 232)),
    ("building", (70, 70, 70)),
    ("wall", (102, 102, 156)),
    ("fence", (190, 153, 153)),
    ("pole", (153, 153, 153)),
    ("traffic light", (250, 170, 30)),
    ("traffic sign", (220, 220, 0)),
    ("vegetation", (107, 142, 35)),
    ("terrain", (152, 251, 152)),
    ("sky", (70, 130, 180)),
    ("person", (220, 20, 60)),
    ("rider", (255, 0, 0)),
    ("car", (0, 0, 142)),
    ("truck", (0, 0, 70)),
    ("bus", (0, 60, 100)),
    ("train", (0, 80, 100)),
    ("motorcycle", (0, 0, 230)),
    ("bicycle", (119, 11, 32)),
]
CLASS_NAMES = [name for name, _ in TRAIN_CLASSES]
PALETTE = [list(colour) for _, colour in TRAIN_CLASSES]


def _lut() -> np.ndarray:
    lut = np.full(256, IGNORE, np.uint8)  # unknown ids (e.g. -1 license plate stored as 255) are ignored
    for label_id, _, train_id in LABELS:
        lut[label_id] = train_id
    return lut


LABEL_TO_TRAIN = _lut()


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """HxW uint8 labelIds -> HxW uint8 trainIds (0..18, 255 = ignore)."""
    return LABEL_TO_TRAIN[np.asarray(label_ids, dtype=np.uint8)]
