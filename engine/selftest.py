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


def run(out: TextIO = sys.stdout) -> int:
    """Build the synthetic MoE, load it, generate a short reply and print the stats.

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
        from engine.session import SamplingSettings
        from engine.synthetic import build_synthetic_moe

        print(f"moe-chat {package_version()}, Python {platform.python_version()}", file=out)
        print(f"engine: {engine_build().describe()}", file=out)
        devices = list_devices()
        print(f"engine devices: {', '.join(f'{d.name} ({d.kind})' for d in devices)}", file=out)
        # The app probes hardware in a child process (`python -m engine.hardware`); in an
        # installed bundle that child is the bundle's own program, so check that it answers.
        if probe_engine() is None:
            print("self-test FAILED: the hardware probe child process did not answer", file=out)
            return 1
        print("hardware probe (child process): ok", file=out)
        with tempfile.TemporaryDirectory(prefix="moe-chat-selftest-") as tmp:
            path = build_synthetic_moe(Path(tmp) / "synthetic-moe.gguf")
            # The model runs where the app runs it: in the host's child process.
            with ModelHost() as host:
                host.load(path, 2048)
                info = host.wait_loaded(TIMEOUT_S)
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
        print(f"self-test passed in {time.perf_counter() - started:.2f} s", file=out)
        return 0
    except MoeChatError as exc:
        print(f"self-test FAILED: {exc}", file=out)
        return 1
    except Exception as exc:  # the point of a self-test is to report anything at all
        print(f"self-test FAILED: {type(exc).__name__}: {exc}", file=out)
        return 1
