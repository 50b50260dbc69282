"""Light, dark, or the system's palette, for the whole app.

The style sheet names palette roles, never fixed colours for text on the app's own
backgrounds, so whatever palette is in force every label stays readable. "System" keeps
the palette the desktop gave at start; "Light" and "Dark" set Fusion's with explicit colours
(Qt cannot switch every platform's native style between the two).
"""

from __future__ import annotations

from importlib import resources

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QGuiApplication, QPainter, QPalette
from PySide6.QtWidgets import QApplication, QProxyStyle, QStyle, QStyleOption, QWidget

THEME_KEY = "theme"
THEMES = {"system": "Follow the system", "light": "Light", "dark": "Dark"}

_system: tuple[str, QPalette] | None = None  # the style and palette the app started with

_DARK = {
    QPalette.ColorRole.Window: "#1f2125",
    QPalette.ColorRole.WindowText: "#e6e7e9",
    QPalette.ColorRole.Base: "#16181b",
    QPalette.ColorRole.AlternateBase: "#25282d",
    QPalette.ColorRole.ToolTipBase: "#2b2e33",
    QPalette.ColorRole.ToolTipText: "#e6e7e9",
    QPalette.ColorRole.PlaceholderText: "#9aa0a8",
    QPalette.ColorRole.Text: "#e6e7e9",
    QPalette.ColorRole.Button: "#2b2e33",
    QPalette.ColorRole.ButtonText: "#e6e7e9",
    QPalette.ColorRole.BrightText: "#ff6b6b",
    QPalette.ColorRole.Light: "#3a3e44",
    QPalette.ColorRole.Midlight: "#32363b",
    QPalette.ColorRole.Mid: "#4a4f57",
    QPalette.ColorRole.Dark: "#111214",
    QPalette.ColorRole.Shadow: "#000000",
    QPalette.ColorRole.Highlight: "#2f6fd1",
    QPalette.ColorRole.HighlightedText: "#ffffff",
    QPalette.ColorRole.Link: "#7ab4ff",
    QPalette.ColorRole.LinkVisited: "#c49bff",
}
_DARK_DISABLED = {
    QPalette.ColorRole.WindowText: "#7b8087",
    QPalette.ColorRole.Text: "#7b8087",
    QPalette.ColorRole.ButtonText: "#7b8087",
    QPalette.ColorRole.Base: "#1b1d20",
    QPalette.ColorRole.Button: "#25282c",
}


def dark_palette() -> QPalette:
    palette = QPalette()
    for role, colour in _DARK.items():
        palette.setColor(role, QColor(colour))
    for role, colour in _DARK_DISABLED.items():
        palette.setColor(QPalette.ColorGroup.Disabled, role, QColor(colour))
    return palette


class ClearFusion(QProxyStyle):
    """Fusion whose check boxes show on any palette. Fusion outlines a box in the window
    colour darkened, which vanishes on a dark base: an unchecked box in a list, or on a dark
    window, was not there to see (the Dark theme, or a dark desktop's palette with Fusion).
    This one draws the outline in the palette's Mid (Highlight with keyboard focus, as Fusion
    does)."""

    def __init__(self) -> None:
        super().__init__("Fusion")

    def drawPrimitive(
        self,
        element: QStyle.PrimitiveElement,
        option: QStyleOption,
        painter: QPainter,
        widget: QWidget | None = None,
    ) -> None:
        super().drawPrimitive(element, option, painter, widget)
        if element != QStyle.PrimitiveElement.PE_IndicatorCheckBox:
            return
        focused = QStyle.StateFlag.State_HasFocus | QStyle.StateFlag.State_KeyboardFocusChange
        role = QPalette.ColorRole.Highlight
        if option.state & focused != focused:
            role = QPalette.ColorRole.Mid
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        painter.translate(0.5, 0.5)  # on the pixels Fusion's own outline takes
        painter.setPen(option.palette.color(role))
        painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.drawRect(option.rect.adjusted(0, 0, -1, -1))
        painter.restore()


def style_sheet() -> str:
    return resources.files("resources").joinpath("style.qss").read_text("utf-8")


def apply_theme(app: QApplication, theme: str) -> None:
    """Use ``theme`` ("system", "light" or "dark") from now on, in every window."""
    global _system
    if _system is None:
        _system = (app.style().name(), QPalette(app.palette()))
    if theme == "dark":
        app.setStyle(ClearFusion())
        palette = dark_palette()
        scheme = Qt.ColorScheme.Dark
    elif theme == "light":
        app.setStyle(ClearFusion())
        palette = app.style().standardPalette()
        scheme = Qt.ColorScheme.Light
    else:
        app.setStyle(ClearFusion() if _system[0].lower() == "fusion" else _system[0])
        palette = QPalette(_system[1])
        scheme = Qt.ColorScheme.Unknown
    QGuiApplication.styleHints().setColorScheme(scheme)
    app.setPalette(palette)
    app.setStyleSheet(style_sheet())  # re-polished against the new palette
