"""A small line plot drawn with QPainter: cheap enough to redraw while a job streams events.

A matplotlib canvas takes ~40 ms per draw on a small CPU, which alone would break the GUI's event-loop
target (p99 < 50 ms); this widget draws a few thousand points in about a millisecond. Changes are
throttled: setting data marks the plot dirty and one repaint follows at most every ``interval_ms``.
(pyqtgraph would do as well, but napari does not bring it, and this is the only plot we need.)

Tick labels carry as many decimals as their spacing needs (ticks 0.998, 1.000, 1.002 are not all
"1"); the legend sits under the axes, never over the curves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from qtpy.QtCore import QPointF, QRectF, Qt, QTimer
from qtpy.QtGui import QColor, QFont, QPainter, QPainterPath, QPalette, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

__all__ = ["COLORS", "CurvePlot", "nice_ticks", "tick_labels"]

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")
_MAX_POINTS = 2000  # per series on screen; longer series are thinned (every k-th point)


def nice_ticks(lo: float, hi: float, count: int = 5, min_step: float = 0.0) -> list[float]:
    """Round tick positions (1, 2, 2.5, 5 × 10^k, at least ``min_step`` apart) in ``[lo, hi]``, about
    ``count`` of them."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else []
    raw = (hi - lo) / max(1, count)
    mag = 10 ** math.floor(math.log10(raw))
    step = max(min_step, next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw))
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def tick_labels(ticks: Sequence[float]) -> list[str]:
    """Labels for evenly spaced ticks, with just the decimals their spacing needs (so neighbours differ)."""
    if not ticks:
        return []
    if len(ticks) == 1:
        return [f"{ticks[0]:.3g}"]
    step = abs(ticks[1] - ticks[0]) or 1.0
    biggest = max(abs(t) for t in ticks)
    if biggest >= 1e5 or step < 1e-4:
        return [f"{t:.3g}" if t else "0" for t in ticks]
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    if any(abs(round(t, decimals) - t) > step * 1e-3 for t in ticks):  # e.g. a step of 0.25
        decimals += 1
    return [f"{t:.{decimals}f}" for t in ticks]


