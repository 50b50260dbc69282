"""The chat window: conversations on the side, the streaming reply, the input, live stats."""

from __future__ import annotations

import contextlib
import html
import logging
import time
from pathlib import Path
from typing import Any

import psutil
from PySide6.QtCore import QEvent, QObject, Qt, QTimer, Signal, Slot
from PySide6.QtGui import (
    QAction,
    QCloseEvent,
    QKeyEvent,
    QKeySequence,
    QTextCharFormat,
    QTextCursor,
)
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSplitter,
    QTextBrowser,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.about import AboutDialog
from app.api_control import ApiControl
from app.background import run_in_background
from app.downloads import Downloads, describe
from app.experts_panel import ExpertsPanel
from app.model_manager import CONTEXT_KEY, MEASURED_KEY, ModelManager
from app.settings_dialog import SettingsDialog
from app.worker import WINDOW_CLIENT, HostAdapter
from engine.downloads import DownloadEvent
from engine.host import ChatMessage, ChatRequest, EngineCrashed, LoadedModel, QueueChanged
from engine.library import Library
from engine.session import SamplingSettings, Stats
from engine.store import Store, StoredMessage

SAVE_INTERVAL_S = 1.0
log = logging.getLogger(__name__)

LAST_MODEL_KEY = "last_model_path"
ACTIVE_DOWNLOADS = ("queued", "running", "retrying", "verifying")


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f} GiB"


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


class _EnterToSend(QObject):
    """Enter sends, Shift+Enter inserts a newline."""

    def __init__(self, parent: QObject, on_send: Any) -> None:
        super().__init__(parent)
        self._on_send = on_send

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.Type.KeyPress and isinstance(event, QKeyEvent):
            enter = event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter)
            if enter and not event.modifiers() & Qt.KeyboardModifier.ShiftModifier:
                self._on_send()
                return True
        return False


