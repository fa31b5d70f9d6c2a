"""Input matching: folders by name, predictions against shard keys, clear mismatch errors."""

import numpy as np
import pytest
from PIL import Image

from helpers.eval_fixtures import write_scene_shards
from p2p_dist.errors import UserError
from p2p_eval.inputs import FolderPairs, PredictionsOnShards, images_by_name, raise_problems


def _img(path, size=(16, 16), value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), value, np.uint8)).save(path)


def test_folder_pairs_match_by_relative_name_across_extensions(tmp_path):
    for name in ("a", "sub/b", "c"):
        _img(tmp_path / "pred" / f"{name}.png", value=10)
        _img(tmp_path / "target" / f"{name}.jpg", value=20)
    pairs = FolderPairs(tmp_path / "pred", tmp_path / "target")
    samples = list(pairs)
    assert [s.key for s in samples] == ["a", "c", "sub/b"]
    assert samples[0].pred.shape == (16, 16, 3) and samples[0].input is None
    # two processes split the keys, every key exactly once
    split = [s.key for r in (0, 1) for s in FolderPairs(tmp_path / "pred", tmp_path / "target", rank=r, world_size=2)]
    assert sorted(split) == ["a", "c", "sub/b"]


def test_folder_pairs_name_mismatch_lists_first_few(tmp_path):
    for i in range(8):
        _img(tmp_path / "pred" / f"p{i}.png")
        _img(tmp_path / "target" / f"t{i}.png")
    with pytest.raises(UserError) as exc:
        FolderPairs(tmp_path / "pred", tmp_path / "target")
    msg = str(exc.value)
    assert "8 sample(s) have no prediction: t0, t1, t2, t3, t4 (and 3 more)" in msg
    assert "8 prediction(s) have no target: p0" in msg


def test_folder_pairs_size_mismatch_or_resize(tmp_path):
    _img(tmp_path / "pred" / "x.png", size=(8, 8))
    _img(tmp_path / "target" / "x.png", size=(16, 12))
    with pytest.raises(UserError, match=r"1 size mismatch\(es\): x \(8x8 vs 12x16\).*--resize"):
        FolderPairs(tmp_path / "pred", tmp_path / "target")
    (s,) = list(FolderPairs(tmp_path / "pred", tmp_path / "target", resize=True))
    assert s.pred.shape == s.target.shape == (16, 12, 3)


def test_images_by_name_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        images_by_name(tmp_path / "nope")
    _img(tmp_path / "d" / "a.png")
    _img(tmp_path / "d" / "a.jpg")
    with pytest.raises(UserError, match="two images named a"):
        images_by_name(tmp_path / "d")


def test_predictions_on_shards_reads_targets_and_labels(tmp_path):
    shards = write_scene_shards(tmp_path / "val", 5, size=32, shard_size=2)
    for i in range(4):  # val_00004 has no prediction
        _img(tmp_path / "pred" / f"val_{i:05d}.png", size=(32, 32), value=i)
    _img(tmp_path / "pred" / "stray.png", size=(32, 32))
    src = PredictionsOnShards(
        tmp_path / "pred", str(shards), task="translation", direction="BtoA", size=None, with_labels=True
    )
    samples = list(src)
    assert [s.key for s in samples] == [f"val_{i:05d}" for i in range(4)]
    s = samples[0]
    assert s.target.shape == (32, 32, 3) and s.input.shape == (32, 32, 3) and s.label.shape == (32, 32)
    assert s.label.max() < 8
    assert src.problems["missing_pred"] == ["val_00004"]
    assert src.extra_predictions(src.seen) == ["stray"]
    with pytest.raises(UserError, match="1 sample\\(s\\) have no prediction: val_00004"):
        raise_problems(src.problems)
