"""`p2p-eval report RUN --out DIR`: one self-contained HTML page for a training run folder.

Reads only files in the run folder (train.output_dir), so it works on a copy of a run and never
imports the training code: `metrics.jsonl` (loss lines with `lr` and `images_per_s`, validation
lines with `val_*` keys, alarm lines with `alarm`), `config.yaml`, `samples/step-*.png`,
`checkpoints/` and the `scores.json` of `p2p-eval score --out RUN/<folder>` when present.
Curves are inline SVG (`p2p_eval.svg`), images are embedded as data URIs, there is no script:
the page is one file that any browser shows offline.
"""

from __future__ import annotations

import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from p2p_dist.errors import UserError
from p2p_dist.fsutil import atomic_write_text
from p2p_dist.metric_table import METRICS, VALIDATION, fmt
from p2p_eval.report import CSS, GT_ROW, Variant, load_variant, png_data_uri, unavailable_notes
from p2p_eval.svg import line_chart

NOT_LOSSES = {"step", "lr", "images_per_s", "time", "nonfinite_steps"}
_SAMPLE = re.compile(r"^step-(\d+)\.png$")


@dataclass
class RunFolder:
    path: Path
    train: list[dict] = field(default_factory=list)  # loss lines
    val: list[dict] = field(default_factory=list)  # validation lines
    alarms: list[dict] = field(default_factory=list)
    config_text: str = ""
    config: dict = field(default_factory=dict)
    samples: list[tuple[int, Path]] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)
    best: dict | None = None
    scores: list[Variant] = field(default_factory=list)
    skipped_lines: int = 0


def read_run_folder(path: str | Path) -> RunFolder:
    run = RunFolder(Path(path))
    metrics = run.path / "metrics.jsonl"
    if not run.path.is_dir():
        raise UserError(f"{path}: no such run folder")
    if not metrics.is_file() and not (run.path / "config.yaml").is_file():
        raise UserError(f"{path} is not a training run folder (no metrics.jsonl or config.yaml in it)")
    if metrics.is_file():
        for line in metrics.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                run.skipped_lines += 1  # a line cut by a kill
                continue
            if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
                run.skipped_lines += 1
            elif "alarm" in rec:
                run.alarms.append(rec)
            elif any(k.startswith("val_") for k in rec):
                run.val.append(rec)
            else:
                run.train.append(rec)
    cfg_file = run.path / "config.yaml"
    if cfg_file.is_file():
        import yaml

        run.config_text = cfg_file.read_text(errors="replace")
        try:
            loaded = yaml.safe_load(run.config_text)
            run.config = loaded if isinstance(loaded, dict) else {}
        except yaml.YAMLError:
            run.config = {}
    samples = run.path / "samples"
    if samples.is_dir():
        run.samples = sorted((int(m.group(1)), p) for p in samples.iterdir() if (m := _SAMPLE.match(p.name)))
    ckpts = run.path / "checkpoints"
    if ckpts.is_dir():
        run.checkpoints = sorted(p.name for p in ckpts.iterdir() if p.is_dir() and p.name.startswith("step-"))
        best = ckpts / "best" / "best.json"
        if best.is_file():
            try:
                run.best = json.loads(best.read_text())
            except json.JSONDecodeError:
                run.best = None
    for scores in sorted([run.path / "scores.json", *run.path.glob("*/scores.json")]):
        if scores.is_file():
            try:
                run.scores.append(load_variant(str(scores)))
            except UserError:
                continue  # not ours, or an older format: leave it out rather than fail the page
    return run


def _series(records: list[dict], key: str) -> list[tuple[float, float]]:
    out = []
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out.append((float(r["step"]), float(v)))
    return out


def _keys(records: list[dict], keep) -> list[str]:
    seen: dict[str, None] = {}
    for r in records:
        for k, v in r.items():
            if keep(k) and isinstance(v, (int, float)) and not isinstance(v, bool):
                seen.setdefault(k, None)
    return list(seen)


