"""Reports: variants side by side in the terminal (rich), report.md, report.json and a
self-contained report.html (metrics table with the best value per metric marked, one inline-SVG
bar chart per metric, the per-class IoU table, and image grids input | each variant | target
for the same samples, embedded as base64 PNGs).

A variant is the `scores.json` that `p2p-eval score --out DIR` writes (`load_variant`). The files
hold no timestamps: the same inputs give byte-identical reports.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from p2p_dist.errors import UserError
from p2p_dist.fsutil import atomic_write_text
from p2p_dist.metric_table import METRICS, fmt

SCORES_NAME = "scores.json"
SCORES_FORMAT = 1
GT_ROW = "real photos (ground truth)"


@dataclass
class Variant:
    """One scored variant: a `scores.json` and the name reports show it under."""

    name: str
    path: Path  # the folder holding scores.json
    data: dict
    named: bool = False  # named on the command line (NAME=PATH)

    @property
    def metrics(self) -> dict:
        return self.data["results"]["metrics"]

    @property
    def unavailable(self) -> dict:
        return self.data["results"].get("unavailable", {})


def load_variant(spec: str) -> Variant:
    """`PATH` or `NAME=PATH`; PATH is a score folder or a scores json file."""
    name, _, path_s = spec.partition("=") if "=" in spec else ("", "", spec)
    path = Path(path_s)
    file = path / SCORES_NAME if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"{path_s}: no {SCORES_NAME} found (run `p2p-eval score ... --out {path_s}` first)")
    try:
        data = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{file} is not a readable scores file ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != SCORES_FORMAT or "results" not in data:
        raise UserError(f"{file} is not a p2p-eval scores file (format {SCORES_FORMAT})")
    return Variant(name=name or data.get("name") or file.parent.name, path=file.parent, data=data, named=bool(name))


def load_variants(specs: list[str]) -> list[Variant]:
    """The variants of `p2p-eval compare`, each with its own name. Variants that share the name
    they were scored under (two `--pred` folders called `pred`) are named by the shortest end of
    their score folder's path that tells them apart (`a/score`, `b/score`); NAME=PATH names are
    kept as given, and names that still clash are refused."""
    variants = [load_variant(spec) for spec in specs]
    for name in sorted({v.name for v in variants}):
        clash = [v for v in variants if v.name == name]
        unnamed = [v for v in clash if not v.named]
        if len(clash) < 2 or not unnamed:
            continue
        parts = [v.path.resolve().parts for v in unnamed]
        for k in range(1, max(map(len, parts)) + 1):
            ends = ["/".join(p[-k:]) for p in parts]
            if len(set(ends)) == len(ends) and name not in ends:
                break
        for v, end in zip(unnamed, ends):
            v.name = end
    names = [v.name for v in variants]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserError(f"several variants are named {', '.join(dup)}: name them with NAME=PATH")
    return variants


def metric_columns(runs: list[Variant]) -> list[str]:
    present = set()
    for r in runs:
        present |= set(r.metrics) | {k for k, m in METRICS.items() if m.group in r.unavailable}
    return [k for k in METRICS if k in present]


def table_rows(runs: list[Variant]) -> list[tuple[str, dict]]:
    """(row name, metrics) per variant, then the FCN's real-photo row when one run has it."""
    rows = [(r.name, dict(r.metrics)) for r in runs]
    for r in runs:
        real = r.data["results"].get("real_photos")
        if real:
            rows.append((GT_ROW, {k: v for k, v in real.items() if k in METRICS}))
            break
    return rows


def best_per_metric(runs: list[Variant], columns: list[str]) -> dict[str, float]:
    """Best value of each metric among the variants (the ground-truth row does not compete)."""
    best = {}
    for k in columns:
        vals = [
            r.metrics[k] for r in runs if isinstance(r.metrics.get(k), (int, float)) and math.isfinite(r.metrics[k])
        ]
        if vals and METRICS[k].higher is not None:
            best[k] = max(vals) if METRICS[k].higher else min(vals)
    return best


