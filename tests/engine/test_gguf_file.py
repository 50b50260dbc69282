"""engine/gguf_file.py on real files: the synthetic MoE, SmolLM2, its upcycled MoE, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.errors import ModelFileError
from engine.gguf_file import Role, classify_tensor, read_gguf, tensor_layer
from engine.synthetic import SyntheticSpec


def test_synthetic_moe_header(synthetic_model: Path) -> None:
    spec = SyntheticSpec()
    info = read_gguf(synthetic_model)
    assert info.architecture == "qwen3moe"
    assert info.file_type == "F16"
    assert (info.n_layers, info.n_experts, info.n_experts_used) == (4, 8, 2)
    assert info.context_length == spec.context_length
    assert (info.n_head, info.n_head_kv, info.head_dim) == (4, 2, 16)
    assert info.expert_ffn_length == spec.expert_ffn
    assert info.is_moe
    assert info.chat_template and "add_generation_prompt" in info.chat_template


def test_synthetic_moe_bytes_per_role_add_up(synthetic_model: Path) -> None:
    spec = SyntheticSpec()
    info = read_gguf(synthetic_model)
    roles = info.bytes_by_role()
    assert sum(roles.values()) == info.tensor_bytes
    assert info.tensor_bytes < info.file_size
    # gate, up and down: n_experts x expert_ffn x n_embd f16 values each, per layer
    per_layer = 3 * spec.n_experts * spec.expert_ffn * spec.n_embd * 2
    assert info.expert_bytes_by_layer() == dict.fromkeys(range(spec.n_layers), per_layer)
    assert roles[Role.ROUTED_EXPERTS] == spec.n_layers * per_layer
    assert roles[Role.ROUTER] == spec.n_layers * spec.n_experts * spec.n_embd * 4
    assert roles[Role.SHARED_EXPERTS] == 0 and roles[Role.DENSE_FFN] == 0
    assert roles[Role.TOKEN_EMBEDDINGS] > 0 and roles[Role.OUTPUT_HEAD] > 0
    assert roles[Role.ATTENTION] > 0 and roles[Role.NORMS] > 0


def test_smollm2_header(smollm2: Path) -> None:
    info = read_gguf(smollm2)
    assert info.architecture == "llama"
    assert info.file_type == "Q4_1"
    assert (info.n_layers, info.n_embd, info.n_head, info.n_head_kv) == (30, 576, 9, 3)
    assert not info.is_moe
    assert info.chat_template and "<|im_start|>" in info.chat_template
    roles = info.bytes_by_role()
    assert sum(roles.values()) == info.tensor_bytes
    # The data section is the file's tail: everything but a header of well under 5 MB.
    assert 0 < info.file_size - info.tensor_bytes < 5_000_000
    assert roles[Role.ROUTED_EXPERTS] == 0 and roles[Role.DENSE_FFN] > 0


def test_upcycled_moe_has_four_copies_of_the_dense_ffn(smollm2: Path, upcycled_moe: Path) -> None:
    dense = read_gguf(smollm2).bytes_by_role()
    moe = read_gguf(upcycled_moe)
    assert (moe.n_experts, moe.n_experts_used) == (4, 2)
    roles = moe.bytes_by_role()
    assert roles[Role.ROUTED_EXPERTS] == 4 * dense[Role.DENSE_FFN]
    assert roles[Role.DENSE_FFN] == 0
    assert roles[Role.ROUTER] == 30 * 4 * 576 * 4
    assert roles[Role.ATTENTION] == dense[Role.ATTENTION]


@pytest.mark.parametrize(
    ("name", "role", "layer"),
    [
        ("token_embd.weight", Role.TOKEN_EMBEDDINGS, None),
        ("output.weight", Role.OUTPUT_HEAD, None),
        ("output_norm.weight", Role.NORMS, None),
        ("blk.3.attn_q.weight", Role.ATTENTION, 3),
        ("blk.3.attn_q_norm.weight", Role.NORMS, 3),
        ("blk.12.ffn_gate_inp.weight", Role.ROUTER, 12),
        ("blk.12.exp_probs_b.bias", Role.ROUTER, 12),
        ("blk.12.ffn_up_exps.weight", Role.ROUTED_EXPERTS, 12),
        ("blk.12.ffn_gate_up_exps.weight", Role.ROUTED_EXPERTS, 12),
        ("blk.12.ffn_down_exps.scale", Role.ROUTED_EXPERTS, 12),
        ("blk.12.ffn_up_shexp.weight", Role.SHARED_EXPERTS, 12),
        ("blk.12.ffn_gate_inp_shexp.weight", Role.SHARED_EXPERTS, 12),
        ("blk.0.ffn_down.weight", Role.DENSE_FFN, 0),
        ("blk.0.ffn_norm.weight", Role.NORMS, 0),
    ],
)
def test_tensor_roles(name: str, role: Role, layer: int | None) -> None:
    assert classify_tensor(name) is role
    assert tensor_layer(name) == layer


def _error(path: Path) -> str:
    with pytest.raises(ModelFileError) as caught:
        read_gguf(path)
    return str(caught.value)


def test_missing_file(tmp_path: Path) -> None:
    assert "does not exist" in _error(tmp_path / "nope.gguf")


def test_folder_instead_of_file(tmp_path: Path) -> None:
    assert "folder" in _error(tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.gguf"
    path.write_bytes(b"")
    assert "empty" in _error(path)


def test_not_a_gguf_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.gguf"
    path.write_text("these are not weights\n" * 100)
    assert "not a GGUF model file" in _error(path)


@pytest.mark.parametrize("keep", [0.5, 0.95])
def test_file_cut_in_its_data(tmp_path: Path, synthetic_model: Path, keep: float) -> None:
    data = synthetic_model.read_bytes()
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[: int(len(data) * keep)])
    message = _error(path)
    assert "incomplete" in message and "download it again" in message


@pytest.mark.parametrize("keep", [6, 24, 100, 2000])
def test_file_cut_in_its_header(tmp_path: Path, synthetic_model: Path, keep: int) -> None:
    path = tmp_path / "cut.gguf"
    path.write_bytes(synthetic_model.read_bytes()[:keep])
    assert "incomplete" in _error(path)


def test_garbage_after_the_magic(tmp_path: Path) -> None:
    path = tmp_path / "garbage.gguf"
    rng = np.random.default_rng(5)
    path.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + rng.bytes(4096))
    message = _error(path)
    assert "damaged" in message or "incomplete" in message


def _tiny_gguf(path: Path, arch: str) -> Path:
    from gguf import GGUFWriter

    writer = GGUFWriter(path, arch)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_unsupported_architecture(tmp_path: Path) -> None:
    message = _error(_tiny_gguf(tmp_path / "future.gguf", "futuremoe9"))
    assert "'futuremoe9'" in message and "cannot run" in message


def test_not_a_chat_model(tmp_path: Path) -> None:
    message = _error(_tiny_gguf(tmp_path / "mmproj.gguf", "clip"))
    assert "not a chat model" in message


def test_moe_that_uses_no_experts_is_refused(tmp_path: Path) -> None:
    # llama.cpp aborts the process on such a file, so the header check must catch it.
    from engine.synthetic import build_synthetic_moe

    path = build_synthetic_moe(tmp_path / "bad.gguf", SyntheticSpec(n_experts_used=0))
    assert "8 experts but 0 used" in _error(path)


@pytest.fixture
def split_model(tmp_path: Path, synthetic_model: Path) -> list[Path]:
    from tests.helpers.models import copy_gguf

    copy_gguf(synthetic_model, tmp_path / "split.gguf", split_max_tensors=20)
    parts = sorted(tmp_path.glob("split-*-of-*.gguf"))
    assert [p.name for p in parts] == [f"split-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    return parts


def test_split_model_is_read_whole_from_any_part(
    split_model: list[Path], synthetic_model: Path
) -> None:
    whole = read_gguf(synthetic_model)
    for part in split_model:
        info = read_gguf(part)
        assert info.path == split_model[0]
        assert info.tensor_bytes == whole.tensor_bytes
        assert info.bytes_by_role() == whole.bytes_by_role()
        assert info.file_size == sum(p.stat().st_size for p in split_model)
        assert (info.architecture, info.n_experts) == ("qwen3moe", 8)


def test_split_model_with_a_missing_part(split_model: list[Path]) -> None:
    split_model[1].unlink()
    message = _error(split_model[0])
    assert "part 2 (split-00002-of-00003.gguf) is missing" in message


def test_split_model_with_a_cut_part(split_model: list[Path]) -> None:
    data = split_model[2].read_bytes()
    split_model[2].write_bytes(data[: len(data) // 2])
    assert "split-00003-of-00003.gguf is incomplete" in _error(split_model[0])


def test_a_files_own_sampling_recommendation_is_read(synthetic_model: Path, tmp_path: Path) -> None:
    from tests.helpers.models import with_sampling

    values = {"temp": 0.6, "top_k": 20, "top_p": 0.95, "penalty_repeat": 1.05}
    path = with_sampling(synthetic_model, tmp_path / "sampled.gguf", values)
    info = read_gguf(path)
    assert dict(info.sampling) == {
        "temperature": pytest.approx(0.6), "top_k": 20.0, "top_p": pytest.approx(0.95),
        "repeat_penalty": pytest.approx(1.05),
    }  # fmt: skip
    assert read_gguf(synthetic_model).sampling == ()
