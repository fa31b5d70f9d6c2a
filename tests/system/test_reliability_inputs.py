"""Bad input, as users give it to the console commands: each case ends with exit code 2 and one
line `error: ...` that names the problem, never a traceback. The commands run in-process through
their `main(argv)` (the console scripts' entry points) so that the whole table stays cheap; one case
goes through the installed script to show the same holds end to end."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.env import BIN, subprocess_env
from p2p_dist.data.cli import main as p2p_data
from p2p_dist.inference.cli import translate_main as p2p_translate
from p2p_dist.train.cli import main as p2p_train
from p2p_eval.cli import main as p2p_eval

TINY = [
    "model.ngf=8",
    "model.ndf=8",
    "data.direction=BtoA",
    "data.num_workers=0",
    "train.sample_every=0",
    "train.memory_format=contiguous",
]


@pytest.fixture(autouse=True)
def fresh_accelerate():
    """In-process training builds an Accelerator; leave no global Accelerate state to later tests."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def user_error(capsys, main, argv, *fragments: str) -> str:
    """Run `main(argv)`; it must exit 2 with exactly one `error:` line (the last) containing `fragments`."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2, f"exit {exc.value.code}: {err[-2000:]}"
    assert "Traceback" not in err
    lines = [x for x in err.strip().splitlines() if x.strip()]
    errors = [x for x in lines if x.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err[-2000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def photos(folder: Path, sizes: list[tuple[int, int]]) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    return folder


def train_argv(data: str, out: Path, *overrides: str) -> list[str]:
    return [f"data.train={data}", f"train.output_dir={out}", "train.max_steps=1", *TINY, *overrides]


def test_config_mistakes(capsys, tmp_path):
    user_error(capsys, p2p_train, ["--print-config", "train.max_step=5"], "unknown key train.max_step", "max_steps")
    user_error(capsys, p2p_train, ["--print-config", "train.batch_size=two"], "train.batch_size", "integer")
    user_error(capsys, p2p_train, ["--print-config", "model.norm=group"], "model.norm", "batch, instance, none")
    user_error(capsys, p2p_train, ["--print-config", "lr=0.1"], "section.key")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("trian:\n  max_steps: 5\n")
    user_error(capsys, p2p_train, ["--config", str(recipe), "--print-config"], "unknown section 'trian'")
    recipe.write_text("train:\n  max_steps: [5\n")
    user_error(capsys, p2p_train, ["--config", str(recipe)], "not valid YAML", "line")
    user_error(capsys, p2p_train, ["--config", str(tmp_path / "nope.yaml")], "does not exist")
    # through the installed console script, as a user types it
    proc = subprocess.run(
        [str(BIN / "p2p-train"), "train.max_step=5"], env=subprocess_env(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: unknown key train.max_step"), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not proc.stdout


def test_training_data_mistakes(capsys, tmp_path):
    out = tmp_path / "run"
    user_error(capsys, p2p_train, train_argv(f"{tmp_path}/missing-{{000000..000001}}.tar", out), "missing-000000.tar")
    (tmp_path / "empty").mkdir()
    user_error(capsys, p2p_train, train_argv(str(tmp_path / "empty"), out), "no *.tar shards")
    # colorization shards given to a translation run
    assert (
        p2p_data(["pack", "colorization", str(photos(tmp_path / "color", [(32, 32)] * 2)), str(tmp_path / "cshards")])
        == 0
    )
    user_error(
        capsys, p2p_train, train_argv(str(tmp_path / "cshards"), out), "colorization", "data.task is translation"
    )
    # photos of mixed sizes, packed as they are, with resizing off
    assert (
        p2p_data(
            [
                "pack",
                "colorization",
                str(photos(tmp_path / "mixed", [(256, 256), (300, 280)])),
                str(tmp_path / "mshards"),
            ]
        )
        == 0
    )
    user_error(
        capsys,
        p2p_train,
        train_argv(str(tmp_path / "mshards"), out, "data.task=colorization", "data.resize=false", "data.crop=false"),
        "mixed sizes",
        "resizing",
    )
    # an output folder that cannot be written (a file stands where a folder must go; root-proof)
    (tmp_path / "a-file").write_text("x")
    user_error(
        capsys,
        p2p_train,
        train_argv(str(tmp_path / "cshards"), tmp_path / "a-file" / "run", "data.task=colorization"),
        "train.output_dir",
        "not writable",
    )
    # data mistakes are found before anything is written
    assert not out.exists()


def test_checkpoint_of_another_architecture(capsys, tmp_path, scenes_data):
    out = tmp_path / "run"
    assert p2p_train(train_argv(f"{scenes_data}/train", out)) == 0  # one real step, one real checkpoint
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    ckpt = out / "checkpoints" / "step-0000001"
    user_error(
        capsys,
        p2p_train,
        train_argv(f"{scenes_data}/train", out, "train.max_steps=2", "model.ngf=16"),
        f"checkpoint {ckpt} was written for another generator",
        "model.ngf 8 (this config: 16)",
    )
    user_error(
        capsys,
        p2p_train,
        train_argv(f"{scenes_data}/train", out, "train.max_steps=2", "model.ndf=16"),
        f"cannot resume from {ckpt}",
        "size mismatch",
        "train.resume=none",
    )
    user_error(
        capsys,
        p2p_train,
        train_argv(f"{scenes_data}/train", out, f"train.resume={tmp_path}"),
        "not a complete checkpoint",
    )
    images = photos(tmp_path / "imgs", [(256, 256)])
    user_error(
        capsys,
        p2p_translate,
        ["--checkpoint", str(ckpt), "--input", str(images), "--output", str(tmp_path / "o"), "--arch", "unet_128"],
        "unet_256",
        "unet_128",
    )
    user_error(
        capsys,
        p2p_translate,
        ["--checkpoint", str(images / "p0.png"), "--input", str(images), "--output", str(tmp_path / "o")],
        "p0.png",
    )


def test_translate_and_eval_input_mistakes(capsys, tmp_path):
    from p2p_dist.models import GeneratorSpec, build_generator, save_generator

    spec = GeneratorSpec(name="unet_256", ngf=8)
    save_generator(build_generator("unet_256", ngf=8), spec, tmp_path / "g")
    (tmp_path / "empty").mkdir()
    (tmp_path / "a-file").write_text("x")
    translate = ["--checkpoint", str(tmp_path / "g")]
    user_error(
        capsys,
        p2p_translate,
        [*translate, "--input", str(tmp_path / "empty"), "--output", str(tmp_path / "o")],
        "holds no images",
    )
    mixed = photos(tmp_path / "mixed", [(256, 256), (300, 200)])
    user_error(
        capsys,
        p2p_translate,
        [*translate, "--input", str(mixed), "--output", str(tmp_path / "o"), "--resize", "never"],
        "300x200",
        "--resize",
    )
    user_error(
        capsys,
        p2p_translate,
        [*translate, "--input", str(mixed), "--output", str(tmp_path / "a-file" / "o")],
        "not writable",
    )
    pred, target = tmp_path / "pred", tmp_path / "target"
    for folder, names in ((pred, ["x", "y"]), (target, ["x", "z"])):
        folder.mkdir()
        for n in names:
            Image.new("RGB", (32, 32), (10, 20, 30)).save(folder / f"{n}.png")
    user_error(
        capsys,
        p2p_eval,
        ["score", "--pred", str(pred), "--target", str(target), "--out", str(tmp_path / "s")],
        "no prediction: z",
        "no target: y",
    )
    user_error(
        capsys,
        p2p_eval,
        ["score", "--pred", str(tmp_path / "empty"), "--target", str(target), "--out", str(tmp_path / "s")],
    )
    user_error(capsys, p2p_data, ["pack", "colorization", str(tmp_path / "empty"), str(tmp_path / "shards")])


def test_every_training_input_is_checked_before_the_first_step(capsys, tmp_path, scenes_data):
    """data.val, an explicit train.resume and the trackers fail before step 1 (before: data.val
    missing was noticed when the first sample grid was drawn, at the end of a short run)."""
    out = tmp_path / "run"
    train = f"{scenes_data}/train"
    user_error(capsys, p2p_train, train_argv(train, out, f"data.val={tmp_path}/val"), "data.val", f"{tmp_path}/val")
    assert (
        p2p_data(["pack", "colorization", str(photos(tmp_path / "color", [(32, 32)] * 2)), str(tmp_path / "cshards")])
        == 0
    )
    user_error(capsys, p2p_train, train_argv(train, out, f"data.val={tmp_path}/cshards"), "data.val", "colorization")
    user_error(
        capsys,
        p2p_train,
        train_argv(train, out, f"train.resume={tmp_path}/nope"),
        f"train.resume={tmp_path}/nope",
        "no such checkpoint",
    )
    user_error(capsys, p2p_train, train_argv(train, out, "train.log_with=wandb"), "train.log_with=wandb", "wandb")
    if not torch.cuda.is_available():
        user_error(capsys, p2p_train, train_argv(train, out, "data.decode=gpu"), "data.decode=gpu needs a CUDA device")
    assert not out.exists()  # nothing written by any of them


def test_validation_shards_of_another_pixel_format_are_refused_up_front(capsys, tmp_path, scenes_data):
    """data.val must hold data.train's bit depth and channels per side; a train.best_metric that
    needs 8-bit RGB is refused on 16-bit data; both before anything is written."""
    out, depth = tmp_path / "run", tmp_path / "depth"
    assert p2p_data(["demo", "scenes-depth", str(depth), "--train", "1", "--val", "1", "--size", "32"]) == 0
    rgb, grey16 = "A 8-bit 3-channel, B 8-bit 3-channel", "A 16-bit 1-channel, B 16-bit 1-channel"
    argv = train_argv(f"{scenes_data}/train", out, f"data.val={depth}/val")
    user_error(capsys, p2p_train, argv, f"data.val holds {grey16} pixels, data.train {rgb}")
    argv = train_argv(f"{depth}/train", out, f"data.val={scenes_data}/val")
    user_error(capsys, p2p_train, argv, f"data.val holds {rgb} pixels, data.train {grey16}")
    argv = train_argv(f"{depth}/train", out, f"data.val={depth}/val", "train.val_every=1", "train.best_metric=val_FID")
    user_error(capsys, p2p_train, argv, "train.best_metric=val_FID does not apply", "images are 16-bit, 1 channel")
    assert not out.exists()


def test_a_failing_last_sample_grid_does_not_cost_the_final_export(capsys, tmp_path, scenes_data, monkeypatch):
    """The end of a run exports the generator first, then draws the last sample grid."""
    from p2p_dist.errors import UserError
    from p2p_dist.train import run as run_module

    def broken(self, step, batch):
        raise UserError("the sample grid could not be drawn")

    monkeypatch.setattr(run_module.Run, "_write_samples", broken)
    out = tmp_path / "run"
    argv = [*train_argv(f"{scenes_data}/train", out, f"data.val={scenes_data}/val"), "train.sample_every=5"]
    user_error(capsys, p2p_train, argv, "the sample grid could not be drawn")
    assert (out / "final" / "generator.safetensors").is_file()


def fresh_run(argv: list[str]) -> int:
    """`p2p-train ARGV` in this process after an earlier one (Accelerate keeps global state)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    return p2p_train(argv)


