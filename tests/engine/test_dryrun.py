"""engine/dryrun.py: the engine's own memory dry run, in a child, against predictions and loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.dryrun import dry_run
from engine.errors import ModelLoadError
from engine.gguf_file import read_gguf
from engine.hardware import detect
from engine.placement import Placement, TensorRule
from engine.planner import ModelShape, Settings, plan
from engine.session import LoadSettings, Session


@pytest.mark.parametrize("model", ["smollm2", "upcycled_moe"])
def test_prediction_vs_dry_run_vs_real_load(model: str, request: pytest.FixtureRequest) -> None:
    path: Path = request.getfixturevalue(model)
    planned = plan(
        ModelShape.from_gguf(read_gguf(path)),
        detect(engine=False, measure_bandwidth=False),
        Settings(n_ctx=4096),
    )
    [cpu] = planned.devices
    dry = dry_run(path, Placement(use_mmap=False), 4096)
    with Session(path, Placement(use_mmap=False), LoadSettings(n_ctx=4096)) as session:
        real = session.load_report
    assert dry.kv_total == pytest.approx(real.kv_buffers["CPU"], rel=0.01)
    assert cpu.kv_cache == pytest.approx(dry.kv_total, rel=0.10)
    assert dry.compute_buffers["CPU"] == pytest.approx(real.compute_buffers["CPU"], rel=0.01)
    assert cpu.compute == pytest.approx(dry.compute_buffers["CPU"], rel=0.10)
    assert cpu.weights == pytest.approx(real.model_buffers["CPU"], rel=0.10)


def test_dry_run_reads_no_weights(upcycled_moe: Path) -> None:
    report = dry_run(upcycled_moe, Placement.cpu_only(), 2048)
    assert sum(report.model_buffers.values()) == 0
    assert report.kv_total > 0


def test_a_bad_file_gives_the_readers_message(tmp_path: Path, synthetic_model: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(synthetic_model.read_bytes()[:-500])
    with pytest.raises(ModelLoadError, match="incomplete"):
        dry_run(cut, Placement.cpu_only(), 2048)


def test_a_device_this_machine_lacks(synthetic_model: Path) -> None:
    placement = Placement(n_gpu_layers=-1, rules=(TensorRule("exps", "CUDA7"),))
    with pytest.raises(ModelLoadError, match="asks for device 'CUDA7'"):
        dry_run(synthetic_model, placement, 2048)
