"""The model host: the loaded model in a child process, shared in turn by every client.

The chat window, the local API server and ``moe-chat serve`` never hold a Session. They
submit requests to a ``ModelHost``, which keeps one queue, takes clients in turn (a client
that sends ten requests does not wait out another's one), and runs one request at a time in
a child process (``python -m engine.host``) that owns the engine.

Why a child process: a native abort in llama.cpp (a ``GGML_ASSERT``, a CUDA out-of-memory)
ends the process it happens in. In the child it costs the reply in progress; the host
reports ``EngineCrashed`` and the next ``load`` starts a fresh child. The child also has the
interpreter to itself, so the window's Python never competes with the token loop for the
GIL (bench/generation.py measures both).

Everything that crosses the process boundary is one of the frozen dataclasses below,
pickled over a ``multiprocessing.connection`` with an authentication key.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import secrets
import subprocess
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import TYPE_CHECKING, Union

from engine.chat_format import Piece, ReplyFormat, TemplateOptions, template_options_supported
from engine.errors import GenerationError, ModelLoadError, MoeChatError, user_message
from engine.heat import HeatProfile
from engine.session import Message, SamplingSettings, Stats
from engine.throttle import Throttle

if TYPE_CHECKING:
    from engine.hardware import RemoteDevice
    from engine.tuner import Tuning

log = logging.getLogger(__name__)

# The child sends a reply's pieces in batches this far apart (the first at once, so time to
# first token shows): every wake-up of the window costs the engine's threads a core.
FLUSH_INTERVAL_S = 0.05
# The heat map needs no more; while profiling the engine calls Python per graph node.
HEAT_INTERVAL_S = 0.5
START_TIMEOUT_S = 60.0
KEY_ENV = "MOE_CHAT_HOST_KEY"  # the child's half of the connection's authentication
MAX_WAITING = 32  # requests waiting beyond this are refused (HostBusy: try again later)


# -- what clients send ----------------------------------------------------------------------


@dataclass(frozen=True)
class ChatMessage:
    role: str  # "system", "user" or "assistant"
    content: str
    reasoning: str = ""  # an assistant turn's reasoning, apart from its answer

    def as_message(self) -> Message:
        message = {"role": self.role, "content": self.content}
        if self.reasoning:
            message["reasoning"] = self.reasoning
        return message


@dataclass(frozen=True)
class ChatRequest:
    """A reply to a conversation, rendered with the model's chat template."""

    messages: tuple[ChatMessage, ...]
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    options: TemplateOptions = field(default_factory=TemplateOptions)
    resume: bool = False  # the last message is a reply cut short: continue it


@dataclass(frozen=True)
class CompletionRequest:
    """Plain text continued as it is, with no chat template."""

    prompt: str
    sampling: SamplingSettings = field(default_factory=SamplingSettings)


Request = Union[ChatRequest, CompletionRequest]  # noqa: UP007 (a runtime alias on 3.10)


# -- what the host reports ------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedModel:
    """The loaded model, its placement, and what its load measured."""

    path: str
    name: str
    architecture: str
    file_type: str
    n_layers: int
    n_experts: int
    n_experts_used: int
    n_ctx: int
    n_threads: int
    reply_format: ReplyFormat
    placement: str  # the placement's label
    gpu_expert_layers: tuple[int, ...]
    partial_expert_layer: int | None
    partial_gpu_share: float
    device_bytes: Mapping[str, int]  # weights, KV cache and buffers per device, at load
    rss_bytes: int  # the host process's resident memory after the load
    predicted_generation_tokens_per_s: float | None
    predicted_prompt_tokens_per_s: float | None
    tuned: bool  # placed by the last "Tune for this machine"
    tuning: Tuning | None = None  # the last tuning of this file on this machine, if any
    # The TemplateOptions fields its chat template reads ("reasoning_effort",
    # "enable_thinking"): what the window offers to set per conversation.
    template_options: tuple[str, ...] = ()
    sampling_defaults: tuple[tuple[str, float], ...] = ()  # the file's general.sampling.*
    planned_bytes: Mapping[str, int] = field(default_factory=dict)  # the plan's, per device
    workers: tuple[str, ...] = ()  # other computers holding layers (host:port)
    link_ms_per_token: float = 0.0  # what the network adds to a token, predicted
    notes: tuple[str, ...] = ()  # what the user should know: workers left out, assumptions
    # Hot experts (packaging/HOT-EXPERTS.md): each layer's experts the engine split off onto
    # the GPU, the share of expert reads the counted heat expects them to serve, whether
    # this engine can split at all, and whether the file's experts are in heat order.
    hot_experts: tuple[int, ...] = ()
    hot_share: float | None = None
    splits_experts: bool = False
    heat_ordered: bool = False

    @property
    def model_id(self) -> str:
        """The name API clients use: the file name without ``.gguf``."""
        return Path(self.path).name.removesuffix(".gguf")


