"""Every directory the app uses, from platformdirs, with one override for tests and portability."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "moe-chat"
HOME_ENV = "MOE_CHAT_HOME"


def app_home() -> Path:
    """The app's data directory: ``$MOE_CHAT_HOME`` if set, else the platform's user data dir."""
    override = os.environ.get(HOME_ENV)
    path = (
        Path(override) if override else Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))
    )
    path.mkdir(parents=True, exist_ok=True)
    return path


def database_path() -> Path:
    """SQLite file holding conversations and settings."""
    return app_home() / "moe-chat.sqlite3"


def models_dir() -> Path:
    """Default directory for downloaded models."""
    path = app_home() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def log_dir() -> Path:
    """Directory for the app's log files."""
    path = app_home() / "logs"
    path.mkdir(parents=True, exist_ok=True)
    return path
