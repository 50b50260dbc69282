"""The local API server as the window runs it: saved settings, start and stop, its address."""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from PySide6.QtCore import QObject, Signal

from engine.host import ModelHost
from engine.server import ApiServer, ServerConfig, ServerError
from engine.store import Store

log = logging.getLogger(__name__)
API_SETTINGS_KEY = "api_server"


class ApiControl(QObject):
    """Starts the API on the window's model host when the saved settings say so."""

    changed = Signal(str)  # the address while serving, "" when stopped
    failed = Signal(str)

    def __init__(self, store: Store, host: ModelHost, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.store = store
        self.host = host
        self._server: ApiServer | None = None

    @property
    def address(self) -> str:
        """``http://127.0.0.1:1234`` while serving, else ""."""
        return self._server.address if self._server is not None else ""

    def saved(self) -> tuple[bool, ServerConfig]:
        """Whether the API should run, and how."""
        data: dict[str, Any] = self.store.get_setting(API_SETTINGS_KEY, {}) or {}
        default = ServerConfig()
        config = ServerConfig(
            host=str(data.get("host") or default.host),
            port=int(data.get("port", default.port)),
            api_key=data.get("api_key") or None,
            allowed_origins=tuple(data.get("allowed_origins") or ()),
        )
        return bool(data.get("enabled")), config

    def apply(self, enabled: bool, config: ServerConfig) -> str:
        """Save the settings and (re)start or stop the server; "" or why it cannot start."""
        self.store.set_setting(
            API_SETTINGS_KEY,
            {"enabled": enabled, **asdict(config), "allowed_origins": list(config.allowed_origins)},
        )
        self.stop()
        return self._start(config) if enabled else ""

    def start_saved(self) -> None:
        enabled, config = self.saved()
        if enabled:
            error = self._start(config)
            if error:
                self.failed.emit(f"The local API did not start: {error}")

    def _start(self, config: ServerConfig) -> str:
        server = ApiServer(self.host, config)
        try:
            address = server.start()
        except ServerError as exc:
            log.warning("the API did not start: %s", exc)
            return str(exc)
        self._server = server
        self.changed.emit(address)
        return ""

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
            self.changed.emit("")
