"""Benchmark: one big MoE under five placements at the same VRAM budget, measured alternately.

    .venv/bin/python bench/placement.py [--model PATH] [--budget-gb 8 16] [--rounds 3]
    .venv/bin/python bench/placement.py --small --rpc      # the script itself, without a GPU

For each budget it measures, round after round in the same order so drift hits all alike:
  (a) CPU only;
  (b) plain layer offload: as many whole layers as fit, memory-mapped (llama.cpp ``-ngl``);
  (c) always-read tensors and KV on the GPU, every expert in RAM (``--n-cpu-moe`` all);
  (d) the planner's read-density placement, load mode chosen by the planner;
  (e) the tuner's choice (``engine.tuner.tune`` run once for that budget first);
  (f) each layer's hottest experts in VRAM (the hot-experts engine, packaging/HOT-EXPERTS.md):
      heat counted on a set of chat prompts, the file reordered by it, hot sets planned from
      it (``engine.planner.plan_hot_experts``), measured on the benchmark's own text, which
      the heat never saw; the share of that text's expert reads the hot sets served is printed.
      Needs --skew (routing that prefers some experts, as real models' does) and the variant:
      LLAMA_CPP_LIB_PATH=build/engine/cuda-hot/lib (packaging/build_engine.sh cuda hot).
Prompt (pp512) and generation (tg128) tokens/s are llama-bench's measures
(``Session.benchmark``); it prints median, min-max over the rounds, and ratios to (b).

Without --model it writes a synthetic model shaped like Qwen3-30B-A3B (48 layers, n_embd
2048, 32/4 heads x 128, 128 experts, top-8, expert FFN 768, vocab 151,936, all Q4_0,
~16 GiB) with zero-mean weights, so the router spreads tokens over all experts (a biased
generator collapses routing onto a few and inflates every hybrid number, TECH-NOTES). The
script counts the experts a 512-token prompt touches and prints it, to show that it does.
``--skew S`` scales each layer's router row of expert e by 1 + S x u (u uniform in 0..1, drawn
per layer), so the experts with larger rows are picked more often, token by token.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.devices import add_rpc_server, compiled_backends, list_devices
from engine.gguf_file import GGUFInfo, read_gguf
from engine.hardware import GPUInfo, MachineProfile, detect, engine_view
from engine.heat import HeatProfile, hot_read_share, model_key
from engine.native import hot_experts_counter
from engine.placement import Placement
from engine.planner import (
    GPU_USABLE_SHARE,
    ModelShape,
    Plan,
    Settings,
    compute_buffer_bytes,
    plan,
    plan_hot_experts,
)
from engine.reorder import reorder_by_heat
from engine.session import LoadSettings, SamplingSettings, Session
from engine.synthetic import SyntheticSpec, arch_writer
from engine.tuner import choose, tune

GB = 1e9
N_CTX = 4096


# Qwen3-30B-A3B's shape (its vocabulary is QWEN_VOCAB tokens).
QWEN3_30B = SyntheticSpec(
    n_layers=48, n_embd=2048, n_head=32, n_head_kv=4, head_dim=128, n_experts=128,
    n_experts_used=8, expert_ffn=768, context_length=32768,
)  # fmt: skip
QWEN_VOCAB = 151_936
SMALL = replace(QWEN3_30B, n_layers=8, n_embd=512, n_head=8, head_dim=64, n_experts=32)
SMALL_VOCAB = 32_000


def write_q4_0_moe(
    path: Path, shape: SyntheticSpec, n_vocab: int, seed: int = 7, skew: float = 0.0
) -> Path:
    """A qwen3moe GGUF with Q4_0 weights written block by block (no float copy in memory).

    Q4_0 stores 32 weights as an f16 scale d and 16 bytes of 4-bit q; the weight is
    (q - 8) x d. Drawing q from 1..15 makes every weight's mean 0.
    """
    from gguf import GGMLQuantizationType, LlamaFileType

    rng = np.random.default_rng(seed)
    q4 = GGMLQuantizationType.Q4_0
    pool_blocks = 1 << 21  # 2 Mi random blocks (36 MiB) reused at random offsets
    low = rng.integers(1, 16, size=(pool_blocks, 16), dtype=np.uint8)
    high = rng.integers(1, 16, size=(pool_blocks, 16), dtype=np.uint8)
    pool = low | (high << 4)

    # (name, kind, count, rows, cols, std): kind "q4" (Q4_0), "ones" or "normal" (F32)
    e, d, f, n = shape.n_embd, shape.head_dim, shape.expert_ffn, shape.n_experts
    specs: list[tuple[str, str, int, int, int, float]] = [
        ("token_embd.weight", "q4", 1, n_vocab, e, 1.0),
        ("output_norm.weight", "ones", 1, 1, e, 0),
        ("output.weight", "q4", 1, n_vocab, e, 0.02),
    ]
    for layer in range(shape.n_layers):
        p = f"blk.{layer}."
        specs += [
            (p + "attn_norm.weight", "ones", 1, 1, e, 0),
            (p + "attn_q.weight", "q4", 1, shape.n_head * d, e, 0.02),
            (p + "attn_k.weight", "q4", 1, shape.n_head_kv * d, e, 0.02),
            (p + "attn_v.weight", "q4", 1, shape.n_head_kv * d, e, 0.02),
            (p + "attn_output.weight", "q4", 1, e, shape.n_head * d, 1e-4),
            (p + "attn_q_norm.weight", "ones", 1, 1, d, 0),
            (p + "attn_k_norm.weight", "ones", 1, 1, d, 0),
            (p + "ffn_norm.weight", "ones", 1, 1, e, 0),
            (p + "ffn_gate_inp.weight", "normal", 1, n, e, 0.1),
            (p + "ffn_gate_exps.weight", "q4", n, f, e, 0.02),
            (p + "ffn_up_exps.weight", "q4", n, f, e, 0.02),
            (p + "ffn_down_exps.weight", "q4", n, e, f, 1e-4),
        ]

    def byte_shape(kind: str, count: int, rows: int, cols: int) -> tuple[int, ...]:
        dims = ((count,) if count > 1 else ()) + ((rows,) if rows > 1 else ())
        return dims + ((cols // 32 * 18,) if kind == "q4" else (cols,))

    def make(kind: str, count: int, rows: int, cols: int, std: float) -> np.ndarray:
        if kind == "ones":
            return np.ones(cols, dtype=np.float32)
        if kind == "normal":  # the router: rows scaled for --skew
            scale = 1 + skew * rng.random((rows, 1))
            return (rng.standard_normal((rows, cols)) * std * scale).astype(np.float32)
        blocks = count * rows * cols // 32
        index = (int(rng.integers(0, pool_blocks)) + np.arange(blocks)) % pool_blocks
        data = np.empty((blocks, 18), dtype=np.uint8)
        scale = np.full(1, std / 4.3, dtype=np.float16)  # (q - 8), q uniform in 1..15: std 4.3
        data[:, :2] = np.frombuffer(scale.tobytes(), np.uint8)
        data[:, 2:] = pool[index]
        return data.reshape(byte_shape(kind, count, rows, cols))

    writer, _tensors, _eos = arch_writer(
        path, "qwen3moe", replace(shape, n_vocab=n_vocab),
        "Synthetic Qwen3-30B-A3B-shaped MoE (benchmark)", tokens_of="plain",
    )  # fmt: skip
    writer.add_file_type(LlamaFileType.MOSTLY_Q4_0)
    for name, kind, count, rows, cols, _std in specs:  # the header lists every tensor first
        dims = byte_shape(kind, count, rows, cols)
        dtype = np.dtype(np.uint8 if kind == "q4" else np.float32)
        nbytes = int(np.prod(dims)) * dtype.itemsize
        writer.add_tensor_info(name, dims, dtype, nbytes, raw_dtype=q4 if kind == "q4" else None)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for _name, kind, count, rows, cols, std in specs:
        writer.write_tensor_data(make(kind, count, rows, cols, std))
    writer.close()
    return path


def layer_offload(info: GGUFInfo, budget: float) -> Placement:
    """llama.cpp's ``-ngl N``: the last N whole layers on the GPU, the most that fit."""
    shape = ModelShape.from_gguf(info)
    per_layer = [0] * info.n_layers
    for tensor in info.tensors:
        if tensor.layer is not None:
            per_layer[tensor.layer] += tensor.n_bytes
    kv_per_layer = shape.kv_bytes(N_CTX) / info.n_layers
    compute = compute_buffer_bytes(shape, Settings(n_ctx=N_CTX))
    used, n = compute, 0
    for size in reversed(per_layer):
        if used + size + kv_per_layer > budget:
            break
        used += size + kv_per_layer
        n += 1
    return Placement(n_gpu_layers=n, use_mmap=True, label=f"-ngl {n}, mmap")


