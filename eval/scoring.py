"""Score (prediction, target) pairs: per-sample records, then set-level results.

`Scorer.score(sample)` turns one sample into a small record (per-image metric values, its
confusion matrices, Lab histogram counts, Inception features); records from every process are
gathered, de-duplicated by key and sorted, and `Scorer.aggregate(records)` reduces them in key
order. Every network runs on one image at a time, so the numbers do not depend on how samples
were batched or split across processes: rerunning, or running on more processes, gives the same
results.

Modes: `photo` (generated photos; FCN-score of the generated photos and of the real ones, the
paper's ground-truth row), `labels` (generated colour label maps decoded by nearest palette
colour, then per-pixel/per-class accuracy and IoU) and `image` (no class scores).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch

from p2p_dist.data.transforms import resize
from p2p_eval.color import color_scores, lab_histograms
from p2p_eval.confusion import confusion_matrix, scores_from_confusion
from p2p_eval.labels import ClassInfo, decode_palette
from p2p_eval.perceptual import fid_from_features, kid_from_features, l1, ms_ssim, psnr, ssim, to_unit
from p2p_eval.weights import MetricUnavailable

IMAGE_METRICS = ("l1", "psnr", "ssim", "ms_ssim", "lpips_alex", "lpips_vgg", "fid", "kid", "color")
ALL_METRICS = ("classes",) + IMAGE_METRICS  # "classes": FCN-score (photo) or label scores (labels)
MODES = ("photo", "labels", "image")
CLASS_KEYS = ("pixel_acc", "class_acc", "class_iou", "class_acc_present", "class_iou_present")


@dataclass
class Sample:
    """One evaluated pair: uint8 RGB images [H, W, 3]; `label` class ids [H, W] (255 = ignore)."""

    key: str
    pred: np.ndarray
    target: np.ndarray | None = None
    input: np.ndarray | None = None
    label: np.ndarray | None = None


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

    def __init__(self, metrics=ALL_METRICS, mode: str = "image", fcn=None, classes: ClassInfo | None = None,
                 device: str | torch.device = "cpu") -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        unknown = set(metrics) - set(ALL_METRICS)
        if unknown:
            raise ValueError(f"unknown metrics {sorted(unknown)}; known: {', '.join(ALL_METRICS)}")
        self.mode = mode
        self.metrics = [m for m in ALL_METRICS if m in metrics]
        self.fcn = fcn
        self.classes = classes if classes is not None else (fcn.classes if fcn is not None else None)
        self.device = torch.device(device)
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
    @torch.no_grad()
    def score(self, s: Sample) -> dict:
        rec: dict = {"key": s.key}
        if s.target is not None and s.pred.shape != s.target.shape:
            raise ValueError(f"{s.key}: prediction {s.pred.shape} and target {s.target.shape} differ in size")
        if self.active("classes") and s.label is not None:
            n = self.classes.num_classes
            ign = self.classes.ignore_index
            if self.mode == "photo":
                rec["conf"] = confusion_matrix(self.fcn.segment(s.pred[None], s.label.shape)[0], s.label, n, ign)
                if s.target is not None:
                    real = self.fcn.segment(s.target[None], s.label.shape)[0]
                    rec["conf_real"] = confusion_matrix(real, s.label, n, ign)
            else:
                pred = s.pred
                if pred.shape[:2] != s.label.shape:
                    pred = resize(pred, s.label.shape, nearest=True)
                rec["conf"] = confusion_matrix(decode_palette(pred, self.classes.palette), s.label, n, ign)
        if s.target is None:
            return rec
        p, t = to_unit(s.pred[None]), to_unit(s.target[None])
        if self.active("l1"):
            rec["l1"] = float(l1(p, t)[0])
        if self.active("psnr"):
            rec["psnr"] = float(psnr(p, t)[0])
        if self.active("ssim"):
            rec["ssim"] = float(ssim(p, t)[0])
        if self.active("ms_ssim"):
            try:
                rec["ms_ssim"] = float(ms_ssim(p, t)[0])
            except MetricUnavailable as exc:
                self.unavailable["ms_ssim"] = str(exc)
        for name in ("lpips_alex", "lpips_vgg"):
            if self.active(name):
                pf = (p * 2 - 1).float().to(self.device)
                tf = (t * 2 - 1).float().to(self.device)
                rec[name] = float(self.nets[name](pf, tf)[0])
        if self.active("fid") or self.active("kid"):
            net = self.nets["inception"]
            as_u8 = lambda a: torch.tensor(np.asarray(a)[None]).permute(0, 3, 1, 2).to(self.device)
            rec["feat_fake"] = net(as_u8(s.pred))[0].double().cpu().numpy()
            rec["feat_real"] = net(as_u8(s.target))[0].double().cpu().numpy()
        if self.active("color"):
            rec["hist_pred"] = lab_histograms(s.pred)
            rec["hist_target"] = lab_histograms(s.target)
        return rec

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
        if records and not any(r.keys() - {"key"} for r in records):
            out["unavailable"].setdefault("image", "no targets: only class scores could be computed")
        return out
