"""Planning with other computers' devices (engine.rpc): blocks of layers, link cost, refusals."""

from __future__ import annotations

from dataclasses import replace

import pytest

from engine.catalog import load_catalog
from engine.hardware import RemoteDevice
from engine.planner import (
    ACTIVATION_BYTES,
    OUTPUT_HEAD,
    ModelShape,
    Settings,
    Verdict,
    plan,
    rank,
)
from tests.helpers.machines import GIB, GPU_8_RAM_32, GPU_24_RAM_64, LAPTOP_16, machine


def _shape(model_id: str = "qwen3-30b-a3b", quant: str = "Q4_K_M") -> ModelShape:
    entry = next(m for m in load_catalog() if m.id == model_id)
    return ModelShape.from_catalog(entry, next(q for q in entry.quants if q.quant == quant))


def remote(
    kind: str = "CPU",
    free_gib: float = 24,
    gbs: float = 40,
    latency_ms: float | None = 0.3,
    rate_mbs: float = 117,
    endpoint: str = "127.0.0.2:50052",
) -> RemoteDevice:
    return RemoteDevice(
        endpoint=endpoint,
        index=0,
        name="CUDA0" if kind == "GPU" else "CPU",
        description="a test device",
        kind=kind,
        memory_free=int(free_gib * GIB),
        memory_total=int((free_gib + 2) * GIB),
        bandwidth=gbs * 1e9,
        latency_s=latency_ms / 1000 if latency_ms is not None else None,
        transfer_bps=rate_mbs * 1e6,
    )


