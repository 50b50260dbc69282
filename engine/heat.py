"""Expert heat: which experts the router picks, counted per layer, and how skewed that is.

Routing is captured through the context's eval callback: the engine offers every graph
node, we ask for the ``ffn_moe_topk-<layer>`` ones (the I32 ids of the experts chosen for
each token, ``[n_expert_used, n_tokens]``) and copy them out after they are computed. That
costs a Python call per graph node, so it is a profiling mode, off unless turned on.

Counts are kept per layer and expert, for prompt processing and generation apart, and in
time-ordered blocks so that a held-out check can learn the hot set on the first half of the
recorded tokens and measure it on the second half. A profile belongs to one model file and
is saved in the user data folder.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import math
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from engine.errors import StoreError
from engine.library import atomic_write
from engine.paths import heat_dir

Phase = Literal["prompt", "generation"]
PHASES: tuple[Phase, ...] = ("prompt", "generation")
TOPK_PREFIX = b"ffn_moe_topk-"
BLOCK_TOKENS = 256  # tokens per time-ordered block of counts
MAX_BLOCKS = 128  # beyond this, neighbouring blocks merge (halves stay exact enough)
FORMAT_VERSION = 2  # 1 was JSON (.json); 2 is arrays (.npz)


def model_key(path: str | Path) -> str:
    """Identifies a model file's contents cheaply: name, size and modification time."""
    stat = Path(path).stat()
    text = f"{Path(path).name}:{stat.st_size}:{stat.st_mtime_ns}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


# -- counts ----------------------------------------------------------------------------------


