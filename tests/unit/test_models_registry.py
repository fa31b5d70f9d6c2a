"""The model registries (p2p_dist.models.registry) drive the config's choices, its validation
messages and the D input-channel rule; the builders refuse what the registries do not list."""

import dataclasses

import pytest

from p2p_dist.config import Config, ConfigError, ModelConfig, load_config
from p2p_dist.models import build_discriminator, build_generator, registry


def _choices(section, name: str) -> tuple:
    return next(f for f in dataclasses.fields(section) if f.name == name).metadata["choices"]


@pytest.mark.parametrize(
    ("key", "names"),
    [
        ("model.generator", registry.GENERATORS),
        ("model.discriminator", tuple(registry.DISCRIMINATORS)),
        ("model.norm", registry.NORMS),
        ("data.task", registry.TASKS),
        ("data.direction", registry.DIRECTIONS),
    ],
)
def test_config_choices_and_messages_come_from_the_registries(key, names):
    section, name = key.split(".")
    assert set(_choices(type(getattr(Config(), section)), name)) == set(names)
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"{key}=nope"])
    message = str(err.value)
    assert message.startswith(f"{key}: 'nope' is not allowed; choose one of: ")
    assert sorted(message.split("choose one of: ")[1].split(", ")) == sorted(names)


def test_config_defaults_are_listed_first_and_are_the_papers():
    assert _choices(ModelConfig, "generator")[0] == "unet_256"
    assert _choices(ModelConfig, "discriminator")[0] == "patch70"
    assert _choices(ModelConfig, "norm")[0] == "batch"


@pytest.mark.parametrize("name", registry.GENERATORS)
def test_crop_size_rule_is_the_generators_size_multiple(name):
    multiple = registry.size_multiple(name)
    assert (
        load_config(
            None, [f"model.generator={name}", f"data.crop_size={multiple}", f"data.load_size={multiple}"]
        ).model.generator
        == name
    )
    with pytest.raises(ConfigError, match=f"it must be a multiple of {multiple}$"):
        load_config(
            None, [f"model.generator={name}", f"data.crop_size={multiple + 2}", f"data.load_size={multiple + 2}"]
        )


@pytest.mark.parametrize(
    ("overrides", "g_in", "g_out", "d_in"),
    [
        ([], 3, 3, 6),
        (["loss.conditional=false"], 3, 3, 3),
        (["data.task=colorization"], 1, 2, 3),
        (["data.task=colorization", "loss.conditional=false"], 1, 2, 2),
    ],
)
def test_channel_rules(overrides, g_in, g_out, d_in):
    cfg = load_config(None, overrides)
    assert (cfg.in_channels, cfg.out_channels, cfg.d_in_channels) == (g_in, g_out, d_in)
    assert registry.discriminator_in_channels(g_in, g_out, cfg.loss.conditional) == d_in
    D = build_discriminator("pixel", in_channels=cfg.d_in_channels, ndf=4)
    assert D[0].in_channels == d_in


def test_builders_refuse_names_outside_the_registries():
    listed = ", ".join(registry.GENERATORS)
    with pytest.raises(ValueError, match=f"unknown generator 'unet_512'; choose one of: {listed}"):
        build_generator("unet_512")
    with pytest.raises(ValueError, match="unknown discriminator 'patch1'"):
        build_discriminator("patch1")
    with pytest.raises(ValueError, match="unknown norm 'layer'"):
        build_generator("unet_128", norm="layer")
    assert set(registry.REFERENCE_GENERATORS) <= set(registry.GENERATORS)
    assert set(registry.REFERENCE_NORMS) <= set(registry.NORMS)
