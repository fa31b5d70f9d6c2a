"""The FCN evaluator: training on real scene photos through `p2p-eval fcn-train`, save/load."""

import json

import numpy as np
import pytest

from helpers.eval_fixtures import scene_samples, write_scene_shards
from p2p_dist.data.scenes import CLASSES
from p2p_dist.errors import UserError
from p2p_eval.cli import main
from p2p_eval.fcn import FCN8s, load_fcn


@pytest.fixture(scope="module")
def train_shards(tmp_path_factory):
    return write_scene_shards(tmp_path_factory.mktemp("fcn") / "train", 12, size=64, split="train")


def test_fcn8s_shapes():
    import torch

    net = FCN8s(num_classes=5, width=4)
    assert net(torch.zeros(2, 3, 64, 96)).shape == (2, 5, 64, 96)


def test_fcn_train_save_load_round_trip(train_shards, tmp_path, capsys):
    out = tmp_path / "fcn"
    rc = main(
        [
            "fcn-train",
            "--shards",
            str(train_shards),
            "--out",
            str(out),
            "--size",
            "64",
            "--width",
            "4",
            "--epochs",
            "12",
            "--batch-size",
            "4",
            "--lr",
            "0.01",
            "--threads",
            "1",
        ]
    )
    assert rc == 0
    assert "per-pixel acc" in capsys.readouterr().err
    meta = json.loads((out / "fcn.json").read_text())
    assert meta["classes"] == CLASSES and meta["input_size"] == [64, 64] and meta["width"] == 4
    assert len(meta["palette"]) == len(CLASSES)
    real = meta["training"]["real_photo_scores"]
    assert 0 <= real["class_iou"] <= real["pixel_acc"] <= 1
    # it learned something: better than predicting the most frequent class everywhere
    photos = np.stack([s["a"] for s in scene_samples(4, 64, split="train")])
    labels = np.stack([s["label"] for s in scene_samples(4, 64, split="train")])
    majority = (labels == np.bincount(labels.ravel()).argmax()).mean()
    ev = load_fcn(out)
    pred = ev.segment(photos)
    assert pred.shape == labels.shape and (pred == labels).mean() > majority
    assert (load_fcn(out / "fcn.safetensors").segment(photos) == pred).all()
    assert ev.segment(photos, out_size=(32, 32)).shape == (4, 32, 32)
    assert not list(out.glob(".*tmp"))  # nothing half-written left behind


def test_load_fcn_errors(tmp_path, train_shards):
    with pytest.raises(UserError, match="fcn-train"):
        load_fcn(tmp_path)
    (tmp_path / "fcn.json").write_text("{not json")
    (tmp_path / "fcn.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match="not valid JSON"):
        load_fcn(tmp_path)


def test_fcn_train_needs_labels(tmp_path):
    from helpers.eval_fixtures import write_shards

    samples = [{"key": f"k{i}", "a": s["a"], "b": s["b"]} for i, s in enumerate(scene_samples(2, 32))]
    shards = write_shards(tmp_path / "nolabels", samples)
    with pytest.raises(SystemExit) as exc:
        main(["fcn-train", "--shards", str(shards), "--out", str(tmp_path / "fcn")])
    assert exc.value.code == 2
