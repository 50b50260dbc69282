"""Takes the chat, Experts and Settings → Computers screenshots in docs/: the real windows, in
light and dark.

Run under Xvfb from the repository root, after the README's test command (docs/screenshot.sh
does both):

    DISPLAY=:95 QT_QPA_PLATFORM=xcb .venv/bin/python docs/screenshots.py

The conversation with reasoning, code and two alternative answers is written into the
store first (no thinking model runs offline here), then shown by the real window with an
MoE made from SmolLM2 loaded, whose reply at the end is real. The Experts panel counts the
real routing of the synthetic test MoE (random weights, a skewed router: gibberish text,
but routing as skewed as a real model's).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MOE_CHAT_HOME", tempfile.mkdtemp(prefix="moe-chat-shots-"))

from PySide6.QtCore import QEventLoop, QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

QUESTION = "How do I sort a list of words by length in Python, shortest first?"
THINKING = (
    "The user wants words ordered by length. sorted() with key=len does it and keeps the "
    "original order for words of equal length, since Python's sort is stable. Worth a short "
    "example and a note on reverse=True."
)
ANSWER = (
    "Use **`sorted()`** with `key=len`:\n\n"
    "```python\n"
    'words = ["pear", "fig", "banana", "kiwi"]\n'
    "for word in sorted(words, key=len):\n"
    "    print(word)  # fig, pear, kiwi, banana\n"
    "```\n\n"
    "The sort is *stable*: words of the same length keep their order. For longest first, "
    "pass `reverse=True`. More in the [Sorting HOWTO](https://docs.python.org/3/howto/"
    "sorting.html)."
)
FIRST_ANSWER = "`sorted(words, key=len)` returns a new list, shortest first."


def wait(ms: int) -> None:
    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec()


def main() -> None:
    from app.chat_window import ChatWindow
    from app.theme import apply_theme
    from engine.session import SamplingSettings
    from engine.store import Store
    from engine.synthetic import SyntheticSpec, build_synthetic_moe
    from tests.helpers.models import build_upcycled_moe, smollm2_path

    app = QApplication(sys.argv)
    model = build_upcycled_moe(smollm2_path(), Path(tempfile.mkdtemp()) / "smollm2-moe.gguf")
    store = Store()
    chat = store.create_conversation("Sort words by length")
    question = store.add_message(chat.id, "user", QUESTION)
    stats = {"generated_tokens": 41, "generation_tokens_per_s": 31.4,
             "time_to_first_token": 0.21, "prompt_tokens_per_s": 412.0}  # fmt: skip
    first = store.start_reply(chat.id, "Qwen3-30B-A3B", parent_id=question.id)
    store.finish_reply(first.id, FIRST_ANSWER, {**stats, "reasoning_s": 2.1}, "Easy: key=len.")
    second = store.start_reply(chat.id, "Qwen3-30B-A3B", parent_id=question.id)
    store.finish_reply(second.id, ANSWER, {**stats, "generated_tokens": 118,
                                           "reasoning_s": 12.4}, THINKING)  # fmt: skip
    store.create_conversation("Trip planning: three days in Lisbon")
    store.add_message(store.conversations()[0].id, "user", "Plan three days in Lisbon.")
    window = ChatWindow(store, autoload=False)
    window.resize(1366, 720)
    window.show()
    loop = QEventLoop()
    window.model_ready.connect(lambda _m: loop.quit())
    window.load_model(str(model))
    loop.exec()
    window.conversation_list.setCurrentRow(1)  # the sorting chat
    window.reply_done.connect(lambda _s: loop.quit())
    window.input.setPlainText("Thanks! And in one line, without printing?")
    window.send()
    loop.exec()
    window.input.setPlainText("Is it fast for a million words?")
    window.view.widgets[second.id].reasoning_button.click()  # the reasoning, opened
    window.view.scroll_to(question.id)
    for theme in ("light", "dark"):
        apply_theme(app, theme)
        wait(300)
        window.grab().save(str(ROOT / "docs" / f"chat-{theme}.png"))
        print(f"wrote docs/chat-{theme}.png")
    synthetic = build_synthetic_moe(
        Path(tempfile.mkdtemp()) / "synthetic-moe.gguf",
        SyntheticSpec(n_layers=24, n_experts=32, n_experts_used=4),
    )
    window.load_model(str(synthetic))
    loop.exec()
    experts = window.open_experts()
    experts.profiling.setChecked(True)
    wait(500)
    window.sampling = SamplingSettings(max_tokens=400)
    window.send()
    loop.exec()
    experts.resize(1100, 720)
    experts.raise_()
    for theme in ("light", "dark"):
        apply_theme(app, theme)
        wait(300)
        experts.grab().save(str(ROOT / "docs" / f"experts-panel-{theme}.png"))
        print(f"wrote docs/experts-panel-{theme}.png")
    computers_page(app, window, store)
    window.close()
    store.close()


def computers_page(app: QApplication, window: object, store: object) -> None:
    """Settings → Computers with a real ``moe-chat worker`` on 127.0.0.2, tested, and one
    remembered computer where no worker runs (127.0.0.3)."""
    from app.theme import apply_theme
    from engine.computers import Computer, save_computers
    from tests.helpers.rpc_server import start_worker, stop_worker

    worker = start_worker("127.0.0.2")
    try:
        save_computers(store, [Computer("127.0.0.3:50052")])  # type: ignore[arg-type]
        dialog = window.open_settings()  # type: ignore[attr-defined]
        dialog.tabs.setCurrentWidget(dialog.computers)
        loop = QEventLoop()
        dialog.computers.tested.connect(lambda _e: loop.quit())
        dialog.computers.address.setText(worker.endpoint)
        dialog.computers.add()
        loop.exec()
        wait(2500)  # the other computer's check
        for theme in ("light", "dark"):
            apply_theme(app, theme)
            wait(300)
            dialog.grab().save(str(ROOT / "docs" / f"settings-computers-{theme}.png"))
            print(f"wrote docs/settings-computers-{theme}.png")
        dialog.close()
    finally:
        stop_worker(worker)


if __name__ == "__main__":
    main()
