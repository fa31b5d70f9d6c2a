"""p2p_dist.data.demo / scenes / inspect and the `p2p-data demo|inspect` commands."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from p2p_dist.data.cli import main
from p2p_dist.data.demo import build_demo
from p2p_dist.data.errors import DataError
from p2p_dist.data.inspect import inspect_source
from p2p_dist.data.loader import make_eval_loader
from p2p_dist.data.scenes import CLASSES, PALETTE, colourize, make_scene


def test_scene_is_deterministic_and_consistent():
    photo, colour, label = make_scene(3, 7, size=48)
    again = make_scene(3, 7, size=48)
    assert all(np.array_equal(x, y) for x, y in zip((photo, colour, label), again))
    assert not np.array_equal(photo, make_scene(4, 7, size=48)[0])
    assert not np.array_equal(photo, make_scene(3, 7, size=48, split="val")[0])
    assert photo.shape == (48, 48, 3) and colour.shape == (48, 48, 3) and label.shape == (48, 48)
    assert label.max() < len(CLASSES)
    assert np.array_equal(colour, colourize(label, PALETTE))


def test_scene_photos_carry_their_labels():
    """Every class shows up, and even a per-pixel nearest-colour rule recovers much of the label map."""
    photos, labels = zip(*[(p, lab) for p, _, lab in (make_scene(0, i, size=64) for i in range(12))])
    P = np.concatenate([p.reshape(-1, 3) for p in photos]).astype(np.float64)
    L = np.concatenate([lab.ravel() for lab in labels])
    assert set(np.unique(L)) == set(range(len(CLASSES)))
    half = len(P) // 2
    means = np.stack([P[:half][L[:half] == k].mean(0) for k in range(len(CLASSES))])
    pred = np.argmin(((P[half:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert (pred == L[half:]).mean() > 0.45  # 8 classes: chance is ~0.28 (the largest class)


def test_build_scenes_layout_index_and_determinism(tmp_path):
    a = build_demo("scenes", tmp_path / "a", train=6, val=2, size=32, shard_size=4, seed=5)
    b = build_demo("scenes", tmp_path / "b", train=6, val=2, size=32, shard_size=4, seed=5, workers=2)
    assert sorted(p.name for p in (tmp_path / "a" / "train").iterdir()) == [
        "index.json",
        "scenes-000000.tar",
        "scenes-000001.tar",
    ]
    for name in ("scenes-000000.tar", "scenes-000001.tar"):
        assert (tmp_path / "a" / "train" / name).read_bytes() == (tmp_path / "b" / "train" / name).read_bytes()
    index = json.loads((tmp_path / "a" / "val" / "index.json").read_text())
    assert index["task"] == "translation" and index["dataset"] == "scenes" and index["split"] == "val"
    assert index["has_labels"] and index["classes"] == CLASSES and index["palette"][0] == list(PALETTE[0])
    assert index["total"] == 2 and index["image_size"] == [32, 32] and a["train"].index["total"] == 6
    batch = next(
        iter(
            make_eval_loader(
                str(tmp_path / "a" / "val"),
                task="translation",
                direction="BtoA",
                size=None,
                batch_size=2,
                with_labels=True,
            )
        )
    )
    assert batch["A"].shape == (2, 3, 32, 32) and batch["label"].max() < len(CLASSES)
    assert b["val"].index["total"] == 2
    with pytest.raises(DataError, match="--overwrite"):
        build_demo("scenes", tmp_path / "a", train=6, val=2, size=32)


@pytest.mark.parametrize(
    "name,task,fields",
    [("photos-edges", "translation", ["a.png", "b.jpg"]), ("photos-color", "colorization", ["img.jpg"])],
)
def test_photo_demos(tmp_path, name, task, fields):
    res = build_demo(name, tmp_path / name, train=3, val=1, size=48)
    report = inspect_source(str(tmp_path / name / "train"))
    assert report.task == task and report.total == 3 and report.shards[0].fields == fields
    assert res["train"].index["task"] == task
    if name == "photos-edges":
        batch = next(
            iter(make_eval_loader(str(tmp_path / name / "train"), task=task, direction="AtoB", size=None, batch_size=3))
        )
        edges = batch["A"]
        assert set(np.unique(edges.numpy())) <= {-1.0, 1.0} and (edges < 0).any()  # black lines on white


def test_cli_demo_then_inspect_with_contact_sheet(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "scenes", str(out), "--train", "4", "--val", "1", "--size", "32", "--shard-size", "2"]) == 0
    sheet = tmp_path / "sheet.png"
    assert main(["inspect", str(out / "train"), "--out", str(sheet), "--samples", "3", "--verify"]) == 0
    text = capsys.readouterr().out
    assert "scenes-000000.tar" in text and "translation" in text and "32x32" in text
    img = np.asarray(Image.open(sheet))
    assert img.ndim == 3 and img.shape[0] > 100 and img.std() > 10
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "scenes", str(out), "--train", "4"])
    assert exit_.value.code == 2 and "--overwrite" in capsys.readouterr().err


def test_inspect_reports_broken_shards(tmp_path):
    build_demo("scenes", tmp_path / "d", train=4, val=0, size=32, shard_size=2)
    shard = tmp_path / "d" / "train" / "scenes-000001.tar"
    shard.write_bytes(shard.read_bytes()[:3000])
    report = inspect_source(str(tmp_path / "d" / "train"), verify=True)
    assert report.shards[0].error is None and report.shards[1].error is not None
    assert report.bad >= 1 and report.total < 4


def test_shards_read_with_webdataset_itself(tmp_path):
    """Our shards are plain WebDataset shards: the webdataset library groups them the same way."""
    import webdataset as wds

    build_demo("scenes", tmp_path / "d", train=3, val=0, size=32, shard_size=2)
    urls = sorted(str(p) for p in (tmp_path / "d" / "train").glob("*.tar"))
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert [s["__key__"] for s in samples] == ["000000", "000001", "000002"]
    assert all({"a.jpg", "b.png", "label.png"} <= set(s) for s in samples)
