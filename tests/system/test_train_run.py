"""End-to-end training runs as a user starts them: real shards, real checkpoints, real processes."""

from __future__ import annotations

import json

import pytest
import torch

from helpers.scaleout import metrics
from helpers.training import assert_same_weights, final_weights, train


def test_run_writes_checkpoints_metrics_samples_and_generator(scenes_data, tmp_path):
    out = tmp_path / "run"
    proc = train(
        scenes_data,
        out,
        "train.max_steps=5",
        "train.checkpoint_every=2",
        "train.keep_checkpoints=2",
        "train.sample_every=5",
        "data.num_workers=0",
    )
    assert "global batch 2 = 2 per process x 1" in proc.stderr
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["step-0000004", "step-0000005"]  # rotation kept the last two
    last = out / "checkpoints" / "step-0000005"
    assert json.loads((last / "trainer_state.json").read_text())["step"] == 5
    assert (last / "generator.safetensors").is_file() and (last / "generator.json").is_file()
    spec = json.loads((out / "final" / "generator.json").read_text())
    assert (spec["name"], spec["ngf"], spec["in_channels"], spec["out_channels"]) == ("unet_256", 8, 3, 3)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4, 5]
    assert {"D_fake", "D_real", "G_GAN", "G_L1", "lr", "images_per_s"} <= lines[0].keys()
    assert all(torch.isfinite(torch.tensor([r["G_L1"], r["D_real"]])).all() for r in lines)
    assert (out / "samples" / "step-0000005.png").is_file()
    assert (out / "config.yaml").is_file()
    assert "pix2pix training finished" in proc.stderr


