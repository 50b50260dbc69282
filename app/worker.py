"""The window's side of the model host: host events in, Qt signals out, on the GUI thread."""

from __future__ import annotations

import logging

from PySide6.QtCore import QObject, Signal

from engine.chat_format import Channel
from engine.errors import MoeChatError
from engine.host import (
    ChatRequest,
    EngineCrashed,
    HeatUpdated,
    HostEvent,
    LoadFailed,
    LoadProgressed,
    LoadStarted,
    ModelHost,
    ModelLoaded,
    ModelUnloaded,
    QueueChanged,
    ReplyEvent,
    ReplyFailed,
    ReplyFinished,
    ReplyPieces,
    Ticket,
    TuneFailed,
    TuneFinished,
    TuneProgressed,
    TuneStarted,
)

log = logging.getLogger(__name__)
WINDOW_CLIENT = "window"  # how the host's queue names the chat window's requests


class HostAdapter(QObject):
    """Turns the host's events (its reader thread) into signals (queued to the GUI thread).

    Every call returns at once: the host only sends a message to the engine's process.
    """

    load_started = Signal(str)  # path
    load_progressed = Signal(float)
    model_loaded = Signal(object)  # LoadedModel
    load_failed = Signal(str)
    model_unloaded = Signal()
    token_received = Signal(str)  # answer text
    reasoning_received = Signal(str)  # reasoning text, apart from the answer
    live_stats = Signal(int, float, float)  # tokens so far, tokens/s, time to first token (s)
    reply_finished = Signal(object, bool)  # Stats, whether routing was being counted
    reply_failed = Signal(str, bool)  # message, whether the engine crashed
    engine_crashed = Signal(object)  # EngineCrashed
    queue_changed = Signal(object)  # QueueChanged
    heat_updated = Signal(object)  # a HeatProfile copy, while profiling
    tune_started = Signal(str)  # the model's name
    tune_progressed = Signal(float, str)  # 0..1, what is being measured
    tune_finished = Signal(object)  # the Tuning, or None when cancelled; the model reloads next
    tune_failed = Signal(str)

    def __init__(self, host: ModelHost | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.host = host or ModelHost()
        self._ticket: Ticket | None = None
        self.host.add_listener(self._on_host_event)

    # -- calls -----------------------------------------------------------------------------

    def load(
        self, path: str, n_ctx: int, workers: tuple[str, ...] = (), ram_limit: int | None = None
    ) -> None:
        try:
            self.host.load(path, n_ctx, workers, ram_limit)
        except MoeChatError as exc:
            self.load_failed.emit(str(exc))

    def generate(self, request: ChatRequest) -> None:
        try:
            self._ticket = self.host.submit(request, WINDOW_CLIENT, self._on_reply_event)
        except MoeChatError as exc:
            self.reply_failed.emit(str(exc), False)

    def stop(self) -> None:
        """Stop the window's reply: a waiting one never starts, a running one ends within a
        token."""
        if self._ticket is not None:
            self._ticket.cancel()

    def set_profiling(self, on: bool) -> None:
        self.host.set_profiling(on)

    def tune(self) -> None:
        try:
            self.host.tune()
        except MoeChatError as exc:
            self.tune_failed.emit(str(exc))

    def cancel_tune(self) -> None:
        self.host.cancel_tune()

    def close(self) -> None:
        self.host.remove_listener(self._on_host_event)
        self.host.close()

    # -- events (on the host's reader thread) ----------------------------------------------

    def _on_reply_event(self, event: ReplyEvent) -> None:
        if isinstance(event, ReplyPieces):
            for piece in event.pieces:
                if piece.channel is Channel.REASONING:
                    self.reasoning_received.emit(piece.text)
                else:
                    self.token_received.emit(piece.text)
            self.live_stats.emit(
                event.generated_tokens, event.tokens_per_s, event.time_to_first_token
            )
        elif isinstance(event, ReplyFinished):
            self.reply_finished.emit(event.stats, event.profiling)
        elif isinstance(event, ReplyFailed):
            self.reply_failed.emit(event.message, event.crashed)

    def _on_host_event(self, event: HostEvent) -> None:
        if isinstance(event, LoadStarted):
            self.load_started.emit(event.path)
        elif isinstance(event, LoadProgressed):
            self.load_progressed.emit(event.fraction)
        elif isinstance(event, ModelLoaded):
            self.model_loaded.emit(event.model)
        elif isinstance(event, LoadFailed):
            self.load_failed.emit(event.message)
        elif isinstance(event, ModelUnloaded):
            self.model_unloaded.emit()
        elif isinstance(event, HeatUpdated):
            self.heat_updated.emit(event.profile)
        elif isinstance(event, TuneStarted):
            self.tune_started.emit(event.name)
        elif isinstance(event, TuneProgressed):
            self.tune_progressed.emit(event.fraction, event.message)
        elif isinstance(event, TuneFinished):
            self.tune_finished.emit(event.tuning)
        elif isinstance(event, TuneFailed):
            self.tune_failed.emit(event.message)
        elif isinstance(event, EngineCrashed):
            self.engine_crashed.emit(event)
        elif isinstance(event, QueueChanged):
            self.queue_changed.emit(event)
