"""The themes' check boxes: there to see, checked or not, in every palette."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QImage
from PySide6.QtWidgets import QApplication, QCheckBox, QListWidget, QListWidgetItem, QStyle
from pytestqt.qtbot import QtBot

from app.theme import apply_theme


def contrast(image: QImage, left: int, top: int, width: int, height: int) -> int:
    """How far the most different pixel of the area is from its top-left corner's lightness
    (the background the indicator is drawn on)."""
    background = image.pixelColor(left, top).lightness()
    return max(
        abs(image.pixelColor(x, y).lightness() - background)
        for x in range(left, left + width)
        for y in range(top, top + height)
    )


@pytest.mark.parametrize("theme", ["light", "dark", "system"])
def test_an_unchecked_box_can_be_seen(
    qtbot: QtBot, restore_theme: QApplication, theme: str
) -> None:
    apply_theme(restore_theme, theme)
    box = QCheckBox("Count which experts the router picks")
    items = QListWidget()
    item = QListWidgetItem("127.0.0.2:50052 — not tested yet")
    item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
    item.setCheckState(Qt.CheckState.Unchecked)
    items.addItem(item)
    for widget in (box, items):
        qtbot.addWidget(widget)
        widget.resize(320, 80)
        widget.show()
        qtbot.waitExposed(widget)

    indicator = box.style().pixelMetric(QStyle.PixelMetric.PM_IndicatorWidth)
    image = box.grab().toImage()
    # the box, on the window: its left edge to just past the indicator, the widget's height
    assert contrast(image, 0, 0, indicator + 2, image.height()) >= 30
    row = items.visualItemRect(item)
    image = items.viewport().grab().toImage()
    # the first row's indicator, on the list's base
    assert contrast(image, row.left(), row.top(), indicator + 6, row.height()) >= 30