def test_exact_resume_single_process(scenes_data, tmp_path):
    """The default config: 2N steps in one go == N steps, stop, N more (linear LR decay spans the break)."""
    common = ["train.max_steps=6", "train.checkpoint_every=100", "data.num_workers=1", "optim.decay_start=0.3"]
    train(scenes_data, tmp_path / "whole", *common)
    train(scenes_data, tmp_path / "split", *common, "train.stop_after=3")
    assert not (tmp_path / "split" / "final").exists()
    assert [p.name for p in (tmp_path / "split" / "checkpoints").iterdir()] == ["step-0000003"]
    proc = train(scenes_data, tmp_path / "split", *common)
    assert "resumed from" in proc.stderr
    assert_same_weights(final_weights(tmp_path / "whole"), final_weights(tmp_path / "split"))
    steps = [json.loads(x)["step"] for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_exact_resume_with_grad_accum(scenes_data, tmp_path):
    """train.grad_accum=2: 4 steps in one go == 2 steps, stop, 2 more; steps count optimizer steps,
    the stream position micro-batches. With train.deterministic=true (strict kernels, the GPU's way to
    bit-exactness), which must keep working on CPU too."""
    common = ["train.max_steps=4", "train.checkpoint_every=100", "data.num_workers=1", "train.grad_accum=2"]
    common += ["train.deterministic=true"]
    proc = train(scenes_data, tmp_path / "whole", *common)
    assert "global batch 4 = 2 per process x 2 micro-batches (train.grad_accum) x 1" in proc.stderr
    train(scenes_data, tmp_path / "split", *common, "train.stop_after=2")
    state = json.loads((tmp_path / "split" / "checkpoints" / "step-0000002" / "trainer_state.json").read_text())
    assert (state["step"], state["data_batches"], state["images_seen"]) == (2, 4, 8)
    assert "resumed from" in train(scenes_data, tmp_path / "split", *common).stderr
    assert_same_weights(final_weights(tmp_path / "whole"), final_weights(tmp_path / "split"))
    steps = [json.loads(x)["step"] for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


@pytest.mark.parametrize("nproc", [1, 2])
def test_time_limit_ends_the_run_as_at_max_steps_and_a_restart_resumes_exactly(scenes_data, tmp_path, nproc):
    """train.time_limit: the first step begun past the limit is the last (60 us: the first step, since
    reading its batch alone takes longer); checkpoint, export and a summary that says why; rank 0's
    clock decides for every rank. A start without the limit then ends as the uninterrupted run."""
    common = ["train.max_steps=3", "train.checkpoint_every=100", "data.num_workers=0"]
    out = tmp_path / "limited"
    proc = train(scenes_data, out, *common, "train.time_limit=0.000001", nproc=nproc)
    assert "time limit reached (train.time_limit=1e-06 min) at step 1 of 3" in proc.stderr
    assert "pix2pix training finished (train.time_limit)" in proc.stderr
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-0000001"]
    assert (out / "final" / "generator.safetensors").is_file()
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1]  # every rank stopped at step 1 (a rank that went on would hang in step 2's collective)
    proc = train(scenes_data, out, *common, nproc=nproc)
    assert "resumed from" in proc.stderr and "pix2pix training finished" in proc.stderr
    train(scenes_data, tmp_path / "whole", *common, nproc=nproc)
    assert_same_weights(final_weights(tmp_path / "whole"), final_weights(out))


def test_l1_only_objective_has_no_discriminator(scenes_data, tmp_path):
    out = tmp_path / "l1"
    train(scenes_data, out, "loss.gan=none", "train.max_steps=2", "data.num_workers=0")
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert "G_L1" in record and "D_real" not in record and "G_GAN" not in record


def test_broken_checkpoint_write_leaves_the_previous_one_usable(scenes_data, tmp_path):
    out = tmp_path / "run"
    train(scenes_data, out, "train.max_steps=4", "train.checkpoint_every=2", "data.num_workers=0", "train.stop_after=2")
    root = out / "checkpoints"
    # a run killed while writing step 3's checkpoint leaves a temp folder, maybe a half folder
    (root / ".step-0000003.tmp").mkdir()
    (root / ".step-0000003.tmp" / "model.safetensors").write_bytes(b"partial")
    (root / "step-0000003").mkdir()  # no trainer_state.json: incomplete
    proc = train(scenes_data, out, "train.max_steps=4", "train.checkpoint_every=2", "data.num_workers=0")
    assert f"resumed from {root / 'step-0000002'}" in proc.stderr
    assert not (root / ".step-0000003.tmp").exists()
    assert (out / "final" / "generator.safetensors").is_file()


@pytest.mark.slow
def test_two_process_ddp_training_and_exact_resume(scenes_data, tmp_path):
    common = ["train.max_steps=4", "train.checkpoint_every=100", "data.num_workers=1", "train.batch_size=1"]
    proc = train(scenes_data, tmp_path / "whole", *common, nproc=2)
    assert "2 process(es)" in proc.stderr and "global batch 2 = 1 per process x 2" in proc.stderr
    train(scenes_data, tmp_path / "split", *common, "train.stop_after=2", nproc=2)
    train(scenes_data, tmp_path / "split", *common, nproc=2)
    assert_same_weights(final_weights(tmp_path / "whole"), final_weights(tmp_path / "split"))


def test_config_yaml_records_the_engine_that_ran(scenes_data, tmp_path):
    out = tmp_path / "run"
    train(scenes_data, out, "train.max_steps=1", "data.num_workers=0")
    text = (out / "config.yaml").read_text()
    assert text.startswith("# train.engine=auto ran as ddp\n") and "  engine: ddp\n" in text


@pytest.mark.slow
def test_resume_with_another_number_of_processes_says_the_data_order_changes(scenes_data, tmp_path):
    """A 2-process run resumed on 1 process and back on 2 (what a cluster queue does to a job): each
    start resumes, says where the data order changes, and the last one trains to the end."""
    out = tmp_path / "run"
    common = ["train.max_steps=6", "train.checkpoint_every=100", "data.num_workers=0", "train.batch_size=1"]
    for nproc, before, at in ((2, None, None), (1, 2, 2), (2, 1, 4)):  # 2 steps each; the last to the end
        proc = train(scenes_data, out, *common, *([] if at == 4 else ["train.stop_after=2"]), nproc=nproc)
        log = proc.stderr.replace("\n", " ")
        if before is not None:
            assert f"data order changes from step {at} on: the checkpoint was written by {before} process(es)" in log, (
                log
            )
    state = json.loads((out / "checkpoints" / "step-0000006" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["extra"]["layout_changed_at"] == 4
    assert [r["step"] for r in metrics(out)] == [1, 2, 3, 4, 5, 6]
    assert (out / "final" / "generator.safetensors").is_file()
