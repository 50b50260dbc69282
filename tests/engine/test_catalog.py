"""engine/catalog.py and resources/catalog.json: content rules and validation messages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine.catalog import CatalogError, load_catalog
from engine.gguf_file import SUPPORTED_ARCHITECTURES


def test_shipped_catalog_has_twelve_families_the_engine_can_run() -> None:
    models = load_catalog()
    assert len({m.family for m in models}) >= 12
    for model in models:
        assert model.architecture in SUPPORTED_ARCHITECTURES, model.id
        assert 0.5 < model.expert_share < 1.0, model.id
        for quant in model.quants:
            assert quant.repo.count("/") == 1
            assert all(name.endswith(".gguf") for name in quant.files)
            assert ".powerinfer." not in "".join(quant.files)  # PowerInfer-only files
            assert model.size_estimate(quant) > 0


def test_known_facts_survive_the_round_trip() -> None:
    models = {m.id: m for m in load_catalog()}
    qwen = models["qwen3-30b-a3b-instruct-2507"]
    assert (qwen.n_layers, qwen.n_experts, qwen.n_experts_used) == (48, 128, 8)
    q4 = qwen.quant("Q4_K_M")
    assert q4.repo == "unsloth/Qwen3-30B-A3B-Instruct-2507-GGUF"
    assert q4.size_bytes == 18_556_686_752
    # 28.99B of 30.5B parameters are routed experts (48 x 128 x 3 x 2048 x 768)
    assert qwen.expert_share == pytest.approx(48 * 128 * 3 * 2048 * 768 / 30.5e9, rel=0.01)
    assert models["gpt-oss-20b"].quant("MXFP4").files == ("gpt-oss-20b-mxfp4.gguf",)
    with pytest.raises(CatalogError, match="has no Q8_0"):
        models["gpt-oss-120b"].quant("Q8_0")


def test_a_size_the_catalog_lacks_is_estimated_from_the_quant() -> None:
    olmoe = {m.id: m for m in load_catalog()}["olmoe-1b-7b-0924-instruct"]
    q4, q8 = olmoe.quant("Q4_K_M"), olmoe.quant("Q8_0")
    assert q4.size_bytes is None
    assert 3.5e9 < olmoe.size_estimate(q4) < 5e9
    assert olmoe.size_estimate(q8) > olmoe.size_estimate(q4)


def _entry(**changes: Any) -> dict[str, Any]:
    entry = json.loads((Path(__file__).parents[2] / "resources" / "catalog.json").read_text())[
        "models"
    ][0]
    entry.update(changes)
    return entry


def _load(tmp_path: Path, models: list[dict[str, Any]]) -> str:
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"schema": 1, "models": models}))
    with pytest.raises(CatalogError) as caught:
        load_catalog(path)
    return str(caught.value)


def test_missing_field_names_the_entry_and_field(tmp_path: Path) -> None:
    entry = _entry()
    del entry["n_layers"]
    message = _load(tmp_path, [entry])
    assert "entry 1 (qwen3-30b-a3b-instruct-2507)" in message and "'n_layers'" in message


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"n_experts_used": 999}, "experts used"),
        ({"active_params_b": 99.0}, "active parameters"),
        ({"quants": []}, "no quantization"),
        ({"quants": [{"quant": "Q4_K_M", "repo": "norepo", "files": ["a.gguf"]}]}, "owner/repo"),
        ({"quants": [{"quant": "Q4_K_M", "repo": "a/b", "files": ["a.bin"]}]}, ".gguf"),
        ({"head_dim": "128"}, "'head_dim' must be a whole number"),
    ],
)
def test_malformed_entries(tmp_path: Path, changes: dict[str, Any], expected: str) -> None:
    assert expected in _load(tmp_path, [_entry(**changes)])


def test_duplicate_ids(tmp_path: Path) -> None:
    assert "twice" in _load(tmp_path, [_entry(), _entry()])


def test_unreadable_catalog(tmp_path: Path) -> None:
    path = tmp_path / "catalog.json"
    path.write_text("{not json")
    with pytest.raises(CatalogError, match="cannot be read"):
        load_catalog(path)


def test_sampling_defaults_come_from_the_family_then_the_file() -> None:
    from engine.session import SamplingSettings, recommended_sampling

    plain, source = recommended_sampling("")
    assert plain == SamplingSettings() and source == "MoE Chat's defaults"
    qwen, source = recommended_sampling("qwen3-30b-a3b")
    assert (qwen.temperature, qwen.top_p, qwen.top_k, qwen.min_p) == (0.6, 0.95, 20, 0.0)
    assert qwen.max_tokens == 8192 and "Qwen" in source and "thinking" in source
    oss, _ = recommended_sampling("gpt-oss-20b")
    assert (oss.temperature, oss.top_p, oss.top_k) == (1.0, 1.0, 0)
    filed, source = recommended_sampling("qwen3-30b-a3b", (("temperature", 0.3), ("top_k", 5.0)))
    assert (filed.temperature, filed.top_k, filed.top_p) == (0.3, 5, 0.95)  # the file wins
    assert "model file" in source
    every = [m for m in load_catalog() if m.sampling]
    assert every and all(m.sampling_source and "sampling" in m.unverified for m in every)


def test_a_malformed_sampling_entry_is_refused(tmp_path: Path) -> None:
    document = json.loads((Path(__file__).parents[2] / "resources" / "catalog.json").read_text())
    document["models"][0]["sampling"] = {"temprature": 0.7}
    bad = tmp_path / "catalog.json"
    bad.write_text(json.dumps(document))
    with pytest.raises(CatalogError, match="'sampling' must map"):
        load_catalog(bad)
