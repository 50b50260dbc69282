"""Performance over time: generation and prompt speed of each reply, and memory per device,
since the model was loaded; drawn with QPainter (three small strip charts)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QPainter, QPaintEvent, QPalette, QPen, QPolygonF
from PySide6.QtWidgets import QSizePolicy, QWidget

from engine.units import format_duration

MAX_POINTS = 3600  # an hour of memory samples at one a second; older ones drop off
# Mid-tone colours, readable on a light and on a dark background.
LINE_COLOURS = ("#e4572e", "#2a9d8f", "#7b61ff", "#e9a23b", "#3a86ff")


@dataclass
class Series:
    name: str
    unit: str
    points: list[tuple[float, float]] = field(default_factory=list)  # (seconds since load, v)

    def add(self, at: float, value: float) -> None:
        self.points.append((at, value))
        del self.points[:-MAX_POINTS]


@dataclass
class Strip:
    title: str
    series: list[Series]


class PerfPanel(QWidget):
    """The charts. ``reset`` when a model is loaded; ``add_reply`` after each reply;
    ``add_memory`` once a second."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("perfPanel")
        self.setAccessibleName("Performance over time")
        self.setMinimumHeight(150)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.reset("")

    def reset(self, model_name: str) -> None:
        self.model_name = model_name
        self.started = time.monotonic()
        self.generation = Series("generation", "tok/s")
        self.prompt = Series("prompt", "tok/s")
        self.memory: dict[str, Series] = {"RAM": Series("RAM", "GB")}
        self.update()

    def _now(self) -> float:
        return time.monotonic() - self.started

    def add_reply(self, generation_tokens_per_s: float, prompt_tokens_per_s: float) -> None:
        at = self._now()
        if generation_tokens_per_s > 0:
            self.generation.add(at, generation_tokens_per_s)
        if prompt_tokens_per_s > 0:
            self.prompt.add(at, prompt_tokens_per_s)
        self.update()

    def add_memory(self, ram_bytes: int, devices: dict[str, int]) -> None:
        """RAM of the app and its engine, and bytes used on each GPU."""
        at = self._now()
        self.memory["RAM"].add(at, ram_bytes / 1e9)
        for name, used in devices.items():
            self.memory.setdefault(name, Series(name, "GB")).add(at, used / 1e9)
        self.update()

    def strips(self) -> list[Strip]:
        return [
            Strip("Generation speed (tok/s, per reply)", [self.generation]),
            Strip("Prompt speed (tok/s, per reply)", [self.prompt]),
            Strip("Memory (GB)", list(self.memory.values())),
        ]

    # -- drawing ---------------------------------------------------------------------------

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        palette = self.palette()
        painter.fillRect(self.rect(), palette.color(QPalette.ColorRole.Base))
        strips = self.strips()
        gap = 8
        width = (self.width() - gap * (len(strips) + 1)) / len(strips)
        for index, strip in enumerate(strips):
            box = QRectF(gap + index * (width + gap), gap, width, self.height() - 2 * gap)
            self._draw_strip(painter, box, strip, palette)
        painter.end()

    def _draw_strip(self, painter: QPainter, box: QRectF, strip: Strip, palette: QPalette) -> None:
        text = palette.color(QPalette.ColorRole.Text)
        faint = palette.color(QPalette.ColorRole.PlaceholderText)
        metrics = painter.fontMetrics()
        line = metrics.height()
        painter.setPen(text)
        painter.drawText(QRectF(box.left(), box.top(), box.width(), line),
                         Qt.AlignmentFlag.AlignLeft, strip.title)  # fmt: skip
        legend_top = box.top() + line
        legend = []
        for number, series in enumerate(strip.series):
            last = f"{series.points[-1][1]:.1f}" if series.points else "–"
            legend.append((series, LINE_COLOURS[number % len(LINE_COLOURS)], last))
        x = box.left()
        for series, colour, last in legend:
            label = f"{series.name} {last}" if len(strip.series) > 1 else f"last {last}"
            painter.setPen(QColor(colour))
            painter.drawText(QPointF(x, legend_top + metrics.ascent()), "■")
            painter.setPen(faint)
            painter.drawText(QPointF(x + metrics.horizontalAdvance("■ "),
                                     legend_top + metrics.ascent()), label)  # fmt: skip
            x += metrics.horizontalAdvance(f"■ {label}    ")
        plot = QRectF(box.left(), legend_top + line + 4, box.width(), 0)
        plot.setBottom(box.bottom() - line)
        painter.setPen(QPen(palette.color(QPalette.ColorRole.Mid), 1))
        painter.drawRect(plot)
        points = [p for series in strip.series for p in series.points]
        if not points:
            painter.setPen(faint)
            painter.drawText(plot, Qt.AlignmentFlag.AlignCenter, "no data yet")
            return
        top = max(v for _t, v in points) * 1.15 or 1.0
        span = max(max(t for t, _v in points), 1.0)
        painter.setPen(faint)
        painter.drawText(
            QRectF(plot.left() + 3, plot.top() + 1, plot.width(), line),
            Qt.AlignmentFlag.AlignLeft,
            f"{top:.0f}" if top >= 10 else f"{top:.1f}",
        )
        since = f"{format_duration(span)} since load"
        painter.drawText(QRectF(plot.left(), plot.bottom(), plot.width(), line),
                         Qt.AlignmentFlag.AlignRight, since)  # fmt: skip
        for series, colour, _last in legend:
            if not series.points:
                continue
            corners = [
                QPointF(plot.left() + plot.width() * t / span,
                        plot.bottom() - plot.height() * v / top) for t, v in series.points
            ]  # fmt: skip
            painter.setPen(QPen(QColor(colour), 2))
            if len(corners) > 1:
                painter.drawPolyline(QPolygonF(corners))
            if len(corners) < 40:  # few points (replies): each one marked
                for point in corners:
                    painter.drawEllipse(point, 2.5, 2.5)
