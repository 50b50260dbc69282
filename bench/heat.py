"""Benchmark: what routing capture (the heat profiler) costs in tokens/s.

Run from the repository root, after the README's test command installed everything:

    .venv/bin/python bench/heat.py [--rounds 5] [--tokens 96]

One model, one session: the MoE upcycled from SmolLM2-135M (30 MoE layers, 4 experts, 2
used) and the synthetic test MoE (4 layers, 8 experts). Each round generates the same
greedy reply with profiling off and on, alternating, so machine noise hits both; prints the
median prompt and generation tokens/s of each and the on/off ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.heat import HeatProfile
from engine.session import LoadSettings, SamplingSettings, Session
from engine.synthetic import build_synthetic_moe
from tests.helpers.models import build_upcycled_moe, smollm2_path

PROMPT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Write a long story about a lighthouse keeper and the sea."},
]


def measure(session: Session, heat: HeatProfile | None, tokens: int) -> tuple[float, float]:
    session.set_heat(heat)  # a fresh context either way: both start from an empty cache
    session.chat(PROMPT, SamplingSettings.greedy(tokens))
    stats = session.last_stats
    return stats.prompt_tokens_per_s, stats.generation_tokens_per_s


def bench(name: str, path: Path, rounds: int, tokens: int) -> None:
    with Session(path, settings=LoadSettings(n_ctx=1024)) as session:
        info = session.info
        heat = HeatProfile(info.n_layers, info.n_experts, info.n_experts_used)
        measure(session, None, 8)  # warm-up
        off: list[tuple[float, float]] = []
        on: list[tuple[float, float]] = []
        for _ in range(rounds):
            off.append(measure(session, None, tokens))
            on.append(measure(session, heat, tokens))
    prompt_off = statistics.median(p for p, _ in off)
    prompt_on = statistics.median(p for p, _ in on)
    gen_off = statistics.median(g for _, g in off)
    gen_on = statistics.median(g for _, g in on)
    spread = max(g for _, g in on) / min(g for _, g in on) - 1
    print(
        f"{name}: generation {gen_off:.1f} -> {gen_on:.1f} tok/s (on/off {gen_on / gen_off:.3f}, "
        f"spread on {spread:.0%}); prompt {prompt_off:.0f} -> {prompt_on:.0f} tok/s "
        f"(on/off {prompt_on / prompt_off:.3f}); {heat.tokens['generation']} tokens counted"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=96)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        upcycled = build_upcycled_moe(smollm2_path(), Path(tmp) / "smollm2-moe.gguf")
        synthetic = build_synthetic_moe(Path(tmp) / "synthetic.gguf")
        bench("SmolLM2 upcycled MoE (30 layers x 4 experts)", upcycled, args.rounds, args.tokens)
        bench("synthetic MoE (4 layers x 8 experts)", synthetic, args.rounds, args.tokens)


if __name__ == "__main__":
    main()
