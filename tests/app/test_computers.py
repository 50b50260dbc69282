"""Settings → Computers, the model manager's machine box, and a worker lost mid-reply, with
real ``moe-chat worker`` processes on 127.0.0.2 and 127.0.0.3."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from pytestqt.qtbot import QtBot

from app.chat_window import ChatWindow
from app.settings_dialog import SettingsDialog
from engine.computers import RAM_LIMIT_KEY, Computer, load_computers, save_computers
from engine.gguf_file import read_gguf
from engine.planner import ModelShape, Settings, ram_for_layers
from engine.session import SamplingSettings
from engine.store import Store
from tests.helpers.rpc_server import Worker, start_worker, stop_worker
from tests.helpers.windows import TIMEOUT_MS, close, open_manager


@pytest.fixture
def worker() -> Iterator[Worker]:
    started = start_worker("127.0.0.2")
    yield started
    stop_worker(started)


def open_window(qtbot: QtBot) -> ChatWindow:
    window = ChatWindow(Store(), autoload=False)
    qtbot.addWidget(window, before_close_func=close)
    window.show()
    qtbot.waitExposed(window)
    return window


def open_computers(qtbot: QtBot, window: ChatWindow) -> SettingsDialog:
    dialog = window.open_settings()
    assert dialog.computers is not None
    with qtbot.waitSignal(dialog.computers.checked, timeout=TIMEOUT_MS):
        pass
    dialog.tabs.setCurrentWidget(dialog.computers)
    return dialog


def test_adding_a_computer_tests_it_and_remembers_it(qtbot: QtBot, worker: Worker) -> None:
    window = open_window(qtbot)
    dialog = open_computers(qtbot, window)
    page = dialog.computers
    assert page is not None
    qtbot.keyClicks(page.address, worker.endpoint)
    with qtbot.waitSignal(page.tested, timeout=TIMEOUT_MS):
        qtbot.keyClick(page.address, Qt.Key.Key_Return)  # Add, then Test
    details = page.details.text()
    assert "round trip" in details and "RAM" in details and "/s there" in details
    line = page.list.item(0).text()
    assert line.startswith(f"{worker.endpoint} — up") and " ms, " in line
    (saved,) = load_computers(window.store)
    assert saved.endpoint == worker.endpoint and saved.enabled and saved.tested
    assert saved.devices[0].kind == "CPU" and saved.devices[0].latency_s is not None
    dialog.close()

    # A second look (as after a restart) finds it up, with its devices and its link.
    again = open_computers(qtbot, window)
    assert again.computers is not None
    assert again.computers.list.item(0).text().startswith(f"{worker.endpoint} — up — ")
    again.close()


def test_bad_and_unreachable_addresses_are_sentences_and_block_nothing(qtbot: QtBot) -> None:
    window = open_window(qtbot)
    save_computers(window.store, [Computer("127.0.0.3:9")])  # nothing listens there
    dialog = open_computers(qtbot, window)
    page = dialog.computers
    assert page is not None
    assert "unreachable" in page.list.item(0).text()
    page.address.setText("[::1]:50052")
    page.add()
    assert "IPv6" in page.details.text() and page.list.count() == 1
    page.address.setText("127.0.0.3:9")
    page.add()
    assert "in the list already" in page.details.text()
    page.list.setCurrentRow(0)
    with qtbot.waitSignal(page.tested, timeout=TIMEOUT_MS):
        qtbot.mouseClick(page.test_button, Qt.MouseButton.LeftButton)
    assert "could not be reached" in page.details.text()
    qtbot.mouseClick(page.remove_button, Qt.MouseButton.LeftButton)
    assert page.list.count() == 0 and load_computers(window.store) == []
    dialog.close()


def test_the_model_manager_lists_the_other_computers_devices(qtbot: QtBot, worker: Worker) -> None:
    from engine.rpc import check_worker

    store = Store()
    save_computers(store, [Computer(worker.endpoint).with_report(check_worker(worker.endpoint)),
                           Computer("127.0.0.3:9")])  # fmt: skip
    store.close()
    _window, manager = open_manager(qtbot)
    text = manager.machine_label.text()
    assert f"<b>Other computer</b> {worker.endpoint}: " in text and "(RAM, " in text
    assert "round trip" in text
    assert "<b>Other computer</b> 127.0.0.3:9: unreachable" in text
    assert manager.machine is not None and manager.machine.remotes
    assert manager.machine.remotes[0].endpoint == worker.endpoint


def test_a_worker_killed_mid_reply_keeps_the_reply_and_offers_this_computer_alone(
    qtbot: QtBot, upcycled_moe: Path, worker: Worker
) -> None:
    window = open_window(qtbot)
    save_computers(window.store, [Computer(worker.endpoint)])
    shape = ModelShape.from_gguf(read_gguf(upcycled_moe))
    # This computer keeps a third of the layers: the rest has to go to the worker.
    limit = ram_for_layers(shape, Settings(n_ctx=4096), shape.n_layers // 3)
    window.store.set_setting(RAM_LIMIT_KEY, limit)
    with qtbot.waitSignal(window.model_ready, timeout=TIMEOUT_MS) as loaded:
        window.load_model(str(upcycled_moe))
    model = loaded.args[0]
    assert model.workers == (worker.endpoint,)
    assert f"on {worker.endpoint}" in window.model_label.text()

    shown: list[str] = []

    def on_piece(piece: str) -> None:
        shown.append(piece)
        if len(shown) == 2:
            worker.process.send_signal(signal.SIGKILL)

    window.piece_shown.connect(on_piece)
    # Greedy, this reply runs to the limit (600 tokens), so it cannot end before the worker
    # dies under it; "Count from one to two hundred" ended after ~15-30 tokens here, at times
    # before the shown pieces caught up with the engine.
    window.sampling = SamplingSettings.greedy(600)
    with qtbot.waitSignal(window.model_failed, timeout=TIMEOUT_MS) as failed:
        window.input.setPlainText("Write a long story about a lighthouse keeper and the sea.")
        window.send()
    assert f"The computer at {worker.endpoint} stopped answering" in failed.args[0]
    assert window.error_banner.isVisible()
    assert window.reload_button.text() == "Load on this computer alone"
    [_question, reply] = window.store.messages(window.conversation_id)
    assert reply.content.strip() and not reply.complete

    with qtbot.waitSignal(window.model_ready, timeout=TIMEOUT_MS) as reloaded:
        qtbot.mouseClick(window.reload_button, Qt.MouseButton.LeftButton)
    assert reloaded.args[0].workers == ()
    assert window.store.messages(window.conversation_id)[-1].content == reply.content
