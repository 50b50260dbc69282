"""Tune for this machine: measure a few splits around the planner's and remember the fastest.

The planner predicts speed from a model of the hardware; this loads the model under each
candidate, measures prompt and generation tokens/s the way llama-bench does (a fixed prompt
batch, then greedy tokens regardless of end-of-turn), and keeps the knobs of the fastest per
model file and machine. The next "auto" load plans with those knobs, so a changed context
length or less free memory is still planned for, never replayed blindly.

Candidates are the planner's choice; one and two expert layers fewer on the GPU; the KV cache
in RAM (room for more expert layers); experts in RAM repacked for the CPU (faster
generation, slow prompts); larger prompt batches when experts stay in RAM (each batch copies
them to the GPU once); with an engine that splits a layer's experts, each layer's hottest
experts on the GPU or whole layers, whichever the planner did not pick; and on a CPU-only
machine, thread count and batch size.
Each is planned within the free memory measured before tuning starts, so none can exceed it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from engine.errors import ModelLoadError, StoreError
from engine.gguf_file import GGUFInfo, read_gguf
from engine.hardware import MachineProfile, RemoteDevice, detect, engine_view
from engine.heat import HeatProfile, gpu_layer_order, model_key
from engine.library import atomic_write_json
from engine.paths import tuning_dir
from engine.placement import Placement
from engine.planner import HotHeat, ModelShape, Plan, Verdict
from engine.planner import Settings as PlanSettings
from engine.planner import plan as make_plan
from engine.session import LoadSettings, Session

# What "fastest" means: the time of a typical turn, this many prompt tokens computed (a
# message plus what the cache cannot reuse) and this many tokens generated.
REFERENCE_PROMPT_TOKENS = 512
REFERENCE_REPLY_TOKENS = 256
FORMAT_VERSION = 1
# A candidate replaces the planner's choice only when its turn is this much faster: repeated
# tunings of one model on a 2-core machine measured the same split 25% apart.
MIN_GAIN = 0.05


@dataclass(frozen=True)
class Knobs:
    """What the tuner varies. None: the planner's (or the engine's) own choice."""

    gpu_expert_layers: int | None = None
    kv_on_gpu: bool = True
    n_ubatch: int = 512
    n_threads: int | None = None
    no_host: bool = False
    hot_experts: bool | None = None  # None: the planner weighs them (engine.planner.HotHeat)

    def describe(self, base: Knobs | None = None) -> str:
        """What differs from ``base`` (the planner's choice), in a few words."""
        base = base or Knobs()
        parts = []
        if self.gpu_expert_layers is not None and self.gpu_expert_layers != base.gpu_expert_layers:
            parts.append(f"{self.gpu_expert_layers} expert layers on the GPU")
        if self.kv_on_gpu != base.kv_on_gpu:
            parts.append("KV cache in RAM" if not self.kv_on_gpu else "KV cache on the GPU")
        if self.n_ubatch != base.n_ubatch:
            parts.append(f"prompt batches of {self.n_ubatch}")
        if self.n_threads != base.n_threads and self.n_threads:
            parts.append(f"{self.n_threads} threads")
        if self.no_host != base.no_host:
            parts.append("experts in RAM repacked for the CPU" if self.no_host else "no repacking")
        if self.hot_experts is not None and self.hot_experts != base.hot_experts:
            parts.append(
                "each layer's hottest experts on the GPU"
                if self.hot_experts
                else "whole expert layers on the GPU"
            )
        return ", ".join(parts) or "the planner's choice"


@dataclass(frozen=True)
class Choice:
    """A placement and load settings for one file on one machine, with the plan behind them."""

    knobs: Knobs
    plan: Plan
    placement: Placement
    n_ubatch: int
    n_threads: int | None
    tuned: bool = False  # the knobs come from a measurement on this machine
    machine_key: str = ""
    splits_experts: bool = False  # the engine can split a layer's experts (hot experts)


@dataclass(frozen=True)
class Measurement:
    knobs: Knobs
    label: str  # what differs from the planner's choice
    placement: str  # the placement's own label
    prompt_tokens_per_s: float
    generation_tokens_per_s: float
    predicted_prompt_tokens_per_s: float
    predicted_generation_tokens_per_s: float
    device_bytes: dict[str, int]  # what the engine reported allocating, per device

    @property
    def turn_seconds(self) -> float:
        """Seconds for the reference turn; lower is better."""
        if self.prompt_tokens_per_s <= 0 or self.generation_tokens_per_s <= 0:
            return float("inf")
        return (
            REFERENCE_PROMPT_TOKENS / self.prompt_tokens_per_s
            + REFERENCE_REPLY_TOKENS / self.generation_tokens_per_s
        )


@dataclass
class Tuning:
    """The measured candidates of one model file on one machine, and the fastest."""

    model_key: str
    machine_key: str
    model: str
    measurements: list[Measurement] = field(default_factory=list)
    finished_at: float = 0.0

    @property
    def best(self) -> Measurement | None:
        """The fastest candidate; the planner's own (measured first) unless another beats it
        by more than MIN_GAIN, which is below the spread of a noisy machine."""
        fastest = min(self.measurements, key=lambda m: m.turn_seconds, default=None)
        planner = self.measurements[0] if self.measurements else None
        if fastest is None or planner is None:
            return None
        if fastest.turn_seconds * (1 + MIN_GAIN) >= planner.turn_seconds:
            return planner
        return fastest

    def save(self) -> Path:
        path = tuning_path(self.model_key, self.machine_key)
        with contextlib.suppress(OSError, ValueError, AttributeError):
            if json.loads(path.read_text("utf-8")).get("version", 0) > FORMAT_VERSION:
                raise StoreError(f"{path} was written by a newer MoE Chat; not overwritten.")
        data = asdict(self)
        data["version"] = FORMAT_VERSION
        atomic_write_json(path, data)
        return path

    @classmethod
    def load(cls, model: str, machine: str) -> Tuning | None:
        """The remembered tuning, or None (never tuned, or the file is unreadable)."""
        try:
            data = json.loads(tuning_path(model, machine).read_text("utf-8"))
            if data.pop("version", None) != FORMAT_VERSION:
                return None
            measurements = [
                Measurement(**{**m, "knobs": Knobs(**m["knobs"])}) for m in data["measurements"]
            ]
            return cls(**{**data, "measurements": measurements})
        except (OSError, ValueError, KeyError, TypeError):
            return None


def tuning_path(model: str, machine: str) -> Path:
    return tuning_dir() / f"{model}-{machine}.json"


def machine_key(machine: MachineProfile) -> str:
    """Identifies the hardware a tuning was measured on; free memory is not part of it."""
    parts: dict[str, object] = {
        "cpu": machine.cpu_model,
        "cores": machine.physical_cores,
        "ram_gib": round((machine.ram_total or 0) / 2**30),
        "gpus": [(g.name, round((g.memory_total or 0) / 2**30)) for g in machine.usable_gpus],
        "backends": list(machine.engine_backends or ()),
    }
    if machine.remotes:  # a tuning with other computers' devices is another machine's
        parts["remotes"] = [(r.endpoint, r.name, round((r.memory_total or 0) / 2**30))
                            for r in machine.remotes]  # fmt: skip
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def this_machine(remotes: tuple[RemoteDevice, ...] = ()) -> MachineProfile:
    """The machine as a load sees it: engine devices, current free memory, and the devices
    other computers lend (``remotes``, from engine.rpc.connect)."""
    return detect(engine=engine_view(), remotes=remotes)


def choose(
    info: GGUFInfo,
    n_ctx: int,
    machine: MachineProfile,
    knobs: Knobs | None = None,
    tuned: bool = False,
    ram_limit: int | None = None,
) -> Choice:
    """Plan ``info`` on ``machine`` with ``knobs``. Heat counted earlier orders the layers and,
    with an engine that splits them, chooses each layer's hot experts."""
    knobs = knobs or Knobs()
    heat = HeatProfile.load(model_key(info.path)) if info.is_moe else None
    if heat is not None and (heat.n_layers, heat.n_experts) != (info.n_layers, info.n_experts):
        heat = None  # counts of another model: they say nothing of this one's experts
    order = None
    hot_heat = None
    if heat is not None and heat.total.sum() > 0:
        order = gpu_layer_order(heat.total, info.n_experts_used, knobs.n_ubatch)
        if machine.splits_experts:
            hot_heat = hot_heat_of(heat)
    settings = PlanSettings(
        n_ctx=n_ctx or info.context_length or 4096,
        n_ubatch=knobs.n_ubatch,
        kv_on_gpu=knobs.kv_on_gpu,
        gpu_expert_layers=knobs.gpu_expert_layers,
        layer_order=order,
        no_host=knobs.no_host,
        ram_limit=ram_limit,
        hot_heat=hot_heat,
        hot_experts=knobs.hot_experts,
    )
    result = make_plan(ModelShape.from_gguf(info), machine, settings)
    placement = result.placement if result.runs else Placement.cpu_only()
    if tuned:
        placement = replace(placement, label=f"Tuned: {placement.label}")
    return Choice(
        knobs,
        result,
        placement,
        knobs.n_ubatch,
        knobs.n_threads,
        tuned,
        machine_key(machine),
        machine.splits_experts,
    )


def hot_heat_of(heat: HeatProfile) -> HotHeat:
    """Hot sets are chosen on the first half of the counted tokens and their share measured
    on the second, so the predicted f is one the choice was not fitted to; with too few
    tokens for two halves, on all of them."""
    first, second = heat.halves()
    if second.sum() == 0:
        return HotHeat(heat.total)
    return HotHeat(first, second)


def remembered(info: GGUFInfo, machine: MachineProfile) -> Knobs | None:
    """The knobs the last tuning of this file on this machine found fastest, if any."""
    tuning = Tuning.load(model_key(info.path), machine_key(machine))
    best = tuning.best if tuning is not None else None
    return best.knobs if best is not None else None


def auto_choice(
    info: GGUFInfo,
    n_ctx: int,
    machine: MachineProfile | None = None,
    default: Knobs | None = None,
    ram_limit: int | None = None,
) -> Choice:
    """What an "auto" load uses: the remembered tuning if there is one, else the planner's
    with ``default`` knobs (the caller's batch size and threads)."""
    machine = machine or this_machine()
    knobs = remembered(info, machine)
    return choose(info, n_ctx, machine, knobs or default, knobs is not None, ram_limit)


def open_planned(
    path: str | Path,
    settings: LoadSettings | None = None,
    on_progress: Callable[[float], bool] | None = None,
    heat: HeatProfile | None = None,
    remotes: tuple[RemoteDevice, ...] = (),
    ram_limit: int | None = None,
) -> tuple[Session, Choice]:
    """Load ``path`` with the split planned for this machine (``auto_choice``); the batch
    size and threads of ``settings`` are the defaults a remembered tuning overrides.
    ``remotes`` are devices other computers lend (registered with the engine already);
    ``ram_limit`` caps what the plan uses of this computer's RAM.

    Raises:
        ModelFileError, ModelLoadError: as ``Session`` does.
    """
    settings = settings or LoadSettings()
    info = read_gguf(path)
    asked = Knobs(n_ubatch=settings.n_ubatch, n_threads=settings.n_threads)
    choice = auto_choice(info, settings.n_ctx, this_machine(remotes), asked, ram_limit)
    settings = replace(
        settings,
        n_batch=max(settings.n_batch, choice.n_ubatch),
        n_ubatch=choice.n_ubatch,
        n_threads=choice.n_threads or settings.n_threads,
    )
    session = Session(info.path, choice.placement, settings, on_progress=on_progress, heat=heat)
    return session, choice


def candidates(info: GGUFInfo, n_ctx: int, machine: MachineProfile) -> list[Choice]:
    """The splits worth measuring, the planner's first; each fits the machine's free memory."""
    base = choose(info, n_ctx, machine)
    if not base.plan.runs:
        raise ModelLoadError(f"{info.name} does not fit this machine: {base.plan.summary()}")
    variants: list[Knobs] = []
    on_gpu = base.plan.gpu_bytes > 0
    if on_gpu:
        layered = base
        if base.placement.hot_experts:  # the planner chose hot experts: measure layers too
            layered = choose(info, n_ctx, machine, Knobs(hot_experts=False))
            variants.append(layered.knobs)
        elif machine.splits_experts:  # the hot experts' layout, if the heat gives one
            variants.append(Knobs(hot_experts=True))
        layers = len(layered.plan.gpu_expert_layers)
        variants += [Knobs(gpu_expert_layers=n) for n in (layers - 1, layers - 2) if n >= 0]
        if base.plan.verdict is Verdict.HYBRID:
            variants += [Knobs(kv_on_gpu=False), Knobs(no_host=True)]
            variants += [Knobs(n_ubatch=n) for n in (1024, 2048)]
    else:
        physical, logical = machine.physical_cores or 1, machine.logical_cores or 1
        if logical > physical:
            variants.append(Knobs(n_threads=logical))
        variants += [Knobs(n_ubatch=n) for n in (256, 1024)]
    chosen = [base]
    seen = {_identity(base)}
    for knobs in variants:
        choice = choose(info, n_ctx, machine, knobs)
        same_kind = (choice.plan.gpu_bytes > 0) == on_gpu  # a GPU variant that fell back to CPU
        if choice.plan.runs and same_kind and _fits(choice.plan) and _identity(choice) not in seen:
            seen.add(_identity(choice))
            chosen.append(choice)
    return chosen


def _identity(choice: Choice) -> tuple[Any, ...]:
    return (replace(choice.placement, label=""), choice.n_ubatch, choice.n_threads)


def _fits(result: Plan) -> bool:
    return all(device.total <= device.budget for device in result.devices)


class TuningCancelled(Exception):
    pass


def tune(
    path: str | Path,
    n_ctx: int = 4096,
    machine: MachineProfile | None = None,
    on_progress: Callable[[float, str], None] | None = None,
    cancel: threading.Event | None = None,
    prompt_tokens: int = 512,
    reply_tokens: int = 64,
    rounds: int = 2,
) -> Tuning:
    """Measure every candidate, remember the fastest (``Tuning.best``) and return them all.

    Only one candidate is loaded at a time; free the model before calling this.

    Raises:
        TuningCancelled: ``cancel`` was set (nothing is remembered).
        ModelLoadError, ModelFileError, GenerationError: as loading and generating do.
    """
    cancel = cancel or threading.Event()
    info = read_gguf(path)
    machine = machine or this_machine()
    choices = candidates(info, n_ctx, machine)
    tuning = Tuning(model_key(info.path), machine_key(machine), info.name)
    steps = len(choices) * (rounds + 1)
    done = 0

    def report(message: str) -> None:
        if cancel.is_set():
            raise TuningCancelled
        if on_progress is not None:
            on_progress(done / steps, message)

    for index, choice in enumerate(choices, 1):
        label = choice.knobs.describe()
        report(f"Loading candidate {index} of {len(choices)}: {label}")
        settings = LoadSettings(
            n_ctx=n_ctx,
            n_batch=max(512, choice.n_ubatch),
            n_ubatch=choice.n_ubatch,
            n_threads=choice.n_threads,
        )
        try:
            session = Session(
                info.path, choice.placement, settings, on_progress=lambda _v: not cancel.is_set()
            )
        except ModelLoadError:
            if cancel.is_set():  # the load stopped because of the cancel
                raise TuningCancelled from None
            raise
        with session:
            done += 1
            session.benchmark(32, 4)  # warm-up: first touches of weights and buffers
            prompt_rates, reply_rates = [], []
            for round_ in range(rounds):
                report(f"Measuring candidate {index} of {len(choices)}: {label} ({round_ + 1})")
                prompt_rate, reply_rate = session.benchmark(prompt_tokens, reply_tokens)
                prompt_rates.append(prompt_rate)
                reply_rates.append(reply_rate)
                done += 1
            measured = session.load_report.device_totals()
        tuning.measurements.append(
            Measurement(
                knobs=choice.knobs,
                label=label,
                placement=choice.placement.label,
                prompt_tokens_per_s=statistics.median(prompt_rates),
                generation_tokens_per_s=statistics.median(reply_rates),
                predicted_prompt_tokens_per_s=choice.plan.prompt_tokens_per_s,
                predicted_generation_tokens_per_s=choice.plan.decode_tokens_per_s,
                device_bytes=measured,
            )
        )
    report("Done")
    tuning.finished_at = time.time()
    tuning.save()
    return tuning
