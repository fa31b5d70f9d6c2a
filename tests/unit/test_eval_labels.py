"""Palette decoding, Cityscapes trainIds, class lists from index.json, Lab histograms."""

import numpy as np
import pytest

from p2p_dist.data import cityscapes
from p2p_dist.data.scenes import colourize
from p2p_eval.color import color_scores, histogram_intersection, lab_histograms
from p2p_eval.labels import IGNORE_INDEX, cityscapes_classes, class_info_from_index, decode_palette


def test_decode_palette_nearest_colour_round_trip_with_noise():
    palette = [(128, 64, 128), (70, 70, 70), (0, 0, 142)]
    rng = np.random.default_rng(0)
    label = rng.integers(0, 3, size=(16, 16))
    rgb = colourize(label, palette).astype(int) + rng.integers(-20, 21, size=(16, 16, 3))
    decoded = decode_palette(np.clip(rgb, 0, 255).astype(np.uint8), palette)
    assert decoded.dtype == np.int64 and decoded.shape == (16, 16)
    assert (decoded == label).all()


def test_decode_palette_rejects_empty_palette():
    with pytest.raises(ValueError, match="palette is empty"):
        decode_palette(np.zeros((2, 2, 3), np.uint8), [])


def test_labelids_to_trainids():
    ids = np.array([[7, 8, 26], [0, 33, 255]], dtype=np.uint8)
    assert cityscapes.label_ids_to_train_ids(ids).tolist() == [[0, 1, 13], [255, 18, 255]]


def test_eval_uses_the_packers_cityscapes_table():
    """One table: the classes, colours and ignore id p2p-eval scores with are those p2p-data packs."""
    city = cityscapes_classes()
    assert city.classes == cityscapes.CLASS_NAMES and len(city.classes) == 19
    assert city.palette == [tuple(c) for c in cityscapes.PALETTE]
    assert city.ignore_index == IGNORE_INDEX == cityscapes.IGNORE == 255
    assert city.classes[13] == "car" and city.palette[13] == (0, 0, 142)


def test_class_info_from_index():
    assert class_info_from_index(None) is None
    assert class_info_from_index({"has_labels": False}) is None
    info = class_info_from_index({"has_labels": True, "classes": ["a", "b"], "palette": [[1, 2, 3], [4, 5, 6]]})
    assert info.classes == ["a", "b"] and info.palette == [(1, 2, 3), (4, 5, 6)] and info.ignore_index == 255
    city = class_info_from_index({"has_labels": True, "dataset": "cityscapes"})
    assert city.classes == cityscapes.CLASS_NAMES and city.num_classes == 19 and len(city.palette) == 19


def test_lab_histogram_intersection():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    h = lab_histograms(img)
    assert h["L"].sum() == 32 * 32 and h["a"].sum() == 32 * 32
    same = color_scores(h, h)
    assert same["color_L"] == pytest.approx(1.0) and same["color_lab"] == pytest.approx(1.0)
    black, white = lab_histograms(np.zeros((4, 4, 3), np.uint8)), lab_histograms(np.full((4, 4, 3), 255, np.uint8))
    assert histogram_intersection(black["L"], white["L"]) == 0.0
    # identical a/b (both neutral grey axis) -> full intersection there
    assert color_scores(black, white)["color_a"] == pytest.approx(1.0)
