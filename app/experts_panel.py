"""View → Experts: the live expert heat map, the coverage curve and where the weights are.

Everything shown is computed by engine.heat; this module only draws it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QPointF, QRectF, Qt, Signal, Slot
from PySide6.QtGui import QColor, QPainter, QPainterPath, QPaintEvent, QPalette, QPen
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from engine.heat import (
    HeatProfile,
    coverage_curve,
    experts_kept,
    layer_skew,
    read_shares,
)
from engine.host import LoadedModel
from engine.tuner import REFERENCE_PROMPT_TOKENS, REFERENCE_REPLY_TOKENS, Tuning
from engine.units import format_bytes

HOT_FRACTION = 0.25  # the summary's hot set: the hottest quarter of each layer's experts
HOT = QColor("#d9480f")
FULL_AT = 3.0  # a cell is at full colour at this many times its layer's average share
MIN_CELL_W, MIN_CELL_H = 4, 6  # pixels: smaller than this, the map scrolls instead
LABEL_W, SCALE_H = 58, 34  # room for the layer numbers, and for the colour scale below

EXPLANATION = (
    "Each token is handled by a few of the experts in every layer, chosen by a router. "
    "<b>The map</b> shows which: one row per layer, one column per expert, and the stronger the "
    "colour, the more often that expert is picked. Experts picked often are <i>hot</i>. "
    "<b>The curve</b> shows what share of expert reads the hottest experts of each layer "
    "would serve. Reading an expert from VRAM is several times faster than from RAM, so a "
    "curve that rises steeply means that a few hot experts in VRAM make replies faster; a "
    "curve along the diagonal means every expert is read about as often, and only more VRAM "
    "helps."
)


def heat_colour(relative: float, cold: QColor) -> QColor:
    """Colour of a cell whose routing share is ``relative`` times the layer's average,
    fading from ``cold`` (the background: never picked) to HOT."""
    t = float(np.clip(relative / FULL_AT, 0.0, 1.0))
    return QColor(
        round(cold.red() + (HOT.red() - cold.red()) * t),
        round(cold.green() + (HOT.green() - cold.green()) * t),
        round(cold.blue() + (HOT.blue() - cold.blue()) * t),
    )


class HeatMap(QWidget):
    """Layers (rows) x experts (columns); colour = the expert's share of its layer's reads.
    Numbered layers on the left, numbered experts below, and the colour scale under them."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("heatMap")
        self.setAccessibleName("Expert heat map")
        self.setMinimumSize(320, 200)
        self.relative: np.ndarray | None = None  # share x n_experts, per layer

    def set_counts(self, counts: np.ndarray | None) -> None:
        if counts is None or counts.sum() == 0:
            self.relative = None
        else:
            totals = counts.sum(axis=1, keepdims=True)
            shares = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
            self.relative = shares * counts.shape[1]
            layers, experts = counts.shape
            self.setMinimumSize(
                max(320, LABEL_W + 8 + experts * MIN_CELL_W),
                max(200, 8 + layers * MIN_CELL_H + 18 + SCALE_H),
            )
        self.update()

    def paintEvent(self, _event: QPaintEvent) -> None:
        painter = QPainter(self)
        palette = self.palette()
        text = palette.color(QPalette.ColorRole.Text)
        cold = palette.color(QPalette.ColorRole.Base)
        painter.fillRect(self.rect(), cold)
        if self.relative is None:
            painter.setPen(text)
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "No routing counted yet")
            return
        metrics = painter.fontMetrics()
        line = metrics.height()
        area = QRectF(self.rect()).adjusted(LABEL_W, 4, -8, -(line + 4 + SCALE_H))
        layers, experts = self.relative.shape
        cell_w, cell_h = area.width() / experts, area.height() / layers
        gap = 1.0 if cell_w >= 8 and cell_h >= 8 else 0.0  # a grid once cells are large
        for layer in range(layers):
            for expert in range(experts):
                cell = QRectF(area.left() + expert * cell_w, area.top() + layer * cell_h,
                              cell_w - gap, cell_h - gap)  # fmt: skip
                painter.fillRect(cell, heat_colour(float(self.relative[layer, expert]), cold))
        painter.setPen(QPen(palette.color(QPalette.ColorRole.Mid), 1))
        painter.drawRect(area)
        painter.setPen(text)
        # Layer numbers: as many as fit one under another, at round steps.
        step = _label_step(layers, area.height(), line)
        for layer in range(0, layers, step):
            y = area.top() + (layer + 0.5) * cell_h
            painter.drawText(QRectF(0, y - line / 2, LABEL_W - 6, line),
                             Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
                             f"layer {layer}" if layer == 0 else str(layer))  # fmt: skip
        width = metrics.horizontalAdvance(str(experts)) + 8
        step = _label_step(experts, area.width(), width)
        for expert in range(0, experts, step):
            x = area.left() + (expert + 0.5) * cell_w
            painter.drawText(QRectF(x - width / 2, area.bottom() + 2, width, line),
                             Qt.AlignmentFlag.AlignHCenter, str(expert))  # fmt: skip
        painter.drawText(QRectF(0, area.bottom() + 2, LABEL_W - 6, line),
                         Qt.AlignmentFlag.AlignRight, "expert")  # fmt: skip
        scale = QRectF(area.left(), area.bottom() + line + 8, min(area.width(), 360.0),
                       SCALE_H - 8)  # fmt: skip
        self._draw_scale(painter, scale, cold, text)

    def _draw_scale(self, painter: QPainter, box: QRectF, cold: QColor, text: QColor) -> None:
        """The colour scale: never picked, the layer's average, FULL_AT times it or more."""
        bar = QRectF(box.left(), box.top(), box.width(), box.height() / 2 - 1)
        steps = 60
        for i in range(steps):
            part = QRectF(bar.left() + bar.width() * i / steps, bar.top(),
                          bar.width() / steps + 1, bar.height())  # fmt: skip
            painter.fillRect(part, heat_colour(FULL_AT * i / (steps - 1), cold))
        painter.setPen(QPen(self.palette().color(QPalette.ColorRole.Mid), 1))
        painter.drawRect(bar)
        painter.setPen(text)
        below = QRectF(bar.left(), bar.bottom() + 1, bar.width(), box.height() / 2 + 1)
        painter.drawText(below, Qt.AlignmentFlag.AlignLeft, "never picked")
        painter.drawText(
            QRectF(bar.left() + bar.width() / FULL_AT - 60, below.top(), 120, below.height()),
            Qt.AlignmentFlag.AlignHCenter, "average",
        )  # fmt: skip
        painter.drawText(below, Qt.AlignmentFlag.AlignRight, f"{FULL_AT:.0f}x average or more")


