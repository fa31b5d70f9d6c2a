"""Checkpoint folders: atomic finalisation, rotation, resume-point discovery, stale temp cleanup."""

import json

import pytest

from p2p_dist.errors import UserError
from p2p_dist.train import checkpoint as ckpt


def _write(out, step, keep=3):
    tmp = ckpt.temp_dir_for(out, step)
    tmp.mkdir(parents=True)
    (tmp / "model.safetensors").write_bytes(b"x" * 10)
    return ckpt.finalize(out, step, ckpt.TrainerState(step=step), keep)


def test_finalize_renames_and_rotates(tmp_path):
    for step in (10, 20, 30, 40):
        final = _write(tmp_path, step, keep=2)
        assert final.name == f"step-{step:07d}"
    names = [p.name for p in ckpt.list_checkpoints(tmp_path)]
    assert names == ["step-0000030", "step-0000040"]
    assert not [p for p in ckpt.checkpoint_root(tmp_path).iterdir() if p.name.startswith(".")]
    assert json.loads((ckpt.list_checkpoints(tmp_path)[-1] / ckpt.STATE_FILE).read_text())["step"] == 40


def test_incomplete_checkpoints_are_never_resumed(tmp_path):
    _write(tmp_path, 10)
    root = ckpt.checkpoint_root(tmp_path)
    (root / ".step-0000020.tmp").mkdir()  # killed while writing
    (root / "step-0000030").mkdir()  # no trainer_state.json: not complete
    assert ckpt.find_resume_point(tmp_path, "auto").name == "step-0000010"
    assert ckpt.find_resume_point(tmp_path, "none") is None
    removed = ckpt.remove_stale_temps(tmp_path)
    assert [p.name for p in removed] == [".step-0000020.tmp"]
    with pytest.raises(UserError, match="not a complete checkpoint"):
        ckpt.find_resume_point(tmp_path, str(root / "step-0000030"))
    assert ckpt.find_resume_point(tmp_path / "elsewhere", "auto") is None


def test_same_step_saved_twice_replaces_it(tmp_path):
    _write(tmp_path, 10)
    _write(tmp_path, 10)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-0000010"]


def test_state_round_trip(tmp_path):
    state = ckpt.TrainerState(step=7, world_size=2, num_workers=1, seed=3, images_seen=14, nonfinite_steps=1)
    tmp = ckpt.temp_dir_for(tmp_path, 7)
    tmp.mkdir(parents=True)
    final = ckpt.finalize(tmp_path, 7, state, keep=1)
    assert ckpt.read_state(final) == state
