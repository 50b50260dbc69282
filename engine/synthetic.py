"""Write tiny random-weight MoE GGUFs of every catalog architecture, for the self-test and the
test suite, and real-size header-only ones for memory dry runs.

The models are real in every way the engine cares about: each has the tensors, metadata,
special tokens and chat template of its family's files, so loading, placement, routing and
generation all run the same code paths as a downloaded model. Only the weights are random.
``build_synthetic_moe`` is the qwen3moe one with the tiniest tokenizer. Shaped on purpose:

* a constant component in every token embedding, which the router rows read with
  decreasing weight, so expert 0 is the hottest and routing is skewed;
* the output head prefers whole-word tokens over byte tokens, so replies print as words,
  and leaves the end-of-sequence token reachable.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
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


def build_synthetic_moe(path: str | Path, spec: SyntheticSpec | None = None) -> Path:
    """Write the synthetic qwen3moe MoE (the tiny tokenizer, no family tokens) to ``path``.

    Args:
        path: destination ``.gguf`` file; its folder must exist.
        spec: model shape; ``SyntheticSpec()`` when omitted.

    Returns:
        The path written.
    """
    return build_arch_model(
        path, "qwen3moe", spec or SyntheticSpec(), name="Synthetic MoE (test model)",
        tokens_of="plain",
    )  # fmt: skip


def _vocab() -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>"]
    types = [2, 3, 3]  # UNKNOWN, CONTROL, CONTROL
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [6] * 256  # BYTE
    tokens += ["\u2581" + word for word in WORDS]
    types += [1] * len(WORDS)  # NORMAL
    scores = [0.0] * (3 + 256) + [-float(i) for i in range(len(WORDS))]
    return tokens, scores, types


# -- every catalog architecture ----------------------------------------------------------------
#
# Tensor names, shapes (ggml order: ne0 first) and hyperparameter keys follow each family's
# loader in llama.cpp (src/models/<family>.cpp of the engine we pin: load_arch_hparams and
# load_arch_tensors). Shapes below are ggml's; numpy arrays are their reverse.


@dataclass(frozen=True)
class SyntheticSpec:
    """The size of a test model of any architecture (or, header only, of a real model).

    The defaults load and generate in well under a second. Fields a family does not use are
    ignored. ``attention_layers`` lists the layers that
    have attention in hybrid families (the others are Mamba-2 or short-convolution layers);
    empty means every layer.
    """

    n_layers: int = 4
    n_embd: int = 64
    n_head: int = 4
    n_head_kv: int = 2
    head_dim: int = 16
    n_experts: int = 8
    n_experts_used: int = 2
    expert_ffn: int = 32
    n_ff: int = 0  # dense FFN (leading dense layers); 0: expert_ffn x experts used
    n_shared: int = 0  # shared experts (count), each expert_ffn wide unless shared_ffn is set
    shared_ffn: int = 0
    leading_dense: int = 0
    n_vocab: int = 0  # 0: the tiny tokenizer only; more pads it with unused tokens
    context_length: int = 2048
    sliding_window: int = 0
    kv_lora_rank: int = 32  # MLA
    rope_dim: int = 8  # MLA: rope part of each query/key head
    nope_dim: int = 16  # MLA: the rest of it
    v_head_dim: int = 16  # MLA
    ssm_d_conv: int = 4
    ssm_d_state: int = 16
    ssm_n_group: int = 1
    ssm_head_dim: int = 16
    shortconv_l_cache: int = 3
    attention_layers: tuple[int, ...] = ()
    nextn_layers: int = 0  # multi-token-prediction layers after the trunk (GLM), never loaded
    router_skew: float = 3.0  # weight of the embeddings' constant on expert 0 .. E-1 (heat)
    seed: int = 1234

    @property
    def dense_ffn(self) -> int:
        return self.n_ff or self.expert_ffn * self.n_experts_used


@dataclass(frozen=True)
class FamilyTokens:
    """A family's special tokens as its real GGUFs mark them, and its BOS/EOS/EOT."""

    control: tuple[str, ...]
    user_defined: tuple[str, ...] = ()
    bos: str | None = None
    eos: str = ""
    eot: str | None = None
    add_bos: bool = False


