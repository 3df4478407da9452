"""Small inline SVG charts, drawn on the server: no JavaScript, no chart library.

Every text that lands in the SVG (a commit subject in a tooltip, a label) goes through
`html.escape`, so the returned Markup is safe to put into an autoescaped page as it is.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup

# One palette for cells, dots and bars (the CSS classes of style.css use the same colours).
COLOURS = {
    "pass": "#2e7d32",
    "fail": "#c62828",
    "flaky": "#ef6c00",
    "skip": "#9e9e9e",
    "none": "#e0e0e0",
    "culprit": "#6a1b9a",
}


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


@dataclass(frozen=True)
class SparkPoint:
    value: float | None  # 0..1; None: nothing to plot (could not test)
    state: str  # a COLOURS key for the dot
    title: str  # tooltip


def sparkline(points: Sequence[SparkPoint], *, width: int = 360, height: int = 48,
              label: str = "") -> Markup:
    """Values 0..1 left to right (oldest first) as a line with a coloured dot per point."""
    n = len(points)
    pad = 5
    step = (width - 2 * pad) / max(1, n - 1)
    inner = height - 2 * pad

    def xy(i: int, v: float) -> tuple[float, float]:
        return pad + i * step if n > 1 else width / 2, pad + (1.0 - v) * inner

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="sparkline" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{_e(label)}">',
             f'<line x1="{pad}" y1="{pad}" x2="{width - pad}" y2="{pad}" stroke="#eee"/>',
             f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" '
             'stroke="#eee"/>']
    line: list[str] = []
    for i, p in enumerate(points):
        if p.value is None:
            if len(line) > 1:
                parts.append(f'<polyline fill="none" stroke="#555" stroke-width="1.5" '
                             f'points="{" ".join(line)}"/>')
            line = []
            continue
        x, y = xy(i, p.value)
        line.append(f"{x:.1f},{y:.1f}")
    if len(line) > 1:
        parts.append(f'<polyline fill="none" stroke="#555" stroke-width="1.5" '
                     f'points="{" ".join(line)}"/>')
    for i, p in enumerate(points):
        x, y = xy(i, p.value if p.value is not None else 0.0)
        colour = COLOURS.get(p.state, COLOURS["none"])
        shape = (f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}">' if p.value is not None
                 else f'<rect x="{x - 2.5:.1f}" y="{height - pad - 2.5:.1f}" width="5" height="5" '
                      f'fill="{colour}">')
        end = "</circle>" if p.value is not None else "</rect>"
        parts.append(f'{shape}<title>{_e(p.title)}</title>{end}')
    parts.append("</svg>")
    return Markup("".join(parts))


@dataclass(frozen=True)
class Bar:
    label: str  # under the bar (a short sha)
    value: float  # 0..1
    title: str  # tooltip
    highlight: bool = False


def bar_chart(bars: Sequence[Bar], *, target: float | None = None, height: int = 160,
              label: str = "") -> Markup:
    """Probabilities as bars, with a dashed line at `target` (the confidence asked for)."""
    bw, gap, left, bottom, top = 14, 4, 34, 46, 8
    width = left + len(bars) * (bw + gap) + gap
    inner = height - bottom - top
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="barchart" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{_e(label)}">']
    for v in (0.0, 0.5, 1.0):
        y = top + (1.0 - v) * inner
        parts.append(f'<line x1="{left - 3}" y1="{y:.1f}" x2="{width}" y2="{y:.1f}" '
                     'stroke="#ddd"/>')
        parts.append(f'<text x="{left - 5}" y="{y + 3:.1f}" font-size="9" '
                     f'text-anchor="end">{v:.1f}</text>')
    for i, b in enumerate(bars):
        x = left + gap + i * (bw + gap)
        h = max(0.0, min(1.0, b.value)) * inner
        colour = COLOURS["culprit"] if b.highlight else "#5c6bc0"
        parts.append(f'<rect class="bar" x="{x}" y="{top + inner - h:.1f}" width="{bw}" '
                     f'height="{max(h, 0.5):.1f}" fill="{colour}"><title>{_e(b.title)}</title>'
                     '</rect>')
        ty = top + inner + 6
        parts.append(f'<text x="{x + bw / 2:.1f}" y="{ty}" font-size="8" '
                     f'transform="rotate(60 {x + bw / 2:.1f} {ty})">{_e(b.label[:7])}</text>')
    if target is not None:
        y = top + (1.0 - target) * inner
        parts.append(f'<line class="target" x1="{left}" y1="{y:.1f}" x2="{width}" '
                     f'y2="{y:.1f}" stroke="#c62828" stroke-dasharray="4 3">'
                     f'<title>confidence target {target:.2f}</title></line>')
    parts.append("</svg>")
    return Markup("".join(parts))


@dataclass(frozen=True)
class LinePoint:
    """One commit on the bisection line, or a gap of untested commits (`gap` > 0)."""

    label: str  # short sha
    state: str  # a COLOURS key; "none" for untested
    text: str  # under the dot: "f/r", "good", "bad"
    title: str  # tooltip
    culprit: bool = False
    gap: int = 0


def commit_line(points: Sequence[LinePoint], *, label: str = "") -> Markup:
    """Commits oldest to newest as dots on a line; untested stretches as '… n …'."""
    step, pad, height, y = 44, 20, 78, 26
    width = 2 * pad + max(0, len(points) - 1) * step
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="commitline" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{_e(label)}">',
             f'<line x1="{pad}" y1="{y}" x2="{width - pad}" y2="{y}" stroke="#777" '
             'stroke-width="2"/>']
    for i, p in enumerate(points):
        x = pad + i * step
        if p.gap:
            parts.append(f'<text x="{x}" y="{y + 4}" font-size="10" text-anchor="middle" '
                         f'class="gap">… {p.gap} …<title>{_e(p.title)}</title></text>')
            continue
        colour = COLOURS.get(p.state, COLOURS["none"])
        ring = (f' stroke="{COLOURS["culprit"]}" stroke-width="3"' if p.culprit
                else ' stroke="#444" stroke-width="1"')
        parts.append(f'<circle class="commit {_e(p.state)}" cx="{x}" cy="{y}" r="7" '
                     f'fill="{colour}"{ring}><title>{_e(p.title)}</title></circle>')
        parts.append(f'<text x="{x}" y="{y - 12}" font-size="9" text-anchor="middle">'
                     f'{_e(p.text)}</text>')
        parts.append(f'<text x="{x}" y="{y + 22}" font-size="8" text-anchor="middle" '
                     f'font-family="monospace">{_e(p.label[:7])}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