def loss_charts(run: RunFolder) -> list[str]:
    """D's losses together (real and fake should stay near each other), then each G term alone."""
    keys = _keys(run.train, lambda k: k not in NOT_LOSSES)
    d_keys = [k for k in keys if k.startswith("D_")]
    charts = []
    if d_keys:
        charts.append(
            line_chart("Discriminator loss", [(k, _series(run.train, k)) for k in d_keys], chart_id="chart-loss-D")
        )
    for k in keys:
        if k not in d_keys:
            charts.append(line_chart(f"{k} loss", [(k, _series(run.train, k))], chart_id=f"chart-loss-{k}"))
    return charts


def val_charts(run: RunFolder) -> list[str]:
    keys = _keys(run.val, lambda k: k.startswith("val_") and k not in ("val_samples", "val_seconds"))
    return [
        line_chart(
            f"{k} ({VALIDATION[k].direction})" if k in VALIDATION else k,
            [(k, _series(run.val, k))],
            chart_id=f"chart-{k}",
        )
        for k in keys
    ]


def speed_charts(run: RunFolder) -> list[str]:
    out = []
    if _series(run.train, "lr"):
        out.append(line_chart("learning rate", [("lr", _series(run.train, "lr"))], chart_id="chart-lr"))
    if _series(run.train, "images_per_s"):
        out.append(
            line_chart(
                "throughput (images/s)",
                [("images/s", _series(run.train, "images_per_s"))],
                chart_id="chart-images-per-s",
            )
        )
    return out


def pick_samples(samples: list[tuple[int, Path]], count: int) -> list[tuple[int, Path]]:
    """`count` grids evenly spaced over the run, the first and the last included."""
    if len(samples) <= count:
        return list(samples)
    if count == 1:
        return [samples[-1]]
    idx = sorted({round(i * (len(samples) - 1) / (count - 1)) for i in range(count)})
    return [samples[i] for i in idx]


def _summary_rows(run: RunFolder) -> list[tuple[str, str]]:
    train_cfg = run.config.get("train", {}) if isinstance(run.config.get("train"), dict) else {}
    last = run.train[-1] if run.train else {}
    rows = [("run folder", str(run.path))]
    max_steps = train_cfg.get("max_steps")
    steps = max((r["step"] for r in run.train + run.val), default=0)
    rows.append(("steps logged", f"{steps}" + (f" / {max_steps}" if max_steps else "")))
    for k in _keys([last], lambda k: k not in NOT_LOSSES):
        rows.append((f"last {k}", f"{last[k]:.4f}"))
    if isinstance(last.get("images_per_s"), (int, float)):
        rows.append(("last throughput", f"{last['images_per_s']:.2f} images/s"))
    if run.val:
        lv = run.val[-1]
        rows.append(
            (
                "last validation",
                f"step {lv['step']}: "
                + ", ".join(
                    f"{k} {lv[k]:.4g}" for k in _keys([lv], lambda k: k.startswith("val_") and k != "val_seconds")
                ),
            )
        )
    if run.best:
        value = run.best.get("value")
        shown = f"{value:.4g}" if isinstance(value, (int, float)) else str(value)
        rows.append(
            ("best checkpoint", f"checkpoints/best (step {run.best.get('step')}, {run.best.get('metric')} {shown})")
        )
    rows.append(("health alarms", str(len(run.alarms)) if run.alarms else "none"))
    if run.checkpoints:
        rows.append(("checkpoints", ", ".join(run.checkpoints)))
    rows.append(
        ("final generator", "final/" if (run.path / "final" / "generator.safetensors").is_file() else "not yet")
    )
    if run.skipped_lines:
        rows.append(("unreadable metric lines", str(run.skipped_lines)))
    return rows


def score_table(s: Variant, heading: str) -> list[str]:
    """The scores of one `p2p-eval score` folder as p2p-eval's own report shows them: its metric
    names and order, the direction of each, the FCN's real-photo column, one note per reason."""
    real = s.data["results"].get("real_photos") or {}
    out = [
        f"<h3>{heading} ({s.data['results'].get('samples', '?')} samples)</h3><table>"
        "<tr><th>metric</th><th>translated</th>" + (f"<th>{html.escape(GT_ROW)}</th>" if real else "") + "</tr>"
    ]
    for k, m in METRICS.items():
        if isinstance(s.metrics.get(k), (int, float)) and math.isfinite(s.metrics[k]):
            cells = f"<td>{fmt(k, s.metrics[k])}</td>" + (f"<td>{fmt(k, real.get(k))}</td>" if real else "")
            out.append(f"<tr><td>{html.escape(m.title)}</td>{cells}</tr>")
    out.append("</table>")
    out += [f"<p class='note'>{html.escape(note)}</p>" for note in unavailable_notes([s])]
    return out


