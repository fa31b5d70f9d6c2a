"""`p2p-eval score` and `compare` end to end on real shards, predictions and an FCN evaluator:
FCN-score with the real-photo row, label-map scores, report files, reruns, clear errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from helpers.eval_fixtures import scene_samples, write_scene_shards
from p2p_eval.cli import main

N_VAL = 6


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalcli")
    train = write_scene_shards(root / "train", 12, size=64, split="train")
    write_scene_shards(root / "val", N_VAL, size=64, split="val", shard_size=4)
    assert (
        main(
            [
                "fcn-train",
                "--shards",
                str(train),
                "--out",
                str(root / "fcn"),
                "--size",
                "64",
                "--width",
                "4",
                "--epochs",
                "6",
                "--batch-size",
                "4",
                "--lr",
                "0.01",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    samples = scene_samples(N_VAL, 64, split="val")
    for name, make in {
        "real": lambda s: s["a"],
        "flat": lambda s: np.full_like(s["a"], 128),
        "labelmaps": lambda s: s["b"],
    }.items():
        (root / name).mkdir()
        for s in samples:
            Image.fromarray(make(s)).save(root / name / f"{s['key']}.png")
    return root


@pytest.fixture(autouse=True)
def empty_torch_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


def _score(root, pred, out, *extra):
    return main(
        [
            "score",
            "--pred",
            str(root / pred),
            "--shards",
            str(root / "val"),
            "--fcn",
            str(root / "fcn"),
            "--out",
            str(out),
            "--grid",
            "3",
            *extra,
        ]
    )


def test_score_compare_and_reports(setup, tmp_path):
    root = setup
    assert _score(root, "real", tmp_path / "real") == 0
    assert _score(root, "flat", tmp_path / "flat") == 0
    real = json.loads((tmp_path / "real" / "scores.json").read_text())
    res = real["results"]
    assert res["samples"] == N_VAL and res["mode"] == "photo"
    # predictions that ARE the real photos score exactly the ground-truth row
    for k in ("pixel_acc", "class_acc", "class_iou"):
        assert res["metrics"][k] == pytest.approx(res["real_photos"][k])
    assert res["metrics"]["l1"] == 0.0 and res["metrics"]["color_lab"] == pytest.approx(1.0)
    assert len(res["class_scores"]["per_class_iou"]) == 8
    assert "pt_inception" in res["unavailable"]["fid"] and "smaller than 161" in res["unavailable"]["ms_ssim"]
    flat = json.loads((tmp_path / "flat" / "scores.json").read_text())["results"]["metrics"]
    assert flat["pixel_acc"] < res["metrics"]["pixel_acc"] and flat["l1"] > 0
    for f in ("report.md", "report.json", "report.html"):
        assert (tmp_path / "real" / f).is_file()
    assert len(real["grid"]) == 3 and (tmp_path / "real" / real["grid"][0]["pred"]).is_file()

    out = tmp_path / "cmp"
    assert (
        main(["compare", f"good={tmp_path / 'real'}", str(tmp_path / "flat" / "scores.json"), "--out", str(out)]) == 0
    )
    report = json.loads((out / "report.json").read_text())
    assert [v["name"] for v in report["variants"]] == ["good", "flat"]
    assert report["best"]["pixel_acc"] == res["metrics"]["pixel_acc"] and report["best"]["l1"] == 0.0
    assert report["ground_truth"]["pixel_acc"] == res["real_photos"]["pixel_acc"]
    assert report["per_class_iou"]["classes"][0] == "road"
    md = (out / "report.md").read_text()
    assert "| good |" in md and "**" in md and "## Per-class IoU" in md
    html = (out / "report.html").read_text()
    assert html.count("<svg") >= 10 and html.count("data:image/png;base64,") == 3 * 4
    assert "http" not in html.replace("http://www.w3.org/2000/svg", "")  # self-contained

    # rerunning gives the same numbers and the same files
    before = (tmp_path / "flat" / "scores.json").read_bytes()
    assert _score(root, "flat", tmp_path / "flat") == 0
    assert (tmp_path / "flat" / "scores.json").read_bytes() == before
    first = (out / "report.json").read_bytes()
    assert main(["compare", f"good={tmp_path / 'real'}", str(tmp_path / "flat"), "--out", str(out)]) == 0
    assert (out / "report.json").read_bytes() == first


def test_label_maps_scored_by_nearest_palette_colour(setup, tmp_path):
    rc = main(
        [
            "score",
            "--pred",
            str(setup / "labelmaps"),
            "--shards",
            str(setup / "val"),
            "--direction",
            "AtoB",
            "--out",
            str(tmp_path / "lab"),
            "--metrics",
            "classes,l1",
        ]
    )
    assert rc == 0
    res = json.loads((tmp_path / "lab" / "scores.json").read_text())["results"]
    assert res["mode"] == "labels" and res["metrics"]["pixel_acc"] == pytest.approx(1.0)
    assert res["metrics"]["l1"] == 0.0 and "real_photos" not in res


def test_folder_pairs_image_metrics(setup, tmp_path):
    assert (
        main(
            [
                "score",
                "--pred",
                str(setup / "flat"),
                "--target",
                str(setup / "real"),
                "--out",
                str(tmp_path / "pairs"),
                "--metrics",
                "psnr,ssim",
            ]
        )
        == 0
    )
    res = json.loads((tmp_path / "pairs" / "scores.json").read_text())["results"]
    assert res["mode"] == "image" and set(res["metrics"]) == {"psnr", "ssim"}


def _run_cli(*args, env_home):
    import os

    env = dict(os.environ, TORCH_HOME=str(env_home), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "p2p_eval", *args], capture_output=True, text=True, env=env)


def test_errors_are_one_line_and_exit_2(setup, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(bad / "val_00000.png")
    r = _run_cli(
        "score",
        "--pred",
        str(bad),
        "--shards",
        str(setup / "val"),
        "--out",
        str(tmp_path / "o"),
        "--metrics",
        "l1",
        env_home=tmp_path,
    )
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("error: 5 sample(s) have no prediction: val_00001")
    assert "size mismatch" in line and "--resize" in line and "Traceback" not in r.stderr


def test_usage_errors_exit_2(tmp_path, capsys):
    for argv, text in (
        (["compare", str(tmp_path / "missing"), "--out", str(tmp_path / "o")], "no scores.json found"),
        (["score", "--pred", str(tmp_path), "--out", str(tmp_path / "o")], "--pred needs --target DIR or --shards"),
        (["score", "--out", str(tmp_path / "o"), "--metrics", "bogus"], "unknown metric"),
        (
            ["score", "--pred", str(tmp_path), "--target", str(tmp_path), "--out", str(tmp_path / "o")],
            "no images found",
        ),
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        assert text in capsys.readouterr().err


def test_help_texts(capsys):
    for cmd in ([], ["score"], ["compare"], ["fcn-train"]):
        with pytest.raises(SystemExit) as exc:
            main([*cmd, "--help"])
        assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "fcn-train" in out and "--checkpoint" in out and "NAME=PATH" in out


def test_colorization_checkpoint_scores_rgb_from_predicted_ab(tmp_path):
    from helpers.eval_fixtures import write_shards
    from p2p_dist.models import GeneratorSpec, build_generator, save_generator

    write_shards(tmp_path / "val", [dict(key=s["key"], img=s["a"]) for s in scene_samples(3, 32)], task="colorization")
    spec = GeneratorSpec(
        name="resnet_9blocks", in_channels=1, out_channels=2, ngf=8, task="colorization", image_size=32
    )
    save_generator(build_generator("resnet_9blocks", 1, 2, ngf=8), spec, tmp_path / "gen")
    assert (
        main(
            [
                "score",
                "--checkpoint",
                str(tmp_path / "gen"),
                "--shards",
                str(tmp_path / "val"),
                "--out",
                str(tmp_path / "o"),
                "--metrics",
                "l1,color",
            ]
        )
        == 0
    )
    scores = json.loads((tmp_path / "o" / "scores.json").read_text())
    res = scores["results"]
    assert res["mode"] == "image" and scores["inputs"]["task"] == "colorization"
    # L comes from the input, so the lightness histograms nearly agree; colours come from G
    assert res["metrics"]["color_L"] > 0.9 and 0 < res["metrics"]["l1"] < 1


def test_compare_names_two_pred_folders_apart(setup, tmp_path):
    """Two prediction folders both called `pred`, scored and compared as a user types it."""
    import shutil

    from helpers.env import BIN, subprocess_env

    def p2p_eval(*args):
        env = subprocess_env(TORCH_HOME=str(tmp_path / "torch"))
        return subprocess.run([str(BIN / "p2p-eval"), *args], capture_output=True, text=True, env=env, cwd=tmp_path)

    for exp, images in (("a", "real"), ("b", "flat")):
        shutil.copytree(setup / images, tmp_path / exp / "pred")
        r = p2p_eval("score", "--pred", f"{exp}/pred", "--target", str(setup / "real"), "--out", f"{exp}/score")
        assert r.returncode == 0, r.stderr[-2000:]
        assert json.loads((tmp_path / exp / "score" / "scores.json").read_text())["name"] == "pred"
    r = p2p_eval("compare", "a/score", "b/score", "--out", "cmp")
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((tmp_path / "cmp" / "report.json").read_text())
    assert [v["name"] for v in report["variants"]] == ["a/score", "b/score"]
    assert report["best"]["l1"] == 0.0 and "| a/score | b/score |" in (tmp_path / "cmp" / "report.md").read_text()
    # a NAME=PATH name stays as given (the other variant takes its folder's name);
    # one folder twice, or one name twice, is refused in one line
    r = p2p_eval("compare", "pred=a/score", "b/score", "--out", "cmp2")
    assert r.returncode == 0, r.stderr[-2000:]
    assert [v["name"] for v in json.loads((tmp_path / "cmp2" / "report.json").read_text())["variants"]] == [
        "pred",
        "score",
    ]
    for args in (("a/score", "a/score/scores.json"), ("x=a/score", "x=b/score")):
        r = p2p_eval("compare", *args, "--out", "cmp3")
        assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: several variants are named")
        assert "NAME=PATH" in r.stderr and not (tmp_path / "cmp3").exists()