def unavailable_notes(runs: list[Variant]) -> list[str]:
    """One line per reason, naming the metrics it makes unavailable (and the variants, when
    not all of them are affected)."""
    by_reason: dict[str, dict[str, list[str]]] = {}
    for r in runs:
        for name, why in sorted(r.unavailable.items()):
            entry = by_reason.setdefault(why, {})
            entry.setdefault(name, [])
            if r.name not in entry[name]:
                entry[name].append(r.name)
    notes = []
    for why, metrics in by_reason.items():
        affected = sorted({v for vs in metrics.values() for v in vs}, key=[r.name for r in runs].index)
        who = "" if len(affected) == len(runs) else f" ({', '.join(affected)})"
        notes.append(f"{', '.join(metrics)}{who}: {why}")
    return notes


# --- terminal ---------------------------------------------------------------------------------


def print_table(runs: list[Variant], console=None) -> None:
    """Metrics as rows, variants (and the real-photo row of the FCN) as columns."""
    from rich.table import Table

    from p2p_dist.console import make_console

    console = console or make_console(stderr=False)
    columns = metric_columns(runs)
    best = best_per_metric(runs, columns)
    rows = table_rows(runs)
    marking = len(runs) > 1
    table = Table(title="p2p-eval" + (" (* best per metric)" if marking else ""))
    table.add_column("metric")
    for name, _ in rows:
        table.add_column(name, justify="right", style="dim" if name == GT_ROW else None)
    for k in columns:
        cells = []
        for name, metrics in rows:
            text = fmt(k, metrics.get(k))
            if marking and name != GT_ROW and k in best and metrics.get(k) == best[k]:
                text = f"[bold green]{text} *[/]"
            cells.append(text)
        table.add_row(METRICS[k].title, *cells)
    console.print(table)
    for note in unavailable_notes(runs):
        console.print(note, style="yellow", highlight=False, markup=False)


# --- report.json / report.md -------------------------------------------------------------------


def per_class_table(runs: list[Variant]) -> tuple[list[str], list[tuple[str, list[float]]]] | None:
    """(classes, [(variant, per-class IoU)]) for runs with class scores on the same classes."""
    with_cls = [r for r in runs if r.data["results"].get("class_scores")]
    if not with_cls:
        return None
    classes = with_cls[0].data["results"]["class_scores"]["classes"]
    cols = []
    for r in with_cls:
        cs = r.data["results"]["class_scores"]
        if cs["classes"] == classes:
            cols.append((r.name, cs["per_class_iou"]))
    real = with_cls[0].data["results"].get("real_photos", {}).get("per_class_iou")
    if real:
        cols.append((GT_ROW, real))
    return classes, cols


def report_dict(runs: list[Variant]) -> dict:
    columns = metric_columns(runs)
    pc = per_class_table(runs)
    return {
        "format": 1,
        "variants": [
            {
                "name": r.name,
                "scores": str(r.path / SCORES_NAME),
                "samples": r.data["results"]["samples"],
                "metrics": r.metrics,
                "unavailable": r.unavailable,
                "inputs": r.data.get("inputs", {}),
            }
            for r in runs
        ],
        "ground_truth": next((dict(m) for n, m in table_rows(runs) if n == GT_ROW), None),
        "best": best_per_metric(runs, columns),
        "higher_is_better": {k: METRICS[k].higher for k in columns},
        "per_class_iou": {"classes": pc[0], "columns": {n: v for n, v in pc[1]}} if pc else None,
    }


