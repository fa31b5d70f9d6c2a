"""Which accelerate config `make demo` launches with on this machine.

    python -m p2p_dist.train.launch_config        # prints e.g. recipes/accelerate/cpu_2proc.yaml

No CUDA GPU: two gloo processes on the CPU (`cpu_2proc.yaml`, the demo shows DDP). One or more
GPUs: one process on the first GPU (`single_gpu.yaml`); the demo network is far too small to gain
from more, and the 2-process CPU config would start two processes on one GPU or none.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ACCELERATE_CONFIGS = Path("recipes") / "accelerate"


def demo_accelerate_config(cuda_devices: int) -> Path:
    """The accelerate config for the demo on a machine with `cuda_devices` visible GPUs (relative to the repository)."""
    name = "single_gpu.yaml" if cuda_devices >= 1 else "cpu_2proc.yaml"
    return ACCELERATE_CONFIGS / name


def visible_cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(argv)
    print(demo_accelerate_config(visible_cuda_devices()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
