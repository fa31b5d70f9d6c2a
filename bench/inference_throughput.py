"""Images/s of p2p-translate's forward path and of p2p-eval's scoring, today's way against the old one,
measured interleaved in one process.

    python bench/inference_throughput.py [--repeats 3] [--batch 4] [--json out.json]

Rows (unet_256, ngf 64 unless --ngf, eval mode, random weights; CPU threads as torch chooses):
  translate 256 px: batch 1 (the old default path) vs --batch-size N (translate_batch, inference_mode)
  translate 1024 px: whole image vs tiled (--tile 256 --overlap 64), tiles batched N at a time
  score (l1, psnr, ssim): Scorer.score one sample at a time (the old loop) vs Scorer.score_batch
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from p2p_dist.fsutil import atomic_write_text
from p2p_dist.inference import translate_batch
from p2p_dist.inference.tiling import translate_tiled
from p2p_dist.models import GeneratorSpec


def _rate(fn, images: int, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return images / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--ngf", type=int, default=64)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    G = GeneratorSpec(name="unet_256", ngf=args.ngf).build().eval()
    n = args.batch
    x256 = torch.rand(n, 3, 256, 256) * 2 - 1
    x1024 = torch.rand(3, 1024, 1024) * 2 - 1
    run = lambda xb, keys: translate_batch(G, xb, mode="eval", keys=keys)  # noqa: E731

    def old_256():
        with torch.no_grad():
            for i in range(n):
                G(x256[i : i + 1])

    rows = {}
    rows["translate_256_batch1_images_per_s"] = _rate(old_256, n, args.repeats)
    rows[f"translate_256_batch{n}_images_per_s"] = _rate(lambda: run(x256, None), n, args.repeats)
    rows["translate_1024_whole_images_per_s"] = _rate(lambda: run(x1024[None], None), 1, args.repeats)
    rows[f"translate_1024_tiled256_overlap64_batch{n}_images_per_s"] = _rate(
        lambda: translate_tiled(run, x1024, "k", tile=256, overlap=64, batch_size=n), 1, args.repeats
    )

    from p2p_eval.scoring import Sample, Scorer

    rng = np.random.default_rng(0)
    samples = [
        Sample(
            f"s{i}",
            rng.integers(0, 256, (256, 256, 3), dtype=np.uint8),
            rng.integers(0, 256, (256, 256, 3), dtype=np.uint8),
        )
        for i in range(4 * n)
    ]
    scorer = Scorer(["l1", "psnr", "ssim"], "image")
    rows["score_one_at_a_time_images_per_s"] = _rate(
        lambda: [scorer.score(s) for s in samples], len(samples), args.repeats
    )
    rows[f"score_batch{n}_images_per_s"] = _rate(
        lambda: [scorer.score_batch(samples[i : i + n]) for i in range(0, len(samples), n)], len(samples), args.repeats
    )
    for k, v in rows.items():
        print(f"{k:55s} {v:8.2f}")
    if args.json:
        info = {"ngf": args.ngf, "batch": n, "threads": torch.get_num_threads()}
        atomic_write_text(Path(args.json), json.dumps({**info, **rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
