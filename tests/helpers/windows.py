"""Opening and closing the real windows in GUI tests."""

from __future__ import annotations

from pytestqt.qtbot import QtBot

from app.chat_window import ChatWindow
from app.model_manager import ModelManager
from engine.library import Library
from engine.store import Store

TIMEOUT_MS = 60_000


def open_manager(qtbot: QtBot, library: Library | None = None) -> tuple[ChatWindow, ModelManager]:
    """The chat window and its model manager, once the machine has been examined."""
    window = ChatWindow(Store(), autoload=False, library=library)
    qtbot.addWidget(window, before_close_func=close)
    window.show()
    manager = window.open_model_manager()
    with qtbot.waitSignal(manager.machine_ready, timeout=TIMEOUT_MS):
        pass
    return window, manager


def close(window: ChatWindow) -> None:
    """Close the window and its store. Windows opened here are closed this way at the end of
    the test even when it fails (qtbot's teardown), so a failed assert leaks nothing."""
    window.close()
    window.store.close()
