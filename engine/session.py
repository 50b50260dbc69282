"""A loaded model: load under a Placement, chat with streaming and cancel, per-reply Stats, unload.

Generation runs our own loop over llama.cpp's C API (decode, sampler chain, token pieces)
rather than llama-cpp-python's ``Llama`` class: that class cannot take tensor placements or
an eval callback, keeps a numpy copy of the logits per token, and hides where time goes.
A Session is used by one thread at a time; the app runs it in the model host's child process
(engine/host.py), which takes every client's requests in turn.
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import functools
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import psutil

from engine import catalog, engine_log
from engine.chat_format import (
    Channel,
    Piece,
    PlainParser,
    ReplyFormat,
    ReplyParser,
    StopMatcher,
    TemplateOptions,
    continuation,
    parser_for,
    reply_format,
)
from engine.devices import DeviceList, TensorOverrides, list_devices
from engine.errors import GenerationError, ModelLoadError
from engine.gguf_file import GGUFInfo, read_gguf
from engine.heat import HeatProfile, RoutingCapture, hot_read_share
from engine.native import HOT_EXPERTS_ENV, hot_experts_counter, llama_cpp
from engine.placement import Placement
from engine.units import format_bytes

# Used when a GGUF carries no chat template; the same ChatML fallback llama.cpp uses.
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Text repeated into a benchmark prompt: ordinary prose, so routing resembles a chat's.
BENCHMARK_TEXT = (
    "The expert router picks a few experts for every token, and the rest of the weights wait "
    "in memory. A good placement keeps what every token reads close to the compute. "
)

# {"role": "user" | "assistant" | "system", "content": "...", and for a reply that thought,
# "reasoning": "..."}. Reasoning goes back to each template under the names the families read.
Message = dict[str, str]
# Room a prompt leaves for the reply, at most: when a conversation outgrows the context its
# oldest turns are dropped until the reply has this much (or a quarter of the context).
REPLY_ROOM_TOKENS = 1024
# A new cut frees this share of the context beyond the reply's room, and stays where it is
# while the conversation still fits after it: the kept turns' keys/values are then reused
# turn after turn, where cutting the fewest turns each time would move the start of the
# prompt, and so recompute all of it, on every turn.
CUT_SLACK = 0.25
# Checkpoints kept of what cannot be cut back (recurrent state, sliding-window cache): where
# the last prompt's new tokens began (an edited last message goes back there) and before its
# last token (Regenerate, the next turn).
CHECKPOINTS = 2


@dataclass(frozen=True)
class SamplingSettings:
    """How the next token is chosen. ``temperature <= 0`` means greedy (deterministic)."""

    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    repeat_last_n: int = 64
    seed: int = -1  # -1: a fresh random seed per reply
    max_tokens: int = 1024
    stop: tuple[str, ...] = ()  # the answer ends before the first of these strings

    @classmethod
    def greedy(cls, max_tokens: int = 256) -> SamplingSettings:
        return cls(temperature=0.0, repeat_penalty=1.0, max_tokens=max_tokens)

    def updated(self, values: Mapping[str, Any]) -> SamplingSettings:
        """These settings with ``values`` (field name: number) put in; other keys are
        ignored, each value takes its field's type."""
        changes: dict[str, Any] = {}
        for item in fields(self):
            if item.name in values and item.name != "stop":
                changes[item.name] = type(getattr(self, item.name))(values[item.name])
        return replace(self, **changes)

    def differences(self, base: SamplingSettings) -> dict[str, Any]:
        """The fields (but ``stop``) whose values differ from ``base``'s."""
        return {
            item.name: getattr(self, item.name)
            for item in fields(self)
            if item.name != "stop" and getattr(self, item.name) != getattr(base, item.name)
        }


def recommended_sampling(
    catalog_id: str, file_values: Sequence[tuple[str, float]] = ()
) -> tuple[SamplingSettings, str]:
    """A model's default sampling, and where it comes from: MoE Chat's defaults, then its
    family's recommendation (the catalog entry ``catalog_id``, if any), then what its own
    file recommends (``general.sampling.*``)."""
    sampling, source = SamplingSettings(), "MoE Chat's defaults"
    models = catalog.load_catalog() if catalog_id else []
    entry = next((m for m in models if m.id == catalog_id), None)
    if entry is not None and entry.sampling:
        sampling, source = sampling.updated(dict(entry.sampling)), entry.sampling_source
    if file_values:
        sampling = sampling.updated(dict(file_values))
        source = "those written in the model file (general.sampling)"
    return sampling, source