@dataclass
class HeatProfile:
    """Routing counts of one model: ``counts[phase][layer, expert]`` = times chosen."""

    n_layers: int
    n_experts: int
    n_experts_used: int
    model: str = ""  # a readable name, for the file
    key: str = ""  # model_key of the file
    counts: dict[str, np.ndarray] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    # time-ordered [layers, experts] count blocks over both phases, for the held-out check
    blocks: list[np.ndarray] = field(default_factory=list)
    block_tokens: list[int] = field(default_factory=list)
    block_size: int = BLOCK_TOKENS  # tokens per block; doubles when blocks merge

    def __post_init__(self) -> None:
        for phase in PHASES:
            self.counts.setdefault(phase, np.zeros((self.n_layers, self.n_experts), np.int64))
            self.tokens.setdefault(phase, 0)

    def copy(self) -> HeatProfile:
        """An independent copy (the GUI reads one while the engine counts into the other)."""
        return replace(
            self,
            counts={phase: counts.copy() for phase, counts in self.counts.items()},
            tokens=dict(self.tokens),
            blocks=[block.copy() for block in self.blocks],
            block_tokens=list(self.block_tokens),
        )

    def permuted(self, order: np.ndarray, key: str, model: str) -> HeatProfile:
        """The same counts for a copy of the file whose layer L holds expert ``order[L][i]``
        at position i (engine.reorder), under that copy's ``key``."""
        rows = np.arange(self.n_layers)[:, None]

        def move(table: np.ndarray) -> np.ndarray:
            return np.ascontiguousarray(table[rows, order])

        return replace(
            self.copy(),
            model=model,
            key=key,
            counts={phase: move(counts) for phase, counts in self.counts.items()},
            blocks=[move(block) for block in self.blocks],
        )

    @property
    def total(self) -> np.ndarray:
        """Counts of both phases together."""
        total: np.ndarray = self.counts["prompt"] + self.counts["generation"]
        return total

    def add(self, phase: Phase, layer: int, ids: np.ndarray, new_tokens: int = 0) -> None:
        """Count the expert ids chosen in ``layer`` for a batch of tokens (any shape).

        ``new_tokens`` is the batch's token count, given with the first layer of each batch.
        """
        if new_tokens or not self.blocks:
            if not self.blocks or self.block_tokens[-1] >= self.block_size:
                self.blocks.append(np.zeros((self.n_layers, self.n_experts), np.int64))
                self.block_tokens.append(0)
                if len(self.blocks) > MAX_BLOCKS:
                    self._merge_blocks()
            self.block_tokens[-1] += new_tokens
            self.tokens[phase] += new_tokens
        if not 0 <= layer < self.n_layers:
            return
        ids = ids[(ids >= 0) & (ids < self.n_experts)]
        per_expert = np.bincount(ids.ravel(), minlength=self.n_experts)
        self.counts[phase][layer] += per_expert
        self.blocks[-1][layer] += per_expert

    def _merge_blocks(self) -> None:
        pairs = range(0, len(self.blocks) - 1, 2)
        blocks = [self.blocks[i] + self.blocks[i + 1] for i in pairs]
        tokens = [self.block_tokens[i] + self.block_tokens[i + 1] for i in pairs]
        if len(self.blocks) % 2:
            blocks.append(self.blocks[-1])
            tokens.append(self.block_tokens[-1])
        self.blocks, self.block_tokens = blocks, tokens
        self.block_size *= 2

    def halves(self) -> tuple[np.ndarray, np.ndarray]:
        """Counts of the first and second half of the recorded tokens (at a block boundary)."""
        if not self.blocks:
            empty = np.zeros((self.n_layers, self.n_experts), np.int64)
            return empty, empty.copy()
        cumulative = np.cumsum(self.block_tokens)
        split = int(np.searchsorted(cumulative, cumulative[-1] / 2)) + 1
        split = min(max(split, 1), len(self.blocks) - 1) if len(self.blocks) > 1 else 1
        first = np.sum(self.blocks[:split], axis=0)
        second = np.sum(self.blocks[split:], axis=0) if split < len(self.blocks) else first * 0
        return first, second

    # -- persistence ---------------------------------------------------------------------------

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Everything, as arrays for ``np.savez``; the inverse of ``from_arrays``."""
        meta = {
            "format": FORMAT_VERSION,
            "model": self.model,
            "key": self.key,
            "n_layers": self.n_layers,
            "n_experts": self.n_experts,
            "n_experts_used": self.n_experts_used,
            "tokens": self.tokens,
            "block_size": self.block_size,
        }
        empty = np.zeros((0, self.n_layers, self.n_experts), np.int32)
        return {
            "meta": np.array(json.dumps(meta)),
            **{f"counts_{phase}": self.counts[phase] for phase in PHASES},
            # int32: a block would need 2^31 picks of one expert to overflow
            "blocks": np.stack(self.blocks).astype(np.int32) if self.blocks else empty,
            "block_tokens": np.array(self.block_tokens, np.int64),
        }

    @classmethod
    def from_arrays(cls, arrays: Any) -> HeatProfile:
        meta = json.loads(str(arrays["meta"]))
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"unknown heat profile format {meta.get('format')!r}")
        profile = cls(
            n_layers=int(meta["n_layers"]),
            n_experts=int(meta["n_experts"]),
            n_experts_used=int(meta["n_experts_used"]),
            model=str(meta.get("model", "")),
            key=str(meta.get("key", "")),
            counts={p: np.array(arrays[f"counts_{p}"], np.int64) for p in PHASES},
            tokens={p: int(meta["tokens"][p]) for p in PHASES},
            blocks=list(np.array(arrays["blocks"], np.int64)),
            block_tokens=[int(t) for t in arrays["block_tokens"]],
            block_size=int(meta.get("block_size", BLOCK_TOKENS)),
        )
        shape = (profile.n_layers, profile.n_experts)
        if any(profile.counts[p].shape != shape for p in PHASES) or any(
            block.shape != shape for block in profile.blocks
        ):
            raise ValueError("heat profile counts do not match its shape")
        if len(profile.blocks) != len(profile.block_tokens):
            raise ValueError("heat profile blocks and their token counts differ in number")
        return profile

    def save(self, directory: Path | None = None) -> Path:
        """Write the profile atomically as arrays (3 MB and a few ms for a 48-layer,
        128-expert model with every block in use; JSON took 1 s and 7.6 MB)."""
        path = (directory or heat_dir()) / f"{self.key or 'unnamed'}.npz"
        if _format_on_disk(path) > FORMAT_VERSION:  # a newer MoE Chat's counts stay as they are
            raise StoreError(f"{path} was written by a newer MoE Chat; it was not overwritten.")
        arrays: dict[str, Any] = self.to_arrays()
        atomic_write(path, lambda f: np.savez(f, **arrays))
        return path

    @classmethod
    def load(cls, key: str, directory: Path | None = None) -> HeatProfile | None:
        """The saved profile of a model, or None (none saved, or unreadable)."""
        try:
            path = (directory or heat_dir()) / f"{key}.npz"
            with path.open("rb") as file, np.load(file, allow_pickle=False) as arrays:
                return cls.from_arrays(arrays)
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile):
            return None


def _format_on_disk(path: Path) -> int:
    """The format of a saved profile (0: none, or unreadable)."""
    try:
        with path.open("rb") as file, np.load(file, allow_pickle=False) as arrays:
            return int(json.loads(str(arrays["meta"])).get("format", 0))
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile):
        return 0


# -- capture -------------------------------------------------------------------------------


class RoutingCapture:
    """The eval callback that counts router choices into a HeatProfile.

    Pass ``callback`` as ``llama_context_params.cb_eval`` and keep this object alive as long
    as the context. Set ``phase`` before each decode.
    """

    def __init__(self, profile: HeatProfile) -> None:
        from engine.native import ggml, llama_cpp

        self.profile = profile
        self.phase: Phase = "prompt"
        self._lib = ggml()
        self._last_layer = -1
        self.callback = llama_cpp().ggml_backend_sched_eval_callback(self._make_callback())

    def _make_callback(self) -> Any:
        # Called for every graph node (~1,500 per token for a 30-layer model), so the
        # asking path is kept to one ctypes call and a bytes comparison.
        get_name = self._lib.ggml_get_name
        layer_of = re.compile(rb"^ffn_moe_topk-(\d+)$").match
        record = self._record

        def on_eval(tensor: int, ask: bool, _user_data: int) -> bool:
            if ask:
                return bool(get_name(tensor).startswith(TOPK_PREFIX))
            match = layer_of(get_name(tensor))
            if match is not None:
                try:
                    record(tensor, int(match.group(1)))
                except Exception:  # never let a Python error cross into the engine
                    return True
            return True  # False here would stop the graph

        return on_eval

    def _record(self, tensor: int, layer: int) -> None:
        view = _TensorHead.from_address(tensor)
        n_used, n_tokens = int(view.ne[0]), int(view.ne[1])
        nbytes = int(self._lib.ggml_nbytes(tensor))
        raw = (ctypes.c_char * nbytes)()
        self._lib.ggml_backend_tensor_get(tensor, raw, 0, nbytes)
        ids = np.lib.stride_tricks.as_strided(
            np.frombuffer(memoryview(raw), np.int32),
            shape=(n_tokens, n_used),
            strides=(int(view.nb[1]), int(view.nb[0])),
        )
        # Layers come in order within a batch: a layer at or below the last one starts the
        # next batch, whose token count is taken there (the last layer keeps output rows only).
        new_batch = layer <= self._last_layer or self._last_layer < 0
        self._last_layer = layer
        self.profile.add(self.phase, layer, ids, new_tokens=n_tokens if new_batch else 0)


class _TensorHead(ctypes.Structure):
    """The start of ``struct ggml_tensor``: type, buffer, ne[4], nb[4] (stable in ggml)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * 4),
        ("nb", ctypes.c_size_t * 4),
    ]