class HostState(str, Enum):
    EMPTY = "empty"  # no model
    LOADING = "loading"
    READY = "ready"
    TUNING = "tuning"
    CRASHED = "crashed"  # the child died; the next load starts a new one
    CLOSED = "closed"


@dataclass(frozen=True)
class RequestInfo:
    request_id: int
    client: str  # "window", "api 127.0.0.1", …
    kind: str  # "chat" or "completion"


@dataclass(frozen=True)
class LoadStarted:
    path: str


@dataclass(frozen=True)
class LoadProgressed:
    fraction: float


@dataclass(frozen=True)
class ModelLoaded:
    model: LoadedModel


@dataclass(frozen=True)
class LoadFailed:
    message: str


@dataclass(frozen=True)
class ModelUnloaded:
    pass


@dataclass(frozen=True)
class HeatUpdated:
    profile: HeatProfile  # a copy; the engine goes on counting into its own


@dataclass(frozen=True)
class TuneStarted:
    name: str


@dataclass(frozen=True)
class TuneProgressed:
    fraction: float
    message: str


@dataclass(frozen=True)
class TuneFinished:
    tuning: Tuning | None  # None when cancelled; the model loads again next


@dataclass(frozen=True)
class TuneFailed:
    message: str


@dataclass(frozen=True)
class EngineCrashed:
    """The child process died (a native abort, out of memory, killed). Nothing is loaded."""

    message: str
    model_path: str | None  # what was loaded, to offer loading it again
    lost_workers: tuple[str, ...] = ()  # computers that stopped answering: reload without them


@dataclass(frozen=True)
class QueueChanged:
    running: RequestInfo | None
    waiting: tuple[RequestInfo, ...]


@dataclass(frozen=True)
class RequestEnded:
    """Any client's request is over (for whoever shows the queue: the window shows the API's)."""

    info: RequestInfo
    stop_reason: str  # the Stats' stop reason, or "failed"
    generated_tokens: int = 0


@dataclass(frozen=True)
class ReplyStarted:
    request_id: int


@dataclass(frozen=True)
class ReplyPieces:
    request_id: int
    pieces: tuple[Piece, ...]
    generated_tokens: int
    tokens_per_s: float
    time_to_first_token: float


@dataclass(frozen=True)
class ReplyFinished:
    request_id: int
    stats: Stats
    profiling: bool = False  # routing was counted, which slows the engine


@dataclass(frozen=True)
class ReplyFailed:
    request_id: int
    message: str
    crashed: bool = False  # the engine died; the pieces sent before are all there is


ReplyEvent = Union[ReplyStarted, ReplyPieces, ReplyFinished, ReplyFailed]  # noqa: UP007
HostEvent = Union[  # noqa: UP007
    LoadStarted,
    LoadProgressed,
    ModelLoaded,
    LoadFailed,
    ModelUnloaded,
    HeatUpdated,
    TuneStarted,
    TuneProgressed,
    TuneFinished,
    TuneFailed,
    EngineCrashed,
    QueueChanged,
    RequestEnded,
]


class HostBusy(MoeChatError):
    """Too many requests are waiting; try again shortly."""


class HostUnavailable(MoeChatError):
    """No model is loaded, or the host is loading, tuning, stopped or closed."""


# -- commands (parent to child) ---------------------------------------------------------------


@dataclass(frozen=True)
class _Load:
    path: str
    n_ctx: int
    workers: tuple[str, ...] = ()
    ram_limit: int | None = None


@dataclass(frozen=True)
class _Unload:
    pass


@dataclass(frozen=True)
class _Generate:
    request_id: int
    request: Request


@dataclass(frozen=True)
class _Cancel:
    request_id: int


@dataclass(frozen=True)
class _SetProfiling:
    on: bool


@dataclass(frozen=True)
class _Tune:
    pass


@dataclass(frozen=True)
class _CancelTune:
    pass


@dataclass(frozen=True)
class _Shutdown:
    pass


# -- the client side --------------------------------------------------------------------------


@dataclass(eq=False)
class Ticket:
    """One submitted request; its events go to ``on_event`` on the host's reader thread."""

    info: RequestInfo
    request: Request
    on_event: Callable[[ReplyEvent], None]
    host: ModelHost = field(repr=False)
    done: bool = False

    @property
    def request_id(self) -> int:
        return self.info.request_id

    def cancel(self) -> None:
        """Stop the request: a waiting one never runs, a running one ends within a token."""
        self.host.cancel(self)


