"""The networks and optimizers a config asks for (before any engine wraps them), and the
generator's export spec. Channel counts follow the training shards (`Config.pixel_ranges`)."""

from __future__ import annotations

import torch

from p2p_dist.config import Config


def build_models(cfg: Config):
    from p2p_dist.models import build_discriminator

    m = cfg.model
    G = generator_spec(cfg).build(init_gain=m.init_gain)
    D = None
    if cfg.loss.gan != "none":
        d_in = cfg.d_in_channels
        D = build_discriminator(m.discriminator, in_channels=d_in, ndf=m.ndf, norm=m.norm, init_gain=m.init_gain)
    return G, D


def build_optimizer(model: torch.nn.Module, cfg: Config, lr: torch.Tensor | None = None) -> torch.optim.Optimizer:
    """Adam per optim.*. `lr`, a device tensor, makes it the graph step's Adam (train.cuda_graph): capturable,
    reading the learning rate from that tensor at each step (the engine's set_lr writes into it)."""
    o = cfg.optim
    # fused: one pass per tensor (bench/README.md); else PyTorch's choice (foreach on CUDA)
    return torch.optim.Adam(
        model.parameters(),
        lr=o.lr if lr is None else lr,
        betas=(o.beta1, o.beta2),
        fused=o.fused or None,
        capturable=lr is not None,
    )


def generator_spec(cfg: Config):
    from p2p_dist.models import GeneratorSpec

    m = cfg.model
    ranges = cfg.pixel_ranges  # from the shards' index.json: channels, bit depth, data.normalize
    return GeneratorSpec(
        name=m.generator,
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        input_range=ranges[0] if ranges else None,
        output_range=ranges[1] if ranges else None,
        ngf=m.ngf,
        norm=m.norm,
        dropout=m.dropout,
        task=cfg.data.task,
        direction=cfg.data.direction,
        image_size=cfg.data.crop_size,
    )