def markdown(runs: list[Variant], grid: list[dict]) -> str:
    columns = metric_columns(runs)
    best = best_per_metric(runs, columns)
    lines = ["# p2p-eval report", ""]
    lines.append("Variants: " + ", ".join(f"`{r.name}` ({r.data['results']['samples']} samples)" for r in runs))
    lines.append("")
    lines.append("## Metrics (**bold** = best per metric; ↑ higher is better, ↓ lower is better)")
    lines.append("")
    rows = table_rows(runs)
    lines.append("| metric | " + " | ".join(name for name, _ in rows) + " |")
    lines.append("|---|" + "---:|" * len(rows))
    for k in columns:
        cells = []
        for name, metrics in rows:
            text = fmt(k, metrics.get(k))
            if name != GT_ROW and k in best and metrics.get(k) == best[k] and len(runs) > 1:
                text = f"**{text}**"
            cells.append(text)
        lines.append(f"| {METRICS[k].title} | " + " | ".join(cells) + " |")
    lines.append("")
    kinds = {r.data["results"].get("class_scores", {}).get("kind") for r in runs} - {None}
    if kinds:
        lines.append(
            "Class scores: " + ", ".join(sorted(kinds)) + ". Per-class acc. and class IOU average over "
            "ALL classes (a class absent from the set scores 0, as in the reference evaluation); "
            "the '(present classes)' columns average over classes present in the ground truth."
        )
        lines.append("")
    notes = unavailable_notes(runs)
    if notes:
        lines += ["## Unavailable metrics", ""] + [f"- {n}" for n in notes] + [""]
    pc = per_class_table(runs)
    if pc:
        classes, cols = pc
        lines += [
            "## Per-class IoU",
            "",
            "| class | " + " | ".join(n for n, _ in cols) + " |",
            "|---|" + "---:|" * len(cols),
        ]
        for i, c in enumerate(classes):
            lines.append(f"| {c} | " + " | ".join(f"{v[i]:.3f}" for _, v in cols) + " |")
        lines.append("")
    if grid:
        lines += [
            "## Samples",
            "",
            "Image grids (input | " + " | ".join(r.name for r in runs) + " | target) are in report.html.",
            "",
        ]
        lines += [f"- {g['key']}" for g in grid] + [""]
    return "\n".join(lines)


# --- report.html -------------------------------------------------------------------------------


def png_data_uri(img: np.ndarray, max_side: int = 256) -> str:
    from PIL import Image

    from p2p_dist.data.transforms import resize

    img = np.asarray(img, dtype=np.uint8)
    h, w = img.shape[:2]
    scale = max_side / max(h, w)
    if scale < 1:
        img = resize(img, (max(1, round(h * scale)), max(1, round(w * scale))))
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def bar_chart_svg(key: str, rows: list[tuple[str, float | None]], best: float | None) -> str:
    """A horizontal bar chart of one metric as inline SVG."""
    bar_h, gap, label_w, width = 18, 6, 230, 560
    vals = [v for _, v in rows if isinstance(v, (int, float)) and math.isfinite(v)]
    top = max([abs(v) for v in vals] + [1e-12])
    h = len(rows) * (bar_h + gap) + 28
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" role="img" '
        f'aria-label="{html.escape(METRICS[key].label)}">',
        f'<text x="0" y="14" font-size="13" font-weight="bold">{html.escape(METRICS[key].label)}'
        f" ({METRICS[key].direction})</text>",
    ]
    for i, (name, v) in enumerate(rows):
        y = 24 + i * (bar_h + gap)
        parts.append(f'<text x="0" y="{y + 13}" font-size="12">{html.escape(name)}</text>')
        if isinstance(v, (int, float)) and math.isfinite(v):
            w = max(1.0, (width - label_w - 70) * abs(v) / top)
            colour = (
                "#2e7d32"
                if (best is not None and v == best and name != GT_ROW)
                else ("#9e9e9e" if name == GT_ROW else "#5c6bc0")
            )
            parts.append(f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{colour}"/>')
            parts.append(f'<text x="{label_w + w + 4:.1f}" y="{y + 13}" font-size="12">{fmt(key, v)}</text>')
        else:
            parts.append(f'<text x="{label_w}" y="{y + 13}" font-size="12" fill="#999">n/a</text>')
    parts.append("</svg>")
    return "".join(parts)


CSS = """body{font-family:system-ui,sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin:8px 0 20px}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child,th:first-child{text-align:left}
.best{background:#e8f5e9;font-weight:bold}.gt{color:#666;font-style:italic}.charts{display:flex;flex-wrap:wrap;gap:16px}
.grid td{border:none;padding:2px;text-align:center;vertical-align:top}.grid img{display:block;max-width:256px}
.note{color:#8a6d3b}"""


def html_report(runs: list[Variant], grid: list[dict]) -> str:
    columns = metric_columns(runs)
    best = best_per_metric(runs, columns)
    rows = table_rows(runs)
    e = html.escape
    out = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>p2p-eval report</title>",
        f"<style>{CSS}</style></head><body><h1>p2p-eval report</h1>",
    ]
    out.append("<h2>Metrics</h2><p>Best value per metric highlighted; ↑ higher is better, ↓ lower is better.</p>")
    out.append(
        "<table><tr><th>metric</th>"
        + "".join(f"<th{' class=gt' if name == GT_ROW else ''}>{e(name)}</th>" for name, _ in rows)
        + "</tr>"
    )
    for k in columns:
        cells = []
        for name, metrics in rows:
            is_best = name != GT_ROW and k in best and metrics.get(k) == best[k] and len(runs) > 1
            cls = " class=best" if is_best else (" class=gt" if name == GT_ROW else "")
            cells.append(f"<td{cls}>{e(fmt(k, metrics.get(k)))}</td>")
        out.append(f"<tr><td>{e(METRICS[k].title)}</td>{''.join(cells)}</tr>")
    out.append("</table>")
    notes = unavailable_notes(runs)
    if notes:
        out.append(
            "<h3>Unavailable metrics</h3><ul>" + "".join(f"<li class='note'>{e(n)}</li>" for n in notes) + "</ul>"
        )
    out.append("<h2>Per metric</h2><div class='charts'>")
    for k in columns:
        chart_rows = [(name, metrics.get(k)) for name, metrics in rows]
        if any(isinstance(v, (int, float)) and math.isfinite(v) for _, v in chart_rows):
            out.append(bar_chart_svg(k, chart_rows, best.get(k)))
    out.append("</div>")
    pc = per_class_table(runs)
    if pc:
        classes, cols = pc
        out.append(
            "<h2>Per-class IoU</h2><table><tr><th>class</th>" + "".join(f"<th>{e(n)}</th>" for n, _ in cols) + "</tr>"
        )
        for i, c in enumerate(classes):
            vals = [v[i] for n, v in cols if n != GT_ROW]
            top = max(vals) if vals else None
            cells = "".join(
                f"<td{' class=best' if (n != GT_ROW and len(vals) > 1 and v[i] == top) else ''}>{v[i]:.3f}</td>"
                for n, v in cols
            )
            out.append(f"<tr><td>{e(c)}</td>{cells}</tr>")
        out.append("</table>")
    if grid:
        out.append(
            "<h2>Samples</h2><table class='grid'><tr><th>input</th>"
            + "".join(f"<th>{e(r.name)}</th>" for r in runs)
            + "<th>target</th></tr>"
        )
        for g in grid:
            cells = [g.get("input")] + g["preds"] + [g.get("target")]
            tds = "".join(f"<td><img src='{uri}' alt=''></td>" if uri else "<td>-</td>" for uri in cells)
            out.append(f"<tr>{tds}</tr><tr><td colspan='{len(cells)}' style='text-align:left'>{e(g['key'])}</td></tr>")
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out)


