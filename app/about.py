"""Help → About: the version, which engine build this is (CPU, CUDA, Vulkan, Metal) and where
the user's data lives; "Copy" puts it all on the clipboard for a bug report."""

from __future__ import annotations

import html
import platform
import sys

import PySide6
from PySide6.QtCore import Qt, qVersion
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QHBoxLayout,
    QLabel,
    QVBoxLayout,
    QWidget,
)

from engine import package_version
from engine.devices import engine_build, list_devices
from engine.errors import MoeChatError
from engine.library import Library
from engine.paths import app_home, log_dir


def about_facts(library: Library) -> list[tuple[str, str]]:
    """(label, value) rows of the About box, in order."""
    try:
        build = engine_build()
        engine = build.describe()
        gpus = [f"{d.name}: {d.description}" for d in list_devices() if d.is_gpu]
        if build.accelerator is None:
            seen = "none (this is the CPU-only build; GPU builds are separate downloads)"
        else:
            seen = "; ".join(gpus) or f"none ({build.accelerator} found no usable GPU)"
    except MoeChatError as exc:
        engine, seen = f"could not be loaded: {exc}", "unknown"
    bundled = getattr(sys, "frozen", False)
    return [
        ("Version", package_version()),
        ("Engine", engine),
        ("GPUs the engine uses", seen),
        ("Qt", f"{qVersion()} (PySide6 {PySide6.__version__}), platform {_platform_name()}"),
        ("Python", f"{platform.python_version()} ({'bundled' if bundled else sys.executable})"),
        ("System", platform.platform()),
        ("Your data", str(app_home())),
        ("Models folder", str(library.models_dir)),
        ("Log files", str(log_dir())),
    ]


def _platform_name() -> str:
    app = QGuiApplication.instance()
    return QGuiApplication.platformName() if app is not None else "none"


class AboutDialog(QDialog):
    def __init__(self, library: Library, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("aboutDialog")
        self.setWindowTitle("About MoE Chat")
        self.facts = about_facts(library)

        icon = QLabel(self)
        icon.setPixmap(self.windowIcon().pixmap(96, 96))
        icon.setAlignment(Qt.AlignmentFlag.AlignTop)
        rows = "".join(
            f"<tr><td style='padding-right:12px'><b>{html.escape(label)}</b></td>"
            f"<td>{html.escape(value)}</td></tr>"
            for label, value in self.facts
        )
        self.text = QLabel(
            "<h2>MoE Chat</h2>"
            "<p>Chat with a large Mixture-of-Experts model on your own computer.</p>"
            f"<table>{rows}</table>"
            "<p>Licensed under the Apache License 2.0. The engine is llama.cpp (MIT).</p>",
            self,
        )
        self.text.setObjectName("aboutText")
        self.text.setWordWrap(True)
        self.text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.text.setMinimumWidth(560)

        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close, self)
        self.copy_button = buttons.addButton("Copy", QDialogButtonBox.ButtonRole.ActionRole)
        self.copy_button.setToolTip("Copy these details, e.g. for a bug report")
        self.copy_button.clicked.connect(self._on_copy_button_clicked)
        buttons.rejected.connect(self.reject)

        top = QHBoxLayout()
        top.addWidget(icon)
        top.addWidget(self.text, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(buttons)

    def details(self) -> str:
        return "\n".join(f"{label}: {value}" for label, value in self.facts)

    def _on_copy_button_clicked(self) -> None:
        QGuiApplication.clipboard().setText(self.details())
