"""The path of a built-in accelerate config, for `accelerate launch --config_file` (the configs ship
with the package, so this works from a clone and from an installed p2p-dist alike).

    python -m p2p_dist.train.launch_config             # the config `make demo` launches with here
    python -m p2p_dist.train.launch_config multi_gpu   # one by name (recipes/accelerate/NAME.yaml)

The demo's: no CUDA GPU, two gloo processes on the CPU (`cpu_2proc.yaml`, the demo shows DDP). One
or more GPUs: one process on the first GPU (`single_gpu.yaml`); the demo network is far too small to
gain from more, and the 2-process CPU config would start two processes on one GPU or none.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from p2p_dist.config import RECIPES, ConfigError
from p2p_dist.errors import console_entry

ACCELERATE_CONFIGS = RECIPES / "accelerate"


def accelerate_config(name: str) -> Path:
    """The built-in accelerate config NAME (with or without .yaml)."""
    path = ACCELERATE_CONFIGS / (name if name.endswith(".yaml") else f"{name}.yaml")
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in ACCELERATE_CONFIGS.glob("*.yaml")))
        raise ConfigError(f"no built-in accelerate config {name!r} (choose from {names})")
    return path


def demo_accelerate_config(cuda_devices: int) -> Path:
    """The accelerate config for the demo on a machine with `cuda_devices` visible GPUs."""
    return accelerate_config("single_gpu" if cuda_devices >= 1 else "cpu_2proc")


def visible_cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@console_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", nargs="?", help="a built-in config (default: the demo's for this machine)")
    args = parser.parse_args(argv)
    print(accelerate_config(args.name) if args.name else demo_accelerate_config(visible_cuda_devices()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
