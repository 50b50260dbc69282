"""Plan a model on a machine: memory per device, placement, predicted speed, verdict, ranking.

Pure functions of (model shape, machine profile, settings); no I/O.

Placement is "read density first" (shared/design/ARCHITECTURE.md): during decode a token
costs the bytes read on each device over that device's bandwidth, so the GPU gets, in order,
what every token reads (attention, norms, router, shared experts, output head, KV cache),
then whole layers of routed experts while they fit. Token embeddings stay in RAM.

Speed model, calibrated on the llama-bench numbers in TECH-NOTES.md (H100, Qwen3-30B-A3B
shape, Q4_0: CPU only, all on GPU, experts on CPU, two layer splits), which it reproduces
within 15% (tests/engine/test_planner.py), and checked on a synthetic F16 MoE on the same
kind of host through our own loop (bench/placements.py: decode within 5-18%):

    t_token = sum over devices (bytes read per token / (bandwidth x efficiency))
              + GPU-resident layers x per-layer launch cost

    prompt: compute at ~35 GFLOP/s per CPU core or bandwidth x 15 FLOP/B on a GPU; with
    experts in RAM, each ubatch also copies the experts to the GPU (pinned 55 GB/s without
    mmap, 7 GB/s from a mapped file).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import Enum
from itertools import combinations
from typing import NamedTuple

import numpy as np

from engine.catalog import BITS_PER_WEIGHT, CatalogModel, CatalogQuant
from engine.context_memory import KV_PAD, ContextMemory
from engine.gguf_file import GGUFInfo, Role
from engine.hardware import GPUInfo, MachineProfile, RemoteDevice
from engine.heat import choose_hot_sets
from engine.placement import (
    EXPERT_TENSORS,
    HOT_EXPERT_TENSORS,
    Placement,
    TensorRule,
    expert_layers_pattern,
    expert_parts_pattern,
)
from engine.units import format_bytes

GIB = 1 << 30

# Calibration (see module docstring). Efficiency = achieved read rate / the bandwidth that
# hardware.measure_ram_bandwidth reports (a copy probe: on the H100 host it gave 71 GB/s
# where a read-only probe gave 107). CPU only: 28.9 tok/s on the Qwen3-30B shape there.
CPU_EFFICIENCY = 0.69
# With a GPU visible, llama.cpp stops repacking quantized CPU weights (28.9 -> 18.7 tok/s
# decode there); F16/BF16 weights are never repacked, so they keep CPU_EFFICIENCY.
REPACK_LOSS = 0.78
UNREPACKED_TYPES = ("F16", "BF16", "F32")
GPU_EFFICIENCY = 0.8
GPU_USABLE_SHARE = 0.95  # of a GPU's free memory, before the fixed margin
# Kernel launches per GPU-resident layer per token: 52 us fits the Qwen3-30B shape
# (llama-bench), 34 us our 16-layer synthetic MoE through our own loop (bench/placements.py).
GPU_LAYER_COST_S = 45e-6
CPU_FLOPS_PER_CORE = 35e9
GPU_FLOPS_PER_BYTE_PER_S = 15.0
PINNED_COPY_BPS = 55e9
MAPPED_COPY_BPS = 7e9
PINNED_RAM_SHARE = 0.8  # of the RAM budget that CPU-side weights may pin when read in
DEFAULT_GPU_BANDWIDTH = 300e9  # an unknown GPU: assume a mid-range card, say so
DEFAULT_RAM_BANDWIDTH = 40e9  # no probe: two channels of DDR4/DDR5, roughly
TOKEN_OVERHEAD_S = 200e-6  # sampling, graph building, our loop: measured on tiny models
TYPICAL_FILL = 2048  # tokens of context a typical decode step reads
# The hot experts' layout replaces layer placement when it decodes at least HOT_MIN_GAIN
# faster (its split adds a second matmul and a mask per expert tensor, which the speed model
# does not count, and which no GPU has measured yet) and its prompts keep at least
# HOT_PROMPT_KEEP of layer placement's speed.
HOT_MIN_GAIN = 0.05
HOT_PROMPT_KEEP = 0.95
UNKNOWN_VOCAB = 152_064  # before download: as large as common vocabularies (Qwen's), to be safe


class Verdict(str, Enum):
    FULL_GPU = "Runs fully on GPU"
    HYBRID = "GPU + experts in RAM"
    CPU_ONLY = "CPU only"
    POOLED = "Across computers"  # layers on another computer's GPU or RAM (engine.rpc)
    TOO_LARGE = "Too large for this machine"


@dataclass(frozen=True)
class ModelShape:
    """What the planner needs to know about one model file (exact after download)."""

    name: str
    quant: str
    n_layers: int
    n_experts: int
    n_experts_used: int
    n_kv_heads: int
    head_dim: int
    context_length: int | None
    n_embd: int
    n_vocab: int
    always_bytes: int  # read for every token (without a tied output head, see below)
    embedding_bytes: int  # stored in RAM; one row read per token
    tied_output: bool  # the output head is the embedding matrix: read whole, copied to a GPU
    expert_bytes_per_layer: tuple[int, ...]  # routed experts of each layer, in layer order
    active_params: float
    exact: bool
    # Per layer, the routed-expert tensors one can place apart ("gate", "up", "down" or a
    # fused "gate_up") and their bytes; empty: three equal parts, as in most MoE files.
    expert_parts: tuple[tuple[tuple[str, int], ...], ...] = ()
    # KV cache and recurrent state by attention kind; None: full attention on every layer.
    context_memory: ContextMemory | None = None
    expert_ffn: int = 0  # width of one routed expert (0: unknown)
    output_bytes: int = 0  # always-read bytes outside the layers (output head and norm)
    kv_share: float = 1.0  # the share of the model's layers whose context memory this holds

    @property
    def memory(self) -> ContextMemory:
        if self.context_memory is not None:
            return self.context_memory
        return ContextMemory.uniform(self.n_layers, self.n_kv_heads, self.head_dim)

    def parts_of(self, layer: int) -> tuple[tuple[str, int], ...]:
        if layer < len(self.expert_parts) and self.expert_parts[layer]:
            return self.expert_parts[layer]
        third = self.expert_bytes_per_layer[layer] // 3
        return (("gate", third), ("up", third), ("down", third))

    @property
    def expert_bytes(self) -> int:
        return sum(self.expert_bytes_per_layer)

    @property
    def total_bytes(self) -> int:
        """Bytes stored (in RAM when the model runs on the CPU alone)."""
        return self.always_bytes + self.embedding_bytes + self.expert_bytes

    @property
    def gpu_always_bytes(self) -> int:
        """Always-read bytes a GPU holds: a tied output head is a copy of the embeddings."""
        return self.always_bytes + (self.embedding_bytes if self.tied_output else 0)

    @property
    def read_share(self) -> float:
        """Share of a layer's expert bytes one token reads (k / E)."""
        return self.n_experts_used / self.n_experts if self.n_experts else 1.0

    def kv_bytes(self, n_ctx: int, bytes_per_element: float = 2.0, n_ubatch: int = 512) -> int:
        """KV cache plus recurrent state for a context of ``n_ctx``, as the engine sizes it."""
        return int(self.memory.state_bytes(n_ctx, n_ubatch, bytes_per_element) * self.kv_share)

    def kv_read_bytes(self, filled: int, bytes_per_element: float = 2.0) -> int:
        """Cache bytes a decode step reads with ``filled`` tokens of context."""
        return int(self.memory.read_bytes(filled, bytes_per_element) * self.kv_share)

    @property
    def layer_always_bytes(self) -> int:
        """Always-read bytes of one layer (attention, norms, router, shared experts): the
        layers' part of ``always_bytes`` spread evenly."""
        return max(0, self.always_bytes - self.output_bytes) // max(1, self.n_layers)

    def layer_bytes(self, layer: int) -> int:
        """Everything one layer stores but its context memory."""
        return self.layer_always_bytes + self.expert_bytes_per_layer[layer]

    def layer_read_bytes(self, layer: int) -> float:
        """What one token reads of one layer's weights."""
        return self.layer_always_bytes + self.expert_bytes_per_layer[layer] * self.read_share

    def without_layers(self, layers: Iterable[int]) -> ModelShape:
        """The part of the model left when ``layers`` run elsewhere (another computer)."""
        gone = set(layers)
        if not gone:
            return self
        read_total = sum(self.layer_read_bytes(i) for i in range(self.n_layers))
        read_gone = sum(self.layer_read_bytes(i) for i in gone)
        return replace(
            self,
            always_bytes=self.always_bytes - self.layer_always_bytes * len(gone),
            expert_bytes_per_layer=tuple(
                0 if i in gone else size for i, size in enumerate(self.expert_bytes_per_layer)
            ),
            kv_share=self.kv_share * (1 - len(gone) / max(1, self.n_layers)),
            active_params=max(1.0, self.active_params * (1 - read_gone / max(1.0, read_total))),
        )

    @classmethod
    def from_catalog(cls, model: CatalogModel, quant: CatalogQuant) -> ModelShape:
        """An estimate from the catalog: sizes split by the expert share of parameters."""
        size = model.size_estimate(quant)
        experts = int(size * model.expert_share)
        heads = model.n_heads or max(1, model.n_embd // 128)
        return cls(
            name=model.display_name,
            quant=quant.quant,
            n_layers=model.n_layers,
            n_experts=model.n_experts,
            n_experts_used=model.n_experts_used,
            n_kv_heads=model.n_kv_heads or heads,
            head_dim=model.head_dim or model.n_embd // heads,
            context_length=model.native_context,
            n_embd=model.n_embd,
            n_vocab=model.n_vocab or UNKNOWN_VOCAB,
            always_bytes=size - experts,
            embedding_bytes=0,  # unknown before download: counted as always-read (safe side)
            tied_output=False,
            expert_bytes_per_layer=(experts // model.n_layers,) * model.n_layers,
            active_params=model.active_params_b * 1e9,
            exact=False,
            context_memory=model.context_memory(),
            expert_ffn=model.expert_ffn or 0,
            # embeddings and output head, counted in always_bytes before download
            output_bytes=min(
                (size - experts) // 2,
                int(2 * (model.n_vocab or UNKNOWN_VOCAB) * model.n_embd * _bits(quant) / 8),
            ),
        )

    @classmethod
    def from_gguf(cls, info: GGUFInfo) -> ModelShape:
        """Exact sizes from the file's tensor table."""
        roles = info.bytes_by_role()
        per_layer = info.expert_bytes_by_layer()
        layers = tuple(per_layer.get(i, 0) for i in range(info.n_layers))
        embeddings = roles[Role.TOKEN_EMBEDDINGS]
        # Multi-token-prediction blocks stay on disk: the engine never loads them.
        always = info.tensor_bytes - embeddings - roles[Role.ROUTED_EXPERTS] - roles[Role.UNUSED]
        bytes_per_param = info.tensor_bytes / max(1, _param_count(info))
        head = embeddings if info.tied_output else 0  # a tied head multiplies by them all
        active = (always + head + roles[Role.ROUTED_EXPERTS] * _share(info)) / bytes_per_param
        return cls(
            name=info.name,
            quant=info.file_type,
            n_layers=info.n_layers,
            n_experts=max(info.n_experts, 1),
            n_experts_used=max(info.n_experts_used, 1),
            n_kv_heads=info.n_head_kv,
            head_dim=info.head_dim,
            context_length=info.context_length or None,
            n_embd=info.n_embd,
            n_vocab=_vocab_size(info),
            always_bytes=always,
            embedding_bytes=embeddings,
            tied_output=info.tied_output,
            expert_bytes_per_layer=layers,
            active_params=active,
            exact=True,
            expert_parts=_expert_parts(info),
            context_memory=info.context_memory,
            expert_ffn=_expert_width(info),
            output_bytes=sum(
                t.n_bytes
                for t in info.tensors
                if t.layer is None and t.role not in (Role.TOKEN_EMBEDDINGS, Role.UNUSED)
            ),
        )


_EXPERT_KIND = re.compile(EXPERT_TENSORS)


def _bits(quant: CatalogQuant) -> float:
    return BITS_PER_WEIGHT.get(quant.quant, 8.5)


def _expert_parts(info: GGUFInfo) -> tuple[tuple[tuple[str, int], ...], ...]:
    parts: list[dict[str, int]] = [{} for _ in range(info.n_layers)]
    for tensor in info.tensors:
        match = _EXPERT_KIND.search(tensor.name)
        layer = tensor.layer
        if match and tensor.role is Role.ROUTED_EXPERTS and layer is not None:
            kinds = parts[layer] if layer < info.n_layers else {}
            kinds[match.group(1)] = kinds.get(match.group(1), 0) + tensor.n_bytes
    return tuple(tuple(sorted(kinds.items(), key=_part_order)) for kinds in parts)


def _part_order(part: tuple[str, int]) -> int:
    return ("gate_up", "gate", "up", "down").index(part[0])


def _expert_width(info: GGUFInfo) -> int:
    """One routed expert's FFN width: ne0 of a down-projection expert tensor."""
    for tensor in info.tensors:
        if tensor.role is Role.ROUTED_EXPERTS and ".ffn_down_exps." in tensor.name:
            return tensor.shape[0]
    return info.expert_ffn_length


def _vocab_size(info: GGUFInfo) -> int:
    for tensor in info.tensors:
        if tensor.role is Role.TOKEN_EMBEDDINGS and len(tensor.shape) == 2:
            return tensor.shape[1]
    return UNKNOWN_VOCAB


def _share(info: GGUFInfo) -> float:
    return info.n_experts_used / info.n_experts if info.n_experts else 1.0


def _param_count(info: GGUFInfo) -> int:
    total = 0
    for tensor in info.tensors:
        count = 1
        for dim in tensor.shape:
            count *= dim
        total += count
    return total


@dataclass(frozen=True)
class Settings:
    n_ctx: int = 4096
    kv_bytes_per_element: float = 2.0  # f16 cache
    gpu_margin: int = GIB // 2  # plus 5% of the GPU, for the driver and the desktop
    ram_margin: int = GIB  # "available" already leaves out running programs; this is slack
    use_mmap: bool | None = None  # None: read the file in when experts stay in RAM and it fits
    n_ubatch: int = 512
    min_tokens_per_s: float = 8.0
    kv_on_gpu: bool = True  # False: KV cache and attention in RAM, more room for experts
    gpu_expert_layers: int | None = (
        None  # at most this many expert layers on GPUs (None: all that fit)
    )
    layer_order: tuple[int, ...] | None = None  # which expert layers go to a GPU first (heat)
    # Experts in RAM repacked for the CPU's kernels: faster generation (+11% on TECH-NOTES's
    # host), but prompt batches can no longer copy them to the GPU, so prompts get slow.
    no_host: bool = False
    ram_limit: int | None = None  # use at most this much of this computer's RAM (None: all free)
    # Routing heat in the file's own expert order, given when the engine can split a layer's
    # experts (engine.native.hot_experts_counter): plan() then weighs each layer's first
    # experts in VRAM (plan_hot_experts) against layer placement and takes the faster.
    hot_heat: HotHeat | None = field(default=None, compare=False)
    # None: whichever is faster; True: the hot experts' layout when there is one; False:
    # layer placement only (the tuner measures both).
    hot_experts: bool | None = None


class HotHeat(NamedTuple):
    """Counts (layers x experts, engine.heat) a hot set is chosen from, and others it is
    checked on (the second half of the counted tokens), both in the file's expert order."""

    counts: np.ndarray
    held_out: np.ndarray | None = None


class _Sizing(NamedTuple):
    """What every placement on this computer sizes first."""

    n_ctx: int  # the context planned for, at most the model's own
    kv: int  # the KV cache's bytes
    compute: int  # the compute buffer of the device holding the output head
    kv_read: int  # KV bytes a typical decode step reads (TYPICAL_FILL tokens in)


def _sizing(shape: ModelShape, settings: Settings) -> _Sizing:
    n_ctx = min(settings.n_ctx, shape.context_length or settings.n_ctx)
    return _Sizing(
        n_ctx,
        shape.kv_bytes(n_ctx, settings.kv_bytes_per_element, settings.n_ubatch),
        compute_buffer_bytes(shape, settings),
        shape.kv_read_bytes(min(n_ctx, TYPICAL_FILL), settings.kv_bytes_per_element),
    )


@dataclass(frozen=True)
class DevicePlan:
    """What one device holds under a plan, in bytes."""

    device: str  # the engine's device name ("CPU", "CUDA0", …)
    label: str
    weights: int
    kv_cache: int
    compute: int
    budget: int  # free memory minus margin
    bandwidth: float  # bytes/s
    read_per_token: int

    remote: bool = False  # another computer's (engine.rpc)

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute


@dataclass(frozen=True)
class Plan:
    shape: ModelShape
    n_ctx: int
    verdict: Verdict
    placement: Placement
    devices: tuple[DevicePlan, ...]
    gpu_expert_layers: tuple[int, ...]
    decode_tokens_per_s: float
    prompt_tokens_per_s: float
    missing_bytes: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)
    link_s_per_token: float = 0.0  # what the network adds to each token (other computers)
    hot_share: float | None = None  # f of a per-expert hot set, from measured heat

    @property
    def runs(self) -> bool:
        return self.verdict is not Verdict.TOO_LARGE

    @property
    def gpu_bytes(self) -> int:
        return sum(d.total for d in self.devices if d.device != "CPU" and not d.remote)

    @property
    def remote_bytes(self) -> int:
        return sum(d.total for d in self.devices if d.remote)

    @property
    def workers(self) -> tuple[str, ...]:
        """The other computers (``host:port``) the plan puts layers on."""
        return tuple(dict.fromkeys(d.device.partition("[")[2].rstrip("]")
                                   for d in self.devices if d.remote))  # fmt: skip

    @property
    def ram_bytes(self) -> int:
        return sum(d.total for d in self.devices if d.device == "CPU")

    @property
    def expert_share_on_gpu(self) -> float:
        """f: share of expert reads served from VRAM (layer placement, uniform routing; a hot
        set: its measured share)."""
        if self.hot_share is not None:
            return self.hot_share
        total = self.shape.expert_bytes
        on_gpu: float = sum(self.shape.expert_bytes_per_layer[i] for i in self.gpu_expert_layers)
        partial = self.placement.partial_expert_layer
        if partial is not None:
            on_gpu += self.shape.expert_bytes_per_layer[partial] * self.placement.partial_gpu_share
        return on_gpu / total if total else 1.0

    def summary(self) -> str:
        """One sentence a user reads in the model manager."""
        speed = f"about {self.decode_tokens_per_s:.0f} tokens/s"
        if self.verdict is Verdict.TOO_LARGE:
            return (
                f"Needs {format_bytes(self.missing_bytes)} more memory than this machine has free."
            )
        if self.verdict is Verdict.POOLED:
            elsewhere = ", ".join(f"{format_bytes(d.total)} on {d.label}" for d in self.devices
                                  if d.remote)  # fmt: skip
            here = format_bytes(self.gpu_bytes + self.ram_bytes)
            return (
                f"{here} here, {elsewhere}: {speed}, of which the network takes "
                f"{self.link_s_per_token * 1000:.1f} ms per token."
            )
        if self.verdict is Verdict.FULL_GPU:
            return f"Fits on the GPU ({format_bytes(self.gpu_bytes)}): {speed}."
        if self.verdict is Verdict.HYBRID:
            return (
                f"{format_bytes(self.gpu_bytes)} on the GPU with {self.expert_share_on_gpu:.0%} "
                f"of expert reads, {format_bytes(self.ram_bytes)} in RAM: {speed}."
            )
        return f"{format_bytes(self.ram_bytes)} in RAM: {speed}."


def compute_buffer_bytes(shape: ModelShape, settings: Settings) -> int:
    """Scratch memory for one ubatch: the larger of the logits of every row and the routed
    experts' activations (gate, up and their product for each expert used), plus the
    attention mask (F16, one row per cell of the context) except in hybrids.

    Fits the engine's log within 1% on SmolLM2 (98 MiB measured at ubatch 512), and its dry
    runs of every catalog model at 4k-128k within 5% (bench/context_memory.py).
    """
    n_ctx = min(settings.n_ctx, shape.context_length or settings.n_ctx)
    experts = 3 * shape.n_experts_used * shape.expert_ffn if shape.n_experts > 1 else 0
    rows = max(shape.n_vocab, experts) + 4 * shape.n_embd
    mask = settings.n_ubatch * (-(-n_ctx // KV_PAD) * KV_PAD) * 2
    if shape.memory.recurrent_layers:
        mask = 0  # hybrids' last attention layer comes early: the mask is gone by the logits
    return 2**20 + settings.n_ubatch * 4 * rows + mask


def gpu_budget(free: int, settings: Settings) -> int:
    """What the planner lets itself use of a GPU with ``free`` bytes free."""
    return max(0, int(free * GPU_USABLE_SHARE) - settings.gpu_margin)


def gpu_free_needed(shape: ModelShape, settings: Settings, expert_share: float = 1.0) -> int:
    """Free memory one GPU needs for the always-read part and ``expert_share`` of the experts.

    The inverse of ``gpu_budget``: with this much free, ``plan`` puts at least that share of
    the expert bytes on the GPU (whole layers, so possibly a little more).
    """
    size = _sizing(shape, settings)
    needed = (
        shape.gpu_always_bytes + size.kv + size.compute + int(shape.expert_bytes * expert_share)
    )
    return int((needed + settings.gpu_margin) / GPU_USABLE_SHARE) + 2**20


def ram_budget(machine: MachineProfile, settings: Settings) -> int:
    """What the planner lets itself use of this computer's RAM."""
    budget = max(0, (machine.ram_available or 0) - settings.ram_margin)
    return budget if settings.ram_limit is None else min(budget, settings.ram_limit)


def _plan_here(shape: ModelShape, machine: MachineProfile, settings: Settings) -> Plan:
    """The fastest layout on this computer's own CPU and GPUs, or why nothing fits."""
    size = _sizing(shape, settings)
    n_ctx, kv, compute = size.n_ctx, size.kv, size.compute
    gpus = [g for g in machine.usable_gpus if g.memory_free]
    unified = any(g.unified_memory for g in gpus)
    ram = ram_budget(machine, settings)
    ram_bandwidth = machine.ram_bandwidth or DEFAULT_RAM_BANDWIDTH

    budgets = [gpu_budget(g.memory_free or 0, settings) for g in gpus]
    gpu_kv = kv if settings.kv_on_gpu else 0
    if gpus and shape.gpu_always_bytes + gpu_kv + compute <= sum(budgets):
        result = _plan_gpu(shape, machine, settings, gpus, budgets, size)
        hot = _hot_option(shape, machine, settings, result, size)
        for option in (hot, result):
            if option is not None and _ram_needed(option, unified) <= ram:
                return option
    cpu_total = shape.total_bytes + kv + compute
    device = DevicePlan(
        device="CPU",
        label=machine.cpu_model or "CPU",
        weights=shape.total_bytes,
        kv_cache=kv,
        compute=compute,
        budget=ram,
        bandwidth=ram_bandwidth,
        read_per_token=_cpu_read(shape, n_ctx, settings),
    )
    if cpu_total > ram:
        capacity = ram + (sum(budgets) if not unified else 0)
        missing = cpu_total - capacity if cpu_total > capacity else cpu_total - ram
        return Plan(
            shape=shape,
            n_ctx=n_ctx,
            verdict=Verdict.TOO_LARGE,
            placement=Placement.cpu_only(),
            devices=(device,),
            gpu_expert_layers=(),
            decode_tokens_per_s=0.0,
            prompt_tokens_per_s=0.0,
            missing_bytes=missing,
        )
    decode = 1 / (device.read_per_token / (ram_bandwidth * CPU_EFFICIENCY) + TOKEN_OVERHEAD_S)
    prompt = _cpu_flops(machine) / (2 * shape.active_params)
    return Plan(
        shape=shape,
        n_ctx=n_ctx,
        verdict=Verdict.CPU_ONLY,
        placement=replace(Placement.cpu_only(), use_mmap=settings.use_mmap is not False),
        devices=(device,),
        gpu_expert_layers=(),
        decode_tokens_per_s=decode,
        prompt_tokens_per_s=prompt,
    )


def _ram_needed(option: Plan, unified: bool) -> int:
    """On unified memory (Apple) the GPU's share comes out of the same RAM."""
    return option.ram_bytes + (option.gpu_bytes if unified else 0)


def _cpu_read(shape: ModelShape, n_ctx: int, settings: Settings) -> int:
    fill = min(n_ctx, TYPICAL_FILL)
    experts = int(shape.expert_bytes * shape.read_share)
    kv = shape.kv_read_bytes(fill, settings.kv_bytes_per_element)
    return shape.gpu_always_bytes + experts + kv  # a tied head reads the embeddings too


def _cpu_flops(machine: MachineProfile) -> float:
    return (machine.physical_cores or 1) * CPU_FLOPS_PER_CORE


def expert_layer_order(shape: ModelShape, preferred: Iterable[int] | None = None) -> list[int]:
    """Layers with routed experts in the order they go to a GPU: ``preferred`` first, then the
    rest from layer 0 up."""
    layers = [i for i, size in enumerate(shape.expert_bytes_per_layer) if size]
    valid = set(layers)
    order = list(dict.fromkeys(i for i in (preferred or ()) if i in valid))
    return order + [i for i in layers if i not in set(order)]


class PartialLayer(NamedTuple):
    """An expert layer split between a GPU and RAM: some of its tensors (gate, up, down) on
    the GPU, the rest in RAM."""

    layer: int
    gpu_kinds: tuple[str, ...]
    cpu_kinds: tuple[str, ...]
    gpu_bytes: int


def _plan_gpu(
    shape: ModelShape,
    machine: MachineProfile,
    settings: Settings,
    gpus: list[GPUInfo],
    budgets: list[int],
    size: _Sizing,
) -> Plan:
    """A placement with the GPUs in use: memory per device first, then decode and prompt
    speed from it, then the rules and the label the engine and the user get."""
    n_ctx, kv, compute, kv_read = size
    # Always-read weights, KV and compute buffers spread like the engine's default layer
    # split: in proportion to each GPU's budget.
    total_budget = sum(budgets)
    shares = [b / total_budget for b in budgets]
    gpu_kv = kv if settings.kv_on_gpu else 0
    used = [int((shape.gpu_always_bytes + gpu_kv) * s) + compute for s in shares]
    layers_on = _assign_expert_layers(shape, settings, budgets, used)
    gpu_layers = tuple(sorted(layer for group in layers_on for layer in group))
    cpu_layers = [i for i in expert_layer_order(shape) if i not in set(gpu_layers)]
    # Fill what is left with part of the next layer: its gate and up, say, with down in RAM.
    partial: PartialLayer | None = None
    partial_gpu = -1
    if cpu_layers and settings.gpu_expert_layers is None:
        layer = next(i for i in expert_layer_order(shape, settings.layer_order) if i in cpu_layers)
        partial_gpu = max(range(len(gpus)), key=lambda g: budgets[g] - used[g])
        partial = _partial_layer(shape, layer, budgets[partial_gpu] - used[partial_gpu])
        if partial is not None:
            cpu_layers.remove(layer)
    partial_bytes = partial.gpu_bytes if partial else 0
    gpu_kv_read = kv_read if settings.kv_on_gpu else 0
    devices = []
    for i, gpu in enumerate(gpus):
        expert_bytes = sum(shape.expert_bytes_per_layer[j] for j in layers_on[i])
        expert_bytes += partial_bytes if i == partial_gpu else 0
        devices.append(
            DevicePlan(
                device=gpu.engine_device or gpu.name,
                label=gpu.name,
                weights=int(shape.gpu_always_bytes * shares[i]) + expert_bytes,
                kv_cache=int(gpu_kv * shares[i]),
                compute=compute,
                budget=budgets[i],
                bandwidth=gpu.bandwidth or DEFAULT_GPU_BANDWIDTH,
                read_per_token=int((shape.gpu_always_bytes + gpu_kv_read) * shares[i])
                + int(expert_bytes * shape.read_share),
            )
        )
    cpu_expert_bytes = sum(shape.expert_bytes_per_layer[j] for j in cpu_layers)
    if partial is not None:
        cpu_expert_bytes += shape.expert_bytes_per_layer[partial.layer] - partial_bytes
    in_ram = bool(cpu_layers or partial)
    ram_bandwidth = machine.ram_bandwidth or DEFAULT_RAM_BANDWIDTH
    ram = ram_budget(machine, settings)
    # Only the expert matmuls run here; logits stay with the output head on the GPU.
    # (23 MiB measured for SmolLM2's upcycled MoE at ubatch 512; fitted there.)
    cpu_compute = block_compute_bytes(shape, settings) if in_ram else 0
    if not settings.kv_on_gpu:  # attention runs here too: scores of a ubatch over the context
        heads = max(1, shape.n_embd // max(1, shape.head_dim))
        cpu_compute += settings.n_ubatch * n_ctx * heads * 4
    cpu = DevicePlan(
        device="CPU",
        label=machine.cpu_model or "CPU",
        weights=shape.embedding_bytes + cpu_expert_bytes,
        kv_cache=kv - gpu_kv,
        compute=cpu_compute,
        budget=ram,
        bandwidth=ram_bandwidth,
        read_per_token=int(cpu_expert_bytes * shape.read_share) + kv_read - gpu_kv_read,
    )
    devices.append(cpu)
    use_mmap = settings.use_mmap
    if use_mmap is None:
        # Read into the GPU backend's pinned host memory, experts copy to the GPU for prompt
        # batches at ~55 GB/s instead of ~7 (TECH-NOTES: 4.7x prompt speed). That memory
        # cannot be paged out, so only when it takes at most PINNED_RAM_SHARE of what is free.
        unified = any(g.unified_memory for g in gpus)
        use_mmap = not (in_ram and not unified and cpu.total <= PINNED_RAM_SHARE * ram)
    rules = _gpu_rules(gpus, layers_on, cpu_layers, partial, partial_gpu)
    return Plan(
        shape=shape,
        n_ctx=n_ctx,
        verdict=Verdict.HYBRID if in_ram or not settings.kv_on_gpu else Verdict.FULL_GPU,
        placement=Placement(
            n_gpu_layers=-1,
            rules=rules,
            use_mmap=use_mmap,
            label=_gpu_label(settings, in_ram, cpu_layers, gpu_layers, partial),
            gpu_expert_layers=gpu_layers,
            offload_kv=settings.kv_on_gpu,
            no_host=settings.no_host and in_ram,
            partial_expert_layer=partial.layer if partial else None,
            partial_gpu_share=partial_bytes / shape.expert_bytes_per_layer[partial.layer]
            if partial
            else 0.0,
        ),
        devices=tuple(devices),
        gpu_expert_layers=gpu_layers,
        decode_tokens_per_s=_gpu_decode_speed(shape, settings, devices),
        prompt_tokens_per_s=_gpu_prompt_speed(
            shape, machine, settings, gpus, in_ram, cpu_expert_bytes, use_mmap
        ),
    )


def _hot_option(
    shape: ModelShape, machine: MachineProfile, settings: Settings, layers: Plan, size: _Sizing
) -> Plan | None:
    """The hot experts' layout (``plan_hot_experts``) when the settings carry heat and it is
    faster than ``layers``, layer placement, by HOT_MIN_GAIN at decode with prompts no slower
    than HOT_PROMPT_KEEP of its; or whenever there is one, when ``hot_experts`` asks for it."""
    heat = settings.hot_heat
    if heat is None or settings.hot_experts is False or settings.gpu_expert_layers is not None:
        return None
    if layers.verdict is not Verdict.HYBRID:  # all experts fit on the GPUs already
        return None
    hot = plan_hot_experts(shape, machine, settings, heat.counts, heat.held_out, size)
    if hot is None or settings.hot_experts:
        return hot
    faster = hot.decode_tokens_per_s > (1 + HOT_MIN_GAIN) * layers.decode_tokens_per_s
    if faster and hot.prompt_tokens_per_s >= HOT_PROMPT_KEEP * layers.prompt_tokens_per_s:
        return hot
    return None


def plan_hot_experts(
    shape: ModelShape,
    machine: MachineProfile,
    settings: Settings,
    counts: np.ndarray,
    held_out: np.ndarray | None = None,
    size: _Sizing | None = None,
) -> Plan | None:
    """The always-read weights, KV cache and compute on the first GPU, and in the VRAM left
    each layer's hottest experts (the hot-experts engine, packaging/HOT-EXPERTS.md); the
    other experts in RAM. None without a GPU, or when nothing is left for experts.

    ``counts`` (layers x experts, engine.heat) are of a heat-ordered file, whose first h
    experts of a layer are the ones the engine puts in its hot tensors. Decode reads the
    share f of expert bytes from VRAM that the routing gives them: ``held_out``'s when
    given (tokens the choice was not made from), else ``counts``'s own.
    """
    gpus = [g for g in machine.usable_gpus if g.memory_free]
    if not gpus or shape.n_experts < 2:
        return None
    gpu = gpus[0]
    n_ctx, kv, compute, kv_read = size or _sizing(shape, settings)
    gpu_kv = kv if settings.kv_on_gpu else 0
    budget = gpu_budget(gpu.memory_free or 0, settings)
    room = budget - shape.gpu_always_bytes - gpu_kv - compute
    per_expert = [size // shape.n_experts for size in shape.expert_bytes_per_layer]
    if room < min(per_expert, default=0) or not any(per_expert):
        return None
    # h < E: the engine splits a layer only short of all its experts (a whole layer on the
    # GPU is layer placement's job)
    hot = choose_hot_sets(
        counts, per_expert, room, held_out, positional=True, most=shape.n_experts - 1
    )
    if not any(hot.per_layer):
        return None
    f = hot.held_out if hot.held_out is not None else hot.share
    gpu_kv_read = kv_read if settings.kv_on_gpu else 0
    expert_read = shape.expert_bytes * shape.read_share  # per token, all layers
    cold = shape.expert_bytes - hot.bytes
    gpu_plan = DevicePlan(
        device=gpu.engine_device or gpu.name,
        label=gpu.name,
        weights=shape.gpu_always_bytes + hot.bytes,
        kv_cache=gpu_kv,
        compute=compute,
        budget=budget,
        bandwidth=gpu.bandwidth or DEFAULT_GPU_BANDWIDTH,
        read_per_token=shape.gpu_always_bytes + gpu_kv_read + int(expert_read * f),
    )
    cpu = DevicePlan(
        device="CPU",
        label=machine.cpu_model or "CPU",
        weights=shape.embedding_bytes + cold,
        kv_cache=kv - gpu_kv,
        compute=block_compute_bytes(shape, settings),
        budget=ram_budget(machine, settings),
        bandwidth=machine.ram_bandwidth or DEFAULT_RAM_BANDWIDTH,
        read_per_token=int(expert_read * (1 - f)) + kv_read - gpu_kv_read,
    )
    if cpu.total > cpu.budget:
        return None
    use_mmap = settings.use_mmap
    if use_mmap is None:  # as for layer placement: pinned when it is a small share of RAM
        use_mmap = not (not gpu.unified_memory and cpu.total <= PINNED_RAM_SHARE * cpu.budget)
    rules = [TensorRule(EXPERT_TENSORS, "CPU")]
    if gpu.engine_device:
        rules.insert(0, TensorRule(HOT_EXPERT_TENSORS, gpu.engine_device))
    devices = [gpu_plan, cpu]
    n_hot = sum(hot.per_layer)
    return Plan(
        shape=shape,
        n_ctx=n_ctx,
        verdict=Verdict.HYBRID,
        placement=Placement(
            n_gpu_layers=-1,
            rules=tuple(rules),
            use_mmap=use_mmap,
            label=f"GPU, the hottest {n_hot} of {shape.n_experts * shape.n_layers} experts "
            f"in VRAM ({f:.0%} of expert reads)",
            offload_kv=settings.kv_on_gpu,
            hot_experts=hot.per_layer,
        ),
        devices=tuple(devices),
        gpu_expert_layers=(),
        decode_tokens_per_s=_gpu_decode_speed(shape, settings, devices),
        prompt_tokens_per_s=_gpu_prompt_speed(
            shape, machine, settings, [gpu], True, cold, use_mmap
        ),
        hot_share=f,
    )


def _assign_expert_layers(
    shape: ModelShape, settings: Settings, budgets: list[int], used: list[int]
) -> list[list[int]]:
    """Whole expert layers per GPU, in the settings' order, while each fits its budget
    (``used`` grows with them)."""
    layers_on: list[list[int]] = [[] for _ in budgets]
    limit = shape.n_layers if settings.gpu_expert_layers is None else settings.gpu_expert_layers
    gpu_index = 0
    for layer in expert_layer_order(shape, settings.layer_order)[: max(0, limit)]:
        size = shape.expert_bytes_per_layer[layer]
        while gpu_index < len(budgets) and used[gpu_index] + size > budgets[gpu_index]:
            gpu_index += 1
        if gpu_index == len(budgets):
            break
        layers_on[gpu_index].append(layer)
        used[gpu_index] += size
    return layers_on


def _gpu_decode_speed(shape: ModelShape, settings: Settings, devices: list[DevicePlan]) -> float:
    """Tokens/s: every device reads its share of a token's bytes at its bandwidth (the CPU,
    last, at its efficiency for the weights' layout), plus a cost per layer and per token."""
    *gpu_devices, cpu = devices
    repacked = settings.no_host or shape.quant in UNREPACKED_TYPES
    efficiency = CPU_EFFICIENCY * (1.0 if repacked else REPACK_LOSS)
    seconds = cpu.read_per_token / (cpu.bandwidth * efficiency)
    for device in gpu_devices:
        seconds += device.read_per_token / (device.bandwidth * GPU_EFFICIENCY)
    seconds += shape.n_layers * GPU_LAYER_COST_S + TOKEN_OVERHEAD_S
    return 1 / seconds


def _gpu_prompt_speed(
    shape: ModelShape,
    machine: MachineProfile,
    settings: Settings,
    gpus: list[GPUInfo],
    in_ram: bool,
    cpu_expert_bytes: int,
    use_mmap: bool,
) -> float:
    """Prompt tokens/s: the GPUs compute, and experts in RAM are either copied over for each
    batch or (repacked for the CPU) computed there."""
    gpu_flops = sum((g.bandwidth or DEFAULT_GPU_BANDWIDTH) for g in gpus) * GPU_FLOPS_PER_BYTE_PER_S
    prompt_seconds = 2 * shape.active_params / gpu_flops
    if in_ram and settings.no_host:
        # Repacked weights cannot be copied to the GPU: the CPU computes its experts' share.
        expert_read = shape.expert_bytes * shape.read_share
        active_share = expert_read / max(1.0, expert_read + shape.gpu_always_bytes)
        cpu_share = cpu_expert_bytes / max(1, shape.expert_bytes)
        cpu_params = shape.active_params * active_share * cpu_share
        prompt_seconds += 2 * cpu_params / _cpu_flops(machine)
    elif in_ram:
        copy_rate = MAPPED_COPY_BPS if use_mmap else PINNED_COPY_BPS
        prompt_seconds += cpu_expert_bytes / copy_rate / settings.n_ubatch
    return 1 / prompt_seconds


def _gpu_rules(
    gpus: list[GPUInfo],
    layers_on: list[list[int]],
    cpu_layers: list[int],
    partial: PartialLayer | None,
    partial_gpu: int,
) -> tuple[TensorRule, ...]:
    """Tensor rules for the engine: experts in RAM to the CPU; with several GPUs, each
    layer's experts to its GPU."""
    rules = []
    if cpu_layers:
        rules.append(TensorRule(expert_layers_pattern(cpu_layers), "CPU"))
    if partial is not None:
        rules.append(TensorRule(expert_parts_pattern(partial.layer, partial.cpu_kinds), "CPU"))
    if len(gpus) > 1:
        for i, gpu in enumerate(gpus):
            if layers_on[i] and gpu.engine_device:
                rules.append(TensorRule(expert_layers_pattern(layers_on[i]), gpu.engine_device))
        holder = gpus[partial_gpu].engine_device
        if partial is not None and holder:
            rules.append(TensorRule(expert_parts_pattern(partial.layer, partial.gpu_kinds), holder))
    return tuple(rules)


def _gpu_label(
    settings: Settings,
    in_ram: bool,
    cpu_layers: list[int],
    gpu_layers: tuple[int, ...],
    partial: PartialLayer | None,
) -> str:
    """What the placement is called in the window ("GPU, 12 of 48 expert layers in RAM")."""
    n_expert_layers = len(cpu_layers) + len(gpu_layers) + (partial is not None)
    label = (
        "All on the GPU"
        if not in_ram
        else f"GPU, {len(cpu_layers)} of {n_expert_layers} expert layers in RAM"
    )
    if partial is not None:
        label += f", layer {partial.layer}'s {'+'.join(partial.cpu_kinds)} in RAM"
    if not settings.kv_on_gpu:
        label += ", KV cache in RAM"
    if settings.no_host and in_ram:
        label += ", experts repacked for the CPU"
    return label


def _partial_layer(shape: ModelShape, layer: int, room: int) -> PartialLayer | None:
    """The most bytes of ``layer``'s expert tensors that fit in ``room``, short of all of
    them, or None."""
    parts = shape.parts_of(layer)
    fitting = [
        combo
        for size in range(1, len(parts))
        for combo in combinations(parts, size)
        if sum(b for _, b in combo) <= room
    ]
    if not fitting:
        return None
    best = max(fitting, key=lambda combo: sum(b for _, b in combo))  # first of equals: gate
    on_gpu = tuple(kind for kind, _ in best)
    in_ram = tuple(kind for kind, _ in parts if kind not in on_gpu)
    return PartialLayer(layer, on_gpu, in_ram, sum(b for _, b in best))


# -- other computers (engine.rpc) -------------------------------------------------------------
#
# A remote device takes a block of whole layers (attention, experts, their KV cache), so a
# token crosses the network once into each block and once out: each visit costs a round trip
# plus the activations both ways (n_embd floats). Weights cross once, at load time. Layers
# whose attention is remote but whose experts are in this computer's RAM ("dense part on the
# other GPU") visit it once per layer.
# The output head: its own tensor, or (tied) the embeddings the engine duplicates as it.
OUTPUT_HEAD = r"^(output|token_embd)\.weight$"
DEFAULT_LINK_LATENCY_S = 1e-3  # unmeasured: a busy LAN's round trip, on the safe side
DEFAULT_LINK_BPS = 117e6  # unmeasured: 1 GbE
ACTIVATION_BYTES = 4  # F32 activations cross the link


def plan(shape: ModelShape, machine: MachineProfile, settings: Settings | None = None) -> Plan:
    """Place ``shape`` on ``machine`` (and the devices other computers lend it): the fastest
    layout that fits, or why nothing does. A layout whose speed falls under
    ``min_tokens_per_s`` because of the network is refused, and the plan says so."""
    settings = settings or Settings()
    local = _plan_here(shape, machine, settings)
    if not machine.remotes:
        return local
    chosen: Plan | None = local if local.runs else None
    refused: Plan | None = None
    for option in _remote_plans(shape, machine, settings):
        if option.decode_tokens_per_s < settings.min_tokens_per_s <= _without_link(option):
            if refused is None or option.decode_tokens_per_s > refused.decode_tokens_per_s:
                refused = option
        elif chosen is None or option.decode_tokens_per_s > chosen.decode_tokens_per_s:
            chosen = option
    result = chosen or local
    notes: tuple[str, ...] = ()
    if result is local and refused is not None:
        notes = (
            f"Using {', '.join(refused.workers)} was left out: the link adds "
            f"{refused.link_s_per_token * 1000:.0f} ms per token "
            f"({refused.decode_tokens_per_s:.1f} tokens/s instead of "
            f"{_without_link(refused):.0f}).",
        )
    return replace(result, notes=result.notes + notes + _link_notes(result, machine))


def _without_link(option: Plan) -> float:
    return 1 / max(1e-12, 1 / option.decode_tokens_per_s - option.link_s_per_token)


def _link_notes(result: Plan, machine: MachineProfile) -> tuple[str, ...]:
    used = {d.device for d in result.devices if d.remote}
    return tuple(
        f"The link to {r.endpoint} is not measured yet; assumed 1 GbE with a 1 ms round trip."
        for r in machine.remotes
        if r.engine_device in used and r.latency_s is None
    )


def _remote_budget(device: RemoteDevice, settings: Settings) -> int:
    """A worker's card says what its RAM lends, its margin taken already."""
    if device.kind == "CPU":
        return device.memory_free or 0
    return gpu_budget(device.memory_free or 0, settings)


def _remote_bandwidth(device: RemoteDevice) -> float:
    if device.bandwidth:
        return device.bandwidth
    return DEFAULT_RAM_BANDWIDTH if device.kind == "CPU" else DEFAULT_GPU_BANDWIDTH


def _remote_efficiency(device: RemoteDevice) -> float:
    return CPU_EFFICIENCY if device.kind == "CPU" else GPU_EFFICIENCY


def visit_seconds(
    device: RemoteDevice, shape: ModelShape, settings: Settings, tokens: int = 1
) -> float:
    """One trip into a remote block and back: a round trip, the activations both ways, and
    the attention mask there (a float per cell in use and token; half the context counted:
    a conversation midway). The graph itself crosses only when its shape changes (llama.cpp
    reuses it from token to token)."""
    latency = device.latency_s if device.latency_s is not None else DEFAULT_LINK_LATENCY_S
    rate = device.transfer_bps or DEFAULT_LINK_BPS
    mask = tokens * settings.n_ctx // 2 * ACTIVATION_BYTES
    return latency + (2 * tokens * shape.n_embd * ACTIVATION_BYTES + mask) / rate


def block_compute_bytes(shape: ModelShape, settings: Settings) -> int:
    """Scratch memory of a device holding layers (or their experts) but not the output head:
    the activations of one ubatch. 23-25 MiB measured for SmolLM2's upcycled MoE at ubatch
    512, on a worker's block of layers and for experts in RAM alike; fitted there."""
    return 4 * 2**20 + settings.n_ubatch * 4 * 18 * shape.n_embd


def ram_for_layers(shape: ModelShape, settings: Settings, n_layers: int) -> int:
    """A RAM limit (``Settings.ram_limit``) under which this computer keeps at most
    ``n_layers`` layers (with the embeddings, the output head and its buffers), so that the
    rest must go elsewhere: what ``moe-chat --self-test --workers`` uses to reach them."""
    size = _sizing(shape, settings)
    per_layer = shape.layer_bytes(0) + size.kv // max(1, shape.n_layers)
    return shape.embedding_bytes + shape.output_bytes + size.compute + n_layers * per_layer


def _remote_plans(shape: ModelShape, machine: MachineProfile, settings: Settings) -> list[Plan]:
    """Layouts that use other computers: blocks of whole layers there (a few sizes, the
    smallest that lets the rest fit here among them), and this computer's experts with the
    always-read part on a remote GPU when this computer has none."""
    remotes = sorted(
        (r for r in machine.remotes if r.memory_free),
        key=lambda r: (r.kind != "CPU", _remote_bandwidth(r)),
        reverse=True,
    )
    compute = block_compute_bytes(shape, settings)
    kv_per_layer = _sizing(shape, settings).kv / max(1, shape.n_layers)
    capacity = []
    for remote in remotes:
        room = _remote_budget(remote, settings) - compute
        per_layer = shape.layer_bytes(0) + kv_per_layer
        capacity.append(max(0, min(shape.n_layers, int(room // max(1.0, per_layer)))))
    most = min(shape.n_layers, sum(capacity))
    plans = []
    if most > 0:
        fitting = next(
            (
                r
                for r in range(1, most + 1)
                if _blocks_plan(shape, machine, settings, remotes, capacity, r).runs
            ),
            None,
        )
        sizes = {most} | ({fitting} if fitting else set())
        sizes |= {max(1, most * q // 4) for q in (1, 2, 3)}
        for count in sorted(sizes):
            option = _blocks_plan(shape, machine, settings, remotes, capacity, count)
            if option.runs:
                plans.append(option)
    if not machine.usable_gpus:
        for remote in remotes:
            dense = _dense_remote_plan(shape, machine, settings, remote)
            if remote.kind != "CPU" and dense is not None:
                plans.append(dense)
    return plans


def _blocks_plan(
    shape: ModelShape,
    machine: MachineProfile,
    settings: Settings,
    remotes: list[RemoteDevice],
    capacity: list[int],
    count: int,
) -> Plan:
    """``count`` whole layers on the remote devices (filled in order), the rest planned here.

    With a GPU here the remote blocks are the first layers and this computer's GPUs the last
    (with the output head); without one, this computer keeps the first layers and the output
    head and the remotes the last: either way each block is visited once per token.
    """
    counts, left = [], count
    for room in capacity:
        counts.append(min(room, left))
        left -= counts[-1]
    first = _split_blocks(shape, machine, settings, remotes, counts, first=True)
    if first.runs and first.gpu_bytes > 0:
        return first
    return _split_blocks(shape, machine, settings, remotes, counts, first=False)


def _split_blocks(
    shape: ModelShape,
    machine: MachineProfile,
    settings: Settings,
    remotes: list[RemoteDevice],
    counts: list[int],
    first: bool,
) -> Plan:
    total = sum(counts)
    start = 0 if first else shape.n_layers - total
    blocks: list[tuple[RemoteDevice, range]] = []
    for remote, n in zip(remotes, counts, strict=True):
        if n:
            blocks.append((remote, range(start, start + n)))
            start += n
    remote_layers = [i for _, layers in blocks for i in layers]
    local_machine = machine if first else replace(machine, gpus=())
    here = _plan_here(shape.without_layers(remote_layers), local_machine, settings)
    if not here.runs:
        return here
    n_ctx = here.n_ctx
    fill = min(n_ctx, TYPICAL_FILL)
    kv_total = shape.kv_bytes(n_ctx, settings.kv_bytes_per_element, settings.n_ubatch)
    kv_read = shape.kv_read_bytes(fill, settings.kv_bytes_per_element)
    compute = block_compute_bytes(shape, settings)
    devices, seconds, prompt_seconds, link = [], 0.0, 0.0, 0.0
    total_read = sum(shape.layer_read_bytes(i) for i in range(shape.n_layers)) or 1.0
    for remote, layers in blocks:
        share = len(layers) / max(1, shape.n_layers)
        read = sum(shape.layer_read_bytes(i) for i in layers) + kv_read * share
        device = DevicePlan(
            device=remote.engine_device,
            label=f"{remote.endpoint} {'RAM' if remote.kind == 'CPU' else remote.kind}",
            weights=sum(shape.layer_bytes(i) for i in layers),
            kv_cache=int(kv_total * share),
            compute=compute,
            budget=_remote_budget(remote, settings),
            bandwidth=_remote_bandwidth(remote),
            read_per_token=int(read),
            remote=True,
        )
        if device.total > device.budget:
            return replace(here, verdict=Verdict.TOO_LARGE)
        devices.append(device)
        seconds += read / (device.bandwidth * _remote_efficiency(remote))
        if remote.kind != "CPU":
            seconds += len(layers) * GPU_LAYER_COST_S
            flops = device.bandwidth * GPU_FLOPS_PER_BYTE_PER_S
        else:
            flops = _cpu_flops(machine)
        link += visit_seconds(remote, shape, settings)
        active = shape.active_params * sum(shape.layer_read_bytes(i) for i in layers) / total_read
        prompt_seconds += 2 * active / flops
        prompt_seconds += (
            visit_seconds(remote, shape, settings, settings.n_ubatch) / settings.n_ubatch
        )
    local_gpus = [d for d in here.devices if d.device != "CPU"]
    placement = here.placement
    n_local = shape.n_layers - total
    if first:  # remote blocks, then this computer's GPUs (with the output head)
        gpu_total = sum(d.budget for d in local_gpus) or 1
        split = [float(len(layers)) for _, layers in blocks]
        split += [(n_local + 1) * d.budget / gpu_total for d in local_gpus]
        placement = replace(
            placement,
            n_gpu_layers=-1,
            devices=tuple(d.device for d in devices) + tuple(d.device for d in local_gpus),
            tensor_split=tuple(split),
        )
    else:
        # This computer's CPU first, the remote blocks last. The engine counts the output
        # head as one more layer after the last, so it would land on the last remote (and
        # the logits cross the network each token): a rule keeps it here. A mapped file
        # would also count the remote layers' bytes here; they are read once and sent.
        split = [float(len(layers)) for _, layers in blocks]
        split[-1] += 1
        placement = replace(
            placement,
            n_gpu_layers=total + 1,
            devices=tuple(d.device for d in devices),
            tensor_split=tuple(split),
            rules=(*placement.rules, TensorRule(OUTPUT_HEAD, "CPU")),
            use_mmap=bool(settings.use_mmap),
        )
    where = ", ".join(f"{len(layers)} on {remote.endpoint}" for remote, layers in blocks)
    placement = replace(placement, label=f"{placement.label}; layers: {n_local} here, {where}")
    decode = 1 / (1 / here.decode_tokens_per_s + seconds + link)
    prompt = 1 / (1 / here.prompt_tokens_per_s + prompt_seconds)
    return replace(
        here,
        verdict=Verdict.POOLED,
        placement=placement,
        devices=(*here.devices, *devices),
        decode_tokens_per_s=decode,
        prompt_tokens_per_s=prompt,
        link_s_per_token=link,
    )


def _dense_remote_plan(
    shape: ModelShape, machine: MachineProfile, settings: Settings, remote: RemoteDevice
) -> Plan | None:
    """The always-read part (and what experts fit) on a remote GPU, the other experts in this
    computer's RAM: the remote is visited once per layer whose experts are here."""
    stand_in = GPUInfo(
        name=f"{remote.endpoint} {remote.kind}",
        vendor="unknown",
        memory_total=remote.memory_total,
        memory_free=remote.memory_free,
        bandwidth=_remote_bandwidth(remote),
        source="rpc",
        engine_device=remote.engine_device,
    )
    result = _plan_here(shape, replace(machine, gpus=(stand_in,)), settings)
    if not result.runs or result.gpu_bytes == 0:
        return None
    local_experts = [i for i in expert_layer_order(shape) if i not in set(result.gpu_expert_layers)]
    link = (len(local_experts) + 1) * visit_seconds(remote, shape, settings)
    link += shape.n_vocab * ACTIVATION_BYTES / (remote.transfer_bps or DEFAULT_LINK_BPS)
    prompt_link = (len(local_experts) + 1) * visit_seconds(
        remote, shape, settings, settings.n_ubatch
    )
    devices = tuple(replace(d, remote=True) if d.device == remote.engine_device else d
                    for d in result.devices)  # fmt: skip
    return replace(
        result,
        verdict=Verdict.POOLED,
        devices=devices,
        placement=replace(
            result.placement,
            devices=(remote.engine_device,),
            label=result.placement.label.replace(
                "the GPU", f"the GPU at {remote.endpoint}", 1
            ).replace("GPU,", f"GPU at {remote.endpoint},", 1),
        ),
        decode_tokens_per_s=1 / (1 / result.decode_tokens_per_s + link),
        prompt_tokens_per_s=1 / (1 / result.prompt_tokens_per_s + prompt_link / settings.n_ubatch),
        link_s_per_token=link,
    )


@dataclass(frozen=True)
class Candidate:
    model: CatalogModel
    quant: CatalogQuant
    plan: Plan


# A quantization above 4 bits is worth its size only when it stays comfortable to read at:
# this many tokens/s, or this share of the same model's 4-bit speed.
COMFORTABLE_TOKENS_PER_S = 20.0
COMFORTABLE_SHARE = 0.7
FOUR_BIT_QUALITY = 4  # catalog.QUANT_QUALITY of Q4_K_M and MXFP4
LOW_BIT_QUALITY = 3  # below this (Q2_K, Q3_K_M) only when no 4-bit choice runs fast enough
# The last recommendation keeps its place unless another is clearly better: in every speed
# threshold its speed counts this much more and the others' this much less, so a noisy
# bandwidth probe does not flip it.
SWITCH_MARGIN = 0.15


def rank(
    models: Iterable[CatalogModel],
    machine: MachineProfile,
    settings: Settings | None = None,
    incumbent: tuple[str, str] | None = None,
) -> list[Candidate]:
    """Every catalog model x quantization planned on this machine, best first.

    Best: runs at ``min_tokens_per_s`` or more at 4 bits or more (2- and 3-bit quants only
    after those), then the highest quality tier (less for 2- and 3-bit quants), then a
    quantization that is comfortable (4-bit, or higher when it reaches
    ``COMFORTABLE_TOKENS_PER_S`` or ``COMFORTABLE_SHARE`` of the model's 4-bit speed), then
    the best quantization, then the fastest.

    Args:
        incumbent: (model id, quant) recommended last time; while it still runs, it gets
            ``SWITCH_MARGIN`` in every speed threshold.
    """
    settings = settings or Settings()
    candidates = [
        Candidate(model, quant, plan(ModelShape.from_catalog(model, quant), machine, settings))
        for model in models
        for quant in model.quants
    ]

    held = any(incumbent == (c.model.id, c.quant.quant) and c.plan.runs for c in candidates)

    def speed(candidate: Candidate) -> float:
        rate = candidate.plan.decode_tokens_per_s if candidate.plan.runs else 0.0
        if not held:
            return rate
        if incumbent == (candidate.model.id, candidate.quant.quant):
            return rate * (1 + SWITCH_MARGIN)
        return rate / (1 + SWITCH_MARGIN)

    four_bit: dict[str, float] = {}  # model id: speed of its best quant of at most 4 bits
    for candidate in sorted(candidates, key=lambda c: c.quant.quality):
        if candidate.plan.runs and candidate.quant.quality <= FOUR_BIT_QUALITY:
            four_bit[candidate.model.id] = speed(candidate)

    def comfortable(candidate: Candidate) -> bool:
        reference = four_bit.get(candidate.model.id)
        rate = speed(candidate)
        return (
            candidate.quant.quality <= FOUR_BIT_QUALITY
            or reference is None
            or rate >= COMFORTABLE_TOKENS_PER_S
            or rate >= COMFORTABLE_SHARE * reference
        )

    def key(candidate: Candidate) -> tuple[bool, bool, bool, int, bool, int, float]:
        fast = candidate.plan.runs and speed(candidate) >= settings.min_tokens_per_s
        low_bit = candidate.quant.quality < LOW_BIT_QUALITY
        quality = candidate.model.quality_rank - candidate.quant.rank_penalty
        return (
            fast and not low_bit,
            fast,
            candidate.plan.runs,
            quality,
            comfortable(candidate),
            candidate.quant.quality,
            speed(candidate),
        )

    return sorted(candidates, key=key, reverse=True)


def recommend(
    models: Iterable[CatalogModel],
    machine: MachineProfile,
    settings: Settings | None = None,
    incumbent: tuple[str, str] | None = None,
) -> tuple[Candidate, str] | None:
    """The one model + quantization to suggest, with a one-sentence reason (None: nothing runs).

    ``incumbent`` (model id, quant) is the last recommendation, kept unless another is clearly
    better (``SWITCH_MARGIN``).
    """
    settings = settings or Settings()
    ranked = rank(models, machine, settings, incumbent)
    if not ranked or not ranked[0].plan.runs:
        return None
    best = ranked[0]
    p = best.plan
    if p.decode_tokens_per_s >= settings.min_tokens_per_s:
        reason = (
            f"{best.model.display_name} {best.quant.quant} is the strongest model that runs at "
            f"{settings.min_tokens_per_s:.0f}+ tokens/s here ({p.verdict.value.lower()}, "
            f"about {p.decode_tokens_per_s:.0f} tokens/s)."
        )
    else:
        reason = (
            f"Nothing reaches {settings.min_tokens_per_s:.0f} tokens/s here; "
            f"{best.model.display_name} {best.quant.quant} is the best that fits "
            f"(about {p.decode_tokens_per_s:.1f} tokens/s)."
        )
    return best, reason
