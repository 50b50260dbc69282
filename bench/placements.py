"""Benchmark: one MoE model under several placements on this machine's GPU, side by side.

    .venv/bin/python bench/placements.py [--model PATH] [--tokens 64] [--rounds 3]

Without --model it writes a synthetic MoE (engine/synthetic.py) of about 1.6 GB in a temp
folder. For each placement it prints what the engine put on each device (from its own log),
prompt and generation tokens/s, and whether the greedy reply matches the CPU-only one. It
also runs our generation loop against a bare llama.cpp loop on the all-GPU placement, where
the per-token Python cost matters most. Needs an engine built with a GPU backend.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.generation import bare, ours
from engine.devices import compiled_backends, list_devices
from engine.gguf_file import read_gguf
from engine.hardware import detect
from engine.placement import Placement
from engine.planner import ModelShape, Settings, gpu_free_needed, plan
from engine.session import LoadSettings, SamplingSettings, Session
from engine.synthetic import SyntheticSpec, build_synthetic_moe

MIB = 2**20
QUESTION = [{"role": "user", "content": "hello world expert router token layer memory speed"}]


def measure(model: Path, placement: Placement, tokens: int, rounds: int) -> dict:
    session = Session(model, placement, LoadSettings(n_ctx=2048))
    replies, gen, prompt = [], [], []
    for _ in range(rounds):
        session.forget()
        reply = session.chat(QUESTION, SamplingSettings.greedy(tokens))
        replies.append(reply.text)
        gen.append(reply.stats.generation_tokens_per_s)
        prompt.append(reply.stats.prompt_tokens_per_s)
    buffers = session.load_report.model_buffers
    session.close()
    return {
        "text": replies[-1],
        "gen": statistics.median(gen),
        "prompt": statistics.median(prompt),
        "buffers": ", ".join(f"{name} {size / MIB:.0f} MiB" for name, size in buffers.items()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"backends: {', '.join(compiled_backends())}")
    devices = list_devices()
    for device in devices:
        memory = f", {device.memory_total / 2**30:.1f} GiB" if device.memory_total else ""
        print(f"device {device.name} ({device.kind}): {device.description}{memory}")
    gpu = next((d.name for d in devices if d.is_gpu), None)
    if gpu is None:
        sys.exit("no GPU device: build the engine with a GPU backend (README, GPU builds)")
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or build_synthetic_moe(
            Path(tmp) / "synthetic-1.6g.gguf",
            SyntheticSpec(
                n_layers=16,
                n_embd=1024,
                n_head=16,
                n_head_kv=4,
                head_dim=64,
                n_experts=32,
                n_experts_used=4,
                expert_ffn=512,
            ),
        )
        # The planner chooses each placement for a machine shaped to force it, and its
        # predictions are printed beside the measurements.
        machine = detect()
        shape = ModelShape.from_gguf(read_gguf(model))
        settings = Settings(n_ctx=2048)
        gpu_info = machine.usable_gpus[0]
        tight_free = gpu_free_needed(shape, settings, expert_share=0.0)
        scenarios = [
            ("CPU only", replace(machine, gpus=()), settings),
            ("all on the GPU", machine, settings),
            (
                "experts in RAM (mmap)",
                replace(machine, gpus=(replace(gpu_info, memory_free=tight_free),)),
                settings,
            ),
            (
                "experts in RAM (no mmap)",
                replace(machine, gpus=(replace(gpu_info, memory_free=tight_free),)),
                replace(settings, use_mmap=False),
            ),
        ]
        print(
            f"host RAM bandwidth {(machine.ram_bandwidth or 0) / 1e9:.0f} GB/s measured, "
            f"{machine.physical_cores} cores"
        )
        baseline = None
        for name, profile, plan_settings in scenarios:
            planned = plan(shape, profile, plan_settings)
            result = measure(model, planned.placement, args.tokens, args.rounds)
            baseline = baseline or result["text"]
            same = "same reply" if result["text"] == baseline else "reply differs from CPU"
            print(
                f"{name:26s} ({planned.placement.label})\n"
                f"    prompt {result['prompt']:8.1f} tok/s (predicted "
                f"{planned.prompt_tokens_per_s:8.1f})  gen {result['gen']:7.1f} tok/s "
                f"(predicted {planned.decode_tokens_per_s:7.1f})  {same}\n"
                f"    {result['buffers']}"
            )
        session = Session(model, Placement.all_on_gpu(), LoadSettings(n_ctx=2048))
        ll, weights, _vocab = session.native
        params = ll.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch = 2048, 512, 512
        params.no_perf = True
        ctx = ll.llama_init_from_model(weights, params)
        rates_ours, rates_bare = [], []
        for _ in range(args.rounds + 2):
            rates_ours.append(ours(session, args.tokens * 4)[0])
            rates_bare.append(bare(session, ctx, args.tokens * 4)[0])
        ll.llama_free(ctx)
        session.close()
        o, b = statistics.median(rates_ours[1:]), statistics.median(rates_bare[1:])
        print(f"all on {gpu}: ours {o:.1f} tok/s, bare loop {b:.1f} tok/s, ratio {o / b:.3f}")


if __name__ == "__main__":
    main()
