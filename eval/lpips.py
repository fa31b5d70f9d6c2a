"""LPIPS (Zhang et al. 2018, v0.1) with our own AlexNet / VGG16 feature stacks.

torchmetrics' LPIPS builds its backbones through torchvision, which cannot be installed beside
our torch; when torchvision imports, `make_lpips` uses torchmetrics' implementation, otherwise
this one. The backbones use torchvision's module layout, so the usual ImageNet weight files load
unchanged (eval/README.md, "Pretrained weights"; only the `features.*` keys are used).

distance = sum over layers of spatial_mean(lin_l((f_l(x)/|f_l(x)| - f_l(y)/|f_l(y)|)^2)),
inputs in [-1, 1] scaled by the LPIPS shift/scale constants.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from p2p_eval.weights import (
    MetricUnavailable,
    checkpoints_dir,
    find_weight_file,
    load_checked,
    load_state_dict_file,
)

BACKBONE_FILES = {
    "alex": ("alexnet-owt-7be5be79.pth", "alexnet-owt-*.pth", "torchvision's ImageNet AlexNet"),
    "vgg": ("vgg16-397923af.pth", "vgg16-*.pth", "torchvision's ImageNet VGG16"),
}
CHANNELS = {"alex": [64, 192, 384, 256, 256], "vgg": [64, 128, 256, 512, 512]}
# slice boundaries (torchvision `features` indices) after which LPIPS taps the ReLU output
TAPS = {"alex": [2, 5, 8, 10, 12], "vgg": [4, 9, 16, 23, 30]}


def _alexnet_features() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1),
        nn.ReLU(),
    )


def _vgg16_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    cin = 3
    for item in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, item, 3, padding=1), nn.ReLU()]
            cin = item
    return nn.Sequential(*layers)


class _Lin(nn.Module):
    """1x1 convolution without bias; `model.1` matches the release's key names."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(cin, 1, 1, bias=False))

    def forward(self, x):
        return self.model[1](x)  # dropout is a training-time detail of the release


class LPIPS(nn.Module):
    """Learned perceptual distance between image batches in [-1, 1]; returns [N]."""

    def __init__(self, net: str = "alex") -> None:
        super().__init__()
        if net not in CHANNELS:
            raise ValueError(f"LPIPS net must be one of {sorted(CHANNELS)}, got {net!r}")
        self.net_name = net
        self.features = _alexnet_features() if net == "alex" else _vgg16_features()
        self.lins = nn.ModuleList([_Lin(c) for c in CHANNELS[net]])
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out, start = [], 0
        for stop in TAPS[self.net_name]:
            for layer in self.features[start:stop]:
                x = layer(x)
            out.append(x)
            start = stop
        return out

    @staticmethod
    def _unit(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
        return f / (torch.sqrt((f * f).sum(dim=1, keepdim=True)) + eps)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx = self._taps((x.float() - self.shift) / self.scale)
        fy = self._taps((y.float() - self.shift) / self.scale)
        total = torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)
        for lin, a, b in zip(self.lins, fx, fy):
            total = total + lin((self._unit(a) - self._unit(b)) ** 2).mean(dim=(1, 2, 3))
        return total


def bundled_lin_file(net: str) -> Path | None:
    """The copy of the LPIPS v0.1 linear layers that torchmetrics ships, if installed."""
    spec = importlib.util.find_spec("torchmetrics")
    if spec and spec.origin:
        bundled = Path(spec.origin).parent / "functional" / "image" / "lpips_models" / f"{net}.pth"
        if bundled.is_file():
            return bundled
    return None


def lin_weight_file(net: str) -> Path:
    """The LPIPS v0.1 linear-layer weights: the torch cache first, then torchmetrics' copy."""
    cached = checkpoints_dir() / "lpips_v0.1" / f"{net}.pth"
    if cached.is_file():
        return cached
    bundled = bundled_lin_file(net)
    if bundled is not None:
        return bundled
    raise MetricUnavailable(
        f"LPIPS-{net} linear weights not found: put {net}.pth of the LPIPS v0.1 release into {cached.parent} "
        f"(`p2p-eval weights fetch lpips-{net}` downloads it)"
    )


def load_lpips(net: str = "alex") -> LPIPS:
    """Our LPIPS with backbone + linear weights from the cache (MetricUnavailable if absent)."""
    exact, pattern, source = BACKBONE_FILES[net]
    what = f"LPIPS-{net} backbone"
    backbone_path = find_weight_file([exact, pattern], what, source)
    model = LPIPS(net)
    load_checked(model.features, load_state_dict_file(backbone_path, what), backbone_path, what, prefix="features.")
    lin_path = lin_weight_file(net)
    lin_state = load_state_dict_file(lin_path, f"LPIPS-{net} linear")
    renamed = {
        k.replace(f"lin{i}.", f"{i}.", 1): v for i in range(5) for k, v in lin_state.items() if k.startswith(f"lin{i}.")
    }
    load_checked(model.lins, renamed, lin_path, f"LPIPS-{net} linear")
    return model


class _TorchmetricsLPIPS(nn.Module):
    """torchmetrics' LPIPS (torchvision backbones) behind the same [N]-distance interface."""

    def __init__(self, net: str) -> None:
        super().__init__()
        from torchmetrics.functional.image.lpips import _LPIPS

        self.inner = _LPIPS(pretrained=True, net=net).eval()

    @torch.no_grad()
    def forward(self, x, y):
        return self.inner(x.float(), y.float(), normalize=False).reshape(-1)


def make_lpips(net: str = "alex") -> nn.Module:
    """torchmetrics' LPIPS when torchvision is importable, our implementation otherwise."""
    if importlib.util.find_spec("torchvision") is not None:
        try:
            return _TorchmetricsLPIPS(net)
        except Exception as exc:  # torchvision present but cannot build/download its backbone
            raise MetricUnavailable(f"LPIPS-{net} through torchvision failed: {exc}") from None
    return load_lpips(net)
