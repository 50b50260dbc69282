"""Downloads from the Hugging Face Hub that never leave a broken model.

1. :func:`resolve` asks the Hub (``model_info`` with file metadata) for the exact files of a
   model, every shard of a split GGUF included, with each file's size and LFS sha256, pinned
   to the commit the Hub resolved.
2. :meth:`Downloader.enqueue` checks free disk space for everything still to fetch, then
   queues the download; one worker thread fetches queued downloads one after another.
3. Each file goes through huggingface-hub's public API: ``get_hf_file_metadata`` resolves the
   pinned file (a redirect to the CDN, as ``hf_hub_download`` does) and its HTTP session
   (``get_session``) streams it with ``Range`` resumes, into ``<file>.<sha>.part`` in the
   models directory.
   The partial file is ours, not the library's, so it survives a pause, a dropped connection,
   a closed app or a crash, and the next attempt continues from its last byte. Around that we
   retry with backoff, and a read timeout is the stall watchdog.
4. The sha256 is computed while the bytes are written (a resumed file re-reads its prefix
   once); a mismatch deletes the file and fails the download. Only when every file matches
   are they renamed into place and the model written to the manifest (:mod:`engine.library`).

Events reach the caller through ``on_event`` from the worker thread, at most ten a second per
download. Cancellation is cooperative: a flag checked on every chunk written.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

from engine.errors import MoeChatError
from engine.library import InstalledModel, Library, ModelFile
from engine.throttle import Throttle
from engine.units import format_bytes

log = logging.getLogger(__name__)

READ_BLOCK = 8 << 20
CHUNK_BYTES = 1 << 20  # small enough for smooth progress and a prompt pause on a slow link
DISK_MARGIN = 1 << 30  # keep this much free after the download (bytes)
EVENT_INTERVAL = 0.1  # seconds between progress events of one download
SPEED_WINDOW = 5.0  # seconds of history behind the shown speed
SHARD_RE = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


class DownloadError(MoeChatError):
    """A download cannot start or cannot finish; the message says why, the hint what to do."""


class NotEnoughSpace(DownloadError):
    """The models directory's disk lacks room for the files."""


class OfflineError(DownloadError):
    """Offline mode is on: no request may leave this computer."""


class _Stopped(Exception):
    """The download was paused, cancelled or the app is closing (not an error)."""


# -- what the Hub has -------------------------------------------------------------------------


def offline_by_environment() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


@dataclass(frozen=True)
class HubConfig:
    """Where and how to reach the Hub: the app's settings over the ``HF_*`` environment."""

    endpoint: str
    token: str | None = field(default=None, repr=False)
    offline: bool = False
    offline_source: str = ""  # "settings" or "HF_HUB_OFFLINE"

    @classmethod
    def from_library(cls, library: Library) -> HubConfig:
        from huggingface_hub import constants, get_token

        settings = library.hub
        endpoint = settings.endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
        offline = settings.offline or offline_by_environment()
        return cls(
            endpoint=endpoint.rstrip("/"),
            token=None if offline else (library.saved_token() or get_token()),
            offline=offline,
            offline_source="settings"
            if settings.offline
            else ("HF_HUB_OFFLINE" if offline else ""),
        )

    def check_online(self) -> None:
        if self.offline:
            how = (
                "Turn it off in Settings."
                if self.offline_source == "settings"
                else "Unset HF_HUB_OFFLINE and restart the app."
            )
            raise OfflineError("Offline mode is on, so nothing is downloaded.", how)

    def model_page(self, repo: str) -> str:
        return f"{self.endpoint}/{repo}"


@dataclass(frozen=True)
class RemoteFile:
    path: str  # inside the repository
    size: int
    sha256: str


@dataclass(frozen=True)
class Release:
    """Exact files of one model at one commit: what a download fetches and verifies."""

    repo: str
    commit: str
    files: tuple[RemoteFile, ...]
    name: str
    catalog_id: str = ""
    quant: str = ""

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def model_id(self) -> str:
        return f"hub:{self.repo}/{self.files[0].path}"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["files"] = [asdict(f) for f in self.files]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Release:
        return cls(**{**data, "files": tuple(RemoteFile(**f) for f in data["files"])})


