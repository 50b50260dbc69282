"""The tuner: real loads of each candidate, measured; the fastest remembered and used again."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import pytest

from engine.gguf_file import read_gguf
from engine.hardware import detect
from engine.heat import model_key
from engine.planner import ModelShape, Settings, Verdict, gpu_free_needed
from engine.tuner import (
    MIN_GAIN,
    Knobs,
    Measurement,
    Tuning,
    TuningCancelled,
    candidates,
    machine_key,
    open_planned,
    this_machine,
    tune,
)
from tests.helpers.machines import GIB, gpu


def test_tuning_measures_each_candidate_and_the_next_auto_load_uses_the_fastest(
    synthetic_model: Path,
) -> None:
    machine = this_machine()
    planned = candidates(read_gguf(synthetic_model), 512, machine)
    progress: list[tuple[float, str]] = []
    tuning = tune(
        synthetic_model, 512, machine, lambda f, m: progress.append((f, m)), prompt_tokens=64,
        reply_tokens=16,
    )  # fmt: skip
    assert [m.knobs for m in tuning.measurements] == [c.knobs for c in planned]
    assert len(tuning.measurements) >= 2  # the planner's choice and at least one other
    for m in tuning.measurements:
        assert m.prompt_tokens_per_s > 0 and m.generation_tokens_per_s > 0
        assert m.device_bytes.get("CPU", 0) > 0
    best = tuning.best
    assert best is not None
    fastest = min(m.turn_seconds for m in tuning.measurements)
    planner = tuning.measurements[0]
    assert best.turn_seconds == fastest or (
        best is planner and planner.turn_seconds <= fastest * (1 + MIN_GAIN)
    )
    fractions = [f for f, _ in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any("Measuring candidate 2" in m for _, m in progress)

    remembered = Tuning.load(tuning.model_key, machine_key(machine))
    assert remembered is not None and remembered.best == best
    session, choice = open_planned(synthetic_model)
    with session:
        assert choice.tuned
        assert session.placement.label.startswith("Tuned: ")
        assert session.settings.n_ubatch == min(best.knobs.n_ubatch, session.settings.n_batch)
        if best.knobs.n_threads:
            assert session.settings.n_threads == best.knobs.n_threads


def test_cancelled_tuning_remembers_nothing(synthetic_model: Path) -> None:
    cancel = threading.Event()
    machine = this_machine()

    def progress(_fraction: float, message: str) -> None:
        if "Measuring" in message:
            cancel.set()

    with pytest.raises(TuningCancelled):
        tune(synthetic_model, 512, machine, progress, cancel, prompt_tokens=32, reply_tokens=4)
    assert Tuning.load(model_key(synthetic_model), machine_key(machine)) is None
    session, choice = open_planned(synthetic_model)
    with session:
        assert not choice.tuned


def test_every_candidate_stays_within_the_devices_free_memory(
    upcycled_moe: Path, rpc_device: str
) -> None:
    info = read_gguf(upcycled_moe)
    shape = ModelShape.from_gguf(info)
    # Room for the always-read part and half of the expert layers, at a 1024-token context.
    free = gpu_free_needed(shape, Settings(n_ctx=1024), expert_share=0.5)
    device = gpu("RPC test device", free / GIB, rpc_device)
    machine = replace(detect(engine=False, measure_bandwidth=False), gpus=(device,))
    planned = candidates(info, 1024, machine)
    assert planned[0].plan.verdict is Verdict.HYBRID
    described = {c.knobs.describe() for c in planned}
    assert {"KV cache in RAM", "experts in RAM repacked for the CPU"} <= described
    tuning = tune(upcycled_moe, 1024, machine, prompt_tokens=32, reply_tokens=4, rounds=1)
    assert len(tuning.measurements) == len(planned)
    for measured, choice in zip(tuning.measurements, planned, strict=True):
        on_device = measured.device_bytes.get(rpc_device, 0)
        [gpu_plan] = choice.plan.devices[:-1]
        assert 0 < on_device <= gpu_plan.budget <= free, measured.label
        assert on_device == pytest.approx(gpu_plan.total, rel=0.10), measured.label
    # KV in RAM leaves room for more expert layers than the planner's own choice.
    kv_in_ram = next(c for c in planned if not c.knobs.kv_on_gpu)
    assert len(kv_in_ram.plan.gpu_expert_layers) > len(planned[0].plan.gpu_expert_layers)


def _measured(label: str, prompt: float, generation: float) -> Measurement:
    return Measurement(Knobs(), label, "", prompt, generation, 0.0, 0.0, {})


def test_the_fastest_wins_only_by_more_than_the_noise() -> None:
    planner = _measured("planner", 500, 20)  # 512/500 + 256/20 = 13.8 s a turn
    tuning = Tuning("m", "k", "model", [planner, _measured("close", 500, 20.5)])
    assert tuning.best is planner  # 2.4% faster: within the noise
    faster = _measured("faster", 2000, 22)  # 0.26 + 11.6 = 11.9 s: 16% faster
    tuning.measurements.append(faster)
    assert tuning.best is faster
    assert Tuning("m", "k", "model").best is None
