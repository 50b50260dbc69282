"""Placement: which tensors live on which device. Plain data: planners decide, devices applies."""

from __future__ import annotations

from dataclasses import dataclass, field

# Every routed-expert tensor (weights, biases, scales) of every layer; not shared experts.
EXPERT_TENSORS = r"\.ffn_(up|down|gate|gate_up)_exps\."


def expert_layers_pattern(layers: list[int] | range) -> str:
    """Regex for the routed-expert tensors of the given layers only."""
    joined = "|".join(str(layer) for layer in layers)
    return rf"^blk\.({joined})\.ffn_(up|down|gate|gate_up)_exps\."


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
        label: a short human description shown in the app.
    """

    n_gpu_layers: int = 0
    rules: tuple[TensorRule, ...] = field(default_factory=tuple)
    use_mmap: bool = True
    label: str = "CPU only"

    @classmethod
    def cpu_only(cls) -> Placement:
        return cls()

    @classmethod
    def all_on_gpu(cls) -> Placement:
        return cls(n_gpu_layers=-1, label="All on the GPU")

    @classmethod
    def experts_on_cpu(cls) -> Placement:
        """Everything on the GPU except the routed experts, which stay in system RAM."""
        return cls(
            n_gpu_layers=-1,
            rules=(TensorRule(EXPERT_TENSORS, "CPU"),),
            label="GPU, experts in RAM",
        )


def first_fit(
    tensor_bytes: int,
    expert_bytes: int,
    kv_bytes: int,
    gpu_name: str | None,
    gpu_free: int | None,
    margin: int = 1 << 30,
) -> Placement:
    """A placement that fits one GPU, tried from fastest to slowest.

    Everything on the GPU if it fits; else everything but the routed experts (the always-read
    weights and the KV cache are what every token reads); else the CPU alone. ``margin``
    leaves room for compute buffers and the desktop. This is the coarse default the window
    uses until the planner chooses whole expert layers by read density.

    Args:
        tensor_bytes: all weights of the model.
        expert_bytes: the routed-expert weights among them.
        kv_bytes: the KV cache at the context size that will be used.
        gpu_name: the engine's name for the GPU, or None when there is none.
        gpu_free: its free memory in bytes, or None when unknown.
        margin: bytes kept free on the GPU.
    """
    if gpu_name is None or not gpu_free:
        return Placement.cpu_only()
    budget = gpu_free - margin
    if tensor_bytes + kv_bytes <= budget:
        return Placement.all_on_gpu()
    if expert_bytes and tensor_bytes - expert_bytes + kv_bytes <= budget:
        return Placement.experts_on_cpu()
    return Placement.cpu_only()
