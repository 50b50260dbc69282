"""``moe-chat --self-test``: prove, without a window or a download, that the engine chats."""

from __future__ import annotations

import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import TextIO

from engine.errors import MoeChatError

TIMEOUT_S = 120


def _share_here(path: Path, n_workers: int) -> int:
    """A RAM limit that leaves this computer an even share of the layers."""
    from engine.gguf_file import read_gguf
    from engine.planner import ModelShape, Settings, ram_for_layers

    shape = ModelShape.from_gguf(read_gguf(path))
    return ram_for_layers(shape, Settings(n_ctx=2048), shape.n_layers // (n_workers + 1))


def _check_split(path: Path) -> str:
    """With the hot-experts engine: load ``path`` with half of each layer's experts split
    into hot tensors (both halves on the CPU: the split's own graph path runs) and check
    that the greedy reply equals the unsplit one. A sentence; raises MoeChatError if not."""
    from engine.gguf_file import read_gguf
    from engine.placement import Placement
    from engine.session import SamplingSettings, Session

    info = read_gguf(path)
    half = (info.n_experts // 2,) * info.n_layers
    question = [{"role": "user", "content": "hello"}]
    replies = []
    for hot in ((), half):
        with Session(path, Placement(hot_experts=hot)) as session:
            replies.append(session.chat(question, SamplingSettings.greedy(16)).text)
            if session.hot_experts != hot:
                raise MoeChatError(f"the engine split {session.hot_experts}, not {hot}")
    if replies[0] != replies[1]:
        raise MoeChatError(f"the split reply {replies[1]!r} differs from {replies[0]!r}")
    return (
        f"hot experts: {half[0]} of {info.n_experts} experts per layer split off, "
        "same reply as unsplit"
    )


def run(out: TextIO = sys.stdout, workers: tuple[str, ...] = ()) -> int:
    """Build the synthetic MoE, load it, generate a short reply and print the stats.

    With ``workers`` (``host:port`` of ``moe-chat worker``), this computer keeps a share of
    the layers and the workers the rest, and the bytes placed on each device are printed.

    Returns:
        0 on success, 1 with the reason printed on failure.
    """
    started = time.perf_counter()
    try:
        from engine import package_version
        from engine.devices import engine_build, list_devices
        from engine.hardware import probe_engine
        from engine.host import (
            ChatMessage,
            ChatRequest,
            ModelHost,
            ReplyFailed,
            ReplyFinished,
            ReplyPieces,
        )
        from engine.rpc import check_worker
        from engine.session import SamplingSettings
        from engine.synthetic import build_synthetic_moe

        print(f"moe-chat {package_version()}, Python {platform.python_version()}", file=out)
        build = engine_build()
        print(f"engine: {build.describe()}", file=out)
        devices = list_devices()
        print(f"engine devices: {', '.join(f'{d.name} ({d.kind})' for d in devices)}", file=out)
        # The app probes hardware in a child process (`python -m engine.hardware`); in an
        # installed bundle that child is the bundle's own program, so check that it answers.
        if probe_engine() is None:
            print("self-test FAILED: the hardware probe child process did not answer", file=out)
            return 1
        print("hardware probe (child process): ok", file=out)
        with tempfile.TemporaryDirectory(prefix="moe-chat-selftest-") as tmp:
            for worker in workers:  # each one answers, with its devices and its link
                print(f"worker {worker}:\n  " + check_worker(worker).summary().replace(
                    "\n", "\n  "), file=out)  # fmt: skip
            path = build_synthetic_moe(Path(tmp) / "synthetic-moe.gguf")
            if build.hot_experts:
                print(_check_split(path), file=out)
            limit = _share_here(path, len(workers)) if workers else None
            # The model runs where the app runs it: in the host's child process.
            with ModelHost() as host:
                host.load(path, 2048, workers, limit)
                info = host.wait_loaded(TIMEOUT_S)
                if workers:
                    for note in info.notes:
                        print(f"note: {note}", file=out)
                    for device, size in sorted(info.device_bytes.items()):
                        print(f"placed on {device}: {size / 2**20:.1f} MiB "
                              f"(planned {info.planned_bytes.get(device, 0) / 2**20:.1f})",
                              file=out)  # fmt: skip
                    for worker in workers:
                        if worker not in info.workers:
                            print(f"placed on {worker}: nothing (not needed for this model)",
                                  file=out)  # fmt: skip
                    if not info.workers:
                        print("self-test FAILED: no layer went to another computer", file=out)
                        return 1
                print(
                    f"model: {info.name}, {info.architecture}, {info.n_layers} layers, "
                    f"{info.n_experts} experts ({info.n_experts_used} used), in process "
                    f"{host.pid} (the model host)",
                    file=out,
                )
                request = ChatRequest(
                    (ChatMessage("user", "hello"),), SamplingSettings(seed=7, max_tokens=24)
                )
                events = list(host.stream(request, "self-test", timeout=TIMEOUT_S))
        last = events[-1]
        if isinstance(last, ReplyFailed):
            print(f"self-test FAILED: {last.message}", file=out)
            return 1
        assert isinstance(last, ReplyFinished)
        stats = last.stats
        text = "".join(p.text for e in events if isinstance(e, ReplyPieces) for p in e.pieces)
        if stats.generated_tokens == 0 or not text.strip():
            print("self-test FAILED: the model produced no reply", file=out)
            return 1
        print(f"reply: {text.strip()!r}", file=out)
        print(
            f"stats: {stats.generated_tokens} tokens, "
            f"{stats.generation_tokens_per_s:.1f} tokens/s, "
            f"prompt {stats.prompt_tokens_per_s:.1f} tokens/s, "
            f"first token after {stats.time_to_first_token * 1000:.1f} ms, "
            f"RSS {stats.rss_bytes / 2**20:.0f} MiB",
            file=out,
        )
        if workers:
            print(f"the network added {info.link_ms_per_token:.2f} ms per token (predicted)",
                  file=out)  # fmt: skip
        print(f"self-test passed in {time.perf_counter() - started:.2f} s", file=out)
        return 0
    except MoeChatError as exc:
        print(f"self-test FAILED: {exc}", file=out)
        return 1
    except Exception as exc:  # the point of a self-test is to report anything at all
        print(f"self-test FAILED: {type(exc).__name__}: {exc}", file=out)
        return 1