# -- skew metrics --------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerSkew:
    layer: int
    reads: int  # routed expert reads counted
    coverage: tuple[float, ...]  # coverage[j] = share served by the j hottest experts
    entropy: float  # relative to uniform: 1 = perfectly even, 0 = one expert
    top_share: float  # share of the hottest expert
    unused: int  # experts never chosen


def coverage_curve(
    counts: Sequence[int] | np.ndarray, learned_from: np.ndarray | None = None
) -> np.ndarray:
    """c[j] for j = 0..E: share of all reads served when each layer keeps its j hottest experts.

    ``counts`` is one layer's row or a layers x experts table. "Hottest" is by ``counts``
    itself, or by ``learned_from`` for a held-out curve (hot sets learned on other tokens).
    """
    table = np.atleast_2d(np.asarray(counts, np.float64))
    ranking = table if learned_from is None else np.atleast_2d(learned_from)
    order = np.argsort(-ranking, axis=-1, kind="stable")
    served = np.take_along_axis(table, order, axis=-1).sum(axis=0)
    total = served.sum()
    curve = np.concatenate([[0.0], np.cumsum(served)])
    return curve / total if total > 0 else curve


def experts_kept(n_experts: int, fraction: float) -> int:
    """How many experts of a layer the hottest ``fraction`` is."""
    return min(n_experts, max(0, round(fraction * n_experts)))


