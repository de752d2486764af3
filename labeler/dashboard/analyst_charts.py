"""Server-side SVG charts for the analyst dashboard.

Pure functions: plain numbers in, an SVG document (``str``) out. No JavaScript, no inline
``style`` attributes (the dashboard's Content-Security-Policy forbids them): colours are SVG
presentation attributes, overridable from ``dashboard.css`` through the ``cs-*`` classes.
Every chart carries ``<title>``/``<desc>`` and ``role="img"`` so screen readers get a summary;
the page also shows the numbers as a table.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence
from xml.sax.saxutils import escape, quoteattr

__all__ = ["Series", "line_chart", "bar_chart", "nice_ticks"]

PALETTE = ("#1f6feb", "#d9480f", "#2b8a3e", "#9c36b5", "#c92a2a", "#495057")
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif"


@dataclass(frozen=True)
class Series:
    """One line: ``values[i]`` belongs to the chart's ``labels[i]``."""

    name: str
    values: Sequence[float]


def nice_ticks(vmax: float, count: int = 5) -> list[float]:
    """Round tick values from 0 to at least ``vmax`` (1-2-5 steps)."""
    if not math.isfinite(vmax) or vmax <= 0:
        return [0.0, 1.0]
    raw = vmax / max(count, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    n = math.ceil(vmax / step - 1e-9)
    return [round(i * step, 10) for i in range(n + 1)]


def _fmt(v: float) -> str:
    if abs(v) >= 10_000:
        return f"{v / 1000:.0f}k"
    if float(v).is_integer():
        return f"{int(v)}"
    return f"{v:.2f}".rstrip("0").rstrip(".")


def _label_every(n: int, room_px: float, label_px: float = 64) -> int:
    fits = max(1, int(room_px // label_px))
    return max(1, math.ceil(n / fits))


class _Frame:
    """Plot area geometry shared by both chart types."""

    def __init__(self, width: int, height: int, ymax: float, n: int, *, legend: bool) -> None:
        self.width, self.height = width, height
        self.left, self.right = 48, 12
        self.top = 34 if legend else 14
        self.bottom = 40
        self.ticks = nice_ticks(ymax)
        self.ymax = self.ticks[-1]
        self.n = n

    @property
    def plot_w(self) -> float:
        return self.width - self.left - self.right

    @property
    def plot_h(self) -> float:
        return self.height - self.top - self.bottom

    def y(self, v: float) -> float:
        return self.top + self.plot_h * (1 - v / self.ymax)

    def axes(self, labels: Sequence[str], centers: Sequence[float], y_label: str) -> list[str]:
        out = []
        for t in self.ticks:
            yy = self.y(t)
            out.append(
                f'<line class="cs-grid" x1="{self.left}" x2="{self.width - self.right}" '
                f'y1="{yy:.1f}" y2="{yy:.1f}" stroke="#e3e6ea" stroke-width="1"/>'
            )
            out.append(
                f'<text class="cs-tick" x="{self.left - 6}" y="{yy + 4:.1f}" '
                f'text-anchor="end" font-size="11" fill="#57606a">{_fmt(t)}</text>'
            )
        every = _label_every(len(labels), self.plot_w)
        base = self.top + self.plot_h
        out.append(
            f'<line class="cs-axis" x1="{self.left}" x2="{self.width - self.right}" '
            f'y1="{base:.1f}" y2="{base:.1f}" stroke="#8c959f" stroke-width="1"/>'
        )
        last = len(labels) - 1
        for i, (lab, cx) in enumerate(zip(labels, centers)):
            if i % every and i != last:
                continue
            if i == last and i % every and last - (last // every) * every < every / 2:
                continue  # too close to the previous label
            anchor = "middle"
            if cx - 3.5 * len(lab) < 0:
                anchor = "start"
            elif cx + 3.5 * len(lab) > self.width:
                anchor = "end"
            out.append(
                f'<text class="cs-tick" x="{cx:.1f}" y="{base + 16:.1f}" text-anchor="{anchor}" '
                f'font-size="11" fill="#57606a">{escape(lab)}</text>'
            )
        if y_label:
            out.append(
                f'<text class="cs-axis-label" x="12" y="{self.top + self.plot_h / 2:.1f}" '
                f'text-anchor="middle" font-size="11" fill="#57606a" '
                f'transform="rotate(-90 12 {self.top + self.plot_h / 2:.1f})">'
                f'{escape(y_label)}</text>'
            )
        return out


def _open(width: int, height: int, title: str, desc: str) -> list[str]:
    # ids must stay unique when several charts are inlined into one page
    key = "cs-" + (re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "chart")
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="cs-chart" role="img" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'font-family={quoteattr(FONT)} aria-labelledby="{key}-t {key}-d">',
        f'<title id="{key}-t">{escape(title)}</title>',
        f'<desc id="{key}-d">{escape(desc)}</desc>',
    ]


def _empty(width: int, height: int, title: str) -> str:
    parts = _open(width, height, title, "No data yet.")
    parts.append(
        f'<text class="cs-empty" x="{width / 2:.0f}" y="{height / 2:.0f}" text-anchor="middle" '
        f'font-size="13" fill="#57606a">No data yet</text></svg>'
    )
    return "".join(parts)


def _summary(labels: Sequence[str], series: Sequence[Series]) -> str:
    bits = []
    for s in series:
        vals = list(s.values)
        if not vals:
            continue
        peak = max(range(len(vals)), key=lambda i: vals[i])
        bits.append(
            f"{s.name}: total {_fmt(sum(vals))}, peak {_fmt(vals[peak])} at {labels[peak]}"
        )
    span = f"{labels[0]} to {labels[-1]}" if labels else ""
    return f"{span}. " + "; ".join(bits) + "."


def line_chart(
    labels: Sequence[str],
    series: Sequence[Series],
    *,
    title: str,
    y_label: str = "",
    width: int = 640,
    height: int = 240,
    area: bool = False,
) -> str:
    """A line chart of one or more series over the categorical x labels (e.g. days)."""
    if not labels or not series or all(len(s.values) == 0 for s in series):
        return _empty(width, height, title)
    for s in series:
        if len(s.values) != len(labels):
            raise ValueError(f"series {s.name!r} has {len(s.values)} values for "
                             f"{len(labels)} labels")
    ymax = max((max(s.values) for s in series if s.values), default=0)
    fr = _Frame(width, height, float(ymax), len(labels), legend=len(series) > 1)
    n = len(labels)
    step = fr.plot_w / max(n - 1, 1)
    xs = [fr.left + (i * step if n > 1 else fr.plot_w / 2) for i in range(n)]
    parts = _open(width, height, title, _summary(labels, series))
    parts += fr.axes(labels, xs, y_label)
    for k, s in enumerate(series):
        color = PALETTE[k % len(PALETTE)]
        pts = " ".join(f"{x:.1f},{fr.y(v):.1f}" for x, v in zip(xs, s.values))
        if area:
            base = fr.top + fr.plot_h
            parts.append(
                f'<polygon class="cs-area cs-s{k}" points="{xs[0]:.1f},{base:.1f} {pts} '
                f'{xs[-1]:.1f},{base:.1f}" fill="{color}" fill-opacity="0.12" stroke="none"/>'
            )
        parts.append(
            f'<polyline class="cs-line cs-s{k}" points="{pts}" fill="none" stroke="{color}" '
            f'stroke-width="2" stroke-linejoin="round"/>'
        )
        if n <= 40:
            for x, v, lab in zip(xs, s.values, labels):
                parts.append(
                    f'<circle class="cs-dot cs-s{k}" cx="{x:.1f}" cy="{fr.y(v):.1f}" r="2.5" '
                    f'fill="{color}"><title>{escape(f"{s.name}, {lab}: {_fmt(v)}")}</title>'
                    f'</circle>'
                )
    if len(series) > 1:
        x = fr.left
        for k, s in enumerate(series):
            color = PALETTE[k % len(PALETTE)]
            parts.append(
                f'<rect x="{x}" y="10" width="12" height="12" rx="2" fill="{color}" '
                f'class="cs-s{k}"/>'
                f'<text x="{x + 16}" y="20" font-size="12" fill="#24292f">{escape(s.name)}</text>'
            )
            x += 28 + 7 * len(s.name)
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(
    labels: Sequence[str],
    values: Sequence[float],
    *,
    title: str,
    y_label: str = "",
    width: int = 640,
    height: int = 240,
    color: str = PALETTE[0],
    colors: Sequence[str] | None = None,
) -> str:
    """A vertical bar chart (votes per day, agreement histogram, ...)."""
    if len(labels) != len(values):
        raise ValueError(f"{len(values)} values for {len(labels)} labels")
    if not labels:
        return _empty(width, height, title)
    fr = _Frame(width, height, float(max(values, default=0)), len(labels), legend=False)
    slot = fr.plot_w / len(labels)
    bw = max(1.0, slot * 0.78)
    centers = [fr.left + slot * (i + 0.5) for i in range(len(labels))]
    parts = _open(width, height, title, _summary(labels, [Series(title, values)]))
    parts += fr.axes(labels, centers, y_label)
    base = fr.top + fr.plot_h
    for i, (cx, v, lab) in enumerate(zip(centers, values, labels)):
        top = fr.y(v)
        c = colors[i % len(colors)] if colors else color
        parts.append(
            f'<rect class="cs-bar" x="{cx - bw / 2:.1f}" y="{top:.1f}" width="{bw:.1f}" '
            f'height="{max(base - top, 0):.1f}" fill="{c}" rx="1">'
            f'<title>{escape(f"{lab}: {_fmt(v)}")}</title></rect>'
        )
    parts.append("</svg>")
    return "".join(parts)
