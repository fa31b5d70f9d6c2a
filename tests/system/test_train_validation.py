"""Validation during training: val_* lines, exact resume with validation on, the training RNG
untouched (same weights with and without validation), the best checkpoint kept out of rotation,
and over 2 processes every sample once with the numbers `p2p-eval score` gives for the export; on
16-bit depth data exactly those numbers."""

from __future__ import annotations

import json

import pytest

from helpers.training import assert_same_weights, final_weights, score, train
from p2p_dist.data.cli import main as p2p_data
from p2p_dist.metric_table import METRICS
from p2p_eval.cli import main as p2p_eval

VAL = ["train.val_every=2", "train.best_metric=val_L1", "data.num_workers=0"]


def val_lines(out):
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "val_seconds"} for r in rows if "val_L1" in r]


def test_validation_resumes_exactly_and_leaves_training_alone(scenes_data, tmp_path):
    common = ["train.max_steps=6", "train.checkpoint_every=100", "train.keep_checkpoints=1"]
    train(scenes_data, tmp_path / "plain", *common, "data.num_workers=0")
    proc = train(scenes_data, tmp_path / "whole", *common, *VAL)
    assert "validation: val_L1" in proc.stderr
    train(scenes_data, tmp_path / "split", *common, *VAL, "train.stop_after=3")
    train(scenes_data, tmp_path / "split", *common, *VAL)
    assert_same_weights(final_weights(tmp_path / "plain"), final_weights(tmp_path / "whole"))
    assert_same_weights(final_weights(tmp_path / "whole"), final_weights(tmp_path / "split"))
    whole = val_lines(tmp_path / "whole")
    assert [r["step"] for r in whole] == [2, 4, 6] and whole == val_lines(tmp_path / "split")
    assert all(r["val_samples"] == 4 and {"val_PSNR", "val_SSIM"} <= r.keys() for r in whole)
    best = json.loads((tmp_path / "whole" / "checkpoints" / "best" / "best.json").read_text())
    vals = {r["step"]: r["val_L1"] for r in whole}
    assert best["metric"] == "val_L1" and best["value"] == min(vals.values())
    assert best["step"] == min(vals, key=vals.get)
    assert (tmp_path / "whole" / "checkpoints" / "best" / "generator.safetensors").is_file()
    kept = sorted(p.name for p in (tmp_path / "whole" / "checkpoints").iterdir())
    assert kept == ["best", "step-0000006"]  # rotation (keep 1) never removes best/


def test_best_metric_without_validation_is_refused(scenes_data, tmp_path):
    proc = train(scenes_data, tmp_path / "r", "train.max_steps=1", "train.best_metric=val_L1", check=False)
    assert proc.returncode == 2 and "train.best_metric needs train.val_every" in proc.stderr


@pytest.mark.slow
def test_two_process_validation_scores_every_sample_once_like_p2p_eval_score(scenes_data, tmp_path):
    out = tmp_path / "run"
    train(
        scenes_data,
        out,
        "train.max_steps=2",
        "train.batch_size=1",
        *VAL,
        nproc=2,
    )
    last = val_lines(out)[-1]
    assert last["step"] == 2 and last["val_samples"] == 4
    metrics = score(out / "final", scenes_data / "val", tmp_path / "score", "l1,psnr,ssim")["results"]["metrics"]
    # the same images, dropout seeds and metric code; the tolerance covers float rounding moving a few uint8 pixels
    assert last["val_L1"] == pytest.approx(metrics["l1"], rel=2e-3)
    assert last["val_PSNR"] == pytest.approx(metrics["psnr"], rel=2e-3)
    assert last["val_SSIM"] == pytest.approx(metrics["ssim"], rel=2e-3)


def test_validation_on_16_bit_depth_scores_the_stored_pixels_like_p2p_eval_score(tmp_path):
    """A 16-bit one-channel set (p2p-data demo scenes-depth): the val_* figures are p2p-eval score
    --checkpoint's on the same checkpoint and shards, exactly (both map the outputs back to 16 bits
    with the run's output range; the RGB metrics are left out on both sides)."""
    data = tmp_path / "data"
    assert p2p_data(["demo", "scenes-depth", str(data), "--train", "4", "--val", "3", "--size", "128"]) == 0
    small = ["model.generator=unet_128", "data.load_size=128", "data.crop_size=128", "train.max_steps=2"]
    proc = train(data, tmp_path / "run", *small, *VAL)
    assert "val_LPIPS, val_FID left out (they need 8-bit RGB; the validation images are 16-bit, 1 channel)" in (
        proc.stderr
    )
    last = val_lines(tmp_path / "run")[-1]
    assert last["step"] == 2 and last["val_samples"] == 3 and "val_LPIPS" not in last
    out = tmp_path / "score"
    assert (
        p2p_eval(
            ["score", "--checkpoint", str(tmp_path / "run" / "final"), "--shards", str(data / "val"), "--out", str(out)]
        )
        == 0
    )
    scores = json.loads((out / "scores.json").read_text())["results"]
    assert {k: last[m.val] for k, m in METRICS.items() if m.val in last} == {
        k: scores["metrics"][k] for k in ("l1", "psnr", "ssim")
    }
    assert scores["unavailable"]["color"].startswith("does not apply")
