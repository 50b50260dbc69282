"""View → Performance over time: the charts fill in from real replies and memory samples."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtGui import QColor
from pytestqt.qtbot import QtBot

from app.perf_panel import LINE_COLOURS
from engine.session import SamplingSettings
from tests.app.test_chat_controls import reply_to
from tests.app.test_chat_window import load, open_window
from tests.helpers.windows import close


def _has_colour(image: object, colour: str) -> bool:
    target = QColor(colour)
    for y in range(0, image.height(), 2):  # type: ignore[attr-defined]
        for x in range(0, image.width(), 2):  # type: ignore[attr-defined]
            pixel = image.pixelColor(x, y)  # type: ignore[attr-defined]
            if (abs(pixel.red() - target.red()) + abs(pixel.green() - target.green())
                    + abs(pixel.blue() - target.blue())) < 30:  # fmt: skip
                return True
    return False


def test_speed_and_memory_are_charted_since_the_model_was_loaded(
    qtbot: QtBot, synthetic_model: Path
) -> None:
    window = open_window(qtbot)
    window.perf_dock.show()
    load(qtbot, window, synthetic_model)
    assert window.perf.model_name == "Synthetic MoE (test model)"
    assert window.perf.generation.points == []  # a fresh chart per load
    window.sampling = SamplingSettings.greedy(16)
    rates = [reply_to(qtbot, window, text)["generation_tokens_per_s"] for text in ("a", "b")]
    assert [v for _t, v in window.perf.generation.points] == rates
    assert len(window.perf.prompt.points) == 2
    qtbot.waitUntil(lambda: len(window.perf.memory["RAM"].points) >= 2, timeout=5000)
    ram = window.perf.memory["RAM"].points[-1][1]
    assert 0.05 < ram < 64  # GB of the app and its engine
    image = window.perf.grab().toImage()
    assert _has_colour(image, LINE_COLOURS[0])  # the lines are drawn
    assert window.statusBar().isVisible() and "tok/s" in window.speed_label.text()  # stays
    load(qtbot, window, synthetic_model)
    assert window.perf.generation.points == []
    close(window)
