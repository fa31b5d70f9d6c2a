"""p2p-translate and p2p-export as users meet them (issue 26): no output over the inputs, no file
that runs code when loaded, unreadable images skipped and listed, shard sets of mixed sizes, and
write failures that name the file. Every case runs the console command in a subprocess."""

from __future__ import annotations

import io
import json
import pickle
import resource
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.env import BIN, ROOT, subprocess_env
from helpers.generators import write_small_checkpoint
from helpers.shards import write_png_shard

pytestmark = pytest.mark.slow


def _cli(name: str, *argv, limit_bytes: int | None = None) -> subprocess.CompletedProcess:
    limit = (lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))) if limit_bytes else None
    return subprocess.run(
        [str(BIN / name), *map(str, argv)],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
        preexec_fn=limit,
    )


def _refused(proc: subprocess.CompletedProcess, code: int = 2) -> str:
    """The one error line of a refused command (no traceback)."""
    assert proc.returncode == code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), proc.stderr[-3000:]
    return last


def _png(path: Path, seed: int, h: int = 128, w: int = 128) -> Path:
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_small_checkpoint(tmp_path_factory.mktemp("ckpt"))


def test_an_output_that_holds_the_inputs_is_refused_and_nothing_is_written(tmp_path, checkpoint):
    src = tmp_path / "photos"
    src.mkdir()
    _png(src / "a.png", 1)
    _png(src / "b.jpg", 2)
    before = _snapshot(src)
    (tmp_path / "link").symlink_to(src)
    for output in (src, tmp_path / "link", src / ".." / "photos"):
        line = _refused(_cli("p2p-translate", "--checkpoint", checkpoint, "--input", src, "--output", output))
        assert f"--output {output} is the folder of the input images" in line, line
        assert _snapshot(src) == before
    # an output folder inside the input folder is fine: the input listing is not recursive
    proc = _cli("p2p-translate", "--checkpoint", checkpoint, "--input", src, "--output", src / "out", "--mode", "eval")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (src / "out").iterdir()) == ["a.png", "b.png"]

    shards = tmp_path / "shards"
    shards.mkdir()
    write_png_shard(
        shards / "val-000000.tar",
        [("k", {"a.png": np.zeros((128, 128, 3), np.uint8), "b.png": np.zeros((128, 128, 3), np.uint8)})],
    )
    line = _refused(_cli("p2p-translate", "--checkpoint", checkpoint, "--shards", shards, "--output", shards))
    assert "is the folder of the shards" in line, line
    assert sorted(p.name for p in shards.iterdir()) == ["val-000000.tar"]

    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoint, ckpt)
    before = _snapshot(ckpt)
    for output in (ckpt / "generator", ckpt / "generator.safetensors"):  # FILE.json = the spec; the weights
        line = _refused(_cli("p2p-export", "--checkpoint", ckpt, "--format", "torchscript", "--output", output))
        assert f"--output {output} would write" in line and "which is the checkpoint's" in line, line
        assert _snapshot(ckpt) == before


