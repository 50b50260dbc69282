"""The caches a newer MoE Chat may have written (expert heat, tunings, the machine's RAM
bandwidth) are left as they are: read as unknown here, never rewritten."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine import hardware
from engine.errors import StoreError
from engine.heat import HeatProfile
from engine.tuner import Tuning, tuning_path


def test_a_newer_heat_profile_is_neither_read_nor_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "model.npz"
    np.savez(path, meta=np.array(json.dumps({"format": 99})))
    before = path.read_bytes()
    assert HeatProfile.load("model", tmp_path) is None
    with pytest.raises(StoreError, match="newer MoE Chat"):
        HeatProfile(2, 4, 1, key="model").save(tmp_path)
    assert path.read_bytes() == before
    HeatProfile(2, 4, 1, key="other").save(tmp_path)  # others are saved as ever
    assert HeatProfile.load("other", tmp_path) is not None


def test_a_newer_tuning_is_neither_read_nor_overwritten(app_home: Path) -> None:
    path = tuning_path("model", "machine")
    path.write_text(json.dumps({"version": 99, "fields": "of a newer build"}))
    before = path.read_bytes()
    assert Tuning.load("model", "machine") is None
    with pytest.raises(StoreError, match="newer MoE Chat"):
        Tuning("model", "machine", "Model").save()
    assert path.read_bytes() == before


def test_a_newer_machine_cache_is_not_rewritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    probes: list[float] = []
    monkeypatch.setattr(hardware, "measure_ram_bandwidth", lambda: probes.append(12e9) or 12e9)
    cache = tmp_path / "machine.json"
    cache.write_text(json.dumps({"version": 99, "ram_bandwidth": 1.0}))
    before = cache.read_bytes()
    assert hardware.cached_ram_bandwidth(cache) == 12e9  # measured, not the newer file's
    assert cache.read_bytes() == before
    cache.unlink()
    assert hardware.cached_ram_bandwidth(cache) == 12e9
    assert json.loads(cache.read_text())["version"] == hardware.MACHINE_CACHE_VERSION
    assert hardware.cached_ram_bandwidth(cache) == 12e9
    assert len(probes) == 2  # the third came from the cache
