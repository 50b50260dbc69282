"""Settings for downloads: Hugging Face token, Hub address, offline mode, models folder."""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import Signal, Slot
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.background import run_in_background
from app.downloads import Downloads
from engine.downloads import offline_by_environment
from engine.library import HubSettings


class SettingsDialog(QDialog):
    """Edits the library's Hub settings and token; moves the models folder when it changes."""

    moved = Signal(str)  # the new folder, or "" when the move failed

    def __init__(self, downloads: Downloads, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self.setMinimumWidth(620)
        self.downloads = downloads
        self.library = downloads.library
        hub = self.library.hub
        layout = QVBoxLayout(self)
        form = QFormLayout()

        self.token = QLineEdit(self)
        self.token.setEchoMode(QLineEdit.EchoMode.Password)
        saved = self.library.saved_token()
        self.token.setPlaceholderText(
            "saved; type a new one to replace it"
            if saved
            else ("using HF_TOKEN from the environment" if os.environ.get("HF_TOKEN") else "hf_…")
        )
        self.clear_token = QCheckBox("Forget the saved token", self)
        self.clear_token.setVisible(bool(saved))
        token_note = QLabel(
            f"Needed for gated models. Kept in {self.library.token_file}, readable only by you; "
            "never written to logs.",
            self,
        )
        token_note.setWordWrap(True)
        form.addRow("Hugging Face token", self.token)
        form.addRow("", self.clear_token)
        form.addRow("", token_note)

        self.endpoint = QLineEdit(hub.endpoint or "", self)
        from huggingface_hub import constants

        self.endpoint.setPlaceholderText(os.environ.get("HF_ENDPOINT") or constants.ENDPOINT)
        form.addRow("Hub address (mirror)", self.endpoint)

        self.offline = QCheckBox("Offline: never contact the Hub", self)
        self.offline.setChecked(hub.offline or offline_by_environment())
        if offline_by_environment():
            self.offline.setEnabled(False)
            self.offline.setText("Offline: set by HF_HUB_OFFLINE in the environment")
        form.addRow("Network", self.offline)

        folder_row = QHBoxLayout()
        self.models_dir = QLineEdit(str(self.library.models_dir), self)
        browse = QPushButton("Browse…", self)
        browse.clicked.connect(self._on_browse_clicked)
        folder_row.addWidget(self.models_dir, 1)
        folder_row.addWidget(browse)
        form.addRow("Models folder", folder_row)
        layout.addLayout(form)

        self.message = QLabel(self)
        self.message.setObjectName("warningLabel")
        self.message.setWordWrap(True)
        layout.addWidget(self.message)
        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel, self
        )
        self.buttons.accepted.connect(self.save)
        self.buttons.rejected.connect(self.reject)
        layout.addWidget(self.buttons)

    @Slot()
    def _on_browse_clicked(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Models folder", self.models_dir.text())
        if folder:
            self.models_dir.setText(folder)

    @Slot()
    def save(self) -> None:
        """Save the Hub settings and token; then move the models folder if it changed."""
        if self.clear_token.isChecked():
            self.library.save_token(None)
        elif self.token.text().strip():
            self.library.save_token(self.token.text())
        endpoint = self.endpoint.text().strip().rstrip("/") or None
        self.library.set_hub(HubSettings(endpoint=endpoint, offline=self.offline.isChecked()))
        self.downloads.downloader.wake()
        new = Path(self.models_dir.text().strip()).expanduser()
        if new.resolve() == self.library.models_dir.resolve():
            self.accept()
            return
        if self.downloads.downloader.active():
            self.message.setText("Pause the downloads before moving the models folder.")
            return
        self.message.setText(f"Moving models to {new}…")
        self.buttons.setEnabled(False)

        def done(_result: None) -> None:
            self.moved.emit(str(new))
            self.accept()

        def failed(error: BaseException) -> None:
            self.buttons.setEnabled(True)
            self.message.setText(f"The models could not be moved: {error}")
            self.moved.emit("")

        run_in_background(lambda: self.library.move_models_dir(new), done, failed, self)
