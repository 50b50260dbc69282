"""Settings: appearance and downloads (Hugging Face token, Hub address, offline mode, models
folder), the local API for other programs, and other computers whose memory models may use."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from PySide6.QtCore import Signal, Slot
from PySide6.QtWidgets import (
    QApplication,
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.api_control import ApiControl
from app.background import run_in_background
from app.computers_page import ComputersPage
from app.downloads import Downloads
from app.theme import THEME_KEY, THEMES, apply_theme
from engine.downloads import offline_by_environment
from engine.errors import user_message
from engine.library import HubSettings
from engine.server import ServerConfig, ServerError, check_config
from engine.store import Store


class SettingsDialog(QDialog):
    """Edits the library's Hub settings and token; moves the models folder when it changes."""

    moved = Signal(str)  # the new folder, or "" when the move failed

    def __init__(
        self,
        downloads: Downloads,
        parent: QWidget | None = None,
        api: ApiControl | None = None,
        store: Store | None = None,
        busy_computers: tuple[str, ...] = (),
    ) -> None:
        super().__init__(parent)
        self.api = api
        self.store = store
        self.setWindowTitle("Settings")
        self.setMinimumWidth(620)
        self.downloads = downloads
        self.library = downloads.library
        hub = self.library.hub
        layout = QVBoxLayout(self)
        self.tabs = QTabWidget(self)
        general = QWidget(self.tabs)
        form = QFormLayout(general)

        self.theme = QComboBox(self)
        self.theme.setAccessibleName("Appearance")
        for value, text in THEMES.items():
            self.theme.addItem(text, value)
        if store is not None:
            self.theme.setCurrentIndex(max(self.theme.findData(store.get_setting(THEME_KEY)), 0))
            form.addRow("Appearance", self.theme)
        else:
            self.theme.hide()

        self.token = QLineEdit(self)
        self.token.setEchoMode(QLineEdit.EchoMode.Password)
        self.token.setAccessibleName("Hugging Face token")
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
        self.endpoint.setAccessibleName("Hub address")
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
        self.models_dir.setAccessibleName("Models folder")
        browse = QPushButton("Browse…", self)
        browse.clicked.connect(self._on_browse_clicked)
        folder_row.addWidget(self.models_dir, 1)
        folder_row.addWidget(browse)
        form.addRow("Models folder", folder_row)
        self.tabs.addTab(general, "General")
        if api is not None:
            self.tabs.addTab(self._api_section(api), "Local API")
        self.computers: ComputersPage | None = None
        if store is not None:
            self.computers = ComputersPage(store, busy_computers, self.tabs)
            self.tabs.addTab(self.computers, "Computers")
        layout.addWidget(self.tabs, 1)

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

    def _api_section(self, api: ApiControl) -> QWidget:
        enabled, config = api.saved()
        box = QWidget(self)
        form = QFormLayout(box)
        self.api_enabled = QCheckBox("Serve the loaded model to other programs", box)
        self.api_enabled.setChecked(enabled)
        self.api_enabled.setAccessibleName("Local API server")
        form.addRow("Local API", self.api_enabled)
        address_row = QHBoxLayout()
        self.api_host = QLineEdit(config.host, box)
        self.api_host.setAccessibleName("API address")
        self.api_port = QSpinBox(box)
        self.api_port.setRange(1, 65535)
        self.api_port.setValue(config.port or 1234)
        self.api_port.setAccessibleName("API port")
        address_row.addWidget(self.api_host, 1)
        address_row.addWidget(QLabel("port", box))
        address_row.addWidget(self.api_port)
        form.addRow("Listen on", address_row)
        key_row = QHBoxLayout()
        self.api_key = QLineEdit(config.api_key or "", box)
        self.api_key.setEchoMode(QLineEdit.EchoMode.PasswordEchoOnEdit)
        self.api_key.setPlaceholderText("none: any program on this computer may use it")
        self.api_key.setAccessibleName("API key")
        generate = QPushButton("New key", box)
        generate.clicked.connect(
            lambda: self.api_key.setText("sk-local-" + secrets.token_urlsafe(24))
        )
        key_row.addWidget(self.api_key, 1)
        key_row.addWidget(generate)
        form.addRow("API key", key_row)
        self.api_origins = QLineEdit(" ".join(config.allowed_origins), box)
        self.api_origins.setPlaceholderText("none: web pages cannot call it (CORS off)")
        self.api_origins.setAccessibleName("Allowed web origins")
        form.addRow("Web origins", self.api_origins)
        note = QLabel(
            "OpenAI-compatible: point a client at http://ADDRESS:PORT/v1. Its requests wait in "
            "the same queue as your chats. Any address other than 127.0.0.1 lets other "
            "computers use the model, so it needs a key (sent as “Authorization: Bearer KEY”).",
            box,
        )
        note.setWordWrap(True)
        form.addRow("", note)
        return box

    def _save_api(self) -> bool:
        """Apply the API settings; False (with the reason shown) when they cannot be used."""
        if self.api is None:
            return True
        config = ServerConfig(
            host=self.api_host.text().strip() or "127.0.0.1",
            port=self.api_port.value(),
            api_key=self.api_key.text().strip() or None,
            allowed_origins=tuple(self.api_origins.text().replace(",", " ").split()),
        )
        enabled = self.api_enabled.isChecked()
        try:
            check_config(config)
        except ServerError as exc:
            if enabled:
                self.message.setText(str(exc))
                return False
        if (enabled, config) == self.api.saved() and (self.api.address or not enabled):
            return True
        error = self.api.apply(enabled, config)
        self.message.setText(f"The local API did not start: {error}" if error else "")
        return not error

    @Slot()
    def _on_browse_clicked(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Models folder", self.models_dir.text())
        if folder:
            self.models_dir.setText(folder)

    @Slot()
    def save(self) -> None:
        """Save the Hub settings and token and apply the API's; then move the models folder
        if it changed."""
        if not self._save_api():
            return
        theme = self.theme.currentData()
        if self.store is not None and theme != self.store.get_setting(THEME_KEY, "system"):
            self.store.set_setting(THEME_KEY, theme)
            app = QApplication.instance()
            if isinstance(app, QApplication):
                apply_theme(app, theme)
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
            self.message.setText(f"The models could not be moved: {user_message(error)}")
            self.moved.emit("")

        run_in_background(lambda: self.library.move_models_dir(new), done, self, failed)
