"""Context memory per attention kind: what a model keeps per token and what it keeps anyway.

Sized the way the engine (llama.cpp 0c1e57098) allocates it:

* full attention: K and V rows of ``key_length x kv_heads`` (and value) per token, for every
  cell of the context, which the engine pads to a multiple of 256;
* sliding-window layers: only ``window + ubatch`` cells (padded), and only on the layers that
  use the window (llama_kv_cache_iswa);
* MLA (DeepSeek-V2/V3): one compressed latent plus the rope dims per token, K only
  (``key_length`` = kv_lora_rank + rope dims, one "head"); no V cache;
* recurrent layers (Mamba-2, short convolutions): a fixed conv and SSM state in F32,
  whatever the context (llama_memory_recurrent);
* layers without attention keep nothing per token.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

KV_PAD = 256  # the engine rounds the context (and a sliding window's cells) up to this
STATE_BYTES = 4  # recurrent state is F32

# Families whose sliding-window layers llama.cpp sets from a pattern when the file has no
# per-layer list: (pattern, dense_first), as in their load_arch_hparams.
SWA_PATTERNS: dict[str, tuple[int, bool]] = {"gpt-oss": (2, False), "smallthinker": (4, True)}
SWA_FORCED_WINDOW = {"smallthinker": 4096}  # its loader overrides the file's window
# Families where a layer with no KV heads is a recurrent layer (Mamba-2 or short conv).
HYBRID_ARCHITECTURES = frozenset({"granitehybrid", "lfm2", "lfm2moe", "nemotron_h",
                                  "nemotron_h_moe", "falcon-h1", "jamba"})  # fmt: skip
RECURRENT_ARCHITECTURES = frozenset({"mamba", "mamba2", "rwkv6", "rwkv7", "arwkv7"})


def _pad(value: int, to: int = KV_PAD) -> int:
    return -(-value // to) * to


@dataclass(frozen=True)
class AttentionLayer:
    """One layer's per-token cache: K and V elements (V is 0 under MLA), and whether it only
    looks back a sliding window."""

    k: int
    v: int
    sliding: bool = False


@dataclass(frozen=True)
class ContextMemory:
    """A model's context memory: its attention layers, its window, its recurrent state."""

    layers: tuple[AttentionLayer, ...]
    sliding_window: int = 0
    recurrent_layers: int = 0
    recurrent_bytes: int = 0  # all recurrent layers together, one sequence
    mla: bool = False

    def cells(self, layer: AttentionLayer, n_ctx: int, n_ubatch: int = 512) -> int:
        full = _pad(n_ctx)
        if layer.sliding and self.sliding_window:
            return min(full, _pad(self.sliding_window + n_ubatch))
        return full

    def kv_bytes(self, n_ctx: int, n_ubatch: int = 512, bytes_per_element: float = 2.0) -> int:
        """KV cache the engine allocates for a context of ``n_ctx`` tokens."""
        elements = sum((layer.k + layer.v) * self.cells(layer, n_ctx, n_ubatch)
                       for layer in self.layers)  # fmt: skip
        return int(elements * bytes_per_element)

    def state_bytes(self, n_ctx: int, n_ubatch: int = 512, bytes_per_element: float = 2.0) -> int:
        """Everything kept for a context: KV cache plus recurrent state."""
        return self.kv_bytes(n_ctx, n_ubatch, bytes_per_element) + self.recurrent_bytes

    def read_bytes(self, filled: int, bytes_per_element: float = 2.0) -> int:
        """Cache bytes one decode step reads with ``filled`` tokens in the context."""
        elements = 0
        for layer in self.layers:
            seen = (
                min(filled, self.sliding_window)
                if layer.sliding and self.sliding_window
                else filled
            )
            elements += (layer.k + layer.v) * seen
        return int(elements * bytes_per_element) + self.recurrent_bytes

    def describe(self) -> str:
        """How the model remembers its context, in a few words."""
        parts = []
        n_sliding = sum(layer.sliding for layer in self.layers)
        if self.mla:
            parts.append(f"MLA latent cache on {len(self.layers)} layers")
        elif n_sliding:
            full = len(self.layers) - n_sliding
            parts.append(f"{full} full-attention + {n_sliding} sliding-window "
                         f"({self.sliding_window}) layers")  # fmt: skip
        else:
            parts.append(f"{len(self.layers)} attention layers")
        if self.recurrent_layers:
            parts.append(f"{self.recurrent_layers} recurrent layers")
        return ", ".join(parts)

    @classmethod
    def uniform(cls, n_layers: int, n_kv_heads: int, head_dim: int) -> ContextMemory:
        """Full attention on every layer, K and V of ``n_kv_heads x head_dim``."""
        width = n_kv_heads * head_dim
        return cls(layers=tuple(AttentionLayer(width, width) for _ in range(n_layers)))

    @classmethod
    def from_header(cls, arch: str, value: Callable[[str], Any]) -> ContextMemory:
        """From a GGUF header; ``value(key)`` returns the ``{arch}.key`` field or None."""

        def number(key: str, default: int = 0) -> int:
            raw = value(key)
            return (
                int(raw) if isinstance(raw, (int, float)) and not isinstance(raw, bool) else default
            )

        n_layers = max(0, number("block_count") - number("nextn_predict_layers"))
        n_embd, n_head = number("embedding_length"), number("attention.head_count")
        head_counts = value("attention.head_count")
        if isinstance(head_counts, list) and head_counts:
            n_head = max(head_counts)
        default_dim = n_embd // n_head if n_head else 0
        k_dim = number("attention.key_length", default_dim)
        v_dim = number("attention.value_length", default_dim)
        mla = bool(number("attention.key_length_mla") and number("attention.value_length_mla"))
        raw_kv = value("attention.head_count_kv")
        if isinstance(raw_kv, list):
            kv_heads = [int(x) for x in raw_kv[:n_layers]]
            kv_heads += [kv_heads[-1] if kv_heads else n_head] * (n_layers - len(kv_heads))
        else:
            kv_heads = [number("attention.head_count_kv", n_head)] * n_layers
        if arch in RECURRENT_ARCHITECTURES:
            recurrent = [True] * n_layers
        elif arch in HYBRID_ARCHITECTURES:
            recurrent = [heads == 0 for heads in kv_heads]
        else:
            recurrent = [False] * n_layers
        sliding = _sliding_layers(arch, value, n_layers)
        window = number("attention.sliding_window") if any(sliding) else 0
        window = SWA_FORCED_WINDOW.get(arch, window) if window else 0
        layers = tuple(
            AttentionLayer(k_dim * kv_heads[i], 0 if mla else v_dim * kv_heads[i], sliding[i])
            for i in range(n_layers)
            if not recurrent[i]
        )
        n_recurrent = sum(recurrent)
        return cls(
            layers=layers,
            sliding_window=window,
            recurrent_layers=n_recurrent,
            recurrent_bytes=n_recurrent * recurrent_layer_bytes(value, n_embd),
            mla=mla,
        )


