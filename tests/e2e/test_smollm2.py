"""End to end on real weights: SmolLM2, its upcycled MoE, and placements on a second device.

The upcycled MoE must give token-for-token the dense model's greedy reply under every
placement: that equality is the correctness oracle for the placement mechanism.
"""

from __future__ import annotations

import gc
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from engine.engine_log import per_device
from engine.gguf_file import Role, read_gguf
from engine.placement import EXPERT_TENSORS, Placement, TensorRule
from engine.session import LoadSettings, SamplingSettings, Session

QUESTION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]
MIB = 2**20


def greedy_reply(path: Path, placement: Placement | None = None) -> tuple[str, Session]:
    session = Session(path, placement)
    reply = session.chat(QUESTION, SamplingSettings.greedy(48))
    session.close()
    return reply.text, session


@pytest.fixture(scope="module")
def dense_reply(smollm2: Path) -> str:
    return greedy_reply(smollm2)[0]


def test_smollm2_knows_the_capital_of_france(dense_reply: str) -> None:
    assert "Paris" in dense_reply


def test_upcycled_moe_gives_the_dense_reply(upcycled_moe: Path, dense_reply: str) -> None:
    assert greedy_reply(upcycled_moe)[0] == dense_reply


def _cpu_bytes(buffers: dict[str, int]) -> int:
    return per_device(buffers).get("CPU", 0)


def _device_bytes(buffers: dict[str, int], device: str) -> int:
    return per_device(buffers).get(device, 0)


def _close_to(measured: int, expected: int) -> bool:
    # The log prints MiB with two decimals, and each tensor is padded to the buffer alignment.
    return abs(measured - expected) <= 0.002 * expected + 0.05 * MIB


def test_all_experts_forced_to_cpu_gives_the_dense_reply(
    upcycled_moe: Path, dense_reply: str, rpc_device: str
) -> None:
    placement = Placement(
        n_gpu_layers=-1, rules=(TensorRule(EXPERT_TENSORS, "CPU"),), use_mmap=False
    )
    text, session = greedy_reply(upcycled_moe, placement)
    assert text == dense_reply
    roles = read_gguf(upcycled_moe).bytes_by_role()
    buffers = session.load_report.model_buffers
    # The engine always keeps token embeddings on the CPU; the experts are there by our rule.
    # SmolLM2 ties its output head to the embeddings, so the device gets a copy of them.
    cpu_expected = roles[Role.ROUTED_EXPERTS] + roles[Role.TOKEN_EMBEDDINGS]
    device_expected = sum(roles.values()) - roles[Role.ROUTED_EXPERTS]
    assert _close_to(_cpu_bytes(buffers), cpu_expected), buffers
    assert _close_to(_device_bytes(buffers, rpc_device), device_expected), buffers
    assert _device_bytes(session.load_report.kv_buffers, rpc_device) > 0


def test_everything_on_the_device_gives_the_dense_reply(
    upcycled_moe: Path, dense_reply: str, rpc_device: str
) -> None:
    text, session = greedy_reply(upcycled_moe, Placement(n_gpu_layers=-1, use_mmap=False))
    assert text == dense_reply
    info = read_gguf(upcycled_moe)
    assert info.tied_output
    buffers = session.load_report.model_buffers
    embeddings = info.bytes_by_role()[Role.TOKEN_EMBEDDINGS]
    assert _close_to(_cpu_bytes(buffers), embeddings), buffers
    # everything else, plus the tied output head's copy of the embeddings
    assert _close_to(_device_bytes(buffers, rpc_device), info.tensor_bytes), buffers


def test_half_the_expert_layers_on_the_device(
    upcycled_moe: Path, dense_reply: str, rpc_device: str
) -> None:
    info = read_gguf(upcycled_moe)
    on_device = list(range(0, info.n_layers, 2))
    placement = Placement(
        n_gpu_layers=0,
        rules=(TensorRule(rf"^blk\.({'|'.join(map(str, on_device))})\.ffn_.*_exps\.", rpc_device),),
        use_mmap=False,
    )
    text, session = greedy_reply(upcycled_moe, placement)
    assert text == dense_reply
    expected = sum(info.expert_bytes_by_layer()[layer] for layer in on_device)
    assert _close_to(_device_bytes(session.load_report.model_buffers, rpc_device), expected)


def test_unloading_gives_the_memory_back(smollm2: Path) -> None:
    gc.collect()
    process = psutil.Process()
    before = process.memory_info().rss
    session = Session(smollm2, Placement(use_mmap=False))
    session.chat(QUESTION, SamplingSettings.greedy(4))
    loaded = process.memory_info().rss
    session.close()
    after = process.memory_info().rss
    weights = read_gguf(smollm2).tensor_bytes
    assert loaded - before > 0.8 * weights
    assert loaded - after > 0.8 * weights


