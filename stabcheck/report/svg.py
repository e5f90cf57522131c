"""Small, dependency-free SVG plots for the HTML report.

Line charts (log or linear y, several series with a legend, markers at given steps, a cross
where a series went non-finite, horizontal reference lines) and a status heatmap. Output is
deterministic: coordinates are written with one decimal and tick labels with ``:.3g``, so the
same data always gives the same bytes (the golden-file tests rely on it). Every piece of text
is escaped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")
FONT = "font-family=\"system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif\""
CHAR_WIDTH = 6.2  # approximate width of one character at font-size 11, for layout only
# A reference line further than this many decades (log) or plot heights (linear) from the
# data is not allowed to squash the plot: it is named in a note instead.
REF_REACH = 3.0


def _n(value: float) -> str:
    """A coordinate: one decimal, never ``-0.0``."""
    text = f"{value:.1f}"
    return "0.0" if text == "-0.0" else text


def tick_label(value: float) -> str:
    """``0.001``, ``1e-05``, ``250``, ``15000``, ``2.5e+07``: short and stable."""
    if value == 0:
        return "0"
    if value == int(value) and abs(value) < 1e5:
        return str(int(value))
    return f"{value:.3g}"


def _attr(text: str) -> str:
    return escape(text, quote=True)


@dataclass
class Series:
    """One line. ``y`` holds NaN for missing or non-finite points (the line breaks there)."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    color: str
    marks: Sequence[float] = ()  # x positions to mark with a ring (e.g. spike steps)
    end: float | None = None  # x where the series became non-finite, drawn as a cross
    dashed: bool = False


@dataclass
class RefLine:
    """A horizontal reference line (clip threshold, 2/eta), labelled at its right end."""

    value: float
    label: str
    color: str = "#444444"


@dataclass
class _Axis:
    lo: float
    hi: float
    log: bool

    def norm(self, value: float) -> float:
        if self.log:
            return (math.log10(value) - math.log10(self.lo)) / (
                math.log10(self.hi) - math.log10(self.lo))
        return (value - self.lo) / (self.hi - self.lo)

    def contains(self, value: float) -> bool:
        return self.lo <= value <= self.hi and (value > 0 or not self.log)


def nice_step(span: float, target: int = 5) -> float:
    """A step of 1, 2 or 5 times a power of ten giving about ``target`` intervals."""
    raw = span / max(target, 1)
    power = 10 ** math.floor(math.log10(raw))
    for mult in (1, 2, 5, 10):
        if raw <= mult * power:
            return mult * power
    return 10 * power


