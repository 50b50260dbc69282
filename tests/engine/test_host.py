"""engine/host.py: the model in a child process, one fair queue, cancels, and crashes."""

from __future__ import annotations

import dataclasses
import os
import queue
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from engine import host as host_module
from engine.errors import ModelLoadError
from engine.host import (
    ChatMessage,
    ChatRequest,
    CompletionRequest,
    EngineCrashed,
    HostBusy,
    HostEvent,
    HostState,
    HostUnavailable,
    ModelHost,
    ReplyEvent,
    ReplyFailed,
    ReplyFinished,
    ReplyPieces,
    ReplyStarted,
)
from engine.session import SamplingSettings, Session
from tests.helpers.models import aborting_model, copy_gguf

HELLO = (ChatMessage("user", "hello"),)
TIMEOUT_S = 60


@pytest.fixture
def host(synthetic_model: Path) -> Iterator[ModelHost]:
    with ModelHost() as started:
        started.load(synthetic_model, 512)
        started.wait_loaded(TIMEOUT_S)
        yield started


def text_of(events: list[ReplyEvent]) -> str:
    return "".join(p.text for e in events if isinstance(e, ReplyPieces) for p in e.pieces)


def test_a_reply_from_the_host_equals_the_same_reply_in_process(
    host: ModelHost, synthetic_model: Path
) -> None:
    sampling = SamplingSettings.greedy(24)
    events = list(host.stream(ChatRequest(HELLO, sampling), timeout=TIMEOUT_S))
    assert isinstance(events[0], ReplyStarted) and isinstance(events[-1], ReplyFinished)
    with Session(synthetic_model) as session:
        expected = session.chat([m.as_message() for m in HELLO], sampling).text
    assert text_of(events) == expected
    stats = events[-1].stats
    assert stats.generated_tokens == 24 and stats.stop_reason == "length"
    model = host.model
    assert model is not None and model.n_experts == 8 and model.model_id == "synthetic-moe"
    assert host.pid is not None and host.pid != os.getpid()


def test_a_completion_stops_before_its_stop_string(host: ModelHost) -> None:
    free = text_of(list(host.stream(CompletionRequest("user: hello", SamplingSettings.greedy(16)))))
    stop = free.strip()[3:5]
    request = CompletionRequest(
        "user: hello", dataclasses.replace(SamplingSettings.greedy(16), stop=(stop,))
    )
    events = list(host.stream(request, timeout=TIMEOUT_S))
    assert text_of(events) == free[: free.find(stop)]
    assert isinstance(events[-1], ReplyFinished) and events[-1].stats.stop_reason == "stop"


def test_clients_take_turns_and_a_waiting_request_can_be_cancelled(host: ModelHost) -> None:
    started: list[str] = []
    done: queue.Queue[tuple[str, ReplyEvent]] = queue.Queue()

    def on(name: str) -> object:
        def handle(event: ReplyEvent) -> None:
            if isinstance(event, ReplyStarted):
                started.append(name)
            if isinstance(event, (ReplyFinished, ReplyFailed)):
                done.put((name, event))

        return handle

    long = ChatRequest(HELLO, SamplingSettings.greedy(200))
    short = ChatRequest(HELLO, SamplingSettings.greedy(4))
    first = host.submit(long, "api", on("api 1"))  # runs at once; the rest wait behind it
    host.submit(short, "api", on("api 2"))
    host.submit(short, "api", on("api 3"))
    cancelled = host.submit(short, "window", on("window 0"))
    host.submit(short, "window", on("window 1"))
    waiting = host.queue_state()
    assert waiting.running is not None and waiting.running.client == "api"
    assert [r.client for r in waiting.waiting] == ["api", "api", "window", "window"]
    cancelled.cancel()
    first.cancel()
    results = dict(done.get(timeout=TIMEOUT_S) for _ in range(5))
    assert started == ["api 1", "window 1", "api 2", "api 3"]
    assert isinstance(results["window 0"], ReplyFailed)
    stopped = results["api 1"]
    assert isinstance(stopped, ReplyFinished) and stopped.stats.stop_reason == "cancelled"
    assert stopped.stats.generated_tokens < 200
    assert all(isinstance(results[n], ReplyFinished) for n in ("api 2", "api 3", "window 1"))
    assert host.queue_state().running is None and not host.queue_state().waiting


def test_a_full_queue_refuses_more_and_loses_nothing(host: ModelHost) -> None:
    host.max_waiting = 2
    finished: queue.Queue[ReplyEvent] = queue.Queue()

    def keep(event: ReplyEvent) -> None:
        if isinstance(event, (ReplyFinished, ReplyFailed)):
            finished.put(event)

    request = ChatRequest(HELLO, SamplingSettings.greedy(8))
    tickets = [host.submit(request, "api", keep) for _ in range(3)]  # one runs, two wait
    with pytest.raises(HostBusy, match="already waiting"):
        host.submit(request, "api", keep)
    results = [finished.get(timeout=TIMEOUT_S) for _ in tickets]
    assert all(isinstance(r, ReplyFinished) for r in results)