def _label_step(count: int, length: float, label: float) -> int:
    """Every how many rows (or columns) a number fits: 1, 2, 4, 8 or a multiple of 8."""
    step = 1
    while step < count and length * step / count < label * 1.2:
        step *= 2
    return step


class CoveragePlot(QWidget):
    """c(h): share of expert reads served by the hottest h of each layer's experts."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("coveragePlot")
        self.setMinimumSize(240, 200)
        self.setAccessibleName("Coverage curve")
        self.curve: list[float] = []  # c(j / E), j = 0..E
        self.held_out: list[float] = []

    def set_curves(self, curve: list[float], held_out: list[float]) -> None:
        self.curve, self.held_out = curve, held_out
        self.update()

    def paintEvent(self, _event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        width = painter.fontMetrics().horizontalAdvance("100%") + 8
        area = QRectF(self.rect()).adjusted(width, 6, -8, -30)
        text = self.palette().text().color()
        painter.setPen(QPen(text, 1))
        painter.drawRect(area)
        painter.drawText(
            QRectF(area.left(), area.bottom() + 4, area.width(), 14),
            Qt.AlignmentFlag.AlignCenter,
            "share of each layer's experts, hottest first →",
        )
        line = painter.fontMetrics().height()
        right = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
        for label, y in (("100%", area.top()), ("50%", area.center().y()), ("0", area.bottom())):
            painter.drawText(QRectF(0, y - line / 2, width - 4, line), right, label)
        painter.setPen(QPen(self.palette().color(QPalette.ColorRole.PlaceholderText), 1,
                            Qt.PenStyle.DotLine))  # uniform routing  # fmt: skip
        painter.drawLine(area.bottomLeft(), area.topRight())
        for values, colour, style in (
            (self.held_out, QColor("#1c7ed6"), Qt.PenStyle.DashLine),
            (self.curve, HOT, Qt.PenStyle.SolidLine),
        ):
            if len(values) < 2:
                continue
            path = QPainterPath()
            for j, value in enumerate(values):
                point = QPointF(
                    area.left() + area.width() * j / (len(values) - 1),
                    area.bottom() - area.height() * value,
                )
                path.lineTo(point) if j else path.moveTo(point)
            painter.setPen(QPen(colour, 2, style))
            painter.drawPath(path)


def hot_experts_text(model: LoadedModel | None, counted: bool, reply: dict[str, Any] | None) -> str:
    """What the panel says about hot experts on the GPU (packaging/HOT-EXPERTS.md): what the
    engine split off, the share of expert reads expected and measured, or how to get there.
    Empty when there is nothing to say: a dense model, or no GPU in use."""
    if model is None or model.n_experts < 2:
        return ""
    if model.hot_experts:
        n_hot, n_layers = sum(model.hot_experts), len(model.hot_experts)
        text = (
            f"Hot experts on the GPU: {n_hot} of {model.n_experts * n_layers}, "
            f"{min(model.hot_experts)}–{max(model.hot_experts)} of {model.n_experts} per layer "
            "(the first of each layer, which are the hottest in this file's order)."
        )
        if model.hot_share is not None:
            text += f" Expected from the counted heat: {model.hot_share:.0%} of expert reads."
        measured = reply.get("hot_read_share") if reply else None
        if measured is not None:
            text += f" Measured in the last reply: {measured:.0%}."
        else:
            text += " Turn counting on to measure what each reply reads from them."
        return text
    if not any(not device.startswith("CPU") for device in model.device_bytes):
        return ""  # nothing on a GPU: no VRAM to put hot experts in
    if not model.splits_experts:
        return (
            "This engine moves whole expert layers only. The hot-experts engine (the "
            "installers' own; from source, see packaging/HOT-EXPERTS.md) can put each layer's "
            "hottest experts on the GPU."
        )
    if not model.heat_ordered:
        if not counted:
            return (
                "Count which experts are hot (above), then order the experts by it: the "
                "hottest of each layer can then go to the GPU apart from the rest."
            )
        return (
            "To put each layer's hottest experts on the GPU, the file's experts must be in heat "
            f"order: Order experts by heat writes such a copy "
            f"({format_bytes(Path(model.path).stat().st_size)} on disk) and loads it."
            if Path(model.path).exists()
            else ""
        )
    return (
        "This file's experts are in heat order, but by the counted heat whole expert layers "
        "on the GPU are as fast here; count more to refine it."
    )


class ExpertsPanel(QWidget):
    """A window of its own; lives with the chat window and follows the loaded model."""

    profiling_toggled = Signal(bool)
    tune_requested = Signal()
    tune_cancelled = Signal()
    reorder_requested = Signal()  # write a heat-ordered copy of the model and load it
    reorder_cancelled = Signal()
    reorder_progressed = Signal(float)  # 0..1, emitted from the job's thread

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent, Qt.WindowType.Window)
        self.setObjectName("expertsPanel")
        self.setWindowTitle("Experts")
        self.resize(960, 700)
        self.model: LoadedModel | None = None
        self.heat: HeatProfile | None = None
        self.last_reply: dict[str, Any] | None = None
        self.tuning_running = False
        self.reordering = False

        self.profiling = QCheckBox(
            "Count which experts the router picks (profiling: generation is about a quarter "
            "slower while on)",
            self,
        )
        self.profiling.setObjectName("profilingCheck")
        self.profiling.toggled.connect(self.profiling_toggled)
        self.explanation = QLabel(EXPLANATION, self)
        self.explanation.setObjectName("expertsExplanation")
        self.explanation.setWordWrap(True)
        self.heat_map = HeatMap(self)
        self.map_scroll = QScrollArea(self)
        self.map_scroll.setWidget(self.heat_map)
        self.map_scroll.setWidgetResizable(True)
        self.map_scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        self.map_scroll.setAccessibleName("Expert heat map")
        self.coverage = CoveragePlot(self)
        self.summary = QLabel(self)
        self.summary.setObjectName("heatSummary")
        self.summary.setWordWrap(True)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.placement = QLabel(self)
        self.placement.setObjectName("placementSummary")
        self.placement.setWordWrap(True)
        self.hot = QLabel(self)
        self.hot.setObjectName("hotExperts")
        self.hot.setWordWrap(True)
        self.reorder_button = QPushButton("Order experts by heat…", self)
        self.reorder_button.setObjectName("reorderButton")
        self.reorder_button.setToolTip(
            "Write a copy of the model with each layer's experts hottest first, by the heat "
            "counted, and load it: then each layer's hottest experts can go to the GPU."
        )
        self.reorder_button.clicked.connect(self.reorder_requested)
        self.reorder_progressed.connect(self._on_reorder_progressed)

        legend = QLabel(
            "Share of expert reads served by each layer's hottest experts. Solid: all counted "
            "tokens. Dashed: hot set learned on the first half, measured on the second. "
            "Dotted: even routing.",
            self,
        )
        legend.setObjectName("hintLabel")
        legend.setWordWrap(True)
        coverage_column = QWidget(self)
        coverage_box = QVBoxLayout(coverage_column)
        coverage_box.setContentsMargins(0, 0, 0, 0)
        coverage_box.addWidget(self.coverage, 1)
        coverage_box.addWidget(legend)
        self.plots = QWidget(self)
        plots = QHBoxLayout(self.plots)
        plots.setContentsMargins(0, 0, 0, 0)
        plots.addWidget(self.map_scroll, 3)
        plots.addWidget(coverage_column, 2)
        self.tune_button = QPushButton("Tune for this machine", self)
        self.tune_button.setObjectName("tuneButton")
        self.tune_button.setToolTip(
            "Load the model under a few splits between GPU and RAM, measure each, and use the "
            "fastest from now on. The model is unloaded while this runs (a minute or two)."
        )
        self.tune_button.clicked.connect(self.tune_requested)
        self.cancel_button = QPushButton("Cancel", self)
        self.cancel_button.setObjectName("cancelTuneButton")
        self.cancel_button.clicked.connect(self._cancel)
        self.cancel_button.hide()
        self.tune_progress = QProgressBar(self)
        self.tune_progress.setRange(0, 1000)
        self.tune_progress.hide()
        self.tune_status = QLabel(self)
        self.tune_status.setObjectName("tuneStatus")
        self.tune_status.setWordWrap(True)
        self.results = QTableWidget(0, 5, self)
        self.results.setObjectName("tuneResults")
        self.results.setHorizontalHeaderLabels(
            ["Candidate", "Placement", "Prompt tok/s", "Generation tok/s (predicted)", "Turn"]
        )
        turn = QTableWidgetItem("Turn")
        turn.setToolTip(
            f"Seconds for a turn of {REFERENCE_PROMPT_TOKENS} prompt tokens and "
            f"{REFERENCE_REPLY_TOKENS} generated: how the fastest is chosen"
        )
        self.results.setHorizontalHeaderItem(4, turn)
        self.results.verticalHeader().hide()
        self.results.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.results.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        header = self.results.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.results.hide()
        tune_row = QHBoxLayout()
        tune_row.addWidget(self.tune_button)
        tune_row.addWidget(self.reorder_button)
        tune_row.addWidget(self.cancel_button)
        tune_row.addWidget(self.tune_progress, 1)
        tune_row.addStretch(0)

        layout = QVBoxLayout(self)
        layout.addWidget(self.explanation)
        layout.addWidget(self.profiling)
        layout.addWidget(self.plots, 1)
        layout.addWidget(self.summary)
        layout.addWidget(self.placement)
        layout.addWidget(self.hot)
        layout.addLayout(tune_row)
        layout.addWidget(self.tune_status)
        layout.addWidget(self.results)
        self._refresh()

    @Slot(object)
    def set_model(self, model: LoadedModel | None) -> None:
        self.model = model
        self.heat = None
        self.last_reply = None
        tuning: Any = model.tuning if model else None
        self.show_tuning(tuning)
        if model and model.tuned and tuning is not None and tuning.best is not None:
            self.tune_status.setText(
                f"Loaded with the fastest measured split: {tuning.best.label}."
            )
        self._refresh()

    @Slot(dict)
    def set_reply_stats(self, stats: dict[str, Any]) -> None:
        """The last reply's measured speed, shown next to the plan's prediction."""
        self.last_reply = stats
        self.placement.setText(self._placement_text(self.model, self._counts(), stats))
        self._show_hot(self._counts())

    @Slot(str)
    def tuning_started(self, name: str) -> None:
        self.tuning_running = True
        self._busy(f"Tuning {name}: the model is unloaded until this finishes.")

    def _busy(self, status: str) -> None:
        """A long job (tuning, reordering) runs: its progress and Cancel in the tune row."""
        self.tune_progress.setValue(0)
        self.tune_progress.show()
        self.cancel_button.show()
        self.cancel_button.setEnabled(True)
        self.tune_button.setEnabled(False)
        self.reorder_button.setEnabled(False)
        self.tune_status.setText(status)

    def _idle(self, status: str) -> None:
        self.tune_progress.hide()
        self.cancel_button.hide()
        self.tune_status.setText(status)
        self._refresh()

    @Slot()
    def _cancel(self) -> None:
        (self.reorder_cancelled if self.reordering else self.tune_cancelled).emit()

    def reorder_started(self, name: str, size: int) -> None:
        self.reordering = True
        self._busy(
            f"Writing a copy of {name} with its experts in heat order ({format_bytes(size)}); "
            "chatting goes on meanwhile."
        )

    @Slot(float)
    def _on_reorder_progressed(self, fraction: float) -> None:
        self.tune_progress.setValue(int(fraction * 1000))

    def reorder_finished(self, status: str) -> None:
        """Done, failed or cancelled: ``status`` says which."""
        self.reordering = False
        self._idle(status)

    @Slot(float, str)
    def tuning_progressed(self, fraction: float, message: str) -> None:
        self.tune_progress.setValue(int(fraction * 1000))
        self.tune_status.setText(message)

    @Slot(object)
    def tuning_finished(self, tuning: Tuning | None) -> None:
        self.tuning_running = False
        if tuning is None:
            self._idle("Tuning stopped; nothing was changed. Loading the model…")
            return
        self._idle("")
        self.show_tuning(tuning)
        best = tuning.best
        if best is not None:
            self.tune_status.setText(
                f"Fastest: {best.label} ({best.generation_tokens_per_s:.1f} tok/s generation, "
                f"{best.prompt_tokens_per_s:.0f} tok/s prompt). Loading the model with it…"
            )

    def cancel_tuning(self) -> None:
        self.cancel_button.setEnabled(False)
        self.tune_status.setText("Cancelling after the current measurement…")

    def show_tuning(self, tuning: Tuning | None) -> None:
        """The measured candidates, fastest marked; hidden when this model was never tuned."""
        rows = tuning.measurements if tuning is not None else []
        self.results.setRowCount(len(rows))
        self.results.setVisible(bool(rows))
        best = tuning.best if tuning is not None else None
        for row, m in enumerate(rows):
            cells = [
                ("✓ " if m is best else "") + m.label,
                m.placement,
                f"{m.prompt_tokens_per_s:,.0f}",
                f"{m.generation_tokens_per_s:.1f} ({m.predicted_generation_tokens_per_s:.0f})",
                f"{m.turn_seconds:.1f} s",
            ]
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if m is best:
                    font = item.font()
                    font.setBold(True)
                    item.setFont(font)
                self.results.setItem(row, column, item)
        if rows:
            height = self.results.horizontalHeader().height() + 2
            height += sum(self.results.rowHeight(r) for r in range(len(rows)))
            self.results.setFixedHeight(height)

    def _counts(self) -> np.ndarray | None:
        return self.heat.total if self.heat is not None else None

    @Slot(object)
    def set_heat(self, heat: HeatProfile) -> None:
        self.heat = heat
        self._refresh()

    def _refresh(self) -> None:
        model, heat = self.model, self.heat
        moe = model is not None and model.n_experts >= 2
        # A dense model has no experts: no map, no curve, no counting; just the sentence.
        for widget in (self.explanation, self.profiling, self.plots):
            widget.setVisible(moe or model is None)
        self.profiling.setEnabled(moe or model is None)
        busy = self.tuning_running or self.reordering
        self.tune_button.setEnabled(model is not None and not busy)
        counts = heat.total if heat is not None else None
        self.heat_map.set_counts(counts)
        curve: np.ndarray | None = None
        held_out: np.ndarray | None = None
        if heat is not None and counts is not None and counts.sum() > 0:
            curve = coverage_curve(counts)
            first, second = heat.halves()  # once per refresh: it sums every block
            held_out = coverage_curve(second, learned_from=first) if second.sum() else None
        if model is None:
            self.summary.setText("Load a Mixture-of-Experts model to see its experts.")
        elif not moe:
            self.summary.setText(
                f"{model.name} is a dense model: it has no experts, and every weight is read for "
                "every token, so there is no expert map. Where its layers are is below."
            )
        elif heat is None or counts is None or curve is None:
            self.summary.setText(
                "Turn counting on and chat: the map fills in as replies stream."
                if not self.profiling.isChecked()
                else "Counting: send a message to see which experts are picked."
            )
        else:
            self.summary.setText(self._heat_text(heat, counts, curve, held_out))
        self.coverage.set_curves(
            [] if curve is None else curve.tolist(), [] if held_out is None else held_out.tolist()
        )
        self.placement.setText(self._placement_text(model, counts, self.last_reply))
        self._show_hot(counts)

    def _show_hot(self, counts: np.ndarray | None) -> None:
        model = self.model
        counted = counts is not None and counts.sum() > 0
        text = hot_experts_text(model, counted, self.last_reply)
        self.hot.setText(text)
        self.hot.setVisible(bool(text))
        offer = model is not None and model.splits_experts and not model.heat_ordered
        self.reorder_button.setVisible(bool(offer and text and counted))
        self.reorder_button.setEnabled(not (self.tuning_running or self.reordering))

    @staticmethod
    def _heat_text(
        heat: HeatProfile, counts: np.ndarray, curve: np.ndarray, held_out: np.ndarray | None
    ) -> str:
        skews = [s for s in layer_skew(counts) if s.reads]
        entropy = float(np.mean([s.entropy for s in skews]))
        top = float(np.mean([s.top_share for s in skews]))
        unused = sum(s.unused for s in skews)
        kept = experts_kept(counts.shape[1], HOT_FRACTION)
        hot = float(curve[kept])
        held = (
            f" (learned on the first half of the tokens, it serves "
            f"{float(held_out[kept]):.0%} of the second half)"
            if held_out is not None
            else ""
        )
        return (
            f"{heat.tokens['prompt']:,} prompt and {heat.tokens['generation']:,} generated "
            f"tokens counted. The hottest {HOT_FRACTION:.0%} of each layer's experts serve "
            f"{hot:.0%} of expert reads{held}. Routing entropy {entropy:.2f} of uniform; the top "
            f"expert of a layer takes {top:.0%} on average; {unused} expert slots never used."
        )

    @staticmethod
    def _placement_text(
        model: LoadedModel | None, counts: np.ndarray | None, reply: dict[str, Any] | None
    ) -> str:
        if model is None:
            return ""
        measured = model.device_bytes
        where = ", ".join(f"{device} {format_bytes(size)}" for device, size in measured.items())
        layers = model.gpu_expert_layers
        n_layers = model.n_layers
        partial = (
            (model.partial_expert_layer, model.partial_gpu_share)
            if model.partial_expert_layer is not None
            else None
        )
        part = f" and {partial[1]:.0%} of layer {partial[0]}'s" if partial else ""
        text = (
            f"Placement: {model.placement}; expert layers on a GPU: "
            f"{len(layers)}{part} of {n_layers}. Measured at load: "
            f"{where or 'nothing reported'}."
        )
        shares = read_shares(counts, layers, partial) if counts is not None else None
        if shares is not None and (layers or partial):
            text += f" By the counted heat, {shares.describe()}."
        if model.predicted_generation_tokens_per_s is not None:
            text += (
                f" Predicted: {model.predicted_generation_tokens_per_s:.1f} tok/s generation, "
                f"{model.predicted_prompt_tokens_per_s or 0:,.0f} tok/s prompt"
            )
            if reply and reply.get("generated_tokens", 0) > 1:
                text += (
                    f"; measured in the last reply: {reply['generation_tokens_per_s']:.1f} "
                    f"tok/s generation, {reply['prompt_tokens_per_s']:,.0f} tok/s prompt"
                    + (" (with counting on, which slows it)" if reply.get("profiling") else "")
                )
            text += "."
        return text