class ChatWindow(QMainWindow):
    """Main window. Holds no business logic: the Store keeps data, the worker runs the model."""

    # Re-emitted once the window has shown them (panels and tests listen here).
    model_ready = Signal(object)  # LoadedModel
    model_failed = Signal(str)
    piece_shown = Signal(str)
    reply_done = Signal(dict)

    def __init__(
        self,
        store: Store,
        autoload: bool = True,
        first_run_models: bool = False,
        library: Library | None = None,
    ) -> None:
        super().__init__()
        self.store = store
        self.library = library or Library()
        # Lives with the window: downloads go on while the model manager is closed.
        self.downloads = Downloads(self.library, self)
        self.setWindowTitle("MoE Chat")
        self.resize(1100, 720)
        self._conversation_id: int | None = None
        self._model: LoadedModel | None = None
        self._crashed_path: str | None = None  # offered for loading again after a crash
        self._device_memory: dict[str, tuple[int, int]] = {}
        self._reply_id: int | None = None
        self._reply_conversation_id: int | None = None
        self._reply_text = ""
        self._reply_reasoning = ""
        self._reply_saved_at = 0.0
        self._generating = False
        self._tuning = False
        self.sampling = SamplingSettings()  # how replies are sampled (fixed until settings)

        self._build_ui()
        self._start_host()
        self.api = ApiControl(self.store, self.worker.host, self)
        self.api.changed.connect(self._on_api_changed)
        self.api.failed.connect(self.show_error)
        self.downloads.changed.connect(self._on_downloads_changed)
        self._refresh_conversations()
        self._memory_timer = QTimer(self)
        self._memory_timer.setInterval(1000)
        self._memory_timer.timeout.connect(self._on_memory_timer_timeout)
        self._memory_timer.start()
        self._on_memory_timer_timeout()

        self._manager: ModelManager | None = None
        self.api.start_saved()
        remembered = self.store.get_setting(LAST_MODEL_KEY)
        if first_run_models and not remembered:
            QTimer.singleShot(0, self.open_model_manager)
        if remembered and Path(remembered).is_file():
            self.model_label.setText(f"Model: {Path(remembered).name}")
            if autoload:
                QTimer.singleShot(0, lambda: self.load_model(remembered))
        else:
            self.model_label.setText("No model loaded")
        self.input.setFocus()  # typing goes to the message box from the first key

    # -- construction ----------------------------------------------------------------------

    def _build_ui(self) -> None:
        splitter = QSplitter(Qt.Orientation.Horizontal, self)

        side = QWidget(splitter)
        side_layout = QVBoxLayout(side)
        side_layout.setContentsMargins(8, 8, 4, 8)
        self.new_button = QPushButton("New chat", side)
        self.new_button.clicked.connect(self._on_new_button_clicked)
        side_layout.addWidget(self.new_button)
        self.conversation_list = QListWidget(side)
        self.conversation_list.currentItemChanged.connect(self._on_conversation_list_changed)
        self.conversation_list.itemDoubleClicked.connect(lambda _item: self.rename_current())
        side_layout.addWidget(self.conversation_list, 1)
        row = QHBoxLayout()
        self.rename_button = QPushButton("Rename", side)
        self.rename_button.clicked.connect(self.rename_current)
        self.delete_button = QPushButton("Delete", side)
        self.delete_button.clicked.connect(self.delete_current)
        row.addWidget(self.rename_button)
        row.addWidget(self.delete_button)
        side_layout.addLayout(row)

        main = QWidget(splitter)
        layout = QVBoxLayout(main)
        layout.setContentsMargins(4, 8, 8, 8)
        model_row = QHBoxLayout()
        self.model_label = QLabel(main)
        self.model_label.setObjectName("modelLabel")
        self.models_button = QPushButton("Models…", main)
        self.models_button.setToolTip("What runs well on this machine, and your local models")
        self.models_button.clicked.connect(self.open_model_manager)
        self.open_button = QPushButton("Open model…", main)
        self.open_button.clicked.connect(self._on_open_button_clicked)
        self.load_progress = QProgressBar(main)
        self.load_progress.setRange(0, 100)
        self.load_progress.setMaximumWidth(160)
        self.load_progress.hide()
        model_row.addWidget(self.model_label, 1)
        model_row.addWidget(self.load_progress)
        model_row.addWidget(self.models_button)
        model_row.addWidget(self.open_button)
        layout.addLayout(model_row)

        self.error_banner = QWidget(main)
        self.error_banner.setObjectName("errorBanner")
        banner_layout = QHBoxLayout(self.error_banner)
        banner_layout.setContentsMargins(10, 6, 6, 6)
        self.error_label = QLabel(self.error_banner)
        self.error_label.setWordWrap(True)
        self.error_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.reload_button = QPushButton("Load again", self.error_banner)
        self.reload_button.setToolTip("Start the engine again and load the same model")
        self.reload_button.clicked.connect(self._on_reload_button_clicked)
        self.reload_button.hide()
        close = QToolButton(self.error_banner)
        close.setText("✕")
        close.setToolTip("Dismiss")
        close.clicked.connect(self.error_banner.hide)
        banner_layout.addWidget(self.error_label, 1)
        banner_layout.addWidget(self.reload_button, 0, Qt.AlignmentFlag.AlignTop)
        banner_layout.addWidget(close, 0, Qt.AlignmentFlag.AlignTop)
        self.error_banner.hide()
        layout.addWidget(self.error_banner)

        self.view = QTextBrowser(main)
        self.view.setOpenExternalLinks(True)
        self.view.setObjectName("conversationView")
        layout.addWidget(self.view, 1)

        input_row = QHBoxLayout()
        self.input = QPlainTextEdit(main)
        self.input.setPlaceholderText(
            "Message the model (Enter to send, Shift+Enter for a new line)"
        )
        self.input.setMaximumHeight(90)
        self.input.installEventFilter(_EnterToSend(self, self.send))
        self.send_button = QPushButton("Send", main)
        self.send_button.setDefault(True)
        self.send_button.clicked.connect(self.send)
        self.stop_button = QPushButton("Stop", main)
        self.stop_button.setEnabled(False)
        self.stop_button.clicked.connect(self.stop)
        buttons = QVBoxLayout()
        buttons.addWidget(self.send_button)
        buttons.addWidget(self.stop_button)
        input_row.addWidget(self.input, 1)
        input_row.addLayout(buttons)
        layout.addLayout(input_row)

        splitter.addWidget(side)
        splitter.addWidget(main)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([240, 860])
        self.setCentralWidget(splitter)

        status = self.statusBar()
        self.speed_label = QLabel("- tok/s")
        self.ttft_label = QLabel("first token -")
        self.ram_label = QLabel("RAM -")
        self.vram_label = QLabel("VRAM -")
        self.download_label = QLabel()
        self.download_label.setObjectName("statLabel")
        status.addWidget(self.download_label)
        self.queue_label = QLabel()
        self.queue_label.setObjectName("statLabel")
        status.addWidget(self.queue_label)
        self.server_label = QLabel()
        self.server_label.setObjectName("serverLabel")
        self.server_label.setToolTip(
            "The local OpenAI-compatible API: other programs' requests wait in the same queue "
            "as yours. File → Settings turns it off."
        )
        self.server_label.hide()
        status.addPermanentWidget(self.server_label)
        for label in (self.speed_label, self.ttft_label, self.ram_label, self.vram_label):
            label.setObjectName("statLabel")
            status.addPermanentWidget(label)

        file_menu = self.menuBar().addMenu("&File")
        file_menu.addAction("&New chat", QKeySequence.StandardKey.New, self._on_new_button_clicked)
        file_menu.addAction(
            "&Open model…", QKeySequence.StandardKey.Open, self._on_open_button_clicked
        )
        file_menu.addAction("&Models…", QKeySequence("Ctrl+M"), self.open_model_manager)
        settings_action = file_menu.addAction(
            "&Settings…", QKeySequence("Ctrl+,"), self.open_settings
        )
        settings_action.setMenuRole(QAction.MenuRole.PreferencesRole)
        file_menu.addSeparator()
        quit_action = file_menu.addAction("&Quit", QKeySequence.StandardKey.Quit, self.close)
        quit_action.setMenuRole(QAction.MenuRole.QuitRole)
        view_menu = self.menuBar().addMenu("&View")
        view_menu.addAction("&Experts…", QKeySequence("Ctrl+E"), self.open_experts)
        help_menu = self.menuBar().addMenu("&Help")
        about_action = help_menu.addAction("&About MoE Chat", self.open_about)
        about_action.setMenuRole(QAction.MenuRole.AboutRole)

    def _start_host(self) -> None:
        self.worker = HostAdapter(parent=self)
        self.worker.load_started.connect(self._on_worker_load_started)
        self.worker.load_progressed.connect(self._on_worker_load_progressed)
        self.worker.model_loaded.connect(self._on_worker_model_loaded)
        self.worker.load_failed.connect(self._on_worker_load_failed)
        self.worker.token_received.connect(self._on_worker_token_received)
        self.worker.reasoning_received.connect(self._on_worker_reasoning_received)
        self.worker.live_stats.connect(self._on_worker_live_stats)
        self.worker.reply_finished.connect(self._on_worker_reply_finished)
        self.worker.reply_failed.connect(self._on_worker_reply_failed)
        self.worker.engine_crashed.connect(self._on_worker_engine_crashed)
        self.worker.queue_changed.connect(self._on_worker_queue_changed)
        self.experts = ExpertsPanel(self)
        self.experts.profiling_toggled.connect(self.worker.set_profiling)
        self.worker.heat_updated.connect(self.experts.set_heat)
        self.model_ready.connect(self.experts.set_model)  # after the window took it in
        self.reply_done.connect(self.experts.set_reply_stats)
        self.experts.tune_requested.connect(self.tune_model)
        self.experts.tune_cancelled.connect(self.cancel_tuning)
        self.worker.tune_started.connect(self._on_worker_tune_started)
        self.worker.tune_progressed.connect(self._on_worker_tune_progressed)
        self.worker.tune_finished.connect(self._on_worker_tune_finished)
        self.worker.tune_failed.connect(self.show_error)

    @property
    def host(self) -> Any:
        """The model host the window's replies (and the local server's) run on."""
        return self.worker.host

    # -- errors ----------------------------------------------------------------------------

    def show_error(self, text: str, reload_path: str | None = None) -> None:
        """The one place errors appear: a banner above the conversation, with "Load again"
        when the engine stopped under a model."""
        self.error_label.setText(text)
        self._crashed_path = reload_path
        self.reload_button.setVisible(reload_path is not None)
        self.error_banner.show()

    @Slot()
    def _on_reload_button_clicked(self) -> None:
        if self._crashed_path is not None:
            self.load_model(self._crashed_path)

    # -- model -----------------------------------------------------------------------------

    @Slot()
    def open_model_manager(self) -> ModelManager:
        """Show the model manager (one at a time); a model chosen there is loaded here."""
        if self._manager is None:
            self._manager = ModelManager(self.store, self.downloads, self, self.api)
            self._manager.model_chosen.connect(self.load_model)
            self._manager.finished.connect(self._on_manager_finished)
        self._manager.show()
        self._manager.raise_()
        return self._manager

    @Slot()
    def open_settings(self) -> SettingsDialog:
        dialog = SettingsDialog(self.downloads, self, self.api)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.open()
        return dialog

    @Slot(str)
    def _on_api_changed(self, address: str) -> None:
        self.server_label.setText(f"API {address}/v1" if address else "")
        self.server_label.setVisible(bool(address))

    @Slot()
    def open_experts(self) -> ExpertsPanel:
        self.experts.show()
        self.experts.raise_()
        return self.experts

    @Slot()
    def open_about(self) -> AboutDialog:
        dialog = AboutDialog(self.library, self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.open()
        return dialog

    @Slot()
    def _on_manager_finished(self) -> None:
        if self._manager is not None:
            self._manager.deleteLater()
            self._manager = None

    @Slot()
    def _on_open_button_clicked(self) -> None:
        start = self.store.get_setting(LAST_MODEL_KEY) or str(Path.home())
        path, _ = QFileDialog.getOpenFileName(
            self,
            "Open a GGUF model",
            str(Path(start).parent),
            "GGUF models (*.gguf);;All files (*)",
        )
        if path:
            self.load_model(path)

    @Slot()
    def tune_model(self) -> None:
        """Measure splits of the loaded model on this machine and reload with the fastest."""
        if self._model is None:
            self.show_error("Load a model first: tuning measures the loaded model.")
            return
        if self._generating:
            self.show_error("Wait for the reply to finish, or stop it, before tuning.")
            return
        self.error_banner.hide()
        self._model = None  # nothing to chat with until the model is loaded again
        self._tuning = True
        self.worker.tune()

    @Slot()
    def cancel_tuning(self) -> None:
        self.worker.cancel_tune()
        self.experts.cancel_tuning()

    @Slot(str)
    def _on_worker_tune_started(self, name: str) -> None:
        self.model_label.setText(f"Tuning {html.escape(name)} for this machine…")
        self.load_progress.setValue(0)
        self.load_progress.show()
        self.open_button.setEnabled(False)
        self.experts.tuning_started(name)

    @Slot(float, str)
    def _on_worker_tune_progressed(self, fraction: float, message: str) -> None:
        self.load_progress.setValue(int(fraction * 100))
        self.experts.tuning_progressed(fraction, message)

    @Slot(object)
    def _on_worker_tune_finished(self, tuning: Any) -> None:
        self.experts.tuning_finished(tuning)

    def load_model(self, path: str) -> None:
        """Ask the worker to load ``path`` (stops a reply in progress first)."""
        if self._generating:
            self.stop()
        self.error_banner.hide()
        self.worker.load(path, int(self.store.get_setting(CONTEXT_KEY, 4096)))

    @Slot(str)
    def _on_worker_load_started(self, path: str) -> None:
        self._model = None
        self.model_label.setText(f"Loading {Path(path).name}…")
        self.load_progress.setValue(0)
        self.load_progress.show()
        self.open_button.setEnabled(False)

    @Slot(float)
    def _on_worker_load_progressed(self, value: float) -> None:
        self.load_progress.setValue(int(value * 100))

    @Slot(object)
    def _on_worker_model_loaded(self, model: LoadedModel) -> None:
        self._model = model
        self._device_memory = {}
        self._tuning = False
        self.load_progress.hide()
        self.open_button.setEnabled(True)
        experts = (
            f", {model.n_experts} experts ({model.n_experts_used} active)"
            if model.n_experts > 1
            else ""
        )
        self.model_label.setText(
            f"Model: <b>{html.escape(model.name)}</b> · {model.file_type}{experts} · "
            f"context {model.n_ctx} · {html.escape(model.placement)}"
        )
        self.store.set_setting(LAST_MODEL_KEY, model.path)
        if self.library.find_path(model.path) is None:  # opened by hand: list it from now on
            path = model.path
            run_in_background(
                lambda: self.library.import_file(path, copy=False),
                lambda _model: None,
                lambda error: log.warning("could not list %s: %s", path, error),
                self,
            )
        measured = self.store.get_setting(MEASURED_KEY, {})
        measured[model.path] = {
            "devices": dict(model.device_bytes),
            "rss": model.rss_bytes,
            "n_ctx": model.n_ctx,
        }
        self.store.set_setting(MEASURED_KEY, measured)
        self.model_ready.emit(model)

    @Slot(str)
    def _on_worker_load_failed(self, message: str) -> None:
        self._no_model(message, "No model loaded")

    def _no_model(self, message: str, label: str, reload_path: str | None = None) -> None:
        """A load failed or the engine stopped: nothing to chat with; say why."""
        self._model = None
        self._tuning = False
        self.load_progress.hide()
        self.open_button.setEnabled(True)
        self.model_label.setText(label)
        self.show_error(message, reload_path)
        self.model_failed.emit(message)

    # -- conversations ---------------------------------------------------------------------

    def _refresh_conversations(self, select: int | None = None) -> None:
        conversations = self.store.conversations()
        if not conversations:
            conversations = [self.store.create_conversation()]
        target = select if select is not None else (self._conversation_id or conversations[0].id)
        self.conversation_list.blockSignals(True)
        self.conversation_list.clear()
        current = None
        for conversation in conversations:
            item = QListWidgetItem(conversation.title)
            item.setData(Qt.ItemDataRole.UserRole, conversation.id)
            self.conversation_list.addItem(item)
            if conversation.id == target:
                current = item
        self.conversation_list.blockSignals(False)
        self.conversation_list.setCurrentItem(current or self.conversation_list.item(0))

    @Slot(QListWidgetItem, QListWidgetItem)
    def _on_conversation_list_changed(self, item: QListWidgetItem | None, _previous: Any) -> None:
        if item is None:
            return
        conversation_id = int(item.data(Qt.ItemDataRole.UserRole))
        if conversation_id != self._conversation_id and self._generating:
            self.stop()
        self._conversation_id = conversation_id
        self._render_conversation()

    @Slot()
    def _on_new_button_clicked(self) -> None:
        conversation = self.store.create_conversation()
        self._refresh_conversations(select=conversation.id)
        self.input.setFocus()

    @Slot()
    def rename_current(self) -> None:
        if self._conversation_id is None:
            return
        current = self.store.conversation(self._conversation_id)
        title, ok = QInputDialog.getText(self, "Rename chat", "Title:", text=current.title)
        if ok and title.strip():
            self.store.rename_conversation(current.id, title)
            self._refresh_conversations(select=current.id)

    @Slot()
    def delete_current(self) -> None:
        if self._conversation_id is None:
            return
        current = self.store.conversation(self._conversation_id)
        answer = QMessageBox.question(
            self, "Delete chat", f"Delete “{current.title}” and all its messages?"
        )
        if answer != QMessageBox.StandardButton.Yes:
            return
        if self._generating:
            self.stop()
        self.store.delete_conversation(current.id)
        self._conversation_id = None
        self._refresh_conversations()

    # -- rendering -------------------------------------------------------------------------

    def _message_html(self, message: StoredMessage) -> str:
        if message.role == "user":
            who = "You"
            colour = "#2563eb"
        else:
            who = html.escape(message.model_name or "Assistant")
            colour = "#059669"
        body = html.escape(message.content).replace("\n", "<br>")
        if message.reasoning:
            thought = html.escape(message.reasoning).replace("\n", "<br>")
            body = (
                "<p style='margin:0 0 6px 0; color:#6b7280; font-size:small'>"
                f"<i>Thinking: {thought}</i></p>{body}"
            )
        foot = ""
        if message.role == "assistant":
            if message.stats:
                foot = (
                    "<p style='margin-top:3px; color:#6b7280; font-size:small'>"
                    f"{stats_line(message.stats)}</p>"
                )
            elif not message.complete and message.id != self._reply_id:
                foot = "<p style='margin-top:3px; color:#b45309; font-size:small'>interrupted</p>"
        return (
            f"<p style='margin-top:14px; margin-bottom:3px'><b style='color:{colour}'>{who}</b></p>"
            f"<p style='margin:0'>{body}</p>{foot}"
        )

    def _render_conversation(self) -> None:
        if self._conversation_id is None:
            self.view.clear()
            return
        messages = self.store.messages(self._conversation_id)
        self.view.setHtml("".join(self._message_html(m) for m in messages))
        self.view.moveCursor(QTextCursor.MoveOperation.End)

    # -- chatting --------------------------------------------------------------------------

    @Slot()
    def send(self) -> None:
        text = self.input.toPlainText().strip()
        if not text or self._generating:
            return
        if self._tuning:
            self.show_error("Tuning is measuring the model; chat resumes when it is loaded again.")
            return
        if self._model is None:
            self.show_error("No model is loaded. Use “Open model…” to choose a .gguf file.")
            return
        if self._conversation_id is None:
            self._refresh_conversations(select=self.store.create_conversation().id)
        assert self._conversation_id is not None
        conversation_id = self._conversation_id
        self.error_banner.hide()
        self.input.clear()
        history = self.store.messages(conversation_id)
        self.store.add_message(conversation_id, "user", text)
        if not any(m.role == "user" for m in history):
            self.store.rename_conversation(conversation_id, _title_from(text))
            self._refresh_conversations(select=conversation_id)
        chat = tuple(
            ChatMessage(m.role, m.content, m.reasoning)
            for m in self.store.messages(conversation_id)
            if m.content or m.role == "user"
        )
        reply = self.store.start_reply(conversation_id, self._model.name)
        self._reply_id = reply.id
        self._reply_conversation_id = conversation_id
        self._reply_text = ""
        self._reply_reasoning = ""
        self._reply_saved_at = time.monotonic()
        self._render_conversation()  # ends with the empty reply; pieces are appended to it
        self._set_generating(True)
        self.worker.generate(ChatRequest(chat, self.sampling))

    @Slot()
    def stop(self) -> None:
        """Stop the reply; it ends within one token (or never starts, if it was waiting)."""
        self.worker.stop()

    def _set_generating(self, generating: bool) -> None:
        self._generating = generating
        self.send_button.setEnabled(not generating)
        self.stop_button.setEnabled(generating)
        self.open_button.setEnabled(not generating)

    @Slot(str)
    def _on_worker_token_received(self, piece: str) -> None:
        if self._reply_id is None:
            return
        if self._reply_reasoning and not self._reply_text:
            piece = "\n" + piece.lstrip()  # the answer starts below the reasoning
        self._reply_text += piece
        self._show_piece(piece, reasoning=False)

    @Slot(str)
    def _on_worker_reasoning_received(self, piece: str) -> None:
        if self._reply_id is None:
            return
        shown = piece if self._reply_reasoning else "Thinking: " + piece
        self._reply_reasoning += piece
        self._show_piece(shown, reasoning=True)

    def _show_piece(self, piece: str, reasoning: bool) -> None:
        """Append a streamed piece to the reply in view (grey italics for reasoning), and
        save the reply now and then."""
        assert self._reply_id is not None
        if self._reply_conversation_id == self._conversation_id:
            cursor = self.view.textCursor()
            cursor.movePosition(QTextCursor.MoveOperation.End)
            style = QTextCharFormat()
            if reasoning:
                style.setForeground(self.palette().placeholderText())
                style.setFontItalic(True)
            cursor.insertText(piece, style)
            bar = self.view.verticalScrollBar()
            bar.setValue(bar.maximum())
            self.piece_shown.emit(piece)
        now = time.monotonic()
        if now - self._reply_saved_at >= SAVE_INTERVAL_S:
            self._reply_saved_at = now
            self.store.update_reply(self._reply_id, self._reply_text, self._reply_reasoning)

    @Slot(int, float, float)
    def _on_worker_live_stats(self, tokens: int, rate: float, ttft: float) -> None:
        self.speed_label.setText(f"{rate:.1f} tok/s")
        self.ttft_label.setText(f"first token {ttft * 1000:.0f} ms")

    @Slot(object, bool)
    def _on_worker_reply_finished(self, result: Stats, profiling: bool) -> None:
        stats = {**result.to_dict(), "profiling": profiling}
        self._device_memory = dict(result.device_memory)
        if self._reply_id is not None:
            self.store.finish_reply(self._reply_id, self._reply_text, stats, self._reply_reasoning)
            if self._model is not None and stats.get("generated_tokens", 0) > 8:
                measured = self.store.get_setting(MEASURED_KEY, {})
                entry = measured.setdefault(self._model.path, {})
                entry["generation_tokens_per_s"] = stats["generation_tokens_per_s"]
                self.store.set_setting(MEASURED_KEY, measured)
        self._reply_id = None
        self._set_generating(False)
        self.speed_label.setText(f"{stats['generation_tokens_per_s']:.1f} tok/s")
        self.ttft_label.setText(f"first token {stats['time_to_first_token'] * 1000:.0f} ms")
        self._render_conversation()
        self.reply_done.emit(stats)

    @Slot(str, bool)
    def _on_worker_reply_failed(self, message: str, crashed: bool) -> None:
        if self._reply_id is not None:
            if self._reply_text or self._reply_reasoning:
                self.store.update_reply(self._reply_id, self._reply_text, self._reply_reasoning)
            else:
                self.store.delete_message(self._reply_id)
        self._reply_id = None
        self._set_generating(False)
        self._render_conversation()
        if not crashed:  # a crash is reported once, by _on_worker_engine_crashed
            self.show_error(message)

    @Slot(object)
    def _on_worker_engine_crashed(self, event: EngineCrashed) -> None:
        self._no_model(event.message, "No model loaded: the engine stopped", event.model_path)

    @Slot(object)
    def _on_worker_queue_changed(self, queue: QueueChanged) -> None:
        """The API's requests, shown where the window's own reply would be."""
        api_waiting = sum(1 for r in queue.waiting if r.client != WINDOW_CLIENT)
        running = queue.running
        parts = []
        if running is not None and running.client != WINDOW_CLIENT:
            parts.append(f"API: replying to {running.client.removeprefix('API ')}")
        if api_waiting:
            parts.append(f"{api_waiting} API request{'s' if api_waiting > 1 else ''} waiting")
        ours_waiting = any(r.client == WINDOW_CLIENT for r in queue.waiting)
        if ours_waiting:
            parts.append("your reply starts when the model is free")
        self.queue_label.setText(" · ".join(parts))

    # -- status ----------------------------------------------------------------------------

    @Slot()
    def _on_memory_timer_timeout(self) -> None:
        rss = psutil.Process().memory_info().rss
        pid = self.worker.host.pid
        if pid is not None:  # the engine's process, where the model is
            with contextlib.suppress(psutil.Error):
                rss += psutil.Process(pid).memory_info().rss
        self.ram_label.setText(self._ram_text(rss))
        if self._model is None:
            return
        devices = self._device_memory or {
            name: (size, 0) for name, size in self._model.device_bytes.items() if name != "CPU"
        }
        if devices:
            used = sum(used for used, _total in devices.values())
            total = sum(total for _used, total in devices.values())
            of = f" / {_gib(total)}" if total else ""
            self.vram_label.setText(f"VRAM {_gib(used)}{of}")
        else:
            self.vram_label.setText("VRAM: no GPU in use")

    @staticmethod
    def _ram_text(rss: int) -> str:
        return f"RAM {_gib(rss)} (free {_gib(psutil.virtual_memory().available)})"

    # -- shutdown --------------------------------------------------------------------------

    @Slot(object)
    def _on_downloads_changed(self, event: DownloadEvent) -> None:
        active = [e for e in self.downloads.latest.values() if e.state in ACTIVE_DOWNLOADS]
        if not active:
            self.download_label.setText(f"Downloaded {event.name}" if event.state == "done" else "")
            return
        first = active[0]
        more = f" (+{len(active) - 1} more)" if len(active) > 1 else ""
        self.download_label.setText(f"↓ {first.name}: {describe(first)}{more}")

    def closeEvent(self, event: QCloseEvent) -> None:
        self.downloads.close()  # what is on disk stays; the download resumes at the next start
        self._memory_timer.stop()
        if self._reply_id is not None:
            self.store.update_reply(self._reply_id, self._reply_text, self._reply_reasoning)
        self.api.stop()  # open streams end; their generations are cancelled
        self.worker.close()  # the engine's process frees the model and ends
        super().closeEvent(event)


def _title_from(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= 48 else line[:47].rstrip() + "…"