def test_an_empty_path_is_refused_and_the_current_folder_is_left_alone(tmp_path):
    """`p2p-train ... train.output_dir=$UNSET` (an unset shell variable): before, the run wrote its
    config.yaml over the user's own in the current folder, and checkpoints/ and final/ beside it."""
    (tmp_path / "config.yaml").write_text("my: own config\n")
    proc = subprocess.run(
        [str(BIN / "p2p-train"), "data.train=shards/train", "train.output_dir=", "train.max_steps=1"],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: train.output_dir is empty: give the run folder, e.g. train.output_dir=runs/facades"
    ], proc.stderr
    assert (tmp_path / "config.yaml").read_text() == "my: own config\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


def test_a_resume_with_other_settings_is_refused_naming_each_difference(capsys, tmp_path, scenes_data):
    out, train = tmp_path / "run", f"{scenes_data}/train"
    assert p2p_train(train_argv(train, out)) == 0
    config = (out / "config.yaml").read_bytes()
    other = tmp_path / "other"  # the same shards under another path: another data set as far as a run can tell
    other.mkdir()
    for shard in Path(train).iterdir():
        (other / shard.name).write_bytes(shard.read_bytes())
    changed = [f"data.train={other}", "data.direction=AtoB", "train.batch_size=2", "train.seed=3"]
    argv = train_argv(train, out, "train.max_steps=2") + changed  # the later data.train wins
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    user_error(
        capsys,
        p2p_train,
        argv,
        f"checkpoint {out / 'checkpoints' / 'step-0000001'} does not match this config: ",
        f"data.train '{train}' -> '{other}'",
        "data.direction 'BtoA' -> 'AtoB'",
        "train.batch_size 1 -> 2",
        "train.seed 0 -> 3",
        "train.resume_mismatch=accept",
    )
    assert (out / "config.yaml").read_bytes() == config, "a refused resume must not rewrite config.yaml"
    assert fresh_run([*argv, "train.resume_mismatch=accept"]) == 0
    err = capsys.readouterr().err
    assert "warning: resuming" in err and "train.seed 0 -> 3" in err and "not exactly" in err, err
    state = json.loads((out / "checkpoints" / "step-0000002" / "trainer_state.json").read_text())
    assert state["settings"]["train.seed"] == 3 and state["settings"]["data.train"] == str(other)


