"""The model registries: which generators, discriminators, norms and tasks exist, and the shape
rules that follow from them. Plain data, no torch: the config validation (`p2p_dist.config`),
the console commands' choices and the network builders all read them from here.
"""

from __future__ import annotations

GENERATORS = ("unet_256", "unet_128", "encoder_decoder_256", "encoder_decoder_128", "resnet_9blocks")
# name -> number of stride-2 conv layers of the PatchGAN (None: the 1x1 PixelGAN)
DISCRIMINATORS = {"pixel": None, "patch16": 1, "patch70": 3, "patch286": 5}
NORMS = ("batch", "instance", "none")
# data tasks -> (generator input channels, output channels): RGB -> RGB, or L -> ab
TASK_CHANNELS = {"translation": (3, 3), "colorization": (1, 2)}
TASKS = tuple(TASK_CHANNELS)
DIRECTIONS = ("AtoB", "BtoA")

_UNET_LEVELS = {"256": 8, "128": 7}


def check_generator_name(name: str) -> str:
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r}; choose one of: {', '.join(GENERATORS)}")
    return name


def check_discriminator_name(name: str) -> str:
    if name not in DISCRIMINATORS:
        raise ValueError(f"unknown discriminator {name!r}; choose one of: {', '.join(DISCRIMINATORS)}")
    return name


def check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of: {', '.join(NORMS)}")
    return norm


def unet_levels(name: str) -> int:
    """Number of stride-2 levels of a U-Net / encoder-decoder name (8 for *_256, 7 for *_128)."""
    return _UNET_LEVELS[name.rsplit("_", 1)[1]]


def size_multiple(name: str) -> int:
    """Height and width of a generator's input must be multiples of this."""
    check_generator_name(name)
    return 4 if name == "resnet_9blocks" else 2 ** unet_levels(name)


def native_size(name: str) -> int:
    """The image size a generator is built for (the paper's crop size)."""
    check_generator_name(name)
    return 256 if name == "resnet_9blocks" else 2 ** unet_levels(name)


def task_channels(task: str) -> tuple[int, int]:
    """(input, output) channels of the generator for a data task."""
    if task not in TASK_CHANNELS:
        raise ValueError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    return TASK_CHANNELS[task]


def discriminator_in_channels(in_channels: int, out_channels: int, conditional: bool) -> int:
    """Channels D sees: the conditional D gets cat(input, image) (6 for RGB -> RGB), the paper's
    unconditional one the image alone (see `p2p_dist.train.loop.d_input`)."""
    return in_channels + out_channels if conditional else out_channels


# what the reference implementation (junyanz/pytorch-CycleGAN-and-pix2pix) saves checkpoints of
# that `p2p_dist.models.convert` can read: its --netG names and --norm values
REFERENCE_GENERATORS = ("unet_256", "unet_128", "resnet_9blocks")
REFERENCE_NORMS = ("batch", "instance")
