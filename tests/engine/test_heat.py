"""Expert heat: routing captured from the real engine, counts kept and saved, skew metrics."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from engine.heat import (
    MAX_BLOCKS,
    HeatProfile,
    ReadShares,
    choose_hot_sets,
    coverage_curve,
    experts_kept,
    gpu_layer_order,
    layer_skew,
    model_key,
    read_shares,
)
from engine.session import SamplingSettings, Session
from engine.synthetic import SyntheticSpec, build_synthetic_moe

PROMPT = [{"role": "user", "content": "hello world expert router token layer memory speed"}]


@pytest.fixture(scope="module")
def graded_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic MoE whose router prefers expert 0, then 1, then 2… (a gentle skew)."""
    path = tmp_path_factory.mktemp("heat") / "graded-moe.gguf"
    return build_synthetic_moe(path, SyntheticSpec(router_skew=0.3))


def profile_for(session: Session) -> HeatProfile:
    info = session.info
    return HeatProfile(info.n_layers, info.n_experts, info.n_experts_used, key="test")


def test_capture_recovers_the_skew_the_model_was_built_with(graded_model: Path) -> None:
    with Session(graded_model) as session:
        heat = profile_for(session)
        session.set_heat(heat)
        reply = session.chat(PROMPT, SamplingSettings(seed=1, max_tokens=60))
    stats, k = reply.stats, session.info.n_experts_used
    # every prompt token and every decoded reply token (not the last, never decoded) counted
    assert heat.tokens["prompt"] == stats.prompt_tokens
    assert heat.tokens["generation"] == stats.generated_tokens - 1
    per_layer = heat.counts["generation"].sum(axis=1)
    assert list(per_layer) == [heat.tokens["generation"] * k] * session.info.n_layers
    # the last layer computes only the output row of a prompt; the others every token
    assert list(heat.counts["prompt"].sum(axis=1)[:-1]) == [stats.prompt_tokens * k] * 3
    totals = heat.total.sum(axis=0)
    assert int(np.argmax(totals)) == 0
    ranks = np.argsort(np.argsort(-totals))
    correlation = np.corrcoef(ranks, np.arange(len(totals)))[0, 1]
    assert correlation > 0.9, totals  # hotter the lower the index, as built
    assert totals[:4].sum() > 0.7 * totals.sum()


def test_profiling_off_counts_nothing_and_on_again_goes_on_counting(graded_model: Path) -> None:
    with Session(graded_model) as session:
        heat = profile_for(session)
        session.set_heat(heat)
        session.chat(PROMPT, SamplingSettings(seed=1, max_tokens=8))
        counted = heat.total.copy()
        session.set_heat(None)
        session.chat(PROMPT, SamplingSettings(seed=2, max_tokens=8))
        assert np.array_equal(heat.total, counted)
        session.set_heat(heat)
        session.chat(PROMPT, SamplingSettings(seed=3, max_tokens=8))
        assert heat.total.sum() > counted.sum()


def test_profile_saves_and_loads(graded_model: Path, tmp_path: Path) -> None:
    with Session(graded_model) as session:
        heat = profile_for(session)
        heat.key = model_key(graded_model)
        session.set_heat(heat)
        session.chat(PROMPT, SamplingSettings(seed=1, max_tokens=16))
    heat.save(tmp_path)
    loaded = HeatProfile.load(heat.key, tmp_path)
    assert loaded is not None
    for phase in ("prompt", "generation"):
        assert np.array_equal(loaded.counts[phase], heat.counts[phase])
    assert loaded.tokens == heat.tokens and loaded.block_tokens == heat.block_tokens
    assert len(loaded.blocks) == len(heat.blocks) and loaded.block_size == heat.block_size
    assert all(np.array_equal(a, b) for a, b in zip(loaded.blocks, heat.blocks, strict=True))
    (tmp_path / f"{heat.key}.npz").write_bytes(b"PK\x03\x04 cut off")
    assert HeatProfile.load(heat.key, tmp_path) is None  # unreadable: start over, no crash
    assert HeatProfile.load("no-such-model", tmp_path) is None


def test_model_key_changes_with_the_file(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + bytes(10))
    first = model_key(path)
    path.write_bytes(b"GGUF" + bytes(11))
    assert model_key(path) != first


def test_coverage_entropy_top_share_unused_on_a_known_table() -> None:
    assert list(coverage_curve([1, 6, 0, 3])) == pytest.approx([0, 0.6, 0.9, 1.0, 1.0])
    table = np.array([[5, 5, 5, 5], [8, 0, 0, 0], [6, 3, 1, 0]])
    uniform, single, mixed = layer_skew(table)
    assert uniform.entropy == pytest.approx(1.0) and uniform.top_share == 0.25
    assert single.entropy == 0.0 and single.top_share == 1.0 and single.unused == 3
    assert mixed.reads == 10 and mixed.unused == 1
    expected = -(0.6 * np.log(0.6) + 0.3 * np.log(0.3) + 0.1 * np.log(0.1)) / np.log(4)
    assert mixed.entropy == pytest.approx(expected)
    # the hottest quarter (1 expert) of each layer: 5 + 8 + 6 of 38 reads
    curve = coverage_curve(table)
    assert curve[experts_kept(4, 0.25)] == pytest.approx(19 / 38)
    assert curve[experts_kept(4, 1.0)] == 1.0


def test_held_out_coverage_uses_the_first_half_hot_set_on_the_second_half() -> None:
    first = np.array([[9, 1, 0, 0]])

    def held_out(second: list[list[int]], fraction: float) -> float:
        curve = coverage_curve(np.array(second), learned_from=first)
        return float(curve[experts_kept(4, fraction)])

    assert held_out([[8, 2, 0, 0]], 0.25) == pytest.approx(0.8)
    # heat that moved: the first half's hot expert serves little of the second half
    assert held_out([[1, 0, 9, 0]], 0.25) == pytest.approx(0.1)
    assert held_out([[1, 0, 9, 0]], 0.5) == pytest.approx(0.1)


