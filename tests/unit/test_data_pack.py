"""p2p_dist.data.pack / writer / cli pack: every packer on small folders of real JPEG/PNG files."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from p2p_dist.data import pack as packers
from p2p_dist.data.cityscapes import label_ids_to_train_ids
from p2p_dist.data.cli import main
from p2p_dist.data.errors import DataError
from p2p_dist.data.loader import make_eval_loader
from p2p_dist.data.pack import PackOptions
from p2p_dist.data.shards import expand_shards, iter_raw_samples
from p2p_dist.data.transforms import denormalize
from p2p_dist.data.writer import Packed, pack


def save(path: Path, arr: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return path


def colour(seed: int, h: int = 16, w: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def read_all(folder: Path) -> dict[str, dict]:
    out = {}
    for url in expand_shards(str(folder)):
        for s in iter_raw_samples(url, lambda *a: pytest.fail(f"bad shard {a}")):
            out[s.key] = {k: s.read(k) for k in s.fields}
    return out


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- aligned ---------------------------------------------------------------------------------


@pytest.fixture
def aligned_src(tmp_path) -> Path:
    src = tmp_path / "facades"
    for split, n in (("train", 5), ("val", 2)):
        for i in range(n):
            save(src / split / f"{i + 1}.png", np.concatenate([colour(i), colour(100 + i)], axis=1))
    return src


def test_pack_aligned_splits_halves_and_reads_back(aligned_src, tmp_path):
    out = tmp_path / "shards"
    results = packers.pack_aligned(aligned_src, out, opts=PackOptions(shard_size=2))
    assert set(results) == {"train", "val"}
    assert listing(out / "train") == ["facades-000000.tar", "facades-000001.tar", "facades-000002.tar", "index.json"]
    index = json.loads((out / "train" / "index.json").read_text())
    assert index["task"] == "translation" and index["split"] == "train" and index["total"] == 5
    assert [s["samples"] for s in index["shards"]] == [2, 2, 1] and index["image_size"] == [16, 16]
    samples = read_all(out / "train")
    assert sorted(samples) == ["1", "2", "3", "4", "5"]
    assert np.array_equal(decode(samples["3"]["a.png"]), colour(2))  # A = left half, lossless
    assert np.array_equal(decode(samples["3"]["b.png"]), colour(102))
    batch = next(
        iter(make_eval_loader(str(out / "val"), task="translation", direction="AtoB", size=None, batch_size=2))
    )
    assert np.array_equal(denormalize(batch["A"][0]), colour(0)) and batch["key"] == ["1", "2"]


def test_pack_aligned_one_split_resized_jpeg(aligned_src, tmp_path):
    out = tmp_path / "shards"
    packers.pack_aligned(aligned_src, out, splits=["val"], opts=PackOptions(resize=8, format="jpg", quality=90))
    assert listing(out) == ["val"]
    s = read_all(out / "val")["2"]
    assert sorted(s) == ["a.jpg", "b.jpg"] and decode(s["a.jpg"]).shape == (8, 8, 3)
    with pytest.raises(DataError, match="no split folder test"):
        packers.pack_aligned(aligned_src, tmp_path / "o2", splits=["test"])


def test_existing_pack_is_refused_unless_overwrite(aligned_src, tmp_path):
    out = tmp_path / "shards"
    packers.pack_aligned(aligned_src, out, opts=PackOptions(shard_size=2))
    with pytest.raises(DataError, match="--overwrite"):
        packers.pack_aligned(aligned_src, out)
    (out / "train" / "facades-000009.tar").write_bytes(b"stale")  # a leftover of an older pack
    packers.pack_aligned(aligned_src, out, opts=PackOptions(shard_size=10, overwrite=True))
    assert listing(out / "train") == ["facades-000000.tar", "index.json"]  # no stale or temp files


def test_shards_are_identical_for_any_worker_count(aligned_src, tmp_path):
    one = packers.pack_aligned(aligned_src, tmp_path / "one", opts=PackOptions(shard_size=2, format="jpg"))
    two = packers.pack_aligned(aligned_src, tmp_path / "two", opts=PackOptions(shard_size=2, format="jpg", workers=2))
    for name in ("facades-000000.tar", "facades-000001.tar", "facades-000002.tar"):
        assert (one["train"].out / name).read_bytes() == (two["train"].out / name).read_bytes()


# --- interrupted packs ---------------------------------------------------------------------


class Boom(RuntimeError):
    pass


def encode_number(i: int) -> Packed:
    return Packed(f"n{i:03d}", {"img.png": png_bytes(np.full((4, 4, 3), i, np.uint8))}, (4, 4))


def encode_failing_at_5(i: int) -> Packed:
    if i == 5:
        raise Boom("killed")
    return encode_number(i)


def png_bytes(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_interrupted_pack_leaves_no_half_shard_and_resumes(tmp_path):
    out = tmp_path / "p"
    meta = {"task": "colorization", "dataset": "n"}
    with pytest.raises(Boom):
        pack(out, "n", list(range(8)), encode_failing_at_5, meta, shard_size=2)
    # two complete shards under final names, nothing half-written, no index yet
    assert [p.name for p in sorted(out.glob("*.tar"))] == ["n-000000.tar", "n-000001.tar"]
    assert not (out / "index.json").exists() and not list(out.glob("*.tmp"))
    before = (out / "n-000000.tar").stat().st_mtime_ns
    with pytest.raises(DataError, match="--resume"):
        pack(out, "n", list(range(8)), encode_number, meta, shard_size=2)
    result = pack(out, "n", list(range(8)), encode_number, meta, shard_size=2, resume=True)
    assert result.kept_shards == 2 and (out / "n-000000.tar").stat().st_mtime_ns == before
    fresh = pack(tmp_path / "fresh", "n", list(range(8)), encode_number, meta, shard_size=2)
    for name in ("n-000000.tar", "n-000003.tar"):
        assert (out / name).read_bytes() == (fresh.out / name).read_bytes()
    assert json.loads((out / "index.json").read_text())["total"] == 8
    assert listing(out) == ["index.json", "n-000000.tar", "n-000001.tar", "n-000002.tar", "n-000003.tar"]


def test_resumed_real_pack_keeps_finished_shards(aligned_src, tmp_path, monkeypatch):
    import p2p_dist.data.writer as writer

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "shards"
    with monkeypatch.context() as m:
        m.setattr(writer, "write_index", crash)
        with pytest.raises(KeyboardInterrupt):
            packers.pack_aligned(aligned_src, out, splits=["train"], opts=PackOptions(shard_size=2))
    assert not (out / "train" / "index.json").exists()
    res = packers.pack_aligned(
        aligned_src, out, splits=["train"], opts=PackOptions(shard_size=2, resume=True, workers=2)
    )
    assert res["train"].kept_shards == 3 and res["train"].index["total"] == 5
    # changed options change the samples: nothing may be kept
    (out / "train" / "index.json").unlink()
    with monkeypatch.context() as m:
        m.setattr(writer, "write_index", crash)
        with pytest.raises(KeyboardInterrupt):
            packers.pack_aligned(aligned_src, out, splits=["train"], opts=PackOptions(shard_size=2, overwrite=True))
    res = packers.pack_aligned(
        aligned_src, out, splits=["train"], opts=PackOptions(shard_size=2, resize=8, resume=True)
    )
    assert res["train"].kept_shards == 0 and res["train"].index["image_size"] == [8, 8]


# --- paired ----------------------------------------------------------------------------------


def test_pack_paired_matches_by_stem_and_reports_unmatched(tmp_path):
    a_dir, b_dir = tmp_path / "A", tmp_path / "B"
    for i in range(3):
        save(a_dir / f"img{i}.png", colour(i))
        save(b_dir / f"img{i}.jpg", colour(10 + i), quality=95)
    save(a_dir / "only_a.png", colour(7))
    save(b_dir / "only_b.png", colour(8))
    save(b_dir / "img0_big.png", colour(9, 20, 20))
    res = packers.pack_paired(a_dir, b_dir, tmp_path / "out", opts=PackOptions())
    assert res.a_only == ["only_a"] and res.b_only == ["img0_big", "only_b"]
    index = res.result.index
    assert index["total"] == 3 and index["unmatched"] == {"a_only": 1, "b_only": 2}
    s = read_all(tmp_path / "out")["img1"]
    assert sorted(s) == ["a.png", "b.jpg"] and np.array_equal(decode(s["a.png"]), colour(1))


def test_pack_paired_skips_size_mismatch_without_resize(tmp_path):
    a_dir, b_dir = tmp_path / "A", tmp_path / "B"
    save(a_dir / "x.png", colour(1))
    save(b_dir / "x.png", colour(2, 20, 20))
    save(a_dir / "y.png", colour(3))
    save(b_dir / "y.png", colour(4))
    res = packers.pack_paired(a_dir, b_dir, tmp_path / "out")
    assert res.result.index["total"] == 1 and res.result.skipped["size mismatch"] == 1
    resized = packers.pack_paired(a_dir, b_dir, tmp_path / "out2", opts=PackOptions(resize=12))
    assert resized.result.index["total"] == 2 and resized.result.index["image_size"] == [12, 12]


# --- colorization ----------------------------------------------------------------------------


def test_pack_colorization_walks_tree_and_skips_greyscale(tmp_path):
    src = tmp_path / "imagenet" / "train"
    save(src / "n01" / "a_1.JPEG", colour(1, 24, 32), format="JPEG", quality=95)
    save(src / "n01" / "a_2.JPEG", colour(2, 24, 32), format="JPEG", quality=95)
    save(src / "n02" / "b.1.png", colour(3, 30, 20))
    save(src / "n02" / "grey.png", colour(4)[:, :, 0])  # mode L
    grey_rgb = np.repeat(colour(5)[:, :, :1], 3, axis=2)
    save(src / "n02" / "grey_rgb.jpg", grey_rgb, format="JPEG", quality=95)  # RGB file, no colour
    (src / "n02" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    res = packers.pack_colorization(src, tmp_path / "out", opts=PackOptions(resize=16, format="jpg", workers=2))
    assert res.index["task"] == "colorization" and res.index["total"] == 3
    assert res.skipped["greyscale"] == 2 and res.skipped["unreadable"] == 1
    assert res.index["skipped"] == {"greyscale": 2, "unreadable": 1} and res.index["image_size"] == [16, 16]
    samples = read_all(tmp_path / "out")
    assert sorted(samples) == ["n01/a_1", "n01/a_2", "n02/b_1"]
    batch = next(
        iter(make_eval_loader(str(tmp_path / "out"), task="colorization", direction="AtoB", size=None, batch_size=3))
    )
    assert batch["A"].shape == (3, 1, 16, 16) and batch["B"].shape == (3, 2, 16, 16)


def test_keep_aspect_resizes_the_shorter_side(tmp_path):
    src = tmp_path / "photos"
    save(src / "wide.png", colour(1, 20, 40))
    res = packers.pack_colorization(src, tmp_path / "out", opts=PackOptions(resize=10, keep_aspect=True))
    assert res.index["image_size"] == [10, 20]


# --- cityscapes ----------------------------------------------------------------------------------


def test_pack_cityscapes_maps_label_ids_to_train_ids(tmp_path):
    root = tmp_path / "cityscapes"
    ids = np.zeros((16, 32), np.uint8)
    ids[:8] = 23  # sky -> 10
    ids[8:, :16] = 7  # road -> 0
    ids[8:, 16:] = 26  # car -> 13
    ids[0, 0] = 1  # ego vehicle -> ignore
    ids[15, 31] = 33  # bicycle -> 18
    for split, stem in (("train", "aachen_000000_000019"), ("val", "frankfurt_000000_000294")):
        city = stem.split("_")[0]
        save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", colour(1, 16, 32))
        rgba = np.concatenate([colour(2, 16, 32), np.full((16, 32, 1), 255, np.uint8)], axis=2)
        save(root / "gtFine" / split / city / f"{stem}_gtFine_color.png", rgba)
        save(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", ids)
    save(root / "leftImg8bit" / "train" / "aachen" / "aachen_000001_000019_leftImg8bit.png", colour(3, 16, 32))
    out = tmp_path / "shards"
    results = packers.pack_cityscapes(root, out, opts=PackOptions(resize=8))
    assert set(results) == {"train", "val"}
    train = results["train"]
    assert train.index["total"] == 1 and train.skipped["missing gtFine"] == 1
    assert len(train.index["classes"]) == 19 and train.index["palette"][13] == [0, 0, 142]
    s = read_all(out / "train")["aachen_000000_000019"]
    assert sorted(s) == ["a.png", "b.png", "label.png", "labelids.png"]
    label = decode(s["label.png"])
    assert label.shape == (8, 8) and set(np.unique(label)) <= {0, 10, 13, 18, 255}
    assert label[0, 4] == 10 and label[6, 1] == 0 and label[6, 6] == 13
    assert decode(s["b.png"]).shape == (8, 8, 3)  # RGBA colour map stored as RGB
    batch = next(
        iter(
            make_eval_loader(
                str(out / "val"), task="translation", direction="BtoA", size=8, batch_size=1, with_labels=True
            )
        )
    )
    assert batch["label"].dtype.is_floating_point is False and batch["label"].shape == (1, 8, 8)


def test_cityscapes_table():
    ids = np.array([[0, 7, 8, 11, 24, 26, 33, 255]], np.uint8)
    assert label_ids_to_train_ids(ids).tolist() == [[255, 0, 1, 2, 11, 13, 18, 255]]


# --- the command line ------------------------------------------------------------------------


def test_cli_pack_and_one_line_errors(aligned_src, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["pack", "aligned", str(aligned_src), str(out), "--split", "train", "--shard-size", "3"]) == 0
    assert listing(out / "train") == ["facades-000000.tar", "facades-000001.tar", "index.json"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["pack", "aligned", str(aligned_src), str(out), "--split", "train"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "--overwrite" in err and "\n" not in err
    with pytest.raises(SystemExit) as exit_:
        main(["pack", "paired", str(tmp_path / "nope"), str(aligned_src), str(tmp_path / "o")])
    assert exit_.value.code == 2 and "is not a folder" in capsys.readouterr().err


def test_sources_whose_names_clean_to_the_same_key_are_refused_before_packing(tmp_path):
    """`a.1.png` and `a 1.png` both become key `a_1`: in different shards they would silently make
    translated outputs overwrite each other, so the pack refuses up front and writes nothing."""
    src = tmp_path / "photos"
    src.mkdir()
    save(src / "a.1.png", colour(1))
    save(src / "a 1.png", colour(2))
    out = tmp_path / "shards"
    with pytest.raises(DataError, match=r"both become sample key 'a_1'"):
        packers.pack_colorization(src, out, opts=PackOptions(shard_size=1))
    assert not out.exists() or not any(out.iterdir())


# --- what --overwrite removes, what a source holds that is not packed, failed writes --------------


def test_overwrite_replaces_only_its_own_set_and_names_it(aligned_src, tmp_path, capsys):
    """`p2p-data pack ... OUT --overwrite` removes index.json, the shards it lists and NAME-*.tar,
    names them, and leaves another data set's shards of another name alone; the refusal without
    --overwrite lists what would go."""
    out = tmp_path / "out"
    assert main(["pack", "aligned", str(aligned_src / "train"), str(out), "--shard-size", "2"]) == 0
    foreign = out / "maps-000000.tar"
    foreign.write_bytes(b"another data set's shard")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["pack", "aligned", str(aligned_src / "train"), str(out), "--shard-size", "3"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and "\n" not in err
    assert "--overwrite to replace index.json, train-000000.tar, train-000001.tar, train-000002.tar (4 files)" in err
    assert "shards of another set stay: maps-000000.tar (1 file)" in err

    assert main(["pack", "aligned", str(aligned_src / "train"), str(out), "--shard-size", "3", "--overwrite"]) == 0
    printed = capsys.readouterr().out
    assert "--overwrite removed the set it replaced" in printed
    assert "index.json, train-000000.tar, train-000001.tar, train-000002.tar (4 files)" in printed
    assert listing(out) == ["index.json", "maps-000000.tar", "train-000000.tar", "train-000001.tar"]
    assert foreign.read_bytes() == b"another data set's shard"

    # another name over this set: the set the index lists goes, the foreign shard stays
    assert main(["pack", "aligned", str(aligned_src / "train"), str(out), "--name", "f2", "--overwrite"]) == 0
    assert listing(out) == ["f2-000000.tar", "index.json", "maps-000000.tar"]


def test_pack_reports_what_it_does_not_read_and_names_unreadable_files(aligned_src, tmp_path, capsys):
    """Symbolic links to folders are not followed and loose images beside the split folders are not
    packed: both are reported; an unreadable image's skip line names the file, not a Python tuple."""
    elsewhere = tmp_path / "elsewhere"
    save(elsewhere / "e.png", np.concatenate([colour(7), colour(8)], axis=1))
    (aligned_src / "train" / "linked").symlink_to(elsewhere, target_is_directory=True)
    save(aligned_src / "loose.png", np.concatenate([colour(9), colour(10)], axis=1))
    (aligned_src / "train" / "broken.png").write_bytes(b"not an image")
    capsys.readouterr()
    assert main(["pack", "aligned", str(aligned_src), str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert f"not followed: {aligned_src / 'train' / 'linked'} is a symbolic link to a folder" in printed
    assert f"not packed: 1 image(s) in {aligned_src} beside train, val: loose.png" in printed
    assert f"skipped (unreadable): {aligned_src / 'train' / 'broken.png'}: " in printed
    assert "PackOptions(" not in printed and "('" not in printed


def test_a_full_disk_names_the_shard_that_could_not_be_written(aligned_src, tmp_path, capsys):
    """The file size limit stands in for a full disk (the same EFBIG/ENOSPC path, no root needed)."""
    import resource
    import subprocess
    import sys

    out = tmp_path / "out"
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "p2p-data"), "pack", "aligned", str(aligned_src / "train"), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000)),
    )
    assert proc.returncode == 74, proc.stderr
    assert proc.stderr.strip() == (
        f"error: could not write {out / 'train-000000.tar'}: File too large; the shards written before it are "
        "complete (--resume keeps them)"
    )
    assert listing(out) == []  # no half-written shard under its name
