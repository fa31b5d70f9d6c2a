"""Config: YAML + dotted overrides, validated up front with one-line messages."""

from pathlib import Path

import pytest

from p2p_dist.config import Config, ConfigError, config_from_dict, load_config, parse_override

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_are_the_papers():
    cfg = load_config()
    assert (cfg.model.generator, cfg.model.discriminator, cfg.model.norm) == ("unet_256", "patch70", "batch")
    assert (cfg.optim.lr, cfg.optim.beta1, cfg.optim.beta2) == (2e-4, 0.5, 0.999)
    assert cfg.loss.lambda_l1 == 100.0 and cfg.loss.gan == "vanilla" and cfg.loss.conditional
    assert (cfg.data.load_size, cfg.data.crop_size) == (286, 256)


def test_overrides_are_typed():
    cfg = load_config(
        None,
        [
            "train.batch_size=4",
            "optim.lr=1e-3",
            "loss.conditional=false",
            "data.train=shards/x-{000000..000009}.tar",
            "train.epochs=2",
        ],
    )
    assert cfg.train.batch_size == 4 and isinstance(cfg.train.batch_size, int)
    assert cfg.optim.lr == 1e-3 and cfg.loss.conditional is False
    assert cfg.data.train == "shards/x-{000000..000009}.tar"
    assert cfg.train.epochs == 2.0 and isinstance(cfg.train.epochs, float)
    assert load_config().train.grad_accum == 1 and load_config(None, ["train.grad_accum=4"]).train.grad_accum == 4


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.batch_size=four", "train.batch_size: expected an integer, got 'four'"),
        ("model.norm=group", "model.norm: 'group' is not allowed; choose one of: batch, instance, none"),
        ("loss.gan=wgan", "loss.gan: 'wgan' is not allowed; choose one of: vanilla, lsgan, none"),
        ("train.nope=1", "unknown key train.nope; allowed keys in train:"),
        ("nope.key=1", "unknown section 'nope'"),
        ("train.batch_size", "is not of the form section.key=value"),
        ("batch_size=3", "must be section.key"),
        ("train.batch_size=0", "train.batch_size: 0 is below the minimum 1"),
        ("loss.conditional=maybe", "loss.conditional: expected a boolean"),
        ("data.crop_size=200", "must be a multiple of 256"),
        ("train.best_metric=val_KID", "train.best_metric=val_KID: choose a validation key: val_pixel_acc, "),
        ("train.mixed_precision=fp8", "choose one of: no, bf16, fp16"),
        ("train.grad_accum=0", "train.grad_accum: 0 is below the minimum 1"),
        (
            "train.memory_format=nhwc",
            "train.memory_format: 'nhwc' is not allowed; choose one of: auto, channels_last, contiguous",
        ),
        ("train.grad_accum=2.5", "train.grad_accum: expected an integer, got 2.5"),
    ],
)
def test_bad_values_name_the_key_and_the_allowed_values(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_load_size_below_crop_size_is_refused():
    with pytest.raises(ConfigError, match="data.load_size"):
        load_config(None, ["data.load_size=128"])


def test_yaml_file_with_base_and_bad_files(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("train:\n  batch_size: 3\nmodel:\n  ngf: 16\n")
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\ntrain:\n  batch_size: 5\n")
    cfg = load_config(child, ["model.ndf=8"])
    assert (cfg.train.batch_size, cfg.model.ngf, cfg.model.ndf) == (5, 16, 8)
    (tmp_path / "bad.yaml").write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_config(tmp_path / "loop.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "typo.yaml").write_text("train:\n  batchsize: 2\n")
    with pytest.raises(ConfigError, match="unknown key train.batchsize"):
        load_config(tmp_path / "typo.yaml")


def test_every_shipped_recipe_loads():
    recipes = sorted((ROOT / "recipes").rglob("*.yaml"))
    training = [p for p in recipes if "accelerate" not in p.parts]
    assert len(training) >= 20
    for path in training:
        cfg = load_config(path)
        assert cfg.train.output_dir
    color = load_config(ROOT / "recipes/colorization_imagenet.yaml")
    assert (color.in_channels, color.out_channels, color.train.batch_size, color.train.epochs) == (1, 2, 4, 6.0)
    assert color.data.flip and not color.data.crop
    assert load_config(ROOT / "recipes/ablations/l1.yaml").loss.gan == "none"
    assert load_config(ROOT / "recipes/ablations/gan.yaml").loss.conditional is False


def test_round_trip_through_dict():
    cfg = load_config(None, ["train.seed=7", "data.task=colorization"])
    again = config_from_dict(cfg.to_dict())
    assert again == cfg and isinstance(again, Config)


def test_parse_override_keeps_braces_as_text():
    assert parse_override("data.train={a,b}.tar") == ("data", "train", "{a,b}.tar")
    assert parse_override("train.resume=none") == ("train", "resume", "none")


def test_builtin_recipes_by_name_from_any_directory(tmp_path, monkeypatch):
    """`--config demo` (and the clone's `recipes/demo.yaml`) work from any directory, as from an
    installed package; a file of the user's own comes first."""
    monkeypatch.chdir(tmp_path)
    shipped = load_config(ROOT / "recipes/demo.yaml")
    for name in ("demo", "demo.yaml", "recipes/demo.yaml"):
        assert load_config(name) == shipped
    assert load_config("ablations/l1").loss.gan == "none"
    (tmp_path / "demo.yaml").write_text("base: pix2pix_base.yaml\ntrain:\n  batch_size: 3\n")
    with pytest.raises(ConfigError, match="does not exist"):  # the user's file: its base is relative to it
        load_config("demo.yaml")
    with pytest.raises(ConfigError, match=r"no_such_recipe does not exist and is no built-in recipe \(.*demo"):
        load_config("no_such_recipe")


@pytest.mark.parametrize(
    ("tree", "message"),
    [
        ({"train": {"output_dir": ""}}, "train.output_dir is empty: give the run folder"),
        ({"train": {"output_dir": "  "}}, "train.output_dir is empty (only spaces): give the run folder"),
        ({"train": {"resume": ""}}, "train.resume is empty: use auto, none or a checkpoint path"),
        ({"data": {"train": " "}}, "data.train is empty (only spaces): give a path"),
        ({"data": {"val": "\t"}}, "data.val is empty (only spaces): give a path"),
        ({"train": {"val_fcn": " "}}, "train.val_fcn is empty (only spaces): give a path"),
    ],
)
def test_empty_paths_are_refused_naming_the_key(tree, message):
    """`train.output_dir=$UNSET` would make the run write into the current folder (its config.yaml too);
    an empty data.val or train.val_fcn means "not set", one of spaces only is a mistake."""
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config_from_dict(tree)
    with pytest.raises(ConfigError, match="train.output_dir is empty"):
        load_config(None, ["train.output_dir="])
    assert config_from_dict({"data": {"val": ""}}).data.val == ""


def test_resume_mismatch_is_a_choice():
    assert Config().train.resume_mismatch == "refuse"
    with pytest.raises(
        ConfigError, match="train.resume_mismatch: 'always' is not allowed; choose one of: refuse, accept"
    ):
        load_config(None, ["train.resume_mismatch=always"])