class _Payload:
    """Unpickling this creates the marker file: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_files_that_unpickle_are_refused_and_never_run(tmp_path, checkpoint):
    marker = tmp_path / "pwned"
    src = tmp_path / "in"
    src.mkdir()
    _png(src / "a.png", 3)
    exported_meta = {
        "kind": "p2p_dist.exported_generator",
        "generator": {"format": 1, "name": "unet_128", "ngf": 8},
        "input": {"name": "input"},
        "output": {"name": "output"},
    }
    cases = []
    for name, fmt in (("evil.pt2", "exported"), ("evil.ts", "torchscript"), ("evil.onnx", "exported")):
        path = tmp_path / name
        with io.BytesIO() as buf:  # a torch.save archive (zip) whose data.pkl runs the payload
            torch.save({"w": _Payload(marker)}, buf)
            path.write_bytes(buf.getvalue())
        (tmp_path / f"{name}.json").write_text(json.dumps({**exported_meta, "format": fmt}))
        cases.append([path])
    (tmp_path / "bare.pt2").write_bytes(pickle.dumps(_Payload(marker)))  # no FILE.json at all
    cases.append([tmp_path / "bare.pt2"])
    evil_pth = tmp_path / "latest_net_G.pth"
    evil_pth.write_bytes((tmp_path / "evil.pt2").read_bytes())
    cases.append([evil_pth, "--from-reference", "--arch", "unet_128", "--ngf", "8"])
    for args in cases:
        proc = _cli("p2p-translate", "--checkpoint", *args, "--input", src, "--output", tmp_path / "out")
        line = _refused(proc)
        assert not marker.exists(), f"{args[0].name} ran its payload"
        assert str(args[0]) in line or args[0].name in line, line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())

    # a corrupt file of a format we do load (ONNX, with its FILE.json): one line, exit 2
    _cli("p2p-export", "--checkpoint", checkpoint, "--format", "onnx", "--output", tmp_path / "G.onnx")
    (tmp_path / "G.onnx").write_bytes(b"PK\x03\x04 not a model")
    line = _refused(
        _cli("p2p-translate", "--checkpoint", tmp_path / "G.onnx", "--input", src, "--output", tmp_path / "o")
    )
    assert "G.onnx" in line, line


def test_unreadable_images_are_skipped_counted_and_listed(tmp_path, checkpoint):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(10):
        _png(src / f"img{i:02d}.png", 10 + i)
    good = (src / "img00.png").read_bytes()
    (src / "img05b.png").write_bytes(good[:200])  # truncated in the middle of its pixels
    (src / "notes.jpg").write_text("not a picture")
    proc = _cli(
        "p2p-translate",
        "--checkpoint",
        checkpoint,
        "--input",
        src,
        "--output",
        tmp_path / "out",
        "--mode",
        "eval",
        "--batch-size",
        "4",
    )
    assert proc.returncode == 65, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"img{i:02d}.png" for i in range(10)]
    skipped = [line for line in proc.stderr.splitlines() if line.startswith("  skipped: ")]
    assert len(skipped) == 2 and "img05b.png" in skipped[0] and "notes.jpg" in skipped[1], proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "translated 10 image(s)" in last and "skipped 2 unreadable image(s)" in last, last

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(good[:200])
    line = _refused(_cli("p2p-translate", "--checkpoint", checkpoint, "--input", bad, "--output", tmp_path / "o2"))
    assert "none of the 1 image(s)" in line, line


def test_shards_of_mixed_sizes_are_resized_where_needed(tmp_path, checkpoint):
    rng = np.random.default_rng(7)
    odd = rng.integers(0, 256, (100, 70, 3), dtype=np.uint8)
    samples = [
        (
            "fits",
            {"a.png": rng.integers(0, 256, (128, 256, 3), dtype=np.uint8), "b.png": np.zeros((128, 256, 3), np.uint8)},
        ),
        ("odd", {"a.png": odd, "b.png": np.zeros((100, 70, 3), np.uint8)}),
        (
            "square",
            {"a.png": rng.integers(0, 256, (128, 128, 3), dtype=np.uint8), "b.png": np.zeros((128, 128, 3), np.uint8)},
        ),
    ]
    shards = tmp_path / "shards"
    shards.mkdir()
    write_png_shard(shards / "val-000000.tar", samples)
    out = tmp_path / "out"
    proc = _cli(
        "p2p-translate",
        "--checkpoint",
        checkpoint,
        "--shards",
        shards,
        "--output",
        out,
        "--mode",
        "eval",
        "--batch-size",
        "2",
        "--direction",
        "AtoB",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    shapes = {p.stem: np.asarray(Image.open(p)).shape for p in out.iterdir()}
    assert shapes == {"fits": (128, 256, 3), "odd": (100, 70, 3), "square": (128, 128, 3)}
    # the odd one went through the network as the same image from a folder does (resized and back)
    folder = tmp_path / "folder"
    folder.mkdir()
    Image.fromarray(odd).save(folder / "odd.png")
    proc = _cli(
        "p2p-translate", "--checkpoint", checkpoint, "--input", folder, "--output", tmp_path / "ref", "--mode", "eval"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "odd.png").read_bytes() == (tmp_path / "ref" / "odd.png").read_bytes()
    # --resize never still refuses the one that does not fit, naming it
    line = _refused(
        _cli(
            "p2p-translate",
            "--checkpoint",
            checkpoint,
            "--shards",
            shards,
            "--output",
            tmp_path / "n",
            "--resize",
            "never",
        )
    )
    assert "sample odd is 70x100" in line, line


@pytest.mark.parametrize("fmt", ["torchscript", "exported", "onnx"])
def test_a_failed_export_write_names_the_file_and_leaves_nothing(tmp_path, checkpoint, fmt):
    """The file size limit stands in for a full disk (tests/system/test_reliability_storage.py)."""
    out = tmp_path / "out" / f"G.{fmt}"
    line = _refused(
        _cli("p2p-export", "--checkpoint", checkpoint, "--format", fmt, "--output", out, limit_bytes=20_000), 74
    )
    assert line == f"error: could not write {out}: File too large", line
    assert not any((tmp_path / "out").iterdir()), "no half-written file"
