"""Placement: which tensors live on which device. Plain data: planners decide, devices applies."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The kinds of routed-expert tensor (longest first, so a regex takes "gate_up" whole), and
# the one pattern every expert regex of the engine is made from; shared experts ("_shexp")
# never match.
EXPERT_KINDS = ("gate_up", "gate", "up", "down")
EXPERT_TENSORS = rf"\.ffn_({'|'.join(EXPERT_KINDS)})_exps\."  # group 1: the kind
HOT_EXPERT_TENSORS = rf"\.ffn_({'|'.join(EXPERT_KINDS)})_hot_exps\."  # a hot split's part


def expert_layers_pattern(layers: list[int] | range) -> str:
    """Regex for the routed-expert tensors of the given layers only."""
    return expert_parts_pattern("|".join(str(layer) for layer in layers), EXPERT_KINDS)


def expert_parts_pattern(layer: int | str, kinds: tuple[str, ...] | list[str]) -> str:
    """Regex for some routed-expert tensors (``gate``, ``up``, ``down``…) of one layer (or
    of an alternation of layers)."""
    return rf"^blk\.({layer})\.ffn_({'|'.join(kinds)})_exps\."


@dataclass(frozen=True)
class TensorRule:
    """Tensors whose name the regex ``pattern`` *searches* go to the engine device ``device``."""

    pattern: str
    device: str


@dataclass(frozen=True)
class Placement:
    """How a model is split between devices.

    Attributes:
        n_gpu_layers: layers the engine offloads to its GPU devices (-1: all, 0: none).
        rules: tensor overrides applied first-match-wins on top of ``n_gpu_layers``.
        use_mmap: map the file (shares the page cache, starts fast) instead of reading it in.
        offload_kv: False keeps the KV cache and attention in RAM even for GPU layers.
        label: a short human description shown in the app.
    """

    n_gpu_layers: int = 0
    rules: tuple[TensorRule, ...] = field(default_factory=tuple)
    use_mmap: bool = True
    label: str = "CPU only"
    gpu_expert_layers: tuple[int, ...] = ()  # layers whose routed experts the plan put on a GPU
    offload_kv: bool = True  # KV cache (and attention) on the GPUs that hold the layers
    no_host: bool = False  # CPU-side weights in repacked CPU buffers, not the GPU's host buffer
    partial_expert_layer: int | None = None  # a layer with some expert tensors on a GPU
    partial_gpu_share: float = 0.0  # the share of that layer's expert bytes on the GPU
    # The engine devices that hold layers, in layer order (empty: the engine's default, every
    # local GPU), and how many layers each holds (empty: in proportion to free memory). A
    # block of whole layers on another computer is one entry of each.
    devices: tuple[str, ...] = ()
    tensor_split: tuple[float, ...] = ()
    # Hot experts per layer (an engine that can split, engine.native.hot_experts_counter):
    # each layer's first n routed experts in tensors of their own, ``…_hot_exps`` (matched by
    # HOT_EXPERT_TENSORS), which rules can place apart from the layer's other experts.
    hot_experts: tuple[int, ...] = ()

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Placement:
        """The inverse of ``dataclasses.asdict`` (for a child process or a file)."""
        return cls(
            n_gpu_layers=int(raw["n_gpu_layers"]),
            rules=tuple(TensorRule(**rule) for rule in raw.get("rules", ())),
            use_mmap=bool(raw.get("use_mmap", True)),
            label=str(raw.get("label", "")),
            gpu_expert_layers=tuple(int(i) for i in raw.get("gpu_expert_layers", ())),
            offload_kv=bool(raw.get("offload_kv", True)),
            no_host=bool(raw.get("no_host", False)),
            partial_expert_layer=raw.get("partial_expert_layer"),
            partial_gpu_share=float(raw.get("partial_gpu_share", 0.0)),
            devices=tuple(str(d) for d in raw.get("devices", ())),
            tensor_split=tuple(float(x) for x in raw.get("tensor_split", ())),
            hot_experts=tuple(int(n) for n in raw.get("hot_experts", ())),
        )

    @classmethod
    def cpu_only(cls) -> Placement:
        return cls()

    @classmethod
    def all_on_gpu(cls) -> Placement:
        return cls(n_gpu_layers=-1, label="All on the GPU")