def resolve(
    repo: str,
    wanted: str | Sequence[str],
    hub: HubConfig,
    *,
    name: str = "",
    catalog_id: str = "",
    quant: str = "",
) -> Release:
    """The files ``wanted`` in ``repo``: a file name (a split model's first part brings every
    part), a list of file names (the catalog's), or a quantization such as ``Q4_K_M``.

    Raises:
        DownloadError: with the precise reason: no such repository, no such file or quant
            (listing the GGUF files it does have), a gated repository, offline mode, or the
            Hub cannot be reached.
    """
    hub.check_online()
    from huggingface_hub import HfApi

    try:
        info = HfApi(endpoint=hub.endpoint, token=hub.token or False).model_info(
            repo, files_metadata=True
        )
    except Exception as exc:
        raise _explain(exc, hub, repo) from exc
    lfs = {s.rfilename: s for s in info.siblings or () if s.lfs is not None}
    ggufs = sorted(f for f in lfs if f.lower().endswith(".gguf"))
    if isinstance(wanted, str):
        chosen = _match(wanted, ggufs)
    else:
        chosen = list(wanted) if all(w in lfs for w in wanted) else []
        if not chosen and quant:
            chosen = _match(quant, ggufs)
    if not chosen:
        what = wanted if isinstance(wanted, str) else (quant or ", ".join(wanted))
        have = ", ".join(ggufs[:12]) + (" …" if len(ggufs) > 12 else "") if ggufs else "none"
        raise DownloadError(
            f"{repo} has no GGUF file for {what}. GGUF files there: {have}.",
            "Pick one of those files or another quantization.",
        )
    files = []
    for path in chosen:
        sibling = lfs[path]
        assert sibling.lfs is not None
        files.append(RemoteFile(path, int(sibling.lfs.size), str(sibling.lfs.sha256)))
    if info.sha is None:
        raise DownloadError(f"The Hub did not say which commit of {repo} it serves.")
    # Model info is public even for gated repositories; the file is not. Ask now, not later.
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(repo, chosen[0], revision=info.sha, endpoint=hub.endpoint)
    try:
        get_hf_file_metadata(url, token=hub.token or False, endpoint=hub.endpoint)
    except Exception as exc:
        raise _explain(exc, hub, repo) from exc
    return Release(
        repo=repo,
        commit=info.sha,
        files=tuple(files),
        name=name or f"{repo.split('/')[-1]} · {Path(chosen[0]).name}",
        catalog_id=catalog_id,
        quant=quant,
    )


def _match(wanted: str, ggufs: list[str]) -> list[str]:
    """A file by name (all parts if split), else every file of a quantization, mmproj aside."""
    if wanted.lower().endswith(".gguf"):
        shard = SHARD_RE.match(wanted)
        if wanted not in ggufs:
            return []
        if not shard:
            return [wanted]
        return [f for f in ggufs if (m := SHARD_RE.match(f)) and m["prefix"] == shard["prefix"]]
    pattern = re.compile(rf"(^|[-_./]){re.escape(wanted)}([-_.]|$)", re.IGNORECASE)
    found = [f for f in ggufs if pattern.search(Path(f).name) and "mmproj" not in f.lower()]
    prefixes = {m["prefix"] if (m := SHARD_RE.match(f)) else f for f in found}
    return found if len(prefixes) == 1 else []  # several models with that quant: ambiguous


