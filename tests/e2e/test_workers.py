"""One model across this computer and two workers (127.0.0.1 and 127.0.0.2), on real weights.

The workers are the real ``moe-chat worker``; the model runs where the app runs it, in the
model host's child process, so a worker that dies takes only that process with it. The
upcycled SmolLM2 MoE must give the dense model's greedy reply under any placement.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.gguf_file import read_gguf
from engine.host import (
    ChatMessage,
    ChatRequest,
    EngineCrashed,
    ModelHost,
    ReplyFailed,
    ReplyFinished,
    ReplyPieces,
)
from engine.planner import ModelShape, Settings, block_compute_bytes, ram_for_layers
from engine.session import SamplingSettings, Session
from tests.helpers.rpc_server import Worker, silent_server, start_worker, stop_worker

QUESTION = (
    ChatMessage("system", "You are a helpful assistant."),
    ChatMessage("user", "What is the capital of France?"),
)
MIB = 2**20
N_CTX = 2048


@pytest.fixture(scope="module")
def cpu_reply(upcycled_moe: Path) -> str:
    """The oracle: the upcycled model on this computer's CPU alone."""
    with Session(upcycled_moe) as session:
        messages = [{"role": m.role, "content": m.content} for m in QUESTION]
        return session.chat(messages, SamplingSettings.greedy(48)).text


def _layer_share(model: Path) -> tuple[int, int]:
    """(This computer's RAM limit, what each worker lends) such that this computer holds at
    most 10 of the 30 layers and each worker 11: the model needs all three."""
    shape = ModelShape.from_gguf(read_gguf(model))
    settings = Settings(n_ctx=N_CTX)
    per_layer = shape.layer_bytes(0) + shape.kv_bytes(N_CTX) // shape.n_layers
    there = block_compute_bytes(shape, settings) + 11 * per_layer + MIB
    return ram_for_layers(shape, settings, 10), there


@pytest.fixture
def workers(upcycled_moe: Path) -> Iterator[tuple[list[Worker], int]]:
    here, there = _layer_share(upcycled_moe)
    lend = ("--memory", f"{there / 1e9:.6f}")
    started = [start_worker("127.0.0.1", *lend), start_worker("127.0.0.2", *lend)]
    try:
        yield started, here
    finally:
        for worker in started:
            stop_worker(worker)


def _reply(host: ModelHost, max_tokens: int = 48) -> tuple[str, object]:
    request = ChatRequest(QUESTION, SamplingSettings.greedy(max_tokens))
    events = list(host.stream(request, "test", timeout=120))
    text = "".join(p.text for e in events if isinstance(e, ReplyPieces) for p in e.pieces)
    return text, events[-1]


def test_a_model_split_across_this_computer_and_two_workers_replies_as_on_the_cpu(
    upcycled_moe: Path, cpu_reply: str, workers: tuple[list[Worker], int]
) -> None:
    started, here = workers
    endpoints = tuple(w.endpoint for w in started)
    with ModelHost() as host:
        host.load(upcycled_moe, N_CTX, workers=endpoints, ram_limit=here)
        model = host.wait_loaded(120)
        text, last = _reply(host)
    assert isinstance(last, ReplyFinished)
    assert text == cpu_reply
    assert model.workers == endpoints
    assert "layers:" in model.placement and model.link_ms_per_token > 0
    remote = {d: b for d, b in model.planned_bytes.items() if d.startswith("RPC")}
    assert set(remote) == {f"RPC0[{e}]" for e in endpoints}
    for device, planned in model.planned_bytes.items():
        measured = model.device_bytes.get(device, 0)
        # weights, KV cache and compute buffers: the plan's estimate of the last two is loose
        assert measured == pytest.approx(planned, rel=0.15, abs=8 * MIB), (device, model)
    assert sum(remote.values()) > read_gguf(upcycled_moe).tensor_bytes / 2


