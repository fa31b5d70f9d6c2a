"""A small saved generator (unet_128, ngf 8) with BatchNorm statistics that are not the defaults."""

from __future__ import annotations

from pathlib import Path

import torch

from p2p_dist.models import GeneratorSpec, save_generator

SPEC = GeneratorSpec(name="unet_128", ngf=8, image_size=128)


def write_small_checkpoint(folder: Path) -> Path:
    torch.manual_seed(0)
    G = SPEC.build()
    with torch.no_grad():
        G(torch.randn(4, 3, 128, 128))  # train-mode forward: the running statistics move
    save_generator(G, SPEC, folder)
    return folder
