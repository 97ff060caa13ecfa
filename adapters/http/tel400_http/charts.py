"""Charts as server-rendered SVG: pure functions from numbers to markup.

Why SVG made on the server (docs/http.md, "Charts"): it needs no JavaScript,
so it works under the portal's strict Content-Security-Policy
(``script-src 'self'; style-src 'self'``: only presentation attributes such
as ``fill=`` are used, never ``style=``), needs no network, and there is no
vendored chart library to keep patched.  It prints, and the browser's own
``<title>`` tooltips show each item's exact figure.

Every function returns one ``<svg class="chart">`` string with one element of
``class="datum"`` per data item (each with a ``<title>``).  Every text from
the caller (title, labels, unit) is escaped here, so a caller ID or plan name
carrying ``<script>`` is drawn as text.  Sizes follow the data (a row per
bar, a column per day or hour).  Data with nothing to draw (no items, or all
zero) gives an explicit "no data" chart (``class="chart chart-empty"``).
Colours come from a fixed palette (Okabe-Ito, readable by colour-blind
readers, and dark enough to print); the heat map uses a fixed blue ramp.
"""

from __future__ import annotations

import html
import math
import re

#: Item colours, in order (Okabe-Ito without its yellow, which vanishes on paper).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000")
#: The heat map's ramp, from "none" to "most" (six steps of ColorBrewer Blues; 0 is white).
RAMP = ("#FFFFFF", "#DEEBF7", "#9ECAE1", "#6BAED6", "#3182BD", "#08519C")
#: The darker overlay of :func:`columns` (e.g. connected calls within calls).
OVERLAY = "#D55E00"
FONT = "sans-serif"
TEXT = "#222222"
GRID = "#BBBBBB"

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # not allowed in XML text


def _esc(text) -> str:
    return html.escape(_CONTROL.sub("", str(text)), quote=True)


def _char_width(ch: str, size: int = 12) -> float:
    return size if ord(ch) >= 0x2E80 else size * 0.6


def _width_of(text: str, size: int = 12) -> int:
    """Roughly how wide ``text`` is drawn: CJK characters are about twice a Latin one."""
    return sum(_char_width(ch, size) for ch in text).__ceil__()


def _clip(text: str, width: int) -> str:
    """``text`` cut to fit ``width`` pixels, with an ellipsis (the tooltip keeps it whole).

    One pass, stopping once past ``width``: a label of any length costs what fits of it.
    """
    ellipsis = _char_width("…")
    used, cut = 0.0, 0
    for i, ch in enumerate(text):
        used += _char_width(ch)
        if used + ellipsis <= width:
            cut = i + 1  # the longest prefix with room for the ellipsis after it
        if used > width:
            return text[:cut] + "…"
    return text


def _number(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:,.2f}"


def _checked(values) -> list[float]:
    out = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"chart values must be finite numbers ≥ 0, got {value!r}")
        out.append(float(value))
    return out


def _svg(width: int, height: int, title: str, body: list[str], extra_class: str = "") -> str:
    cls = "chart" + (f" {extra_class}" if extra_class else "")
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="{cls}" role="img" aria-label="{_esc(title)}" '
            f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="{FONT}" '
            f'font-size="12" fill="{TEXT}"><title>{_esc(title)}</title>'
            f'<text class="chart-title" x="8" y="18" font-size="14" font-weight="bold">{_esc(title)}</text>'
            + "".join(body) + "</svg>")


def no_data(*, title: str, empty: str = "No data", width: int = 320) -> str:
    """The chart of nothing: its title and ``empty`` ("No data"), and no datum."""
    return _svg(width, 80, title, [
        f'<rect x="1" y="28" width="{width - 2}" height="50" fill="none" stroke="{GRID}" stroke-dasharray="4 3"/>',
        f'<text class="chart-empty-text" x="{width // 2}" y="58" text-anchor="middle">{_esc(empty)}</text>'],
        "chart-empty")


def _tip(label: str, value: float, unit: str) -> str:
    return f"<title>{_esc(label)}: {_esc(_number(value))}{_esc(' ' + unit if unit else '')}</title>"