def layer_skew(counts: np.ndarray) -> list[LayerSkew]:
    rows = []
    for layer, row in enumerate(np.asarray(counts)):
        total = int(row.sum())
        share = row / total if total else np.zeros_like(row, np.float64)
        nonzero = share[share > 0]
        entropy = float(-(nonzero * np.log(nonzero)).sum() / math.log(len(row))) if total else 0.0
        rows.append(
            LayerSkew(
                layer=layer,
                reads=total,
                coverage=tuple(float(c) for c in coverage_curve(row)),
                entropy=entropy,
                top_share=float(share.max()) if total else 0.0,
                unused=int((row == 0).sum()) if total else len(row),
            )
        )
    return rows


@dataclass(frozen=True)
class ReadShares:
    """f, the share of routed expert reads served from VRAM, by measured heat."""

    layer_placement: float  # the experts of whole layers on the GPU, as planned
    per_expert: float  # the same number of experts, the hottest ones of any layer

    def describe(self) -> str:
        return (
            f"layer placement serves {self.layer_placement:.0%} of expert reads from VRAM; "
            f"a per-expert hot set of the same size would serve {self.per_expert:.0%}"
        )


def read_shares(
    counts: np.ndarray, gpu_expert_layers: Sequence[int], partial: tuple[int, float] | None = None
) -> ReadShares | None:
    """f for a plan's GPU expert layers and for the ideal per-expert set of equal size.

    ``partial`` is a layer with a share of its expert bytes on the GPU (its gate and up, say):
    that share of its reads counts as served there. Assumes every expert of the model has the
    same size, as in every MoE GGUF we know. None when nothing was counted.
    """
    total = counts.sum()
    if total == 0:
        return None
    layers = [layer for layer in gpu_expert_layers if 0 <= layer < counts.shape[0]]
    on_gpu = float(counts[layers].sum()) if layers else 0.0
    slots = float(len(layers) * counts.shape[1])
    if partial is not None and 0 <= partial[0] < counts.shape[0]:
        on_gpu += float(counts[partial[0]].sum()) * partial[1]
        slots += counts.shape[1] * partial[1]
    ranked = np.sort(counts.ravel())[::-1]
    whole = int(slots)
    hottest = float(ranked[:whole].sum())
    if whole < ranked.size:
        hottest += float(ranked[whole]) * (slots - whole)
    return ReadShares(on_gpu / float(total), hottest / float(total))


@dataclass(frozen=True)
class HotSets:
    """How many of each layer's hottest experts to keep in VRAM (the hot-experts engine)."""

    per_layer: tuple[int, ...]  # h for each layer (experts 0..h-1 once the file is heat-ordered)
    bytes: int  # what they take
    share: float  # c(h): the share of counted expert reads they serve
    held_out: float | None  # the same for tokens the choice was not made from


