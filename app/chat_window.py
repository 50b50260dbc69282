"""The chat window: conversations on the side, the conversation, the input, live stats."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
from PySide6.QtCore import QSize, Qt, QTimer, Signal, Slot
from PySide6.QtGui import (
    QAction,
    QCloseEvent,
    QGuiApplication,
    QKeySequence,
    QPainter,
    QPaintEvent,
)
from PySide6.QtWidgets import (
    QComboBox,
    QDockWidget,
    QFileDialog,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QMainWindow,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSplitter,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.about import AboutDialog
from app.api_control import ApiControl
from app.background import run_in_background
from app.downloads import Downloads, describe
from app.experts_panel import ExpertsPanel
from app.message_view import MessageView, can_continue
from app.model_manager import CONTEXT_KEY, MEASURED_KEY, ModelManager
from app.perf_panel import PerfPanel
from app.sampling_dialog import SAMPLING_KEY, SamplingDialog
from app.settings_dialog import SettingsDialog
from app.sidebar import Sidebar
from app.system_prompt import SystemPromptDialog
from app.worker import WINDOW_CLIENT, HostAdapter
from engine import export
from engine.chat_format import TemplateOptions
from engine.computers import enabled_endpoints, load_computers, ram_limit
from engine.downloads import DownloadEvent
from engine.errors import MoeChatError
from engine.host import ChatMessage, ChatRequest, EngineCrashed, LoadedModel, QueueChanged
from engine.library import Library
from engine.reorder import reorder_by_heat
from engine.session import SamplingSettings, Stats, recommended_sampling
from engine.store import Store, StoredMessage
from engine.throttle import Throttle
from engine.units import format_bytes

SAVE_INTERVAL_S = 1.0
DRAFT_SAVE_DELAY_MS = 800
log = logging.getLogger(__name__)

LAST_MODEL_KEY = "last_model_path"
ACTIVE_DOWNLOADS = ("queued", "running", "retrying", "verifying")

# What the reasoning control offers, by the template option the loaded model reads.
REASONING_CHOICES = {
    "reasoning_effort": [
        ("Reasoning: default", ""),
        ("Reasoning: low", "low"),
        ("Reasoning: medium", "medium"),
        ("Reasoning: high", "high"),
    ],
    "enable_thinking": [
        ("Thinking: default", ""),
        ("Thinking: on", "on"),
        ("Thinking: off", "off"),
    ],
}


def template_options(reasoning: str, supported: tuple[str, ...]) -> TemplateOptions:
    """A conversation's reasoning setting as the loaded model's template takes it."""
    if reasoning in ("low", "medium", "high") and "reasoning_effort" in supported:
        return TemplateOptions(reasoning_effort=reasoning)
    if reasoning in ("on", "off") and "enable_thinking" in supported:
        return TemplateOptions(enable_thinking=reasoning == "on")
    return TemplateOptions()


class ElidedLabel(QLabel):
    """A one-line label that shortens its text with "…" instead of widening the window; the
    whole text is its tooltip and its accessible name."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setTextFormat(Qt.TextFormat.PlainText)

    def setText(self, text: str) -> None:
        super().setText(text)
        self.setToolTip(text)
        self.setAccessibleName(text)

    def minimumSizeHint(self) -> QSize:
        return QSize(40, super().minimumSizeHint().height())

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        rect = self.contentsRect()
        shown = self.fontMetrics().elidedText(
            self.text(), Qt.TextElideMode.ElideRight, rect.width()
        )
        painter.drawText(rect, int(self.alignment() | Qt.AlignmentFlag.AlignVCenter), shown)


