"""DeepSpeed engine: G and D as two ZeRO engines behind the same Engine interface as DDP.

Real runs use 2 processes on CPU (gloo, DS_ACCELERATOR=cpu set by the engine), the accelerate
configs users launch with, and compare exported generators bit for bit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers.env import ROOT, subprocess_env
from helpers.scaleout import assert_same_weights, final_weights, launch_cmd, metrics, run, train_args
from p2p_dist.config import ConfigError, load_config
from p2p_dist.train.engines.deepspeed_config import (
    ZERO3_REFUSED,
    DeepSpeedRequest,
    deepspeed_request,
    resolve_ds_config,
)

ACCEL = ROOT / "recipes" / "accelerate"


def cfg(*overrides: str):
    return load_config(None, ["data.train=x", *overrides])


def shipped(name: str) -> dict:
    return json.loads((ACCEL / name).read_text())


# --- configuration (no processes) ---------------------------------------------------------------


@pytest.mark.parametrize("stage", [1, 2])
def test_shipped_recipes_name_their_json_and_stage(stage):
    accel = yaml.safe_load((ACCEL / f"deepspeed_zero{stage}.yaml").read_text())
    assert accel["distributed_type"] == "DEEPSPEED"
    ds = accel["deepspeed_config"]
    assert ds["deepspeed_multinode_launcher"] == "standard"  # torchrun on every node, as SLURM runs it
    assert (ROOT / ds["deepspeed_config_file"]).is_file()
    assert json.loads((ROOT / ds["deepspeed_config_file"]).read_text())["zero_optimization"]["stage"] == stage


def test_auto_values_come_from_the_training_config():
    ds = resolve_ds_config(shipped("ds_zero2.json"), cfg("train.batch_size=3", "train.mixed_precision=bf16"), 4)
    assert (ds["train_micro_batch_size_per_gpu"], ds["train_batch_size"], ds["gradient_accumulation_steps"]) == (
        3,
        12,
        1,
    )
    # gradients reduce in fp32: DeepSpeed's default list would reduce Conv2d gradients in bf16
    assert ds["torch_autocast"] == {"enabled": True, "dtype": "bfloat16", "lower_precision_safe_modules": []}
    assert ds["zero_optimization"]["stage"] == 2
    plain = resolve_ds_config(shipped("ds_zero1.json"), cfg(), 2)
    assert "torch_autocast" not in plain and "bf16" not in plain and "fp16" not in plain


@pytest.mark.parametrize(
    "change, message",
    [
        ({"zero_optimization": {"stage": 3}}, "ZeRO stage 3 is not supported"),
        ({"bf16": {"enabled": True}}, "'bf16' keeps 16-bit weights"),
        ({"optimizer": {"type": "Adam"}}, "remove the 'optimizer' section"),
        ({"train_micro_batch_size_per_gpu": 8}, "disagrees with train.batch_size"),
        ({"train_batch_size": 5}, "disagrees with train.batch_size x 2 processes"),
        ({"torch_autocast": {"enabled": True, "dtype": "bfloat16"}}, "disagrees with train.mixed_precision=no"),
    ],
)
def test_conflicts_with_the_training_config_are_refused(change, message):
    raw = {**shipped("ds_zero2.json"), **change}
    with pytest.raises(ConfigError, match=message):
        resolve_ds_config(raw, cfg(), 2)


def test_accelerate_environment_selects_the_engine(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert deepspeed_request({}) is None
    assert deepspeed_request({"ACCELERATE_USE_DEEPSPEED": "false"}) is None
    # relative paths work from any directory: the repository is the fallback
    req = deepspeed_request(
        {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": "recipes/accelerate/ds_zero2.json"}
    )
    assert req == DeepSpeedRequest(ACCEL / "ds_zero2.json", None)
    assert deepspeed_request(
        {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "1"}
    ) == DeepSpeedRequest(None, 1)
    for env, message in [
        ({"ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, "ZeRO stage 3 is not supported"),
        ({"ACCELERATE_DEEPSPEED_CONFIG_FILE": str(tmp_path / "missing.json")}, "does not exist"),
        ({"ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "cpu"}, "offload_optimizer_device=cpu"),
        ({"ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "4"}, "gradient_accumulation_steps=4"),
    ]:
        with pytest.raises(ConfigError, match=message):
            deepspeed_request({"ACCELERATE_USE_DEEPSPEED": "true", **env})


def test_zero3_is_refused_with_one_line(scenes_data, tmp_path):
    """What a user sees when launching with a ZeRO-3 DeepSpeed config: one line, exit 2."""
    ds3 = tmp_path / "ds_zero3.json"
    ds3.write_text(json.dumps({**shipped("ds_zero2.json"), "zero_optimization": {"stage": 3}}))
    proc = subprocess.run(
        [sys.executable, *train_args(scenes_data, tmp_path / "run", "train.max_steps=1")],
        env=subprocess_env(ACCELERATE_USE_DEEPSPEED="true", ACCELERATE_DEEPSPEED_CONFIG_FILE=str(ds3)),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert lines[-1] == f"error: {ZERO3_REFUSED}"
    assert "Traceback" not in proc.stderr


# --- real 2-process runs ------------------------------------------------------------------------


def _check_checkpoint(folder: Path, stage: int) -> None:
    engine = json.loads((folder / "engine.json").read_text())
    assert (engine["engine"], engine["zero_stage"], engine["world_size"]) == ("deepspeed", stage, 2)
    for model in ("G", "D"):
        for rank in (0, 1):  # ZeRO: every rank saved its own optimizer partition
            assert (folder / "deepspeed" / model / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").is_file()
        assert (folder / "deepspeed" / model / "mp_rank_00_model_states.pt").is_file()
    assert (folder / "rng_state_0.pt").is_file() and (folder / "rng_state_1.pt").is_file()
    replicas = json.loads((folder / "replicas.json").read_text())
    assert replicas["identical"] is True
    for model in ("G", "D"):  # the same parameters on both ranks after the steps
        assert len(replicas["digests"][model]) == 2 and len(set(replicas["digests"][model])) == 1


@pytest.mark.slow
def test_zero2_trains_checkpoints_and_resumes_exactly(scenes_data, ds_reference_run, tmp_path):
    """ZeRO-2, 2 steps, stop, resume, 2 more == ZeRO-1, 4 steps in one go, bit for bit."""
    out = tmp_path / "run"
    first = run(launch_cmd("deepspeed_zero2", *train_args(scenes_data, out, "train.max_steps=4", "train.stop_after=2")))
    assert "2 process(es) on 1 machine(s), DeepSpeed ZeRO-2" in first.stderr
    _check_checkpoint(out / "checkpoints" / "step-0000002", stage=2)
    assert not (out / "final").exists()
    second = run(launch_cmd("deepspeed_zero2", *train_args(scenes_data, out, "train.max_steps=4")))
    assert "resumed from" in second.stderr
    _check_checkpoint(out / "checkpoints" / "step-0000004", stage=2)
    _check_checkpoint(ds_reference_run / "checkpoints" / "step-0000004", stage=1)

    records = metrics(out)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for r in records:
        assert all(abs(r[k]) < 1e6 for k in ("D_fake", "D_real", "G_GAN", "G_L1"))  # finite, sane
    assert_same_weights(final_weights(out), final_weights(ds_reference_run))


def test_exported_generator_loads_without_deepspeed(ds_reference_run, tmp_path):
    """The final generator is one plain fp32 file: load it and run it with DeepSpeed unimportable."""
    code = (
        "import sys; sys.modules['deepspeed'] = None\n"
        "import torch\n"
        "from p2p_dist.models import load_generator\n"
        f"G, spec = load_generator({str(ds_reference_run / 'final')!r})\n"
        "assert not any(k.startswith(('module.', '_orig_mod.')) for k in G.state_dict())\n"
        "assert all(p.dtype == torch.float32 for p in G.parameters())\n"
        "y = G(torch.zeros(1, 3, 256, 256))\n"
        "assert y.shape == (1, 3, 256, 256) and torch.isfinite(y).all()\n"
        "print(spec.name, spec.ngf)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["unet_256", "8"]


def test_resume_refuses_checkpoints_it_cannot_continue(tmp_path):
    """A DDP checkpoint, or one written by another number of ZeRO processes: one clear line each."""
    from types import SimpleNamespace

    from p2p_dist.errors import UserError
    from p2p_dist.train.engines.deepspeed import DeepSpeedEngine

    engine = SimpleNamespace(world_size=2, engines={"G": None, "D": None})
    ddp = tmp_path / "step-0000010"
    ddp.mkdir()
    (ddp / "model.safetensors").write_bytes(b"weights")
    with pytest.raises(UserError, match="was not written by the DeepSpeed engine"):
        DeepSpeedEngine.load_state(engine, str(ddp))
    ds = tmp_path / "step-0000020"
    (ds / "deepspeed").mkdir(parents=True)
    (ds / "engine.json").write_text(
        json.dumps({"engine": "deepspeed", "zero_stage": 2, "world_size": 4, "models": ["D", "G"]})
    )
    with pytest.raises(UserError, match="written by 4 DeepSpeed processes .* resume it with 4 processes"):
        DeepSpeedEngine.load_state(engine, str(ds))