def budget_machine(machine: MachineProfile, budget: float) -> MachineProfile:
    """This machine with its first GPU reporting just enough free memory for ``budget``."""
    gpu = machine.usable_gpus[0]
    free = int((budget + Settings().gpu_margin) / GPU_USABLE_SHARE) + 1
    return replace(machine, gpus=(replace(gpu, memory_free=min(free, gpu.memory_free or free)),))


def experts_touched(model: Path, placement: Placement) -> tuple[int, int]:
    """Fewest and most distinct experts a 512-token prompt batch reaches in any layer."""
    info = read_gguf(model)
    heat = HeatProfile(info.n_layers, info.n_experts, info.n_experts_used)
    with Session(model, placement, LoadSettings(n_ctx=N_CTX), heat=heat) as session:
        session.benchmark(512, 1)
    touched = (heat.counts["prompt"] > 0).sum(axis=1)
    return int(touched.min()), int(touched.max())


CHAT_PROMPTS = (  # where the heat is counted: not the benchmark's own text
    "Explain how a heat pump works to a ten-year-old.",
    "Write a short poem about the sea at night.",
    "What are the main causes of inflation? Answer in five bullet points.",
    "Translate 'good morning, how are you?' into French, Spanish and German.",
    "Give me a recipe for a vegetarian lasagna.",
    "Summarise the plot of Hamlet in three sentences.",
)