@dataclass(frozen=True)
class LoadSettings:
    """Context and threading for one loaded model."""

    n_ctx: int = 4096  # 0: the model's own training context
    n_batch: int = 512
    n_ubatch: int = 512
    n_threads: int | None = None  # None: physical cores
    flash_attention: bool | None = None  # None: let the engine decide


@dataclass
class Stats:
    """What one reply cost. Times in seconds, memory in bytes."""

    prompt_tokens: int = 0
    prompt_tokens_cached: int = 0
    generated_tokens: int = 0
    time_to_first_token: float = 0.0
    prompt_tokens_per_s: float = 0.0
    generation_tokens_per_s: float = 0.0
    total_s: float = 0.0
    stop_reason: str = ""  # "end", "stop" (a stop string), "length", "cancelled", "context_full"
    dropped_turns: int = 0  # oldest turns left out because the conversation outgrew the context
    rss_bytes: int = 0
    device_memory: dict[str, tuple[int, int]] = field(default_factory=dict)  # name: (used, total)
    # With counting on and hot experts split off: the share of the generated tokens' expert
    # reads that the hot tensors served (engine.heat.hot_read_share).
    hot_read_share: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Reply:
    text: str  # the answer, without any reasoning markup
    stats: Stats
    reasoning: str = ""


def memory_snapshot() -> tuple[int, dict[str, tuple[int, int]]]:
    """Process RSS and (used, total) bytes of every non-CPU engine device."""
    rss = psutil.Process().memory_info().rss
    devices = {}
    for device in list_devices():
        if device.memory_total and device.memory_free is not None:
            devices[device.name] = (device.memory_total - device.memory_free, device.memory_total)
    return rss, devices


@functools.cache
def engine_uses_amx() -> bool:
    """Whether the engine's CPU backend would put weights in Intel AMX buffers.

    Its AMX matmul crashes or computes garbage on Q4_0/Q4_1 weights (ggml-org/llama.cpp#20824,
    #16315; SmolLM2's Q4_1 segfaults here on a Xeon with AMX), so loads on such a CPU keep
    weights in plain CPU buffers (``use_extra_bufts`` off, which also skips the AVX repack).
    """
    info = llama_cpp().llama_print_system_info()
    return b"AMX_INT8 = 1" in (info or b"")


def default_threads() -> int:
    return max(1, psutil.cpu_count(logical=False) or os.cpu_count() or 1)


