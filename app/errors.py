"""The one place an error becomes something the user sees (like Anki's show_exception).

An expected failure (a MoeChatError: a full disk, a file that is not a model) goes to the
chat window's banner as its sentence and what to do; anything else to a dialog that says the
conversations are saved, with the traceback under "Show Details". No ``repr`` of an
exception ever reaches the user.
"""

from __future__ import annotations

import logging
import traceback
from types import TracebackType

from engine.errors import MoeChatError, user_message

log = logging.getLogger(__name__)


def show_exception(error: BaseException, tb: TracebackType | None = None) -> None:
    """Show ``error`` to the user (the GUI thread only)."""
    from PySide6.QtWidgets import QApplication, QMessageBox

    from app.chat_window import ChatWindow

    app = QApplication.instance()
    windows = [
        w for w in QApplication.topLevelWidgets() if isinstance(w, ChatWindow) and w.isVisible()
    ]
    if isinstance(error, MoeChatError) and windows:
        log.warning("%s", error)
        windows[0].show_error(user_message(error))
        return
    log.error("unexpected error", exc_info=(type(error), error, tb or error.__traceback__))
    if app is None:
        traceback.print_exception(type(error), error, tb or error.__traceback__)
        return
    box = QMessageBox(QMessageBox.Icon.Critical, "MoE Chat hit a problem", user_message(error))
    box.setInformativeText(
        "Your conversations are saved. Details are in the log file; the app keeps running."
    )
    box.setDetailedText(
        "".join(traceback.format_exception(type(error), error, tb or error.__traceback__))
    )
    box.exec()
