"""Benchmark: what another computer's link costs a token, on paper and on loopback.

Run from the repository root, after the README's test command installed everything:

    .venv/bin/python bench/link_cost.py [--rounds 5] [--tokens 64]

1. On paper, from the planner's link model (engine/planner.py): a visit to a block of layers
   on another computer costs a round trip plus the activations both ways (n_embd floats),
   and the "dense part over there, experts here" layout visits once per layer and brings the
   logits back. For the Qwen3-30B-A3B shape over 1 GbE and 2.5 GbE, and the predicted
   tokens/s of two example pairs of computers. Labelled: these are predictions.
2. On loopback (127.0.0.1 / 127.0.0.2): two real ``moe-chat worker`` processes on this same
   CPU. Their measured round trip and transfer rate, and the decode time per token of the
   upcycled SmolLM2 MoE split across this process and both workers against the same model
   on the CPU alone, alternating. Every device is this CPU, so the difference is the RPC
   path's own cost per token on loopback, not a speed anyone gets across two computers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.catalog import load_catalog
from engine.hardware import RemoteDevice
from engine.host import ChatMessage, ChatRequest, ModelHost, ReplyFinished
from engine.planner import (
    ACTIVATION_BYTES,
    ModelShape,
    Settings,
    plan,
    ram_for_layers,
    visit_seconds,
)
from engine.rpc import check_worker
from engine.session import SamplingSettings
from tests.helpers.machines import GIB, machine
from tests.helpers.models import build_upcycled_moe, smollm2_path
from tests.helpers.rpc_server import start_worker, stop_worker

LINKS = {  # name: (round trip s, bytes/s): typical switched LANs, assumed
    "1 GbE": (0.3e-3, 117e6),
    "2.5 GbE": (0.2e-3, 290e6),
}


def on_paper() -> None:
    entry = next(m for m in load_catalog() if m.id == "qwen3-30b-a3b")
    quant = next(q for q in entry.quants if q.quant == "Q4_K_M")
    shape = ModelShape.from_catalog(entry, quant)
    print(f"== on paper: {shape.name} {shape.quant}, n_embd {shape.n_embd}, "
          f"{shape.n_layers} layers, vocabulary {shape.n_vocab} ==")  # fmt: skip
    print("| link | one block elsewhere | two blocks | dense part elsewhere, experts here |")
    print("|---|---|---|---|")
    settings = Settings()
    for name, (rtt, rate) in LINKS.items():
        link = RemoteDevice("lan", 0, "CPU", "", "CPU", 0, 0, None, rtt, rate)
        visit = visit_seconds(link, shape, settings)
        dense = (shape.n_layers + 1) * visit + shape.n_vocab * ACTIVATION_BYTES / rate
        cells = f"{visit * 1e3:.2f} ms | {2 * visit * 1e3:.2f} ms | {dense * 1e3:.1f} ms"
        print(f"| {name} (round trip {rtt * 1e3:.1f} ms, {rate / 1e6:.0f} MB/s) | {cells} |")
    laptop = machine(16, 13, cores=8, ram_gbs=50)
    pairs = {
        "laptop 16 GB + desktop RTX 4090 (24 GB)": RemoteDevice(
            "192.168.1.20:50052", 0, "CUDA0", "NVIDIA GeForce RTX 4090", "GPU",
            23 * GIB, 24 * GIB, 1008e9),
        "laptop 16 GB + desktop 32 GB RAM (CPU)": RemoteDevice(
            "192.168.1.20:50052", 0, "CPU", "desktop CPU", "CPU", 28 * GIB, 32 * GIB, 60e9),
    }  # fmt: skip
    print("\n| computers | link | predicted decode tok/s | network ms/token | layout |")
    print("|---|---|---|---|---|")
    alone = plan(shape, laptop)
    speed = f"{alone.decode_tokens_per_s:.1f}" if alone.runs else "-"
    print(f"| laptop alone | - | {speed} | - | {alone.verdict.value} |")
    for label, device in pairs.items():
        for name, (rtt, rate) in LINKS.items():
            measured = replace(device, latency_s=rtt, transfer_bps=rate)
            result = plan(shape, replace(laptop, remotes=(measured,)))
            print(f"| {label} | {name} | {result.decode_tokens_per_s:.1f} | "
                  f"{result.link_s_per_token * 1e3:.2f} | {result.placement.label} |")  # fmt: skip


def on_loopback(rounds: int, tokens: int, worker_threads: int) -> None:
    print("\n== on loopback: two moe-chat workers on this CPU (127.0.0.1, 127.0.0.2) ==")
    with tempfile.TemporaryDirectory() as tmp:
        model = build_upcycled_moe(smollm2_path(), Path(tmp) / "smollm2-moe4.gguf")
        from engine.gguf_file import read_gguf

        shape = ModelShape.from_gguf(read_gguf(model))
        limit = ram_for_layers(shape, Settings(n_ctx=2048), shape.n_layers // 3)
        threads = ("--threads", str(worker_threads))
        workers = [start_worker("127.0.0.1", *threads), start_worker("127.0.0.2", *threads)]
        try:
            for worker in workers:
                report = check_worker(worker.endpoint)
                print(f"{worker.endpoint}: round trip {report.latency_s * 1e6:.0f} us, "
                      f"{report.upload_bps / 1e9:.2f} GB/s there, "
                      f"{report.download_bps / 1e9:.2f} GB/s back")  # fmt: skip
            endpoints = tuple(w.endpoint for w in workers)
            request = ChatRequest(
                (ChatMessage("user", "Write a long story about a lighthouse."),),
                SamplingSettings.greedy(tokens),
            )
            times: dict[str, list[float]] = {"alone": [], "split": []}
            with ModelHost() as alone, ModelHost() as split:
                alone.load(model, 2048)
                split.load(model, 2048, endpoints, limit)
                alone.wait_loaded(120)
                placed = split.wait_loaded(120)
                print(f"split: {placed.placement}")
                for _ in range(rounds):
                    for name, host in (("alone", alone), ("split", split)):
                        last = list(host.stream(request, "bench", timeout=300))[-1]
                        assert isinstance(last, ReplyFinished), last
                        times[name].append(1 / last.stats.generation_tokens_per_s)
                # Bytes per generated token in steady decode: a long reply less a short one
                # (the same prompt, so its cost cancels out).
                moved = []
                for n in (tokens, 2 * tokens):
                    before = _loopback_bytes()
                    long_request = replace(request, sampling=SamplingSettings.greedy(n))
                    last = list(split.stream(long_request, "bench", timeout=300))[-1]
                    assert isinstance(last, ReplyFinished), last
                    moved.append((_loopback_bytes() - before, last.stats.generated_tokens))
                (short, n_short), (long, n_long) = moved
                per_token = (long - short) / max(1, n_long - n_short)
            a, s = statistics.median(times["alone"]), statistics.median(times["split"])
            visited = len(placed.workers)
            print(f"decode per token, median of {rounds}: CPU alone {a * 1e3:.2f} ms, split "
                  f"across this process and the workers {s * 1e3:.2f} ms: the RPC path adds "
                  f"{(s - a) * 1e3:.2f} ms per token here ({visited} worker(s) visited per "
                  f"token; predicted link {placed.link_ms_per_token:.2f} ms); "
                  f"split/alone {s / a:.2f}, worker threads {worker_threads}")  # fmt: skip
            per_visit = (2 * shape.n_embd + 2048 // 2) * ACTIVATION_BYTES  # as visit_seconds
            print(f"bytes over loopback per generated token (a {2 * tokens}-token reply less a "
                  f"{tokens}-token one; IP and TCP headers included): {per_token:.0f}; the "
                  f"link model counts {per_visit} per visit")  # fmt: skip
        finally:
            for worker in workers:
                stop_worker(worker)


def _loopback_bytes() -> int:
    """Bytes received on the loopback interface so far (Linux: /proc/net/dev)."""
    for line in Path("/proc/net/dev").read_text().splitlines():
        name, _, counters = line.partition(":")
        if name.strip() == "lo":
            return int(counters.split()[0])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--worker-threads", type=int, default=2, help="each worker's threads")
    args = parser.parse_args()
    on_paper()
    on_loopback(args.rounds, args.tokens, args.worker_threads)


if __name__ == "__main__":
    main()