def bars(items: list[tuple[str, float]], *, title: str, unit: str = "", empty: str = "No data") -> str:
    """Horizontal bars, one row per item in the order given (rank them first): province, target, reason."""
    labels = [str(label) for label, _ in items]
    values = _checked(v for _, v in items)
    if not values or max(values) == 0:
        return no_data(title=title, empty=empty)
    row, top, bar_area = 22, 30, 360
    label_w = min(max(_width_of(label) for label in labels) + 8, 200)
    value_w = max(_width_of(_number(v)) for v in values) + 8
    width = 8 + label_w + bar_area + value_w + 8
    height = top + row * len(values) + 8
    most = max(values)
    body = []
    for i, (label, value) in enumerate(zip(labels, values)):
        y = top + i * row
        length = round(bar_area * value / most, 1)
        x0 = 8 + label_w
        body.append(
            f'<g class="datum">{_tip(label, value, unit)}'
            f'<text x="{x0 - 6}" y="{y + 15}" text-anchor="end">{_esc(_clip(label, label_w - 8))}</text>'
            f'<rect x="{x0}" y="{y + 3}" width="{length}" height="{row - 6}" fill="{PALETTE[0]}"/>'
            f'<text x="{x0 + length + 4}" y="{y + 15}">{_esc(_number(value))}</text></g>')
    return _svg(width, height, title, body)


def columns(items: list[tuple[str, float]], *, title: str, unit: str = "", overlay: list[float] | None = None,
            empty: str = "No data") -> str:
    """Vertical columns, one per item in order (days of a month, hours of a day).

    ``overlay``: a second figure per item drawn inside its column in a
    darker colour (connected calls within calls); it has as many entries as
    ``items``.  Labels along the axis are thinned to fit; each column's
    tooltip names it whole.
    """
    labels = [str(label) for label, _ in items]
    values = _checked(v for _, v in items)
    inner = _checked(overlay) if overlay is not None else None
    if inner is not None and len(inner) != len(values):
        raise ValueError(f"overlay: {len(inner)} values for {len(values)} columns")
    if not values or max(values + (inner or [])) == 0:
        return no_data(title=title, empty=empty)
    col, left, top, plot_h = 22, 48, 30, 160
    label_w = max(_width_of(label) for label in labels) + 4
    every = max(1, math.ceil(label_w / col))
    width = left + col * len(values) + 8
    height = top + plot_h + 24
    most = max(values + (inner or []))
    base = top + plot_h
    body = [f'<line x1="{left}" y1="{base}" x2="{width - 8}" y2="{base}" stroke="{GRID}"/>',
            f'<text x="{left - 4}" y="{top + 10}" text-anchor="end">{_esc(_number(most))}</text>',
            f'<text x="{left - 4}" y="{base}" text-anchor="end">0</text>']
    for i, (label, value) in enumerate(zip(labels, values)):
        x = left + i * col
        h = round(plot_h * value / most, 1)
        tip = _tip(label, value, unit) if inner is None else (
            f"<title>{_esc(label)}: {_esc(_number(value))} / {_esc(_number(inner[i]))}"
            f"{_esc(' ' + unit if unit else '')}</title>")
        parts = [f'<g class="datum">{tip}',
                 f'<rect x="{x + 2}" y="{round(base - h, 1)}" width="{col - 4}" height="{h}" fill="{PALETTE[0]}"/>']
        if inner is not None:
            ih = round(plot_h * inner[i] / most, 1)
            parts.append(f'<rect x="{x + 5}" y="{round(base - ih, 1)}" width="{col - 10}" height="{ih}" '
                         f'fill="{OVERLAY}"/>')
        if i % every == 0:
            parts.append(f'<text x="{x + col / 2}" y="{base + 16}" text-anchor="middle">{_esc(label)}</text>')
        parts.append("</g>")
        body.append("".join(parts))
    return _svg(width, height, title, body)