class _MessageInput(QPlainTextEdit):
    """The message box: Enter sends, Shift+Enter is a new line, Tab leaves it."""

    def __init__(self, parent: QWidget, on_send: Any) -> None:
        super().__init__(parent)
        self._on_send = on_send
        self.setTabChangesFocus(True)

    def keyPressEvent(self, event: Any) -> None:
        enter = event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter)
        if enter and not event.modifiers() & Qt.KeyboardModifier.ShiftModifier:
            self._on_send()
            return
        super().keyPressEvent(event)


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
        self._reload_alone = False  # … without the other computers (one stopped answering)
        self._device_memory: dict[str, tuple[int, int]] = {}
        # The reply being written (in any conversation, shown or not).
        self._reply: StoredMessage | None = None
        self._reply_text = ""
        self._reply_reasoning = ""
        self._saves = Throttle(SAVE_INTERVAL_S)  # of the reply, while it streams
        self._reasoning_started: float | None = None
        self._reasoning_s: float | None = None
        self._editing: int | None = None  # the user message being edited, if any
        self._generating = False
        self._tuning = False
        self._load_after_reply: str | None = None  # a model to load once the reply is over
        self.sampling = SamplingSettings()  # how replies are sampled: the loaded model's
        self._sampling_defaults = SamplingSettings()
        self._sampling_source = "MoE Chat's defaults"

        self._build_ui()
        self._start_host()
        self.api = ApiControl(self.store, self.worker.host, self)
        self.api.changed.connect(self._on_api_changed)
        self.api.failed.connect(self.show_error)
        self.downloads.changed.connect(self._on_downloads_changed)
        self.store.prune_empty()  # the empty chats an earlier run left
        self.open_conversation(None)
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
        splitter.setChildrenCollapsible(False)
        self.sidebar = Sidebar(self.store, splitter)
        self.sidebar.conversation_chosen.connect(self._on_sidebar_conversation_chosen)
        self.sidebar.message_found.connect(self._on_sidebar_message_found)
        self.sidebar.new_requested.connect(self._on_new_button_clicked)
        self.sidebar.rename_requested.connect(self.rename_current)
        self.sidebar.delete_requested.connect(self.delete_current)
        self.sidebar.setMinimumWidth(170)
        self.new_button = self.sidebar.new_button
        self.rename_button = self.sidebar.rename_button
        self.delete_button = self.sidebar.delete_button
        self.conversation_list = self.sidebar.conversation_list

        main = QWidget(splitter)
        layout = QVBoxLayout(main)
        layout.setContentsMargins(4, 8, 8, 8)
        model_row = QHBoxLayout()
        self.model_label = ElidedLabel(main)
        self.model_label.setObjectName("modelLabel")
        self.models_button = QPushButton("Models…", main)
        self.models_button.setToolTip("What runs well on this machine, and your local models")
        self.models_button.clicked.connect(self.open_model_manager)
        self.open_button = QPushButton("Open model…", main)
        self.open_button.setToolTip("Load a .gguf file from this computer")
        self.open_button.clicked.connect(self._on_open_button_clicked)
        self.load_progress = QProgressBar(main)
        self.load_progress.setAccessibleName("Loading progress")
        self.load_progress.setRange(0, 100)
        self.load_progress.setMaximumWidth(120)
        self.load_progress.hide()
        model_row.addWidget(self.model_label, 1)
        model_row.addWidget(self.load_progress)
        model_row.addWidget(self.models_button)
        model_row.addWidget(self.open_button)
        layout.addLayout(model_row)

        self.error_banner = QWidget(main)
        self.error_banner.setObjectName("errorBanner")
        self.error_banner.setAttribute(Qt.WidgetAttribute.WA_StyledBackground, True)
        banner_layout = QHBoxLayout(self.error_banner)
        banner_layout.setContentsMargins(10, 6, 6, 6)
        self.error_label = QLabel(self.error_banner)
        self.error_label.setWordWrap(True)
        self.error_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.error_label.setAccessibleName("Error")
        self.reload_button = QPushButton("Load again", self.error_banner)
        self.reload_button.setToolTip("Start the engine again and load the same model")
        self.reload_button.clicked.connect(self._on_reload_button_clicked)
        self.reload_button.hide()
        close = QToolButton(self.error_banner)
        close.setText("✕")
        close.setToolTip("Dismiss")
        close.setAccessibleName("Dismiss the message")
        close.clicked.connect(self.error_banner.hide)
        banner_layout.addWidget(self.error_label, 1)
        banner_layout.addWidget(self.reload_button, 0, Qt.AlignmentFlag.AlignTop)
        banner_layout.addWidget(close, 0, Qt.AlignmentFlag.AlignTop)
        self.error_banner.hide()
        layout.addWidget(self.error_banner)

        chat_row = QHBoxLayout()
        self.system_button = QPushButton("System prompt…", main)
        self.system_button.setAccessibleName("System prompt")
        self.system_button.setToolTip("Instructions the model reads before this chat")
        self.system_button.clicked.connect(self.open_system_prompt)
        self.reasoning_combo = QComboBox(main)
        self.reasoning_combo.setAccessibleName("Reasoning")
        self.reasoning_combo.setToolTip("How much the model thinks before it answers, in this chat")
        self.reasoning_combo.activated.connect(self._on_reasoning_combo_activated)
        self.reasoning_combo.hide()
        self.sampling_button = QPushButton("Sampling…", main)
        self.sampling_button.setToolTip("Temperature, top-p and the rest, for this model")
        self.sampling_button.clicked.connect(self.open_sampling)
        self.sampling_button.setEnabled(False)
        self.context_label = ElidedLabel(main)
        self.context_label.setObjectName("hintLabel")
        self.context_label.setAlignment(Qt.AlignmentFlag.AlignRight)
        chat_row.addWidget(self.system_button)
        chat_row.addWidget(self.reasoning_combo)
        chat_row.addWidget(self.sampling_button)
        chat_row.addWidget(self.context_label, 1)
        layout.addLayout(chat_row)

        self.view = MessageView(main)
        self.view.regenerate_requested.connect(self.regenerate)
        self.view.edit_requested.connect(self.edit_message)
        self.view.continue_requested.connect(self.continue_reply)
        self.view.alternative_chosen.connect(self._on_view_alternative_chosen)
        layout.addWidget(self.view, 1)

        self.edit_bar = QWidget(main)
        edit_layout = QHBoxLayout(self.edit_bar)
        edit_layout.setContentsMargins(0, 0, 0, 0)
        edit_label = QLabel("Editing a message: Enter sends it as a new version.", self.edit_bar)
        edit_label.setObjectName("hintLabel")
        self.cancel_edit_button = QPushButton("Cancel edit", self.edit_bar)
        self.cancel_edit_button.setToolTip("Keep the message as it was (Esc)")
        self.cancel_edit_button.clicked.connect(self.cancel_edit)
        edit_layout.addWidget(edit_label, 1)
        edit_layout.addWidget(self.cancel_edit_button)
        self.edit_bar.hide()
        layout.addWidget(self.edit_bar)

        input_row = QHBoxLayout()
        self.input = _MessageInput(main, self.send)
        self.input.setAccessibleName("Message")
        self.input.setPlaceholderText(
            "Message the model (Enter to send, Shift+Enter for a new line)"
        )
        self.input.setMaximumHeight(90)
        self.input.textChanged.connect(self._on_input_text_changed)
        self.send_button = QPushButton("Send", main)
        self.send_button.setDefault(True)
        self.send_button.setToolTip("Send (Enter)")
        self.send_button.clicked.connect(self.send)
        self.stop_button = QPushButton("Stop", main)
        self.stop_button.setEnabled(False)
        self.stop_button.setToolTip("Stop the reply (Esc)")
        self.stop_button.clicked.connect(self.stop)
        buttons = QVBoxLayout()
        buttons.addWidget(self.send_button)
        buttons.addWidget(self.stop_button)
        input_row.addWidget(self.input, 1)
        input_row.addLayout(buttons)
        layout.addLayout(input_row)

        splitter.addWidget(self.sidebar)
        splitter.addWidget(main)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([240, 860])
        self.setCentralWidget(splitter)
        for before, after in (
            (self.sidebar.delete_button, self.models_button),
            (self.models_button, self.open_button),
            (self.open_button, self.system_button),
            (self.system_button, self.reasoning_combo),
            (self.reasoning_combo, self.sampling_button),
            (self.sampling_button, self.view),
            (self.view, self.input),
            (self.input, self.send_button),
            (self.send_button, self.stop_button),
        ):
            self.setTabOrder(before, after)

        status = self.statusBar()
        self.speed_label = QLabel("- tok/s")
        self.ttft_label = QLabel("first token -")
        self.ram_label = QLabel("RAM -")
        self.vram_label = QLabel("VRAM -")
        self.download_label = ElidedLabel()
        self.download_label.setObjectName("statLabel")
        status.addWidget(self.download_label, 1)
        self.queue_label = ElidedLabel()
        self.queue_label.setObjectName("statLabel")
        status.addWidget(self.queue_label, 1)
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
        file_menu.addAction("&Export chat…", QKeySequence("Ctrl+Shift+S"), self.export_current)
        settings_action = file_menu.addAction(
            "&Settings…", QKeySequence("Ctrl+,"), self.open_settings
        )
        settings_action.setMenuRole(QAction.MenuRole.PreferencesRole)
        file_menu.addSeparator()
        quit_action = file_menu.addAction("&Quit", QKeySequence.StandardKey.Quit, self.close)
        quit_action.setMenuRole(QAction.MenuRole.QuitRole)
        chat_menu = self.menuBar().addMenu("&Chat")
        chat_menu.addAction("&Search all chats", QKeySequence.StandardKey.Find,
                            self.sidebar.start_search)  # fmt: skip
        chat_menu.addAction("&Rename chat", QKeySequence("F2"), self.rename_current)
        chat_menu.addAction("&System prompt…", self.open_system_prompt)
        chat_menu.addAction("Sa&mpling settings…", self.open_sampling)
        chat_menu.addAction("&Copy last reply", QKeySequence("Ctrl+Shift+C"), self.copy_last_reply)
        self.stop_action = chat_menu.addAction("S&top reply", QKeySequence("Esc"), self.escape)
        self.perf = PerfPanel(self)
        self.perf_dock = QDockWidget("Performance since the model was loaded", self)
        self.perf_dock.setObjectName("perfDock")
        self.perf_dock.setWidget(self.perf)
        self.perf_dock.setAllowedAreas(
            Qt.DockWidgetArea.BottomDockWidgetArea | Qt.DockWidgetArea.TopDockWidgetArea
        )
        self.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, self.perf_dock)
        self.perf_dock.hide()
        view_menu = self.menuBar().addMenu("&View")
        view_menu.addAction("&Experts…", QKeySequence("Ctrl+E"), self.open_experts)
        perf_action = self.perf_dock.toggleViewAction()
        perf_action.setText("&Performance over time")
        perf_action.setShortcut(QKeySequence("Ctrl+Shift+P"))
        view_menu.addAction(perf_action)
        help_menu = self.menuBar().addMenu("&Help")
        about_action = help_menu.addAction("&About MoE Chat", self.open_about)
        about_action.setMenuRole(QAction.MenuRole.AboutRole)
        self._draft_timer = QTimer(self)
        self._draft_timer.setSingleShot(True)
        self._draft_timer.setInterval(DRAFT_SAVE_DELAY_MS)
        self._draft_timer.timeout.connect(self._save_draft)

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
        self._reorder_cancel = threading.Event()  # set by the panel's Cancel while reordering
        self.experts.profiling_toggled.connect(self.worker.set_profiling)
        self.worker.heat_updated.connect(self.experts.set_heat)
        self.model_ready.connect(self.experts.set_model)  # after the window took it in
        self.reply_done.connect(self.experts.set_reply_stats)
        self.experts.tune_requested.connect(self.tune_model)
        self.experts.tune_cancelled.connect(self.cancel_tuning)
        self.experts.reorder_requested.connect(self.reorder_model)
        self.experts.reorder_cancelled.connect(self._reorder_cancel.set)
        self.worker.tune_started.connect(self._on_worker_tune_started)
        self.worker.tune_progressed.connect(self._on_worker_tune_progressed)
        self.worker.tune_finished.connect(self._on_worker_tune_finished)
        self.worker.tune_failed.connect(self.show_error)

    @property
    def conversation_id(self) -> int | None:
        """The chat shown."""
        return self._conversation_id

    @property
    def model(self) -> LoadedModel | None:
        """The model loaded, None while none is (loading, tuning, after a failure)."""
        return self._model

    @property
    def host(self) -> Any:
        """The model host the window's replies (and the local server's) run on."""
        return self.worker.host

    # -- errors ----------------------------------------------------------------------------

    def show_error(self, text: str, reload_path: str | None = None, alone: bool = False) -> None:
        """The one place errors appear: a banner above the conversation, with "Load again"
        when the engine stopped under a model ("Load on this computer alone" when another
        computer it used stopped answering)."""
        self.error_label.setText(text)
        self._crashed_path = reload_path
        self._reload_alone = alone
        self.reload_button.setText("Load on this computer alone" if alone else "Load again")
        self.reload_button.setVisible(reload_path is not None)
        self.error_banner.show()

    @Slot()
    def _on_reload_button_clicked(self) -> None:
        if self._crashed_path is not None:
            self.load_model(self._crashed_path, alone=self._reload_alone)

    # -- model -----------------------------------------------------------------------------

    @Slot()
    def open_model_manager(self) -> ModelManager:
        """Show the model manager (one at a time); a model chosen there is loaded here."""
        if self._manager is None:
            self._manager = ModelManager(self.store, self.downloads, self, self.api)
            self._manager.model_chosen.connect(self.load_model)
            self._manager.finished.connect(self._on_manager_finished)
            self._manager.set_loaded(self._model.path if self._model is not None else None)
        self._manager.show()
        self._manager.raise_()
        return self._manager

    @Slot()
    def open_settings(self) -> SettingsDialog:
        busy = self._model.workers if self._model is not None else ()
        dialog = SettingsDialog(self.downloads, self, self.api, self.store, busy)
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
        path, _ = QFileDialog.getOpenFileName(
            self, "Open a GGUF model", self.open_folder(), "GGUF models (*.gguf);;All files (*)"
        )
        if path:
            self.load_model(path)

    def open_folder(self) -> str:
        """Where "Open model…" starts: the last model's folder, else the models folder."""
        last = self.store.get_setting(LAST_MODEL_KEY)
        if last and Path(last).parent.is_dir():
            return str(Path(last).parent)
        return str(self.library.models_dir)

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
        self.model_label.setText(f"Tuning {name} for this machine…")
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

    @Slot()
    def reorder_model(self) -> None:
        """Write a copy of the loaded model with its experts in heat order (engine.reorder),
        list it, and load it: the hot-experts engine then puts each layer's hottest experts
        on the GPU. The original stays as it is; chatting goes on while the copy is written."""
        model = self._model
        if model is None:
            return
        source = Path(model.path)
        target = self.library.models_dir / "imported"
        try:
            size = source.stat().st_size
        except OSError as exc:
            self.show_error(f"{source.name} cannot be read any more: {exc.strerror or exc}.")
            return
        answer = QMessageBox.question(
            self,
            "Order experts by heat",
            f"Write a copy of {model.name} with each layer's experts hottest first? It takes "
            f"{format_bytes(size)} on disk; the original stays as it is.",
        )
        if answer != QMessageBox.StandardButton.Yes:
            return
        self._reorder_cancel.clear()
        progressed = self.experts.reorder_progressed

        def report(fraction: float) -> bool:
            progressed.emit(fraction)
            return not self._reorder_cancel.is_set()

        def work() -> Any:
            copy = reorder_by_heat(source, target, report)
            return self.library.import_file(copy, copy=True)  # written in place already

        def done(installed: Any) -> None:
            name = Path(installed.path).name
            if self._generating:  # the reply goes on to its end; the copy loads after it
                self._load_after_reply = installed.path
                self.experts.reorder_finished(f"Wrote {name}; it loads when this reply ends.")
                return
            self.experts.reorder_finished(f"Wrote {name}; loading it…")
            self.load_model(installed.path)

        def failed(error: BaseException) -> None:
            self.experts.reorder_finished(str(error))

        self.experts.reorder_started(model.name, size)
        run_in_background(work, done, self, failed)

    def load_model(self, path: str, alone: bool = False) -> None:
        """Ask the worker to load ``path`` (stops a reply in progress first), with the other
        computers ticked in Settings → Computers unless ``alone``."""
        if self._generating:
            self.stop()
        self._load_after_reply = None  # this load replaces one that waited for the reply
        self.error_banner.hide()
        workers = () if alone else enabled_endpoints(load_computers(self.store))
        n_ctx = int(self.store.get_setting(CONTEXT_KEY, 4096))
        self.worker.load(path, n_ctx, workers, ram_limit(self.store))

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
            f"Model: {model.name} · {model.file_type}{experts} · context {model.n_ctx} · "
            f"{model.placement}"
        )
        self.store.set_setting(LAST_MODEL_KEY, model.path)
        if self._manager is not None:
            self._manager.set_loaded(model.path)
        self.perf.reset(model.name)
        self._take_sampling(model)
        self._show_chat_settings()
        if self.library.find_path(model.path) is None:  # opened by hand: list it from now on
            path = model.path
            run_in_background(
                lambda: self.library.import_file(path, copy=False),
                lambda _model: None,
                self,
                lambda error: log.warning("could not list %s: %s", path, error),
            )
        measured = self.store.get_setting(MEASURED_KEY, {})
        measured[model.path] = {
            "devices": dict(model.device_bytes),
            "rss": model.rss_bytes,
            "n_ctx": model.n_ctx,
        }
        self.store.set_setting(MEASURED_KEY, measured)
        if model.notes:  # a computer left out, a link not measured: worth knowing, not fatal
            self.show_error(" ".join(model.notes))
        self.model_ready.emit(model)

    @Slot(str)
    def _on_worker_load_failed(self, message: str) -> None:
        self._no_model(message, "No model loaded")

    def _no_model(
        self, message: str, label: str, reload_path: str | None = None, alone: bool = False
    ) -> None:
        """A load failed or the engine stopped: nothing to chat with; say why."""
        self._model = None
        self._tuning = False
        self.load_progress.hide()
        self.open_button.setEnabled(True)
        self.model_label.setText(label)
        if self._manager is not None:
            self._manager.set_loaded(None)
        self._show_chat_settings()
        self.show_error(message, reload_path, alone)
        self.model_failed.emit(message)

    # -- conversations ---------------------------------------------------------------------

    def open_conversation(self, conversation_id: int | None) -> None:
        """Show ``conversation_id`` (the most recent one, or a new one, when None): its
        messages, its draft, its settings. The chat left behind keeps its draft, and goes
        if nothing was ever written in it."""
        leaving = self._conversation_id
        if leaving is not None and leaving != conversation_id:
            self._save_draft()
            self.cancel_edit()
        if conversation_id is None:
            conversations = self.store.conversations()
            conversation_id = (
                conversations[0].id if conversations else self.store.create_conversation().id
            )
        self._conversation_id = conversation_id
        if leaving is not None and leaving != conversation_id:
            self.store.prune_empty(keep=conversation_id)  # (a running reply's chat has messages)
        self.sidebar.refresh(select=conversation_id)
        conversation = self.store.conversation(conversation_id)
        self.input.blockSignals(True)
        self.input.setPlainText(conversation.draft)
        self.input.moveCursor(self.input.textCursor().MoveOperation.End)
        self.input.blockSignals(False)
        self._render_conversation()
        self._show_chat_settings()

    @Slot(int)
    def _on_sidebar_conversation_chosen(self, conversation_id: int) -> None:
        if conversation_id != self._conversation_id:
            self.open_conversation(conversation_id)

    @Slot(int, int)
    def _on_sidebar_message_found(self, conversation_id: int, message_id: int) -> None:
        """A search result: show its conversation, with the path through that message."""
        if not self._generating or self._reply is None or (
            self._reply.conversation_id != conversation_id
        ):  # fmt: skip
            self.store.choose(message_id)  # (never re-route the path a reply is written on)
        self.open_conversation(conversation_id)
        self.view.scroll_to(message_id)

    @Slot()
    def _on_new_button_clicked(self) -> None:
        current = self._conversation_id
        if current is not None and self._is_empty(current) and not self.input.toPlainText():
            self.input.setFocus()  # this one is still empty: no pile of empty chats
            return
        self.open_conversation(self.store.create_conversation().id)
        self.input.setFocus()

    def _is_empty(self, conversation_id: int) -> bool:
        conversation = self.store.conversation(conversation_id)
        empty = not conversation.system_prompt and not self.store.messages(conversation_id)
        return empty and (self._reply is None or self._reply.conversation_id != conversation_id)

    @Slot()
    def rename_current(self) -> None:
        if self._conversation_id is None:
            return
        current = self.store.conversation(self._conversation_id)
        title, ok = QInputDialog.getText(self, "Rename chat", "Title:", text=current.title)
        if ok and title.strip():
            self.store.rename_conversation(current.id, title)
            self.sidebar.refresh(select=current.id)

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
        if self._reply is not None and self._reply.conversation_id == current.id:
            self.stop()
            self._reply = None  # what it still sends has nowhere to go
        self.store.delete_conversation(current.id)
        self._conversation_id = None
        self.open_conversation(None)

    @Slot()
    def export_current(self) -> None:
        if self._conversation_id is None:
            return
        conversation = self.store.conversation(self._conversation_id)
        name = "".join(c if c.isalnum() or c in " -_" else "_" for c in conversation.title).strip()
        filters = ";;".join(export.FORMATS.values())
        path, chosen = QFileDialog.getSaveFileName(
            self, "Export chat", str(Path.home() / f"{name or 'chat'}.md"), filters
        )
        if not path:
            return
        if Path(path).suffix.lower() not in (".md", ".json"):
            path += ".json" if chosen == export.FORMATS["json"] else ".md"
        try:
            export.export(self.store, conversation.id, path)
        except MoeChatError as exc:
            self.show_error(str(exc))

    @Slot()
    def open_system_prompt(self) -> SystemPromptDialog | None:
        if self._conversation_id is None:
            return None
        dialog = SystemPromptDialog(self.store, self._conversation_id, self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.accepted.connect(self._show_chat_settings)
        dialog.open()
        return dialog

    def _take_sampling(self, model: LoadedModel) -> None:
        """The model's sampling: MoE Chat's defaults, then its family's recommendation, then
        what its file recommends; then what the user changed for it."""
        installed = self.library.find_path(model.path)
        self._sampling_defaults, self._sampling_source = recommended_sampling(
            installed.catalog_id if installed is not None else "", model.sampling_defaults
        )
        changed = self.store.get_setting(SAMPLING_KEY, {}).get(Path(model.path).name, {})
        self.sampling = self._sampling_defaults.updated(changed)

    @Slot()
    def open_sampling(self) -> SamplingDialog | None:
        if self._model is None:
            self.show_error("Load a model first: sampling is set per model.")
            return None
        name = Path(self._model.path).name
        dialog = SamplingDialog(
            self._model.name, self._sampling_defaults, self._sampling_source, self.sampling, self
        )
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)

        def save() -> None:
            self.sampling = dialog.settings()
            saved = self.store.get_setting(SAMPLING_KEY, {})
            saved[name] = self.sampling.differences(self._sampling_defaults)
            self.store.set_setting(SAMPLING_KEY, saved)

        dialog.accepted.connect(save)
        dialog.open()
        return dialog

    def _show_chat_settings(self) -> None:
        """The shown conversation's system prompt and reasoning setting, and the context it
        used, as the loaded model takes them."""
        if self._conversation_id is None:
            return
        conversation = self.store.conversation(self._conversation_id)
        prompt = " ".join(conversation.system_prompt.split())
        self.system_button.setText(
            "System prompt…" if not prompt else f"System: {prompt[:24]}…" if len(prompt) > 24
            else f"System: {prompt}"
        )  # fmt: skip
        self.system_button.setToolTip(conversation.system_prompt or "No system prompt")
        self.sampling_button.setEnabled(self._model is not None)
        supported = self._model.template_options if self._model is not None else ()
        choices = next((REASONING_CHOICES[o] for o in supported if o in REASONING_CHOICES), None)
        self.reasoning_combo.setVisible(choices is not None)
        if choices is not None:
            self.reasoning_combo.clear()
            for text, value in choices:
                self.reasoning_combo.addItem(text, value)
            index = self.reasoning_combo.findData(conversation.reasoning)
            self.reasoning_combo.setCurrentIndex(max(index, 0))
        self._show_context()

    def _show_context(self) -> None:
        """Tokens the last reply shown had in context, of the model's context; and the turns
        that no longer fit."""
        replies = [m for m in self.view.messages() if (m.stats or {}).get("prompt_tokens")]
        if self._model is None or not replies:
            self.context_label.setText("")
            return
        stats = replies[-1].stats or {}
        used = stats.get("prompt_tokens", 0) + stats.get("generated_tokens", 0)
        text = f"Context: {used:,} of {self._model.n_ctx:,} tokens"
        dropped = stats.get("dropped_turns", 0)
        if dropped:
            text += f" · {dropped} old turn{'s' if dropped > 1 else ''} left out"
        self.context_label.setText(text)

    @Slot(int)
    def _on_reasoning_combo_activated(self, index: int) -> None:
        if self._conversation_id is not None:
            self.store.set_reasoning(self._conversation_id, self.reasoning_combo.itemData(index))

    @Slot()
    def _on_input_text_changed(self) -> None:
        self._draft_timer.start()

    def _save_draft(self) -> None:
        self._draft_timer.stop()
        if self._conversation_id is not None and self._editing is None:
            with contextlib.suppress(MoeChatError):  # the chat may have just been deleted
                self.store.set_draft(self._conversation_id, self.input.toPlainText())

    # -- rendering -------------------------------------------------------------------------

    def _live_reply(self) -> StoredMessage:
        """The reply being written, as far as it has come."""
        assert self._reply is not None
        stats = {"reasoning_s": self._reasoning_s} if self._reasoning_s is not None else None
        return replace(
            self._reply, content=self._reply_text, reasoning=self._reply_reasoning, stats=stats
        )

    def _shown_messages(self) -> list[StoredMessage]:
        if self._conversation_id is None:
            return []
        messages = self.store.messages(self._conversation_id)
        if self._reply is not None:  # what the store has of it is up to a second old
            live = self._live_reply()
            messages = [replace(live, alternatives=m.alternatives) if m.id == live.id else m
                        for m in messages]  # fmt: skip
        return messages

    def _render_conversation(self) -> None:
        running = self._reply.id if self._reply is not None else None
        self.view.show_messages(self._shown_messages(), running)

    @Slot(int)
    def _on_view_alternative_chosen(self, message_id: int) -> None:
        if self._generating:
            return
        self.store.choose(message_id)
        self._render_conversation()
        self._show_context()

    # -- chatting --------------------------------------------------------------------------

    def _can_reply(self) -> bool:
        if self._generating:
            return False
        if self._tuning:
            self.show_error("Tuning is measuring the model; chat resumes when it is loaded again.")
            return False
        if self._model is None:
            self.show_error("No model is loaded. Use “Open model…” to choose a .gguf file.")
            return False
        return True

    @Slot()
    def send(self) -> None:
        text = self.input.toPlainText().strip()
        if not text or not self._can_reply():
            return
        if self._conversation_id is None:
            self.open_conversation(self.store.create_conversation().id)
        assert self._conversation_id is not None
        conversation_id = self._conversation_id
        self.error_banner.hide()
        if self._editing is not None:
            message = self.store.edit_message(self._editing, text)
            self.cancel_edit()
        else:
            first = not any(m.role == "user" for m in self.store.messages(conversation_id))
            message = self.store.add_message(conversation_id, "user", text)
            if first:
                self.store.rename_conversation(conversation_id, _title_from(text))
        self.input.clear()
        self.store.set_draft(conversation_id, "")
        self._start_reply(conversation_id, message.id)

    @Slot(int)
    def regenerate(self, message_id: int) -> None:
        """Write a reply again; the old one stays, as an alternative."""
        if not self._can_reply():
            return
        message = self.store.message(message_id)
        if message.parent_id is not None:
            self._start_reply(message.conversation_id, message.parent_id)

    @Slot(int)
    def continue_reply(self, message_id: int) -> None:
        """Go on writing a reply that was cut short, from its last word."""
        if not self._can_reply():
            return
        message = self.store.message(message_id)
        if can_continue(message):
            self.store.choose(message_id)
            self._start_reply(message.conversation_id, None, resume=message)

    @Slot(int)
    def edit_message(self, message_id: int) -> None:
        """Put a message of yours in the input, to send as a new version of it."""
        if self._generating:
            return
        self._save_draft()
        self._editing = message_id
        self.input.blockSignals(True)
        self.input.setPlainText(self.store.message(message_id).content)
        self.input.blockSignals(False)
        self.edit_bar.show()
        self.input.setFocus()

    @Slot()
    def cancel_edit(self) -> None:
        if self._editing is None:
            return
        self._editing = None
        self.edit_bar.hide()
        if self._conversation_id is not None:
            self.input.setPlainText(self.store.conversation(self._conversation_id).draft)

    def _start_reply(
        self, conversation_id: int, parent_id: int | None, resume: StoredMessage | None = None
    ) -> None:
        """Ask for a reply after ``parent_id`` (or go on with ``resume``), in the chat shown."""
        assert self._model is not None
        conversation = self.store.conversation(conversation_id)
        if resume is not None:
            self.store.reopen_reply(resume.id)
            reply = self.store.message(resume.id)
        else:
            reply = self.store.start_reply(conversation_id, self._model.name, parent_id)
        path = self.store.messages(conversation_id)
        history = path if resume is not None else path[:-1]
        chat = [ChatMessage("system", conversation.system_prompt)] if conversation.system_prompt \
            else []  # fmt: skip
        chat += [
            ChatMessage(m.role, m.content, m.reasoning)
            for m in history
            if m.content or m.role == "user" or m.id == reply.id
        ]
        self._reply = reply
        self._reply_text = reply.content
        self._reply_reasoning = reply.reasoning
        self._saves.restart()
        self._reasoning_started = self._reasoning_s = None
        self._set_generating(True)
        self.sidebar.running = conversation_id
        self.sidebar.refresh(select=self._conversation_id)
        self.view.show_messages(path, reply.id)  # the reply as it starts: as in the store
        options = template_options(conversation.reasoning, self._model.template_options)
        self.worker.generate(ChatRequest(tuple(chat), self.sampling, options, resume is not None))

    @Slot()
    def stop(self) -> None:
        """Stop the reply; it ends within one token (or never starts, if it was waiting)."""
        self.worker.stop()

    @Slot()
    def escape(self) -> None:
        """Esc: stop the reply; else leave editing; else leave the search."""
        if self._generating:
            self.stop()
        elif self._editing is not None:
            self.cancel_edit()
        elif self.sidebar.search.text():
            self.sidebar.clear_search()

    @Slot()
    def copy_last_reply(self) -> None:
        reply = self.view.last_reply()
        if reply is not None:
            QGuiApplication.clipboard().setText(reply.content)

    def _set_generating(self, generating: bool) -> None:
        self._generating = generating
        self.send_button.setEnabled(not generating)
        self.stop_button.setEnabled(generating)
        self.open_button.setEnabled(not generating)
        self.view.set_busy(generating)

    @Slot(str)
    def _on_worker_token_received(self, piece: str) -> None:
        if self._reply is None:
            return
        if self._reasoning_started is not None and self._reasoning_s is None:
            self._reasoning_s = time.monotonic() - self._reasoning_started
        self._reply_text += piece
        self._show_piece(piece)

    @Slot(str)
    def _on_worker_reasoning_received(self, piece: str) -> None:
        if self._reply is None:
            return
        if self._reasoning_started is None:
            self._reasoning_started = time.monotonic()
        self._reply_reasoning += piece
        self._show_piece(piece)

    def _show_piece(self, piece: str) -> None:
        """Show the reply as far as it has come, if its chat is in view, and save it now and
        then."""
        assert self._reply is not None
        if self._reply.conversation_id == self._conversation_id:
            self.view.update_message(self._live_reply(), running=True)
            self.piece_shown.emit(piece)
        if self._saves.ready():
            self.store.update_reply(self._reply.id, self._reply_text, self._reply_reasoning)

    @Slot(int, float, float)
    def _on_worker_live_stats(self, tokens: int, rate: float, ttft: float) -> None:
        self.speed_label.setText(f"{rate:.1f} tok/s")
        self.ttft_label.setText(f"first token {ttft * 1000:.0f} ms")

    @Slot(object, bool)
    def _on_worker_reply_finished(self, result: Stats, profiling: bool) -> None:
        stats = {**result.to_dict(), "profiling": profiling}
        if self._reasoning_s is not None:
            stats["reasoning_s"] = self._reasoning_s
        self._device_memory = dict(result.device_memory)
        reply = self._reply
        if reply is not None:
            self.store.finish_reply(reply.id, self._reply_text, stats, self._reply_reasoning)
            if self._model is not None and stats.get("generated_tokens", 0) > 8:
                measured = self.store.get_setting(MEASURED_KEY, {})
                entry = measured.setdefault(self._model.path, {})
                entry["generation_tokens_per_s"] = stats["generation_tokens_per_s"]
                self.store.set_setting(MEASURED_KEY, measured)
        self._end_reply()
        self.perf.add_reply(stats["generation_tokens_per_s"], stats["prompt_tokens_per_s"])
        self.speed_label.setText(f"{stats['generation_tokens_per_s']:.1f} tok/s")
        self.ttft_label.setText(f"first token {stats['time_to_first_token'] * 1000:.0f} ms")
        self.reply_done.emit(stats)
        self._load_waiting()

    @Slot(str, bool)
    def _on_worker_reply_failed(self, message: str, crashed: bool) -> None:
        reply = self._reply
        if reply is not None:
            if self._reply_text or self._reply_reasoning:
                self.store.update_reply(reply.id, self._reply_text, self._reply_reasoning)
            else:
                self.store.delete_message(reply.id)
        self._end_reply()
        if crashed:  # reported once, by _on_worker_engine_crashed, which offers a reload
            self._load_after_reply = None
        else:
            self._load_waiting()
            self.show_error(message)

    def _load_waiting(self) -> None:
        """Load the model that waited for the reply to end (Order experts by heat), if any."""
        if self._load_after_reply is not None:
            self.load_model(self._load_after_reply)

    def _end_reply(self) -> None:
        """The reply is over (saved by the caller): show it as it is in the store."""
        reply, self._reply = self._reply, None
        self._set_generating(False)
        self.sidebar.running = None
        self.sidebar.refresh(select=self._conversation_id)
        if reply is not None and reply.conversation_id == self._conversation_id:
            saved = next((m for m in self._shown_messages() if m.id == reply.id), None)
            if saved is not None and reply.id in self.view.widgets:
                self.view.update_message(saved)
            else:  # gone (a failed reply with nothing in it is deleted): show the chat again
                self._render_conversation()
        self._show_context()

    @Slot(object)
    def _on_worker_engine_crashed(self, event: EngineCrashed) -> None:
        self._no_model(
            event.message,
            "No model loaded: the engine stopped",
            event.model_path,
            alone=bool(event.lost_workers),
        )

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
        self.perf.add_memory(rss, {name: used for name, (used, _total) in devices.items()})
        if devices:
            used = sum(used for used, _total in devices.values())
            total = sum(total for _used, total in devices.values())
            of = f" / {format_bytes(total)}" if total else ""
            self.vram_label.setText(f"VRAM {format_bytes(used)}{of}")
        else:
            self.vram_label.setText("VRAM: no GPU in use")

    @staticmethod
    def _ram_text(rss: int) -> str:
        return f"RAM {format_bytes(rss)} ({format_bytes(psutil.virtual_memory().available)} free)"

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
        self._reorder_cancel.set()  # a copy being written stops within a tensor, deleted
        self.downloads.close()  # what is on disk stays; the download resumes at the next start
        self._memory_timer.stop()
        self._save_draft()
        if self._reply is not None:
            self.store.update_reply(self._reply.id, self._reply_text, self._reply_reasoning)
        self.api.stop()  # open streams end; their generations are cancelled
        self.worker.close()  # the engine's process frees the model and ends
        super().closeEvent(event)


def _title_from(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= 48 else line[:47].rstrip() + "…"
