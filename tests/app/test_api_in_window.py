"""The local API served from the window: Settings turns it on, the status bar shows it, and
its requests share the window's queue without touching the window's conversation."""

from __future__ import annotations

import threading
from pathlib import Path

import openai
import psutil
from pytestqt.qtbot import QtBot

from app.settings_dialog import SettingsDialog
from engine.host import QueueChanged
from tests.app.test_chat_window import LOAD_TIMEOUT_MS, load, open_window, type_and_send
from tests.helpers.windows import close

CLIENTS, REQUESTS = 8, 10
HELLO = [{"role": "user", "content": "hello"}]


def rss(pid: int | None) -> int:
    return psutil.Process(pid).memory_info().rss if pid else 0


def test_api_from_settings_under_load_leaves_the_window_alone(
    qtbot: QtBot, synthetic_model: Path
) -> None:
    window = open_window(qtbot)
    load(qtbot, window, synthetic_model)
    with qtbot.waitSignal(window.reply_done, timeout=LOAD_TIMEOUT_MS):
        type_and_send(qtbot, window, "keep this conversation")
    conversation = window.conversation_id
    before = [(m.id, m.role, m.content) for m in window.store.messages(conversation)]
    shown = window.view.shown_text()

    dialog = window.open_settings()
    assert isinstance(dialog, SettingsDialog)
    dialog.api_enabled.setChecked(True)
    dialog.api_port.setMinimum(0)  # 0: any free port, so tests never collide
    dialog.api_port.setValue(0)
    with qtbot.waitSignal(dialog.finished, timeout=LOAD_TIMEOUT_MS):
        dialog.buttons.button(dialog.buttons.StandardButton.Save).click()
    address = window.api.address
    assert address.startswith("http://127.0.0.1:")
    assert window.server_label.isVisible() and window.server_label.text() == f"API {address}/v1"

    seen_api: list[str] = []  # the status bar's queue line, after the window showed it

    def on_queue(queue: QueueChanged) -> None:
        if queue.running is not None and queue.running.client.startswith("API"):
            seen_api.append(window.queue_label.text())

    window.worker.queue_changed.connect(on_queue)
    client = openai.OpenAI(base_url=address + "/v1", api_key="x", max_retries=0, timeout=120)
    outcomes: list[str] = []
    lock = threading.Lock()

    def one_client(rounds: int) -> None:
        for _ in range(rounds):
            try:
                stream = client.chat.completions.create(
                    model="m", messages=HELLO, max_tokens=8, stream=True
                )
                text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
                outcome = "done" if text else "empty"
            except (openai.RateLimitError, openai.InternalServerError) as exc:
                outcome = f"refused {exc.status_code}"  # a clean 429 or 503
            with lock:
                outcomes.append(outcome)

    def run(rounds: int) -> None:
        threads = [threading.Thread(target=one_client, args=(rounds,)) for _ in range(CLIENTS)]
        for thread in threads:
            thread.start()
        qtbot.waitUntil(lambda: not any(t.is_alive() for t in threads), timeout=300_000)

    run(1)  # warm-up: every client connected once, every buffer allocated
    outcomes.clear()
    memory = rss(window.host.pid) + psutil.Process().memory_info().rss
    run(REQUESTS)
    grown = rss(window.host.pid) + psutil.Process().memory_info().rss - memory
    assert len(outcomes) == CLIENTS * REQUESTS
    assert all(o == "done" or o in ("refused 429", "refused 503") for o in outcomes), outcomes
    assert outcomes.count("done") >= CLIENTS  # the queue holds 8 clients' requests
    assert grown < 40 * 2**20, f"memory grew by {grown / 2**20:.1f} MiB"
    assert any(text.startswith("API: replying to 127.0.0.1") for text in seen_api)

    assert [(m.id, m.role, m.content) for m in window.store.messages(conversation)] == before
    assert window.view.shown_text() == shown
    with qtbot.waitSignal(window.reply_done, timeout=LOAD_TIMEOUT_MS):
        type_and_send(qtbot, window, "and now me")
    assert len(window.store.messages(conversation)) == len(before) + 2
    close(window)
    assert window.api.address == ""
