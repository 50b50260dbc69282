"""The chat window's controls: alternatives, edit, continue, switching chats mid-reply,
system prompt, reasoning switch, search, drafts, export, keyboard, layout, access names.

The window runs the real engine on the test models; dialogs that would block are answered
as a user would answer them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QAbstractButton,
    QAbstractScrollArea,
    QAbstractSpinBox,
    QApplication,
    QComboBox,
    QDialogButtonBox,
    QFileDialog,
    QInputDialog,
    QLabel,
    QLineEdit,
    QListWidget,
    QMessageBox,
    QPlainTextEdit,
    QWidget,
)
from pytestqt.qtbot import QtBot

from app.chat_window import ChatWindow
from app.sidebar import RUNNING_MARK
from app.system_prompt import SystemPromptDialog
from engine.session import SamplingSettings
from engine.store import Store
from tests.app.test_chat_window import LOAD_TIMEOUT_MS, load, open_window, type_and_send
from tests.helpers.windows import close


def reply_to(qtbot: QtBot, window: ChatWindow, text: str) -> dict:
    with qtbot.waitSignal(window.reply_done, timeout=LOAD_TIMEOUT_MS) as done:
        type_and_send(qtbot, window, text)
    return done.args[0]


def click(qtbot: QtBot, button: QAbstractButton) -> None:
    assert button.isVisible() and button.isEnabled(), button.accessibleName() or button.text()
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def show_active(qtbot: QtBot, window: ChatWindow) -> ChatWindow:
    """Shown and the active window (keyboard shortcuts go to the active window only)."""
    qtbot.addWidget(window, before_close_func=close)
    window.show()
    qtbot.waitExposed(window)
    window.activateWindow()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is window)
    return window


def titles(window: ChatWindow) -> list[str]:
    """The list of chats as shown (the running mark included)."""
    chats = window.conversation_list
    return [chats.item(row).text() for row in range(chats.count())]


def path_of(window: ChatWindow) -> list:
    assert window.conversation_id is not None
    return window.store.messages(window.conversation_id)


def test_tab_and_shift_tab_leave_the_input(qtbot: QtBot) -> None:
    window = open_window(qtbot)
    window.activateWindow()
    window.input.setFocus()
    qtbot.waitUntil(window.input.hasFocus)
    qtbot.keyClicks(window.input, "two")
    qtbot.keyClick(window.input, Qt.Key.Key_Tab)
    assert not window.input.hasFocus() and QApplication.focusWidget() is window.send_button
    assert window.input.toPlainText() == "two"  # no tab typed
    window.input.setFocus()
    qtbot.keyClick(window.input, Qt.Key.Key_Backtab, Qt.KeyboardModifier.ShiftModifier)
    assert QApplication.focusWidget() is window.view
    qtbot.keyClick(window.input, Qt.Key.Key_Return, Qt.KeyboardModifier.ShiftModifier)
    assert window.input.toPlainText() == "two\n"  # Shift+Enter is a new line
    close(window)


def test_switching_chats_mid_reply_loses_nothing(qtbot: QtBot, synthetic_model: Path) -> None:
    """The reply goes on while another chat is shown, the list marks it, and coming back
    shows it live; it ends word for word as the same reply written in view."""
    window = open_window(qtbot)
    load(qtbot, window, synthetic_model)
    window.sampling = SamplingSettings.greedy(600)
    reply_to(qtbot, window, "tell me everything")
    in_view = path_of(window)[-1].content
    first_chat = window.conversation_id

    window.open_conversation(window.store.create_conversation().id)
    received: list[str] = []
    seen: dict[str, object] = {}

    def on_token(piece: str) -> None:
        received.append(piece)
        if len(received) == 2:  # away, mid-reply: a new chat, and a draft typed there
            click(qtbot, window.new_button)
            qtbot.keyClicks(window.input, "meanwhile")
            seen["titles"] = titles(window)
            seen["away"] = window.view.shown_text()
        if len(received) == 3:  # back to the chat being written
            row = [window.conversation_list.item(i).data(Qt.ItemDataRole.UserRole)
                   for i in range(window.conversation_list.count())].index(replying)  # fmt: skip
            window.conversation_list.setCurrentRow(row)
            seen["back"] = window.view.shown_text()

    window.worker.token_received.connect(on_token)
    with qtbot.waitSignal(window.reply_done, timeout=LOAD_TIMEOUT_MS):
        type_and_send(qtbot, window, "tell me everything")
        replying = window.conversation_id
    assert replying != first_chat, len(received)
    assert "back" in seen, len(received)
    assert f"{RUNNING_MARK}tell me everything" in seen["titles"]  # type: ignore[operator]
    assert "tell me everything" not in str(seen["away"])
    assert "".join(received[:2]).strip()[:20] in str(seen["back"])  # the live text so far
    [_question, reply] = path_of(window)
    assert reply.complete and reply.content == in_view  # nothing lost while away
    assert reply.content.strip() in window.view.shown_text()
    assert not any(t.startswith(RUNNING_MARK) for t in titles(window))
    drafts = [c.draft for c in window.store.conversations()]
    assert "meanwhile" in drafts
    close(window)


def test_regenerate_keeps_alternatives_and_edit_resends_from_there(
    qtbot: QtBot, synthetic_model: Path
) -> None:
    window = open_window(qtbot)
    load(qtbot, window, synthetic_model)
    window.sampling = SamplingSettings(seed=1, max_tokens=12)
    reply_to(qtbot, window, "hello")
    [question, first] = path_of(window)
    window.sampling = SamplingSettings(seed=2, max_tokens=12)
    with qtbot.waitSignal(window.reply_done, timeout=LOAD_TIMEOUT_MS):
        click(qtbot, window.view.widgets[first.id].regenerate_button)
    [_, second] = path_of(window)
    assert second.id != first.id and second.alternatives == (first.id, second.id)
    widget = window.view.widgets[second.id]
    assert widget.alternative_label.text() == "2/2"
    click(qtbot, widget.previous_button)
    assert [m.id for m in path_of(window)] == [question.id, first.id]
    assert window.view.widgets[first.id].alternative_label.text() == "1/2"

    click(qtbot, window.view.widgets[question.id].edit_button)
    assert window.input.toPlainText() == "hello" and window.edit_bar.isVisible()
    window.input.selectAll()
    with qtbot.waitSignal(window.reply_done, timeout=LOAD_TIMEOUT_MS):
        type_and_send(qtbot, window, "hello again")
    [edited, reply] = path_of(window)
    assert edited.content == "hello again" and edited.alternatives == (question.id, edited.id)
    assert reply.parent_id == edited.id and not window.edit_bar.isVisible()
    assert window.view.widgets[edited.id].alternative_label.text() == "2/2"
    close(window)


def test_esc_stops_and_continue_goes_on_from_the_last_word(
    qtbot: QtBot, synthetic_model: Path
) -> None:
    window = open_window(qtbot)
    load(qtbot, window, synthetic_model)
    window.sampling = SamplingSettings.greedy(1000)  # far longer than Esc takes to arrive
    window.activateWindow()

    def on_piece(_piece: str) -> None:
        window.piece_shown.disconnect(on_piece)
        qtbot.keyClick(window.input, Qt.Key.Key_Escape)

    window.piece_shown.connect(on_piece)
    stats = reply_to(qtbot, window, "hello")
    assert stats["stop_reason"] == "cancelled"
    [_, stopped] = path_of(window)
    widget = window.view.widgets[stopped.id]
    with qtbot.waitSignal(window.reply_done, timeout=LOAD_TIMEOUT_MS) as done:
        click(qtbot, widget.continue_button)
    [_, continued] = path_of(window)
    assert continued.id == stopped.id and continued.complete
    assert continued.content.startswith(stopped.content)
    assert len(continued.content) > len(stopped.content)
    assert done.args[0]["generated_tokens"] > 0
    close(window)


def test_a_system_prompt_and_its_preset_reach_the_model(
    qtbot: QtBot, synthetic_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    window = open_window(qtbot)
    load(qtbot, window, synthetic_model)
    window.sampling = SamplingSettings.greedy(4)
    plain = reply_to(qtbot, window, "hello")["prompt_tokens"]
    click(qtbot, window.new_button)
    dialog = window.open_system_prompt()
    assert isinstance(dialog, SystemPromptDialog)
    qtbot.waitExposed(dialog)
    dialog.text.setPlainText("You are a pirate. Answer like one, always, in every reply.")
    monkeypatch.setattr(QInputDialog, "getText", lambda *a, **k: ("Pirate", True))
    click(qtbot, dialog.save_button)
    assert [p.name for p in window.store.presets()] == ["Pirate"]
    buttons = dialog.findChild(QDialogButtonBox)
    click(qtbot, buttons.button(QDialogButtonBox.StandardButton.Ok))
    assert window.system_button.text().startswith("System: You are a pirate")
    prompted = reply_to(qtbot, window, "hello")["prompt_tokens"]
    assert prompted > plain + 8  # the system prompt is in the prompt
    close(window)


def test_the_thinking_switch_is_per_chat_and_reaches_the_template(
    qtbot: QtBot, tmp_path: Path
) -> None:
    from engine.synthetic import build_arch_model
    from tests.helpers.templates import FAMILY_TEMPLATES, templates_dir

    template = (templates_dir() / FAMILY_TEMPLATES["qwen3moe"]).read_text()
    model = build_arch_model(tmp_path / "qwen3.gguf", "qwen3moe", chat_template=template)
    window = open_window(qtbot)
    load(qtbot, window, model)
    window.sampling = SamplingSettings.greedy(2)
    combo = window.reasoning_combo
    assert combo.isVisible()
    assert [combo.itemText(i) for i in range(combo.count())] == [
        "Thinking: default", "Thinking: on", "Thinking: off"
    ]  # fmt: skip
    default = reply_to(qtbot, window, "hi")["prompt_tokens"]
    combo.setCurrentIndex(2)
    combo.activated.emit(2)  # as a pick from the list does
    assert window.store.conversation(window.conversation_id).reasoning == "off"
    window.store.add_message(window.conversation_id, "user", "x")  # a fresh turn, same length
    off = reply_to(qtbot, window, "hi")["prompt_tokens"]
    assert off > default  # the template wrote the empty <think></think> for "off"
    click(qtbot, window.new_button)
    assert combo.currentText() == "Thinking: default"  # per chat
    close(window)


def _filled_store() -> tuple[Store, int, int, int]:
    store = Store()
    rivers = store.create_conversation("Rivers")
    store.add_message(rivers.id, "user", "Which river is the longest?")
    nile = store.add_message(rivers.id, "assistant", "The Nile, by most measures.")
    cooking = store.create_conversation("Cooking")
    store.add_message(cooking.id, "user", "How long do I boil an egg?")
    store.add_message(cooking.id, "assistant", "About nine minutes for a hard egg.")
    return store, rivers.id, nile.id, cooking.id


def test_search_keyboard_shortcuts_and_copy_last_reply(
    qtbot: QtBot, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, rivers, nile, cooking = _filled_store()
    window = show_active(qtbot, ChatWindow(store, autoload=False))
    assert window.conversation_id == cooking  # the most recent
    qtbot.keyClick(window.input, Qt.Key.Key_F, Qt.KeyboardModifier.ControlModifier)
    assert window.sidebar.search.hasFocus()
    qtbot.keyClicks(window.sidebar.search, "nil")
    qtbot.waitUntil(lambda: window.sidebar.results.count() == 1)
    assert "Rivers" in window.sidebar.results.item(0).text()
    assert "«Nile»" in window.sidebar.results.item(0).text()
    qtbot.keyClick(window.sidebar.search, Qt.Key.Key_Return)
    assert window.sidebar.results.hasFocus()
    qtbot.keyClick(window.sidebar.results, Qt.Key.Key_Return)
    assert window.conversation_id == rivers and nile in window.view.widgets
    qtbot.keyClick(window.sidebar.search, Qt.Key.Key_Escape)
    assert window.sidebar.search.text() == "" and window.conversation_list.isVisible()

    qtbot.keyClick(window.input, Qt.Key.Key_C, Qt.KeyboardModifier.ControlModifier
                   | Qt.KeyboardModifier.ShiftModifier)  # fmt: skip
    assert QGuiApplication.clipboard().text() == "The Nile, by most measures."

    monkeypatch.setattr(QInputDialog, "getText", lambda *a, **k: ("Great rivers", True))
    qtbot.keyClick(window.input, Qt.Key.Key_F2)
    assert store.conversation(rivers).title == "Great rivers"
    asked: list[str] = []

    def answer(_parent: object, _title: str, text: str) -> QMessageBox.StandardButton:
        asked.append(text)
        return QMessageBox.StandardButton.No

    monkeypatch.setattr(QMessageBox, "question", answer)
    window.conversation_list.setFocus()
    qtbot.keyClick(window.conversation_list, Qt.Key.Key_Delete)
    assert asked and "Great rivers" in asked[0]  # asked first; "No" keeps it
    assert rivers in [c.id for c in store.conversations()]
    monkeypatch.setattr(QMessageBox, "question", lambda *a: QMessageBox.StandardButton.Yes)
    qtbot.keyClick(window.conversation_list, Qt.Key.Key_Delete)
    assert [c.id for c in store.conversations()] == [cooking]
    close(window)


def test_drafts_stay_with_their_chat_and_a_chat_exports(
    qtbot: QtBot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, rivers, _nile, cooking = _filled_store()
    window = ChatWindow(store, autoload=False)
    qtbot.addWidget(window, before_close_func=close)
    window.show()
    qtbot.keyClicks(window.input, "and eggs in")
    window.conversation_list.setCurrentRow(1)  # Rivers
    assert window.conversation_id == rivers and window.input.toPlainText() == ""
    qtbot.keyClicks(window.input, "What about")
    window.conversation_list.setCurrentRow(0)
    assert window.input.toPlainText() == "and eggs in"
    target = tmp_path / "cooking"
    answer = (str(target), "JSON (*.json)")
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: answer)
    window.export_current()
    document = json.loads((tmp_path / "cooking.json").read_text("utf-8"))
    assert document["title"] == "Cooking" and len(document["messages"]) == 2
    window.close()
    again = ChatWindow(Store(store.path), autoload=False)
    qtbot.addWidget(again, before_close_func=close)
    assert again.conversation_id == cooking and again.input.toPlainText() == "and eggs in"
    assert again.store.conversation(rivers).draft == "What about"
    close(again)
    store.close()


@pytest.mark.parametrize("size", [(800, 600), (1366, 768)])
def test_the_window_works_at_laptop_and_small_sizes(qtbot: QtBot, size: tuple[int, int]) -> None:
    store, *_ = _filled_store()
    window = ChatWindow(store, autoload=False)
    qtbot.addWidget(window, before_close_func=close)
    long_name = "Model: " + "Qwen3-30B-A3B-Instruct-2507-UD-Q4_K_XL " * 6
    window.model_label.setText(long_name)
    window.resize(*size)
    window.show()
    qtbot.waitExposed(window)
    hint = window.minimumSizeHint()
    assert hint.width() <= 800 and hint.height() <= 600, hint
    assert (window.width(), window.height()) == size
    for widget in (window.send_button, window.stop_button, window.open_button,
                   window.models_button, window.system_button, window.input,
                   window.new_button, window.delete_button, window.model_label):  # fmt: skip
        corner = widget.mapTo(window, widget.rect().bottomRight())
        assert widget.isVisible() and window.rect().contains(corner), widget.objectName()
    assert window.model_label.toolTip() == long_name  # shortened on screen, whole on hover
    close(window)


def test_every_control_has_an_accessible_name(qtbot: QtBot, synthetic_model: Path) -> None:
    """What a screen reader says for each control, in the window, its dialogs and panels:
    its accessible name, or its label (a button's text, a form row's label)."""
    from PySide6.QtGui import QAccessible

    window = open_window(qtbot)
    load(qtbot, window, synthetic_model)
    manager = window.open_model_manager()
    with qtbot.waitSignal(manager.machine_ready, timeout=LOAD_TIMEOUT_MS):
        pass
    windows = [window, manager, window.open_settings(), window.open_system_prompt(),
               window.open_sampling(), window.open_experts()]  # fmt: skip
    kinds = (QAbstractButton, QLineEdit, QComboBox, QPlainTextEdit, QListWidget,
             QAbstractSpinBox)  # fmt: skip
    unnamed = []
    for top in windows:
        assert top is not None
        qtbot.waitExposed(top)
        for widget in top.findChildren(QWidget):
            inner = isinstance(widget.parentWidget(), (QAbstractSpinBox, QComboBox))
            if isinstance(widget, kinds) and widget.isVisibleTo(top) and not inner:
                interface = QAccessible.queryAccessibleInterface(widget)
                name = interface.text(QAccessible.Text.Name) if interface else ""
                if not name.strip():
                    unnamed.append(f"{type(top).__name__}: {type(widget).__name__} "
                                   f"{widget.objectName()} {widget.toolTip()[:30]}")  # fmt: skip
    assert unnamed == [], "\n".join(unnamed)
    assert window.view.accessibleName() == "Conversation"
    for top in windows[1:]:
        top.close()
    close(window)


def test_the_dark_appearance_is_chosen_in_settings_and_everything_stays_readable(
    qtbot: QtBot, restore_theme: QApplication
) -> None:
    store, *_ = _filled_store()
    window = show_active(qtbot, ChatWindow(store, autoload=False))
    dialog = window.open_settings()
    qtbot.waitExposed(dialog)
    dialog.theme.setCurrentIndex(dialog.theme.findData("dark"))
    click(qtbot, dialog.buttons.button(QDialogButtonBox.StandardButton.Save))
    assert store.get_setting("theme") == "dark"
    qtbot.wait(50)
    image = window.view.grab().toImage()
    assert image.pixelColor(image.width() // 2, image.height() - 10).lightness() < 60
    status = window.statusBar().grab().toImage()
    background = status.pixelColor(2, status.height() // 2).lightness()
    for label in (window.speed_label, window.ram_label, window.context_label):
        ink = label.palette().color(label.foregroundRole()).lightness()
        assert abs(ink - background) > 100, label.text()
    close(window)


def test_sampling_is_set_per_model_from_its_own_defaults(
    qtbot: QtBot, synthetic_model: Path, tmp_path: Path
) -> None:
    from app.sampling_dialog import SamplingDialog
    from tests.helpers.models import with_sampling

    model = with_sampling(synthetic_model, tmp_path / "sampled.gguf", {"temp": 0.25, "top_k": 7})
    window = open_window(qtbot)
    assert not window.sampling_button.isEnabled()  # nothing to set before a model
    load(qtbot, window, model)
    assert (window.sampling.temperature, window.sampling.top_k) == (0.25, 7)
    click(qtbot, window.sampling_button)
    dialog = window.findChild(SamplingDialog)
    assert dialog is not None
    qtbot.waitExposed(dialog)
    assert "model file" in dialog.findChild(QLabel).text()
    assert dialog.temperature.value() == 0.25 and dialog.seed.text() == "random"
    dialog.temperature.setValue(0.0)  # greedy: this model then writes to the limit
    dialog.max_tokens.setValue(20)
    click(qtbot, dialog.buttons.button(QDialogButtonBox.StandardButton.Ok))
    assert window.store.get_setting("sampling") == {
        "sampled.gguf": {"temperature": 0.0, "max_tokens": 20}
    }  # only what differs from the model's defaults
    assert reply_to(qtbot, window, "hello")["generated_tokens"] == 20  # used by the next reply
    load(qtbot, window, synthetic_model)  # another model: its own defaults
    assert window.sampling == SamplingSettings()
    load(qtbot, window, model)  # back: the change is remembered
    assert (window.sampling.temperature, window.sampling.top_k) == (0.0, 7)
    dialog = window.open_sampling()
    assert dialog is not None
    click(qtbot, dialog.reset_button)
    assert dialog.temperature.value() == 0.25 and dialog.max_tokens.value() == 1024
    dialog.reject()
    close(window)


def _parents(widget: QWidget) -> list[QWidget]:
    found = []
    while (widget := widget.parentWidget()) is not None:
        found.append(widget)
    return found


def test_every_dialog_fits_a_1366x768_laptop(qtbot: QtBot, synthetic_model: Path) -> None:
    """About 1366x720 is left for a window under the title bar and the panel."""
    from app.about import AboutDialog
    from app.sampling_dialog import SamplingDialog
    from tests.helpers.windows import TIMEOUT_MS

    window = open_window(qtbot)
    load(qtbot, window, synthetic_model)
    manager = window.open_model_manager()
    with qtbot.waitSignal(manager.machine_ready, timeout=TIMEOUT_MS):
        pass
    dialogs = [manager, window.open_settings(), window.open_system_prompt(),
               window.open_sampling(), window.open_about()]  # fmt: skip
    assert isinstance(dialogs[3], SamplingDialog) and isinstance(dialogs[4], AboutDialog)
    for dialog in dialogs:
        assert dialog is not None
        qtbot.waitExposed(dialog)
        need = dialog.minimumSizeHint()
        assert need.width() <= 1366 and need.height() <= 720, (type(dialog).__name__, need)
        dialog.resize(min(dialog.width(), 1366), min(dialog.height(), 720))
        qtbot.wait(10)
        for button in dialog.findChildren(QAbstractButton):
            scrolled = any(isinstance(parent, QAbstractScrollArea) for parent in _parents(button))
            if button.isVisibleTo(dialog) and not scrolled:  # (a table's rows scroll)
                corner = button.mapTo(dialog, button.rect().bottomRight())
                assert dialog.rect().contains(corner), (type(dialog).__name__, button.text())
    assert manager.load_button.isVisible()
    for dialog in dialogs[1:]:
        dialog.close()
    close(window)


def test_gpt_oss_gets_a_reasoning_effort_control(qtbot: QtBot, tmp_path: Path) -> None:
    from app.chat_window import template_options
    from engine.chat_format import TemplateOptions
    from engine.synthetic import build_arch_model
    from tests.helpers.templates import FAMILY_TEMPLATES, templates_dir

    template = (templates_dir() / FAMILY_TEMPLATES["gpt-oss"]).read_text()
    model = build_arch_model(tmp_path / "gpt-oss.gguf", "gpt-oss", chat_template=template)
    window = open_window(qtbot)
    load(qtbot, window, model)
    combo = window.reasoning_combo
    assert combo.isVisible() and combo.itemText(3) == "Reasoning: high"
    combo.setCurrentIndex(3)
    combo.activated.emit(3)
    conversation = window.store.conversation(window.conversation_id)
    assert conversation.reasoning == "high"
    supported = window.model.template_options
    assert template_options(conversation.reasoning, supported) == TemplateOptions(
        reasoning_effort="high"
    )
    # A setting the loaded model does not read is left out, never sent to its template.
    assert template_options("off", supported) == TemplateOptions()
    assert template_options("high", ("enable_thinking",)) == TemplateOptions()
    window.sampling = SamplingSettings.greedy(4)
    reply_to(qtbot, window, "hi")  # the template takes it
    close(window)


def test_open_model_starts_in_the_last_models_folder_else_the_models_folder_else_home(
    qtbot: QtBot, tmp_path: Path
) -> None:
    from app.chat_window import LAST_MODEL_KEY

    window = open_window(qtbot)
    models = window.library.models_dir  # made when first asked for
    assert window.open_folder() == str(models)  # never "/"
    window.store.set_setting(LAST_MODEL_KEY, str(tmp_path / "elsewhere" / "m.gguf"))
    assert window.open_folder() == str(models)  # that folder is gone
    (tmp_path / "elsewhere").mkdir()
    assert window.open_folder() == str(tmp_path / "elsewhere")
    close(window)


def test_the_context_meter_counts_the_last_reply(qtbot: QtBot, synthetic_model: Path) -> None:
    window = open_window(qtbot)
    model = load(qtbot, window, synthetic_model)
    assert window.context_label.text() == ""  # nothing replied yet
    window.sampling = SamplingSettings.greedy(6)
    stats = reply_to(qtbot, window, "hello")
    used = stats["prompt_tokens"] + stats["generated_tokens"]
    assert window.context_label.text() == f"Context: {used:,} of {model.n_ctx:,} tokens"
    click(qtbot, window.new_button)
    assert window.context_label.text() == ""  # per chat
    close(window)