class CurvePlot(QWidget):
    """Named series of (x, y) points, optional vertical marks with labels, a legend.

    Args:
        title: Drawn at the top left.
        xlabel: Drawn under the x axis.
        y_range: Fixed y limits (e.g. ``(0, 1)`` for a Dice); default: the data's range.
        markers: Draw a dot at each point (for short series such as one value per round).
        integer_x: Ticks on the x axis only at whole numbers (rounds, steps).
        empty_text: Shown while there is no data.
        interval_ms: The shortest time between two repaints caused by new data.
    """

    def __init__(
        self,
        title: str,
        xlabel: str,
        *,
        y_range: tuple[float, float] | None = None,
        markers: bool = False,
        integer_x: bool = False,
        empty_text: str = "no data yet",
        interval_ms: int = 250,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.title = title
        self.xlabel = xlabel
        self.y_range = y_range
        self.markers = markers
        self.integer_x = integer_x
        self.empty_text = empty_text
        self.series: dict[str, tuple[list[float], list[float]]] = {}
        self.colors: dict[str, str] = {}
        self.marks: list[tuple[float, str]] = []
        self.paint_count = 0  # repaints done (tests check the throttle with it)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self.update)
        self.setMinimumHeight(130)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    # ------------------------------------------------------------------------------------ data

    def set_series(
        self, name: str, xs: Sequence[float], ys: Sequence[float], color: str | None = None
    ) -> None:
        """Add or replace a series (NaN in ``ys`` breaks the line)."""
        if len(xs) != len(ys):
            raise ValueError(f"series {name!r}: {len(xs)} x values but {len(ys)} y values")
        self.series[name] = (list(xs), list(ys))
        if color is not None:
            self.colors[name] = color
        elif name not in self.colors:
            self.colors[name] = COLORS[len(self.colors) % len(COLORS)]
        self.changed()

    def set_data(
        self,
        series: dict[str, tuple[Sequence[float], Sequence[float]]],
        colors: dict[str, str] | None = None,
        marks: Sequence[tuple[float, str]] = (),
    ) -> None:
        """Replace every series (and the marks); nothing is redrawn when nothing changed."""
        new = {name: (list(xs), list(ys)) for name, (xs, ys) in series.items()}
        colors = dict(colors or {})
        same_colors = all(self.colors.get(name) == color for name, color in colors.items() if name in new)
        if new == self.series and list(marks) == self.marks and same_colors:
            return
        self.clear()
        for name, (xs, ys) in new.items():
            self.set_series(name, xs, ys, colors.get(name))
        self.marks = list(marks)

    def set_marks(self, marks: Sequence[tuple[float, str]]) -> None:
        """Vertical dotted lines at x with a label (e.g. where a training phase starts)."""
        self.marks = list(marks)
        self.changed()

    def clear(self) -> None:
        """Remove every series and mark."""
        self.series.clear()
        self.colors.clear()
        self.marks = []
        self.changed()

    def point_count(self) -> int:
        """How many finite points the plot holds."""
        return sum(1 for _xs, ys in self.series.values() for y in ys if math.isfinite(y))

    def changed(self) -> None:
        """Schedule one repaint (at most one per interval, however often the data changes)."""
        if not self._timer.isActive():
            self._timer.start()

    # ------------------------------------------------------------------------------------ drawing

    def _limits(self) -> tuple[float, float, float, float] | None:
        xs = [x for sx, sy in self.series.values() for x, y in zip(sx, sy, strict=True) if math.isfinite(y)]
        ys = [y for _sx, sy in self.series.values() for y in sy if math.isfinite(y)]
        if not xs:
            return None
        x0, x1 = min(xs), max(xs)
        y0, y1 = self.y_range if self.y_range is not None else (min(ys), max(ys))
        if x1 <= x0:
            x0, x1 = x0 - 1, x1 + 1
        if y1 <= y0:
            pad = abs(y0) * 0.1 or 1.0
            y0, y1 = y0 - pad, y1 + pad
        elif self.y_range is None:
            pad = (y1 - y0) * 0.05
            y0, y1 = y0 - pad, y1 + pad
        return x0, x1, y0, y1

    def paintEvent(self, _event: object) -> None:
        self.paint_count += 1
        painter = QPainter(self)
        try:
            self._paint(painter)
        finally:
            painter.end()

    def _legend_rows(self, fm: object, width: float) -> list[list[tuple[str, float]]]:
        """The legend's entries (name, width) wrapped into rows that fit ``width``."""
        if len(self.series) < 2:
            return []
        rows: list[list[tuple[str, float]]] = [[]]
        used = 0.0
        for name in self.series:
            w = fm.horizontalAdvance(name) + 26  # type: ignore[attr-defined]
            if rows[-1] and used + w > width:
                rows.append([])
                used = 0.0
            rows[-1].append((name, w))
            used += w
        return rows

    def _paint(self, p: QPainter) -> None:
        p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        fg = self.palette().color(QPalette.ColorRole.WindowText)
        dim = QColor(fg)
        dim.setAlpha(110)
        font = QFont(self.font())
        font.setPointSizeF(max(6.0, font.pointSizeF() * 0.85))
        p.setFont(font)
        fm = p.fontMetrics()
        h_text = fm.height()
        rect = QRectF(self.rect())
        legend = self._legend_rows(fm, rect.width() - 8)
        limits = self._limits()
        y_labels: list[tuple[float, str]] = []
        if limits is not None:
            rough_h = rect.height() - (3 + len(legend)) * h_text - 10
            ticks = nice_ticks(limits[2], limits[3], max(2, int(rough_h // (2.5 * h_text))))
            y_labels = list(zip(ticks, tick_labels(ticks), strict=True))
        label_w = max([fm.horizontalAdvance(t) for _v, t in y_labels] + [fm.horizontalAdvance("0.0")])
        frame = rect.adjusted(label_w + 10, h_text + 6, -8, -(2 + len(legend)) * h_text - 6)
        p.setPen(fg)
        p.drawText(QPointF(4, h_text), self.title)
        p.drawText(
            QRectF(frame.left(), frame.bottom() + h_text + 2, frame.width(), h_text),
            int(Qt.AlignmentFlag.AlignHCenter),
            self.xlabel,
        )
        p.setPen(QPen(dim, 1))
        p.drawRect(frame)
        if limits is None or frame.width() < 10 or frame.height() < 10:
            p.setPen(dim)
            p.drawText(frame, int(Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap), self.empty_text)
            return
        x0, x1, y0, y1 = limits

        def to_px(x: float, y: float) -> QPointF:
            return QPointF(
                frame.left() + (x - x0) / (x1 - x0) * frame.width(),
                frame.bottom() - (y - y0) / (y1 - y0) * frame.height(),
            )

        for ty, text in y_labels:
            pt = to_px(x0, ty)
            p.setPen(QPen(dim, 1))
            p.drawLine(QPointF(frame.left() - 3, pt.y()), QPointF(frame.left(), pt.y()))
            p.setPen(fg)
            p.drawText(
                QRectF(0, pt.y() - h_text / 2, frame.left() - 5, h_text),
                int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter),
                text,
            )
        x_ticks = nice_ticks(
            x0, x1, max(2, int(frame.width() // (6 * h_text))), 1.0 if self.integer_x else 0.0
        )
        for tx, text in zip(x_ticks, tick_labels(x_ticks), strict=True):
            pt = to_px(tx, y0)
            p.setPen(QPen(dim, 1))
            p.drawLine(QPointF(pt.x(), frame.bottom()), QPointF(pt.x(), frame.bottom() + 3))
            p.setPen(fg)
            p.drawText(
                QRectF(pt.x() - 40, frame.bottom() + 2, 80, h_text),
                int(Qt.AlignmentFlag.AlignHCenter),
                text,
            )
        p.setClipRect(frame.adjusted(-4, -4, 4, 4))
        for x, text in self.marks:
            pt = to_px(x, y1)
            p.setPen(QPen(dim, 1, Qt.PenStyle.DotLine))
            p.drawLine(QPointF(pt.x(), frame.top()), QPointF(pt.x(), frame.bottom()))
            p.setPen(dim)
            p.drawText(QPointF(pt.x() + 3, frame.top() + h_text), text)
        for name, (xs, ys) in self.series.items():
            color = QColor(self.colors.get(name, COLORS[0]))
            stride = max(1, len(xs) // _MAX_POINTS)
            path = QPainterPath()
            pen_down = False
            points = []
            for x, y in zip(xs[::stride], ys[::stride], strict=True):
                if not math.isfinite(y):
                    pen_down = False
                    continue
                pt = to_px(x, y)
                points.append(pt)
                if pen_down:
                    path.lineTo(pt)
                else:
                    path.moveTo(pt)
                    pen_down = True
            p.setPen(QPen(color, 1.5))
            p.setBrush(Qt.BrushStyle.NoBrush)
            p.drawPath(path)
            if self.markers or len(points) == 1:
                p.setBrush(color)
                for pt in points:
                    p.drawEllipse(pt, 2.5, 2.5)
        p.setClipping(False)
        self._legend(p, legend, frame.bottom() + 2 * h_text + 4, h_text)

    def _legend(self, p: QPainter, rows: list[list[tuple[str, float]]], top: float, h_text: int) -> None:
        """One short line of colour and the name per series, in rows under the axes."""
        fg = self.palette().color(QPalette.ColorRole.WindowText)
        for r, row in enumerate(rows):
            x = 4.0
            yy = top + h_text * (r + 0.5)
            for name, width in row:
                p.setPen(QPen(QColor(self.colors.get(name, COLORS[0])), 2.5))
                p.drawLine(QPointF(x + 2, yy), QPointF(x + 16, yy))
                p.setPen(fg)
                p.drawText(QPointF(x + 20, yy + h_text / 2 - 3), name)
                x += width
