"""Benchmark: time to first token of a Regenerate, going on from the checkpoint vs computing
the whole prompt again, for the models whose context cannot simply be cut back.

Run from the repository root, after the README's test command installed everything:

    .venv/bin/python bench/follow_up.py [--rounds 5] [--prompt-chars 1500]

Test models of three families, scaled up from the test shapes (8 layers, 256 wide): gpt-oss
(sliding-window layers keep their window and a batch), Granite 4.0-H (Mamba-2 layers) and
LFM2 (short convolutions). Each round writes a reply (gpt-oss: 1,000 tokens, more than its
sliding-window cache holds; the others: 32), then times a Regenerate as the app runs it, then
writes the reply again, drops the context (``Session.forget``) and times the same Regenerate
computed from scratch, which is what the engine did for these models before checkpoints.
Prints the medians and their ratio, measured side by side in one run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.session import LoadSettings, SamplingSettings, Session
from engine.synthetic import TEST_DIMS, build_arch_model

REPLY_TOKENS = {"gpt-oss": 1000, "granitehybrid": 32, "lfm2moe": 32}


def regenerate(session: Session, conversation: list[dict[str, str]], reply: int, fresh: bool):
    session.chat(conversation, SamplingSettings.greedy(reply))
    if fresh:
        session.forget()
    session.chat(conversation, SamplingSettings.greedy(4))
    return session.last_stats


def bench(arch: str, folder: Path, rounds: int, prompt_chars: int) -> None:
    dims = replace(
        TEST_DIMS[arch], n_layers=8, n_embd=256, head_dim=64, expert_ffn=128, context_length=8192
    )
    path = build_arch_model(folder / f"{arch}.gguf", arch, dims)
    text = ("the lighthouse keeper watched the sea " * (prompt_chars // 38 + 1))[:prompt_chars]
    conversation = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": text},
    ]
    reply = REPLY_TOKENS[arch]
    with Session(path, settings=LoadSettings(n_ctx=4096)) as session:
        regenerate(session, conversation, 8, fresh=True)  # warm-up
        kept, scratch = [], []
        for _ in range(rounds):
            stats = regenerate(session, conversation, reply, fresh=False)
            assert stats.prompt_tokens_cached == stats.prompt_tokens - 1, stats
            kept.append(stats.time_to_first_token)
            stats = regenerate(session, conversation, reply, fresh=True)
            assert stats.prompt_tokens_cached == 0, stats
            scratch.append(stats.time_to_first_token)
    a, b = statistics.median(kept), statistics.median(scratch)
    print(
        f"{arch}: prompt {stats.prompt_tokens} tokens, first token after a Regenerate "
        f"{a * 1000:.1f} ms from the checkpoint vs {b * 1000:.1f} ms from scratch "
        f"({b / a:.1f}x faster)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prompt-chars", type=int, default=1500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for arch in REPLY_TOKENS:
            bench(arch, Path(folder), args.rounds, args.prompt_chars)


if __name__ == "__main__":
    main()
