"""p2p-translate on temporary folders and shards with small real checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.color import rgb2lab

from helpers.env import BIN
from helpers.shards import write_png_shard
from p2p_dist.data.transforms import denormalize, to_tensor
from p2p_dist.inference.cli import translate_main as main
from p2p_dist.models import GeneratorSpec, build_generator, load_generator, save_generator, to_reference_state_dict

SPEC = GeneratorSpec(name="unet_128", ngf=8)


def _png(path, arr):
    Image.fromarray(arr).save(path)
    return path


def _noise(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _read(path):
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    G = SPEC.build()
    with torch.no_grad():
        G(torch.randn(4, 3, 128, 128))  # non-default BatchNorm statistics, as after training
    save_generator(G, SPEC, folder)
    return folder


def _expected(checkpoint, img_uint8):
    """What the generator gives for one image in eval mode, straight from the model."""
    G, _ = load_generator(checkpoint)
    with torch.no_grad():
        return denormalize(G.eval()(to_tensor(img_uint8)[None]))[0]


def _run(*argv):
    return main([str(a) for a in argv])


def _error(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exc:
        _run(*argv)
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("error: ")
    return lines[-1]


def test_folder_translation_keeps_names_and_sizes(tmp_path, checkpoint):
    src = tmp_path / "in"
    src.mkdir()
    a = _png(src / "a.png", _noise(128, 128, 1))
    _png(src / "b.jpg", _noise(128, 128, 2))
    _png(src / "odd.png", _noise(100, 70, 3))  # does not fit unet_128: resized and back
    (src / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    assert _run("--checkpoint", checkpoint, "--input", src, "--output", out, "--mode", "eval", "--batch-size", "2") == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "odd.png"]
    assert _read(out / "odd.png").shape == (100, 70, 3)
    np.testing.assert_array_equal(_read(out / "a.png"), _expected(checkpoint, _read(a)))


def test_paper_mode_is_seeded_and_differs_from_eval(tmp_path, checkpoint):
    src = tmp_path / "in"
    src.mkdir()
    _png(src / "x.png", _noise(128, 128, 4))
    outs = {}
    for name, extra in (("p1", []), ("p2", []), ("p3", ["--seed", "1"]), ("ev", ["--mode", "eval"])):
        _run("--checkpoint", checkpoint, "--input", src, "--output", tmp_path / name, *extra)
        outs[name] = _read(tmp_path / name / "x.png")
    np.testing.assert_array_equal(outs["p1"], outs["p2"])
    assert not np.array_equal(outs["p1"], outs["p3"])
    assert not np.array_equal(outs["p1"], outs["ev"])


def test_aligned_pairs_use_the_chosen_half(tmp_path, checkpoint):
    A, B = _noise(128, 128, 5), _noise(128, 128, 6)
    src = tmp_path / "in"
    src.mkdir()
    _png(src / "pair.png", np.concatenate([A, B], axis=1))
    for direction, half in (("AtoB", A), ("BtoA", B)):
        out = tmp_path / direction
        _run(
            "--checkpoint",
            checkpoint,
            "--input",
            src,
            "--aligned",
            "--direction",
            direction,
            "--output",
            out,
            "--mode",
            "eval",
        )
        np.testing.assert_array_equal(_read(out / "pair.png"), _expected(checkpoint, half))


def test_resize_always_and_never(tmp_path, checkpoint, capsys):
    src = tmp_path / "in"
    src.mkdir()
    _png(src / "big.png", _noise(256, 256, 7))
    _png(src / "odd.png", _noise(60, 90, 8))
    _run(
        "--checkpoint",
        checkpoint,
        "--input",
        src,
        "--output",
        tmp_path / "always",
        "--resize",
        "always",
        "--mode",
        "eval",
    )
    assert _read(tmp_path / "always" / "big.png").shape == (256, 256, 3)
    assert _read(tmp_path / "always" / "odd.png").shape == (60, 90, 3)
    err = _error(
        capsys, "--checkpoint", checkpoint, "--input", src, "--output", tmp_path / "never", "--resize", "never"
    )
    assert "odd.png is 90x60" in err and "multiples of 128" in err
    assert not (tmp_path / "never").exists() or not any((tmp_path / "never").iterdir())


def test_reference_checkpoint_gives_the_same_images(tmp_path, checkpoint):
    G, _ = load_generator(checkpoint)
    ref_file = tmp_path / "latest_net_G.pth"
    torch.save(to_reference_state_dict(G, "unet_128", ngf=8), ref_file)
    src = tmp_path / "in"
    src.mkdir()
    _png(src / "x.png", _noise(128, 128, 9))
    _run("--checkpoint", checkpoint, "--input", src, "--output", tmp_path / "ours", "--mode", "eval")
    _run(
        "--checkpoint",
        ref_file,
        "--from-reference",
        "--arch",
        "unet_128",
        "--ngf",
        "8",
        "--input",
        src,
        "--output",
        tmp_path / "ref",
        "--mode",
        "eval",
    )
    np.testing.assert_array_equal(_read(tmp_path / "ours" / "x.png"), _read(tmp_path / "ref" / "x.png"))


def test_colorization_writes_rgb_through_lab_keeping_the_input_lightness(tmp_path):
    spec = GeneratorSpec(name="resnet_9blocks", in_channels=1, out_channels=2, ngf=8, task="colorization")
    save_generator(build_generator("resnet_9blocks", 1, 2, ngf=8), spec, tmp_path / "ckpt")
    src = tmp_path / "in"
    src.mkdir()
    # a smooth image: its lightness survives the Lab round trip with new colours
    yy, xx = np.mgrid[0:64, 0:48]
    img = np.stack([xx * 4, yy * 3, np.full_like(xx, 120)], axis=-1).astype(np.uint8)
    _png(src / "photo.png", img)
    _run("--checkpoint", tmp_path / "ckpt", "--input", src, "--output", tmp_path / "out")
    out = _read(tmp_path / "out" / "photo.png")
    assert out.shape == (64, 48, 3)
    L_in = rgb2lab(img / 255.0)[..., 0]
    L_out = rgb2lab(out / 255.0)[..., 0]
    assert np.median(np.abs(L_in - L_out)) < 2.0


def test_shards_are_translated_to_key_png(tmp_path, checkpoint):
    shards = tmp_path / "shards"
    shards.mkdir()
    samples = [(f"s{i:03d}", {"a.png": _noise(128, 128, 20 + i), "b.png": _noise(128, 128, 40 + i)}) for i in range(3)]
    write_png_shard(shards / "val-000000.tar", samples[:2])
    write_png_shard(shards / "val-000001.tar", samples[2:])
    out = tmp_path / "out"
    _run(
        "--checkpoint",
        checkpoint,
        "--shards",
        shards,
        "--output",
        out,
        "--direction",
        "BtoA",
        "--mode",
        "eval",
        "--batch-size",
        "2",
    )
    assert sorted(p.name for p in out.iterdir()) == ["s000.png", "s001.png", "s002.png"]
    np.testing.assert_array_equal(_read(out / "s002.png"), _expected(checkpoint, samples[2][1]["b.png"]))


def test_direction_defaults_to_the_checkpoint_record(tmp_path, checkpoint):
    G, _ = load_generator(checkpoint)
    save_generator(G, GeneratorSpec(name="unet_128", ngf=8, direction="BtoA"), tmp_path / "ckpt")
    A, B = _noise(128, 128, 11), _noise(128, 128, 12)
    src = tmp_path / "in"
    src.mkdir()
    _png(src / "pair.png", np.concatenate([A, B], axis=1))
    _run("--checkpoint", tmp_path / "ckpt", "--input", src, "--aligned", "--output", tmp_path / "out", "--mode", "eval")
    np.testing.assert_array_equal(_read(tmp_path / "out" / "pair.png"), _expected(checkpoint, B))


def test_user_errors_are_one_line_and_exit_2(tmp_path, checkpoint, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds no images" in _error(capsys, "--checkpoint", checkpoint, "--input", empty, "--output", tmp_path / "o")
    src = tmp_path / "in"
    src.mkdir()
    _png(src / "x.png", _noise(128, 128, 13))
    blocker = tmp_path / "file"
    blocker.write_text("a file where the output folder should go")
    assert "not writable" in _error(capsys, "--checkpoint", checkpoint, "--input", src, "--output", blocker / "sub")
    assert "holds a unet_128 generator, not unet_256" in _error(
        capsys, "--checkpoint", checkpoint, "--arch", "unet_256", "--input", src, "--output", tmp_path / "o"
    )
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"garbage")
    assert "cannot read" in _error(
        capsys,
        "--checkpoint",
        junk,
        "--from-reference",
        "--arch",
        "unet_256",
        "--input",
        src,
        "--output",
        tmp_path / "o",
    )
    ref = tmp_path / "ref.pth"
    torch.save(to_reference_state_dict(load_generator(checkpoint)[0], "unet_128", ngf=8), ref)
    err = _error(
        capsys,
        "--checkpoint",
        ref,
        "--from-reference",
        "--arch",
        "unet_256",
        "--ngf",
        "8",
        "--input",
        src,
        "--output",
        tmp_path / "o",
    )
    assert "does not match reference unet_256" in err and "looks like unet_128" in err
    assert "needs --arch" in _error(
        capsys, "--checkpoint", ref, "--from-reference", "--input", src, "--output", tmp_path / "o"
    )
    assert "does not exist" in _error(
        capsys, "--checkpoint", tmp_path / "nope", "--input", src, "--output", tmp_path / "o"
    )
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "generator.safetensors").write_bytes((checkpoint / "generator.safetensors").read_bytes())
    (bad / "generator.json").write_text(json.dumps({"format": 1, "name": "unet_128", "norm": "weird"}))
    assert "invalid generator spec" in _error(
        capsys, "--checkpoint", bad / "generator.json", "--input", src, "--output", tmp_path / "o"
    )
    _png(src / "x.jpg", _noise(128, 128, 14))
    assert "both be written as x.png" in _error(
        capsys, "--checkpoint", checkpoint, "--input", src, "--output", tmp_path / "o"
    )


def test_help_describes_the_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in (
        "--checkpoint",
        "--input",
        "--shards",
        "--aligned",
        "--direction",
        "--mode",
        "--from-reference",
        "--resize",
        "--batch-size",
        "--device",
    ):
        assert flag in out


def test_colorization_shards(tmp_path):
    spec = GeneratorSpec(name="resnet_9blocks", in_channels=1, out_channels=2, ngf=8, task="colorization")
    save_generator(build_generator("resnet_9blocks", 1, 2, ngf=8), spec, tmp_path / "ckpt")
    shards = tmp_path / "shards"
    shards.mkdir()
    write_png_shard(shards / "c-000000.tar", [(f"k{i}", {"img.png": _noise(32, 32, 60 + i)}) for i in range(3)])
    _run("--checkpoint", tmp_path / "ckpt", "--shards", shards, "--output", tmp_path / "out", "--batch-size", "2")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["k0.png", "k1.png", "k2.png"]
    assert _read(tmp_path / "out" / "k0.png").shape == (32, 32, 3)


def test_duplicate_shard_keys_are_refused_not_overwritten(tmp_path, checkpoint, capsys):
    shards = tmp_path / "shards"
    shards.mkdir()
    same = {"a.png": _noise(128, 128, 1), "b.png": _noise(128, 128, 2)}
    write_png_shard(shards / "val-000000.tar", [("k", same)])
    write_png_shard(shards / "val-000001.tar", [("k", same)])
    line = _error(capsys, "--checkpoint", checkpoint, "--shards", shards, "--output", tmp_path / "out")
    assert "sample key 'k' occurs twice" in line, line


def test_a_failed_image_write_is_one_line_and_exit_74(tmp_path, checkpoint):
    """The file size limit stands in for a full disk (as in tests/system/test_reliability_storage.py)."""
    import resource
    import subprocess

    from helpers.env import subprocess_env

    src = tmp_path / "in"
    src.mkdir()
    _png(src / "x.png", _noise(128, 128, 3))
    proc = subprocess.run(
        [
            str(BIN / "p2p-translate"),
            "--checkpoint",
            str(checkpoint),
            "--input",
            str(src),
            "--output",
            str(tmp_path / "out"),
        ],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000)),
    )
    assert proc.returncode == 74, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr and last.startswith(f"error: could not write {tmp_path / 'out' / 'x.png'}")
    assert not list((tmp_path / "out").iterdir()), "no half-written image"
