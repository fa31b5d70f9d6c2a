"""Image and perceptual metrics (eval/README.md, "Metrics"): L1, PSNR, SSIM, MS-SSIM, LPIPS, FID, KID.

Per-image values come from torchmetrics' functional API (LPIPS from `p2p_eval.lpips`); FID/KID
from torchmetrics on Inception features extracted per image (`p2p_eval.inception`), gathered from
all processes and fed in key order, so N processes give exactly the numbers of one. L1, PSNR, SSIM
and MS-SSIM take 8- or 16-bit images of any channel count, on [0, 1] by their bit depth
(`to_unit`), so data_range 1 makes PSNR's peak 2^bits - 1 (SSIM: 11x11 Gaussian window, sigma 1.5,
per channel, averaged; SSIM and MS-SSIM in float32, L1 and PSNR in float64); LPIPS and the
Inception features take 8-bit RGB (`p2p_eval.scoring.rgb_view`). A metric that cannot run raises
`MetricUnavailable` with the reason; the others still run.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

from p2p_eval.weights import MetricUnavailable

MS_SSIM_MIN_SIDE = 161  # 5 scales of an 11-pixel window: (11 - 1) * 2**4 < side


def to_unit(images: np.ndarray) -> torch.Tensor:
    """uint8 or uint16 [N, H, W, C] -> float64 [N, C, H, W] in [0, 1]: divided by the bit depth's
    largest value, 255 or 65535 (float64 for exact reductions)."""
    arr = np.asarray(images)
    if arr.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"images are scored from uint8 or uint16 pixels, got {arr.dtype}")
    top = float(np.iinfo(arr.dtype).max)
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float64)).permute(0, 3, 1, 2) / top


def l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred - target).abs().flatten(1).mean(1)


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    from torchmetrics.functional.image import peak_signal_noise_ratio

    return peak_signal_noise_ratio(pred, target, data_range=1.0, reduction="none", dim=(1, 2, 3))


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(pred.float(), target.float(), data_range=1.0, reduction="none")


def ms_ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    side = min(pred.shape[-2:])
    if side < MS_SSIM_MIN_SIDE:
        raise MetricUnavailable(
            f"unavailable: images smaller than {MS_SSIM_MIN_SIDE} px on a side ({side} px) are too "
            f"small for MS-SSIM's 5 scales of an 11x11 window"
        )
    return multiscale_structural_similarity_index_measure(
        pred.float(), target.float(), data_range=1.0, reduction="none"
    )


class PrecomputedFeatures(nn.Module):
    """Identity 'feature extractor' so torchmetrics' FID/KID consume gathered features."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = int(num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """Frechet distance between two feature sets through torchmetrics (>= 2 samples each)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if len(real) < 2 or len(fake) < 2:
        raise MetricUnavailable("unavailable: FID needs at least 2 images")
    metric = FrechetInceptionDistance(feature=PrecomputedFeatures(real.shape[1]), sync_on_compute=False)
    metric.update(torch.from_numpy(np.asarray(real, dtype=np.float64)), real=True)
    metric.update(torch.from_numpy(np.asarray(fake, dtype=np.float64)), real=False)
    return float(metric.compute())


def kid_from_features(real: np.ndarray, fake: np.ndarray) -> tuple[float, float]:
    """Kernel Inception Distance (mean, std over 100 random subsets of up to 1000; seed 0) through torchmetrics."""
    from torchmetrics.image.kid import KernelInceptionDistance

    n = min(len(real), len(fake))
    if n < 2:
        raise MetricUnavailable("unavailable: KID needs at least 2 images")
    with warnings.catch_warnings():  # "will save all extracted features": we hand it features
        warnings.simplefilter("ignore")
        metric = KernelInceptionDistance(
            feature=PrecomputedFeatures(real.shape[1]),
            subsets=100,
            subset_size=min(1000, n),
            sync_on_compute=False,
        )
    metric.update(torch.from_numpy(np.asarray(real, dtype=np.float64)), real=True)
    metric.update(torch.from_numpy(np.asarray(fake, dtype=np.float64)), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        mean, std = metric.compute()
    return float(mean), float(std)
