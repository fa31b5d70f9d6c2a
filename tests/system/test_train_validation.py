"""Validation during training: val_* lines, exact resume with validation on, the training RNG
untouched (same weights with and without validation), the best checkpoint kept out of rotation,
and over 2 processes every sample once with the numbers `p2p-eval score` gives for the export."""

from __future__ import annotations

import json

import pytest

from helpers.training import assert_same_weights, final_weights, score, train

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
