"""Write a tiny random-weight MoE GGUF (qwen3moe) for the self-test and the test suite.

The model is real in every way the engine cares about: it has the tensors, metadata,
tokenizer and chat template of a Qwen3-MoE file, so loading, placement, routing and
generation all run the same code paths as a downloaded model. Only the weights are random.
Two things are shaped on purpose:

* a constant component in every token embedding, which the router rows read with
  decreasing weight, so expert 0 is the hottest and routing is skewed;
* the output head prefers whole-word tokens over byte tokens, so replies print as words.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

WORDS = (
    "hello world expert router token layer memory speed model chat reply local "
    "fast small mixture quiet green river stone light cloud"
).split()

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)


@dataclass(frozen=True)
class SyntheticSpec:
    """Shape of the synthetic model. The defaults load and generate in well under a second."""

    n_layers: int = 4
    n_embd: int = 64
    n_head: int = 4
    n_head_kv: int = 2
    head_dim: int = 16
    n_experts: int = 8
    n_experts_used: int = 2
    expert_ffn: int = 32
    context_length: int = 2048
    router_skew: float = 3.0
    seed: int = 1234


def _vocab() -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>"]
    types = [2, 3, 3]  # UNKNOWN, CONTROL, CONTROL
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [6] * 256  # BYTE
    tokens += ["\u2581" + word for word in WORDS]
    types += [1] * len(WORDS)  # NORMAL
    scores = [0.0] * (3 + 256) + [-float(i) for i in range(len(WORDS))]
    return tokens, scores, types


def qwen3moe_writer(
    path: Path, spec: SyntheticSpec, name: str, file_type: int, n_vocab: int = 0
) -> Any:
    """A ``GGUFWriter`` with every key of a qwen3moe file of ``spec``'s shape and the tiny
    tokenizer, padded with unused tokens up to ``n_vocab`` (its embedding rows); tensors next.
    """
    from gguf import GGUFWriter

    tokens, scores, types = _vocab()
    pad = max(0, n_vocab - len(tokens))
    tokens += [f"<unused{i}>" for i in range(pad)]
    scores += [0.0] * pad
    types += [5] * pad  # UNUSED
    e, d, f = spec.n_embd, spec.head_dim, spec.expert_ffn
    writer = GGUFWriter(str(path), "qwen3moe")
    writer.add_name(name)
    writer.add_file_type(file_type)
    writer.add_block_count(spec.n_layers)
    writer.add_context_length(spec.context_length)
    writer.add_embedding_length(e)
    writer.add_feed_forward_length(f * spec.n_experts_used)
    writer.add_head_count(spec.n_head)
    writer.add_head_count_kv(spec.n_head_kv)
    writer.add_key_length(d)
    writer.add_value_length(d)
    writer.add_rope_freq_base(1_000_000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_expert_count(spec.n_experts)
    writer.add_expert_used_count(spec.n_experts_used)
    writer.add_expert_feed_forward_length(f)

    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    return writer


def build_synthetic_moe(path: str | Path, spec: SyntheticSpec | None = None) -> Path:
    """Write the synthetic MoE to ``path`` and return it.

    Args:
        path: destination ``.gguf`` file; its folder must exist.
        spec: model shape; ``SyntheticSpec()`` when omitted.

    Returns:
        The path written.
    """
    from gguf import LlamaFileType

    spec = spec or SyntheticSpec()
    path = Path(path)
    rng = np.random.default_rng(spec.seed)
    n_vocab = len(_vocab()[0])
    n_words = len(WORDS)
    e, d, f = spec.n_embd, spec.head_dim, spec.expert_ffn

    def normal(*shape: int, scale: float = 1.0) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    writer = qwen3moe_writer(path, spec, "Synthetic MoE (test model)", LlamaFileType.MOSTLY_F16)

    # Dimension 0 carries a constant signal through the residual stream (see module doc).
    embd = normal(n_vocab, e, scale=0.3)
    embd[:, 0] = 3.0
    writer.add_tensor("token_embd.weight", embd.astype(np.float16))
    writer.add_tensor("output_norm.weight", np.ones(e, dtype=np.float32))
    head = normal(n_vocab, e, scale=0.2)
    head[:, 0] = -1.0
    head[3 + 256 : 3 + 256 + n_words, 0] = 1.0
    head[2, 0] = 0.35  # end-of-sequence: reachable, not dominant
    writer.add_tensor("output.weight", head.astype(np.float16))

    ranks = np.linspace(1.0, 0.0, spec.n_experts, dtype=np.float32)
    for layer in range(spec.n_layers):
        p = f"blk.{layer}."
        writer.add_tensor(p + "attn_norm.weight", np.ones(e, dtype=np.float32))
        writer.add_tensor(
            p + "attn_q.weight", normal(spec.n_head * d, e, scale=0.1).astype(np.float16)
        )
        writer.add_tensor(
            p + "attn_k.weight", normal(spec.n_head_kv * d, e, scale=0.1).astype(np.float16)
        )
        writer.add_tensor(
            p + "attn_v.weight", normal(spec.n_head_kv * d, e, scale=0.1).astype(np.float16)
        )
        writer.add_tensor(
            p + "attn_output.weight", normal(e, spec.n_head * d, scale=0.02).astype(np.float16)
        )
        writer.add_tensor(p + "attn_q_norm.weight", np.ones(d, dtype=np.float32))
        writer.add_tensor(p + "attn_k_norm.weight", np.ones(d, dtype=np.float32))
        writer.add_tensor(p + "ffn_norm.weight", np.ones(e, dtype=np.float32))
        router = normal(spec.n_experts, e, scale=0.15)
        router[:, 0] = spec.router_skew * ranks
        writer.add_tensor(p + "ffn_gate_inp.weight", router)
        exps = spec.n_experts
        writer.add_tensor(
            p + "ffn_gate_exps.weight", normal(exps, f, e, scale=0.1).astype(np.float16)
        )
        writer.add_tensor(
            p + "ffn_up_exps.weight", normal(exps, f, e, scale=0.1).astype(np.float16)
        )
        writer.add_tensor(
            p + "ffn_down_exps.weight", normal(exps, e, f, scale=0.02).astype(np.float16)
        )

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
