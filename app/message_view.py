"""The conversation as a column of message widgets, rendered from markdown.

Each message is its own widget, and each of its blocks (text, or a code block with its own
Copy button) its own child, so a streaming reply re-renders only itself, and of itself only
the blocks that changed. The view follows a streaming reply only while it is scrolled to
the bottom; scrolling up to read stays put.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from PySide6.QtCore import QEvent, QSize, Qt, QTimer, QUrl, Signal, Slot
from PySide6.QtGui import (
    QDesktopServices,
    QGuiApplication,
    QPalette,
    QResizeEvent,
    QTextDocument,
)
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QScrollArea,
    QSizePolicy,
    QTextBrowser,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.markdown import SAFE_SCHEMES, Segment, code_background, render
from engine.store import StoredMessage

# A streaming reply is re-rendered at most every 50 ms, and less often when one render (its
# layout and painting included) costs more than 2% of the wait: the engine writing the reply
# shares the cores with the window, so the window's share is kept small
# (bench/generation.py measures what it costs).
STREAM_RENDER_INTERVAL_MS = 50
STREAM_RENDER_SHARE = 0.02
STREAM_RENDER_MAX_INTERVAL_MS = 300


def is_dark(palette: QPalette | None = None) -> bool:
    """Whether text is light on dark: by the app's palette (a widget's own can be changed
    by the style sheet, a transparent background reading as black)."""
    palette = palette or QGuiApplication.palette()
    return palette.color(QPalette.ColorRole.Base).lightness() < 128


def open_link(url: str) -> bool:
    """Open a web or mail link in the system's browser or mail program; anything else is
    refused (a message is never a way to run or open a local file)."""
    link = QUrl(url)
    if link.scheme().lower() not in SAFE_SCHEMES:
        return False
    return QDesktopServices.openUrl(link)


def stats_line(stats: dict[str, Any]) -> str:
    """One line under a finished reply: tokens, speed, time to first token."""
    parts = [f"{stats.get('generated_tokens', 0)} tokens"]
    if stats.get("generation_tokens_per_s"):
        parts.append(f"{stats['generation_tokens_per_s']:.1f} tok/s")
    if stats.get("time_to_first_token"):
        parts.append(f"first token {stats['time_to_first_token'] * 1000:.0f} ms")
    if stats.get("prompt_tokens_per_s"):
        parts.append(f"prompt {stats['prompt_tokens_per_s']:.0f} tok/s")
    if stats.get("stop_reason") == "cancelled":
        parts.append("stopped")
    elif stats.get("stop_reason") == "length":
        parts.append("reached the length limit")
    elif stats.get("stop_reason") == "context_full":
        parts.append("context full")
    dropped = stats.get("dropped_turns", 0)
    if dropped:
        turns = "turn" if dropped == 1 else "turns"
        parts.append(f"the {dropped} oldest {turns} left out to fit the context")
    return " · ".join(parts)


def can_continue(message: StoredMessage) -> bool:
    """A reply that was cut short: interrupted, stopped, or at the length limit."""
    if message.role != "assistant":
        return False
    stop = (message.stats or {}).get("stop_reason")
    return not message.complete or stop in ("cancelled", "length")


class _TextBlock(QLabel):
    """A block of rich text: wraps, selectable, links opened on click only."""

    def __init__(self, parent: QWidget) -> None:
        super().__init__(parent)
        self.setTextFormat(Qt.TextFormat.RichText)
        self.setWordWrap(True)
        self.setOpenExternalLinks(False)
        self.setTextInteractionFlags(Qt.TextInteractionFlag.TextBrowserInteraction)
        self.setFocusPolicy(Qt.FocusPolicy.ClickFocus)  # Tab goes to the buttons
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)
        self.linkActivated.connect(open_link)
        self.segment: Segment | None = None
        self._heights: dict[int, int] = {}  # width: height, for the text shown

    def set_segment(self, segment: Segment) -> None:
        self.segment = segment
        self._heights.clear()
        self.setText(segment.html)

    def heightForWidth(self, width: int) -> int:
        # The layouts ask every block, at a few widths (with and without the scroll bar), on
        # each change of any one; laying out rich text is the cost, so an unchanged block
        # answers from its earlier layouts.
        height = self._heights.get(width)
        if height is None:
            if len(self._heights) > 8:
                self._heights.clear()
            height = self._heights[width] = super().heightForWidth(width)
        return height

    def changeEvent(self, event: QEvent) -> None:
        if event.type() in (QEvent.Type.FontChange, QEvent.Type.StyleChange):
            self._heights.clear()
        super().changeEvent(event)


class _CodeText(QTextBrowser):
    """Code exactly as written: no wrapping (a long line scrolls), every space kept, and
    exactly as tall as its lines."""

    def __init__(self, parent: QWidget) -> None:
        super().__init__(parent)
        self.setOpenLinks(False)
        self.setLineWrapMode(QTextBrowser.LineWrapMode.NoWrap)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setTabChangesFocus(True)
        self.setFocusPolicy(Qt.FocusPolicy.ClickFocus)
        self.document().setDocumentMargin(8)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def loadResource(self, kind: int, name: QUrl | str) -> Any:
        return None  # never fetch anything a message names

    def fit(self) -> None:
        document = self.document()
        height = document.size().height()
        if document.idealWidth() > self.viewport().width():
            height += self.horizontalScrollBar().sizeHint().height()
        self.setFixedHeight(math.ceil(height) + 2 * self.frameWidth())

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self.fit()

    def wheelEvent(self, event: Any) -> None:
        if event.angleDelta().x() == 0:  # vertical wheel scrolls the conversation
            event.ignore()
            return
        super().wheelEvent(event)


class _CodeBlock(QFrame):
    """A code block: its language, a Copy button, and the highlighted code."""

    def __init__(self, parent: QWidget) -> None:
        super().__init__(parent)
        self.setObjectName("codeBlock")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        bar = QHBoxLayout()
        bar.setContentsMargins(8, 2, 2, 0)
        self.language = QLabel(self)
        self.language.setObjectName("codeLanguage")
        self.copy_button = QToolButton(self)
        self.copy_button.setText("Copy")
        self.copy_button.setAutoRaise(True)
        self.copy_button.clicked.connect(self._on_copy_button_clicked)
        bar.addWidget(self.language, 1)
        bar.addWidget(self.copy_button)
        layout.addLayout(bar)
        self.code = _CodeText(self)
        layout.addWidget(self.code)
        self.source = ""
        self.segment: Segment | None = None

    def set_segment(self, segment: Segment) -> None:
        self.segment = segment
        self.source = segment.source
        self.language.setText(segment.language or "code")
        label = f"Copy the {segment.language} code" if segment.language else "Copy the code"
        self.copy_button.setAccessibleName(label)
        self.copy_button.setToolTip(label)
        self.code.setAccessibleName(f"{segment.language or 'Code'} block")
        self.code.setHtml(segment.html)
        self.code.fit()

    def set_background(self, colour: str) -> None:
        self.code.setStyleSheet(f"QTextBrowser {{ background: {colour}; }}")

    @Slot()
    def _on_copy_button_clicked(self) -> None:
        QGuiApplication.clipboard().setText(self.source)
        self.copy_button.setText("Copied")
        button = self.copy_button  # the timer goes with the button if the block is deleted
        QTimer.singleShot(1500, button, lambda: button.setText("Copy"))


def _button(parent: QWidget, text: str, name: str, tip: str) -> QToolButton:
    button = QToolButton(parent)
    button.setText(text)
    button.setAutoRaise(True)
    button.setAccessibleName(name)
    button.setToolTip(tip)
    return button


class MessageWidget(QFrame):
    """One message: who wrote it, its reasoning (collapsible), its blocks, and its actions."""

    def __init__(self, view: MessageView, message: StoredMessage) -> None:
        super().__init__(view.column)
        self._view = view
        self.message = message
        self.running = False
        self.setObjectName("userMessage" if message.role == "user" else "replyMessage")
        self.setFrameShape(QFrame.Shape.NoFrame)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 8, 10, 6)
        layout.setSpacing(4)

        header = QHBoxLayout()
        self.who = QLabel(self)
        self.who.setObjectName("messageAuthor")
        self.previous_button = _button(self, "◀", "Previous alternative", "Previous version")
        self.alternative_label = QLabel(self)
        self.alternative_label.setObjectName("alternativeLabel")
        self.next_button = _button(self, "▶", "Next alternative", "Next version")
        self.previous_button.clicked.connect(lambda: self._step(-1))
        self.next_button.clicked.connect(lambda: self._step(1))
        header.addWidget(self.who, 1)
        header.addWidget(self.previous_button)
        header.addWidget(self.alternative_label)
        header.addWidget(self.next_button)
        layout.addLayout(header)

        self.reasoning_button = QToolButton(self)
        self.reasoning_button.setObjectName("reasoningToggle")
        self.reasoning_button.setCheckable(True)
        self.reasoning_button.setAutoRaise(True)
        self.reasoning_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.reasoning_button.toggled.connect(self._on_reasoning_toggled)
        self.reasoning = QLabel(self)
        self.reasoning.setObjectName("reasoningText")
        self.reasoning.setWordWrap(True)
        self.reasoning.setTextFormat(Qt.TextFormat.PlainText)
        self.reasoning.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.reasoning.setAccessibleName("Reasoning")
        self._reasoning_opened_by_user: bool | None = None
        layout.addWidget(self.reasoning_button, 0, Qt.AlignmentFlag.AlignLeft)
        layout.addWidget(self.reasoning)

        self.body = QVBoxLayout()
        self.body.setSpacing(6)
        layout.addLayout(self.body)
        self.blocks: list[_TextBlock | _CodeBlock] = []

        footer = QHBoxLayout()
        self.stats = QLabel(self)
        self.stats.setObjectName("messageStats")
        self.stats.setWordWrap(True)
        self.copy_button = _button(self, "Copy", "Copy message", "Copy this message")
        self.copy_button.clicked.connect(self.copy)
        self.edit_button = _button(self, "Edit", "Edit message", "Edit and send again")
        self.edit_button.clicked.connect(lambda: view.edit_requested.emit(self.message.id))
        self.regenerate_button = _button(
            self, "Regenerate", "Regenerate reply", "Write this reply again (the old one is kept)"
        )
        self.regenerate_button.clicked.connect(
            lambda: view.regenerate_requested.emit(self.message.id)
        )
        self.continue_button = _button(
            self, "Continue", "Continue reply", "Go on writing this reply from where it stopped"
        )
        self.continue_button.clicked.connect(lambda: view.continue_requested.emit(self.message.id))
        footer.addWidget(self.stats, 1)
        for button in (
            self.copy_button,
            self.edit_button,
            self.continue_button,
            self.regenerate_button,
        ):
            footer.addWidget(button)
        layout.addLayout(footer)
        self.update_message(message, running=False)

    # -- content ---------------------------------------------------------------------------

    def update_message(self, message: StoredMessage, running: bool) -> None:
        """Show ``message`` (its latest text); only blocks that changed are touched."""
        self.message, self.running = message, running
        user = message.role == "user"
        self.who.setText("You" if user else (message.model_name or "Assistant"))
        self._show_alternatives()
        self._show_reasoning()
        self._show_blocks(render(message.content, is_dark(), hard_breaks=user))
        self._show_footer()

    def _show_alternatives(self) -> None:
        ids = self.message.alternatives
        many = len(ids) > 1
        for widget in (self.previous_button, self.alternative_label, self.next_button):
            widget.setVisible(many)
        if many:
            at = ids.index(self.message.id) if self.message.id in ids else 0
            self.alternative_label.setText(f"{at + 1}/{len(ids)}")
            self.alternative_label.setAccessibleName(f"Version {at + 1} of {len(ids)}")
            self.previous_button.setEnabled(at > 0 and not self._view.busy)
            self.next_button.setEnabled(at < len(ids) - 1 and not self._view.busy)

    def _step(self, delta: int) -> None:
        ids = self.message.alternatives
        at = ids.index(self.message.id) + delta
        if 0 <= at < len(ids):
            self._view.alternative_chosen.emit(ids[at])

    def _show_reasoning(self) -> None:
        text = self.message.reasoning
        has = bool(text)
        self.reasoning_button.setVisible(has)
        if not has:
            self.reasoning.hide()
            return
        thinking = self.running and not self.message.content
        seconds = (self.message.stats or {}).get("reasoning_s")
        if thinking:
            title = "Thinking…"
        elif seconds:
            title = f"Thought for {seconds:.0f} s" if seconds >= 1 else "Thought for under 1 s"
        else:
            title = "Reasoning"
        self.reasoning_button.setText(title)
        self.reasoning_button.setAccessibleName(f"{title} (show or hide the reasoning)")
        self.reasoning.setText(text)
        # Open while it streams, closed once the answer starts, unless the user chose.
        opened = thinking if self._reasoning_opened_by_user is None else (
            self._reasoning_opened_by_user
        )  # fmt: skip
        self.reasoning_button.blockSignals(True)
        self.reasoning_button.setChecked(opened)
        self.reasoning_button.blockSignals(False)
        self._set_reasoning_open(opened)

    @Slot(bool)
    def _on_reasoning_toggled(self, opened: bool) -> None:
        self._reasoning_opened_by_user = opened
        self._set_reasoning_open(opened)

    def _set_reasoning_open(self, opened: bool) -> None:
        self.reasoning_button.setArrowType(
            Qt.ArrowType.DownArrow if opened else Qt.ArrowType.RightArrow
        )
        self.reasoning.setVisible(opened)

    def _show_blocks(self, segments: Sequence[Segment]) -> None:
        background = code_background(is_dark())
        for index, segment in enumerate(segments):
            kind = _CodeBlock if segment.kind == "code" else _TextBlock
            if index < len(self.blocks) and isinstance(self.blocks[index], kind):
                block = self.blocks[index]
                if block.segment == segment:
                    continue  # unchanged: not touched
            else:
                block = kind(self)
                if index < len(self.blocks):
                    old = self.blocks[index]
                    self.body.replaceWidget(old, block)
                    old.deleteLater()
                    self.blocks[index] = block
                else:
                    self.body.addWidget(block)
                    self.blocks.append(block)
                block.show()
            if isinstance(block, _CodeBlock):
                block.set_background(background)
            block.set_segment(segment)
        for old in self.blocks[len(segments) :]:
            self.body.removeWidget(old)
            old.deleteLater()
        del self.blocks[len(segments) :]

    def _show_footer(self) -> None:
        message, busy = self.message, self._view.busy
        assistant = message.role == "assistant"
        if assistant and self.running:  # (its stats so far hold only the reasoning's time)
            line = "writing…"
        elif message.stats:
            line = stats_line(message.stats)
        elif assistant and not message.complete:
            line = "interrupted"
        else:
            line = ""
        self.stats.setText(line)
        self.copy_button.setVisible(bool(message.content))
        self.edit_button.setVisible(not assistant)
        self.regenerate_button.setVisible(assistant and not self.running)
        self.continue_button.setVisible(can_continue(message) and not self.running)
        for button in (self.edit_button, self.regenerate_button, self.continue_button):
            button.setEnabled(not busy)

    @Slot()
    def copy(self) -> None:
        QGuiApplication.clipboard().setText(self.message.content)

    def shown_text(self) -> str:
        parts = [self.who.text()]
        if self.reasoning_button.isVisibleTo(self):
            parts.append(self.reasoning_button.text())
        if self.reasoning.isVisibleTo(self):
            parts.append(self.reasoning.text())
        for block in self.blocks:
            if isinstance(block, _CodeBlock):
                parts.append(block.code.toPlainText())
            else:
                document = QTextDocument()
                document.setHtml(block.text())
                parts.append(document.toPlainText())
        parts.append(self.stats.text())
        return "\n".join(part for part in parts if part)

    def refresh(self) -> None:
        """Re-render for a new palette (the code's colours follow it) or a busy change."""
        for block in self.blocks:
            block.segment = None
        self.update_message(self.message, self.running)


class _Column(QWidget):
    """The messages, one under another. Its height is what its width needs (the scroll area
    asks heightForWidth); its minimum would be the height wrapped text takes at its
    narrowest, which the scroll area takes instead, leaving blank space under the end."""

    def minimumSizeHint(self) -> QSize:
        return QSize(super().minimumSizeHint().width(), 0)


class MessageView(QScrollArea):
    """The messages of one conversation, with the streaming reply at the end."""

    regenerate_requested = Signal(int)  # an assistant message's id
    edit_requested = Signal(int)  # a user message's id
    continue_requested = Signal(int)  # an assistant message's id
    alternative_chosen = Signal(int)  # the message to show instead of its sibling

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("conversationView")
        self.setAccessibleName("Conversation")
        self.setWidgetResizable(True)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)  # arrows and Page keys scroll it
        self.column = _Column(self)
        self.column.setObjectName("conversationColumn")
        self.column.setAutoFillBackground(True)
        self.column.setBackgroundRole(QPalette.ColorRole.Base)
        self._layout = QVBoxLayout(self.column)
        self._layout.setContentsMargins(4, 4, 4, 4)
        self._layout.setSpacing(6)
        self._layout.addStretch(1)
        self.setWidget(self.column)
        self.widgets: dict[int, MessageWidget] = {}
        self.busy = False  # a reply is running: no regenerating, editing or switching paths
        self._following = True
        self._pending: tuple[StoredMessage, bool] | None = None
        self._stream_timer = QTimer(self)
        self._stream_timer.setSingleShot(True)
        self._stream_timer.setInterval(STREAM_RENDER_INTERVAL_MS)
        self._stream_timer.timeout.connect(self._on_stream_timer_timeout)
        bar = self.verticalScrollBar()
        bar.valueChanged.connect(self._on_scrolled)
        bar.rangeChanged.connect(self._on_range_changed)

    # -- content ---------------------------------------------------------------------------

    def show_messages(self, messages: Sequence[StoredMessage], running: int | None = None) -> None:
        """Show a conversation (replacing what was shown), scrolled to its end."""
        self._stream_timer.stop()
        self._pending = None
        for widget in self.widgets.values():
            self._layout.removeWidget(widget)
            widget.deleteLater()
        self.widgets = {}
        for message in messages:
            self._add(message, message.id == running)
        self._following = True
        self._scroll_to_end()

    def _add(self, message: StoredMessage, running: bool) -> MessageWidget:
        widget = MessageWidget(self, message)
        if running:
            widget.update_message(message, running=True)
        self._layout.insertWidget(self._layout.count() - 1, widget)
        widget.show()  # now, not at the next event loop turn (the layout would defer it)
        self.widgets[message.id] = widget
        return widget

    def update_message(self, message: StoredMessage, running: bool = False) -> None:
        """Show the latest state of one message (added at the end if new). A running reply
        is re-rendered at most every ``STREAM_RENDER_INTERVAL_MS``."""
        if message.id not in self.widgets:
            self._add(message, running)
            return
        if running:
            self._pending = (message, running)
            if not self._stream_timer.isActive():
                self._stream_timer.start()
            return
        if self._pending is not None and self._pending[0].id == message.id:
            self._stream_timer.stop()
            self._pending = None
        self.widgets[message.id].update_message(message, running)

    def flush(self) -> None:
        """Render a pending streaming update now."""
        if self._pending is not None:
            self._stream_timer.stop()
            self._on_stream_timer_timeout()

    @Slot()
    def _on_stream_timer_timeout(self) -> None:
        if self._pending is None:
            return
        message, running = self._pending
        self._pending = None
        widget = self.widgets.get(message.id)
        if widget is not None:
            start = time.perf_counter()
            widget.update_message(message, running)
            # The layout and painting it causes run after this, from the event queue: the
            # cost is counted when the queue gets back to the timer posted now.
            QTimer.singleShot(0, self, lambda: self._pace(start))

    def _pace(self, start: float) -> None:
        cost_ms = (time.perf_counter() - start) * 1000
        interval = min(max(cost_ms / STREAM_RENDER_SHARE, STREAM_RENDER_INTERVAL_MS),
                       STREAM_RENDER_MAX_INTERVAL_MS)  # fmt: skip
        self._stream_timer.setInterval(round(interval))

    def set_busy(self, busy: bool) -> None:
        self.busy = busy
        for widget in self.widgets.values():
            widget._show_alternatives()
            widget._show_footer()

    def messages(self) -> list[StoredMessage]:
        """The messages shown, in order, each as last rendered."""
        return [widget.message for widget in self.widgets.values()]

    def last_reply(self) -> StoredMessage | None:
        replies = [m for m in self.messages() if m.role == "assistant"]
        return replies[-1] if replies else None

    # -- following the reply ---------------------------------------------------------------

    @property
    def following(self) -> bool:
        return self._following

    @Slot(int)
    def _on_scrolled(self, value: int) -> None:
        bar = self.verticalScrollBar()
        self._following = value >= bar.maximum() - 4

    @Slot(int, int)
    def _on_range_changed(self, _low: int, high: int) -> None:
        if self._following:
            self.verticalScrollBar().setValue(high)

    def scroll_to(self, message_id: int) -> None:
        """Bring a message into view (and stop following the end)."""
        widget = self.widgets.get(message_id)
        if widget is None:
            return
        self._layout.activate()
        self._following = False
        self.ensureWidgetVisible(widget, 0, 40)
        self._following = self.verticalScrollBar().value() >= self.verticalScrollBar().maximum()

    def shown_text(self) -> str:
        """Everything the view shows, as plain text, in order (what a screen reader reads)."""
        self.flush()
        return "\n".join(widget.shown_text() for widget in self.widgets.values())

    def _scroll_to_end(self) -> None:
        bar = self.verticalScrollBar()
        bar.setValue(bar.maximum())

    def changeEvent(self, event: QEvent) -> None:
        super().changeEvent(event)
        if event.type() == QEvent.Type.PaletteChange:
            for widget in self.widgets.values():
                widget.refresh()