def hot_file(model: Path, tmp: Path) -> Path:
    """Count routing on CHAT_PROMPTS (CPU only), then write the file reordered by that heat."""
    info = read_gguf(model)
    heat = HeatProfile(info.n_layers, info.n_experts, info.n_experts_used, key=model_key(model))
    with Session(model, Placement.cpu_only(), LoadSettings(n_ctx=N_CTX), heat=heat) as session:
        for prompt in CHAT_PROMPTS:
            session.chat([{"role": "user", "content": prompt}], SamplingSettings.greedy(64))
    heat.save()
    start = time.perf_counter()
    ordered = reorder_by_heat(model, tmp / "ordered")
    print(f"(f): heat of {sum(heat.tokens.values()):,} chat tokens counted; file reordered "
          f"in {time.perf_counter() - start:.0f} s")  # fmt: skip
    return ordered


def hot_plan(ordered: Path, profile: MachineProfile) -> Plan | None:
    """The hot sets for this budget from the heat carried over to the reordered file."""
    heat = HeatProfile.load(model_key(ordered))
    assert heat is not None
    shape = ModelShape.from_gguf(read_gguf(ordered))
    return plan_hot_experts(shape, profile, Settings(n_ctx=N_CTX), heat.total)


def measured_share(ordered: Path, placement: Placement) -> float:
    """The share of the benchmark text's expert reads the hot sets served."""
    info = read_gguf(ordered)
    heat = HeatProfile(info.n_layers, info.n_experts, info.n_experts_used)
    with Session(ordered, placement, LoadSettings(n_ctx=N_CTX), heat=heat) as session:
        session.benchmark(512, 128)
    return hot_read_share(heat.total, placement.hot_experts) or 0.0


