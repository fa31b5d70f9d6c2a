"""`p2p-eval weights list | fetch`: a registry of small files the test supplies, served from a
local file:// mirror (no network): fetched atomically into the torch cache, sha256 checked, a
mismatch refused with nothing kept, files already present skipped."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from p2p_eval import weights
from p2p_eval.cli import main
from p2p_eval.weights import WeightFile, checkpoints_dir


def _entry(name: str, relpath: str, data: bytes) -> WeightFile:
    return WeightFile(
        name, relpath, f"https://example.invalid/{relpath}", hashlib.sha256(data).hexdigest(), len(data), "tests"
    )


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A mirror folder with two files, a registry describing them, an empty torch cache."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    src = tmp_path / "mirror"
    files = {"small-a.pth": b"weights of A" * 100, "sub/small-b.pth": b"B" * 3000}
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    registry = (
        _entry("a", "small-a.pth", files["small-a.pth"]),
        _entry("b", "sub/small-b.pth", files["sub/small-b.pth"]),
    )
    monkeypatch.setattr(weights, "REGISTRY", registry)
    return src


def _cache_files() -> list[str]:
    root = checkpoints_dir()
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_fetch_all_from_file_mirror_then_list(mirror, capsys):
    assert main(["weights", "fetch", "--all", "--mirror", mirror.as_uri()]) == 0
    assert _cache_files() == ["small-a.pth", "sub/small-b.pth"]
    assert (checkpoints_dir() / "sub/small-b.pth").read_bytes() == b"B" * 3000
    capsys.readouterr()
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert out.count(" ok ") == 2 and "missing" not in out
    # a second fetch finds both intact and downloads nothing (the mirror may be gone)
    for p in mirror.rglob("*.pth"):
        p.unlink()
    assert main(["weights", "fetch", "a", "b", "--mirror", str(mirror)]) == 0
    assert "present (ok), skipped" in capsys.readouterr().out


def test_a_file_whose_hash_differs_is_refused_and_not_kept(mirror, capsys):
    (mirror / "small-a.pth").write_bytes(b"weights of A" * 99 + b"tampered!!!!")  # same size, other bytes
    with pytest.raises(SystemExit) as exc:
        main(["weights", "fetch", "a", "--mirror", mirror.as_uri()])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "sha256" in err and "refused, nothing kept" in err and len(err.strip().splitlines()) == 1
    assert _cache_files() == []  # neither the file nor a temporary one
    (mirror / "sub/small-b.pth").write_bytes(b"B" * 3001)  # longer than published
    with pytest.raises(SystemExit):
        main(["weights", "fetch", "b", "--mirror", mirror.as_uri()])
    assert _cache_files() == []


def test_a_damaged_cached_file_is_listed_and_replaced(mirror, capsys):
    target = checkpoints_dir() / "small-a.pth"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"truncated")
    main(["weights", "list"])
    assert "wrong hash" in capsys.readouterr().out
    assert main(["weights", "fetch", "a", "--mirror", mirror.as_uri()]) == 0
    assert weights.sha256_of(target) == weights.REGISTRY[0].sha256


def test_unknown_name_missing_source_and_no_selection_are_one_line_errors(mirror, capsys):
    for argv, words in (
        (["weights", "fetch", "nope"], "unknown weight file(s) nope"),
        (["weights", "fetch"], "--all"),
        (["weights", "fetch", "a", "--mirror", (mirror / "absent").as_uri()], "could not download"),
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1
    assert _cache_files() == []


def test_builtin_registry_matches_the_files_the_metrics_look_for():
    """Names and layout that p2p_eval.inception and p2p_eval.lpips read; hashes agree with the
    8-digit prefixes in the published names and with torchmetrics' bundled LPIPS copies."""
    from p2p_eval.inception import FID_WEIGHTS_PATTERNS
    from p2p_eval.lpips import BACKBONE_FILES, bundled_lin_file

    by_name = {e.name: e for e in weights.REGISTRY}
    assert by_name["fid-inception"].relpath == FID_WEIGHTS_PATTERNS[0]
    assert by_name["alexnet"].relpath == BACKBONE_FILES["alex"][0]
    assert by_name["vgg16"].relpath == BACKBONE_FILES["vgg"][0]
    for e in weights.REGISTRY:
        assert len(e.sha256) == 64 and e.url.startswith("https://") and e.url.endswith(Path(e.relpath).name)
        if e.name in ("fid-inception", "alexnet", "vgg16"):
            assert e.sha256.startswith(Path(e.relpath).stem.rsplit("-", 1)[1])
    for net in ("alex", "vgg"):
        bundled = bundled_lin_file(net)
        if bundled is not None:
            assert weights.sha256_of(bundled) == by_name[f"lpips-{net}"].sha256
            assert bundled.stat().st_size == by_name[f"lpips-{net}"].size