# DeepSeek's markers are written with full-width bars and a "▁" for each space.
DEEPSEEK_BOS = "<\uff5cbegin\u2581of\u2581sentence\uff5c>"
DEEPSEEK_EOS = "<\uff5cend\u2581of\u2581sentence\uff5c>"

# The special tokens of each family's real tokenizer (its tokenizer_config added tokens:
# "special": true ones are CONTROL, the rest USER_DEFINED, as convert_hf_to_gguf writes them).
FAMILY_TOKENS: dict[str, FamilyTokens] = {
    # build_synthetic_moe's: the tiny SPM vocabulary's own <unk>, <s>, </s>, nothing more
    "plain": FamilyTokens((), bos="<s>", eos="</s>", add_bos=True),
    "qwen": FamilyTokens(
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        ("<think>", "</think>", "<tool_call>", "</tool_call>"),
        bos="<|endoftext|>", eos="<|im_end|>",
    ),
    "gpt-oss": FamilyTokens(
        ("<|startoftext|>", "<|endoftext|>", "<|return|>", "<|constrain|>", "<|channel|>",
         "<|start|>", "<|end|>", "<|message|>", "<|call|>"),
        bos="<|startoftext|>", eos="<|return|>",
    ),
    "olmoe": FamilyTokens(("<|endoftext|>", "<|padding|>"), ("<|user|>", "<|assistant|>",
                          "<|system|>"), bos="<|endoftext|>", eos="<|endoftext|>"),
    "granite": FamilyTokens(
        ("<|end_of_text|>", "<|start_of_role|>", "<|end_of_role|>", "<|tool_call|>"),
        bos="<|end_of_text|>", eos="<|end_of_text|>",
    ),
    "mistral": FamilyTokens(("<unk>", "<s>", "</s>"), bos="<s>", eos="</s>", add_bos=True),
    "phi": FamilyTokens(
        ("<s>", "</s>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
        bos="<s>", eos="<|endoftext|>", eot="<|end|>", add_bos=False,
    ),
    "deepseek": FamilyTokens((DEEPSEEK_BOS, DEEPSEEK_EOS), bos=DEEPSEEK_BOS, eos=DEEPSEEK_EOS,
                             add_bos=True),
    "ernie": FamilyTokens(("<unk>", "<s>", "</s>", "<|begin_of_sentence|>",
                           "<|end_of_sentence|>"), bos="<s>", eos="</s>", add_bos=True),
    "lfm2": FamilyTokens(("<|pad|>", "<|startoftext|>", "<|endoftext|>", "<|im_start|>",
                          "<|im_end|>"), bos="<|startoftext|>", eos="<|im_end|>", add_bos=True),
    "glm": FamilyTokens(
        ("<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>",
         "<|user|>", "<|assistant|>", "<|observation|>"),
        ("<think>", "</think>", "<tool_call>", "</tool_call>"),
        bos="[gMASK]", eos="<|endoftext|>", eot="<|user|>",
    ),
}  # fmt: skip

# Catalog architecture -> (tokenizer family, writer of its keys and tensors).
ARCHITECTURES = (
    "qwen3moe", "gpt-oss", "olmoe", "granitemoe", "granitehybrid", "llama", "phimoe",
    "deepseek2", "ernie4_5-moe", "lfm2moe", "glm4moe", "qwen2moe", "smallthinker",
)  # fmt: skip
_FAMILY = {
    "qwen3moe": "qwen", "qwen2moe": "qwen", "smallthinker": "qwen", "gpt-oss": "gpt-oss",
    "olmoe": "olmoe", "granitemoe": "granite", "granitehybrid": "granite", "llama": "mistral",
    "phimoe": "phi", "deepseek2": "deepseek", "ernie4_5-moe": "ernie", "lfm2moe": "lfm2",
    "glm4moe": "glm",
}  # fmt: skip

# Test shapes: what each family needs beyond SyntheticSpec() to take its real code path.
TEST_DIMS: dict[str, SyntheticSpec] = {
    "qwen3moe": SyntheticSpec(),
    "gpt-oss": SyntheticSpec(sliding_window=16, n_head_kv=2, expert_ffn=64),
    "olmoe": SyntheticSpec(n_head_kv=4),  # no grouped-query attention
    "granitemoe": SyntheticSpec(),
    # Mamba-2 layers around one attention layer; a shared expert, as in Granite 4.0-H.
    "granitehybrid": SyntheticSpec(attention_layers=(2,), n_shared=1, shared_ffn=64),
    "llama": SyntheticSpec(expert_ffn=64),  # Mixtral: experts as wide as a dense FFN
    "phimoe": SyntheticSpec(),
    # MLA with a leading dense layer and two shared experts, as in DeepSeek-V2-Lite.
    "deepseek2": SyntheticSpec(leading_dense=1, n_shared=2, n_head_kv=1),
    "ernie4_5-moe": SyntheticSpec(leading_dense=1, n_shared=2, shared_ffn=64),
    # Short-convolution layers with attention in two, the first layer dense, as in LFM2.
    "lfm2moe": SyntheticSpec(attention_layers=(1, 3), leading_dense=1),
    "glm4moe": SyntheticSpec(leading_dense=1, n_shared=1, nextn_layers=1),
    "qwen2moe": SyntheticSpec(n_shared=1, shared_ffn=64),
    "smallthinker": SyntheticSpec(sliding_window=32),
}

_Tensor = tuple[str, tuple[int, ...], str]  # name, ggml shape, how to fill it


def _attention(
    p: str, d: SyntheticSpec, *, q_norm: bool = False, bias: bool = False
) -> list[_Tensor]:
    q, kv = d.n_head * d.head_dim, d.n_head_kv * d.head_dim
    out: list[_Tensor] = [
        (p + "attn_q.weight", (d.n_embd, q), "w"),
        (p + "attn_k.weight", (d.n_embd, kv), "w"),
        (p + "attn_v.weight", (d.n_embd, kv), "w"),
        (p + "attn_output.weight", (q, d.n_embd), "out"),
    ]
    if bias:
        out += [(p + "attn_q.bias", (q,), "zeros"), (p + "attn_k.bias", (kv,), "zeros"),
                (p + "attn_v.bias", (kv,), "zeros")]  # fmt: skip
    if q_norm:
        out += [(p + "attn_q_norm.weight", (d.head_dim,), "ones"),
                (p + "attn_k_norm.weight", (d.head_dim,), "ones")]  # fmt: skip
    return out


def _experts(p: str, d: SyntheticSpec, *, probs_bias: bool = False) -> list[_Tensor]:
    e, f, n = d.n_embd, d.expert_ffn, d.n_experts
    out: list[_Tensor] = [(p + "ffn_gate_inp.weight", (e, n), "router")]
    if probs_bias:
        out.append((p + "exp_probs_b.bias", (n,), "zeros"))
    out += [(p + "ffn_gate_exps.weight", (e, f, n), "w"),
            (p + "ffn_up_exps.weight", (e, f, n), "w")]  # fmt: skip
    out.append((p + "ffn_down_exps.weight", (f, e, n), "out"))
    return out


def _shared(p: str, d: SyntheticSpec, gate_inp: bool = False) -> list[_Tensor]:
    f = d.shared_ffn or d.expert_ffn * d.n_shared
    out: list[_Tensor] = [(p + "ffn_gate_shexp.weight", (d.n_embd, f), "w"),
           (p + "ffn_up_shexp.weight", (d.n_embd, f), "w"),
           (p + "ffn_down_shexp.weight", (f, d.n_embd), "out")]  # fmt: skip
    if gate_inp:
        out.append((p + "ffn_gate_inp_shexp.weight", (d.n_embd,), "w"))
    return out


def _dense(p: str, d: SyntheticSpec) -> list[_Tensor]:
    out: list[_Tensor] = [(p + "ffn_gate.weight", (d.n_embd, d.dense_ffn), "w"),
            (p + "ffn_up.weight", (d.n_embd, d.dense_ffn), "w"),
            (p + "ffn_down.weight", (d.dense_ffn, d.n_embd), "out")]  # fmt: skip
    return out


def _norm(name: str, d: SyntheticSpec, bias: bool = False) -> list[_Tensor]:
    out: list[_Tensor] = [(name + ".weight", (d.n_embd,), "ones")]
    return [*out, (name + ".bias", (d.n_embd,), "zeros")] if bias else out


def _family_layout(arch: str, d: SyntheticSpec) -> tuple[dict[str, Any], list[_Tensor]]:
    """The architecture's own keys (without the ``{arch}.`` prefix) and its tensors."""
    keys: dict[str, Any] = {
        "block_count": d.n_layers + d.nextn_layers,
        "context_length": d.context_length,
        "embedding_length": d.n_embd,
        "feed_forward_length": d.dense_ffn,
        "attention.head_count": d.n_head,
        "attention.head_count_kv": d.n_head_kv,
        "attention.key_length": d.head_dim,
        "attention.value_length": d.head_dim,
        "attention.layer_norm_rms_epsilon": 1e-6,
        "rope.freq_base": 10000.0,
        "rope.dimension_count": d.head_dim,
        "expert_count": d.n_experts,
        "expert_used_count": d.n_experts_used,
        "expert_feed_forward_length": d.expert_ffn,
    }
    if arch in ("olmoe", "granitemoe", "granitehybrid", "llama", "phimoe"):
        # These read their experts' width from feed_forward_length.
        keys["feed_forward_length"] = d.expert_ffn
        del keys["expert_feed_forward_length"]
    tensors: list[_Tensor] = [("token_embd.weight", (d.n_embd, d.n_vocab), "embd")]
    head = [("output_norm.weight", (d.n_embd,), "ones"),
            ("output.weight", (d.n_embd, d.n_vocab), "head")]  # fmt: skip
    layers = range(d.n_layers)
    if arch == "qwen3moe":
        keys["rope.freq_base"] = 1_000_000.0
    if arch in ("qwen3moe", "smallthinker", "olmoe", "qwen2moe", "llama", "granitemoe"):
        if arch == "smallthinker":
            keys["expert_gating_func"] = 1  # softmax
            if d.sliding_window:
                keys["attention.sliding_window"] = d.sliding_window
        if arch == "granitemoe":
            keys.update({"logit_scale": 6.0, "residual_scale": 0.22, "embedding_scale": 12.0,
                         "attention.scale": 0.015625})  # fmt: skip
        if arch == "llama":
            keys["vocab_size"] = d.n_vocab
        for i in layers:
            p = f"blk.{i}."
            tensors += _norm(p + "attn_norm", d) + _norm(p + "ffn_norm", d)
            if arch == "olmoe":  # q/k norms over the whole projection, not per head
                tensors += [
                    *_attention(p, d),
                    (p + "attn_q_norm.weight", (d.n_head * d.head_dim,), "ones"),
                    (p + "attn_k_norm.weight", (d.n_head_kv * d.head_dim,), "ones"),
                ]
            else:
                tensors += _attention(p, d, q_norm=arch == "qwen3moe", bias=arch == "qwen2moe")
            tensors += _experts(p, d)
            if arch == "qwen2moe":
                tensors += _shared(p, d, gate_inp=True)
        if arch == "qwen2moe":
            keys["expert_shared_feed_forward_length"] = d.shared_ffn or d.expert_ffn * d.n_shared
    elif arch == "gpt-oss":
        keys["attention.sliding_window"] = d.sliding_window
        keys["attention.layer_norm_rms_epsilon"] = 1e-5
        for i in layers:
            p = f"blk.{i}."
            tensors += _norm(p + "attn_norm", d) + _norm(p + "post_attention_norm", d)
            tensors += _attention(p, d, bias=True)
            tensors += [(p + "attn_output.bias", (d.n_embd,), "zeros"),
                        (p + "attn_sinks.weight", (d.n_head,), "zeros"),
                        (p + "ffn_gate_inp.bias", (d.n_experts,), "zeros")]  # fmt: skip
            tensors += _experts(p, d)
            f, e, n = d.expert_ffn, d.n_embd, d.n_experts
            tensors += [(p + "ffn_gate_exps.bias", (f, n), "zeros"),
                        (p + "ffn_up_exps.bias", (f, n), "zeros"),
                        (p + "ffn_down_exps.bias", (e, n), "zeros")]  # fmt: skip
    elif arch == "phimoe":
        head = [
            *_norm("output_norm", d, bias=True),
            ("output.weight", (d.n_embd, d.n_vocab), "head"),
            ("output.bias", (d.n_vocab,), "zeros"),
        ]
        for i in layers:
            p = f"blk.{i}."
            tensors += _norm(p + "attn_norm", d, bias=True) + _norm(p + "ffn_norm", d, bias=True)
            tensors += [*_attention(p, d), (p + "attn_output.bias", (d.n_embd,), "zeros")]
            tensors += _experts(p, d)
    elif arch == "granitehybrid":
        keys.update({"logit_scale": 6.0, "residual_scale": 0.22, "embedding_scale": 12.0,
                     "attention.scale": 0.0078125})  # fmt: skip
        d_inner = 2 * d.n_embd
        n_ssm_head = d_inner // d.ssm_head_dim
        bc = 2 * d.ssm_n_group * d.ssm_d_state
        keys.update({"ssm.conv_kernel": d.ssm_d_conv, "ssm.inner_size": d_inner,
                     "ssm.state_size": d.ssm_d_state, "ssm.time_step_rank": n_ssm_head,
                     "ssm.group_count": d.ssm_n_group,
                     "expert_shared_feed_forward_length": d.shared_ffn})  # fmt: skip
        keys["attention.head_count_kv"] = [
            d.n_head_kv if i in d.attention_layers else 0 for i in layers
        ]
        keys["rope.dimension_count"] = d.head_dim
        for i in layers:
            p = f"blk.{i}."
            tensors += _norm(p + "attn_norm", d) + _norm(p + "ffn_norm", d)
            if i in d.attention_layers:
                tensors += _attention(p, d)
            else:
                tensors += [
                    (p + "ssm_in.weight", (d.n_embd, 2 * d_inner + bc + n_ssm_head), "w"),
                    (p + "ssm_conv1d.weight", (d.ssm_d_conv, d_inner + bc), "conv"),
                    (p + "ssm_conv1d.bias", (d_inner + bc,), "zeros"),
                    (p + "ssm_dt.bias", (n_ssm_head,), "zeros"),
                    (p + "ssm_a", (1, n_ssm_head), "ssm_a"),
                    (p + "ssm_d", (1, n_ssm_head), "ones"),
                    (p + "ssm_norm.weight", (d_inner // d.ssm_n_group, d.ssm_n_group), "ones"),
                    (p + "ssm_out.weight", (d_inner, d.n_embd), "out"),
                ]
            tensors += _experts(p, d) + _shared(p, d)
    elif arch == "deepseek2":
        k_mla = d.nope_dim + d.rope_dim
        keys.update({
            "leading_dense_block_count": d.leading_dense,
            "attention.q_lora_rank": 0,  # no query compression, as in V2-Lite
            "attention.kv_lora_rank": d.kv_lora_rank,
            # MLA as llama.cpp converts it: one latent "head" of kv_lora_rank + rope dims
            "attention.key_length": d.kv_lora_rank + d.rope_dim,
            "attention.value_length": d.kv_lora_rank,
            "attention.key_length_mla": k_mla,
            "attention.value_length_mla": d.v_head_dim,
            "attention.head_count_kv": 1,
            "rope.dimension_count": d.rope_dim,
            "expert_shared_count": d.n_shared,
            "expert_weights_scale": 1.0,
            "expert_gating_func": 1,  # softmax
        })  # fmt: skip
        for i in layers:
            p = f"blk.{i}."
            tensors += _norm(p + "attn_norm", d) + _norm(p + "ffn_norm", d)
            tensors += [
                (p + "attn_kv_a_norm.weight", (d.kv_lora_rank,), "ones"),
                (p + "attn_q.weight", (d.n_embd, d.n_head * k_mla), "w"),
                (p + "attn_kv_a_mqa.weight", (d.n_embd, d.kv_lora_rank + d.rope_dim), "w"),
                (p + "attn_k_b.weight", (d.nope_dim, d.kv_lora_rank, d.n_head), "w"),
                (p + "attn_v_b.weight", (d.kv_lora_rank, d.v_head_dim, d.n_head), "w"),
                (p + "attn_output.weight", (d.n_head * d.v_head_dim, d.n_embd), "out"),
            ]
            if i < d.leading_dense:
                tensors += _dense(p, d)
            else:
                tensors += _experts(p, d) + _shared(p, d)
    elif arch == "ernie4_5-moe":
        keys.update({"leading_dense_block_count": d.leading_dense,
                     "interleave_moe_layer_step": 1,
                     "expert_shared_feed_forward_length": d.shared_ffn})  # fmt: skip
        for i in layers:
            p = f"blk.{i}."
            tensors += _norm(p + "attn_norm", d) + _norm(p + "ffn_norm", d) + _attention(p, d)
            if i < d.leading_dense:
                tensors += _dense(p, d)
            else:
                tensors += _experts(p, d, probs_bias=True) + _shared(p, d)
    elif arch == "lfm2moe":
        keys.update({"shortconv.l_cache": d.shortconv_l_cache,
                     "leading_dense_block_count": d.leading_dense,
                     "expert_gating_func": 2,  # sigmoid
                     "attention.head_count_kv": [d.n_head_kv if i in d.attention_layers else 0
                                                 for i in layers]})  # fmt: skip
        head = [("token_embd_norm.weight", (d.n_embd,), "ones")]  # LFM2's output norm
        for i in layers:
            p = f"blk.{i}."
            tensors += _norm(p + "attn_norm", d) + _norm(p + "ffn_norm", d)
            if i in d.attention_layers:
                tensors += _attention(p, d, q_norm=True)
            else:
                tensors += [
                    (p + "shortconv.conv.weight", (d.shortconv_l_cache, d.n_embd), "conv"),
                    (p + "shortconv.in_proj.weight", (d.n_embd, 3 * d.n_embd), "w"),
                    (p + "shortconv.out_proj.weight", (d.n_embd, d.n_embd), "out"),
                ]
            tensors += _dense(p, d) if i < d.leading_dense else _experts(p, d, probs_bias=True)
    elif arch == "glm4moe":
        keys.update({"leading_dense_block_count": d.leading_dense,
                     "expert_shared_count": d.n_shared, "expert_weights_scale": 1.0,
                     "expert_weights_norm": True, "expert_gating_func": 2,
                     "nextn_predict_layers": d.nextn_layers,
                     "rope.dimension_count": d.head_dim // 2})  # fmt: skip
        for i in range(d.n_layers + d.nextn_layers):
            p = f"blk.{i}."
            tensors += _norm(p + "attn_norm", d) + _norm(p + "post_attention_norm", d)
            tensors += _attention(p, d, bias=True)
            tensors += (
                _dense(p, d)
                if i < d.leading_dense
                else (_experts(p, d, probs_bias=True) + _shared(p, d))
            )
            if i >= d.n_layers:  # the multi-token-prediction block
                tensors += [(p + "nextn.eh_proj.weight", (2 * d.n_embd, d.n_embd), "w"),
                            (p + "nextn.enorm.weight", (d.n_embd,), "ones"),
                            (p + "nextn.hnorm.weight", (d.n_embd,), "ones"),
                            (p + "nextn.shared_head_norm.weight", (d.n_embd,), "ones")]  # fmt: skip
    else:
        raise ValueError(f"no test model for architecture {arch!r}")
    # The output head right after the embeddings: the order random weights are drawn in,
    # which keeps build_synthetic_moe's weights what they always were.
    return keys, [tensors[0], *head, *tensors[1:]]


def _stored_f16(kind: str, shape: tuple[int, ...]) -> bool:
    """Matrices are F16; vectors, conv kernels, SSM parameters and routers stay F32."""
    return kind in ("w", "out", "embd", "head") and len(shape) >= 2


def _family_vocab(family: FamilyTokens, n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    tokens, scores, types = _vocab()
    for text in family.control + family.user_defined:
        if text in tokens:  # <unk>, <s>, </s>: already there, with their types
            continue
        tokens.append(text)
        scores.append(0.0)
        types.append(3 if text in family.control else 4)  # CONTROL / USER_DEFINED
    pad = max(0, n_vocab - len(tokens))
    tokens += [f"<unused{i}>" for i in range(pad)]
    scores += [0.0] * pad
    types += [5] * pad
    return tokens, scores, types


def arch_writer(
    path: Path,
    arch: str,
    dims: SyntheticSpec,
    name: str,
    chat_template: str | None = None,
    tokens_of: str | None = None,
) -> tuple[Any, list[_Tensor], int]:
    """A ``GGUFWriter`` holding ``arch``'s keys and tokenizer; its tensor list and the id of
    its end-of-sequence token.

    Tensors are added by the caller: with data (``build_arch_model``) or as header entries
    only (a real model's shape for a memory dry run, ``write_arch_header``). ``tokens_of``
    names the ``FAMILY_TOKENS`` entry when not the architecture's own family.
    """
    from gguf import GGUFWriter

    family = FAMILY_TOKENS[tokens_of or _FAMILY[arch]]
    tokens, scores, types = _family_vocab(family, dims.n_vocab)
    dims = replace(dims, n_vocab=len(tokens))
    keys, tensors = _family_layout(arch, dims)
    writer = GGUFWriter(str(path), arch)
    writer.add_name(name)
    for key, value in keys.items():
        full = f"{arch}.{key}"
        if isinstance(value, bool):
            writer.add_bool(full, value)
        elif isinstance(value, list):
            writer.add_array(full, value)
        elif isinstance(value, float):
            writer.add_float32(full, value)
        else:
            writer.add_uint32(full, value)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    index = {text: i for i, text in enumerate(tokens)}
    writer.add_bos_token_id(index[family.bos] if family.bos else 1)
    writer.add_eos_token_id(index[family.eos])
    if family.eot:
        writer.add_eot_token_id(index[family.eot])
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(family.add_bos)
    writer.add_add_eos_token(False)
    writer.add_chat_template(chat_template or CHAT_TEMPLATE)
    return writer, tensors, index[family.eos]


def build_arch_model(
    path: str | Path,
    arch: str,
    dims: SyntheticSpec | None = None,
    chat_template: str | None = None,
    name: str | None = None,
    tokens_of: str | None = None,
) -> Path:
    """Write a tiny random-weight model of catalog architecture ``arch`` and return its path.

    Every tensor, key and special token is the family's own, so loading, placement and
    generation take that family's code path in the engine. Shaped as the module says:
    skewed routing (``dims.router_skew``), whole words preferred, end of sequence reachable.
    """
    from gguf import LlamaFileType

    path = Path(path)
    dims = dims or TEST_DIMS[arch]
    rng = np.random.default_rng(dims.seed)
    writer, tensors, eos = arch_writer(
        path, arch, dims, name or f"Synthetic {arch} (test model)", chat_template, tokens_of
    )
    writer.add_file_type(LlamaFileType.MOSTLY_F16)
    n_words = len(WORDS)
    ranks = np.linspace(1.0, 0.0, dims.n_experts, dtype=np.float32)
    for name, shape, kind in tensors:
        dims_np = tuple(reversed(shape))
        if kind == "ones":
            data = np.ones(dims_np, dtype=np.float32)
        elif kind == "zeros":
            data = np.zeros(dims_np, dtype=np.float32)
        elif kind == "ssm_a":
            data = -np.linspace(1.0, 4.0, int(np.prod(dims_np)), dtype=np.float32).reshape(dims_np)
        elif kind == "router":
            data = (rng.standard_normal(dims_np) * 0.15).astype(np.float32)
            data[:, 0] = dims.router_skew * ranks
        elif kind == "embd":
            data = (rng.standard_normal(dims_np) * 0.3).astype(np.float32)
            data[:, 0] = 3.0
        elif kind == "head":
            data = (rng.standard_normal(dims_np) * 0.2).astype(np.float32)
            data[:, 0] = -1.0
            data[3 + 256 : 3 + 256 + n_words, 0] = 1.0
            data[eos, 0] = 0.35  # end-of-sequence: reachable, not dominant
        else:
            scale = {"w": 0.1, "out": 0.02, "conv": 0.3}[kind]
            data = (rng.standard_normal(dims_np) * scale).astype(np.float32)
        if _stored_f16(kind, shape):
            data = data.astype(np.float16)
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_arch_header(
    path: str | Path, arch: str, dims: SyntheticSpec, name: str, chat_template: str | None = None
) -> Path:
    """A model of ``dims``'s real size with its header only: the file is extended to its full
    length as a sparse file (no disk used), for the engine's memory dry run, which reads no
    weights. Tensors are declared F16 except 1-D ones (F32)."""
    from gguf import GGMLQuantizationType, LlamaFileType

    from engine.gguf_file import read_header_extent

    path = Path(path)
    writer, tensors, _eos = arch_writer(path, arch, dims, name, chat_template)
    writer.add_file_type(LlamaFileType.MOSTLY_F16)
    for tensor_name, shape, kind in tensors:
        f32 = not _stored_f16(kind, shape)
        dtype = np.float32 if f32 else np.float16
        n_bytes = int(np.prod(shape)) * (4 if f32 else 2)
        raw = GGMLQuantizationType.F32 if f32 else GGMLQuantizationType.F16
        writer.add_tensor_info(tensor_name, tuple(reversed(shape)), dtype, n_bytes, raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    with path.open("r+b") as handle:
        handle.truncate(read_header_extent(path))
    return path


# For writing real-size headers of catalog models (memory dry runs): what the catalog does not
# say about their layers.
_LEADING_DENSE = {"deepseek2": 1, "glm4moe": 1, "ernie4_5-moe": 1, "lfm2moe": 2}
_NEXTN = {"glm4moe": 1}


def catalog_dims(model: Any) -> SyntheticSpec:
    """A ``catalog.CatalogModel``'s real shape as ``SyntheticSpec``, for ``write_arch_header``."""
    from engine.context_memory import spread_layers

    memory = dict(model.memory)
    heads = model.n_heads or max(1, model.n_embd // 128)
    head_dim = model.head_dim or model.n_embd // heads
    dims = SyntheticSpec(
        n_layers=model.n_layers,
        n_embd=model.n_embd,
        n_head=heads,
        n_head_kv=model.n_kv_heads or heads,
        head_dim=head_dim,
        n_experts=model.n_experts,
        n_experts_used=model.n_experts_used,
        expert_ffn=model.expert_ffn or 1024,
        n_ff=(model.expert_ffn or 1024) * 4,
        n_shared=model.n_shared_experts,
        shared_ffn=(model.expert_ffn or 1024) * model.n_shared_experts,
        leading_dense=_LEADING_DENSE.get(model.architecture, 0),
        n_vocab=model.n_vocab or 152_064,
        context_length=model.native_context or 4096,
        sliding_window=int(memory.get("attention.sliding_window", 0)),
        nextn_layers=_NEXTN.get(model.architecture, 0),
    )
    if "attention.key_length_mla" in memory:  # MLA
        rope = int(memory.get("rope.dimension_count", 64))
        dims = replace(
            dims,
            n_head_kv=1,
            rope_dim=rope,
            kv_lora_rank=int(memory["attention.key_length"]) - rope,
            nope_dim=int(memory["attention.key_length_mla"]) - rope,
            v_head_dim=int(memory["attention.value_length_mla"]),
        )
    if "attention_layers" in memory:
        dims = replace(
            dims, attention_layers=tuple(spread_layers(model.n_layers, memory["attention_layers"]))
        )
    if "ssm.inner_size" in memory:
        dims = replace(
            dims,
            ssm_d_conv=int(memory["ssm.conv_kernel"]),
            ssm_d_state=int(memory["ssm.state_size"]),
            ssm_n_group=int(memory["ssm.group_count"]),
            ssm_head_dim=64,
        )
    if "shortconv.l_cache" in memory:
        dims = replace(dims, shortconv_l_cache=int(memory["shortconv.l_cache"]))
    return dims