def choose_hot_sets(
    counts: np.ndarray,
    expert_bytes: Sequence[int],
    budget: int,
    held_out: np.ndarray | None = None,
    positional: bool = False,
    most: int | None = None,
) -> HotSets:
    """The hot set per layer that serves the most counted reads within ``budget`` bytes.

    ``counts`` is layers x experts (the routing heat the choice is made from),
    ``expert_bytes[layer]`` one expert's weights in that layer. Each layer's curve c(h) is
    concave (experts by falling heat), so taking the next-hottest expert of whichever layer
    gains the most reads per byte is optimal up to the last expert that fits. ``held_out``
    (counts of other tokens) checks the choice: the share it serves there, with the hottest
    ranked by ``counts``, as a real hot set is.

    ``positional``: the hot set of a layer is its first h experts, as the engine takes them
    from a heat-ordered file, whatever ``counts`` says of them (counted after the ordering).
    ``most``: at most this many experts of a layer (the engine splits only h < E).
    """
    table = np.asarray(counts, np.float64)
    n_layers, n_experts = table.shape
    # Each layer's experts hottest first (as they are already in a heat-ordered file): a hot
    # set is then each layer's leading h, and what it serves is hot_read_share's.
    order = (
        np.tile(np.arange(n_experts), (n_layers, 1))
        if positional
        else np.argsort(-table, axis=1, kind="stable")
    )
    ranked = np.take_along_axis(table, order, axis=1)
    cap = n_experts if most is None else min(n_experts, most)
    hot = [0] * n_layers
    used = 0
    while True:
        best, best_gain = -1, -1.0  # an expert never counted still goes in, after the rest
        for layer in range(n_layers):
            h, size = hot[layer], int(expert_bytes[layer])
            if h >= cap or size <= 0 or used + size > budget:
                continue
            gain = ranked[layer, h] / size
            if gain > best_gain:
                best, best_gain = layer, gain
        if best < 0:
            break
        hot[best] += 1
        used += int(expert_bytes[best])
    check = None
    if held_out is not None:
        other = np.take_along_axis(np.asarray(held_out, np.float64), order, axis=1)
        check = hot_read_share(other, hot)
    return HotSets(tuple(hot), used, hot_read_share(ranked, hot) or 0.0, check)


def hot_read_share(counts: np.ndarray, hot_per_layer: Sequence[int]) -> float | None:
    """The share of ``counts`` (layers x experts) that fell on each layer's first h experts:
    what the hot-experts engine read from its hot tensors. None when nothing was counted."""
    table = np.asarray(counts)
    total = float(table.sum())
    if total == 0:
        return None
    served = sum(
        float(table[layer, :h].sum()) for layer, h in enumerate(hot_per_layer[: len(table)])
    )
    return served / total


def profile_for(path: str | Path, n_layers: int, n_experts: int, n_used: int) -> HeatProfile:
    """The saved profile of this model file, or a new empty one."""
    key = model_key(path)
    saved = HeatProfile.load(key)
    if saved is not None and (saved.n_layers, saved.n_experts) == (n_layers, n_experts):
        return saved
    return HeatProfile(n_layers, n_experts, n_used, model=Path(path).name, key=key)


def gpu_layer_order(counts: np.ndarray, n_used: int, batch_tokens: int = 512) -> tuple[int, ...]:
    """Expert layers by how many distinct experts a prompt batch reads, most first.

    Whole-layer placement serves the same k reads per token from every layer, so heat cannot
    change decode. It does change prompt batches: for a layer in RAM the GPU backend copies
    the experts the batch uses, and a skewed layer uses fewer of them. So the flattest
    layers go to the GPU first. Expected distinct experts per batch, with p the layer's
    routing shares and n = batch_tokens x k picks: sum_e 1 - (1 - p_e)^n. Layers never
    counted keep their place after the counted ones.
    """
    totals = counts.sum(axis=1)
    picks = batch_tokens * max(1, n_used)
    scores = []
    for layer, total in enumerate(totals):
        if total == 0:
            continue
        shares = counts[layer] / total
        scores.append((-float(np.sum(1 - (1 - shares) ** picks)), layer))
    return tuple(layer for _, layer in sorted(scores))
