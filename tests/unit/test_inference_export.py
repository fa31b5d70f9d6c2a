"""p2p-export: ONNX / TorchScript / torch.export files verified against PyTorch, and p2p-translate
running them."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.generators import write_small_checkpoint
from p2p_dist.inference.cli import export_main, translate_main
from p2p_dist.inference.runtime import load_exported
from p2p_dist.models import load_generator, to_reference_state_dict


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_small_checkpoint(tmp_path_factory.mktemp("ckpt"))


def _export(*argv):
    return export_main([str(a) for a in argv])


def _last_error(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("fmt,name", [("onnx", "G.onnx"), ("torchscript", "G.ts"), ("exported", "G.pt2")])
def test_export_writes_a_verified_file_with_dynamic_shapes(tmp_path, checkpoint, fmt, name):
    out = tmp_path / name
    assert _export("--checkpoint", checkpoint, "--format", fmt, "--output", out) == 0
    meta = json.loads((tmp_path / f"{name}.json").read_text())
    assert meta["format"] == fmt and meta["mode"] == "eval" and meta["size_multiple"] == 128
    assert meta["input"]["name"] == "input" and meta["output"]["name"] == "output"
    assert meta["input"]["range"] == [-1.0, 1.0] and meta["verification"]["max_abs_diff"] <= 1e-4
    assert (meta["opset"] == 17) == (fmt == "onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, f"{name}.json"])  # no temp files left
    runner, spec, _ = load_exported(out)
    G, _ = load_generator(checkpoint)
    for shape in ((1, 3, 128, 128), (3, 3, 256, 128)):  # other batch and spatial sizes than the probe
        x = torch.rand(shape) * 2 - 1
        with torch.no_grad():
            torch.testing.assert_close(runner(x), G.eval()(x), atol=1e-4, rtol=0)


def test_translate_runs_an_onnx_file_like_the_checkpoint(tmp_path, checkpoint):
    _export("--checkpoint", checkpoint, "--format", "onnx", "--output", tmp_path / "G.onnx")
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (128, 256, 3), dtype=np.uint8)).save(src / "a.png")
    translate_main(
        [str(a) for a in ("--checkpoint", tmp_path / "G.onnx", "--input", src, "--output", tmp_path / "onnx")]
    )
    translate_main(
        [str(a) for a in ("--checkpoint", checkpoint, "--input", src, "--output", tmp_path / "torch", "--mode", "eval")]
    )
    a = np.asarray(Image.open(tmp_path / "onnx" / "a.png")).astype(int)
    b = np.asarray(Image.open(tmp_path / "torch" / "a.png")).astype(int)
    assert np.abs(a - b).max() <= 1 and (a == b).mean() > 0.999  # a 1e-6 difference may flip a rounding


def test_reference_checkpoints_export(tmp_path, checkpoint):
    G, _ = load_generator(checkpoint)
    torch.save(to_reference_state_dict(G.state_dict(), "unet_128"), tmp_path / "latest_net_G.pth")
    assert (
        _export(
            "--checkpoint",
            tmp_path / "latest_net_G.pth",
            "--from-reference",
            "--arch",
            "unet_128",
            "--ngf",
            "8",
            "--format",
            "torchscript",
            "--output",
            tmp_path / "ref.ts",
        )
        == 0
    )
    runner, spec, _ = load_exported(tmp_path / "ref.ts")
    x = torch.rand(2, 3, 128, 128) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(runner(x), G.eval()(x), atol=1e-5, rtol=0)


def test_paper_mode_and_missing_extra_are_one_line(tmp_path, checkpoint, capsys, monkeypatch):
    with pytest.raises(SystemExit) as exc:
        _export("--checkpoint", checkpoint, "--format", "onnx", "--output", tmp_path / "G.onnx", "--mode", "paper")
    assert exc.value.code == 2 and "eval-mode" in _last_error(capsys)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the export extra were not installed
    with pytest.raises(SystemExit) as exc:
        _export("--checkpoint", checkpoint, "--format", "onnx", "--output", tmp_path / "G.onnx")
    line = _last_error(capsys)
    assert exc.value.code == 2 and "onnxruntime" in line and "p2p-dist[export]" in line
    assert not any(tmp_path.iterdir())


def test_translate_refuses_paper_mode_and_bf16_on_exported_files(tmp_path, checkpoint, capsys):
    _export("--checkpoint", checkpoint, "--format", "onnx", "--output", tmp_path / "G.onnx")
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.zeros((128, 128, 3), np.uint8)).save(src / "a.png")
    for extra, words in ((["--mode", "paper"], "eval-mode generator only"), (["--precision", "bf16"], "PyTorch")):
        with pytest.raises(SystemExit):
            translate_main(
                [
                    str(a)
                    for a in ("--checkpoint", tmp_path / "G.onnx", "--input", src, "--output", tmp_path / "o", *extra)
                ]
            )
        assert words in _last_error(capsys)


def test_a_file_that_does_not_match_fails_and_keeps_nothing(tmp_path, checkpoint, capsys, monkeypatch):
    import p2p_dist.inference.export as export

    real = export.load_exported

    def off_by_a_bit(path):
        runner, spec, meta = real(path)
        return (lambda x: runner(x) + 1e-3), spec, meta

    monkeypatch.setattr(export, "load_exported", off_by_a_bit)
    with pytest.raises(SystemExit) as exc:
        _export("--checkpoint", checkpoint, "--format", "torchscript", "--output", tmp_path / "G.ts")
    assert exc.value.code == 2 and "limit 0.0001" in _last_error(capsys)
    assert not any(tmp_path.iterdir())


def test_export_help(capsys):
    with pytest.raises(SystemExit):
        export_main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--checkpoint", "--format", "--output", "--from-reference", "--opset"):
        assert flag in text
