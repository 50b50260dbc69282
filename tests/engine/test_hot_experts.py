"""The hot-experts engine (packaging/hot-experts.patch): each layer's first h experts in
tensors of their own, on another device than the rest, must give the unsplit CPU-only
tokens and logits, and put exactly those experts' bytes on that device.

The variant is built once (``packaging/build_engine.sh cpu hot``, kept under build/engine/)
and runs in a child process with its libraries. The synthetic models have random, distinct
experts and an unskewed router, so an id-mapping bug changes the output; gpt-oss has expert
biases, qwen2moe shared experts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.errors import ModelLoadError
from engine.native import hot_experts_counter
from engine.placement import Placement
from engine.session import Session
from engine.synthetic import SyntheticSpec, build_arch_model
from tests.helpers.hot_check import hot_bytes

ROOT = Path(__file__).resolve().parents[2]
N_EXPERTS = 8
SIZES = (0, 1, 3, N_EXPERTS // 2, N_EXPERTS - 1)  # none, one, k, half, all but one
LOG_STEP = 0.01 * 2**20  # the engine logs buffer sizes in MiB with two decimals


@pytest.fixture(scope="session")
def hot_engine() -> Path:
    """The variant's libraries (built here the first time: several minutes)."""
    result = subprocess.run(
        ["bash", "packaging/build_engine.sh", "cpu", "hot"],
        cwd=ROOT,
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return ROOT / "build" / "engine" / "cpu-hot" / "lib"


def on_variant(hot_engine: Path, *args: str) -> list[dict[str, Any]]:
    """``python -m tests.helpers.hot_check ARGS`` on the variant's libraries: its results."""
    result = subprocess.run(
        [sys.executable, "-m", "tests.helpers.hot_check", *args],
        cwd=ROOT,
        env={**os.environ, "LLAMA_CPP_LIB_PATH": str(hot_engine)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("arch", ["qwen3moe", "gpt-oss", "qwen2moe"])
def test_hot_sets_give_the_stock_cpu_reply_and_put_exactly_the_hot_experts_on_the_device(
    arch: str, hot_engine: Path, tmp_path: Path
) -> None:
    # Experts of 128 KiB a tensor, so the engine's log (0.01 MiB steps) resolves one of them.
    spec = SyntheticSpec(n_embd=256, head_dim=64, expert_ffn=256, n_experts=N_EXPERTS,
                         n_experts_used=2, router_skew=0.0,
                         n_shared=1 if arch == "qwen2moe" else 0)  # fmt: skip
    model = build_arch_model(tmp_path / f"{arch}.gguf", arch, spec)
    runs = on_variant(hot_engine, str(model), *map(str, SIZES))
    assert [run["h"] for run in runs] == list(SIZES)
    # h = 0 is the unpatched path (nothing split: every expert multiplied as stock llama.cpp
    # does, all on this CPU) of the same build; the stock engine of this environment may be
    # compiled for other CPU features, whose rounding changes a random model's greedy reply.
    unsplit = runs[0]
    assert unsplit["hot"] == [] and unsplit["weights"].get(unsplit["device"], 0) == 0
    for run in runs:
        h = run["h"]
        assert run["tokens"] == unsplit["tokens"], (h, run["text"], unsplit["text"])
        worst = max(abs(a - b) for a, b in zip(run["logits"], unsplit["logits"], strict=True))
        assert worst <= 1e-3, (h, worst)
        assert run["hot"] == ([h] * spec.n_layers if h else [])
        on_device = run["weights"].get(run["device"], 0)
        assert on_device == pytest.approx(hot_bytes(model, [h] * spec.n_layers), abs=LOG_STEP)
        # the reply's stats: the share of its routed reads that fell on experts 0..h-1
        reads = np.array(run["generation_counts"])
        # every token decoded after the prompt counted (at the length limit, the last one
        # sampled is not decoded)
        decoded = run["generated"] - (run["stop_reason"] == "length")
        assert reads.sum() == decoded * spec.n_layers * spec.n_experts_used
        expected = reads[:, :h].sum() / reads.sum() if h else None
        assert run["hot_read_share"] == pytest.approx(expected), h


def test_an_engine_without_the_patch_says_it_cannot_split_a_layers_experts(
    synthetic_model: Path,
) -> None:
    if hot_experts_counter() is not None:
        pytest.skip("this environment's engine is the hot-experts variant")
    placement = Placement(hot_experts=(2, 2, 2, 2))
    with pytest.raises(ModelLoadError, match="cannot put a layer's hot experts"):
        Session(synthetic_model, placement)
    assert "LLAMA_HOT_EXPERTS" not in os.environ
    with Session(synthetic_model, Placement(hot_experts=(0, 0, 0, 0))) as session:
        assert session.hot_experts == ()  # nothing asked: nothing split, on any engine


def test_an_automatic_load_with_counted_heat_puts_the_hot_experts_on_the_gpu(
    hot_engine: Path, tmp_path: Path
) -> None:
    """What the app's load does (engine.tuner.choose) on this engine with skewed heat saved
    for the file and a small GPU (the RPC device): the planner prefers each layer's hottest
    experts to layer placement; loaded, the engine splits each layer as planned and holds the
    planned bytes on each device."""
    spec = SyntheticSpec(n_embd=256, head_dim=64, expert_ffn=256, n_experts=N_EXPERTS)
    model = build_arch_model(tmp_path / "qwen3moe.gguf", "qwen3moe", spec)
    (run,) = on_variant(hot_engine, "--plan", str(model), "0.01")
    assert run["hot"] == run["hot_experts"] and 0 < sum(run["hot"]) < spec.n_layers * N_EXPERTS
    assert "hottest" in run["label"] and 0 < run["hot_share"] < 1
    for device, planned in run["planned"].items():
        assert run["weights"][device] == pytest.approx(planned, abs=LOG_STEP), device
