"""The inference worker: owns the loaded Session on its own QThread, talks only through signals."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from PySide6.QtCore import QObject, Signal, Slot

from engine.chat_format import Channel, Piece, TemplateOptions
from engine.errors import MoeChatError
from engine.heat import model_key, profile_for
from engine.session import LoadSettings, SamplingSettings, Session, memory_snapshot
from engine.tuner import Tuning, TuningCancelled, tune

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 0.05
# The heat map needs no more. Every update costs the GUI thread time, and while profiling the
# engine calls into Python for each graph node, so GUI work competes with generation for the
# GIL (with both cores busy, 20 updates/s with the Experts panel open slowed replies a lot).
HEAT_INTERVAL_S = 0.5


def measured_memory(session: Session) -> dict[str, Any]:
    """Bytes per device the engine reported for this load, and the process RSS after it."""
    devices = session.load_report.device_totals()
    return {"devices": devices, "rss": memory_snapshot()[0], "n_ctx": session.n_ctx}


def describe_error(exc: BaseException) -> str:
    """The one sentence (plus what to do) a user sees for an error."""
    if isinstance(exc, MoeChatError):
        return str(exc)
    return f"Something unexpected went wrong: {type(exc).__name__}: {exc}"


class SessionWorker(QObject):
    """Loads, runs and frees one model. Move it to a QThread; call its slots by queued signal.

    ``cancel`` is a plain threading.Event the GUI may set at any time to stop a reply;
    ``closing`` aborts a load in progress (the window is going away).
    """

    load_started = Signal(str)  # path
    load_progressed = Signal(float)
    model_loaded = Signal(dict)  # summary of the loaded model
    load_failed = Signal(str)
    token_received = Signal(str)  # answer text
    reasoning_received = Signal(str)  # reasoning text, apart from the answer
    live_stats = Signal(int, float, float)  # tokens so far, tokens/s, time to first token (s)
    reply_finished = Signal(dict)  # Stats.to_dict()
    reply_failed = Signal(str)
    model_unloaded = Signal()
    heat_updated = Signal(object)  # a HeatProfile copy, while profiling
    tune_started = Signal(str)  # the model's name
    tune_progressed = Signal(float, str)  # 0..1, what is being measured
    tune_finished = Signal(object)  # the Tuning, or None when cancelled; the model reloads next
    tune_failed = Signal(str)

    def __init__(self) -> None:
        super().__init__()
        self.cancel = threading.Event()
        self.closing = threading.Event()
        self._session: Session | None = None
        self.tune_cancel = threading.Event()
        self._profiling = False
        self._heat_sent_at = 0.0
        self._loaded: tuple[str, int] | None = None  # what load() was last asked for

    @Slot(str, int)
    def load(self, path: str, n_ctx: int) -> None:
        self._free()
        self.load_started.emit(path)
        try:
            session = Session(
                path,
                "auto",
                LoadSettings(n_ctx=n_ctx),
                on_progress=self._on_session_progress,
            )
        except Exception as exc:
            log.warning("loading %s failed", path, exc_info=not isinstance(exc, MoeChatError))
            self.load_failed.emit(describe_error(exc))
            return
        self._session = session
        self._loaded = (path, n_ctx)
        info = session.info
        if self._profiling:
            self._start_profiling(session)
        choice = session.choice
        plan = choice.plan if choice is not None and choice.plan.runs else None
        tuning = Tuning.load(model_key(session.path), choice.machine_key) if choice else None
        self.model_loaded.emit(
            {
                "path": path,
                "name": info.name,
                "architecture": info.architecture,
                "file_type": info.file_type,
                "n_experts": info.n_experts,
                "n_experts_used": info.n_experts_used,
                "n_ctx": session.n_ctx,
                "placement": session.placement.label,
                "gpu_expert_layers": list(session.placement.gpu_expert_layers),
                "partial_expert_layer": (
                    [session.placement.partial_expert_layer, session.placement.partial_gpu_share]
                    if session.placement.partial_expert_layer is not None
                    else None
                ),
                "n_layers": info.n_layers,
                "measured": measured_memory(session),
                "predicted": {
                    "generation_tokens_per_s": plan.decode_tokens_per_s,
                    "prompt_tokens_per_s": plan.prompt_tokens_per_s,
                }
                if plan is not None
                else None,
                "tuned": bool(choice and choice.tuned),
                "tuning": tuning,
            }
        )

    def _on_session_progress(self, value: float) -> bool:
        self.load_progressed.emit(value)
        return not self.closing.is_set()

    @Slot(list, dict, dict)
    def generate(
        self, messages: list[dict[str, str]], sampling: dict[str, Any], options: dict[str, Any]
    ) -> None:
        session = self._session
        if session is None:
            self.reply_failed.emit("No model is loaded. Open a model first.")
            return
        settings = SamplingSettings(**sampling)
        template_options = TemplateOptions(**options)
        self._heat_sent_at = 0.0  # the heat map moves with the reply's first piece
        # Pieces are batched into one signal per FLUSH_INTERVAL_S: each wake-up of the GUI
        # thread steals a core from the engine's threads, which wait for each other.
        pending: list[Piece] = []
        last_flush = 0.0  # the first piece goes out at once: time to first token is visible
        try:
            for piece in session.stream(messages, settings, self.cancel, template_options):
                pending.append(piece)
                now = time.perf_counter()
                if now - last_flush >= FLUSH_INTERVAL_S:
                    last_flush = now
                    self._flush(pending, session)
            self._flush(pending, session)
        except Exception as exc:
            log.warning("reply failed", exc_info=not isinstance(exc, MoeChatError))
            self._flush(pending, session)  # what was generated is kept
            self.reply_failed.emit(describe_error(exc))
            return
        if session.heat is not None:  # the panel is current by the time the reply is done
            self._save_heat(session)  # a crash later loses no counts of this reply
            self._emit_heat(session)
        self.reply_finished.emit(
            {**session.last_stats.to_dict(), "profiling": session.heat is not None}
        )

    @Slot()
    def tune(self) -> None:
        """Measure the candidate splits of the loaded model, then load it with the fastest.

        The model is unloaded while tuning (one candidate in memory at a time) and loaded
        again afterwards, also when tuning is cancelled or fails.
        """
        if self._session is None or self._loaded is None:
            self.load_failed.emit("No model is loaded, so there is nothing to tune.")
            return
        path, n_ctx = self._loaded
        name = self._session.info.name
        self.tune_cancel.clear()
        self._free()
        self.tune_started.emit(name)

        result: Tuning | None = None
        try:
            result = tune(
                path, n_ctx, on_progress=self.tune_progressed.emit, cancel=self.tune_cancel
            )
        except TuningCancelled:
            pass
        except Exception as exc:
            log.warning("tuning %s failed", path, exc_info=not isinstance(exc, MoeChatError))
            self.tune_failed.emit(f"Tuning stopped: {describe_error(exc)}")
        self.tune_finished.emit(result)
        if not self.closing.is_set():
            self.load(path, n_ctx)

    @Slot(bool)
    def set_profiling(self, on: bool) -> None:
        """Count expert routing from now on (kept per model file), or stop counting."""
        self._profiling = on
        session = self._session
        if session is None:
            return
        if on:
            self._start_profiling(session)
        elif session.heat is not None:
            self._save_heat(session)
            session.set_heat(None)

    def _start_profiling(self, session: Session) -> None:
        info = session.info
        if info.n_experts < 2 or session.heat is not None:
            return
        try:
            session.set_heat(
                profile_for(session.path, info.n_layers, info.n_experts, info.n_experts_used)
            )
        except (OSError, MoeChatError) as exc:  # the file went away, or no context fits
            self.reply_failed.emit(describe_error(exc))
            return
        self._emit_heat(session)

    @staticmethod
    def _save_heat(session: Session) -> None:
        """Keep the counts on disk; a full disk costs the file, never the reply or the app."""
        if session.heat is None:
            return
        try:
            session.heat.save()
        except (OSError, MoeChatError) as exc:
            log.warning("could not save the expert heat of %s: %s", session.path, exc)

    def _emit_heat(self, session: Session, force: bool = True) -> None:
        heat = session.heat
        now = time.perf_counter()
        if heat is None or (not force and now - self._heat_sent_at < HEAT_INTERVAL_S):
            return
        self._heat_sent_at = now
        self.heat_updated.emit(heat.copy())  # the engine goes on counting into its own

    def _flush(self, pending: list[Piece], session: Session) -> None:
        if not pending:
            return
        start = 0  # one signal per run of pieces on the same channel, in order
        for end in range(1, len(pending) + 1):
            if end == len(pending) or pending[end].channel is not pending[start].channel:
                text = "".join(p.text for p in pending[start:end])
                if pending[start].channel is Channel.REASONING:
                    self.reasoning_received.emit(text)
                else:
                    self.token_received.emit(text)
                start = end
        pending.clear()
        stats = session.last_stats
        self.live_stats.emit(
            stats.generated_tokens, stats.generation_tokens_per_s, stats.time_to_first_token
        )
        self._emit_heat(session, force=False)

    @Slot()
    def unload(self) -> None:
        self._free()
        self.model_unloaded.emit()

    def _free(self) -> None:
        if self._session is not None:
            self._save_heat(self._session)
            self._session.close()
            self._session = None
