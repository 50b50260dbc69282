"""The conversation view on its own: markdown, code blocks, reasoning, streaming, following,
links and the palette, driven offscreen through its real widgets."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, ClassVar

import pytest
from PySide6.QtCore import QObject, QPoint, Qt, QUrl, Slot
from PySide6.QtGui import QDesktopServices, QGuiApplication
from PySide6.QtWidgets import QApplication, QLabel
from pytestqt.qtbot import QtBot

from app.message_view import MessageView, _CodeBlock, _TextBlock
from app.theme import apply_theme
from engine.store import StoredMessage

CODE = 'def greet(name):\n    if name:\n        print(f"hi {name}")  # two  spaces\n\treturn 1'


def message(id: int, role: str, content: str, **changes: Any) -> StoredMessage:
    base = StoredMessage(
        id=id, conversation_id=1, role=role, content=content, reasoning="", model_name="Qwen3",
        stats=None, complete=True, created_at=0.0, alternatives=(id,),
    )  # fmt: skip
    return replace(base, **changes)


@pytest.fixture
def view(qtbot: QtBot) -> MessageView:
    widget = MessageView()
    qtbot.addWidget(widget)
    widget.resize(700, 500)
    widget.show()
    qtbot.waitExposed(widget)
    return widget


def blocks(view: MessageView, message_id: int) -> list[Any]:
    return list(view.widgets[message_id].blocks)


def test_a_code_block_keeps_every_space_as_a_user_message_and_as_a_reply(
    qtbot: QtBot, view: MessageView
) -> None:
    fenced = f"Here:\n\n```python\n{CODE}\n```\n\nThat is all."
    view.show_messages([message(1, "user", fenced), message(2, "assistant", fenced)])
    for message_id in (1, 2):
        text, code, after = blocks(view, message_id)
        assert isinstance(text, _TextBlock) and isinstance(after, _TextBlock)
        assert isinstance(code, _CodeBlock)
        assert code.code.toPlainText() == CODE  # what is shown, every space and tab
        assert code.language.text() == "python"
        assert "<span style=" in code.code.toHtml()  # highlighted
        qtbot.mouseClick(code.copy_button, Qt.MouseButton.LeftButton)
        assert QGuiApplication.clipboard().text() == CODE
        assert code.copy_button.text() == "Copied"
    # A long line scrolls inside its block; the conversation never scrolls sideways.
    assert code.code.lineWrapMode() == code.code.LineWrapMode.NoWrap
    qtbot.mouseClick(view.widgets[2].copy_button, Qt.MouseButton.LeftButton)
    assert QGuiApplication.clipboard().text() == fenced  # the message as written


def test_markdown_is_rendered_not_shown_raw(view: MessageView) -> None:
    view.show_messages([message(1, "assistant", "# Title\n\n**bold** and `x = 1`\n\n- one\n- two")])
    heading, paragraph, items = blocks(view, 1)  # one block each: only the last one streams
    html = heading.text() + paragraph.text() + items.text()
    assert "<strong>bold</strong>" in html and "<li>one</li>" in html and "<h1>" in html
    shown = view.shown_text()
    assert "**" not in shown and "Title" in shown and "x = 1" in shown


class _Requests(http.server.BaseHTTPRequestHandler):
    paths: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.paths.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def web() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Requests)
    _Requests.paths = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _Browser(QObject):
    """Stands in for the system browser: Qt hands it the URLs it would open."""

    def __init__(self) -> None:
        super().__init__()
        self.opened: list[str] = []

    @Slot(QUrl)
    def open(self, url: QUrl) -> None:
        self.opened.append(url.toString())


def test_no_remote_content_is_fetched_and_links_open_on_click_only(
    qtbot: QtBot, view: MessageView, web: str
) -> None:
    browser = _Browser()
    for scheme in ("http", "file"):
        QDesktopServices.setUrlHandler(scheme, browser, "open")
    try:
        text = (
            f'[docs]({web}/page) then ![a cat]({web}/cat.png) and <img src="{web}/raw.png">'
            f" and [a file](file:///etc/passwd) and [script](javascript:alert(1))"
        )
        view.show_messages([message(1, "assistant", text), message(2, "user", text)])
        qtbot.wait(300)
        for message_id in (1, 2):
            [block] = blocks(view, message_id)
            html = block.text()
            assert "<img" not in html and "[image: a cat]" in html  # alt text, no image
            assert "&lt;img" in html  # raw HTML is shown as text
            assert 'href="file:' not in html and 'href="javascript:' not in html
        assert _Requests.paths == [] and browser.opened == []  # nothing fetched or opened
        [block] = blocks(view, 1)
        # "docs" is the first word: a click on it opens the page, in the system browser.
        qtbot.mouseClick(block, Qt.MouseButton.LeftButton, pos=QPoint(8, block.height() // 4))
        qtbot.waitUntil(lambda: browser.opened == [f"{web}/page"])
        assert _Requests.paths == []  # the app itself still fetched nothing
    finally:
        for scheme in ("http", "file"):
            QDesktopServices.unsetUrlHandler(scheme)


def test_streaming_re_renders_only_the_reply_and_only_its_changed_blocks(
    qtbot: QtBot, view: MessageView
) -> None:
    question = message(1, "user", f"```python\n{CODE}\n```")
    reply = message(2, "assistant", "", complete=False)
    view.show_messages([question, reply], running=2)
    user_widget, [user_code] = view.widgets[1], blocks(view, 1)
    text = "First paragraph.\n\n```python\nx = 1\n"
    for piece in ("y = 2\n", "z = 3\n", "```\n\nDone"):
        view.update_message(replace(reply, content=text), running=True)
        view.flush()
        if "```\n\nDone" not in text:
            first, code = blocks(view, 2)
            kept = (first, code)
        text += piece
    view.update_message(replace(reply, content=text), running=True)
    view.flush()
    first, code, _done = blocks(view, 2)
    assert (first, code) == kept  # the same widgets, updated in place
    assert code.code.toPlainText() == "x = 1\ny = 2\nz = 3"
    assert view.widgets[1] is user_widget and blocks(view, 1) == [user_code]  # untouched
    # Pieces closer together than the render interval are shown together.
    for word in (" one", " two", " three"):
        text += word
        view.update_message(replace(reply, content=text), running=True)
    assert "three" not in view.widgets[2].blocks[-1].text()
    qtbot.waitUntil(lambda: "one two three" in view.widgets[2].blocks[-1].text(), timeout=2000)


def test_reasoning_streams_open_then_folds_away_when_the_answer_starts(
    qtbot: QtBot, view: MessageView
) -> None:
    reply = message(2, "assistant", "", reasoning="Let me think", complete=False)
    view.show_messages([reply], running=2)
    widget = view.widgets[2]
    assert widget.reasoning_button.text() == "Thinking…"
    assert widget.reasoning.isVisible() and widget.reasoning.text() == "Let me think"
    assert widget.stats.text() == "writing…"
    answering = replace(reply, content="Paris.", stats={"reasoning_s": 12.4})
    view.update_message(answering, running=True)
    view.flush()
    assert widget.reasoning_button.text() == "Thought for 12 s"
    assert not widget.reasoning.isVisible()  # folded once the answer starts
    assert widget.stats.text() == "writing…"
    qtbot.mouseClick(widget.reasoning_button, Qt.MouseButton.LeftButton)
    assert widget.reasoning.isVisible()  # the user's choice holds while it streams
    view.update_message(replace(answering, content="Paris is the capital."), running=True)
    view.flush()
    assert widget.reasoning.isVisible()
    done = replace(answering, complete=True, stats={"reasoning_s": 12.4, "generated_tokens": 30})
    view.update_message(done)
    assert widget.stats.text().startswith("30 tokens")
    assert widget.regenerate_button.isVisible() and not widget.continue_button.isVisible()


def test_the_view_follows_the_reply_only_while_at_the_bottom(
    qtbot: QtBot, view: MessageView
) -> None:
    history = [message(i, "user" if i % 2 else "assistant", f"Message {i}\n\n" + "line\n\n" * 8)
               for i in range(1, 9)]  # fmt: skip
    reply = message(99, "assistant", "", complete=False)
    view.show_messages([*history, reply], running=99)
    bar = view.verticalScrollBar()
    text = ""
    for _ in range(5):
        text += "more words\n\n"
        view.update_message(replace(reply, content=text), running=True)
        view.flush()
        qtbot.wait(10)
    assert bar.maximum() > 0 and bar.value() == bar.maximum()  # following
    bar.setValue(0)  # the user scrolls up to read
    assert not view.following
    for _ in range(5):
        text += "more words\n\n"
        view.update_message(replace(reply, content=text), running=True)
        view.flush()
        qtbot.wait(10)
    assert bar.value() == 0  # left where the user is reading
    bar.setValue(bar.maximum())  # back at the bottom: following again
    text += "the end\n\n" * 5
    old_maximum = bar.maximum()
    view.update_message(replace(reply, content=text), running=True)
    view.flush()
    qtbot.waitUntil(lambda: bar.maximum() > old_maximum)
    assert bar.value() == bar.maximum()


def test_alternatives_step_back_and_forth_and_actions_wait_for_the_reply(
    qtbot: QtBot, view: MessageView
) -> None:
    chosen: list[int] = []
    regenerate: list[int] = []
    view.alternative_chosen.connect(chosen.append)
    view.regenerate_requested.connect(regenerate.append)
    reply = message(5, "assistant", "Blue.", alternatives=(3, 5, 7))
    stopped = message(9, "assistant", "Half", stats={"stop_reason": "cancelled"})
    view.show_messages([reply, stopped])
    widget = view.widgets[5]
    assert widget.alternative_label.text() == "2/3"
    qtbot.mouseClick(widget.previous_button, Qt.MouseButton.LeftButton)
    qtbot.mouseClick(widget.next_button, Qt.MouseButton.LeftButton)
    assert chosen == [3, 7]
    assert view.widgets[9].continue_button.isVisible()  # a stopped reply can go on
    view.set_busy(True)
    assert not widget.previous_button.isEnabled() and not widget.regenerate_button.isEnabled()
    view.set_busy(False)
    qtbot.mouseClick(widget.regenerate_button, Qt.MouseButton.LeftButton)
    assert regenerate == [5]


@pytest.mark.parametrize(("theme", "dark"), [("dark", True), ("light", False)])
def test_the_conversation_background_follows_the_palette(
    qtbot: QtBot, restore_theme: QApplication, theme: str, dark: bool
) -> None:
    apply_theme(restore_theme, theme)
    view = MessageView()
    qtbot.addWidget(view)
    view.resize(500, 400)
    view.show()
    qtbot.waitExposed(view)
    view.show_messages([message(1, "assistant", "Some text\n\n```\ncode\n```")])
    qtbot.wait(50)
    image = view.grab().toImage()
    background = image.pixelColor(image.width() // 2, image.height() - 20)  # below the text
    assert (background.lightness() < 60) if dark else (background.lightness() > 220)
    [text_block, _code] = blocks(view, 1)
    ink = text_block.palette().color(text_block.foregroundRole())
    assert abs(ink.lightness() - background.lightness()) > 120  # readable on it
    for _ in range(2):  # as first rendered, and re-rendered once styled (a palette change)
        code_image = blocks(view, 1)[1].code.grab().toImage()
        code_background = code_image.pixelColor(code_image.width() - 5, 5)
        assert (code_background.lightness() < 80) if dark else (code_background.lightness() > 200)
        apply_theme(restore_theme, theme)
        qtbot.wait(20)
    label = QLabel()
    assert label.palette().color(label.foregroundRole()).lightness() == ink.lightness()


def test_no_blank_space_under_the_last_message(qtbot: QtBot, view: MessageView) -> None:
    """Wrapped text is taller when narrow; the column must be as tall as its width needs,
    not as tall as its narrowest layout (which left a screen of blank space at the end)."""
    text = "A sentence long enough to wrap over several lines in the view. " * 6
    view.show_messages([message(i, "user" if i % 2 else "assistant", text) for i in range(1, 7)])
    qtbot.wait(20)
    last = list(view.widgets.values())[-1]
    assert view.column.height() - last.geometry().bottom() < 12
    bar = view.verticalScrollBar()
    assert bar.value() == bar.maximum() > 0
    bottom = last.mapTo(view.viewport(), last.rect().bottomLeft()).y()
    assert abs(view.viewport().height() - bottom) < 12  # the end of the reply is in sight