def _explain(exc: BaseException, hub: HubConfig, repo: str) -> DownloadError:
    """Turn what huggingface-hub raised into a sentence with a fix."""
    from huggingface_hub import errors

    if isinstance(exc, DownloadError):
        return exc
    if isinstance(exc, errors.GatedRepoError):
        return DownloadError(
            f"{repo} is gated: its authors ask each user to accept their licence first.",
            f"Open {hub.model_page(repo)}, accept the licence, then add your Hugging Face token "
            "in Settings." + (" (The current token has no access yet.)" if hub.token else ""),
        )
    if isinstance(exc, errors.RepositoryNotFoundError):
        return DownloadError(
            f"There is no repository {repo} on {hub.endpoint}.",
            "Check the name; if it is private, add a token that can read it in Settings.",
        )
    if isinstance(exc, errors.RevisionNotFoundError | errors.RemoteEntryNotFoundError):
        return DownloadError(
            f"{repo} no longer has this file at the version resolved.", "Try again."
        )
    if isinstance(exc, errors.OfflineModeIsEnabled):
        return OfflineError("Offline mode is on (HF_HUB_OFFLINE), so nothing is downloaded.")
    if isinstance(exc, errors.HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else "?"
        return DownloadError(f"The Hub answered {status} for {repo}.", "Try again later.")
    return DownloadError(
        f"The Hub at {hub.endpoint} could not be reached ({exc.__class__.__name__}: {exc}).",
        "Check the network connection, or the Hub address in Settings.",
    )


def _transient(exc: BaseException) -> bool:
    """Worth another try: the connection, a timeout, a 5xx/408/429, a short file."""
    import httpx2  # huggingface-hub 2's HTTP client
    from huggingface_hub import errors

    if isinstance(exc, errors.HfHubHTTPError) and exc.response is not None:
        code = exc.response.status_code
        return code >= 500 or code in (408, 429)
    if isinstance(exc, errors.OfflineModeIsEnabled):
        return False
    if isinstance(exc, OSError):
        return exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS)
    return isinstance(exc, httpx2.TransportError)


# -- disk --------------------------------------------------------------------------------------


def free_bytes(directory: Path) -> int:
    return shutil.disk_usage(directory).free


def part_path(directory: Path, release: Release, remote: RemoteFile) -> Path:
    final = final_path(directory, release, remote)
    return final.with_name(f"{final.name}.{remote.sha256[:16]}.part")


def final_path(directory: Path, release: Release, remote: RemoteFile) -> Path:
    return directory.joinpath(*release.repo.split("/"), *remote.path.split("/"))


def on_disk(directory: Path, release: Release) -> int:
    """Bytes of ``release`` already in the models directory (partial or finished)."""
    total = 0
    for remote in release.files:
        for path in (final_path(directory, release, remote), part_path(directory, release, remote)):
            if path.is_file():
                total += min(path.stat().st_size, remote.size)
                break
    return total


def check_disk(directory: Path, release: Release, free: Callable[[Path], int] = free_bytes) -> None:
    """Refuse before starting when the rest of ``release`` would not fit, with a margin."""
    directory.mkdir(parents=True, exist_ok=True)
    needed = release.size - on_disk(directory, release)
    available = free(directory)
    if needed + DISK_MARGIN > available:
        raise NotEnoughSpace(
            f"{release.name} needs {format_bytes(needed + DISK_MARGIN)} in {directory} "
            f"({format_bytes(needed)} plus {format_bytes(DISK_MARGIN)} to spare); "
            f"{format_bytes(available)} is free.",
            "Free some space, or choose another models folder in Settings.",
        )


# -- progress ----------------------------------------------------------------------------------


class DownloadState(str, Enum):
    """Where a download is. A str, so a state compares equal to its name ("running")."""

    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    VERIFYING = "verifying"
    PAUSED = "paused"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DONE = "done"


@dataclass(frozen=True)
class DownloadEvent:
    """Where one download stands."""

    job_id: str
    name: str
    state: DownloadState
    done: int
    total: int
    file_name: str = ""
    file_index: int = 0
    file_count: int = 0
    file_done: int = 0
    file_total: int = 0
    speed: float | None = None  # bytes per second over the last few seconds
    message: str = ""
    model_path: str = ""  # set when done: the file to load

    @property
    def eta(self) -> float | None:
        """Seconds left at the current speed; ``None`` while unknown."""
        if not self.speed or self.speed <= 0:
            return None
        return max(self.total - self.done, 0) / self.speed

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0


