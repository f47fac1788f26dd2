"""Inline SVG charts and colour scales for the report, generated in Python (no JavaScript, no CDN).

Each function returns one `<svg>` element as a string; every label that comes from a run file is
HTML-escaped here, so callers may pass raw trait names, context labels and metric names.

>>> svg = bar_chart(["warm", "curious"], {"baseline": [0.5, 0.6], "final": [0.9, None]})
>>> svg.startswith("<svg") and "warm" in svg
True
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Sequence

# Okabe-Ito: distinguishable by colour-blind readers and in greyscale print.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442")
MAX_MARKERS = 200  # a series with more points is drawn as a line only
FONT = 'font-family="system-ui, sans-serif" font-size="12"'


def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


def _f(v: float) -> str:
    """Short number for tick and value labels."""
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About `n` round tick values covering [lo, hi] (steps of 1, 2 or 5 times a power of ten)."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks, t = [], start
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    return ticks


def heat_color(value: float | None, lo: float = 0.0, hi: float = 1.0, *, reverse: bool = False) -> str:
    """A light red-amber-green background for `value` on [lo, hi] (grey when None); text stays readable.

    Args:
        value: the cell's value.
        lo: the value drawn red (green when `reverse`).
        hi: the value drawn green (red when `reverse`).
        reverse: lower is better (e.g. KL, style variance).

    Returns:
        A CSS colour, e.g. "hsl(96, 60%, 80%)".
    """
    if value is None:
        return "#eeeeee"
    x = 0.5 if hi <= lo else min(1.0, max(0.0, (value - lo) / (hi - lo)))
    if reverse:
        x = 1.0 - x
    return f"hsl({round(120 * x)}, 60%, 80%)"


def count_color(count: int, top: int) -> str:
    """A light blue background whose depth shows `count` relative to `top` (no good/bad meaning)."""
    x = 0.0 if top <= 0 else min(1.0, count / top)
    return f"hsl(210, 70%, {round(97 - 30 * x)}%)"


def _legend(names: Sequence[str], x0: float, y: float) -> str:
    parts, x = [], x0
    for i, name in enumerate(names):
        c = PALETTE[i % len(PALETTE)]
        parts.append(
            f'<rect x="{x:.1f}" y="{y - 9:.1f}" width="12" height="12" fill="{c}"/>'
            f'<text x="{x + 16:.1f}" y="{y + 1:.1f}">{_e(name)}</text>'
        )
        x += 28 + 7 * len(str(name))
    return "".join(parts)


def bar_chart(
    labels: Sequence[str],
    series: dict[str, Sequence[float | None]],
    *,
    x_max: float | None = None,
    thresholds: Sequence[tuple[str, float]] = (),
    title: str = "",
    width: int = 640,
) -> str:
    """Grouped horizontal bars: one group per label (e.g. trait), one bar per series (e.g. baseline, final).

    Args:
        labels: the row labels, top to bottom.
        series: series name -> one value per label (None draws no bar and says "n/a").
        x_max: right end of the axis; default: 1 when every value is within [0, 1], else the largest value.
        thresholds: (name, x) vertical dashed lines, e.g. a gate's threshold.
        title: the chart's accessible title.
        width: SVG width in pixels (it scales down with the page).

    Returns:
        One `<svg>` element.
    """
    names = list(series)
    vals = [v for s in series.values() for v in s if v is not None]
    if x_max is None:
        x_max = 1.0 if all(0 <= v <= 1 for v in vals) else max([*vals, *(t for _, t in thresholds), 1e-9])
    x_min = min(0.0, *vals) if vals else 0.0
    left = min(220, 24 + 7 * max([len(str(lb)) for lb in labels] + [4]))
    right, top, bar_h, gap = 56, 34, 14, 10
    group_h = bar_h * max(1, len(names)) + gap
    height = top + group_h * len(labels) + 30
    plot_w = width - left - right

    def sx(v: float) -> float:
        return left + (v - x_min) / ((x_max - x_min) or 1.0) * plot_w

    out = [
        f'<svg role="img" viewBox="0 0 {width} {height}" width="{width}" height="{height}" {FONT} class="chart">',
        f"<title>{_e(title)}</title>",
        _legend(names, left, 16),
    ]
    for t in nice_ticks(x_min, x_max):
        if t > x_max + 1e-12:
            continue
        out.append(
            f'<line x1="{sx(t):.1f}" x2="{sx(t):.1f}" y1="{top - 4}" y2="{height - 26}" stroke="#ddd"/>'
            f'<text x="{sx(t):.1f}" y="{height - 12}" text-anchor="middle" fill="#555">{_f(t)}</text>'
        )
    for gi, lb in enumerate(labels):
        y0 = top + gi * group_h
        out.append(f'<text x="{left - 6}" y="{y0 + group_h / 2 - gap / 2 + 4:.1f}" text-anchor="end">{_e(lb)}</text>')
        for si, name in enumerate(names):
            v = series[name][gi] if gi < len(series[name]) else None
            y = y0 + si * bar_h
            if v is None:
                out.append(f'<text x="{left + 4}" y="{y + bar_h - 3}" fill="#888">n/a</text>')
                continue
            x0, x1 = sorted((sx(0.0), sx(v)))
            c = PALETTE[si % len(PALETTE)]
            out.append(
                f'<rect x="{x0:.1f}" y="{y + 1}" width="{max(x1 - x0, 1):.1f}" height="{bar_h - 2}" fill="{c}">'
                f"<title>{_e(lb)} / {_e(name)}: {_f(v)}</title></rect>"
                f'<text x="{x1 + 4:.1f}" y="{y + bar_h - 3}" fill="#333">{_f(v)}</text>'
            )
    for name, t in thresholds:
        out.append(
            f'<line x1="{sx(t):.1f}" x2="{sx(t):.1f}" y1="{top - 4}" y2="{height - 26}" stroke="#c00" stroke-dasharray="5 3"/>'
            f'<text x="{sx(t):.1f}" y="{top - 8}" text-anchor="middle" fill="#c00">{_e(name)} {_f(t)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


@dataclass(frozen=True)
class ChartStyle:
    """What a line chart draws besides its series (defaults: nothing extra, axes fitted to the data).

    Attributes:
        thresholds: (name, y) horizontal dashed lines, e.g. the KL budget.
        bands: series name -> (x, low, high) points drawn as a shaded band (e.g. ± one standard error).
        y_range: fixed (low, high) of the y axis; None: fitted to the data and thresholds.
        title: the chart's accessible title.
        width: SVG width in pixels.
        height: SVG height in pixels.
    """

    thresholds: Sequence[tuple[str, float]] = ()
    bands: dict[str, Sequence[tuple[float, float, float]]] | None = None
    y_range: tuple[float, float] | None = None
    title: str = ""
    width: int = 640
    height: int = 260


def line_chart(
    series: dict[str, Sequence[tuple[float, float | None]]],
    *,
    x_label: str,
    y_label: str,
    style: ChartStyle = ChartStyle(),
) -> str:
    """Lines with point markers over a shared x axis (e.g. training step or round).

    Args:
        series: series name -> (x, y) points; a None y breaks the line there.
        x_label: axis caption, e.g. "step".
        y_label: axis caption with unit, e.g. "KL (nats/token)".
        style: thresholds, bands, y range, title and size (ChartStyle).

    Returns:
        One `<svg>` element.
    """
    thresholds, bands, y_range, title, width, height = (
        style.thresholds,
        style.bands,
        style.y_range,
        style.title,
        style.width,
        style.height,
    )
    names = list(series)
    pts = [(x, y) for s in series.values() for x, y in s if y is not None]
    band_pts = [(x, v) for b in (bands or {}).values() for x, lo, hi in b for v in (lo, hi)]
    xs = [x for x, _ in pts + band_pts] or [0.0, 1.0]
    ys = [y for _, y in pts + band_pts] + [t for _, t in thresholds]
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y_range is not None:
        y0, y1 = y_range
    else:
        y0, y1 = (min(ys), max(ys)) if ys else (0.0, 1.0)
        pad = (y1 - y0) * 0.08 or abs(y1) * 0.1 or 1.0
        y0, y1 = y0 - pad, y1 + pad
    left, right, top, bottom = 64, 110, 30, 40
    pw, ph = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return top + (1 - (y - y0) / ((y1 - y0) or 1.0)) * ph

    out = [
        f'<svg role="img" viewBox="0 0 {width} {height}" width="{width}" height="{height}" {FONT} class="chart">',
        f"<title>{_e(title)}</title>",
        _legend(names, left, 16),
    ]
    for t in nice_ticks(y0, y1):
        if y0 - 1e-12 <= t <= y1 + 1e-12:
            out.append(
                f'<line x1="{left}" x2="{left + pw}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="#e3e3e3"/>'
                f'<text x="{left - 6}" y="{sy(t) + 4:.1f}" text-anchor="end" fill="#555">{_f(t)}</text>'
            )
    for t in nice_ticks(x0, x1, 6):
        if x0 - 1e-12 <= t <= x1 + 1e-12:
            out.append(f'<text x="{sx(t):.1f}" y="{top + ph + 16}" text-anchor="middle" fill="#555">{_f(t)}</text>')
    out.append(
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>'
        f'<text x="{left + pw / 2:.1f}" y="{height - 6}" text-anchor="middle">{_e(x_label)}</text>'
        f'<text transform="translate(14 {top + ph / 2:.1f}) rotate(-90)" text-anchor="middle">{_e(y_label)}</text>'
    )
    for name, t in thresholds:
        out.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="#c00" stroke-dasharray="5 3"/>'
            f'<text x="{left + pw + 4}" y="{sy(t) + 4:.1f}" fill="#c00">{_e(name)} {_f(t)}</text>'
        )
    for i, name in enumerate(names):
        c = PALETTE[i % len(PALETTE)]
        band = sorted((bands or {}).get(name, ()))
        if band:
            poly = [f"{sx(x):.1f},{sy(hi):.1f}" for x, _, hi in band] + [
                f"{sx(x):.1f},{sy(lo):.1f}" for x, lo, _ in reversed(band)
            ]
            out.append(f'<polygon points="{" ".join(poly)}" fill="{c}" fill-opacity="0.15" stroke="none"/>')
        seg: list[str] = []
        for x, y in sorted(series[name], key=lambda p: p[0]):
            if y is None:
                if len(seg) > 1:
                    out.append(f'<polyline points="{" ".join(seg)}" fill="none" stroke="{c}" stroke-width="2"/>')
                seg = []
                continue
            seg.append(f"{sx(x):.1f},{sy(y):.1f}")
        if len(seg) > 1:
            out.append(f'<polyline points="{" ".join(seg)}" fill="none" stroke="{c}" stroke-width="2"/>')
        # Markers carry the exact value as a tooltip; past a few hundred points they only add weight.
        for x, y in series[name] if len(series[name]) <= MAX_MARKERS else ():
            if y is not None:
                out.append(
                    f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{c}"><title>{_e(name)} at {_e(x_label)} {_f(x)}: {_f(y)}</title></circle>'
                )
    out.append("</svg>")
    return "".join(out)