def heatmap(grid: list[list[int]], *, rows: list[str], cols: list[str], title: str, unit: str = "",
            empty: str = "No data") -> str:
    """A grid of cells shaded by value (weekday × hour): one datum per cell, ``rows`` and ``cols`` its labels."""
    if len(grid) != len(rows) or any(len(line) != len(cols) for line in grid):
        raise ValueError(f"heatmap: the grid is not {len(rows)} × {len(cols)}")
    values = [_checked(line) for line in grid]
    most = max((max(line) for line in values if line), default=0)
    if most == 0:
        return no_data(title=title, empty=empty)
    cell, top = 22, 48
    left = min(max(_width_of(str(r)) for r in rows) + 12, 160)
    width = left + cell * len(cols) + 8
    height = top + cell * len(rows) + 30
    body = []
    for j, label in enumerate(cols):
        if j % 3 == 0:
            body.append(f'<text x="{left + j * cell + cell / 2}" y="{top - 6}" text-anchor="middle">'
                        f'{_esc(label)}</text>')
    for i, row_label in enumerate(rows):
        y = top + i * cell
        body.append(f'<text x="{left - 6}" y="{y + 15}" text-anchor="end">{_esc(_clip(str(row_label), left - 12))}'
                    "</text>")
        for j, value in enumerate(values[i]):
            level = 0 if value == 0 else 1 + min(len(RAMP) - 2, int((len(RAMP) - 1) * value / most - 1e-9))
            body.append(f'<g class="datum"><title>{_esc(row_label)} {_esc(cols[j])}: {_esc(_number(value))}'
                        f'{_esc(" " + unit if unit else "")}</title><rect x="{left + j * cell}" y="{y}" '
                        f'width="{cell - 2}" height="{cell - 2}" fill="{RAMP[level]}" stroke="{GRID}" '
                        'stroke-width="0.5"/></g>')
    legend_y = top + cell * len(rows) + 20
    body.append(f'<text x="{left}" y="{legend_y}">0</text>')
    for k, color in enumerate(RAMP):
        body.append(f'<rect x="{left + 14 + k * 14}" y="{legend_y - 10}" width="12" height="12" fill="{color}" '
                    f'stroke="{GRID}" stroke-width="0.5"/>')
    body.append(f'<text x="{left + 18 + len(RAMP) * 14}" y="{legend_y}">{_esc(_number(most))}</text>')
    return _svg(width, height, title, body)


def donut(items: list[tuple[str, float]], *, title: str, unit: str = "", empty: str = "No data") -> str:
    """Shares of a whole (outcomes, new vs returning callers): a ring and a legend with percentages.

    Items past the palette's size share its last colour; rank and group them
    first ("other") when there are more than seven.
    """
    labels = [str(label) for label, _ in items]
    values = _checked(v for _, v in items)
    total = sum(values)
    if total == 0:
        return no_data(title=title, empty=empty)
    radius, ring, cx, cy = 60, 26, 90, 110
    circumference = 2 * math.pi * radius
    legend_w = min(max(_width_of(label) for label in labels) + 80, 260)
    width = cx + radius + ring + 24 + legend_w
    height = max(cy + radius + ring, 40 + 20 * len(values)) + 8
    body = []
    start = 0.0
    for i, (label, value) in enumerate(zip(labels, values)):
        color = PALETTE[min(i, len(PALETTE) - 1)]
        length = circumference * value / total
        share = 100 * value / total
        tip = (f"<title>{_esc(label)}: {_esc(_number(value))}{_esc(' ' + unit if unit else '')} "
               f"({share:.1f}%)</title>")
        # A dash as long as the share, started where the previous one ended (from 12 o'clock).
        body.append(
            f'<g class="datum">{tip}<circle cx="{cx}" cy="{cy}" r="{radius}" fill="none" stroke="{color}" '
            f'stroke-width="{ring}" stroke-dasharray="{length:.2f} {circumference:.2f}" '
            f'stroke-dashoffset="{-start:.2f}" transform="rotate(-90 {cx} {cy})"/>'
            f'<rect x="{cx + radius + ring}" y="{36 + 20 * i}" width="12" height="12" fill="{color}"/>'
            f'<text x="{cx + radius + ring + 18}" y="{46 + 20 * i}">{_esc(_clip(label, legend_w - 80))} '
            f'{share:.1f}%</text></g>')
        start += length
    body.append(f'<text x="{cx}" y="{cy + 5}" text-anchor="middle" font-size="14">{_esc(_number(total))}</text>')
    return _svg(round(width), round(height), title, body)