def test_a_killed_engine_costs_the_reply_and_the_host_loads_again(
    host: ModelHost, synthetic_model: Path
) -> None:
    crashes: queue.Queue[HostEvent] = queue.Queue()
    host.add_listener(lambda e: crashes.put(e) if isinstance(e, EngineCrashed) else None)
    pid = host.pid
    assert pid is not None
    events: list[ReplyEvent] = []
    for event in host.stream(ChatRequest(HELLO, SamplingSettings.greedy(2000)), timeout=30):
        events.append(event)
        if isinstance(event, ReplyPieces) and len(events) == 2:
            os.kill(pid, signal.SIGKILL)
    failed = events[-1]
    assert isinstance(failed, ReplyFailed) and failed.crashed
    assert "signal 9" in failed.message and "load the model again" in failed.message
    assert text_of(events)  # what came before the crash is the caller's to keep
    crash = crashes.get(timeout=TIMEOUT_S)
    assert isinstance(crash, EngineCrashed) and crash.model_path == str(synthetic_model)
    assert host.state is HostState.CRASHED and host.model is None
    with pytest.raises(HostUnavailable, match="signal 9"):
        host.submit(ChatRequest(HELLO), "api", lambda _e: None)

    host.load(synthetic_model, 512)
    assert host.wait_loaded(TIMEOUT_S).path == str(synthetic_model)
    assert host.pid not in (None, pid)
    again = list(host.stream(ChatRequest(HELLO, SamplingSettings.greedy(4)), timeout=TIMEOUT_S))
    assert isinstance(again[-1], ReplyFinished)


def test_a_damaged_file_fails_to_load_with_a_message_and_the_host_goes_on(
    host: ModelHost, synthetic_model: Path, tmp_path: Path
) -> None:
    broken = copy_gguf(synthetic_model, tmp_path / "broken.gguf")
    with broken.open("r+b") as f:
        f.truncate(broken.stat().st_size // 2)
    host.load(broken, 512)
    with pytest.raises(ModelLoadError, match="broken"):
        host.wait_loaded(TIMEOUT_S)
    assert host.state is HostState.EMPTY and host.pid is not None  # the same process
    host.load(synthetic_model, 512)
    host.wait_loaded(TIMEOUT_S)


def test_closing_the_host_ends_the_engine_process(synthetic_model: Path) -> None:
    host = ModelHost()
    host.load(synthetic_model, 512)
    host.wait_loaded(TIMEOUT_S)
    pid = host.pid
    assert pid is not None
    host.close()
    assert host.pid is None and host.state is HostState.CLOSED
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # gone, and reaped


def test_every_message_is_a_frozen_dataclass() -> None:
    messages = [
        obj
        for name, obj in vars(host_module).items()
        if isinstance(obj, type)
        and dataclasses.is_dataclass(obj)
        and obj.__module__ == host_module.__name__
        and name != "Ticket"  # the client's handle, never sent
    ]
    assert len(messages) > 25
    assert all(m.__dataclass_params__.frozen for m in messages)  # type: ignore[attr-defined]


def test_an_engine_process_that_cannot_start_fails_the_load_with_a_message(
    monkeypatch: pytest.MonkeyPatch, synthetic_model: Path
) -> None:
    monkeypatch.setattr(host_module.sys, "executable", shutil.which("false"))  # exits at once
    with ModelHost() as host:
        host.load(synthetic_model, 512)
        with pytest.raises(ModelLoadError, match="engine process did not start"):
            host.wait_loaded(TIMEOUT_S)
        assert host.state is HostState.EMPTY
        monkeypatch.undo()
        host.load(synthetic_model, 512)  # a working engine: a new process, and it loads
        assert host.wait_loaded(TIMEOUT_S).path == str(synthetic_model)


def test_a_native_abort_while_loading_costs_the_load_not_the_host(
    host: ModelHost, synthetic_model: Path, tmp_path: Path
) -> None:
    crashes: queue.Queue[HostEvent] = queue.Queue()
    host.add_listener(lambda e: crashes.put(e) if isinstance(e, EngineCrashed) else None)
    broken = aborting_model(synthetic_model, tmp_path / "aborts.gguf")
    host.load(broken, 512)
    with pytest.raises(ModelLoadError, match=r"stopped while loading aborts\.gguf") as raised:
        host.wait_loaded(TIMEOUT_S)
    assert "GGML_ASSERT(n_embd_head == n_rot) failed" in str(raised.value)
    assert "signal 6" in str(raised.value)  # SIGABRT: the engine ended its own process
    crash = crashes.get(timeout=TIMEOUT_S)
    assert (
        isinstance(crash, EngineCrashed) and crash.model_path is None
    )  # loading that file again would abort again
    host.load(synthetic_model, 512)
    host.wait_loaded(TIMEOUT_S)
    events = list(host.stream(ChatRequest(HELLO, SamplingSettings.greedy(4)), timeout=TIMEOUT_S))
    assert isinstance(events[-1], ReplyFinished)


def test_loading_right_after_the_engine_died_loads_and_fails_only_the_lost_reply(
    host: ModelHost, synthetic_model: Path
) -> None:
    """Whichever comes first, the new load or reading the old process's end."""
    events: queue.Queue[ReplyEvent] = queue.Queue()
    host.submit(ChatRequest(HELLO, SamplingSettings.greedy(5000)), "api", events.put)
    while not isinstance(events.get(timeout=TIMEOUT_S), ReplyPieces):
        pass
    pid = host.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)

    def alive() -> bool:  # dead means a zombie (not yet reaped by the host) or gone
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    while alive():
        time.sleep(0.001)
    host.load(synthetic_model, 512)
    assert host.wait_loaded(TIMEOUT_S).path == str(synthetic_model)
    last = events.get(timeout=TIMEOUT_S)
    while not isinstance(last, ReplyFailed):
        last = events.get(timeout=TIMEOUT_S)
    assert last.crashed
    again = list(host.stream(ChatRequest(HELLO, SamplingSettings.greedy(4)), timeout=TIMEOUT_S))
    assert isinstance(again[-1], ReplyFinished)