class ModelHost:
    """Owns the engine's child process and the one queue every client's requests wait in.

    Thread-safe. Listeners (``add_listener``) and a ticket's ``on_event`` are called on the
    host's reader thread, one event at a time in order; they must return quickly (post to
    a queue, emit a Qt signal, ``call_soon_threadsafe``).
    """

    def __init__(self, max_waiting: int = MAX_WAITING) -> None:
        self.max_waiting = max_waiting
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._send_lock = threading.Lock()
        self._listeners: list[Callable[[HostEvent], None]] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._outbox: list[object] = []  # commands sent while the child is connecting
        self._reader: threading.Thread | None = None
        self._stderr_tail: deque[str] = deque(maxlen=400)  # a native backtrace is long
        self._state = HostState.EMPTY
        self._model: LoadedModel | None = None
        self._load_error = ""
        self._wanted_path: str | None = None
        self._wanted_load: _Load | None = None  # the last load asked for
        self._load_started = False  # an engine process took it up (sent LoadStarted)
        self._ids = itertools.count(1)
        self._tickets: dict[int, Ticket] = {}
        self._waiting: OrderedDict[str, deque[Ticket]] = OrderedDict()
        self._running: Ticket | None = None
        self._last_client: str | None = None
        self._profiling = False

    # -- state -----------------------------------------------------------------------------

    @property
    def state(self) -> HostState:
        return self._state

    @property
    def model(self) -> LoadedModel | None:
        return self._model

    @property
    def pid(self) -> int | None:
        """The engine process's id while it runs."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def add_listener(self, listener: Callable[[HostEvent], None]) -> None:
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[HostEvent], None]) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def queue_state(self) -> QueueChanged:
        with self._lock:
            running = self._running.info if self._running is not None else None
            waiting = tuple(t.info for tickets in self._waiting.values() for t in tickets)
            return QueueChanged(running, waiting)

    # -- models ----------------------------------------------------------------------------

    def load(
        self,
        path: str | Path,
        n_ctx: int = 4096,
        workers: tuple[str, ...] = (),
        ram_limit: int | None = None,
    ) -> None:
        """Load ``path`` (replacing what is loaded), planned for this machine; LoadStarted,
        LoadProgressed and then ModelLoaded or LoadFailed follow. A reply in progress stops;
        waiting requests run on the new model.

        Args:
            workers: other computers (``host:port`` of ``moe-chat worker``) whose devices the
                plan may use; one that cannot be used is left out, with a note.
            ram_limit: use at most this many bytes of this computer's RAM.
        """
        with self._lock:
            if self._state is HostState.CLOSED:
                raise HostUnavailable("The model host is closed.")
            self._start_child()
            self._wanted_path = str(path)
            self._wanted_load = _Load(str(path), n_ctx, tuple(workers), ram_limit)
            self._load_started = False
            self._state = HostState.LOADING
            self._load_error = ""
            self._cancel_running()
            self._send(self._wanted_load)

    def unload(self) -> None:
        with self._lock:
            if self._proc is None:
                return
            self._cancel_running()
            self._send(_Unload())

    def wait_loaded(self, timeout: float | None = None) -> LoadedModel:
        """Block until the load asked for last is done.

        Raises:
            ModelLoadError: it failed, the engine stopped, or ``timeout`` passed first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while self._state in (HostState.LOADING, HostState.TUNING):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise ModelLoadError("The model took too long to load.")
                self._changed.wait(left)
            if self._model is None:
                raise ModelLoadError(self._load_error or "No model is loaded.")
            return self._model

    def set_profiling(self, on: bool) -> None:
        """Count expert routing into the model file's heat profile from now on, or stop."""
        with self._lock:
            self._profiling = on
            self._send(_SetProfiling(on))

    def tune(self) -> None:
        """Measure the loaded model's candidate splits (TuneStarted … TuneFinished), then
        load it again with the fastest."""
        with self._lock:
            if self._model is None:
                raise HostUnavailable("No model is loaded, so there is nothing to tune.")
            self._state = HostState.TUNING
            self._cancel_running()
            self._send(_Tune())

    def cancel_tune(self) -> None:
        with self._lock:
            self._send(_CancelTune())

    # -- requests --------------------------------------------------------------------------

    def submit(
        self, request: Request, client: str, on_event: Callable[[ReplyEvent], None]
    ) -> Ticket:
        """Queue ``request`` behind the other clients' (taken in turn).

        Raises:
            HostUnavailable: no model is loaded or loading.
            HostBusy: ``max_waiting`` requests are already waiting.
        """
        with self._lock:
            if self._state in (HostState.EMPTY, HostState.CRASHED, HostState.CLOSED):
                raise HostUnavailable(
                    self._load_error or "No model is loaded.", "Load a model first."
                )
            if sum(len(t) for t in self._waiting.values()) >= self.max_waiting:
                raise HostBusy(
                    f"{self.max_waiting} requests are already waiting for the model.",
                    "Try again in a moment.",
                )
            kind = "chat" if isinstance(request, ChatRequest) else "completion"
            ticket = Ticket(RequestInfo(next(self._ids), client, kind), request, on_event, self)
            self._tickets[ticket.request_id] = ticket
            self._waiting.setdefault(client, deque()).append(ticket)
            self._dispatch()
        self._notify_queue()
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        with self._lock:
            if ticket.done:
                return
            if ticket is self._running:
                self._send(_Cancel(ticket.request_id))
                return
            waiting = self._waiting.get(ticket.info.client)
            if waiting is None or ticket not in waiting:
                return
            waiting.remove(ticket)
            if not waiting:
                del self._waiting[ticket.info.client]
            self._finish(ticket)
        ticket.on_event(ReplyFailed(ticket.request_id, "Cancelled before it started."))
        self._notify(RequestEnded(ticket.info, "cancelled"))
        self._notify_queue()

    def stream(
        self, request: Request, client: str = "script", timeout: float | None = None
    ) -> Iterator[ReplyEvent]:
        """Submit ``request`` and yield its events until it finishes or fails; leaving the
        loop early cancels it."""
        events: queue.Queue[ReplyEvent] = queue.Queue()
        ticket = self.submit(request, client, events.put)
        finished = False
        try:
            while not finished:
                try:
                    event = events.get(timeout=timeout)
                except queue.Empty:
                    raise GenerationError("The model did not answer in time.") from None
                finished = isinstance(event, (ReplyFinished, ReplyFailed))
                yield event
        finally:
            if not finished:
                ticket.cancel()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the engine process (it frees the model first) and fail what is waiting."""
        with self._lock:
            if self._state is HostState.CLOSED:
                return
            self._state = HostState.CLOSED
            proc, reader = self._proc, self._reader
            self._send(_Shutdown())
        if proc is not None:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout)
        self._fail_all("The app is closing.", crashed=False)
        with self._changed:
            self._changed.notify_all()

    def __enter__(self) -> ModelHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- inside ----------------------------------------------------------------------------

    def _start_child(self) -> None:
        """Start the engine's process unless it runs; returns at once. Commands sent before
        it has connected wait in the outbox, in order."""
        if self._proc is not None and self._proc.poll() is None:
            return
        authkey = secrets.token_bytes(32)
        listener = Listener(authkey=authkey)
        # The key goes by environment (a windowed bundle has no stdin); the child drops it.
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine.host", str(listener.address)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=dict(os.environ, PYTHONUNBUFFERED="1", **{KEY_ENV: authkey.hex()}),
        )
        self._proc, self._conn, self._outbox = proc, None, []
        self._stderr_tail.clear()
        threading.Thread(
            target=self._read_stderr, args=(proc,), name="host-stderr", daemon=True
        ).start()
        threading.Thread(
            target=self._connect, args=(listener, authkey, proc), name="host-connect", daemon=True
        ).start()
        if self._profiling:
            self._send(_SetProfiling(True))

    def _connect(self, listener: Listener, authkey: bytes, proc: subprocess.Popen[bytes]) -> None:
        """Wait for the new child to connect, then send what waited and read its events."""
        accepted: list[Connection] = []

        def accept() -> None:
            with contextlib.suppress(Exception):  # a child that failed the handshake
                accepted.append(listener.accept())

        acceptor = threading.Thread(target=accept, name="host-accept", daemon=True)
        acceptor.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while acceptor.is_alive() and proc.poll() is None and time.monotonic() < deadline:
            acceptor.join(0.05)
        if acceptor.is_alive():  # unblock accept() with a connection of our own
            with contextlib.suppress(Exception):
                Client(listener.address, authkey=authkey).close()
            acceptor.join(5)
        listener.close()
        if not accepted or proc.poll() is not None:
            proc.kill()
            proc.wait()
            time.sleep(0.05)  # the child's last words reach the stderr reader
            detail = self._stderr_tail[-1] if self._stderr_tail else ""
            message = "The engine process did not start" + (f": {detail}" if detail else ".")
            with self._changed:
                if self._proc is proc:
                    self._proc, self._outbox = None, []
                if self._state is not HostState.CLOSED:
                    self._state, self._model, self._load_error = HostState.EMPTY, None, message
                self._changed.notify_all()
            self._fail_all(message, crashed=False)
            self._notify(LoadFailed(message + " Reinstall the app if this keeps happening."))
            return
        conn = accepted[0]
        with self._lock, self._send_lock:
            if self._proc is not proc:
                conn.close()
                return
            self._conn = conn
            for command in self._outbox:
                with contextlib.suppress(OSError, ValueError):
                    conn.send(command)
            self._outbox = []
            self._reader = threading.Thread(
                target=self._read_events, args=(conn, proc), name="host-reader", daemon=True
            )
            self._reader.start()

    def _send(self, command: object) -> None:
        with self._lock:
            conn = self._conn
            if conn is None:
                if self._proc is not None:  # still connecting
                    self._outbox.append(command)
                return
            # a child that is gone raises here; its reader thread reports it
            with self._send_lock, contextlib.suppress(OSError, ValueError):
                conn.send(command)

    def _read_stderr(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        with proc.stderr:
            for raw in proc.stderr:
                line = raw.decode("utf-8", "replace").rstrip()
                if line:
                    self._stderr_tail.append(line)
                    log.info("engine: %s", line)

    def _read_events(self, conn: Connection, proc: subprocess.Popen[bytes]) -> None:
        while True:
            try:
                event = conn.recv()
            except (EOFError, OSError):
                break
            except Exception:  # a message that does not unpickle: a bug, not a crash
                log.exception("unreadable message from the engine process")
                continue
            self._on_event(event)
        conn.close()
        self._on_child_gone(proc)

    def _on_event(self, event: object) -> None:
        ticket: Ticket | None = None
        if isinstance(event, (ReplyStarted, ReplyPieces, ReplyFinished, ReplyFailed)):
            with self._lock:
                ticket = self._tickets.get(event.request_id)
                if ticket is None:
                    return
                if isinstance(event, (ReplyFinished, ReplyFailed)):
                    self._finish(ticket)
                    self._running = None
                    self._dispatch()
            ticket.on_event(event)
            if isinstance(event, ReplyFinished):
                stats = event.stats
                self._notify(RequestEnded(ticket.info, stats.stop_reason, stats.generated_tokens))
            elif isinstance(event, ReplyFailed):
                self._notify(RequestEnded(ticket.info, "failed"))
            if isinstance(event, (ReplyFinished, ReplyFailed)):
                self._notify_queue()
            return
        with self._changed:
            if isinstance(event, LoadStarted):
                self._state, self._model = HostState.LOADING, None
                self._load_started = True
            elif isinstance(event, ModelLoaded):
                self._state, self._model = HostState.READY, event.model
                self._dispatch()
            elif isinstance(event, LoadFailed):
                self._state, self._model, self._load_error = HostState.EMPTY, None, event.message
            elif isinstance(event, ModelUnloaded):
                if self._state is not HostState.TUNING:
                    self._state = HostState.EMPTY
                self._model = None
            elif isinstance(event, TuneStarted):
                self._state, self._model = HostState.TUNING, None
            self._changed.notify_all()
        if isinstance(event, (LoadFailed, ModelUnloaded)) and self._state is HostState.EMPTY:
            self._fail_all("No model is loaded any more.", crashed=False)
        self._notify(event)  # type: ignore[arg-type]

    def _on_child_gone(self, proc: subprocess.Popen[bytes]) -> None:
        code = proc.wait()
        time.sleep(0.05)  # the last words on stderr arrive just after the pipe closes
        with self._changed:
            if self._proc is proc:
                self._proc, self._conn = None, None
            # A load started the next process before this one's end was read (superseded),
            # or was sent to this one after it had died: the file is not to blame, so load
            # it in a new process (retry). Either way only the reply this one ran is lost.
            superseded = self._proc is not None
            retry = (
                not superseded
                and self._state is HostState.LOADING
                and not self._load_started
                and self._wanted_load is not None
            )
            if retry:
                self._start_child()
                self._send(self._wanted_load)
            lost = self._running if superseded or retry else None
            if lost is not None:
                self._running = None
                self._finish(lost)
        if superseded or retry:
            if lost is not None:
                message = self._crash_message(code)
                lost.on_event(ReplyFailed(lost.request_id, message, crashed=True))
                self._notify(RequestEnded(lost.info, "failed"))
                with self._lock:
                    self._dispatch()
            return
        with self._changed:
            closing = self._state is HostState.CLOSED
            loading = self._state is HostState.LOADING
            path = self._model.path if self._model is not None else self._wanted_path
            workers = self._wanted_load.workers if self._wanted_load is not None else ()
        gone = _lost_workers(workers) if not closing else ()
        with self._changed:
            if not closing:
                self._state, self._model = HostState.CRASHED, None
                message = self._crash_message(code, path if loading else None, gone)
                self._load_error = message
                if loading and not gone:  # the file brought it down: loading it again would too
                    path = None
            self._changed.notify_all()
        if closing:
            return
        log.error("the engine process stopped: %s", message)
        self._fail_all(message, crashed=True)
        self._notify(EngineCrashed(message, path, gone))

    def _crash_message(
        self, code: int, loading: str | None = None, lost: tuple[str, ...] = ()
    ) -> str:
        if code < 0:
            how = f"it was stopped by signal {-code}"
            if -code == 9:
                how += " (killed, often for lack of memory)"
        else:
            how = f"it exited with code {code}"
        cause = next(
            (line for line in reversed(self._stderr_tail) if "GGML_ASSERT" in line or "error" in
             line.lower()),
            "",
        )  # fmt: skip
        words = f" Its last words: {cause[-300:]}" if cause else ""
        if lost:
            which = ", ".join(lost)
            return (
                f"The computer at {which} stopped answering, and the engine stopped with it "
                f"({how}). The reply so far is kept; load the model on this computer alone, "
                "or restart `moe-chat worker` there and load it again."
            )
        if loading is not None:
            return (
                f"The engine stopped while loading {Path(loading).name}: {how}.{words} The "
                "file may be damaged, need a newer engine, or need more memory than is free."
            )
        return (
            f"The engine stopped unexpectedly: {how}.{words} Your conversations are safe; "
            "load the model again to go on."
        )

    def _cancel_running(self) -> None:
        if self._running is not None:
            self._send(_Cancel(self._running.request_id))

    def _dispatch(self) -> None:
        """Send the next request (round-robin over clients) if the engine is free."""
        if self._running is not None or self._state is not HostState.READY or not self._waiting:
            return
        # the first client in line that was not served last; alone, it goes again
        client = next((c for c in self._waiting if c != self._last_client), None)
        client = client if client is not None else next(iter(self._waiting))
        tickets = self._waiting.pop(client)
        ticket = tickets.popleft()
        if tickets:  # this client's next request goes to the back of the line
            self._waiting[client] = tickets
        self._last_client = client
        self._running = ticket
        self._send(_Generate(ticket.request_id, ticket.request))

    def _finish(self, ticket: Ticket) -> None:
        ticket.done = True
        self._tickets.pop(ticket.request_id, None)

    def _fail_all(self, message: str, crashed: bool) -> None:
        with self._lock:
            tickets = list(self._tickets.values())
            for ticket in tickets:
                self._finish(ticket)
            running = self._running
            self._waiting.clear()
            self._running = None
        for ticket in tickets:
            ticket.on_event(ReplyFailed(ticket.request_id, message, crashed and ticket is running))
            self._notify(RequestEnded(ticket.info, "failed"))
        if tickets:
            self._notify_queue()

    def _notify_queue(self) -> None:
        self._notify(self.queue_state())

    def _notify(self, event: HostEvent) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(event)
            except Exception:
                log.exception("a model host listener failed on %s", type(event).__name__)


# -- the child process ----------------------------------------------------------------------


class _Child:
    """Runs in ``python -m engine.host``: one Session, commands in order, cancels at once."""

    def __init__(self, conn: Connection) -> None:
        from engine.session import Session

        self.conn = conn
        self.send_lock = threading.Lock()
        self.commands: queue.Queue[object] = queue.Queue()
        self.cancel = threading.Event()
        self.tune_cancel = threading.Event()
        self.closing = threading.Event()
        self.cancel_lock = threading.Lock()
        self.current: int | None = None
        self.cancelled: set[int] = set()
        self.session: Session | None = None
        self.loaded: _Load | None = None
        self.profiling = False
        self.heat_sends = Throttle(HEAT_INTERVAL_S)
        self.progress_sent = -1.0
        self.alive_checked: set[str] = set()  # workers whose connections still need keepalive

    def send(self, event: object) -> None:
        with self.send_lock:
            self.conn.send(event)

    def read(self) -> None:
        """The reader thread: cancels take effect at once, the rest waits its turn."""
        while True:
            try:
                command = self.conn.recv()
            except (EOFError, OSError):  # the app is gone: stop too
                command = _Shutdown()
            if isinstance(command, _Cancel):
                with self.cancel_lock:
                    if command.request_id == self.current:
                        self.cancel.set()
                    else:
                        self.cancelled.add(command.request_id)
                continue
            if isinstance(command, _CancelTune):
                self.tune_cancel.set()
                continue
            if isinstance(command, _Shutdown):
                self.cancel.set()
                self.tune_cancel.set()
                self.closing.set()
            self.commands.put(command)
            if isinstance(command, _Shutdown):
                return

    def run(self) -> None:
        threading.Thread(target=self.read, name="host-commands", daemon=True).start()
        while True:
            command = self.commands.get()
            if isinstance(command, _Shutdown):
                break
            try:
                self.handle(command)
            except (OSError, EOFError):  # the app went away mid-send
                break
        self.free()

    def handle(self, command: object) -> None:
        if isinstance(command, _Load):
            self.load(command)
        elif isinstance(command, _Generate):
            self.generate(command)
        elif isinstance(command, _Unload):
            self.free()
            self.send(ModelUnloaded())
        elif isinstance(command, _SetProfiling):
            self.set_profiling(command.on)
        elif isinstance(command, _Tune):
            self.tune()

    # -- loading ---------------------------------------------------------------------------

    def load(self, command: _Load) -> None:
        from engine.session import LoadSettings
        from engine.tuner import Tuning, open_planned

        self.free()
        self.send(LoadStarted(command.path))
        self.progress_sent = -1.0
        try:
            remotes, left_out = self.connect(command.workers)
            self.alive_checked = {r.endpoint for r in remotes}  # see on_progress
            session, choice = open_planned(
                command.path,
                LoadSettings(n_ctx=command.n_ctx),
                on_progress=self.on_progress,
                remotes=remotes,
                ram_limit=command.ram_limit,
            )
        except Exception as exc:
            log.warning("loading %s failed", command.path, exc_info=not _expected(exc))
            self.send(LoadFailed(user_message(exc)))
            return
        self.session, self.loaded = session, command
        self.keep_workers_alive()
        if self.profiling:
            self.start_profiling()
        from engine.heat import model_key
        from engine.session import default_threads, memory_snapshot

        info, placement = session.info, session.placement
        plan = choice.plan if choice.plan.runs else None
        self.send(
            ModelLoaded(
                LoadedModel(
                    path=command.path,
                    name=info.name,
                    architecture=info.architecture,
                    file_type=info.file_type,
                    n_layers=info.n_layers,
                    n_experts=info.n_experts,
                    n_experts_used=info.n_experts_used,
                    n_ctx=session.n_ctx,
                    n_threads=session.settings.n_threads or default_threads(),
                    reply_format=session.reply_format,
                    placement=placement.label,
                    gpu_expert_layers=tuple(placement.gpu_expert_layers),
                    partial_expert_layer=placement.partial_expert_layer,
                    partial_gpu_share=placement.partial_gpu_share,
                    device_bytes=session.load_report.device_totals(),
                    rss_bytes=memory_snapshot()[0],
                    predicted_generation_tokens_per_s=plan.decode_tokens_per_s if plan else None,
                    predicted_prompt_tokens_per_s=plan.prompt_tokens_per_s if plan else None,
                    tuned=choice.tuned,
                    tuning=Tuning.load(model_key(session.path), choice.machine_key),
                    template_options=template_options_supported(info.chat_template),
                    sampling_defaults=info.sampling,
                    planned_bytes={d.device: d.total for d in choice.plan.devices},
                    workers=choice.plan.workers,
                    link_ms_per_token=choice.plan.link_s_per_token * 1000,
                    notes=left_out + choice.plan.notes,
                    hot_experts=session.hot_experts,
                    hot_share=choice.plan.hot_share if session.hot_experts else None,
                    splits_experts=choice.splits_experts,
                    heat_ordered=info.heat_ordered,
                )
            )
        )

    def connect(self, workers: tuple[str, ...]) -> tuple[tuple[RemoteDevice, ...], tuple[str, ...]]:
        """Register the workers asked for (once per process: the engine keeps them)."""
        if not workers:
            return (), ()
        from engine.rpc import connect

        return connect(workers)

    def keep_workers_alive(self) -> None:
        """Keepalive on the engine's connections to the workers in use, once they exist
        (the weights' buffers hold them), so that one whose computer vanishes mid-reply or
        mid-load ends this process within seconds instead of hanging it."""
        from engine.rpc import keep_alive

        if self.alive_checked and keep_alive(sorted(self.alive_checked)) >= len(self.alive_checked):
            self.alive_checked = set()

    def on_progress(self, fraction: float) -> bool:
        if fraction - self.progress_sent >= 0.01 or fraction >= 1.0:
            self.progress_sent = fraction
            self.keep_workers_alive()  # at most once a percent: it resolves and lists sockets
            self.send(LoadProgressed(fraction))
        return not self.closing.is_set()

    def free(self) -> None:
        if self.session is not None:
            self.save_heat()
            self.session.close()
            self.session = None

    # -- replies ---------------------------------------------------------------------------

    def generate(self, command: _Generate) -> None:
        request_id, request = command.request_id, command.request
        with self.cancel_lock:
            self.current = request_id
            self.cancel.clear()
            if request_id in self.cancelled:
                self.cancelled.discard(request_id)
                self.cancel.set()
        try:
            self._generate(request_id, request)
        finally:
            with self.cancel_lock:
                self.current = None

    def _generate(self, request_id: int, request: Request) -> None:
        session = self.session
        if session is None:
            self.send(ReplyFailed(request_id, "No model is loaded. Open a model first."))
            return
        self.send(ReplyStarted(request_id))
        self.heat_sends.reset()  # the heat map moves with the reply's first piece
        pending: list[Piece] = []
        flushes = Throttle(FLUSH_INTERVAL_S)  # the first piece goes out at once
        try:
            if isinstance(request, ChatRequest):
                messages = [m.as_message() for m in request.messages]
                pieces = session.stream(
                    messages, request.sampling, self.cancel, request.options, request.resume
                )
            else:
                pieces = session.complete(request.prompt, request.sampling, self.cancel)
            for piece in pieces:
                pending.append(piece)
                if flushes.ready():
                    self.flush(request_id, pending)
            self.flush(request_id, pending)
        except Exception as exc:
            log.warning("reply failed", exc_info=not _expected(exc))
            self.flush(request_id, pending)  # what was generated is kept
            self.send(ReplyFailed(request_id, user_message(exc)))
            return
        if session.heat is not None:  # the panel is current by the time the reply is done
            self.save_heat()  # a crash later loses no counts of this reply
            self.emit_heat()
        stats = replace(session.last_stats)
        self.send(ReplyFinished(request_id, stats, profiling=session.heat is not None))

    def flush(self, request_id: int, pending: list[Piece]) -> None:
        if not pending or self.session is None:
            return
        merged: list[Piece] = []  # one piece per run of the same channel, in order
        for piece in pending:
            if merged and merged[-1].channel is piece.channel:
                merged[-1] = Piece(merged[-1].text + piece.text, piece.channel)
            else:
                merged.append(piece)
        pending.clear()
        stats = self.session.last_stats
        self.send(
            ReplyPieces(
                request_id,
                tuple(merged),
                stats.generated_tokens,
                stats.generation_tokens_per_s,
                stats.time_to_first_token,
            )
        )
        self.emit_heat(force=False)

    # -- heat and tuning -------------------------------------------------------------------

    def set_profiling(self, on: bool) -> None:
        self.profiling = on
        session = self.session
        if session is None:
            return
        if on:
            self.start_profiling()
        elif session.heat is not None:
            self.save_heat()
            session.set_heat(None)

    def start_profiling(self) -> None:
        from engine.heat import profile_for

        session = self.session
        if session is None or not session.info.is_moe or session.heat is not None:
            return
        info = session.info
        try:
            session.set_heat(
                profile_for(session.path, info.n_layers, info.n_experts, info.n_experts_used)
            )
        except (OSError, MoeChatError) as exc:  # the file went away, or no context fits
            log.warning("could not start counting expert routing: %s", exc)
            return
        self.emit_heat()

    def save_heat(self) -> None:
        """Keep the counts on disk; a full disk costs the file, never the reply."""
        session = self.session
        if session is None or session.heat is None:
            return
        try:
            session.heat.save()
        except (OSError, MoeChatError) as exc:
            log.warning("could not save the expert heat of %s: %s", session.path, exc)

    def emit_heat(self, force: bool = True) -> None:
        heat = self.session.heat if self.session is not None else None
        if heat is None or not self.heat_sends.ready(force):
            return
        self.send(HeatUpdated(heat.copy()))

    def tune(self) -> None:
        from engine.tuner import TuningCancelled
        from engine.tuner import tune as measure

        loaded, session = self.loaded, self.session
        if loaded is None or session is None:
            self.send(TuneFailed("No model is loaded, so there is nothing to tune."))
            return
        name = session.info.name
        self.tune_cancel.clear()
        self.free()
        self.send(ModelUnloaded())
        self.send(TuneStarted(name))
        result = None
        try:
            result = measure(
                loaded.path,
                loaded.n_ctx,
                on_progress=lambda f, m: self.send(TuneProgressed(f, m)),
                cancel=self.tune_cancel,
            )
        except TuningCancelled:
            pass
        except Exception as exc:
            log.warning("tuning %s failed", loaded.path, exc_info=not _expected(exc))
            self.send(TuneFailed(f"Tuning stopped: {user_message(exc)}"))
        self.send(TuneFinished(result))
        if not self.closing.is_set():
            self.load(loaded)


def _lost_workers(workers: tuple[str, ...]) -> tuple[str, ...]:
    """The workers that no longer answer (after the engine stopped: one may have been why)."""
    from engine.rpc import WorkerError, hello, parse_endpoint

    lost = []
    for text in workers:
        try:
            hello(parse_endpoint(text), timeout=2.0)
        except WorkerError:
            lost.append(text)
    return tuple(lost)


def _expected(exc: BaseException) -> bool:
    return isinstance(exc, MoeChatError)


def _child_main(address: str) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    authkey = bytes.fromhex(os.environ.pop(KEY_ENV))
    conn = Client(address, authkey=authkey)
    _Child(conn).run()
    conn.close()
    return 0


if __name__ == "__main__":
    # Run the module's own copy, not __main__'s: messages pickle as engine.host classes.
    from engine.host import _child_main as main

    sys.exit(main(sys.argv[1]))
