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
    """Default directory for downloaded models (the library may use another)."""
    return _folder("models")


def log_dir() -> Path:
    """Directory for the app's log files."""
    return _folder("logs")


def heat_dir() -> Path:
    """Expert routing counts, one ``.npz`` per model file (engine.heat)."""
    return _folder("heat")


def tuning_dir() -> Path:
    """ "Tune for this machine" results, one JSON per model file and machine (engine.tuner)."""
    return _folder("tuning")


def machine_cache_path() -> Path:
    """The machine's measured RAM bandwidth, kept between starts (engine.hardware)."""
    return app_home() / "machine.json"


def _folder(name: str) -> Path:
    path = app_home() / name
    path.mkdir(parents=True, exist_ok=True)
    return path
