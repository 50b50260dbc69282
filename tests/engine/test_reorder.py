"""The expert reordering tool: same model, experts in heat order, ids that map back exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter, quants

from engine.errors import ModelFileError
from engine.heat import HeatProfile
from engine.reorder import ORDER_KEY, copy_field, heat_order, reorder_experts, write_gguf
from engine.session import SamplingSettings, Session
from engine.synthetic import SyntheticSpec, build_synthetic_moe

PROMPT = [{"role": "user", "content": "hello world expert router token layer"}]


def greedy_and_heat(path: Path) -> tuple[str, HeatProfile]:
    with Session(path) as session:
        info = session.info
        heat = HeatProfile(info.n_layers, info.n_experts, info.n_experts_used)
        session.set_heat(heat)
        reply = session.chat(PROMPT, SamplingSettings.greedy(48))
    return reply.text, heat


@pytest.fixture(scope="module")
def graded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("reorder") / "graded.gguf"
    return build_synthetic_moe(path, SyntheticSpec(router_skew=0.3))


def test_reordered_model_replies_the_same_and_ids_map_back(graded: Path, tmp_path: Path) -> None:
    text, heat = greedy_and_heat(graded)
    # coldest first, and a different order per layer: a real permutation everywhere
    rng = np.random.default_rng(3)
    order = np.stack([rng.permutation(8) for _ in range(heat.n_layers)])
    order[0] = heat_order(heat.total)[0][::-1]
    reordered = reorder_experts(graded, tmp_path / "reordered.gguf", order)

    text2, heat2 = greedy_and_heat(reordered)
    assert text2 == text  # token for token
    for layer in range(heat.n_layers):
        # new position i holds old expert order[layer][i]: its counts moved with it
        assert np.array_equal(heat2.total[layer], heat.total[layer][order[layer]])
    recorded = GGUFReader(reordered).fields[ORDER_KEY].contents()
    assert recorded == [int(i) for row in order for i in row]


def test_quantized_experts_move_as_whole_blocks(graded: Path, tmp_path: Path) -> None:
    """Expert tensors of a downloaded model are quantized: rows of blocks, not floats."""
    quantized = tmp_path / "graded-q8.gguf"
    reader = GGUFReader(graded)
    writer = GGUFWriter(quantized, reader.fields["general.architecture"].contents())
    for key, field in reader.fields.items():
        if not key.startswith("GGUF.") and key != "general.architecture":
            copy_field(writer, key, field)
    for tensor in reader.tensors:
        data = np.asarray(tensor.data)
        if "_exps" in tensor.name:
            q8 = quants.quantize(data.astype(np.float32), GGMLQuantizationType.Q8_0)
            writer.add_tensor(tensor.name, q8, raw_dtype=GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(tensor.name, data, raw_dtype=tensor.tensor_type)
    write_gguf(writer)

    text, heat = greedy_and_heat(quantized)
    order = heat_order(heat.total)[:, ::-1]  # coldest first: every expert moves
    text2, heat2 = greedy_and_heat(reorder_experts(quantized, tmp_path / "r.gguf", order))
    assert text2 == text
    assert np.array_equal(heat2.total, np.take_along_axis(heat.total, order, axis=1))


def test_heat_order_puts_the_hottest_first() -> None:
    counts = np.array([[1, 9, 5, 5], [0, 0, 0, 7]])
    assert heat_order(counts).tolist() == [[1, 2, 3, 0], [3, 0, 1, 2]]


def test_grouped_routing_and_bad_orders_are_refused(graded: Path, tmp_path: Path) -> None:
    reader = GGUFReader(graded)
    arch = reader.fields["general.architecture"].contents()
    grouped = tmp_path / "grouped.gguf"
    writer = GGUFWriter(grouped, arch)
    for key, field in reader.fields.items():
        if not key.startswith("GGUF.") and key != "general.architecture":
            copy_field(writer, key, field)
    writer.add_key_value(f"{arch}.expert_group_count", 2, GGUFValueType.UINT32)
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, np.asarray(tensor.data), raw_dtype=tensor.tensor_type)
    write_gguf(writer)
    with pytest.raises(ModelFileError, match="groups of experts"):
        reorder_experts(grouped, tmp_path / "out.gguf", np.tile(np.arange(8), (4, 1)))

    not_a_permutation = np.tile(np.arange(8), (4, 1))
    not_a_permutation[2, 0] = 1
    with pytest.raises(ModelFileError, match="layer 2 is not a permutation"):
        reorder_experts(graded, tmp_path / "out.gguf", not_a_permutation)
    with pytest.raises(ModelFileError, match="8 entries per layer"):
        reorder_experts(graded, tmp_path / "out.gguf", np.tile(np.arange(4), (4, 1)))


def test_command_line_reorders_by_the_heat_the_app_counted(
    graded: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from engine.heat import model_key
    from engine.reorder import main

    assert main([str(tmp_path / "missing.gguf")]) == 1
    assert "is not a file" in capsys.readouterr().err
    assert main([str(graded)]) == 1  # nothing counted yet
    assert "turn counting on" in capsys.readouterr().err
    reply, heat = greedy_and_heat(graded)
    heat.key = model_key(graded)
    heat.save()  # where the app keeps it
    out = tmp_path / "by-heat.gguf"
    assert main([str(graded), str(out)]) == 0
    assert "experts ordered by the heat" in capsys.readouterr().out
    assert greedy_and_heat(out)[0] == reply
    recorded = GGUFReader(out).fields[ORDER_KEY].contents()
    assert recorded[: heat.n_experts] == heat_order(heat.total)[0].tolist()
    assert main([str(graded), str(out)]) == 1  # never overwrites
    assert "already exists" in capsys.readouterr().err


def test_the_apps_reordering_carries_the_heat_over_and_loses_nothing_when_it_cannot_finish(
    graded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine import reorder
    from engine.gguf_file import read_gguf
    from engine.heat import model_key

    src = tmp_path / "graded.gguf"
    src.write_bytes(graded.read_bytes())
    with pytest.raises(ModelFileError, match="No expert heat was counted"):
        reorder.reorder_by_heat(src, tmp_path / "models")
    reply, heat = greedy_and_heat(src)
    heat.key = model_key(src)
    heat.save()
    out_dir = tmp_path / "models"

    # a cancel halfway and a disk without room leave no file behind
    with pytest.raises(ModelFileError, match="cancelled"):
        reorder.reorder_by_heat(src, out_dir, lambda done: done < 0.5)
    with monkeypatch.context() as patched:
        patched.setattr(reorder, "DISK_SLACK", 1 << 60)  # more than any disk has free
        with pytest.raises(ModelFileError, match=r"needs .* free on the models disk"):
            reorder.reorder_by_heat(src, out_dir)
    assert list(out_dir.iterdir()) == []

    progress: list[float] = []
    out = reorder.reorder_by_heat(src, out_dir, lambda done: progress.append(done) or True)
    assert out == out_dir / "graded.by-heat.gguf" and progress[-1] == 1.0
    assert progress == sorted(progress) and len(progress) == len(read_gguf(src).tensors)
    assert read_gguf(out).heat_ordered and not read_gguf(src).heat_ordered
    # the copy's heat, saved under its own key, is the original's in the copy's order:
    # hottest first in every layer, and what the copy's routing counts for the same reply
    carried = HeatProfile.load(model_key(out))
    assert carried is not None and carried.tokens == heat.tokens
    assert np.all(np.diff(carried.total, axis=1) <= 0)
    reply2, heat2 = greedy_and_heat(out)
    assert reply2 == reply and np.array_equal(heat2.total, carried.total)
    assert np.array_equal(sum(carried.blocks), carried.total)
    with pytest.raises(ModelFileError, match="reordered copy already"):
        reorder.reorder_by_heat(out, out_dir)