def grid_images(runs: list[Variant], max_rows: int = 6) -> list[dict]:
    """Samples every run has images for, in the runs' own (hash) order, as data URIs."""
    from p2p_dist.imageio import read_image

    if not runs:
        return []
    common = None
    for r in runs:
        keys = [g["key"] for g in r.data.get("grid", [])]
        common = keys if common is None else [k for k in common if k in set(keys)]
    out = []
    for key in (common or [])[:max_rows]:
        entries = [next(g for g in r.data["grid"] if g["key"] == key) for r in runs]
        first = entries[0]

        def uri(run: Variant, rel: str | None):
            if not rel or not (run.path / rel).is_file():
                return None
            return png_data_uri(read_image(run.path / rel))

        out.append(
            {
                "key": key,
                "input": uri(runs[0], first.get("input")),
                "target": uri(runs[0], first.get("target")),
                "preds": [uri(r, g.get("pred")) for r, g in zip(runs, entries)],
            }
        )
    return out


def write_reports(runs: list[Variant], out_dir: str | Path, grid_rows: int = 6) -> dict[str, Path]:
    """report.md, report.json and report.html in `out_dir` (each written atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    grid = grid_images(runs, grid_rows)
    paths = {"md": out / "report.md", "json": out / "report.json", "html": out / "report.html"}
    atomic_write_text(paths["json"], json.dumps(report_dict(runs), indent=2, sort_keys=True) + "\n")
    atomic_write_text(paths["md"], markdown(runs, grid))
    atomic_write_text(paths["html"], html_report(runs, grid))
    return paths