def test_a_worker_killed_mid_reply_ends_the_reply_with_a_message_and_keeps_it(
    upcycled_moe: Path, workers: tuple[list[Worker], int]
) -> None:
    started, here = workers
    victim = started[1]
    crashes: list[EngineCrashed] = []
    with ModelHost() as host:
        host.add_listener(lambda e: crashes.append(e) if isinstance(e, EngineCrashed) else None)
        host.load(upcycled_moe, N_CTX, tuple(w.endpoint for w in started), ram_limit=here)
        host.wait_loaded(120)
        request = ChatRequest(  # greedy, it runs to the limit: it cannot end before the kill
            (ChatMessage("user", "Write a long story about a lighthouse keeper and the sea."),),
            SamplingSettings.greedy(400),
        )
        pieces: list[str] = []
        failed: list[ReplyFailed] = []
        for event in host.stream(request, "test", timeout=120):
            if isinstance(event, ReplyPieces):
                pieces.extend(p.text for p in event.pieces)
                if len(pieces) >= 3 and victim.process.poll() is None:
                    victim.process.send_signal(signal.SIGKILL)
            elif isinstance(event, ReplyFailed):
                failed.append(event)
        deadline = time.monotonic() + 30
        while not crashes and time.monotonic() < deadline:
            time.sleep(0.05)
    assert failed and failed[0].crashed
    assert f"The computer at {victim.endpoint} stopped answering" in failed[0].message
    assert "reply so far is kept" in failed[0].message
    assert "".join(pieces).strip()  # what came before the crash reached the client
    (crash,) = crashes
    assert crash.lost_workers == (victim.endpoint,)
    assert crash.model_path == str(upcycled_moe)  # the app offers to load it here alone


def test_a_silent_or_missing_worker_is_left_out_of_the_load_with_a_note(
    upcycled_moe: Path,
) -> None:
    with silent_server("127.0.0.2") as silent, ModelHost() as host:
        started = time.monotonic()
        host.load(upcycled_moe, N_CTX, workers=(silent, "127.0.0.3:1"))
        model = host.wait_loaded(120)
        assert time.monotonic() - started < 60
        text, last = _reply(host, 8)
    assert isinstance(last, ReplyFinished) and text
    assert model.workers == ()
    notes = " ".join(model.notes)
    assert f"{silent} accepted the connection but did not answer" in notes
    assert "127.0.0.3:1 could not be reached" in notes


def test_the_self_test_with_a_worker_prints_the_bytes_placed_on_each_device(tmp_path: Path) -> None:
    worker = start_worker("127.0.0.2")
    try:
        result = subprocess.run(
            [sys.executable, "-m", "app", "--self-test", "--workers", worker.endpoint],
            env={**os.environ, "MOE_CHAT_HOME": str(tmp_path / "home")},
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        stop_worker(worker)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr[-2000:]
    assert f"worker {worker.endpoint}:" in out and "round trip" in out
    placed = re.findall(r"placed on (\S+): ([\d.]+) MiB \(planned ([\d.]+)\)", out)
    devices = {device for device, _, _ in placed}
    assert f"RPC0[{worker.endpoint}]" in devices and "CPU" in devices, out
    assert all(float(size) > 0 for _, size, _ in placed)
    assert "the network added" in out and "self-test passed" in out


def test_serve_with_an_unreachable_worker_says_so_and_serves_on_this_computer(
    synthetic_model: Path,
) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", str(synthetic_model), "--port", "0",
         "--ctx", "512", "--workers", "127.0.0.3:1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (lines and "/v1" in lines[-1]):
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
        process.terminate()
        process.communicate(timeout=60)
    finally:
        process.kill()
    text = "".join(lines)
    assert "Note: " in text and "127.0.0.3:1 could not be reached" in text, text
    assert "It was left out." in text and "OpenAI-compatible API at http://127.0.0.1:" in text
    assert process.returncode == 0
