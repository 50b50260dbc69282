"""Context memory per attention kind: the planner's prediction against the engine's dry run.

For one catalog model of each architecture a header-only GGUF of its real size (a sparse
file) is dry-run by the engine at 4k, 32k and 128k context; KV cache + recurrent state +
compute buffers must be within 10% of what the planner predicts from that header, and from
the catalog alone (before download).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.catalog import CatalogModel, load_catalog
from engine.context_memory import ContextMemory
from engine.dryrun import dry_run
from engine.gguf_file import read_gguf
from engine.placement import Placement
from engine.planner import ModelShape, Settings, compute_buffer_bytes
from engine.synthetic import ARCHITECTURES, catalog_dims, write_arch_header


def _one_per_architecture() -> dict[str, CatalogModel]:
    models: dict[str, CatalogModel] = {}
    for model in load_catalog():
        models.setdefault(model.architecture, model)
    return models


def test_every_catalog_architecture_has_a_test_model() -> None:
    assert set(_one_per_architecture()) == set(ARCHITECTURES)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_predicted_context_memory_is_within_10_percent_of_the_dry_run(
    arch: str, tmp_path: Path
) -> None:
    model = _one_per_architecture()[arch]
    path = write_arch_header(tmp_path / "real-size.gguf", arch, catalog_dims(model), model.id)
    assert path.stat().st_blocks * 512 < 64 * 2**20  # sparse: the weights take no disk
    shape = ModelShape.from_gguf(read_gguf(path))
    before = ModelShape.from_catalog(model, model.quants[0])
    for n_ctx in sorted({min(n, shape.context_length or n) for n in (4096, 32768, 131072)}):
        report = dry_run(path, Placement.cpu_only(), n_ctx)
        engine = report.kv_total + report.recurrent_total + sum(report.compute_buffers.values())
        settings = Settings(n_ctx=n_ctx)
        for predicted in (shape, before):
            total = predicted.kv_bytes(n_ctx) + compute_buffer_bytes(predicted, settings)
            assert abs(total / engine - 1) <= 0.10, (n_ctx, total, engine, report)
        if shape.memory.recurrent_layers:
            # the log prints MiB with two decimals
            assert report.recurrent_total == pytest.approx(shape.memory.recurrent_bytes, abs=6e3)


def test_kinds_of_context_memory() -> None:
    """The four kinds, sized as the engine sizes them (cells padded to 256)."""
    full = ContextMemory.uniform(n_layers=2, n_kv_heads=4, head_dim=64)
    assert full.kv_bytes(1000) == 2 * (256 + 256) * 1024 * 2  # K+V, 1024 cells, f16
    models = {m.id: m for m in load_catalog()}
    gpt_oss = models["gpt-oss-20b"].context_memory()
    assert sum(layer.sliding for layer in gpt_oss.layers) == 12
    # sliding layers keep window + ubatch = 640 -> 768 cells, whatever the context
    assert gpt_oss.kv_bytes(131072) - gpt_oss.kv_bytes(65536) == 12 * (512 + 512) * 65536 * 2
    deepseek = models["deepseek-v2-lite-chat"].context_memory()
    assert deepseek.mla and {(layer.k, layer.v) for layer in deepseek.layers} == {(576, 0)}
    granite = models["granite-4.0-h-tiny"].context_memory()
    assert (len(granite.layers), granite.recurrent_layers) == (4, 36)
    assert granite.recurrent_bytes > 0 and granite.state_bytes(4096) < granite.state_bytes(8192)
    lfm2 = models["lfm2-8b-a1b"].context_memory()
    assert (len(lfm2.layers), lfm2.recurrent_layers) == (6, 18)
