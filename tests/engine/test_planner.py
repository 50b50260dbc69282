"""engine/planner.py over fixed machine profiles: verdicts, placements, invariants, ranking."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from engine.catalog import CatalogModel, load_catalog
from engine.hardware import MachineProfile
from engine.planner import (
    ModelShape,
    Plan,
    Settings,
    Verdict,
    gpu_free_needed,
    plan,
    rank,
    recommend,
)
from tests.helpers.machines import (
    APPLE_16,
    GIB,
    GPU_8_RAM_32,
    GPU_24_RAM_64,
    LAPTOP_16,
    PROFILES,
    TWO_GPUS_12_8,
    gpu,
    machine,
)

CATALOG = {m.id: m for m in load_catalog()}
QWEN = ("qwen3-30b-a3b-instruct-2507", "Q4_K_M")
GPT_OSS = ("gpt-oss-20b", "MXFP4")
OLMOE = ("olmoe-1b-7b-0924-instruct", "Q4_K_M")


def shape(model_quant: tuple[str, str]) -> ModelShape:
    model = CATALOG[model_quant[0]]
    return ModelShape.from_catalog(model, model.quant(model_quant[1]))


EXPECTED = {
    (QWEN, "laptop-16"): Verdict.TOO_LARGE,
    (QWEN, "gpu-8-ram-32"): Verdict.HYBRID,
    (QWEN, "gpu-24-ram-64"): Verdict.FULL_GPU,
    (QWEN, "apple-16"): Verdict.TOO_LARGE,
    (QWEN, "two-gpus-12-8"): Verdict.HYBRID,
    (GPT_OSS, "laptop-16"): Verdict.CPU_ONLY,
    (GPT_OSS, "gpu-8-ram-32"): Verdict.HYBRID,
    (GPT_OSS, "gpu-24-ram-64"): Verdict.FULL_GPU,
    (GPT_OSS, "apple-16"): Verdict.HYBRID,
    (GPT_OSS, "two-gpus-12-8"): Verdict.FULL_GPU,
    (OLMOE, "laptop-16"): Verdict.CPU_ONLY,
    (OLMOE, "gpu-8-ram-32"): Verdict.FULL_GPU,
    (OLMOE, "gpu-24-ram-64"): Verdict.FULL_GPU,
    (OLMOE, "apple-16"): Verdict.FULL_GPU,
    (OLMOE, "two-gpus-12-8"): Verdict.FULL_GPU,
}


@pytest.mark.parametrize(("case", "verdict"), list(EXPECTED.items()), ids=str)
def test_verdicts(case: tuple[tuple[str, str], str], verdict: Verdict) -> None:
    model, profile = case
    result = plan(shape(model), PROFILES[profile])
    assert result.verdict is verdict, result.summary()
    if verdict is Verdict.TOO_LARGE:
        assert result.missing_bytes > 0 and result.decode_tokens_per_s == 0
        assert "more memory" in result.summary()
    else:
        assert result.decode_tokens_per_s > 1 and result.prompt_tokens_per_s > 1


def test_hybrid_placement_sends_exactly_the_planned_layers_to_ram() -> None:
    result = plan(shape(QWEN), GPU_8_RAM_32)
    placement = result.placement
    assert placement.n_gpu_layers == -1
    whole, part = placement.rules  # whole layers in RAM, then part of the next one
    assert whole.device == part.device == "CPU"
    patterns = [re.compile(rule.pattern) for rule in placement.rules]
    on_cpu = {
        (layer, kind)
        for layer in range(48)
        for kind in ("up", "gate", "down")
        if any(p.search(f"blk.{layer}.ffn_{kind}_exps.weight") for p in patterns)
    }
    partial = placement.partial_expert_layer
    assert partial is not None and partial not in result.gpu_expert_layers
    in_ram = set(range(48)) - set(result.gpu_expert_layers) - {partial}
    assert {layer for layer, _ in on_cpu} == in_ram | {partial}
    # the layer that did not fit whole: gate and up fit beside the others, down stays in RAM
    assert {kind for layer, kind in on_cpu if layer == partial} == {"down"}
    assert placement.partial_gpu_share == pytest.approx(2 / 3, rel=0.01)
    assert f"layer {partial}'s down in RAM" in placement.label
    for pattern in patterns:
        assert not pattern.search("blk.3.attn_q.weight")
        assert not pattern.search("blk.30.ffn_gate_inp.weight")  # the router stays on the GPU
    assert 0 < result.expert_share_on_gpu < 0.5
    gpu_plan = result.devices[0]
    assert gpu_plan.total <= gpu_plan.budget


def test_two_gpus_share_the_expert_layers() -> None:
    result = plan(shape(QWEN), TWO_GPUS_12_8)
    devices = {rule.device for rule in result.placement.rules}
    assert devices == {"CPU", "CUDA0", "CUDA1"}
    gpu0, gpu1 = result.devices[0], result.devices[1]
    assert gpu0.weights > gpu1.weights > 0  # the bigger card holds more


def test_unified_memory_counts_the_gpu_share_against_ram() -> None:
    result = plan(shape(GPT_OSS), APPLE_16)
    ram_budget = APPLE_16.ram_available - Settings().ram_margin  # type: ignore[operator]
    assert result.gpu_bytes + result.ram_bytes <= ram_budget


def _all_plans() -> list[tuple[str, CatalogModel, Plan, MachineProfile]]:
    plans = []
    for name, profile in PROFILES.items():
        for model in CATALOG.values():
            for quant in model.quants:
                plans.append(
                    (name, model, plan(ModelShape.from_catalog(model, quant), profile), profile)
                )
    return plans


def test_no_plan_exceeds_free_memory_minus_margin() -> None:
    settings = Settings()
    for name, model, result, profile in _all_plans():
        if not result.runs:
            continue
        for device in result.devices:
            assert device.total <= device.budget, (name, model.id, device)
            if device.device != "CPU":
                [gpu_info] = [g for g in profile.gpus if g.engine_device == device.device]
                assert device.budget <= gpu_info.memory_free - settings.gpu_margin  # type: ignore[operator]


@pytest.mark.parametrize("model", [QWEN, GPT_OSS, OLMOE], ids=lambda m: m[0])
def test_more_vram_never_predicts_slower(model: tuple[str, str]) -> None:
    speeds = []
    for free in [0.5, 1, 2, 3, 4, 6, 8, 10, 12, 16, 20, 24, 32, 48]:
        profile = machine(64, 56, (gpu("GPU", free),))
        speeds.append(plan(shape(model), profile).decode_tokens_per_s)
    assert speeds == sorted(speeds), speeds
    assert speeds[-1] > speeds[0]


def test_longer_context_costs_memory_and_can_change_the_verdict() -> None:
    short = plan(shape(QWEN), GPU_24_RAM_64, Settings(n_ctx=4096))
    long = plan(shape(QWEN), GPU_24_RAM_64, Settings(n_ctx=131072))
    assert long.devices[0].kv_cache > 20 * short.devices[0].kv_cache
    assert short.verdict is Verdict.FULL_GPU and long.verdict is Verdict.HYBRID


def test_context_is_capped_at_the_models_native_length() -> None:
    result = plan(shape(OLMOE), LAPTOP_16, Settings(n_ctx=100_000))
    assert result.n_ctx == 4096


def test_ranking_and_recommendation() -> None:
    ranked = rank(CATALOG.values(), GPU_8_RAM_32)
    assert ranked[0].plan.decode_tokens_per_s >= 8
    runs = [c for c in ranked if c.plan.runs]
    assert runs and ranked[-1].plan.verdict is Verdict.TOO_LARGE  # the 235B cannot
    result = recommend(CATALOG.values(), LAPTOP_16)
    assert result is not None
    best, reason = result
    assert best.quant.quant not in ("Q2_K", "Q3_K_M")  # a 2-bit 30B is not what we suggest
    assert best.model.display_name in reason and "tokens/s" in reason


def test_nothing_fits_a_tiny_machine() -> None:
    tiny = machine(2, 1)
    assert recommend([CATALOG["qwen3-235b-a22b"]], tiny) is None


def test_slow_machines_still_get_the_best_that_fits() -> None:
    slow = machine(64, 56, cores=2, ram_gbs=5)
    result = recommend([CATALOG[QWEN[0]]], slow)
    assert result is not None and "Nothing reaches 8 tokens/s" in result[1]


def test_catalog_shape_vs_gguf_shape_of_the_same_file(upcycled_moe) -> None:  # type: ignore[no-untyped-def]
    from engine.gguf_file import read_gguf

    exact = ModelShape.from_gguf(read_gguf(upcycled_moe))
    assert exact.exact and exact.n_experts == 4 and exact.n_experts_used == 2
    assert exact.tied_output
    assert exact.total_bytes == read_gguf(upcycled_moe).tensor_bytes
    assert exact.gpu_always_bytes == exact.always_bytes + exact.embedding_bytes
    assert len(exact.expert_bytes_per_layer) == 30 and min(exact.expert_bytes_per_layer) > 0
    assert replace(exact, exact=False).expert_bytes == exact.expert_bytes


def test_speed_model_reproduces_the_h100_measurements_in_tech_notes() -> None:
    # TECH-NOTES: a Qwen3-30B-A3B-shaped GGUF, all Q4_0, 16.0 GiB, on an H100 host whose
    # RAM our copy probe measures at 71 GB/s (bench/placements.py, 2026-11-22).
    # llama-bench tg128: CPU only 28.9 (no GPU visible), all on GPU 320, experts on CPU 33.4.
    total = 16 * GIB
    experts = int(total * 28.99 / 30.5)
    shape = ModelShape(
        name="qwen3-30b-shape", quant="Q4_0", n_layers=48, n_experts=128, n_experts_used=8,
        n_kv_heads=4, head_dim=128, context_length=262144, n_embd=2048, n_vocab=151936,
        always_bytes=total - experts, embedding_bytes=0, tied_output=False,
        expert_bytes_per_layer=(experts // 48,) * 48, active_params=3.3e9, exact=True,
    )  # fmt: skip
    host = machine(128, 120, cores=16, ram_gbs=71)
    h100 = gpu("NVIDIA H100 80GB HBM3", 79, gbs=3350)
    settings = Settings(n_ctx=512)
    cpu = plan(shape, host, settings)
    full = plan(shape, replace(host, gpus=(h100,)), settings)
    tight = replace(h100, memory_free=gpu_free_needed(shape, settings, expert_share=0.0))
    experts_cpu = plan(shape, replace(host, gpus=(tight,)), settings)
    assert experts_cpu.gpu_expert_layers == ()
    assert cpu.decode_tokens_per_s == pytest.approx(28.9, rel=0.15)
    assert full.decode_tokens_per_s == pytest.approx(320, rel=0.15)
    assert experts_cpu.decode_tokens_per_s == pytest.approx(33.4, rel=0.15)


def test_gpu_free_needed_is_the_inverse_of_the_budget() -> None:
    settings = Settings()
    qwen = shape(QWEN)
    for share in (0.0, 0.25, 0.5, 1.0):
        profile = machine(64, 56, (gpu("GPU", gpu_free_needed(qwen, settings, share) / GIB),))
        result = plan(qwen, profile, settings)
        assert result.verdict is (Verdict.FULL_GPU if share == 1.0 else Verdict.HYBRID)
        assert result.expert_share_on_gpu >= share - 1 / qwen.n_layers


def test_experts_in_ram_are_read_in_when_ram_allows_and_mapped_when_tight() -> None:
    qwen = shape(QWEN)
    roomy = plan(qwen, GPU_8_RAM_32)
    assert roomy.verdict is Verdict.HYBRID and roomy.placement.use_mmap is False
    cpu_side = roomy.devices[-1].total
    # Pinned memory cannot be paged out: with RAM just enough for the experts, map the file.
    tight_ram = (cpu_side + Settings().ram_margin) / GIB + 0.2
    tight = plan(qwen, machine(32, tight_ram, GPU_8_RAM_32.gpus))
    assert tight.verdict is Verdict.HYBRID and tight.placement.use_mmap is True
    assert roomy.prompt_tokens_per_s > 2 * tight.prompt_tokens_per_s
    # Nothing to copy for prompt batches: the file stays mapped.
    assert plan(shape(OLMOE), GPU_8_RAM_32).placement.use_mmap is True
    assert plan(qwen, GPU_8_RAM_32, Settings(use_mmap=True)).placement.use_mmap is True


def test_kv_cache_in_ram_makes_room_for_more_expert_layers() -> None:
    qwen = shape(QWEN)
    settings = Settings(n_ctx=32768)
    on_gpu = plan(qwen, GPU_8_RAM_32, settings)
    in_ram = plan(qwen, GPU_8_RAM_32, replace(settings, kv_on_gpu=False))
    assert in_ram.placement.offload_kv is False and on_gpu.placement.offload_kv is True
    assert len(in_ram.gpu_expert_layers) > len(on_gpu.gpu_expert_layers)
    gpu_plan, cpu_plan = in_ram.devices
    assert gpu_plan.kv_cache == 0 and cpu_plan.kv_cache == qwen.kv_bytes(32768)
    assert "KV cache in RAM" in in_ram.placement.label


def test_expert_layer_limit_and_order() -> None:
    qwen = shape(QWEN)
    full = plan(qwen, GPU_24_RAM_64)
    assert full.verdict is Verdict.FULL_GPU
    limited = plan(qwen, GPU_24_RAM_64, Settings(gpu_expert_layers=10))
    assert limited.gpu_expert_layers == tuple(range(10))
    assert limited.verdict is Verdict.HYBRID
    assert limited.decode_tokens_per_s < full.decode_tokens_per_s
    ordered = plan(qwen, GPU_24_RAM_64, Settings(gpu_expert_layers=3, layer_order=(40, 7, 99, 7)))
    assert ordered.gpu_expert_layers == (0, 7, 40)  # the order's layers first, then from 0
    assert plan(qwen, GPU_8_RAM_32, Settings(gpu_expert_layers=100)).gpu_expert_layers == (
        plan(qwen, GPU_8_RAM_32).gpu_expert_layers  # a limit is never more than fits
    )


def test_repacked_experts_trade_prompt_speed_for_generation() -> None:
    qwen = shape(QWEN)
    plain = plan(qwen, GPU_8_RAM_32)
    repacked = plan(qwen, GPU_8_RAM_32, Settings(no_host=True))
    assert repacked.placement.no_host and not plain.placement.no_host
    assert repacked.decode_tokens_per_s > plain.decode_tokens_per_s
    assert repacked.prompt_tokens_per_s < plain.prompt_tokens_per_s / 2
    assert "repacked" in repacked.placement.label
    # nothing in RAM, nothing to repack
    assert not plan(shape(OLMOE), GPU_24_RAM_64, Settings(no_host=True)).placement.no_host


def test_a_higher_bit_quant_only_when_it_stays_comfortable() -> None:
    """The 8 GB GPU was offered Q8_0 at ~16 tok/s over Q4_K_M at ~31."""
    from engine.planner import COMFORTABLE_SHARE, COMFORTABLE_TOKENS_PER_S

    best, _ = recommend(CATALOG.values(), GPU_8_RAM_32) or (None, "")
    assert best is not None and best.quant.quant == "Q4_K_M"
    for candidates in (rank(CATALOG.values(), m) for m in (GPU_8_RAM_32, GPU_24_RAM_64)):
        for model_id in {c.model.id for c in candidates}:
            mine = [c for c in candidates if c.model.id == model_id and c.plan.runs]
            four = [c for c in mine if c.quant.quality == 4]
            if not mine or not four:
                continue
            first = mine[0]  # the model's quant that ranks highest
            rate = first.plan.decode_tokens_per_s
            if first.quant.quality > 4:
                assert rate >= COMFORTABLE_TOKENS_PER_S or (
                    rate >= COMFORTABLE_SHARE * four[0].plan.decode_tokens_per_s
                )
    # and a big GPU still gets 8 bits where they stay fast
    ranked = rank(CATALOG.values(), GPU_24_RAM_64)
    qwen = [c for c in ranked if c.model.id == "qwen3-30b-a3b-instruct-2507"]
    assert qwen[0].quant.quant == "Q8_0" and qwen[0].plan.decode_tokens_per_s >= 20


def test_no_2_bit_quant_while_a_4_bit_model_runs_fast_enough() -> None:
    """A 2-core laptop was offered Qwen3-30B at Q2_K."""
    laptop = machine(24, 18, cores=2, ram_gbs=20)
    best, _ = recommend(CATALOG.values(), laptop) or (None, "")
    assert best is not None and best.quant.quality >= 3
    assert best.plan.decode_tokens_per_s >= 8


def test_the_recommendation_holds_while_the_bandwidth_probe_wobbles() -> None:
    """It changed in three starts of one machine as the probe read 14 to 25 GB/s."""
    for bandwidth in range(10, 60, 3):
        first = recommend(CATALOG.values(), machine(24, 18, cores=2, ram_gbs=bandwidth))
        assert first is not None
        incumbent = (first[0].model.id, first[0].quant.quant)
        for wobble in (0.88, 1.12):
            again = recommend(
                CATALOG.values(),
                machine(24, 18, cores=2, ram_gbs=bandwidth * wobble),
                incumbent=incumbent,
            )
            assert again is not None and (again[0].model.id, again[0].quant.quant) == incumbent
    # ... but a machine that is really faster gets what it can now run
    slow = recommend(CATALOG.values(), machine(24, 18, cores=2, ram_gbs=10))
    assert slow is not None
    fast = recommend(
        CATALOG.values(),
        machine(64, 56, (gpu("RTX 4090", 23, gbs=1008),), cores=16),
        incumbent=(slow[0].model.id, slow[0].quant.quant),
    )
    assert fast is not None and fast[0].model.id != slow[0].model.id
