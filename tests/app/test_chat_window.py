"""The chat window, driven offscreen through its real widgets, with the real engine behind it.

Tests wait on the window's own signals, which fire on the GUI thread once the window has
taken in what the model host (a child process) reported.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication, QKeySequence
from PySide6.QtWidgets import QInputDialog, QMessageBox
from pytestqt.qtbot import QtBot

from app.about import AboutDialog
from app.chat_window import LAST_MODEL_KEY, ChatWindow
from engine import package_version
from engine.devices import engine_build
from engine.host import LoadedModel
from engine.session import SamplingSettings
from engine.store import Store
from tests.helpers.models import aborting_model
from tests.helpers.windows import close

LOAD_TIMEOUT_MS = 30_000


def open_window(qtbot: QtBot, autoload: bool = False) -> ChatWindow:
    window = ChatWindow(Store(), autoload=autoload)
    qtbot.addWidget(window, before_close_func=close)
    window.show()
    qtbot.waitExposed(window)
    return window


def load(qtbot: QtBot, window: ChatWindow, path: Path) -> LoadedModel:
    with qtbot.waitSignal(window.model_ready, timeout=LOAD_TIMEOUT_MS) as blocker:
        window.load_model(str(path))
    return blocker.args[0]


def type_and_send(qtbot: QtBot, window: ChatWindow, text: str) -> None:
    window.input.setFocus()
    qtbot.keyClicks(window.input, text)
    qtbot.keyClick(window.input, Qt.Key.Key_Return)


def test_a_reply_streams_in_and_the_stats_update(qtbot: QtBot, synthetic_model: Path) -> None:
    window = open_window(qtbot)
    model = load(qtbot, window, synthetic_model)
    assert model.n_experts == 8
    assert "Synthetic MoE" in window.model_label.text()
    pieces: list[str] = []
    window.piece_shown.connect(pieces.append)
    with qtbot.waitSignal(window.reply_done, timeout=LOAD_TIMEOUT_MS) as finished:
        type_and_send(qtbot, window, "hello")
        assert window.input.toPlainText() == ""
        assert window.stop_button.isEnabled() and not window.send_button.isEnabled()
    stats = finished.args[0]
    # The first piece is shown at once, the rest in batches (one GUI update per 50 ms).
    assert len(pieces) >= 2 and stats["generated_tokens"] >= len(pieces)
    shown = window.view.shown_text()
    assert "hello" in shown and "".join(pieces).strip() in shown
    assert "tok/s" in shown  # the reply's stats line
    assert float(window.speed_label.text().split()[0]) > 0
    assert window.ttft_label.text().startswith("first token ")
    assert window.ram_label.text().startswith("RAM ") and "B (" in window.ram_label.text()
    assert window.send_button.isEnabled() and not window.stop_button.isEnabled()
    [conversation] = window.store.conversations()
    assert conversation.title == "hello"
    assert window.conversation_list.item(0).text() == "hello"
    close(window)


def test_stop_halts_the_reply(qtbot: QtBot, synthetic_model: Path) -> None:
    window = open_window(qtbot)
    load(qtbot, window, synthetic_model)
    # Greedy, this reply runs to the limit, so only Stop can end it early (a sampled one may
    # end by itself before the click reaches the engine's process).
    window.sampling = SamplingSettings.greedy(1024)
    received: list[str] = []

    def on_token(piece: str) -> None:
        received.append(piece)
        if len(received) == 1:  # the first token is on screen: the reply is streaming
            qtbot.mouseClick(window.stop_button, Qt.MouseButton.LeftButton)

    window.piece_shown.connect(on_token)
    with qtbot.waitSignal(window.reply_done, timeout=LOAD_TIMEOUT_MS) as finished:
        type_and_send(qtbot, window, "tell me a long story")
    stats = finished.args[0]
    assert stats["stop_reason"] == "cancelled"
    assert stats["generated_tokens"] < 1024  # the default limit
    assert "stopped" in window.view.shown_text()
    [reply] = [m for m in window.store.messages(window.conversation_id) if m.role == "assistant"]
    assert reply.complete and reply.stats["stop_reason"] == "cancelled"
    close(window)


def test_a_killed_engine_keeps_the_partial_reply_and_offers_to_load_again(
    qtbot: QtBot, synthetic_model: Path
) -> None:
    window = open_window(qtbot)
    load(qtbot, window, synthetic_model)
    window.sampling = SamplingSettings.greedy(2000)  # no early end: it runs on when killed
    pid = window.host.pid
    shown: list[str] = []

    def on_piece(piece: str) -> None:
        shown.append(piece)
        if len(shown) == 1:  # the reply is streaming: the engine dies under it
            os.kill(pid, signal.SIGKILL)

    window.piece_shown.connect(on_piece)
    with qtbot.waitSignal(window.model_failed, timeout=LOAD_TIMEOUT_MS) as failed:
        type_and_send(qtbot, window, "tell me a long story")
    assert "engine stopped unexpectedly" in failed.args[0]
    assert window.error_banner.isVisible() and "signal 9" in window.error_label.text()
    assert window.reload_button.isVisible()
    assert window.send_button.isEnabled() and not window.stop_button.isEnabled()
    [question, reply] = window.store.messages(window.conversation_id)
    assert question.content == "tell me a long story"
    assert reply.content.strip() and "".join(shown).strip().startswith(reply.content.strip()[:8])
    assert not reply.complete and "interrupted" in window.view.shown_text()

    with qtbot.waitSignal(window.model_ready, timeout=LOAD_TIMEOUT_MS):
        qtbot.mouseClick(window.reload_button, Qt.MouseButton.LeftButton)
    assert window.host.pid not in (None, pid) and not window.error_banner.isVisible()
    with qtbot.waitSignal(window.reply_done, timeout=LOAD_TIMEOUT_MS):
        type_and_send(qtbot, window, "go on")
    assert len(window.store.messages(window.conversation_id)) == 4
    close(window)


def test_a_model_that_aborts_the_engine_is_reported_and_the_app_goes_on(
    qtbot: QtBot, synthetic_model: Path, tmp_path: Path
) -> None:
    window = open_window(qtbot)
    broken = aborting_model(synthetic_model, tmp_path / "aborts.gguf")
    with qtbot.waitSignal(window.model_failed, timeout=LOAD_TIMEOUT_MS) as failed:
        window.load_model(str(broken))
    assert "stopped while loading aborts.gguf" in failed.args[0]
    assert "GGML_ASSERT" in window.error_label.text()
    assert not window.reload_button.isVisible()  # loading it again would abort again
    assert window.open_button.isEnabled() and "No model loaded" in window.model_label.text()
    load(qtbot, window, synthetic_model)
    with qtbot.waitSignal(window.reply_done, timeout=LOAD_TIMEOUT_MS):
        type_and_send(qtbot, window, "hello")
    close(window)


def test_conversations_survive_closing_and_reopening(qtbot: QtBot, synthetic_model: Path) -> None:
    window = open_window(qtbot)
    load(qtbot, window, synthetic_model)
    with qtbot.waitSignal(window.reply_done, timeout=LOAD_TIMEOUT_MS):
        type_and_send(qtbot, window, "remember me")
    reply_text = window.store.messages(window.conversation_id)[-1].content
    close(window)

    again = open_window(qtbot, autoload=True)
    assert again.conversation_list.count() == 1
    assert again.conversation_list.item(0).text() == "remember me"
    shown = again.view.shown_text()
    assert "remember me" in shown and reply_text.strip() in shown
    # The model file is remembered and loaded again at start.
    assert again.store.get_setting(LAST_MODEL_KEY) == str(synthetic_model)
    qtbot.waitUntil(lambda: again.model is not None, timeout=LOAD_TIMEOUT_MS)
    close(again)


def test_a_bad_model_file_shows_a_readable_error(qtbot: QtBot, tmp_path: Path) -> None:
    bad = tmp_path / "notes.gguf"
    bad.write_text("not a model")
    window = open_window(qtbot)
    with qtbot.waitSignal(window.model_failed, timeout=LOAD_TIMEOUT_MS):
        window.load_model(str(bad))
    assert window.error_banner.isVisible()
    message = window.error_label.text()
    assert "notes.gguf is not a GGUF model file" in message
    assert "Traceback" not in message
    assert window.model_label.text() == "No model loaded"
    assert window.open_button.isEnabled()
    close(window)


def test_sending_without_a_model_explains_what_to_do(qtbot: QtBot) -> None:
    window = open_window(qtbot)
    type_and_send(qtbot, window, "hello?")
    assert window.error_banner.isVisible()
    assert "Open model" in window.error_label.text()
    assert window.input.toPlainText() == "hello?"  # nothing typed is lost
    close(window)


def test_new_rename_and_delete_conversations(qtbot: QtBot, monkeypatch: pytest.MonkeyPatch) -> None:
    window = open_window(qtbot)
    assert window.conversation_list.count() == 1
    qtbot.mouseClick(window.new_button, Qt.MouseButton.LeftButton)
    assert window.conversation_list.count() == 1  # the chat shown is still empty: reused
    qtbot.keyClicks(window.input, "a draft")
    qtbot.mouseClick(window.new_button, Qt.MouseButton.LeftButton)
    assert window.conversation_list.count() == 2 and window.input.toPlainText() == ""
    # The modal dialogs are answered as a user would.
    monkeypatch.setattr(QInputDialog, "getText", lambda *a, **k: ("Trip planning", True))
    qtbot.mouseClick(window.rename_button, Qt.MouseButton.LeftButton)
    assert window.conversation_list.currentItem().text() == "Trip planning"
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)
    qtbot.mouseClick(window.delete_button, Qt.MouseButton.LeftButton)
    titles = [c.title for c in window.store.conversations()]
    assert "Trip planning" not in titles and len(titles) == 1
    close(window)


def test_an_expected_error_in_a_slot_lands_in_the_banner(
    qtbot: QtBot, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from app.main import _install_excepthook
    from engine.errors import StoreError

    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # restored after the test
    _install_excepthook()
    window = open_window(qtbot)
    error = StoreError("Saving failed: database or disk is full.", "Check free disk space.")
    sys.excepthook(StoreError, error, None)
    assert window.error_banner.isVisible()
    assert window.error_label.text() == str(error)
    close(window)


def test_help_about_names_the_engine_build_and_copies_the_details(qtbot: QtBot) -> None:
    window = open_window(qtbot)
    menus = {action.text().replace("&", ""): action.menu() for action in window.menuBar().actions()}
    about = next(a for a in menus["Help"].actions() if a.text() == "&About MoE Chat")
    about.trigger()
    dialog = window.findChild(AboutDialog)
    assert dialog is not None
    qtbot.waitExposed(dialog)
    facts = dict(dialog.facts)
    build = engine_build()  # the build these tests run on: CPU-only here and in CI, any elsewhere
    assert facts["Engine"] == build.describe()
    assert facts["Engine"].startswith("llama.cpp via llama-cpp-python 0.3.36: ")
    if build.accelerator is None:
        assert "CPU-only build" in facts["GPUs the engine uses"]
    else:
        assert facts["GPUs the engine uses"] not in ("", "unknown")
    assert facts["Version"] == package_version()
    assert "0.3.36" in dialog.text.text()
    qtbot.mouseClick(dialog.copy_button, Qt.MouseButton.LeftButton)
    copied = QGuiApplication.clipboard().text()
    assert copied.splitlines()[0] == f"Version: {package_version()}"
    assert f"Models folder: {window.library.models_dir}" in copied
    dialog.close()
    close(window)


def test_file_menu_quit_closes_the_window(qtbot: QtBot) -> None:
    window = open_window(qtbot)
    menus = {action.text().replace("&", ""): action.menu() for action in window.menuBar().actions()}
    quit_action = next(a for a in menus["File"].actions() if a.text() == "&Quit")
    assert quit_action.shortcut().matches(QKeySequence(QKeySequence.StandardKey.Quit))
    quit_action.trigger()
    qtbot.waitUntil(lambda: not window.isVisible())
    close(window)


def test_a_background_job_that_fails_reaches_the_user_by_default(qtbot: QtBot) -> None:
    """run_in_background with no failure handler of its own shows the error through the one
    presenter: an expected failure as its sentence in the banner."""
    from app.background import run_in_background
    from engine.errors import StoreError

    window = open_window(qtbot)

    def work() -> None:
        raise StoreError("Saving failed: database or disk is full.", "Check free disk space.")

    run_in_background(work, lambda _result: None, window)
    qtbot.waitUntil(window.error_banner.isVisible)
    assert window.error_label.text() == (
        "Saving failed: database or disk is full. Check free disk space."
    )
    close(window)
