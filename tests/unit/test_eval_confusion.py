"""FCN-score definitions against hand-worked confusion matrices (the reference's get_scores, see eval/confusion.py)."""

import math

import numpy as np
import pytest

from p2p_eval import confusion_matrix, scores_from_confusion


def test_confusion_matrix_counts_rows_as_truth_and_skips_ignore():
    target = np.array([[0, 0, 1], [1, 255, 2]])
    pred = np.array([[0, 1, 1], [2, 0, 2]])
    m = confusion_matrix(pred, target, num_classes=3)
    # (t=0,p=0), (t=0,p=1), (t=1,p=1), (t=1,p=2), ignored, (t=2,p=2)
    assert m.tolist() == [[1, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m.sum() == 5


def test_scores_hand_worked_example_with_absent_class():
    # 3 classes; class 2 never occurs in the ground truth but is predicted once.
    m = np.array([[3, 1, 0], [1, 4, 1], [0, 0, 0]])
    s = scores_from_confusion(m)
    assert s["pixel_acc"] == pytest.approx(7 / 10)
    # per-class acc: 3/4, 4/6, 0 (absent: 0/(0+1e-12)) -> mean over all 3 classes
    assert s["per_class_acc"] == pytest.approx([3 / 4, 4 / 6, 0.0])
    assert s["class_acc"] == pytest.approx((3 / 4 + 4 / 6 + 0) / 3)
    # IoU: 3/(4+4-3)=3/5, 4/(6+5-4)=4/7, 0/(0+1-0)=0
    assert s["per_class_iou"] == pytest.approx([3 / 5, 4 / 7, 0.0])
    assert s["class_iou"] == pytest.approx((3 / 5 + 4 / 7) / 3)
    # the present-class means leave class 2 out
    assert s["present"] == [True, True, False]
    assert s["class_acc_present"] == pytest.approx((3 / 4 + 4 / 6) / 2)
    assert s["class_iou_present"] == pytest.approx((3 / 5 + 4 / 7) / 2)
    assert s["pixels"] == 10


def test_reference_epsilon_matches_get_scores():
    # the reference: acc = diag / (hist.sum(1) + 1e-12); iu = diag / (sum1 + sum0 - diag + 1e-12)
    rng = np.random.default_rng(0)
    hist = rng.integers(0, 50, size=(19, 19)).astype(float)
    hist[5, :] = 0  # an absent class
    diag = np.diag(hist)
    acc = diag / (hist.sum(1) + 1e-12)
    iu = diag / (hist.sum(1) + hist.sum(0) - diag + 1e-12)
    s = scores_from_confusion(hist)
    assert s["pixel_acc"] == pytest.approx(diag.sum() / hist.sum())
    assert s["class_acc"] == pytest.approx(np.mean(acc))
    assert s["class_iou"] == pytest.approx(np.mean(iu))
    assert s["per_class_iou"][5] == 0.0


def test_perfect_prediction_and_empty_matrix():
    target = np.array([0, 1, 1, 2, 255])
    s = scores_from_confusion(confusion_matrix(target.clip(0, 2), target, 3))
    assert s["pixel_acc"] == pytest.approx(1.0)
    assert s["class_iou"] == pytest.approx(1.0)
    empty = scores_from_confusion(np.zeros((3, 3)))
    assert empty["pixel_acc"] == 0.0 and empty["class_iou"] == 0.0
    assert math.isnan(empty["class_iou_present"])


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        confusion_matrix(np.array([3]), np.array([0]), 3)
    with pytest.raises(ValueError):
        confusion_matrix(np.array([0, 1]), np.array([0]), 3)
    with pytest.raises(ValueError):
        scores_from_confusion(np.zeros((2, 3)))