@contextmanager
def rpc_device() -> Iterator[None]:
    from tests.helpers.rpc_server import running_server

    with running_server() as endpoint:
        add_rpc_server(endpoint)
        yield


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--budget-gb", type=float, nargs="+", default=[8.0, 16.0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--small", action="store_true", help="a small model, to try the script")
    parser.add_argument("--rpc", action="store_true", help="a loopback RPC device as the GPU")
    parser.add_argument("--skew", type=float, default=0.0, help="router skew, for (f)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, rpc_device() if args.rpc else _nothing():
        run(args, Path(tmp))


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def run(args: argparse.Namespace, tmp: Path) -> None:
    print(f"backends: {', '.join(compiled_backends())}")
    if not any(d.is_gpu for d in list_devices()):
        sys.exit("no GPU device: build the engine with a GPU backend, or pass --rpc")
    model = args.model
    if model is None:
        start = time.perf_counter()
        shape, vocab = (SMALL, SMALL_VOCAB) if args.small else (QWEN3_30B, QWEN_VOCAB)
        model = write_q4_0_moe(tmp / "qwen3-30b-shape-q4_0.gguf", shape, vocab, skew=args.skew)
        print(
            f"wrote {model.stat().st_size / 2**30:.1f} GiB in {time.perf_counter() - start:.0f} s"
        )
    info = read_gguf(model)
    machine = detect(engine=engine_view())
    if args.rpc:  # the loopback device stands in for a GPU (memory only: timings mean nothing)
        device = next(d for d in list_devices() if d.name.startswith("RPC"))
        machine = replace(machine, gpus=(GPUInfo(device.description, "unknown",
            device.memory_total, device.memory_free, None, "engine", device.name),))  # fmt: skip
    print(
        f"{info.name}: {info.tensor_bytes / 2**30:.1f} GiB; GPU {machine.usable_gpus[0].name}; "
        f"host {machine.physical_cores} cores, RAM {(machine.ram_bandwidth or 0) / GB:.0f} GB/s"
    )
    ordered = hot_file(model, tmp) if args.skew and hot_experts_counter() else None
    if ordered is None:
        print("(f) left out: it needs --skew and the hot-experts engine (packaging/HOT-EXPERTS.md)")
    for budget_gb in args.budget_gb:
        budget = budget_gb * GB
        profile = budget_machine(machine, budget)
        planned = plan(ModelShape.from_gguf(info), profile, Settings(n_ctx=N_CTX))
        experts_cpu = plan(
            ModelShape.from_gguf(info), profile, Settings(n_ctx=N_CTX, gpu_expert_layers=0)
        )
        low, high = experts_touched(model, planned.placement)
        print(
            f"\n== VRAM budget {budget_gb:g} GB ==\n"
            f"a 512-token prompt reaches {low}-{high} of {info.n_experts} experts per layer"
        )
        tuned = tune(model, N_CTX, profile, prompt_tokens=512, reply_tokens=64, rounds=1)
        best = tuned.best
        assert best is not None
        chosen = choose(info, N_CTX, profile, best.knobs)
        rows = [
            ("(a) CPU only", Placement.cpu_only(), LoadSettings(n_ctx=N_CTX)),
            ("(b) layer offload", layer_offload(info, budget), LoadSettings(n_ctx=N_CTX)),
            ("(c) experts in RAM", experts_cpu.placement, LoadSettings(n_ctx=N_CTX)),
            ("(d) planner", planned.placement, LoadSettings(n_ctx=N_CTX)),
            (
                "(e) tuner",
                chosen.placement,
                LoadSettings(
                    n_ctx=N_CTX,
                    n_batch=max(512, chosen.n_ubatch),
                    n_ubatch=chosen.n_ubatch,
                    n_threads=chosen.n_threads,
                ),
            ),
        ]
        hot = None
        if ordered is not None:
            hot = hot_plan(ordered, profile)
            if hot is None:
                print("(f) left out: no room for hot experts at this budget")
            else:
                rows.append(("(f) hot experts", hot.placement, LoadSettings(n_ctx=N_CTX)))
        results: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in rows}
        for _ in range(args.rounds):
            for name, placement, settings in rows:
                path = ordered if name.startswith("(f)") and ordered else model
                with Session(path, placement, settings) as session:
                    results[name].append(session.benchmark(512, 128))
        base_pp = statistics.median(r[0] for r in results["(b) layer offload"])
        base_tg = statistics.median(r[1] for r in results["(b) layer offload"])
        print("| placement | prompt tok/s (min-max) | x (b) | generation tok/s (min-max) | x (b) |")
        print("|---|---|---|---|---|")
        for name, placement, _ in rows:
            pp = [r[0] for r in results[name]]
            tg = [r[1] for r in results[name]]
            print(
                f"| {name}: {placement.label} | {statistics.median(pp):,.0f} "
                f"({min(pp):,.0f}-{max(pp):,.0f}) | {statistics.median(pp) / base_pp:.2f} | "
                f"{statistics.median(tg):.1f} ({min(tg):.1f}-{max(tg):.1f}) | "
                f"{statistics.median(tg) / base_tg:.2f} |"
            )
        print(
            f"tuner's pick: {best.label}; planner predicted {planned.decode_tokens_per_s:.0f} tok/s"
        )
        if hot is not None and ordered is not None:
            served = measured_share(ordered, hot.placement)
            print(
                f"(f): the hot sets serve {served:.0%} of the benchmark text's expert reads "
                f"(predicted from the chat prompts' heat: {hot.hot_share or 0:.0%}); planner "
                f"predicted {hot.decode_tokens_per_s:.0f} tok/s"
            )


if __name__ == "__main__":
    main()
