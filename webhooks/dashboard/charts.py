"""Charts drawn on the server as SVG: no script, no CDN, readable at any width (viewBox)."""

from __future__ import annotations

from html import escape
from typing import Any

from markupsafe import Markup

COLOURS = {"sent": "#2563eb", "opened": "#16a34a", "clicked": "#9333ea", "bounced": "#dc2626"}
LABELS = {"sent": "Sent", "opened": "Human opens", "clicked": "Clicks", "bounced": "Bounces"}


def _nice_max(value: int) -> int:
    if value <= 4:
        return 4
    for step in (5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 2500, 5000, 10000, 25000, 50000, 100000):
        if value <= step * 4:
            return step * 4
    return value


def line_chart(points: list[dict[str, Any]], interval: str, *, width: int = 760, height: int = 260) -> Markup:
    """One polyline per figure over time, with a y axis, dated x ticks and a legend."""
    left, right, top, bottom = 48, 12, 16, 46
    inner_w, inner_h = width - left - right, height - top - bottom
    peak = _nice_max(max((max(p[line] for line in COLOURS) for p in points), default=0))
    count = max(len(points), 1)

    def x(i: int) -> float:
        return left + (inner_w * (i + 0.5) / count)

    def y(value: float) -> float:
        return top + inner_h - inner_h * value / peak

    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="Sends, human opens, clicks and bounces per {interval}" '
        f'xmlns="http://www.w3.org/2000/svg" preserveAspectRatio="xMidYMid meet">',
        f'<rect x="{left}" y="{top}" width="{inner_w}" height="{inner_h}" fill="#fff" stroke="#d4d4d8"/>',
    ]
    for step in range(5):
        value = peak * step / 4
        parts.append(f'<line x1="{left}" x2="{left + inner_w}" y1="{y(value):.1f}" y2="{y(value):.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 6}" y="{y(value) + 4:.1f}" text-anchor="end" class="tick">{int(value)}</text>')
    every = max(1, count // 8)
    for i, point in enumerate(points):
        if i % every == 0:
            at = point["at"]
            label = at[5:10] if interval == "day" else at[5:10] + " " + at[11:16]
            parts.append(f'<text x="{x(i):.1f}" y="{top + inner_h + 16}" text-anchor="middle" class="tick">{escape(label)}</text>')
    for line, colour in COLOURS.items():
        coords = " ".join(f"{x(i):.1f},{y(p[line]):.1f}" for i, p in enumerate(points))
        parts.append(f'<polyline class="line-{line}" fill="none" stroke="{colour}" stroke-width="2" points="{coords}"/>')
        for i, p in enumerate(points):
            if p[line]:
                parts.append(
                    f'<circle cx="{x(i):.1f}" cy="{y(p[line]):.1f}" r="3" fill="{colour}" data-line="{line}" data-value="{p[line]}">'
                    f'<title>{escape(LABELS[line])} {escape(p["at"])}: {p[line]}</title></circle>'
                )
    for n, (line, colour) in enumerate(COLOURS.items()):
        lx = left + n * 150
        parts.append(f'<rect x="{lx}" y="{height - 16}" width="12" height="12" fill="{colour}"/>')
        parts.append(f'<text x="{lx + 18}" y="{height - 6}" class="legend">{escape(LABELS[line])}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