class _Meter:
    """Bytes of one download and their recent rate."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.base = 0  # bytes of files before the current one
        self.file_done = 0
        self.samples: list[tuple[float, int]] = []

    @property
    def done(self) -> int:
        return self.base + self.file_done

    def set_file_done(self, n: int) -> None:
        self.file_done = n
        now = time.monotonic()
        self.samples.append((now, self.done))
        while len(self.samples) > 2 and now - self.samples[0][0] > SPEED_WINDOW:
            self.samples.pop(0)

    def forget_speed(self) -> None:
        self.samples.clear()

    @property
    def speed(self) -> float | None:
        if len(self.samples) < 2:
            return None
        (t0, b0), (t1, b1) = self.samples[0], self.samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 - t0 >= 0.5 else None


class _PartFile:
    """The partial file a download writes into: hashes what is written, reports it, and stops
    the download at the next chunk once ``stop`` is set."""

    def __init__(self, path: Path, stop: threading.Event, on_size: Callable[[int], None]) -> None:
        self.path = path
        self.stop = stop
        self.on_size = on_size
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "r+b" if path.exists() else "w+b")  # noqa: SIM115 (closed below)
        self.digest = self._hash_prefix(os.fstat(self.file.fileno()).st_size)

    def _hash_prefix(self, size: int) -> Any:
        digest = hashlib.sha256()
        self.file.seek(0)
        left = size
        while left > 0:
            if self.stop.is_set():
                raise _Stopped
            block = self.file.read(min(READ_BLOCK, left))
            if not block:
                break
            digest.update(block)
            left -= len(block)
        self.file.seek(0, os.SEEK_END)
        return digest

    @property
    def size(self) -> int:
        return self.file.tell()

    def write(self, data: bytes) -> int:
        if self.stop.is_set():
            raise _Stopped
        self.file.write(data)
        self.digest.update(data)
        self.on_size(self.file.tell())
        return len(data)

    def tell(self) -> int:
        return self.file.tell()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self.file.seek(offset, whence)

    def truncate(self, size: int | None = None) -> int:
        """The server ignored our Range and sends the file whole: restart the hash too."""
        end = self.file.truncate(size)
        self.digest = self._hash_prefix(end)
        self.on_size(end)
        return end

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


@dataclass(frozen=True)
class RetryPolicy:
    """How hard a download tries: attempts without progress, backoff, and the stall watchdog
    (no byte for ``stall_timeout`` seconds drops the connection and resumes)."""

    attempts: int = 6
    backoff: float = 2.0
    max_backoff: float = 60.0
    stall_timeout: float = 20.0

    def delay(self, attempt: int) -> float:
        return float(min(self.backoff * 2 ** (attempt - 1), self.max_backoff))


# -- the queue ---------------------------------------------------------------------------------


@dataclass
class Job:
    id: str
    release: Release
    state: DownloadState = DownloadState.QUEUED  # cancelled and done jobs leave the queue
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        running = self.state is DownloadState.RUNNING
        state = DownloadState.QUEUED if running else self.state  # resumed after a crash
        return {"id": self.id, "release": self.release.to_json(), "state": state.value,
                "message": self.message}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Job:
        state = DownloadState(data.get("state", "queued"))
        return cls(
            id=data["id"],
            release=Release.from_json(data["release"]),
            state=DownloadState.QUEUED if state is DownloadState.RUNNING else state,
            message=data.get("message", ""),
        )


class Downloader:
    """A queue of downloads fetched one after another by one worker thread.

    Unfinished downloads are saved with the manifest; a new Downloader picks them up and
    resumes the queued ones from their partial files.
    """

    def __init__(
        self,
        library: Library,
        on_event: Callable[[DownloadEvent], None] = lambda event: None,
        *,
        free: Callable[[Path], int] = free_bytes,
        retry: RetryPolicy = RetryPolicy(),
        start: bool = True,
    ) -> None:
        self.library = library
        self.on_event = on_event
        self.free = free
        self.retry = retry
        self._cond = threading.Condition()
        self._jobs = [Job.from_json(d) for d in library.saved_downloads()]
        self._current: Job | None = None
        self._stop = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._work, name="downloads", daemon=True)
        if start:
            self._thread.start()

    # -- the caller's side -----------------------------------------------------------------

    def jobs(self) -> list[Job]:
        with self._cond:
            return [replace(j) for j in self._jobs]

    def event(self, job: Job) -> DownloadEvent:
        """A job's standing from the disk, for a list shown before any progress arrives."""
        done = on_disk(self.library.models_dir, job.release)
        return DownloadEvent(
            job_id=job.id,
            name=job.release.name,
            state=job.state,
            done=done,
            total=job.release.size,
            file_count=len(job.release.files),
            message=job.message,
        )

    def enqueue(self, release: Release) -> Job:
        """Queue ``release`` after checking it fits on disk (raises NotEnoughSpace)."""
        if self.library.get(release.model_id) is not None:
            raise DownloadError(f"{release.name} is already installed.")
        with self._cond:
            for job in self._jobs:
                if job.release.model_id == release.model_id:
                    if job.state in (DownloadState.PAUSED, DownloadState.FAILED):
                        self.resume(job.id)
                    return job
        check_disk(self.library.models_dir, release, self.free)
        job = Job(uuid.uuid4().hex[:12], release)
        with self._cond:
            self._jobs.append(job)
            self._save()
            self._cond.notify_all()
        self._emit(self.event(job))
        return job

    def pause(self, job_id: str) -> None:
        self._halt(job_id, DownloadState.PAUSED)

    def cancel(self, job_id: str) -> None:
        """Stop and forget a download and delete its partial files."""
        self._halt(job_id, DownloadState.CANCELLED)

    def resume(self, job_id: str) -> None:
        with self._cond:
            job = self._job(job_id)
            if job is None or job.state not in (DownloadState.PAUSED, DownloadState.FAILED):
                return
            job.state, job.message = DownloadState.QUEUED, ""
            self._save()
            self._cond.notify_all()
        self._emit(self.event(job))

    def wake(self) -> None:
        """Look at the settings and the queue again: offline mode turned on sends the running
        download back to the queue (it waits there); turned off, the queue moves again."""
        with self._cond:
            if self._current is not None and (self.library.hub.offline or offline_by_environment()):
                self._current.state = DownloadState.QUEUED
                self._stop.set()
            self._cond.notify_all()

    def running(self) -> bool:
        with self._cond:
            return self._current is not None

    def active(self) -> bool:
        with self._cond:
            return self._has_work()

    def _has_work(self) -> bool:  # with self._cond held
        return self._current is not None or any(j.state is DownloadState.QUEUED for j in self._jobs)

    def close(self, timeout: float = 2.0) -> None:
        """Stop the worker; the running download stays queued and resumes next time."""
        with self._cond:
            self._closing = True
            self._stop.set()
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def wait_idle(self, timeout: float) -> bool:
        """Block until nothing is queued or running (for scripts and tests)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._has_work():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    # -- internals -------------------------------------------------------------------------

    def _job(self, job_id: str) -> Job | None:
        return next((j for j in self._jobs if j.id == job_id), None)

    def _save(self) -> None:
        self.library.save_downloads([j.to_json() for j in self._jobs])

    def _emit(self, event: DownloadEvent) -> None:
        try:
            self.on_event(event)
        except Exception:  # a listener's bug must not kill the download
            log.exception("download listener failed")

    def _halt(self, job_id: str, state: DownloadState) -> None:
        with self._cond:
            job = self._job(job_id)
            if job is None:
                return
            running = job is self._current
            job.state = state
            if state == "cancelled":
                self._jobs.remove(job)
            self._save()
            if running:
                self._stop.set()
            self._cond.notify_all()
        if state == "cancelled" and not running:
            self._delete_parts(job.release)
        event = self.event(job)  # job.state is ``state`` now
        self._emit(replace(event, done=0) if state == "cancelled" else event)

    def _delete_parts(self, release: Release) -> None:
        directory = self.library.models_dir
        for remote in release.files:
            part_path(directory, release, remote).unlink(missing_ok=True)

    def _next(self) -> Job | None:
        if self.library.hub.offline or offline_by_environment():
            return None
        return next((j for j in self._jobs if j.state == "queued"), None)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._closing and (job := self._next()) is None:
                    self._cond.wait()
                if self._closing:
                    return
                assert job is not None
                job.state = DownloadState.RUNNING
                self._current = job
                self._stop = stop = threading.Event()
            try:
                model = self._download(job, stop)
            except _Stopped:
                model = None
            except MoeChatError as exc:
                model = None
                self._fail(job, exc.message, exc.hint)
            except Exception as exc:  # a bug or an OS error we did not foresee
                log.exception("download of %s failed", job.release.name)
                model = None
                self._fail(job, f"The download failed: {exc.__class__.__name__}: {exc}", "")
            with self._cond:
                self._current = None
                cancelled = job.state == "cancelled"
                if model is not None:
                    self._jobs = [j for j in self._jobs if j is not job]
                self._cond.notify_all()
            if cancelled:
                self._delete_parts(job.release)

    def _fail(self, job: Job, message: str, hint: str) -> None:
        with self._cond:
            if job.state != "running":
                return  # paused or cancelled meanwhile: that is what the user asked for
            job.state, job.message = DownloadState.FAILED, f"{message} {hint}".strip()
            self._save()
        self._emit(self.event(job))

    def _download(self, job: Job, stop: threading.Event) -> InstalledModel | None:
        release = job.release
        hub = HubConfig.from_library(self.library)
        hub.check_online()
        directory = self.library.models_dir
        check_disk(directory, release, self.free)
        meter = _Meter(release.size)
        events = Throttle(EVENT_INTERVAL)

        def report(state: str, remote: RemoteFile, index: int, message: str = "",
                   force: bool = False) -> None:  # fmt: skip
            if not events.ready(force):
                return
            self._emit(
                DownloadEvent(
                    job_id=job.id,
                    name=release.name,
                    state=DownloadState(state),
                    done=meter.done,
                    total=meter.total,
                    file_name=remote.path,
                    file_index=index + 1,
                    file_count=len(release.files),
                    file_done=meter.file_done,
                    file_total=remote.size,
                    speed=meter.speed,
                    message=message,
                )
            )

        finals = []
        for index, remote in enumerate(release.files):
            final = final_path(directory, release, remote)
            if not (final.is_file() and _sha256(final, stop) == remote.sha256):
                self._fetch(release, remote, hub, stop, meter,
                            lambda state, message="", force=False, r=remote, i=index:
                            report(state, r, i, message, force))  # fmt: skip
            meter.base += remote.size
            meter.file_done = 0
            finals.append(final)
        model = InstalledModel(
            id=release.model_id,
            name=release.name,
            source="hub",
            files=tuple(
                ModelFile(str(p), r.size, r.sha256, r.path)
                for p, r in zip(finals, release.files, strict=True)
            ),
            repo=release.repo,
            commit=release.commit,
            catalog_id=release.catalog_id,
            quant=release.quant,
        )
        with self._cond:
            if stop.is_set():
                raise _Stopped
            self.library.install(model, finished_download=job.id)
        self._emit(
            DownloadEvent(
                job_id=job.id,
                name=release.name,
                state=DownloadState.DONE,
                done=release.size,
                total=release.size,
                model_path=model.path,
            )
        )
        return model

    def _fetch(
        self,
        release: Release,
        remote: RemoteFile,
        hub: HubConfig,
        stop: threading.Event,
        meter: _Meter,
        report: Callable[..., None],
    ) -> None:
        """Fetch one file into its partial file, retrying, then verify and rename it."""
        directory = self.library.models_dir
        part = part_path(directory, release, remote)
        if part.is_file() and part.stat().st_size > remote.size:
            part.unlink()  # cannot be a prefix of this file
        failures = 0
        while True:
            before = part.stat().st_size if part.exists() else 0
            try:
                self._fetch_once(release, remote, hub, part, stop, meter, report)
                break
            except _Stopped:
                raise
            except Exception as exc:
                if stop.is_set():
                    raise _Stopped from exc
                if not _transient(exc):
                    raise _explain_write(exc, part) from exc
                grew = part.exists() and part.stat().st_size > before
                failures = 1 if grew else failures + 1
                if failures > self.retry.attempts:
                    raise DownloadError(
                        f"{remote.path} did not arrive after {self.retry.attempts} tries "
                        f"({exc.__class__.__name__}: {exc}).",
                        "Check the network; Resume continues from the bytes already saved.",
                    ) from exc
                delay = self.retry.delay(failures)
                log.warning("download of %s interrupted (%s); retry in %.1f s", remote.path,
                            exc, delay)  # fmt: skip
                meter.forget_speed()
                report("retrying", f"Connection trouble ({exc.__class__.__name__}); "
                       f"retrying in {delay:.0f} s", force=True)  # fmt: skip
                if stop.wait(delay):
                    raise _Stopped from exc

    def _fetch_once(
        self,
        release: Release,
        remote: RemoteFile,
        hub: HubConfig,
        part: Path,
        stop: threading.Event,
        meter: _Meter,
        report: Callable[..., None],
    ) -> None:
        from huggingface_hub import get_hf_file_metadata, hf_hub_url

        # Public (huggingface_hub.utils), though its lazy loader hides it from mypy.
        from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]

        hub.check_online()
        url = hf_hub_url(release.repo, remote.path, revision=release.commit, endpoint=hub.endpoint)
        headers = build_hf_headers(token=hub.token or False, library_name="moe-chat")
        report("running", "Connecting…", force=True)
        try:
            meta = get_hf_file_metadata(url, token=hub.token or False, endpoint=hub.endpoint,
                                        retry_on_errors=True)  # fmt: skip
        except Exception as exc:
            if _transient(exc):
                raise
            raise _explain(exc, hub, release.repo) from exc
        if meta.etag and meta.etag != remote.sha256:
            raise DownloadError(
                f"{remote.path} on the Hub is not the file resolved earlier "
                f"(sha256 {meta.etag[:12]}…, expected {remote.sha256[:12]}…).",
                "Cancel this download and start it again.",
            )
        location = meta.location
        if _origin(location) != _origin(url):
            headers.pop("authorization", None)  # a signed CDN address: the token stays home

        def on_size(size: int) -> None:
            meter.set_file_done(size)
            report("running")

        target = _PartFile(part, stop, on_size)
        try:
            on_size(target.size)
            report("running", force=True)
            if target.size < remote.size:
                _stream_into(target, location, headers, remote.size, self.retry.stall_timeout)
            digest = target.digest.hexdigest()
        finally:
            target.close()
        report("verifying", force=True)
        if digest != remote.sha256:
            part.unlink(missing_ok=True)
            raise DownloadError(
                f"{remote.path} arrived damaged: its sha256 is {digest[:12]}…, the Hub says "
                f"{remote.sha256[:12]}…. The bad file was deleted and nothing was installed.",
                "Resume to download it again; if it happens again, the mirror serves a "
                "different file (check the Hub address in Settings).",
            )
        os.replace(part, final_path(self.library.models_dir, release, remote))


def _explain_write(exc: BaseException, part: Path) -> BaseException:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return NotEnoughSpace(
            f"The disk holding {part.parent} filled up during the download.",
            "Free some space and press Resume: it continues where it stopped.",
        )
    if isinstance(exc, OSError):
        return DownloadError(f"{part} could not be written: {exc.strerror or exc}.",
                             "Check the models folder in Settings.")  # fmt: skip
    return exc


def _origin(url: str) -> tuple[str, str]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.scheme, parts.netloc.lower()


def _sha256(path: Path, stop: threading.Event) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(READ_BLOCK):
            if stop.is_set():
                raise _Stopped
            digest.update(block)
    return digest.hexdigest()


def _stream_into(
    target: _PartFile, url: str, headers: dict[str, str], expected: int, stall_s: float
) -> None:
    """GET ``url`` into ``target`` from where it ends (a Range request), 1 MiB at a time, with
    huggingface-hub's HTTP session. No byte for ``stall_s`` is a timeout (the stall watchdog);
    a server that ignores the range sends the file whole, and ``target`` starts over.

    Raises:
        OSError: the file came short or long (worth another try, like a dropped connection).
    """
    import httpx2  # huggingface-hub 2's HTTP client
    from huggingface_hub import get_session, hf_raise_for_status

    headers = dict(headers)
    resume = target.size
    if resume:
        headers["Range"] = f"bytes={resume}-"
    with get_session().stream(
        "GET", url, headers=headers, timeout=httpx2.Timeout(stall_s), follow_redirects=True
    ) as response:
        hf_raise_for_status(response)
        if resume and response.status_code == 200:
            target.seek(0)
            target.truncate()
        for chunk in response.iter_bytes(CHUNK_BYTES):
            target.write(chunk)
            if target.size > expected:
                break
    if target.size != expected:
        raise OSError(errno.EIO, f"received {target.size:,} of {expected:,} bytes of {url}")