def test_blocks_merge_and_halves_split_the_tokens_evenly() -> None:
    heat = HeatProfile(n_layers=2, n_experts=4, n_experts_used=1)
    for step in range(4000):  # 40,000 tokens: expert 0 early, expert 3 late
        expert = 0 if step < 2000 else 3
        ids = np.full(10, expert)
        heat.add("generation", 0, ids, new_tokens=10)
        heat.add("generation", 1, ids)
    assert len(heat.blocks) <= MAX_BLOCKS
    assert sum(heat.block_tokens) == heat.tokens["generation"] == 40_000
    first, second = heat.halves()
    assert np.array_equal(first + second, heat.total)
    share_first = first.sum() / heat.total.sum()
    assert 0.45 < share_first < 0.55
    moved = coverage_curve(second, learned_from=first)[experts_kept(4, 0.25)]
    assert moved < 0.1  # heat moved: the check says so


def test_read_shares_compare_layer_placement_with_a_hot_set_of_equal_size() -> None:
    counts = np.array([[8, 0, 0, 0], [2, 2, 2, 2], [7, 1, 0, 0]])  # 24 reads
    shares = read_shares(counts, gpu_expert_layers=(1,))
    assert shares is not None
    assert shares.layer_placement == pytest.approx(8 / 24)  # layer 1: its 4 experts
    assert shares.per_expert == pytest.approx((8 + 7 + 2 + 2) / 24)  # the 4 hottest anywhere
    assert "33% of expert reads" in shares.describe() and "79%" in shares.describe()
    assert read_shares(counts, ()) == ReadShares(0.0, 0.0)
    assert read_shares(np.zeros((2, 4), np.int64), (0,)) is None
    # half of layer 2's expert bytes on the GPU too: half its reads, and 2 more hot slots
    shares = read_shares(counts, (1,), partial=(2, 0.5))
    assert shares is not None
    assert shares.layer_placement == pytest.approx((8 + 8 * 0.5) / 24)
    assert shares.per_expert == pytest.approx((8 + 7 + 2 + 2 + 2 + 2) / 24)


def test_flattest_layers_go_to_the_gpu_first() -> None:
    counts = np.zeros((4, 8))
    counts[0] = [100, 0, 0, 0, 0, 0, 0, 0]  # one expert: a prompt batch copies one
    counts[1] = 10  # all eight equally: a batch copies all eight
    counts[2] = [40, 40, 10, 10, 0, 0, 0, 0]
    # layer 3 never counted
    assert gpu_layer_order(counts, n_used=2, batch_tokens=64) == (1, 2, 0)


def test_hot_sets_take_the_most_reads_per_byte_within_the_budget() -> None:
    counts = np.array([[10, 1, 1, 0], [4, 4, 4, 4]])  # 28 reads
    chosen = choose_hot_sets(counts, [100, 100], budget=300)
    assert chosen.per_layer == (1, 2) and chosen.bytes == 300  # 10, then 4 and 4
    assert chosen.share == pytest.approx(18 / 28)
    assert choose_hot_sets(counts, [100, 100], budget=99).per_layer == (0, 0)
    assert choose_hot_sets(counts, [100, 100], budget=10**6).per_layer == (4, 4)
    # layer 1's experts cost twice as much: 4 reads for 200 bytes still beat 1 for 100
    assert choose_hot_sets(counts, [100, 200], budget=300).per_layer == (1, 1)
    assert choose_hot_sets(counts, [100, 500], budget=300).per_layer == (3, 0)


def test_hot_sets_are_the_best_split_of_the_budget() -> None:
    rng = np.random.default_rng(7)
    counts = rng.zipf(1.6, size=(3, 6)).astype(np.int64)
    size, budget = 50, 50 * 7
    chosen = choose_hot_sets(counts, [size] * 3, budget)
    ranked = -np.sort(-counts, axis=1)
    best = max(
        sum(ranked[layer, :h].sum() for layer, h in enumerate(split))
        for split in itertools.product(range(7), repeat=3)
        if sum(split) * size <= budget
    )
    assert chosen.share == pytest.approx(best / counts.sum())


def test_hot_sets_are_checked_on_tokens_they_were_not_chosen_from() -> None:
    first = np.array([[9, 1, 0, 0], [5, 5, 0, 0]])
    same = choose_hot_sets(first, [1, 1], budget=2, held_out=first)
    assert same.held_out == pytest.approx(same.share)
    moved = choose_hot_sets(
        first, [1, 1], budget=2, held_out=np.array([[0, 1, 9, 0], [0, 0, 5, 5]])
    )
    assert moved.per_layer == (1, 1) and moved.held_out == pytest.approx(0 / 20)


def test_hot_sets_from_real_routing_hold_on_held_out_tokens(graded_model: Path) -> None:
    with Session(graded_model) as session:
        heat = profile_for(session)
        session.set_heat(heat)
        session.chat(PROMPT, SamplingSettings(seed=1, max_tokens=200))
    first, second = heat.halves()
    n_layers, n_experts = first.shape
    quarter = n_layers * n_experts // 4  # VRAM for a quarter of the experts
    chosen = choose_hot_sets(first, [1] * n_layers, budget=quarter, held_out=second)
    assert sum(chosen.per_layer) == quarter
    assert chosen.held_out is not None
    # the router prefers low ids: a quarter of the experts serve well over a quarter of the
    # reads, on the tokens the choice was made from and on the others
    assert chosen.share > 0.4 and chosen.held_out > 0.4, chosen