def test_a_planned_hybrid_split_loads_as_planned(
    upcycled_moe: Path, dense_reply: str, rpc_device: str
) -> None:
    from engine.hardware import detect
    from engine.planner import ModelShape, Settings, Verdict, gpu_free_needed, plan
    from tests.helpers.machines import GIB, gpu

    shape = ModelShape.from_gguf(read_gguf(upcycled_moe))
    settings = Settings(n_ctx=4096, use_mmap=False)
    # A device with room for the always-read part and half of the expert layers.
    free = gpu_free_needed(shape, settings, expert_share=0.5)
    device = gpu("RPC test device", free / GIB, rpc_device)  # memory is what counts here
    machine = replace(detect(engine=False, measure_bandwidth=False), gpus=(device,))
    planned = plan(shape, machine, settings)
    assert planned.verdict is Verdict.HYBRID
    assert 10 <= len(planned.gpu_expert_layers) <= 20

    with Session(upcycled_moe, planned.placement, LoadSettings(n_ctx=4096)) as session:
        text = session.chat(QUESTION, SamplingSettings.greedy(48)).text
        report = session.load_report
    assert text == dense_reply
    gpu_plan, cpu_plan = planned.devices
    measured_gpu = _device_bytes(report.model_buffers, rpc_device)
    measured_cpu = _cpu_bytes(report.model_buffers)
    assert measured_gpu == pytest.approx(gpu_plan.weights, rel=0.10)
    assert measured_cpu == pytest.approx(cpu_plan.weights, rel=0.10)
    assert _device_bytes(report.kv_buffers, rpc_device) == pytest.approx(
        gpu_plan.kv_cache, rel=0.10
    )
    measured_compute = _device_bytes(report.compute_buffers, rpc_device)
    assert measured_compute == pytest.approx(gpu_plan.compute, rel=0.10)


def test_kv_cache_in_ram_with_more_expert_layers_on_the_device(
    upcycled_moe: Path, dense_reply: str, rpc_device: str
) -> None:
    from engine.hardware import detect
    from engine.planner import ModelShape, Settings, gpu_free_needed, plan
    from tests.helpers.machines import GIB, gpu

    shape = ModelShape.from_gguf(read_gguf(upcycled_moe))
    settings = Settings(n_ctx=4096)
    free = gpu_free_needed(shape, settings, expert_share=0.5)
    machine = replace(
        detect(engine=False, measure_bandwidth=False),
        gpus=(gpu("RPC test device", free / GIB, rpc_device),),
    )
    with_kv = plan(shape, machine, settings)
    planned = plan(shape, machine, replace(settings, kv_on_gpu=False))
    assert len(planned.gpu_expert_layers) > len(with_kv.gpu_expert_layers)
    with Session(upcycled_moe, planned.placement, LoadSettings(n_ctx=4096)) as session:
        text = session.chat(QUESTION, SamplingSettings.greedy(48)).text
        report = session.load_report
    assert text == dense_reply
    gpu_plan, cpu_plan = planned.devices
    assert _device_bytes(report.kv_buffers, rpc_device) == 0
    assert _cpu_bytes(report.kv_buffers) == pytest.approx(cpu_plan.kv_cache, rel=0.02)
    assert _device_bytes(report.model_buffers, rpc_device) == pytest.approx(
        gpu_plan.weights, rel=0.02
    )
    assert _cpu_bytes(report.compute_buffers) <= cpu_plan.compute


def test_part_of_an_expert_layer_on_the_device(
    upcycled_moe: Path, dense_reply: str, rpc_device: str
) -> None:
    """Room for 15.7 expert layers: 15 whole ones and the gate and up tensors of the 16th."""
    from engine.hardware import detect
    from engine.planner import ModelShape, Settings, gpu_free_needed, plan
    from tests.helpers.machines import GIB, gpu

    shape = ModelShape.from_gguf(read_gguf(upcycled_moe))
    settings = Settings(n_ctx=4096)
    free = gpu_free_needed(shape, settings, expert_share=15.7 / 30)
    machine = replace(
        detect(engine=False, measure_bandwidth=False),
        gpus=(gpu("RPC test device", free / GIB, rpc_device),),
    )
    planned = plan(shape, machine, settings)
    placement = planned.placement
    assert len(planned.gpu_expert_layers) == 15
    assert placement.partial_expert_layer == 15
    assert placement.partial_gpu_share == pytest.approx(2 / 3, rel=0.01)
    with Session(upcycled_moe, placement, LoadSettings(n_ctx=4096)) as session:
        text = session.chat(QUESTION, SamplingSettings.greedy(48)).text
        report = session.load_report
    assert text == dense_reply
    gpu_plan, cpu_plan = planned.devices
    assert _close_to(_device_bytes(report.model_buffers, rpc_device), gpu_plan.weights)
    assert _close_to(_cpu_bytes(report.model_buffers), cpu_plan.weights)
