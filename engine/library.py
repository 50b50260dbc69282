"""The models this computer has: the installed-models manifest, the models directory, the
download queue's saved state, and the Hub settings (endpoint, offline mode, token).

Everything but the token lives in one JSON file, ``models.json`` in the app's data
directory, rewritten whole through a temporary file, ``fsync`` and an atomic rename: a crash
during the write leaves the previous version, never a torn one. The token lives in its own
file readable only by the user, and is never logged or shown in a ``repr``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

from engine import paths
from engine.errors import StoreError
from engine.gguf_file import read_gguf

log = logging.getLogger(__name__)

MANIFEST_NAME = "models.json"
TOKEN_NAME = "hf_token"
SCHEMA = 1  # models.json's layout: a newer file is refused, never rewritten


@dataclass(frozen=True)
class ModelFile:
    """One file of an installed model; ``sha256`` is empty for files we did not download."""

    path: str
    size: int
    sha256: str = ""
    repo_path: str = ""


@dataclass(frozen=True)
class InstalledModel:
    """A model the chat can load. ``source``: ``hub`` (downloaded and verified), ``copied``
    (imported into the models directory) or ``linked`` (imported where it lies; never deleted)."""

    id: str
    name: str
    source: str
    files: tuple[ModelFile, ...]
    repo: str = ""
    commit: str = ""
    catalog_id: str = ""
    quant: str = ""
    installed_at: float = 0.0

    @property
    def path(self) -> str:
        """The file to hand the engine: the only file, or part 1 of a split model."""
        return self.files[0].path

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["files"] = [asdict(f) for f in self.files]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InstalledModel:
        files = tuple(ModelFile(**f) for f in data.get("files", ()))
        return cls(**{**data, "files": files})


@dataclass(frozen=True)
class HubSettings:
    """What the user set; ``None`` means "not set here" (the environment or default applies)."""

    endpoint: str | None = None
    offline: bool = False


@dataclass
class _State:
    models_dir: str | None = None
    hub: HubSettings = field(default_factory=HubSettings)
    installed: list[InstalledModel] = field(default_factory=list)
    downloads: list[dict[str, Any]] = field(default_factory=list)


def atomic_write_json(path: Path, data: Any) -> None:
    """Replace ``path`` with ``data`` as JSON so that readers see the old or the new file, whole."""
    atomic_write(path, lambda f: f.write(json.dumps(data, indent=1).encode("utf-8")))


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Replace ``path`` with what ``write`` writes to the open file: readers see the old file
    or the new one, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable (POSIX only)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class Library:
    """The manifest and settings file; thread-safe, every change written atomically."""

    def __init__(self, home: Path | None = None) -> None:
        self.home = home or paths.app_home()
        self.file = self.home / MANIFEST_NAME
        self._lock = threading.RLock()
        self._state = self._load()

    # -- persistence -----------------------------------------------------------------------

    def _load(self) -> _State:
        for stale in self.home.glob(f".{MANIFEST_NAME}.*.tmp"):  # left by a crash mid-write
            stale.unlink(missing_ok=True)
        try:
            data = json.loads(self.file.read_text(encoding="utf-8"))
            schema = data.get("schema", 1) if isinstance(data, dict) else None
            if not isinstance(schema, int) or isinstance(schema, bool):
                raise ValueError("it is not a list of models MoE Chat wrote")
        except FileNotFoundError:
            return _State()
        except (OSError, ValueError) as exc:
            aside = self.file.with_name(f"{MANIFEST_NAME}.unreadable-{int(time.time())}")
            with contextlib.suppress(OSError):
                self.file.rename(aside)
            log.warning("%s could not be read (%s); kept it as %s", self.file, exc, aside)
            return _State()
        if schema > SCHEMA:
            # Never rewritten: an older build saving it would drop what it does not know.
            raise StoreError(
                f"The list of installed models ({self.file}) was written by a newer MoE Chat.",
                "Update MoE Chat to use it; nothing in it was changed.",
            )
        hub = data.get("hub") or {}
        return _State(
            models_dir=data.get("models_dir"),
            hub=HubSettings(endpoint=hub.get("endpoint"), offline=bool(hub.get("offline"))),
            installed=[InstalledModel.from_json(m) for m in data.get("installed", [])],
            downloads=list(data.get("downloads", [])),
        )

    def _save(self) -> None:
        state = self._state
        data = {
            "schema": SCHEMA,
            "models_dir": state.models_dir,
            "hub": asdict(state.hub),
            "installed": [m.to_json() for m in state.installed],
            "downloads": state.downloads,
        }
        try:
            atomic_write_json(self.file, data)
        except OSError as exc:
            raise StoreError(
                f"The list of installed models could not be saved to {self.file}: {exc}.",
                "Check that the disk is not full and the folder is writable.",
            ) from exc

    # -- models directory ------------------------------------------------------------------

    @property
    def models_dir(self) -> Path:
        with self._lock:
            path = Path(self._state.models_dir) if self._state.models_dir else None
        path = path or self.home / "models"  # the default of paths.models_dir(), per library
        path.mkdir(parents=True, exist_ok=True)
        return path

    def move_models_dir(self, new: Path) -> None:
        """Move every file kept in the models directory (installed and partial) to ``new``.

        The caller pauses downloads first. Each model's new paths are saved as soon as its
        files have moved, so an interruption leaves a manifest that matches the disk.
        """
        new = new.expanduser().resolve()
        with self._lock:
            old = self.models_dir.resolve()
            if new == old:
                return
            if new.is_relative_to(old):
                raise StoreError(f"{new} is inside the current models folder {old}.")
            new.mkdir(parents=True, exist_ok=True)
            for index, model in enumerate(self._state.installed):
                if model.source == "linked":
                    continue
                moved = tuple(_move_under(f, old, new) for f in model.files)
                self._state.installed[index] = replace(model, files=moved)
                self._save()
            for part in old.rglob("*.part"):
                target = new / part.relative_to(old)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(part, target)
            self._state.models_dir = str(new)
            self._save()

    # -- installed models ------------------------------------------------------------------

    def installed(self) -> list[InstalledModel]:
        with self._lock:
            return list(self._state.installed)

    def get(self, model_id: str) -> InstalledModel | None:
        return next((m for m in self.installed() if m.id == model_id), None)

    def find_path(self, path: str) -> InstalledModel | None:
        return next((m for m in self.installed() if path in (f.path for f in m.files)), None)

    def install(self, model: InstalledModel, finished_download: str | None = None) -> None:
        """Add (or replace) ``model``; drop the download it came from in the same write."""
        model = replace(model, installed_at=model.installed_at or time.time())
        with self._lock:
            self._state.installed = [m for m in self._state.installed if m.id != model.id]
            self._state.installed.insert(0, model)
            if finished_download is not None:
                self._state.downloads = [
                    d for d in self._state.downloads if d.get("id") != finished_download
                ]
            self._save()

    def remove(self, model_id: str) -> InstalledModel | None:
        """Forget a model and delete its files, unless they are the user's own (``linked``)."""
        with self._lock:
            model = self.get(model_id)
            if model is None:
                return None
            if model.source != "linked":
                root = self.models_dir.resolve()
                for f in model.files:
                    Path(f.path).unlink(missing_ok=True)
                    _prune_empty_dirs(Path(f.path).parent, root)
            self._state.installed = [m for m in self._state.installed if m.id != model_id]
            self._save()
            return model

    def import_file(self, path: str | Path, copy: bool) -> InstalledModel:
        """Accept a GGUF the user already has, after the header reader checked it.

        ``copy`` puts it (every part of a split model) in the models directory; otherwise it
        is used where it lies and never deleted by the app.
        """
        info = read_gguf(path)  # raises ModelFileError with the reason when it is not usable
        sources = [Path(p).resolve() for p in info.parts]
        files: list[ModelFile] = []
        if copy:
            target_dir = self.models_dir / "imported"
            target_dir.mkdir(parents=True, exist_ok=True)
            for source in sources:
                target = target_dir / source.name
                if target.resolve() != source:
                    partial = target.with_name(target.name + ".copying")
                    shutil.copyfile(source, partial)
                    os.replace(partial, target)
                files.append(ModelFile(str(target), target.stat().st_size))
        else:
            files = [ModelFile(str(s), s.stat().st_size) for s in sources]
        model = InstalledModel(
            id=f"{'copied' if copy else 'linked'}:{files[0].path}",
            name=info.name or sources[0].stem,
            source="copied" if copy else "linked",
            files=tuple(files),
        )
        self.install(model)
        return model

    # -- saved downloads (engine.downloads owns their meaning) -----------------------------

    def saved_downloads(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(d) for d in self._state.downloads]

    def save_downloads(self, downloads: list[dict[str, Any]]) -> None:
        with self._lock:
            self._state.downloads = downloads
            self._save()

    # -- Hub settings ----------------------------------------------------------------------

    @property
    def hub(self) -> HubSettings:
        with self._lock:
            return self._state.hub

    def set_hub(self, settings: HubSettings) -> None:
        with self._lock:
            self._state.hub = settings
            self._save()

    @property
    def token_file(self) -> Path:
        return self.home / TOKEN_NAME

    def saved_token(self) -> str | None:
        try:
            return self.token_file.read_text(encoding="utf-8").strip() or None
        except FileNotFoundError:
            return None

    def save_token(self, token: str | None) -> None:
        """Store the Hub token readable by this user only; ``None`` or empty deletes it."""
        token = (token or "").strip()
        if not token:
            self.token_file.unlink(missing_ok=True)
            return
        tmp = self.token_file.with_name(TOKEN_NAME + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.chmod(tmp, 0o600)  # in case it existed with looser permissions
            f.write(token)
        os.replace(tmp, self.token_file)


def _move_under(f: ModelFile, old: Path, new: Path) -> ModelFile:
    source = Path(f.path)
    try:
        relative = source.resolve().relative_to(old)
    except ValueError:
        return f  # kept outside the models directory: leave it
    target = new / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.exists():
        shutil.move(source, target)
    _prune_empty_dirs(source.parent, old)
    return replace(f, path=str(target))


def _prune_empty_dirs(directory: Path, root: Path) -> None:
    directory = directory.resolve()
    while directory != root and directory.is_relative_to(root):
        try:
            directory.rmdir()
        except OSError:
            return
        directory = directory.parent
