"""Benchmark: the planner's predictions against real loads, per figure.

    .venv/bin/python bench/planner_accuracy.py [MODEL.gguf ...]

For every model (default: SmolLM2, its upcycled 4-expert MoE and the synthetic MoE), plan it
on this machine as detected, load it under the planned placement, generate 64 greedy tokens,
and print predicted vs measured: weights, KV cache and compute buffer per device (from the
engine's own log), and generation tokens/s. With --rpc, also plans a hybrid split onto an
RPC device on loopback with room for half the experts (memory only: RPC timings mean
nothing).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.engine_log import per_device
from engine.gguf_file import read_gguf
from engine.hardware import MachineProfile, detect
from engine.planner import ModelShape, Settings, gpu_free_needed, plan
from engine.session import LoadSettings, SamplingSettings, Session

MIB = 2**20
QUESTION = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]


def error(predicted: float, measured: float) -> str:
    if not measured:
        return "n/a"
    return f"{(predicted - measured) / measured:+.0%}"


def row(what: str, predicted: float, measured: float, unit: str = "MiB") -> None:
    scale = MIB if unit == "MiB" else 1
    print(
        f"  {what:28s} predicted {predicted / scale:10.1f} {unit}  measured "
        f"{measured / scale:10.1f} {unit}  error {error(predicted, measured)}"
    )


def buffers(report: dict[str, int], device: str) -> int:
    return per_device(report).get(device, 0)


def check(path: Path, machine: MachineProfile, settings: Settings, timing: bool) -> None:
    shape = ModelShape.from_gguf(read_gguf(path))
    planned = plan(shape, machine, settings)
    print(f"{path.name}: {planned.verdict.value}, {planned.placement.label}")
    placement = replace(planned.placement, use_mmap=False)  # exact per-device accounting
    with Session(path, placement, LoadSettings(n_ctx=settings.n_ctx)) as session:
        reply = session.chat(QUESTION, SamplingSettings.greedy(64))
        report = session.load_report
    for device in planned.devices:
        if not device.total:
            continue
        row(
            f"{device.device} weights", device.weights, buffers(report.model_buffers, device.device)
        )
        if device.kv_cache:
            row(
                f"{device.device} KV cache",
                device.kv_cache,
                buffers(report.kv_buffers, device.device),
            )
        row(
            f"{device.device} compute",
            device.compute,
            buffers(report.compute_buffers, device.device),
        )
    if timing:
        row(
            "generation",
            planned.decode_tokens_per_s,
            reply.stats.generation_tokens_per_s,
            unit="tok/s",
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", type=Path)
    parser.add_argument("--rpc", action="store_true", help="also plan a hybrid split over RPC")
    parser.add_argument("--n-ctx", type=int, default=4096)
    args = parser.parse_args()
    settings = Settings(n_ctx=args.n_ctx)
    machine = detect()
    print(
        f"machine: {machine.cpu_model}, {machine.physical_cores} cores, "
        f"RAM bandwidth {(machine.ram_bandwidth or 0) / 1e9:.1f} GB/s measured"
    )
    with tempfile.TemporaryDirectory() as tmp:
        models = list(args.models)
        if not models:
            from engine.synthetic import build_synthetic_moe
            from tests.helpers.models import build_upcycled_moe, smollm2_path

            models = [
                smollm2_path(),
                build_upcycled_moe(smollm2_path(), Path(tmp) / "smollm2-moe4.gguf"),
                build_synthetic_moe(Path(tmp) / "synthetic-moe.gguf"),
            ]
        for path in models:
            check(path, machine, settings, timing=True)
        if args.rpc:
            from engine.devices import add_rpc_server
            from tests.helpers.machines import GIB, gpu
            from tests.helpers.rpc_server import running_server

            with running_server() as endpoint:
                device = add_rpc_server(endpoint)[0].name
                for path in models:
                    shape = ModelShape.from_gguf(read_gguf(path))
                    if not shape.expert_bytes:
                        continue
                    free = gpu_free_needed(shape, settings, expert_share=0.5)
                    rpc_gpu = gpu("RPC device", free / GIB, device)  # memory is what counts
                    hybrid = replace(machine, gpus=(rpc_gpu,))
                    check(path, hybrid, settings, timing=False)


if __name__ == "__main__":
    main()