def test_a_checkpoint_without_rng_state_is_refused_unless_accepted(capsys, tmp_path, scenes_data):
    out, train = tmp_path / "run", f"{scenes_data}/train"
    assert p2p_train(train_argv(train, out)) == 0
    ckpt = out / "checkpoints" / "step-0000001"
    (ckpt / "random_states_0.pkl").unlink()
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    argv = train_argv(train, out, "train.max_steps=2")
    user_error(capsys, p2p_train, argv, "no RNG state for rank 0", "train.resume_mismatch=accept")
    assert fresh_run([*argv, "train.resume_mismatch=accept"]) == 0
    assert "no RNG state for rank 0" in capsys.readouterr().err
    assert (out / "final" / "generator.safetensors").is_file()


def test_max_steps_below_the_steps_done_is_refused_and_equal_says_nothing_to_train(capsys, tmp_path, scenes_data):
    out, train = tmp_path / "run", f"{scenes_data}/train"
    assert p2p_train(train_argv(train, out, "train.max_steps=2")) == 0
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    ckpt = out / "checkpoints" / "step-0000002"
    user_error(
        capsys, p2p_train, train_argv(train, out), f"train.max_steps=1 is below the 2 steps checkpoint {ckpt} has done"
    )
    assert fresh_run(train_argv(train, out, "train.max_steps=2")) == 0
    err = capsys.readouterr().err
    assert f"nothing to train: {ckpt} is at step 2, the run's last (train.max_steps)" in err, err


@pytest.mark.parametrize("name", ["run.lock", "metrics.jsonl"])
def test_the_lock_and_the_log_never_write_through_a_symbolic_link(capsys, tmp_path, scenes_data, name):
    """Before: a run.lock linked to another file truncated it to 0 bytes; metrics.jsonl appended to it."""
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me\n")
    out = tmp_path / "run"
    out.mkdir()
    (out / name).symlink_to(victim)
    user_error(
        capsys, p2p_train, train_argv(f"{scenes_data}/train", out), f"{out / name} is a symbolic link (to {victim})"
    )
    assert victim.read_text() == "keep me\n"