def spread_layers(n_layers: int, count: int) -> list[int]:
    """``count`` layers spread evenly over ``n_layers`` (a hybrid's attention layers, when
    only their number is known)."""
    step = n_layers / max(1, count)
    return sorted({int(i * step + step / 2) for i in range(count)})


def _sliding_layers(arch: str, value: Callable[[str], Any], n_layers: int) -> list[bool]:
    if arch not in SWA_PATTERNS or not value("attention.sliding_window"):
        return [False] * n_layers
    pattern = value("attention.sliding_window_pattern")
    if isinstance(pattern, list):
        return [bool(x) for x in pattern[:n_layers]] + [False] * (n_layers - len(pattern))
    n_pattern, dense_first = SWA_PATTERNS[arch]
    if isinstance(pattern, int) and not isinstance(pattern, bool):
        n_pattern = pattern
    if dense_first:
        return [n_pattern == 0 or i % n_pattern != 0 for i in range(n_layers)]
    return [n_pattern == 0 or i % n_pattern < n_pattern - 1 for i in range(n_layers)]


def recurrent_layer_bytes(value: Callable[[str], Any], n_embd: int) -> int:
    """Conv plus SSM state of one recurrent layer (llama_hparams::n_embd_r + n_embd_s)."""

    def number(key: str) -> int:
        raw = value(key)
        return int(raw) if isinstance(raw, (int, float)) and not isinstance(raw, bool) else 0

    l_cache = number("shortconv.l_cache")
    if l_cache:  # LFM2's short convolutions
        return n_embd * (l_cache - 1) * STATE_BYTES
    d_conv, d_inner = number("ssm.conv_kernel"), number("ssm.inner_size")
    d_state, n_group = number("ssm.state_size"), number("ssm.group_count")
    conv = max(0, d_conv - 1) * (d_inner + 2 * n_group * d_state)
    return (conv + d_state * d_inner) * STATE_BYTES
