"""The suggested price beside the comparables' prices, as a small inline SVG (no script)."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT, MARGIN = 560, 130, 28


@dataclass(frozen=True)
class Mark:
    x: float
    y: float
    r: float
    title: str


def price_chart(
    prices: list[float],
    similarities: list[float],
    median: float,
    p25: float,
    p75: float,
    currency: str = "",
) -> str:
    """An SVG: one dot per comparable at its sold price (higher and larger the more alike than the
    answer's others), the suggested band p25-p75 as a shaded box and its median as a line, with
    the price axis's ends."""
    low = min([*prices, p25])
    high = max([*prices, p75])
    span = (high - low) or max(abs(high), 1.0)
    low, high = low - span * 0.05, high + span * 0.05

    def x(price: float) -> float:
        return MARGIN + (price - low) / (high - low) * (WIDTH - 2 * MARGIN)

    base = HEIGHT - MARGIN
    # Height and size by similarity within this answer's range (they are often all above 0.9).
    least, most = min(similarities, default=0.0), max(similarities, default=1.0)

    def alike(s: float) -> float:
        return (s - least) / (most - least) if most > least else 1.0

    marks = [
        Mark(
            x(price),
            base - 10 - alike(s) * (base - 30),
            3 + 4 * alike(s),
            f"{currency}{price:,.2f} (similarity {s:.3f})",
        )
        for price, s in zip(prices, similarities, strict=True)
    ]
    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" '
        f'height="{HEIGHT}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>suggested {currency}{median:,.2f} (p25 {currency}{p25:,.2f}, p75 "
        f"{currency}{p75:,.2f}) beside {len(prices)} comparables</title>",
        f'<rect class="band" x="{x(p25):.1f}" y="8" width="{max(x(p75) - x(p25), 1):.1f}" '
        f'height="{base - 8}" fill="#cfe3ff"/>',
        f'<line class="median" x1="{x(median):.1f}" x2="{x(median):.1f}" y1="4" y2="{base}" '
        f'stroke="#1d4ed8" stroke-width="2"/>',
        f'<line x1="{MARGIN}" x2="{WIDTH - MARGIN}" y1="{base}" y2="{base}" stroke="#555"/>',
    ]
    parts += [
        f'<circle class="comparable" cx="{m.x:.1f}" cy="{m.y:.1f}" r="{m.r:.1f}" '
        f'fill="#f97316" fill-opacity="0.7"><title>{escape(m.title)}</title></circle>'
        for m in marks
    ]
    for price, anchor in ((low, "start"), (median, "middle"), (high, "end")):
        parts.append(
            f'<text x="{x(price):.1f}" y="{HEIGHT - 8}" font-size="11" '
            f'text-anchor="{anchor}">{currency}{price:,.2f}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)