def test_a_model_too_big_for_the_laptop_runs_with_another_computers_ram() -> None:
    shape = _shape()
    alone = plan(shape, LAPTOP_16)
    assert alone.verdict is Verdict.TOO_LARGE
    pooled = plan(shape, replace(LAPTOP_16, remotes=(remote(),)))
    assert pooled.verdict is Verdict.POOLED and pooled.workers == ("127.0.0.2:50052",)
    here, there = pooled.devices
    assert here.device == "CPU" and there.device == "RPC0[127.0.0.2:50052]" and there.remote
    assert here.total <= here.budget and there.total <= there.budget
    placement = pooled.placement
    # No GPU here: this computer keeps the first layers and the output head, the worker the
    # last ones; the engine counts the head as one more layer, which a rule keeps here.
    (count,) = placement.tensor_split
    assert placement.devices == ("RPC0[127.0.0.2:50052]",)
    assert placement.n_gpu_layers == count
    assert (OUTPUT_HEAD, "CPU") in [(r.pattern, r.device) for r in placement.rules]
    assert not placement.use_mmap
    remote_layers = int(count) - 1
    assert f"{shape.n_layers - remote_layers} here, {remote_layers} on 127.0.0.2" in placement.label
    assert there.weights == sum(shape.layer_bytes(i) for i in range(remote_layers))
    # One visit per token: a round trip, the activations both ways, the attention mask there
    # (half the context's cells).
    assert pooled.link_s_per_token == pytest.approx(
        0.3e-3 + (2 * shape.n_embd + Settings().n_ctx // 2) * ACTIVATION_BYTES / 117e6
    )
    assert "network takes 0.5 ms per token" in pooled.summary()
    assert pooled.decode_tokens_per_s >= Settings().min_tokens_per_s


def test_a_slow_link_is_refused_and_the_plan_says_how_much_it_costs() -> None:
    shape = _shape()
    slow = remote("GPU", 23, 1008, latency_ms=150)
    result = plan(shape, replace(LAPTOP_16, remotes=(slow,)))
    assert result.verdict is Verdict.TOO_LARGE
    (note,) = result.notes
    assert note.startswith("Using 127.0.0.2:50052 was left out: the link adds 1")
    assert "ms per token" in note and "tokens/s instead of" in note


def test_a_fast_remote_gpu_takes_the_first_layers_and_the_local_gpu_the_rest() -> None:
    shape = _shape("gpt-oss-120b", "MXFP4")
    alone = plan(shape, GPU_24_RAM_64)
    helper = remote("GPU", 23, 1008, latency_ms=0.2, rate_mbs=290, endpoint="127.0.0.3:50052")
    pooled = plan(shape, replace(GPU_24_RAM_64, remotes=(helper,)))
    assert pooled.verdict is Verdict.POOLED
    assert pooled.decode_tokens_per_s > alone.decode_tokens_per_s
    placement = pooled.placement
    assert placement.devices == ("RPC0[127.0.0.3:50052]", "CUDA0")
    first, rest = placement.tensor_split
    assert first == int(first) and first + rest == pytest.approx(shape.n_layers + 1)
    assert placement.n_gpu_layers == -1
    # Experts sent to RAM are this computer's layers only.
    remote_layers = set(range(int(first)))
    for rule in placement.rules:
        assert not any(f"({i}|" in rule.pattern or f"|{i})" in rule.pattern or
                       f"({i})" in rule.pattern for i in remote_layers)  # fmt: skip


def test_other_computers_are_not_used_when_they_do_not_pay() -> None:
    shape = _shape("olmoe-1b-7b-0924-instruct", "Q4_K_M")
    alone = plan(shape, GPU_8_RAM_32)
    assert alone.verdict is Verdict.FULL_GPU
    with_ram_elsewhere = plan(shape, replace(GPU_8_RAM_32, remotes=(remote(),)))
    assert with_ram_elsewhere == alone


def test_with_a_fast_link_the_dense_part_goes_to_a_remote_gpu_and_pays_a_visit_per_layer() -> None:
    shape = _shape()
    roomy_laptop = machine(32, 28)
    alone = plan(shape, roomy_laptop)
    small_gpu = {"kind": "GPU", "free_gib": 4, "gbs": 1008}
    lan = plan(shape, replace(roomy_laptop, remotes=(remote(**small_gpu, latency_ms=0.3),)))
    # Over 1 GbE a block of whole layers (one visit per token) beats a visit per layer.
    assert lan.verdict is Verdict.POOLED and "layers: 40 here, 8 on" in lan.placement.label
    fast = remote(**small_gpu, latency_ms=0.02, rate_mbs=1250)
    result = plan(shape, replace(roomy_laptop, remotes=(fast,)))
    assert result.verdict is Verdict.POOLED
    assert result.placement.devices == ("RPC0[127.0.0.2:50052]",)
    assert "expert layers in RAM" in result.placement.label
    experts_here = shape.n_layers - len(result.gpu_expert_layers)
    visit = 0.02e-3 + (2 * shape.n_embd + Settings().n_ctx // 2) * ACTIVATION_BYTES / 1250e6
    logits = shape.n_vocab * ACTIVATION_BYTES / 1250e6
    assert result.link_s_per_token == pytest.approx((experts_here + 1) * visit + logits)
    assert result.decode_tokens_per_s > lan.decode_tokens_per_s > alone.decode_tokens_per_s


def test_an_unmeasured_link_is_assumed_slow_and_said_so() -> None:
    result = plan(_shape(), replace(LAPTOP_16, remotes=(remote(latency_ms=None),)))
    assert result.verdict is Verdict.POOLED
    assert any("not measured yet" in note for note in result.notes)


def test_a_ram_limit_keeps_this_computers_share_under_it() -> None:
    shape = _shape()
    limit = 6 * GIB
    result = plan(shape, replace(machine(64, 60), remotes=(remote(),)), Settings(ram_limit=limit))
    assert result.verdict is Verdict.POOLED
    assert result.ram_bytes <= limit


def test_ranking_counts_other_computers() -> None:
    models = load_catalog()
    alone = {(c.model.id, c.quant.quant) for c in rank(models, LAPTOP_16) if c.plan.runs}
    pooled = rank(models, replace(LAPTOP_16, remotes=(remote(free_gib=48),)))
    runs = {(c.model.id, c.quant.quant) for c in pooled if c.plan.runs}
    assert alone < runs
    assert any(c.plan.verdict is Verdict.POOLED for c in pooled)