def linear_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Round tick values inside [lo, hi]."""
    if hi <= lo:
        return [lo]
    step = nice_step(hi - lo, target)
    first = math.ceil(lo / step - 1e-9)
    ticks = []
    k = first
    while k * step <= hi + step * 1e-9:
        ticks.append(float(f"{k * step:.12g}"))
        k += 1
    return ticks


def log_ticks(lo: float, hi: float) -> list[float]:
    """Powers of ten inside [lo, hi] (thinned when many), else 1-2-5 steps, else linear."""
    e_lo, e_hi = math.ceil(math.log10(lo) - 1e-9), math.floor(math.log10(hi) + 1e-9)
    powers = [10.0 ** e for e in range(e_lo, e_hi + 1)]
    if len(powers) > 7:
        every = math.ceil(len(powers) / 6)
        powers = [p for i, p in enumerate(powers) if (e_lo + i) % every == 0]
    if len(powers) >= 2:
        return powers
    candidates = sorted(m * 10.0 ** e for e in range(e_lo - 1, e_hi + 2) for m in (1, 2, 5))
    inside = [float(f"{c:.12g}") for c in candidates if lo <= c <= hi]
    if len(inside) >= 3:
        return inside
    return [t for t in linear_ticks(lo, hi, 4) if t > 0]


def _y_axis(values: list[float], log: bool) -> _Axis:
    lo, hi = min(values), max(values)
    if log:
        a, b = math.log10(lo), math.log10(hi)
        pad = max((b - a) * 0.05, 0.05)
        return _Axis(10 ** (a - pad), 10 ** (b + pad), True)
    span = hi - lo
    pad = span * 0.05 if span > 0 else max(abs(hi) * 0.1, 1.0)
    return _Axis(lo - pad, hi + pad, False)


def _reachable(value: float, axis: _Axis, data: list[float]) -> bool:
    lo, hi = min(data), max(data)
    if axis.log:
        if value <= 0:
            return False
        return math.log10(lo) - REF_REACH <= math.log10(value) <= math.log10(hi) + REF_REACH
    span = (hi - lo) or abs(hi) or 1.0
    return lo - REF_REACH * span <= value <= hi + REF_REACH * span


class _Canvas:
    """Collects SVG elements of one chart."""

    def __init__(self, width: int, height: int, title: str, css_class: str) -> None:
        self.width, self.height = width, height
        self.parts = [
            f'<svg class="{_attr(css_class)}" '
            f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="{_attr(title)}" {FONT} font-size="11">',
            f"<title>{escape(title)}</title>",
        ]

    def add(self, element: str) -> None:
        self.parts.append(element)

    def text(self, x: float, y: float, text: str, anchor: str = "start", extra: str = "") -> None:
        self.parts.append(f'<text x="{_n(x)}" y="{_n(y)}" text-anchor="{anchor}"{extra}>'
                          f"{escape(text)}</text>")

    def done(self) -> str:
        return "\n".join([*self.parts, "</svg>"])


def _legend(canvas: _Canvas, items: list[tuple[str, str, bool]], x0: float, y: float,
            max_x: float) -> float:
    """Lay legend items out left to right, wrapping; returns the y below the last row."""
    x = x0
    for label, color, dashed in items:
        width = 22 + len(label) * CHAR_WIDTH + 12
        if x > x0 and x + width > max_x:
            x, y = x0, y + 15
        dash = ' stroke-dasharray="4 3"' if dashed else ""
        canvas.add(f'<line x1="{_n(x)}" y1="{_n(y - 4)}" x2="{_n(x + 16)}" y2="{_n(y - 4)}" '
                   f'stroke="{_attr(color)}" stroke-width="2"{dash}/>')
        canvas.text(x + 21, y, label, extra=' fill="#333"')
        x += width
    return y + 15


def _path(points: list[tuple[float, float] | None]) -> str:
    commands, pen_down = [], False
    for point in points:
        if point is None:
            pen_down = False
            continue
        commands.append(f"{'L' if pen_down else 'M'}{_n(point[0])} {_n(point[1])}")
        pen_down = True
    return "".join(commands)


def line_chart(series: Sequence[Series], *, title: str, x_label: str, y_label: str,
               log_y: bool = True, refs: Sequence[RefLine] = (), width: int = 320,
               height: int = 210, x_max: float | None = None, legend: bool = True,
               css_class: str = "plot", label: str | None = None) -> str:
    """A line chart. ``log_y`` falls back to a linear axis when a value is <= 0. ``title`` is
    drawn above the plot; ``label`` (default: the title) names it for screen readers."""
    finite = [float(v) for s in series for v in s.y if v is not None and math.isfinite(v)]
    if log_y and any(v <= 0 for v in finite):
        log_y = False
        title += " (linear: values <= 0)"
    legend_items = [(s.label, s.color, s.dashed) for s in series] if legend else []
    legend_rows = _legend_rows(legend_items, width - 60)
    total_height = height + (15 * legend_rows + 8 if legend_rows else 0)
    canvas = _Canvas(width, total_height, label or title, css_class)
    left, right, top, bottom = 58.0, width - 18.0, 22.0, height - 34.0
    canvas.text(left, 14, title, extra=' font-weight="600" fill="#222"')
    canvas.add(f'<rect x="{_n(left)}" y="{_n(top)}" width="{_n(right - left)}" '
               f'height="{_n(bottom - top)}" fill="#fff" stroke="#bbb"/>')
    xs = [float(x) for s in series for x in s.x] + [float(s.end) for s in series
                                                     if s.end is not None]
    x_hi = float(x_max) if x_max is not None else (max(xs) if xs else 1.0)
    x_axis = _Axis(0.0, x_hi if x_hi > 0 else 1.0, False)
    if not finite:
        canvas.text((left + right) / 2, (top + bottom) / 2, "no finite values",
                    anchor="middle", extra=' fill="#888"')
        _x_ticks(canvas, x_axis, left, right, bottom, x_label)
        for s in series:
            if s.end is not None:
                _cross(canvas, left + x_axis.norm(float(s.end)) * (right - left), top + 6,
                       s.color)
        if legend_items:
            _legend(canvas, legend_items, left, height + 10, right)
        return canvas.done()
    shown = [r for r in refs if math.isfinite(r.value)]
    in_range = [r for r in shown if _reachable(r.value, _y_axis(finite, log_y), finite)]
    y_axis = _y_axis(finite + [r.value for r in in_range], log_y)

    def px(x: float) -> float:
        return left + x_axis.norm(x) * (right - left)

    def py(y: float) -> float:
        return bottom - y_axis.norm(y) * (bottom - top)

    ticks = log_ticks(y_axis.lo, y_axis.hi) if log_y else linear_ticks(y_axis.lo, y_axis.hi)
    for t in ticks:
        y = py(t)
        canvas.add(f'<line x1="{_n(left)}" y1="{_n(y)}" x2="{_n(right)}" y2="{_n(y)}" '
                   'stroke="#eee"/>')
        canvas.text(left - 4, y + 3.5, tick_label(t), anchor="end", extra=' fill="#555"')
    canvas.text(10, (top + bottom) / 2, y_label + (" (log)" if log_y else ""), anchor="middle",
                extra=f' fill="#555" transform="rotate(-90 10 {_n((top + bottom) / 2)})"')
    _x_ticks(canvas, x_axis, left, right, bottom, x_label)
    off_scale = []
    for ref in shown:
        if ref not in in_range:
            off_scale.append(ref)
            continue
        y = py(ref.value)
        canvas.add(f'<line class="ref" x1="{_n(left)}" y1="{_n(y)}" x2="{_n(right)}" '
                   f'y2="{_n(y)}" stroke="{_attr(ref.color)}" stroke-width="1.2" '
                   'stroke-dasharray="6 3"/>')
        canvas.text(right - 3, y - 3, ref.label, anchor="end",
                    extra=f' fill="{_attr(ref.color)}" font-size="10"')
    for i, ref in enumerate(off_scale):
        arrow = "↑" if ref.value > y_axis.hi else "↓"
        canvas.text(right - 3, top + 12 + 12 * i, f"{ref.label} {arrow} (off scale)",
                    anchor="end", extra=f' fill="{_attr(ref.color)}" font-size="10"')
    for s in series:
        points: list[tuple[float, float] | None] = []
        lookup: dict[float, tuple[float, float]] = {}
        for x, y in zip(s.x, s.y, strict=True):
            if y is None or not math.isfinite(y) or (log_y and y <= 0):
                points.append(None)
                continue
            point = (px(float(x)), py(float(y)))
            points.append(point)
            lookup[float(x)] = point
        dash = ' stroke-dasharray="5 3"' if s.dashed else ""
        path = _path(points)
        if path:
            canvas.add(f'<path class="series" d="{path}" fill="none" stroke="{_attr(s.color)}" '
                       f'stroke-width="1.4" stroke-opacity="0.85" stroke-linejoin="round"{dash}>'
                       f"<title>{escape(s.label)}</title></path>")
        if len(lookup) == 1:  # a lone point draws no line: show it as a dot
            (cx, cy), = lookup.values()
            canvas.add(f'<circle cx="{_n(cx)}" cy="{_n(cy)}" r="2.5" fill="{_attr(s.color)}"/>')
        for mark in s.marks:
            at = lookup.get(float(mark))
            if at is not None:
                canvas.add(f'<circle class="spike" cx="{_n(at[0])}" cy="{_n(at[1])}" r="4" '
                           f'fill="none" stroke="{_attr(s.color)}" stroke-width="1.6">'
                           f"<title>{escape(s.label)}: step {tick_label(float(mark))}</title>"
                           "</circle>")
        if s.end is not None:
            _cross(canvas, px(float(s.end)), top + 6, s.color,
                   f"{s.label}: non-finite at step {tick_label(float(s.end))}")
    if legend_items:
        _legend(canvas, legend_items, left, height + 10, right)
    return canvas.done()


def _legend_rows(items: list[tuple[str, str, bool]], available: float) -> int:
    if not items:
        return 0
    rows, x = 1, 0.0
    for label, _, _ in items:
        width = 22 + len(label) * CHAR_WIDTH + 12
        if x > 0 and x + width > available:
            rows, x = rows + 1, 0.0
        x += width
    return rows


def _x_ticks(canvas: _Canvas, axis: _Axis, left: float, right: float, bottom: float,
             label: str) -> None:
    for t in linear_ticks(axis.lo, axis.hi, 5):
        x = left + axis.norm(t) * (right - left)
        canvas.add(f'<line x1="{_n(x)}" y1="{_n(bottom)}" x2="{_n(x)}" y2="{_n(bottom + 4)}" '
                   'stroke="#999"/>')
        canvas.text(x, bottom + 15, tick_label(t), anchor="middle", extra=' fill="#555"')
    canvas.text((left + right) / 2, bottom + 28, label, anchor="middle", extra=' fill="#555"')


def _cross(canvas: _Canvas, x: float, y: float, color: str, tip: str = "non-finite") -> None:
    canvas.add(f'<g class="nonfinite" stroke="{_attr(color)}" stroke-width="2">'
               f"<title>{escape(tip)}</title>"
               f'<line x1="{_n(x - 4)}" y1="{_n(y - 4)}" x2="{_n(x + 4)}" y2="{_n(y + 4)}"/>'
               f'<line x1="{_n(x - 4)}" y1="{_n(y + 4)}" x2="{_n(x + 4)}" y2="{_n(y - 4)}"/>'
               "</g>")


@dataclass
class Cell:
    """One heatmap cell: a coloured strip per member (seed) with its symbol, and a caption."""

    strips: Sequence[tuple[str, str, str]]  # (fill colour, symbol, tooltip)
    caption: str = ""
    href: str | None = None


def heatmap(rows: Sequence[str], cols: Sequence[str], cells: dict[tuple[int, int], Cell], *,
            title: str, row_title: str, col_title: str,
            legend: Sequence[tuple[str, str, str]] = (), cell_width: int = 112,
            cell_height: int = 58, css_class: str = "plot heatmap") -> str:
    """A grid of cells, rows top to bottom, columns left to right; ``legend`` holds
    ``(colour, symbol, name)`` entries drawn below the grid."""
    left, top = 70.0, 52.0
    strip_h = cell_height - 18
    grid_w, grid_h = cell_width * len(cols), cell_height * len(rows)
    legend_w = sum(30 + len(name) * CHAR_WIDTH for _, _, name in legend)
    width = int(max(left + grid_w + 12, left + legend_w + 12, 320))
    height = int(top + grid_h + (34 if legend else 10))
    canvas = _Canvas(width, height, title, css_class)
    canvas.text(4, 14, title, extra=' font-weight="600" fill="#222"')
    canvas.text(left + grid_w / 2, 30, col_title, anchor="middle", extra=' fill="#555"')
    canvas.text(left - 8, 46, row_title, anchor="end", extra=' fill="#555"')
    for j, col in enumerate(cols):
        canvas.text(left + (j + 0.5) * cell_width, top - 6, col, anchor="middle",
                    extra=' font-weight="600" fill="#333"')
    for i, row in enumerate(rows):
        y0 = top + i * cell_height
        canvas.text(left - 8, y0 + cell_height / 2 + 4, row, anchor="end",
                    extra=' font-weight="600" fill="#333"')
        for j in range(len(cols)):
            x0 = left + j * cell_width
            cell = cells.get((i, j))
            body = []
            if cell is None or not cell.strips:
                body.append(f'<rect x="{_n(x0)}" y="{_n(y0)}" width="{cell_width}" '
                            f'height="{cell_height}" fill="#f3f3f3" stroke="#fff" '
                            'stroke-width="2"/>')
                cx, cy = x0 + cell_width / 2, y0 + cell_height / 2 + 4
                body.append(f'<text x="{_n(cx)}" y="{_n(cy)}" text-anchor="middle" '
                            'fill="#999">not run</text>')
                canvas.add('<g class="cell">' + "".join(body) + "</g>")
                continue
            strip_w = (cell_width - 4) / len(cell.strips)
            body.append(f'<rect x="{_n(x0)}" y="{_n(y0)}" width="{cell_width}" '
                        f'height="{cell_height}" fill="#fafafa" stroke="#fff" stroke-width="2"/>')
            for k, (fill, symbol, tip) in enumerate(cell.strips):
                sx = x0 + 2 + k * strip_w
                body.append(f'<rect class="strip" x="{_n(sx)}" y="{_n(y0 + 2)}" '
                            f'width="{_n(strip_w - 1)}" height="{strip_h}" '
                            f'fill="{_attr(fill)}"><title>{escape(tip)}</title></rect>')
                cx, cy = sx + (strip_w - 1) / 2, y0 + 2 + strip_h / 2 + 5
                body.append(f'<text x="{_n(cx)}" y="{_n(cy)}" text-anchor="middle" '
                            'fill="#fff" font-size="16" font-weight="700">'
                            f"{escape(symbol)}</text>")
            body.append(f'<text x="{_n(x0 + cell_width / 2)}" y="{_n(y0 + cell_height - 4)}" '
                        f'text-anchor="middle" fill="#333" font-size="12">'
                        f"{escape(cell.caption)}</text>")
            group = '<g class="cell">' + "".join(body) + "</g>"
            if cell.href:
                group = f'<a href="{_attr(cell.href)}">{group}</a>'
            canvas.add(group)
    x = left
    y = top + grid_h + 24
    for fill, symbol, name in legend:
        canvas.add(f'<rect x="{_n(x)}" y="{_n(y - 11)}" width="16" height="15" '
                   f'fill="{_attr(fill)}"/>')
        canvas.text(x + 8, y + 1, symbol, anchor="middle",
                    extra=' fill="#fff" font-weight="700"')
        canvas.text(x + 21, y, name, extra=' fill="#333"')
        x += 30 + len(name) * CHAR_WIDTH
    return canvas.done()