class Session:
    """One model loaded in the engine, ready to chat.

    Args:
        path: the GGUF file (any part of a split model).
        placement: where tensors go; CPU only by default. ``engine.tuner.open_planned`` loads
            with the planner's (or the last tuning's) placement for this machine.
        settings: context size, batch sizes, threads.
        on_progress: called with 0..1 while weights load; return False to abort the load.
        dry_run: reserve nothing, read no weights; only measure what KV cache and compute
            buffers would take (``load_report``). The engine aborts the process on some
            dry-run failures, so use ``engine.dryrun.dry_run``, which runs this in a child.

    Raises:
        ModelFileError: the file is not a usable GGUF (from the header check).
        ModelLoadError: the engine refused the model (memory, device, unsupported content).
    """

    def __init__(
        self,
        path: str | Path,
        placement: Placement | None = None,
        settings: LoadSettings | None = None,
        on_progress: Callable[[float], bool] | None = None,
        dry_run: bool = False,
        heat: HeatProfile | None = None,
    ) -> None:
        self.settings = settings or LoadSettings()
        self._capture: RoutingCapture | None = None
        self._heat = heat
        self.dry_run = dry_run
        self.info: GGUFInfo = read_gguf(path)
        self.path = self.info.path  # the first part of a split model is what the engine loads
        self.placement = placement or Placement.cpu_only()
        self._ll = llama_cpp()
        self._model: Any = None
        self._ctx: Any = None
        self._cached: list[int] = []  # tokens whose keys/values are in the context's memory
        # where the last too-long conversation was cut: its system prompt, the index of the
        # first message kept, and that message (fit_prompt keeps the cut while it fits)
        self._cut: tuple[list[Message], int, Message] | None = None
        # a recurrent (Mamba, short-convolution) state cannot go back a token, nor a sliding
        # window's cache further than it holds, so that part is kept at a few points of the
        # last prompt (CHECKPOINTS), oldest first: (tokens, buffer, bytes of it used)
        self._checkpoints: list[tuple[int, ctypes.Array[ctypes.c_uint8], int]] = []
        self.hot_experts: tuple[int, ...] = ()  # each layer's experts in its hot tensors
        if not dry_run:
            self._check_fits()
        self._load(on_progress)

    # -- loading ---------------------------------------------------------------------------

    def _check_fits(self) -> None:
        ram = psutil.virtual_memory().total
        vram = sum(d.memory_total or 0 for d in list_devices() if d.is_gpu)
        needed = self.info.tensor_bytes
        if self.placement.n_gpu_layers == 0 and not self.placement.rules:
            vram = 0
        if needed > ram + vram:
            raise ModelLoadError(
                f"{self.info.name} needs {format_bytes(needed)} for its weights, but this "
                f"machine has {format_bytes(ram)} of RAM"
                + (f" and {format_bytes(vram)} of GPU memory." if vram else "."),
                "Pick a smaller model or a smaller quantization.",
            )

    def _load(self, on_progress: Callable[[float], bool] | None) -> None:
        ll = self._ll
        self._overrides = TensorOverrides(self.placement)
        params = ll.llama_model_default_params()
        params.n_gpu_layers = self.placement.n_gpu_layers
        params.load_mode = (
            ll.LLAMA_LOAD_MODE_MMAP
            if self.placement.use_mmap and not self.dry_run
            else ll.LLAMA_LOAD_MODE_NONE  # a dry run aborts the process in any other mode
        )
        params.no_alloc = self.dry_run
        params.no_host = self.placement.no_host
        params.use_extra_bufts = not engine_uses_amx()
        address = self._overrides.address
        if address is not None:
            params.tensor_buft_overrides = address
        if self.placement.devices:  # kept alive with the model, as the overrides are
            self._device_list = DeviceList(self.placement.devices)
            params.devices = self._device_list.address
        if self.placement.tensor_split:
            split = list(self.placement.tensor_split)
            slots = int(ll.llama_max_devices())  # the engine copies this many
            self._tensor_split = (ctypes.c_float * slots)(*(split + [0.0] * (slots - len(split))))
            params.tensor_split = self._tensor_split
        self._load_aborted = False
        if on_progress is not None:

            def progress(value: float, _user: Any) -> bool:
                keep_going = bool(on_progress(float(value)))
                self._load_aborted = not keep_going
                return keep_going

            self._progress_cb = ll.llama_progress_callback(progress)
            params.progress_callback = self._progress_cb

        with engine_log.capture() as lines, _hot_experts(self.placement.hot_experts):
            model = ll.llama_model_load_from_file(str(self.path).encode("utf-8"), params)
            if not model:
                raise self._load_error(lines, "the model")
            self._model = model
            self.hot_experts = _split_done(model, self.placement.hot_experts)
            self._vocab = ll.llama_model_get_vocab(model)
            self._make_context(lines)
        self.load_report = engine_log.parse_load_log(lines)
        self.n_vocab = int(ll.llama_vocab_n_tokens(self._vocab))
        self._piece_buffer = ctypes.create_string_buffer(256)
        self._formatter = self._make_formatter()

    def _make_context(self, lines: list[tuple[int, str]]) -> None:
        """The context (KV cache, compute buffers), with routing capture when profiling."""
        ll = self._ll
        ctx_params = ll.llama_context_default_params()
        settings = self.settings
        n_ctx = settings.n_ctx or self.info.context_length
        if self.info.context_length:  # beyond its training context a model degrades
            n_ctx = min(n_ctx, self.info.context_length)
        ctx_params.n_ctx = n_ctx
        ctx_params.n_batch = min(settings.n_batch, n_ctx)
        ctx_params.n_ubatch = min(settings.n_ubatch, settings.n_batch, n_ctx)
        threads = settings.n_threads or default_threads()
        ctx_params.n_threads = threads
        ctx_params.n_threads_batch = threads
        ctx_params.no_perf = True
        # Sliding-window layers keep only their window (plus a ubatch), not the whole context:
        # half of gpt-oss's KV cache. A prompt that goes back further than that starts from
        # a checkpoint of the last prompt (_save_checkpoint), else from scratch.
        ctx_params.swa_full = False
        ctx_params.offload_kqv = self.placement.offload_kv
        if settings.flash_attention is not None:
            ctx_params.flash_attn_type = (
                ll.LLAMA_FLASH_ATTN_TYPE_ENABLED
                if settings.flash_attention
                else ll.LLAMA_FLASH_ATTN_TYPE_DISABLED
            )
        self._capture = RoutingCapture(self._heat) if self._heat is not None else None
        if self._capture is not None:
            ctx_params.cb_eval = self._capture.callback
        ctx = ll.llama_init_from_model(self._model, ctx_params)
        if not ctx:
            self.close()
            raise self._load_error(lines, "its context")
        self._ctx = ctx
        self.n_ctx = int(ll.llama_n_ctx(ctx))
        self.n_batch = int(ctx_params.n_batch)
        self._memory = ll.llama_get_memory(ctx)
        self._cut_cache(0)

    @property
    def heat(self) -> HeatProfile | None:
        """The profile routing is counted into, None when profiling is off."""
        return self._heat

    def set_heat(self, heat: HeatProfile | None) -> None:
        """Turn routing capture on (counting into ``heat``) or off (None).

        The eval callback is fixed when a context is made, so this makes a new context: the
        next reply computes its prompt again. Off costs nothing; on costs a Python call per
        graph node (bench/heat.py measures it).
        """
        if heat is self._heat or self._model is None:
            self._heat = heat
            return
        self._ll.llama_free(self._ctx)
        self._ctx = None
        self._heat = heat
        with engine_log.capture() as lines:
            self._make_context(lines)

    def _load_error(self, lines: list[tuple[int, str]], what: str) -> ModelLoadError:
        if self._load_aborted:
            return ModelLoadError("Loading was cancelled.")
        report = engine_log.parse_load_log(lines)
        detail = " ".join(report.errors)[-400:]
        lowered = detail.lower()
        if "alloc" in lowered or "out of memory" in lowered or "memory" in lowered:
            return ModelLoadError(
                f"There is not enough memory to load {what} of {self.info.name}.",
                "Close other programs, use a shorter context, or pick a smaller quantization.",
            )
        return ModelLoadError(
            f"The engine could not load {what} of {self.info.name}"
            + (f": {detail}" if detail else "."),
            "The file may be damaged or need a newer engine.",
        )

    def _make_formatter(self) -> Any:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        def text_of(token: int) -> str:
            if token < 0:
                return ""
            raw = self._ll.llama_vocab_get_text(self._vocab, token)
            return raw.decode("utf-8", errors="replace") if raw else ""

        self._bos_text = text_of(self._ll.llama_vocab_bos(self._vocab))
        return Jinja2ChatFormatter(
            template=self.info.chat_template or CHATML_TEMPLATE,
            eos_token=text_of(self._ll.llama_vocab_eos(self._vocab)),
            bos_token=self._bos_text,
        )

    # -- prompting -------------------------------------------------------------------------

    @property
    def reply_format(self) -> ReplyFormat:
        """The markup this model's replies use (thinking tags, harmony channels)."""
        return reply_format(self.info.chat_template)

    def format_prompt(
        self, messages: Sequence[Message], options: TemplateOptions | None = None
    ) -> str:
        """The conversation rendered with the model's own chat template.

        An assistant message's ``reasoning`` is passed as ``thinking`` (gpt-oss) and as
        ``reasoning_content`` (Qwen3, GLM, DeepSeek); each template drops or keeps it as its
        family expects.
        """
        rendered = []
        for message in messages:
            item: dict[str, str] = {"role": message["role"], "content": message["content"]}
            reasoning = message.get("reasoning") or ""
            if message["role"] == "assistant" and reasoning:
                item["thinking"] = item["reasoning_content"] = reasoning
            rendered.append(item)
        kwargs = (options or TemplateOptions()).as_kwargs()
        try:
            result = self._formatter(messages=rendered, **kwargs)
        except Exception as exc:  # jinja raises TemplateError / ValueError from the template
            raise GenerationError(
                f"The model's chat template rejected this conversation: {exc}."
            ) from exc
        return str(result.prompt)

    def fit_prompt(
        self,
        messages: Sequence[Message],
        reply_room: int,
        options: TemplateOptions | None = None,
        resume: bool = False,
    ) -> tuple[list[int], str, int, ReplyParser]:
        """The prompt's tokens and text, with the oldest turns dropped until ``reply_room``
        tokens of context are left for the reply; how many turns were dropped; and the
        parser for the reply. With ``resume`` the last message is a reply cut short,
        reopened at the end of the prompt to be continued.

        A turn is a user message and the replies to it. The system prompt and the last user
        message are always kept. The cut made last time stays while the conversation fits
        after it; a new one leaves ``CUT_SLACK`` of the context free as well, when it can.

        Raises:
            GenerationError: even the system prompt and the last message do not fit.
        """
        messages = list(messages)
        partial = messages.pop() if resume and messages[-1]["role"] == "assistant" else None
        head = messages[:1] if messages and messages[0]["role"] == "system" else []
        body = messages[len(head) :]
        starts = [i for i, m in enumerate(body) if m["role"] == "user"]
        if not starts or starts[0] != 0:
            starts.insert(0, 0)
        limit = self.n_ctx - reply_room

        def attempt(dropped: int) -> tuple[list[int], str, ReplyParser]:
            text = self.format_prompt(head + body[starts[dropped] :], options)
            if partial is None:
                return self.tokenize(text), text, parser_for(self.reply_format, text)
            markup, parser = continuation(
                self.reply_format, text, partial["content"], partial.get("reasoning") or ""
            )
            return self.tokenize(text + markup), text + markup, parser

        tokens, text, parser = attempt(0)
        if len(tokens) <= limit:
            return tokens, text, 0, parser
        if self._cut is not None:
            cut_head, first, message = self._cut
            if cut_head == head and first in starts[1:] and body[first] == message:
                dropped = starts.index(first)
                tokens, text, parser = attempt(dropped)
                if len(tokens) <= limit:
                    return tokens, text, dropped, parser

        def fewest(most: int) -> tuple[list[int], str, int, ReplyParser] | None:
            # Fewer tokens with every turn dropped: the fewest drops that leave at most
            # ``most`` tokens (binary search).
            low, high = 1, len(starts) - 1
            best: tuple[list[int], str, int, ReplyParser] | None = None
            while low <= high:
                middle = (low + high) // 2
                tokens, text, parser = attempt(middle)
                if len(tokens) <= most:
                    best, high = (tokens, text, middle, parser), middle - 1
                else:
                    low = middle + 1
            return best

        best = fewest(limit - int(CUT_SLACK * self.n_ctx)) or fewest(limit)
        if best is None:
            raise GenerationError(
                f"The last message is too long for the model's context of {self.n_ctx} tokens "
                f"({len(tokens)} tokens with the system prompt, and the reply needs room).",
                "Shorten the message or the system prompt, or load the model with a longer "
                "context.",
            )
        first = starts[best[2]]
        self._cut = (head, first, body[first])
        return best

    def tokenize(self, text: str) -> list[int]:
        """Tokens of ``text``: special tokens parsed, BOS added once if the model wants it."""
        ll = self._ll
        data = text.encode("utf-8")
        add_bos = bool(ll.llama_vocab_get_add_bos(self._vocab))
        if add_bos and self._bos_text and text.startswith(self._bos_text):
            add_bos = False  # the template already wrote it
        capacity = len(data) + 8
        buffer = (ll.llama_token * capacity)()
        count = ll.llama_tokenize(self._vocab, data, len(data), buffer, capacity, add_bos, True)
        if count < 0:
            capacity = -count
            buffer = (ll.llama_token * capacity)()
            count = ll.llama_tokenize(self._vocab, data, len(data), buffer, capacity, add_bos, True)
        return list(buffer[:count])

    def token_bytes(self, token: int) -> bytes:
        """The bytes the model writes for ``token`` (special tokens as text; a character can
        span tokens, so decode these incrementally)."""
        buf = self._piece_buffer
        n = self._ll.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._ll.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        return buf.raw[:n]

    def _sampler(self, sampling: SamplingSettings) -> Any:
        ll = self._ll
        chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
        if sampling.repeat_penalty != 1.0 and sampling.repeat_last_n != 0:
            ll.llama_sampler_chain_add(
                chain,
                ll.llama_sampler_init_penalties(
                    self.n_vocab, sampling.repeat_last_n, sampling.repeat_penalty, 0.0, 0.0
                ),
            )
        if sampling.temperature <= 0:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_greedy())
            return chain
        if sampling.top_k > 0:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_k(sampling.top_k))
        if 0 < sampling.top_p < 1:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_p(sampling.top_p, 1))
        if sampling.min_p > 0:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_min_p(sampling.min_p, 1))
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_temp(sampling.temperature))
        seed = ll.LLAMA_DEFAULT_SEED if sampling.seed < 0 else sampling.seed
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_dist(seed))
        return chain

    def _decode(self, tokens: Sequence[int]) -> None:
        ll = self._ll
        array = (ll.llama_token * len(tokens))(*tokens)
        status = ll.llama_decode(self._ctx, ll.llama_batch_get_one(array, len(tokens)))
        if status != 0:
            raise GenerationError(
                f"The engine failed while computing the reply (code {status}).",
                "Try a shorter conversation or reload the model.",
            )
        self._cached.extend(tokens)

    # -- chatting --------------------------------------------------------------------------

    def stream(
        self,
        messages: Sequence[Message],
        sampling: SamplingSettings | None = None,
        cancel: threading.Event | None = None,
        options: TemplateOptions | None = None,
        resume: bool = False,
    ) -> Iterator[Piece]:
        """Yield the reply to ``messages`` piece by piece; ``self.last_stats`` holds its Stats.

        With ``resume``, a last assistant message is a reply that was cut short: the model
        goes on from its last word, and only the new text is yielded.

        Each piece is answer text or reasoning, split from the family's markup as it streams.
        A conversation longer than the context loses its oldest turns first (counted in
        ``Stats.dropped_turns``). Stops at the model's end-of-turn token, at one of
        ``sampling.stop``, at ``sampling.max_tokens``, when the context is full, or within one
        token of ``cancel`` being set (a cancel is not an error).

        Raises:
            GenerationError: the last message does not fit, the template fails, or the engine
                fails.
        """
        if self._ctx is None:
            raise GenerationError("No model is loaded.")
        sampling = sampling or SamplingSettings()
        stats = self.last_stats = Stats()
        start = time.perf_counter()
        room = min(sampling.max_tokens, REPLY_ROOM_TOKENS, self.n_ctx // 4)
        prompt, _text, stats.dropped_turns, parser = self.fit_prompt(
            messages, room, options, resume
        )
        yield from self._generate(prompt, parser, sampling, cancel, stats, start)

    def complete(
        self,
        prompt: str,
        sampling: SamplingSettings | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[Piece]:
        """Continue ``prompt`` as plain text, with no chat template (OpenAI's completions).

        Raises:
            GenerationError: the prompt leaves no room in the context, or the engine fails.
        """
        if self._ctx is None:
            raise GenerationError("No model is loaded.")
        sampling = sampling or SamplingSettings()
        stats = self.last_stats = Stats()
        start = time.perf_counter()
        tokens = self.tokenize(prompt)
        if not tokens or len(tokens) >= self.n_ctx:
            raise GenerationError(
                f"The prompt has {len(tokens)} tokens; the model's context holds {self.n_ctx}.",
                "Send a shorter prompt, or load the model with a longer context.",
            )
        yield from self._generate(tokens, PlainParser(), sampling, cancel, stats, start)

    def _generate(
        self,
        prompt: list[int],
        parser: ReplyParser,
        sampling: SamplingSettings,
        cancel: threading.Event | None,
        stats: Stats,
        start: float,
    ) -> Iterator[Piece]:
        """The token loop behind stream() and complete(): compute what of ``prompt`` is not
        cached, then sample, parse and yield until a stop condition."""
        cancel = cancel or threading.Event()
        ll = self._ll
        # Reuse the keys/values of the longest common prefix with what is already computed.
        common = 0
        for cached, new in zip(self._cached, prompt, strict=False):
            if cached != new:
                break
            common += 1
        common = min(common, len(prompt) - 1)  # at least one token must be decoded for logits
        if common < len(self._cached) and not self._can_rewind_to(common):
            common = self._restore_checkpoint(common)
        if not ll.llama_memory_seq_rm(self._memory, 0, common, -1):
            common = 0  # memory that cannot be cut partway (recurrent state): start over
            ll.llama_memory_clear(self._memory, True)
        self._cut_cache(common)
        stats.prompt_tokens = len(prompt)
        stats.prompt_tokens_cached = common
        stops = StopMatcher(sampling.stop)
        sampler = self._sampler(sampling)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        try:
            if self._capture is not None:
                self._capture.phase = "prompt"
            todo = prompt[common:]
            # what cannot be rewound far is kept where the new tokens begin and before the
            # prompt's last token: an edited last message, the next turn (this prompt, the
            # reply, a new message) or a regenerated reply starts from one of them
            checkpoint = self._checkpointed and len(todo) > 1
            if checkpoint and common:
                self._save_checkpoint()
            parts = [todo[:-1], todo[-1:]] if checkpoint else [todo]
            for number, part in enumerate(parts):
                for begin in range(0, len(part), self.n_batch):
                    if cancel.is_set():
                        stats.stop_reason = "cancelled"
                        break
                    self._decode(part[begin : begin + self.n_batch])
                if stats.stop_reason:
                    break
                if checkpoint and number == 0:
                    self._save_checkpoint()
            prompt_time = time.perf_counter() - start
            stats.prompt_tokens_per_s = (len(todo) / prompt_time) if prompt_time > 0 else 0.0
            first_token_at = 0.0
            counted = None
            if self._capture is not None and self._heat is not None:
                self._capture.phase = "generation"
                counted = self._heat.counts["generation"].copy()
            while not stats.stop_reason:
                token = ll.llama_sampler_sample(sampler, self._ctx, -1)
                if ll.llama_vocab_is_eog(self._vocab, token):
                    stats.stop_reason = "end"
                    break
                stats.generated_tokens += 1
                text = decoder.decode(self.token_bytes(token))
                pieces = stops.feed(parser.feed(text)) if text else []
                now = time.perf_counter()
                if stats.generated_tokens == 1:
                    first_token_at = now
                    stats.time_to_first_token = now - start
                else:  # kept current so a caller can show it live while the reply streams
                    stats.generation_tokens_per_s = (stats.generated_tokens - 1) / (
                        now - first_token_at
                    )
                yield from pieces
                if stops.stopped:
                    stats.stop_reason = "stop"
                    # the stop string's tokens are computed, so the cache stays one with them
                    self._decode([token])
                elif cancel.is_set():
                    stats.stop_reason = "cancelled"
                elif stats.generated_tokens >= sampling.max_tokens:
                    stats.stop_reason = "length"
                elif len(self._cached) + 1 >= self.n_ctx:
                    stats.stop_reason = "context_full"
                else:
                    self._decode([token])
            if not stops.stopped:
                yield from stops.feed(parser.feed(decoder.decode(b"", final=True)))
                yield from stops.feed(parser.finish())
                yield from stops.finish()
            stats.total_s = time.perf_counter() - start
            stats.rss_bytes, stats.device_memory = memory_snapshot()
            if counted is not None and self._heat is not None and any(self.hot_experts):
                reads = self._heat.counts["generation"] - counted
                stats.hot_read_share = hot_read_share(reads, self.hot_experts)
        finally:
            ll.llama_sampler_free(sampler)

    @functools.cached_property
    def _sliding(self) -> bool:
        """Whether some layers attend through a sliding window (their cache holds the window
        and a batch, not the whole context: gpt-oss)."""
        memory = self.info.context_memory
        return bool(memory and memory.sliding_window and any(m.sliding for m in memory.layers))

    @functools.cached_property
    def _checkpointed(self) -> bool:
        """Whether the context holds what cannot go back far: a recurrent state (not a
        token) or a sliding window's cache. Checkpoints keep that part as it was at points of
        the prompt."""
        memory = self.info.context_memory
        return bool(memory and memory.recurrent_layers) or self._sliding

    def _cut_cache(self, keep: int) -> None:
        """The first ``keep`` tokens are all the context still holds (the caller cut it)."""
        del self._cached[keep:]
        self._checkpoints = [c for c in self._checkpoints if c[0] <= keep]

    def _save_checkpoint(self) -> None:
        """Keep the recurrent state and sliding-window cache as they are now (llama.cpp's
        server does the same: only what cannot be cut, not full attention's cache)."""
        position = len(self._cached)
        if any(c[0] == position for c in self._checkpoints):
            return  # holds this state already: the tokens before it are the same (_cut_cache)
        ll = self._ll
        flags = ll.LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY
        size = int(ll.llama_state_seq_get_size_ext(self._ctx, 0, flags))
        spare = self._checkpoints.pop(0)[1] if len(self._checkpoints) >= CHECKPOINTS else None
        # the oldest one's buffer is used again when big enough (Granite 4.0-H-Small: 155 MB)
        data = spare if spare is not None and len(spare) >= size else (ctypes.c_uint8 * size)()
        if int(ll.llama_state_seq_get_data_ext(self._ctx, data, size, 0, flags)) == size:
            self._checkpoints.append((position, data, size))

    def _restore_checkpoint(self, common: int) -> int:
        """Put back the latest checkpointed state within the first ``common`` tokens; the
        tokens the cache holds from then on (0: none)."""
        usable = [c for c in self._checkpoints if c[0] <= common]
        if not usable:
            return 0
        position, data, size = max(usable, key=lambda c: c[0])
        ll = self._ll
        flags = ll.LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY
        if int(ll.llama_state_seq_set_data_ext(self._ctx, data, size, 0, flags)) == 0:
            self._checkpoints = []  # the state it left is not known: start over
            return 0
        return position

    def _can_rewind_to(self, position: int) -> bool:
        """Whether the cache still holds what position ``position`` needs: a sliding-window
        cache drops cells older than its window, and a recurrent state cannot go back."""
        memory = self.info.context_memory
        if memory is None:
            return True
        if memory.recurrent_layers:
            return False
        if self._sliding:
            oldest = int(self._ll.llama_memory_seq_pos_min(self._memory, 0))
            return oldest <= max(0, position - memory.sliding_window)
        return True

    @property
    def native(self) -> tuple[Any, Any, Any]:
        """(llama-cpp-python's low-level bindings, the ``llama_model`` pointer, its vocab):
        for benchmarks that run a bare llama.cpp loop on the same loaded weights."""
        return self._ll, self._model, self._vocab

    def forget(self) -> None:
        """Drop the computed prompt: the next reply computes everything again."""
        self._ll.llama_memory_clear(self._memory, True)
        self._cut_cache(0)

    def benchmark(self, prompt_tokens: int = 512, reply_tokens: int = 64) -> tuple[float, float]:
        """Prompt and generation tokens/s as llama-bench measures them (pp / tg).

        Computes a prompt of ``prompt_tokens`` tokens in batches, then generates
        ``reply_tokens`` greedy tokens whatever they are (end-of-turn included). Starts and
        ends with an empty cache.
        """
        if self._ctx is None:
            raise GenerationError("No model is loaded.")
        ll = self._ll
        reply_tokens = max(1, min(reply_tokens, self.n_ctx // 4))
        n_prompt = max(1, min(prompt_tokens, self.n_ctx - reply_tokens - 1))
        text = self.tokenize(BENCHMARK_TEXT)
        tokens = (text * (n_prompt // len(text) + 1))[:n_prompt]
        self.forget()
        sampler = self._sampler(SamplingSettings.greedy())
        try:
            start = time.perf_counter()
            for begin in range(0, n_prompt, self.n_batch):
                self._decode(tokens[begin : begin + self.n_batch])
            prompt_s = time.perf_counter() - start
            start = time.perf_counter()
            for _ in range(reply_tokens):
                self._decode([ll.llama_sampler_sample(sampler, self._ctx, -1)])
            reply_s = time.perf_counter() - start
        finally:
            ll.llama_sampler_free(sampler)
            self.forget()
        return n_prompt / max(prompt_s, 1e-9), reply_tokens / max(reply_s, 1e-9)

    def chat(
        self,
        messages: Sequence[Message],
        sampling: SamplingSettings | None = None,
        on_token: Callable[[Piece], None] | None = None,
        cancel: threading.Event | None = None,
        options: TemplateOptions | None = None,
    ) -> Reply:
        """Generate a whole reply, calling ``on_token`` with each piece as it arrives."""
        text: list[str] = []
        reasoning: list[str] = []
        for piece in self.stream(messages, sampling, cancel, options):
            (reasoning if piece.channel is Channel.REASONING else text).append(piece.text)
            if on_token is not None:
                on_token(piece)
        return Reply("".join(text), self.last_stats, "".join(reasoning))

    # -- unloading -------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def close(self) -> None:
        """Free the context and the weights now (idempotent)."""
        if self._ctx is not None:
            self._ll.llama_free(self._ctx)
            self._ctx = None
        if self._model is not None:
            self._ll.llama_model_free(self._model)
            self._model = None
        self._cut_cache(0)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit the bindings may be gone
            self.close()


@contextlib.contextmanager
def _hot_experts(counts: tuple[int, ...]) -> Iterator[None]:
    """The hot-experts variant reads each layer's hot count from the environment while the
    model loads (packaging/HOT-EXPERTS.md), so it is set to the placement's, or cleared,
    for exactly that long; a stock engine cannot split and says so here."""
    if any(counts) and hot_experts_counter() is None:
        raise ModelLoadError(
            "This engine keeps all of a layer's experts in one tensor, so it cannot put a "
            "layer's hot experts on a GPU apart from the rest.",
            "Use layer placement, or build the hot-experts engine: "
            "bash packaging/build_engine.sh cpu hot",
        )
    previous = os.environ.get(HOT_EXPERTS_ENV)
    if any(counts):
        os.environ[HOT_EXPERTS_ENV] = ",".join(str(n) for n in counts)
    else:
        os.environ.pop(HOT_EXPERTS_ENV, None)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(HOT_EXPERTS_ENV, None)
        else:
            os.environ[HOT_EXPERTS_ENV] = previous


def _split_done(model: Any, counts: tuple[int, ...]) -> tuple[int, ...]:
    """Each layer's hot experts as the engine made them (empty when none were asked for)."""
    counter = hot_experts_counter() if any(counts) else None
    if counter is None:
        return ()
    return tuple(int(counter(model, layer)) for layer in range(len(counts)))
