"""Downloads in the app: the engine's Downloader behind a Qt object, and the widgets that show it.

``Downloads`` lives as long as the chat window, so downloads go on while the model manager is
closed and while a reply streams. Events come from the downloader's thread and reach the GUI
thread through a queued signal.
"""

from __future__ import annotations

import html

from PySide6.QtCore import QObject, Qt, Signal, Slot
from PySide6.QtWidgets import (
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.background import run_in_background
from engine.downloads import (
    Downloader,
    DownloadEvent,
    HubConfig,
    Release,
    offline_by_environment,
    resolve,
)
from engine.errors import user_message
from engine.library import Library
from engine.units import format_bytes, format_duration


def describe(event: DownloadEvent) -> str:
    """One line for a download's state: progress, speed and time left, or what went wrong."""
    share = f"{event.fraction:.0%}"
    amount = f"{format_bytes(event.done)} of {format_bytes(event.total)}"
    part = f" · part {event.file_index} of {event.file_count}" if event.file_count > 1 else ""
    if event.state == "running":
        speed = f" · {event.speed / 1e6:.1f} MB/s" if event.speed else ""
        left = f" · {format_duration(event.eta)} left" if event.eta is not None else ""
        return f"{share} · {amount}{speed}{left}{part}"
    return {
        "queued": f"Waiting ({amount} already here)" if event.done else "Waiting",
        "retrying": f"{share} · {event.message}",
        "verifying": f"{share} · checking sha256{part}",
        "paused": f"Paused at {share} ({amount})",
        "failed": event.message,
        "cancelled": "Cancelled; partial files deleted",
        "done": f"Installed ({format_bytes(event.total)}, verified)",
    }.get(event.state, event.state)


class Downloads(QObject):
    """The app's one download queue. ``changed`` carries every DownloadEvent on the GUI thread;
    ``latest`` holds the newest event per download, finished ones included."""

    changed = Signal(object)
    resolve_failed = Signal(str, str)  # key, message
    _relayed = Signal(object)

    def __init__(self, library: Library, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.library = library
        self.latest: dict[str, DownloadEvent] = {}
        self.keys: dict[str, str] = {}  # job id -> key of the catalog row it came from
        self._relayed.connect(self._on_relayed, Qt.ConnectionType.QueuedConnection)
        self.downloader = Downloader(library, self._relayed.emit)
        for job in self.downloader.jobs():
            self.latest[job.id] = self.downloader.event(job)
            self.keys[job.id] = key_of(job.release)

    @Slot(object)
    def _on_relayed(self, event: DownloadEvent) -> None:
        if event.job_id not in self.keys:
            for job in self.downloader.jobs():
                self.keys[job.id] = key_of(job.release)
        if event.state == "cancelled":
            self.latest.pop(event.job_id, None)
        else:
            self.latest[event.job_id] = event
        self.changed.emit(event)

    def for_key(self, key: str) -> DownloadEvent | None:
        return next((self.latest[j] for j, k in self.keys.items() if k == key and
                     j in self.latest), None)  # fmt: skip

    def start(self, key: str, repo: str, wanted: str | list[str], **names: str) -> None:
        """Resolve off the GUI thread, then queue; a refusal arrives as ``resolve_failed``."""
        hub = HubConfig.from_library(self.library)

        def work() -> Release:
            release = resolve(repo, wanted, hub, **names)
            self.downloader.enqueue(release)
            return release

        def failed(error: BaseException) -> None:
            self.resolve_failed.emit(key, user_message(error))

        run_in_background(work, lambda _release: None, self, failed)

    def close(self) -> None:
        self.downloader.close()


def catalog_key(catalog_id: str, quant: str) -> str:
    """Names one catalog row: a model's quantization."""
    return f"{catalog_id}:{quant}"


def key_of(release: Release) -> str:
    """The catalog row a release belongs to (catalog id + quant), or its repo and file."""
    if release.catalog_id:
        return catalog_key(release.catalog_id, release.quant)
    return f"{release.repo}/{release.files[0].path}"


class DownloadRow(QWidget):
    """One download: name, progress bar with speed and time left, and its buttons."""

    load_requested = Signal(str)

    def __init__(self, downloads: Downloads, event: DownloadEvent, parent: QWidget) -> None:
        super().__init__(parent)
        self.downloads = downloads
        self.job_id = event.job_id
        self.model_path = ""
        self.state = ""
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.name = QLabel(html.escape(event.name), self)
        self.name.setMinimumWidth(220)
        self.bar = QProgressBar(self)
        self.bar.setRange(0, 1000)
        self.bar.setTextVisible(False)
        self.bar.setFixedWidth(160)
        self.status = QLabel(self)
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.pause_button = QPushButton("Pause", self)
        self.pause_button.clicked.connect(self._on_pause_button_clicked)
        self.cancel_button = QPushButton("Cancel", self)
        self.cancel_button.clicked.connect(lambda: self.downloads.downloader.cancel(self.job_id))
        self.load_button = QPushButton("Load", self)
        self.load_button.clicked.connect(lambda: self.load_requested.emit(self.model_path))
        for widget in (self.name, self.bar):
            layout.addWidget(widget)
        layout.addWidget(self.status, 1)
        for button in (self.pause_button, self.cancel_button, self.load_button):
            layout.addWidget(button)
        self.update_from(event)

    def update_from(self, event: DownloadEvent) -> None:
        self.state = event.state
        self.bar.setValue(int(event.fraction * 1000))
        self.status.setText(html.escape(describe(event)))
        self.status.setObjectName("warningLabel" if event.state == "failed" else "")
        self.status.style().unpolish(self.status)  # the style sheet's colour follows the name
        self.status.style().polish(self.status)
        done = event.state == "done"
        self.model_path = event.model_path
        self.pause_button.setText("Resume" if event.state in ("paused", "failed") else "Pause")
        self.pause_button.setVisible(not done)
        self.cancel_button.setVisible(not done)
        self.load_button.setVisible(done)
        self.bar.setVisible(not done)

    @Slot()
    def _on_pause_button_clicked(self) -> None:
        if self.state in ("paused", "failed"):
            self.downloads.downloader.resume(self.job_id)
        else:
            self.downloads.downloader.pause(self.job_id)


class DownloadsPanel(QGroupBox):
    """The downloads list: unfinished ones survive restarts; finished ones offer Load."""

    load_requested = Signal(str)

    def __init__(self, downloads: Downloads, parent: QWidget | None = None) -> None:
        super().__init__("Downloads", parent)
        self.downloads = downloads
        self.rows: dict[str, DownloadRow] = {}
        self._layout = QVBoxLayout(self)
        self.offline_label = QLabel(self)
        self.offline_label.setObjectName("warningLabel")
        self._layout.addWidget(self.offline_label)
        typed = QHBoxLayout()
        self.repo_edit = QLineEdit(self)
        self.repo_edit.setPlaceholderText("Any Hub repository: owner/Model-GGUF")
        self.file_edit = QLineEdit(self)
        self.file_edit.setPlaceholderText("file.gguf or quantization (Q4_K_M)")
        self.get_button = QPushButton("Download", self)
        self.get_button.clicked.connect(self.download_typed)
        self.file_edit.returnPressed.connect(self.download_typed)
        typed.addWidget(self.repo_edit, 2)
        typed.addWidget(self.file_edit, 2)
        typed.addWidget(self.get_button)
        self._layout.addLayout(typed)
        self.empty = QLabel("No downloads. Press Download on a model above.", self)
        self.empty.setObjectName("hintLabel")
        self._layout.addWidget(self.empty)
        for event in downloads.latest.values():
            self._on_downloads_changed(event)
        downloads.changed.connect(self._on_downloads_changed)
        self.refresh_offline()

    def refresh_offline(self) -> None:
        by_settings = self.downloads.library.hub.offline
        self.offline_label.setVisible(by_settings or offline_by_environment())
        source = "Settings" if by_settings else "HF_HUB_OFFLINE"
        self.offline_label.setText(
            f"Offline mode is on ({source}): nothing is downloaded and no request leaves "
            "this computer. Queued downloads wait."
        )

    @Slot()
    def download_typed(self) -> None:
        """Download a repository and file (or quantization) the user typed."""
        repo, wanted = self.repo_edit.text().strip(), self.file_edit.text().strip()
        if repo.count("/") != 1 or not wanted:
            self.downloads.resolve_failed.emit(
                "", "Type a repository as owner/name and a file name or quantization."
            )
            return
        self.downloads.start(f"{repo}/{wanted}", repo, wanted)

    @Slot(object)
    def _on_downloads_changed(self, event: DownloadEvent) -> None:
        row = self.rows.get(event.job_id)
        if event.state == "cancelled":
            if row is not None:
                self.rows.pop(event.job_id)
                row.deleteLater()
        elif row is None:
            row = DownloadRow(self.downloads, event, self)
            row.load_requested.connect(self.load_requested)
            self.rows[event.job_id] = row
            self._layout.addWidget(row)
        else:
            row.update_from(event)
        self.empty.setVisible(not self.rows)


def action_text(event: DownloadEvent | None, installed: bool) -> str:
    """The catalog row's main button: what pressing it does now."""
    if installed:
        return "Load"
    if event is None:
        return "Download"
    return "Resume" if event.state in ("paused", "failed") else "Pause"
