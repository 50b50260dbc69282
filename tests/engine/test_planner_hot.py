"""Hot experts on the GPU (the hot-experts engine): the planner's per-expert placement from
measured heat, against the layer placement it improves on, at the same VRAM."""

from __future__ import annotations

import numpy as np
import pytest

from engine.catalog import load_catalog
from engine.placement import EXPERT_TENSORS, HOT_EXPERT_TENSORS
from engine.planner import (
    HOT_PROMPT_KEEP,
    HotHeat,
    ModelShape,
    Settings,
    Verdict,
    plan,
    plan_hot_experts,
)
from tests.helpers.machines import GPU_8_RAM_32, GPU_24_RAM_64, LAPTOP_16


def qwen3_30b() -> ModelShape:
    model = next(m for m in load_catalog() if m.id == "qwen3-30b-a3b-instruct-2507")
    return ModelShape.from_catalog(model, model.quant("Q4_K_M"))


def heat(shape: ModelShape, skew: float, seed: int = 0) -> np.ndarray:
    """Routing counts of a heat-ordered file: expert e of each layer read ∝ 1/(e+1)^skew."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, shape.n_experts + 1) ** skew
    draws = [rng.multinomial(20_000, weights / weights.sum()) for _ in range(shape.n_layers)]
    return np.array(draws)


def test_with_skewed_routing_hot_experts_beat_layer_placement_at_the_same_vram() -> None:
    shape, settings = qwen3_30b(), Settings()
    layers = plan(shape, GPU_8_RAM_32, settings)
    assert layers.verdict is Verdict.HYBRID
    hot = plan_hot_experts(shape, GPU_8_RAM_32, settings, heat(shape, 1.0), heat(shape, 1.0, 1))
    assert hot is not None and hot.verdict is Verdict.HYBRID
    gpu, cpu = hot.devices
    assert gpu.total <= gpu.budget and cpu.total <= cpu.budget
    assert gpu.weights == pytest.approx(layers.devices[0].weights, rel=0.05)  # the same VRAM
    hot_counts = hot.placement.hot_experts
    assert len(hot_counts) == shape.n_layers and all(0 < h < shape.n_experts for h in hot_counts)
    assert gpu.weights == shape.gpu_always_bytes + sum(
        h * (size // shape.n_experts)
        for h, size in zip(hot_counts, shape.expert_bytes_per_layer, strict=True)
    )
    assert hot.expert_share_on_gpu > 1.5 * layers.expert_share_on_gpu  # f, held out
    assert hot.decode_tokens_per_s > 1.2 * layers.decode_tokens_per_s
    rules = [(r.pattern, r.device) for r in hot.placement.rules]
    assert rules == [(HOT_EXPERT_TENSORS, "CUDA0"), (EXPERT_TENSORS, "CPU")]
    assert "hottest" in hot.placement.label and f"{hot.hot_share:.0%}" in hot.summary()


def test_with_even_routing_hot_experts_gain_nothing() -> None:
    shape, settings = qwen3_30b(), Settings()
    layers = plan(shape, GPU_8_RAM_32, settings)
    hot = plan_hot_experts(shape, GPU_8_RAM_32, settings, heat(shape, 0.0), heat(shape, 0.0, 1))
    assert hot is not None
    assert hot.decode_tokens_per_s == pytest.approx(layers.decode_tokens_per_s, rel=0.05)


def test_no_gpu_or_no_room_means_no_hot_plan() -> None:
    shape = qwen3_30b()
    assert plan_hot_experts(shape, LAPTOP_16, Settings(), heat(shape, 1.0)) is None
    huge_context = Settings(n_ctx=10**7)  # the KV cache alone fills the GPU
    assert plan_hot_experts(shape, GPU_8_RAM_32, huge_context, heat(shape, 1.0)) is None


def test_plan_takes_hot_experts_when_the_heat_makes_them_faster() -> None:
    shape = qwen3_30b()
    skewed = HotHeat(heat(shape, 1.0), heat(shape, 1.0, 1))
    layers = plan(shape, GPU_8_RAM_32, Settings())
    chosen = plan(shape, GPU_8_RAM_32, Settings(hot_heat=skewed))
    assert chosen.placement.hot_experts and chosen.hot_share is not None
    assert chosen.decode_tokens_per_s > 1.2 * layers.decode_tokens_per_s
    assert chosen.prompt_tokens_per_s >= HOT_PROMPT_KEEP * layers.prompt_tokens_per_s
    # asked for layers (the tuner's other candidate), or a fixed number of expert layers
    assert plan(shape, GPU_8_RAM_32, Settings(hot_heat=skewed, hot_experts=False)) == layers
    fixed = plan(shape, GPU_8_RAM_32, Settings(hot_heat=skewed, gpu_expert_layers=3))
    assert not fixed.placement.hot_experts and len(fixed.gpu_expert_layers) == 3


def test_plan_keeps_layer_placement_when_hot_experts_gain_nothing() -> None:
    shape = qwen3_30b()
    even = HotHeat(heat(shape, 0.0), heat(shape, 0.0, 1))
    layers = plan(shape, GPU_8_RAM_32, Settings())
    unordered = plan(shape, GPU_8_RAM_32, Settings(hot_heat=even))
    assert unordered == layers and not unordered.placement.hot_experts
    forced = plan(shape, GPU_8_RAM_32, Settings(hot_heat=even, hot_experts=True))
    assert forced.placement.hot_experts  # the tuner measures it all the same
    # all experts on a large GPU: nothing to split
    assert not plan(shape, GPU_24_RAM_64, Settings(hot_heat=even)).placement.hot_experts
