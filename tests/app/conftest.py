"""GUI test fixtures: fail any test that leaves a QThread running."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from PySide6.QtCore import QThread
from PySide6.QtWidgets import QApplication

from app.theme import apply_theme


@pytest.fixture(autouse=True)
def no_running_threads(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    started: list[QThread] = []
    original = QThread.start

    def start(self: QThread, *args: object) -> None:
        started.append(self)
        original(self, *args)

    monkeypatch.setattr(QThread, "start", start)
    yield
    leaked = [thread.objectName() or repr(thread) for thread in started if thread.isRunning()]
    for thread in started:
        thread.quit()
        thread.wait(5000)
    assert not leaked, f"threads still running after the test: {leaked}"


@pytest.fixture
def restore_theme() -> Iterator[QApplication]:
    """The app, put back to the system's palette after a test that changes it."""
    app = QApplication.instance()
    assert isinstance(app, QApplication)
    yield app
    apply_theme(app, "system")
    app.setStyleSheet("")
