"""engine/hardware.py on this machine, and with each probe failing or absent."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from engine.hardware import (
    cgroup_memory_limit,
    detect,
    gpu_bandwidth,
    measure_ram_bandwidth,
    probe_engine,
    probe_nvml,
    probe_sysfs,
)


def test_this_machine() -> None:
    profile = detect()
    assert profile.cpu_model and profile.physical_cores and profile.logical_cores
    assert (
        profile.ram_total and profile.ram_available and profile.ram_available <= profile.ram_total
    )
    assert profile.engine_backends and "CPU" in profile.engine_backends
    assert profile.disk_free and profile.disk_free > 0
    assert profile.ram_bandwidth and profile.ram_bandwidth > 1e9
    assert profile.cpu_features  # x86 (avx…) or arm (neon…)
    assert profile.notes == ()


def test_engine_probe_that_times_out_gives_unknown_not_a_crash() -> None:
    assert probe_engine(timeout=0.001) is None
    profile = detect(engine=None, measure_bandwidth=False)
    assert profile.engine_backends is None
    assert any("engine could not be asked" in note for note in profile.notes)
    assert profile.ram_total  # the rest of the profile is still there


def test_engine_probe_with_a_broken_interpreter() -> None:
    assert probe_engine(python="/nonexistent/python3") is None


@pytest.mark.skipif(importlib.util.find_spec("pynvml") is not None, reason="nvidia-ml-py here")
def test_no_nvidia_ml_py_means_no_answer() -> None:
    assert probe_nvml() is None


def test_no_sysfs_means_no_answer(tmp_path: Path) -> None:
    assert probe_sysfs(tmp_path / "absent") is None
    assert probe_sysfs(tmp_path) == []


def _amd_card(root: Path) -> None:
    device = root / "card1" / "device"
    device.mkdir(parents=True)
    (device / "vendor").write_text("0x1002\n")
    (device / "product_name").write_text("Radeon RX 7900 XTX\n")
    (device / "mem_info_vram_total").write_text(str(24 * 2**30))
    (device / "mem_info_vram_used").write_text(str(2 * 2**30))
    (root / "card1-DP-1").mkdir()  # a connector, not a card


def test_amd_gpu_from_sysfs_that_the_engine_cannot_use(tmp_path: Path) -> None:
    _amd_card(tmp_path)
    [gpu] = probe_sysfs(tmp_path) or []
    assert (gpu.vendor, gpu.memory_total, gpu.memory_free) == ("AMD", 24 * 2**30, 22 * 2**30)
    assert gpu.bandwidth == 960e9
    profile = detect(engine=False, sysfs_root=tmp_path, measure_bandwidth=False)
    assert profile.unusable_gpus == (gpu,) and profile.usable_gpus == ()
    hint = profile.reinstall_hint()
    assert hint and "-DGGML_HIP=on" in hint and "llama-cpp-python==0.3.36" in hint


def test_engine_gpu_is_usable_and_merged_with_the_vendor_view(tmp_path: Path) -> None:
    _amd_card(tmp_path)
    engine = {
        "backends": ["ROCm", "CPU"],
        "cpu_features": ["avx2"],
        "devices": [
            {"name": "ROCm0", "description": "AMD Radeon RX 7900 XTX", "kind": "GPU",
             "memory_free": 22 * 2**30, "memory_total": 24 * 2**30},
            {"name": "CPU", "description": "cpu", "kind": "CPU",
             "memory_free": None, "memory_total": None},
        ],
    }  # fmt: skip
    profile = detect(engine=engine, sysfs_root=tmp_path, measure_bandwidth=False)
    [gpu] = profile.gpus
    assert gpu.engine_device == "ROCm0" and gpu.bandwidth == 960e9
    assert profile.reinstall_hint() is None


@pytest.mark.parametrize(
    ("name", "gbs"),
    [
        ("NVIDIA H100 80GB HBM3", 3350),
        ("NVIDIA H100 PCIe", 2000),
        ("NVIDIA GeForce RTX 4060 Ti", 288),
        ("NVIDIA GeForce RTX 4060", 272),
        ("Apple M2 Max", 400),
        ("Mystery Accelerator 9000", None),
    ],
)
def test_gpu_bandwidth_table(name: str, gbs: int | None) -> None:
    assert gpu_bandwidth(name) == (gbs * 1e9 if gbs else None)


def test_cgroup_limits(tmp_path: Path) -> None:
    assert cgroup_memory_limit(tmp_path) is None
    (tmp_path / "memory.max").write_text("max\n")
    assert cgroup_memory_limit(tmp_path) is None
    (tmp_path / "memory.max").write_text(f"{2**30}\n")
    assert cgroup_memory_limit(tmp_path) == 2**30


def test_bandwidth_probe_is_quick_and_plausible() -> None:
    measured = measure_ram_bandwidth(seconds=0.1)
    assert measured and 1e9 < measured < 2e12


def test_free_disk_is_measured_where_models_go(tmp_path: Path, app_home: Path) -> None:
    import shutil

    from engine import paths

    chosen = tmp_path / "my-models"
    chosen.mkdir()
    profile = detect(engine=False, measure_bandwidth=False, models_dir=chosen)
    assert profile.disk_free is not None
    assert abs(profile.disk_free - shutil.disk_usage(chosen).free) < 256 * 2**20
    # Every folder the engine keeps things in is under the app's home.
    for folder in (paths.models_dir(), paths.heat_dir(), paths.tuning_dir(), paths.log_dir()):
        assert folder.parent == app_home and folder.is_dir()
    assert paths.machine_cache_path().parent == app_home
