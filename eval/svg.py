"""Line charts as inline SVG (no JavaScript): axes with round ticks, one polyline per series,
a legend. Used by the run report (`p2p_eval.run_report`)."""

from __future__ import annotations

import html
import math

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` round values (1, 2, 2.5, 5 x 10^k apart) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(1, count - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks = []
    v = start
    while v <= hi + step * 1e-9 and len(ticks) < 50:
        ticks.append(round(v, 12))
        v += step
    if ticks[-1] < hi:
        ticks.append(round(ticks[-1] + step, 12))
    return ticks


def _label(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e5 or a < 1e-3:
        return f"{v:.1e}"
    return f"{v:.4g}"


def line_chart(
    title: str,
    series: list[tuple[str, list[tuple[float, float]]]],
    *,
    x_label: str = "step",
    width: int = 560,
    height: int = 240,
    chart_id: str = "",
) -> str:
    """One chart; `series` is [(name, [(x, y), ...])]. Non-finite points are left out (the line
    breaks there). Returns an <svg> element; each polyline has class `curve` and `data-series`."""
    left, right, top, bottom = 64, 16, 28, 40
    legend_h = 18 * ((len(series) + 2) // 3)
    plot_w, plot_h = width - left - right, height - top - bottom
    total_h = height + legend_h
    pts = [(x, y) for _, s in series for x, y in s if math.isfinite(x) and math.isfinite(y)]
    e = html.escape
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{total_h}" '
        f'viewBox="0 0 {width} {total_h}" role="img" aria-label="{e(title)}"'
        + (f' id="{e(chart_id)}"' if chart_id else "")
        + ">",
        f'<text x="{left}" y="16" font-size="13" font-weight="bold">{e(title)}</text>',
    ]
    if not pts:
        out.append(f'<text x="{left}" y="{top + plot_h / 2:.0f}" font-size="12" fill="#999">no data</text></svg>')
        return "".join(out)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    xt, yt = nice_ticks(min(xs), max(xs)), nice_ticks(min(ys), max(ys))
    x0, x1, y0, y1 = xt[0], xt[-1], yt[0], yt[-1]

    def px(x: float) -> float:
        return left + (x - x0) / ((x1 - x0) or 1) * plot_w

    def py(y: float) -> float:
        return top + plot_h - (y - y0) / ((y1 - y0) or 1) * plot_h

    out.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fafafa" stroke="#bbb"/>')
    for v in yt:
        y = py(v)
        out.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e3e3"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">{_label(v)}</text>'
        )
    for v in xt:
        x = px(v)
        out.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top + plot_h}" y2="{top + plot_h + 4}" stroke="#888"/>'
            f'<text x="{x:.1f}" y="{top + plot_h + 16}" font-size="11" text-anchor="middle">{_label(v)}</text>'
        )
    out.append(
        f'<text x="{left + plot_w / 2:.0f}" y="{top + plot_h + 32}" font-size="11" '
        f'text-anchor="middle" fill="#555">{e(x_label)}</text>'
    )
    for i, (name, s) in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        runs: list[list[tuple[float, float]]] = [[]]
        for x, y in s:
            if math.isfinite(x) and math.isfinite(y):
                runs[-1].append((x, y))
            elif runs[-1]:
                runs.append([])
        for run in runs:
            if len(run) == 1:
                ((x, y),) = run
                out.append(
                    f'<circle class="curve" data-series="{e(name)}" cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" '
                    f'fill="{colour}"/>'
                )
            elif run:
                coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in run)
                out.append(
                    f'<polyline class="curve" data-series="{e(name)}" fill="none" stroke="{colour}" '
                    f'stroke-width="1.8" points="{coords}"/>'
                )
        lx, ly = left + (i % 3) * (plot_w / 3), height + 4 + 18 * (i // 3)
        out.append(
            f'<rect x="{lx:.0f}" y="{ly:.0f}" width="14" height="4" fill="{colour}"/>'
            f'<text x="{lx + 20:.0f}" y="{ly + 6:.0f}" font-size="12">{e(name)}</text>'
        )
    out.append("</svg>")
    return "".join(out)
