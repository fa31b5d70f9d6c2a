"""Score (prediction, target) pairs: per-sample records, then set-level results.

`Scorer.score_batch(samples)` turns each sample into a small record (per-image metric values, its
confusion matrices, Lab histogram counts, Inception features), running every network once per
group of same-sized samples; records from every process are gathered, de-duplicated by key and
sorted, and `Scorer.aggregate(records)` reduces them in key order. Every record is a function of
its own sample (the networks run in eval mode, images do not interact), so the numbers do not
depend on how samples were split across processes, up to float rounding in batched kernels.

Modes: `photo` (generated photos; FCN-score of the generated photos and of the real ones, the
paper's ground-truth row), `labels` (generated colour label maps decoded by nearest palette
colour, then per-pixel/per-class accuracy and IoU) and `image` (no class scores).

Images are 8- or 16-bit with any number of channels. L1, PSNR and SSIM use every channel at the bit
depth's range; the metrics the table marks `rgb` (FCN-score, LPIPS, FID/KID, Lab colour) see
`rgb_view`: 8-bit RGB (or grey) as it is, the three bands `rgb_bands` names, or nothing, and then
they say in one line that they do not apply.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch

from p2p_dist.data.transforms import resize
from p2p_dist.errors import UserError
from p2p_dist.imageio import eight_bit
from p2p_dist.metric_table import GROUPS, METRICS, RGB_GROUPS
from p2p_eval.color import color_scores, lab_histograms
from p2p_eval.confusion import confusion_matrix, scores_from_confusion
from p2p_eval.labels import ClassInfo, decode_palette
from p2p_eval.perceptual import fid_from_features, kid_from_features, l1, ms_ssim, psnr, ssim, to_unit
from p2p_eval.weights import MetricUnavailable

MODES = ("photo", "labels", "image")
CLASS_KEYS = tuple(k for k, m in METRICS.items() if m.group == "classes")


@dataclass
class Sample:
    """One evaluated pair: images [H, W, C], uint8 or uint16 (pred and target alike); `label` class
    ids [H, W] (255 = ignore)."""

    key: str
    pred: np.ndarray
    target: np.ndarray | None = None
    input: np.ndarray | None = None
    label: np.ndarray | None = None


def describe(img: np.ndarray) -> str:
    """'16-bit, 4 channels': what a user is told about images the RGB metrics cannot take."""
    c = img.shape[-1]
    return f"{8 * img.dtype.itemsize}-bit, {c} channel{'s' if c > 1 else ''}"


def rgb_view(images: np.ndarray, bands: tuple[int, ...] | None = None) -> np.ndarray | None:
    """8-bit RGB [..., 3] of images [..., C] for the metrics that expect photos: the bands named by
    `bands` (1-based, in R, G, B order; 16-bit rounded to 8 bits), else 8-bit RGB as it is and 8-bit
    grey repeated (as every image was read before 16-bit and multichannel data); None otherwise."""
    c = images.shape[-1]
    if bands:
        if max(bands) > c:
            raise UserError(f"--rgb-bands {','.join(map(str, bands))}: the images have {c} channel(s)")
        return eight_bit(np.ascontiguousarray(images[..., [b - 1 for b in bands]]))
    if images.dtype == np.uint8 and c in (1, 3):
        return images if c == 3 else np.repeat(images, 3, axis=-1)
    return None


def not_rgb(images: np.ndarray) -> str:
    return (
        f"does not apply: it expects 8-bit RGB photos, these images are {describe(images)} "
        "(name three bands with --rgb-bands, e.g. --rgb-bands 3,2,1)"
    )


def shown(img: np.ndarray, bands: tuple[int, ...] | None = None) -> np.ndarray:
    """An 8-bit picture of one image for the report grids: its `rgb_view`, else its first channel
    as grey (16-bit rounded to 8 bits)."""
    rgb = rgb_view(img, bands)
    return rgb if rgb is not None else eight_bit(np.ascontiguousarray(img[..., 0]))


def grid_rank(key: str) -> str:
    """Order in which samples are picked for image grids: a hash, so the pick is spread over the
    set yet identical for every run and process count over the same data."""
    return hashlib.sha1(key.encode("utf-8")).hexdigest()


@dataclass
class GridKeeper:
    """Keeps the `n` samples with the smallest `grid_rank` seen so far."""

    n: int = 6
    items: dict = field(default_factory=dict)

    def offer(self, sample: Sample) -> None:
        if self.n <= 0:
            return
        self.items[sample.key] = (grid_rank(sample.key), sample)
        if len(self.items) > self.n:
            worst = max(self.items, key=lambda k: self.items[k][0])
            del self.items[worst]

    def samples(self) -> list[Sample]:
        return [s for _, s in sorted(self.items.values(), key=lambda t: t[0])]


class Scorer:
    """Holds the networks of the requested metrics; unavailable ones are listed with a reason."""

    def __init__(
        self,
        metrics=GROUPS,
        mode: str = "image",
        fcn=None,
        classes: ClassInfo | None = None,
        device: str | torch.device = "cpu",
        rgb_bands: tuple[int, ...] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        unknown = set(metrics) - set(GROUPS)
        if unknown:
            raise ValueError(f"unknown metrics {sorted(unknown)}; known: {', '.join(GROUPS)}")
        self.mode = mode
        self.metrics = [m for m in GROUPS if m in metrics]
        self.fcn = fcn
        self.classes = classes if classes is not None else (fcn.classes if fcn is not None else None)
        self.device = torch.device(device)
        self.rgb_bands = tuple(rgb_bands) if rgb_bands else None
        self.unavailable: dict[str, str] = {}
        self.nets: dict[str, torch.nn.Module] = {}
        self._load_networks()

    # --- set-up ----------------------------------------------------------------------------
    def _load_networks(self) -> None:
        from p2p_eval.inception import load_fid_inception
        from p2p_eval.lpips import make_lpips

        if "classes" in self.metrics:
            if self.mode == "image":
                self.metrics.remove("classes")
            elif self.mode == "photo" and self.fcn is None:
                self.unavailable["classes"] = "unavailable: no FCN evaluator given (--fcn DIR)"
            elif self.mode == "labels" and (self.classes is None or not self.classes.palette):
                self.unavailable["classes"] = "unavailable: the dataset lists no class palette"
        if self.fcn is not None:
            self.fcn.to(self.device)
        for name, net in (("lpips_alex", "alex"), ("lpips_vgg", "vgg")):
            if name in self.metrics:
                try:
                    self.nets[name] = make_lpips(net).to(self.device)
                except MetricUnavailable as exc:
                    self.unavailable[name] = str(exc)
        if "fid" in self.metrics or "kid" in self.metrics:
            try:
                self.nets["inception"] = load_fid_inception().to(self.device)
            except MetricUnavailable as exc:
                for name in ("fid", "kid"):
                    if name in self.metrics:
                        self.unavailable[name] = str(exc)

    def use_feature_network(self, net: torch.nn.Module) -> None:
        """Replace the Inception network (any module mapping uint8 [N,3,H,W] to [N, d])."""
        self.nets["inception"] = net.to(self.device).eval()
        for name in ("fid", "kid"):
            self.unavailable.pop(name, None)

    def active(self, name: str) -> bool:
        return name in self.metrics and name not in self.unavailable

    # --- per sample ----------------------------------------------------------------------
    def score(self, s: Sample) -> dict:
        return self.score_batch([s])[0]

    @torch.no_grad()
    def score_batch(self, samples: list[Sample]) -> list[dict]:
        """One record per sample, in order. Samples of the same sizes go through each network
        together (one forward pass per network and group instead of one per sample)."""
        groups: dict[tuple, list[int]] = {}
        for i, s in enumerate(samples):
            if s.target is not None and (s.pred.shape != s.target.shape or s.pred.dtype != s.target.dtype):
                raise ValueError(
                    f"{s.key}: prediction {s.pred.shape} {s.pred.dtype} and target {s.target.shape} "
                    f"{s.target.dtype} differ"
                )
            shapes = (
                s.pred.shape,
                None if s.target is None else s.target.shape,
                None if s.label is None else s.label.shape,
            )
            groups.setdefault(shapes, []).append(i)
        records: list[dict] = [{} for _ in samples]
        for idx in groups.values():
            for i, rec in zip(idx, self._score_group([samples[i] for i in idx])):
                records[i] = rec
        return records

    def _rgb(self, images: np.ndarray) -> np.ndarray | None:
        """`rgb_view` of a group's images; when there is none, the RGB metrics asked for are
        marked as not applying (once, with the reason)."""
        if not any(self.active(g) for g in RGB_GROUPS):
            return None
        rgb = rgb_view(images, self.rgb_bands)
        if rgb is None:
            for g in RGB_GROUPS:
                if self.active(g):
                    self.unavailable[g] = not_rgb(images)
        return rgb

    def _score_group(self, group: list[Sample]) -> list[dict]:
        """Records for samples whose prediction, target and label shapes are all equal."""
        recs: list[dict] = [{"key": s.key} for s in group]
        first = group[0]
        preds = np.stack([s.pred for s in group])
        rgb_preds = self._rgb(preds)
        targets = np.stack([s.target for s in group]) if first.target is not None else None
        rgb_targets = rgb_view(targets, self.rgb_bands) if targets is not None and rgb_preds is not None else None
        if self.active("classes") and first.label is not None:
            n, ign = self.classes.num_classes, self.classes.ignore_index
            if self.mode == "photo":
                seg = self.fcn.segment(rgb_preds, first.label.shape)
                real = self.fcn.segment(rgb_targets, first.label.shape) if rgb_targets is not None else None
                for j, (rec, s) in enumerate(zip(recs, group)):
                    rec["conf"] = confusion_matrix(seg[j], s.label, n, ign)
                    if real is not None:
                        rec["conf_real"] = confusion_matrix(real[j], s.label, n, ign)
            else:
                for rec, s, pred in zip(recs, group, rgb_preds):
                    if pred.shape[:2] != s.label.shape:
                        pred = resize(pred, s.label.shape, nearest=True)
                    rec["conf"] = confusion_matrix(decode_palette(pred, self.classes.palette), s.label, n, ign)
        if targets is None:
            return recs
        p, t = to_unit(preds), to_unit(targets)
        for name, fn in (("l1", l1), ("psnr", psnr), ("ssim", ssim), ("ms_ssim", ms_ssim)):
            if not self.active(name):
                continue
            try:
                values = fn(p, t)
            except MetricUnavailable as exc:
                self.unavailable[name] = str(exc)
                continue
            for rec, v in zip(recs, values):
                rec[name] = float(v)
        if rgb_preds is None:
            return recs
        if rgb_preds is not preds:  # the bands named, or grey repeated
            p, t = to_unit(rgb_preds), to_unit(rgb_targets)
        for name in ("lpips_alex", "lpips_vgg"):
            if self.active(name):
                values = self.nets[name]((p * 2 - 1).float().to(self.device), (t * 2 - 1).float().to(self.device))
                for rec, v in zip(recs, values):
                    rec[name] = float(v)
        if self.active("fid") or self.active("kid"):
            net = self.nets["inception"]
            as_u8 = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).to(self.device)
            fake = net(as_u8(rgb_preds)).double().cpu().numpy()
            real = net(as_u8(rgb_targets)).double().cpu().numpy()
            for j, rec in enumerate(recs):
                rec["feat_fake"], rec["feat_real"] = fake[j], real[j]
        if self.active("color"):
            for rec, pred, target in zip(recs, rgb_preds, rgb_targets):
                rec["hist_pred"] = lab_histograms(pred)
                rec["hist_target"] = lab_histograms(target)
        return recs

    # --- over the set ------------------------------------------------------------------
    def aggregate(self, records: list[dict]) -> dict:
        """Set-level results from records (any order; reduced in key order)."""
        records = sorted(records, key=lambda r: r["key"])
        out: dict = {"samples": len(records), "mode": self.mode, "metrics": {}, "unavailable": {}}
        metrics = out["metrics"]
        if self.active("classes"):
            confs = [r["conf"] for r in records if "conf" in r]
            if confs:
                scores = scores_from_confusion(np.sum(confs, axis=0))
                metrics.update({k: scores[k] for k in CLASS_KEYS})
                out["class_scores"] = {
                    "kind": "FCN-score" if self.mode == "photo" else "label maps (nearest palette colour)",
                    "classes": list(self.classes.classes),
                    "per_class_acc": scores["per_class_acc"],
                    "per_class_iou": scores["per_class_iou"],
                    "present": scores["present"],
                    "pixels": scores["pixels"],
                    "confusion": np.sum(confs, axis=0).tolist(),
                }
                reals = [r["conf_real"] for r in records if "conf_real" in r]
                if reals:
                    real = scores_from_confusion(np.sum(reals, axis=0))
                    out["real_photos"] = {k: real[k] for k in CLASS_KEYS}
                    out["real_photos"]["per_class_iou"] = real["per_class_iou"]
            else:
                out["unavailable"]["classes"] = "unavailable: the samples carry no label maps"
        for name in ("l1", "psnr", "ssim", "ms_ssim", "lpips_alex", "lpips_vgg"):
            vals = [r[name] for r in records if name in r]
            if self.active(name) and vals:
                metrics[name] = float(np.mean(np.asarray(vals, dtype=np.float64)))
        if self.active("fid") or self.active("kid"):
            fake = np.stack([r["feat_fake"] for r in records if "feat_fake" in r]) if records else np.zeros((0, 1))
            real = np.stack([r["feat_real"] for r in records if "feat_real" in r]) if records else np.zeros((0, 1))
            for name in ("fid", "kid"):
                if not self.active(name):
                    continue
                try:
                    if name == "fid":
                        metrics["fid"] = fid_from_features(real, fake)
                    else:
                        metrics["kid"], metrics["kid_std"] = kid_from_features(real, fake)
                except MetricUnavailable as exc:
                    out["unavailable"][name] = str(exc)
        if self.active("color"):
            hp = [r["hist_pred"] for r in records if "hist_pred" in r]
            ht = [r["hist_target"] for r in records if "hist_target" in r]
            if hp:
                sum_h = lambda hs: {c: np.sum([h[c] for h in hs], axis=0) for c in hs[0]}
                metrics.update(color_scores(sum_h(hp), sum_h(ht)))
        for name in self.metrics:
            if name in self.unavailable:
                out["unavailable"][name] = self.unavailable[name]
        if records and not any(r.keys() - {"key"} for r in records) and not out["unavailable"]:
            out["unavailable"].setdefault("image", "no targets: only class scores could be computed")
        return out