def html_page(run: RunFolder, samples: int = 6) -> str:
    e = html.escape
    # the folder and its parent (demo/run): "run" alone says little
    name = "/".join(run.path.resolve().parts[-2:])
    title = f"p2p-dist run report: {name}"
    out = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{e(title)}</title><style>{CSS}\n.alarm{{color:#b71c1c}}.ok{{color:#2e7d32}}"
        "pre{background:#f5f5f5;padding:8px;overflow:auto;font-size:12px}"
        ".samples figure{margin:0 12px 12px 0;display:inline-block;vertical-align:top}"
        ".samples img{max-width:384px;display:block}</style></head><body>",
        f"<h1>{e(title)}</h1><table>",
    ]
    out += [f"<tr><td>{e(k)}</td><td style='text-align:left'>{e(v)}</td></tr>" for k, v in _summary_rows(run)]
    out.append("</table>")

    out.append("<h2 id='alarms'>Health alarms</h2>")
    if run.alarms:
        out.append("<table><tr><th>step</th><th>alarm</th><th>message</th></tr>")
        out += [
            f"<tr class='alarm'><td>{a['step']}</td><td>{e(str(a['alarm']))}</td>"
            f"<td style='text-align:left'>{e(str(a.get('message', '')))}</td></tr>"
            for a in run.alarms
        ]
        out.append("</table>")
    else:
        out.append(
            "<p class='ok'>No alarm fired (D never won for long, G's GAN loss did not climb steadily, "
            "outputs kept their variety, gradient norms stayed bounded).</p>"
        )

    out.append(
        "<h2 id='losses'>Training losses</h2><p>Means over each logging window (train.log_every), "
        "averaged over processes.</p><div class='charts'>"
    )
    out += loss_charts(run) or ["<p>No loss lines in metrics.jsonl yet.</p>"]
    out.append("</div><h2 id='validation'>Validation</h2>")
    vc = val_charts(run)
    out += (
        (["<div class='charts'>"] + vc + ["</div>"])
        if vc
        else ["<p>No validation during training (set train.val_every and data.val).</p>"]
    )
    out.append("<h2 id='schedule'>Learning rate and throughput</h2><div class='charts'>")
    out += speed_charts(run)
    out.append("</div>")

    out.append("<h2 id='samples'>Samples over time</h2>")
    picked = pick_samples(run.samples, samples)
    if picked:
        out.append(
            "<p>Each grid: rows of input | output | target, the same validation images every time.</p>"
            "<div class='samples'>"
        )
        from p2p_dist.imageio import read_image

        for step, p in picked:
            out.append(
                f"<figure><img src='{png_data_uri(read_image(p), max_side=384)}' alt='samples at step {step}'>"
                f"<figcaption>step {step}</figcaption></figure>"
            )
        out.append("</div>")
    else:
        out.append("<p>No sample grids (train.sample_every=0, or none written yet).</p>")

    if run.scores:
        out.append("<h2 id='scores'>Evaluation (p2p-eval score)</h2>")
        for s in run.scores:
            rel = s.path.relative_to(run.path) if s.path.is_relative_to(run.path) else s.path
            out += score_table(s, e(str(rel)))

    out.append("<h2 id='config'>Config</h2>")
    out.append(f"<pre>{e(run.config_text)}</pre>" if run.config_text else "<p>No config.yaml.</p>")
    out.append("</body></html>")
    return "\n".join(out)


def write_run_report(run_dir: str | Path, out_dir: str | Path, samples: int = 6) -> Path:
    run = read_run_folder(run_dir)
    out = Path(out_dir) / "index.html"
    atomic_write_text(out, html_page(run, samples))
    return out
