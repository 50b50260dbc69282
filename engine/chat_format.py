"""Chat formats: reasoning apart from the answer, parsed as the reply streams.

Models that think write their reasoning into the reply in their family's markup:

* Qwen3, DeepSeek-R1, GLM-4.5, SmallThinker and others: ``<think>…</think>`` before the
  answer. Some templates open ``<think>`` inside the prompt, so only ``</think>`` comes back.
* gpt-oss (OpenAI's "harmony" format): messages on channels,
  ``<|channel|>analysis<|message|>…<|end|><|start|>assistant<|channel|>final<|message|>…``
  ending with ``<|return|>`` (or ``<|call|>`` for a tool call).

The parsers below split that markup into ``content`` and ``reasoning`` pieces token by
token; a marker split across pieces is held back until it is whole, so raw markup never
reaches the user, the store, or the chat template of the next turn.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

# Harmony's markers (openai/harmony; llama.cpp renders them as text for gpt-oss).
H_START, H_CHANNEL, H_MESSAGE = "<|start|>", "<|channel|>", "<|message|>"
H_END, H_RETURN, H_CALL, H_CONSTRAIN = "<|end|>", "<|return|>", "<|call|>", "<|constrain|>"
_HARMONY_MARKERS = (H_START, H_CHANNEL, H_MESSAGE, H_END, H_RETURN, H_CALL, H_CONSTRAIN)


class Channel(str, Enum):
    """Where a piece of a reply belongs."""

    CONTENT = "content"
    REASONING = "reasoning"


@dataclass(frozen=True)
class Piece:
    """A piece of a streaming reply: answer text or reasoning text."""

    text: str
    channel: Channel = Channel.CONTENT


class ReplyFormat(str, Enum):
    """The markup a model's replies use, found from its chat template."""

    PLAIN = "plain"
    THINK = "think"
    HARMONY = "harmony"


@dataclass(frozen=True)
class TemplateOptions:
    """Options the families' chat templates read.

    Attributes:
        reasoning_effort: gpt-oss's "low", "medium" or "high" (None: the template's default).
        enable_thinking: Qwen3's and GLM's thinking switch (None: the template's default).
    """

    reasoning_effort: str | None = None
    enable_thinking: bool | None = None

    def as_kwargs(self) -> dict[str, object]:
        """The variables to render the template with; an unset option is left undefined."""
        kwargs: dict[str, object] = {}
        if self.reasoning_effort is not None:
            if self.reasoning_effort not in ("low", "medium", "high"):
                raise ValueError(f"reasoning effort must be low, medium or high, not "
                                 f"{self.reasoning_effort!r}")  # fmt: skip
            kwargs["reasoning_effort"] = self.reasoning_effort
        if self.enable_thinking is not None:
            kwargs["enable_thinking"] = self.enable_thinking
        return kwargs


def reply_format(template: str | None) -> ReplyFormat:
    """The markup the replies of a model with this chat template use."""
    if not template:
        return ReplyFormat.THINK  # a bare model may still think; <think> is only taken first
    if H_CHANNEL in template and H_MESSAGE in template:
        return ReplyFormat.HARMONY
    return ReplyFormat.THINK


def template_options_supported(template: str | None) -> tuple[str, ...]:
    """Which ``TemplateOptions`` fields this template reads."""
    if not template:
        return ()
    return tuple(name for name in ("reasoning_effort", "enable_thinking") if name in template)


class ReplyParser(Protocol):
    def feed(self, text: str) -> list[Piece]: ...

    def finish(self) -> list[Piece]: ...


def parser_for(fmt: ReplyFormat, prompt: str) -> ReplyParser:
    """A fresh parser for one reply to ``prompt`` (the rendered prompt decides whether the
    reply starts inside ``<think>``)."""
    if fmt is ReplyFormat.HARMONY:
        return HarmonyParser()
    tail = prompt.rstrip()
    return ThinkParser(in_reasoning=tail.endswith(THINK_OPEN))


def continuation(
    fmt: ReplyFormat, prompt: str, content: str, reasoning: str
) -> tuple[str, ReplyParser]:
    """Continue a reply that was cut off: the markup that reopens it after ``prompt`` (which
    ends with the template's generation prompt), and a parser already in the state that
    markup leaves it in, so that what the model writes next is split as if never stopped."""
    if fmt is ReplyFormat.HARMONY:
        markup = f"{H_CHANNEL}analysis{H_MESSAGE}{reasoning}" if reasoning else ""
        if content:
            if reasoning:
                markup += f"{H_END}{H_START}assistant"
            markup += f"{H_CHANNEL}final{H_MESSAGE}{content}"
    else:
        opened = prompt.rstrip().endswith(THINK_OPEN)
        markup = ("" if opened else f"{THINK_OPEN}\n") + reasoning if reasoning else ""
        if content:
            if reasoning or opened:
                markup += f"\n{THINK_CLOSE}\n\n"
            markup += content
    parser = parser_for(fmt, prompt)
    parser.feed(markup)  # what it yields was shown already
    return markup, parser


class PlainParser:
    """Text as it comes: a raw completion has no reply markup to split."""

    def feed(self, text: str) -> list[Piece]:
        return [Piece(text)] if text else []

    def finish(self) -> list[Piece]:
        return []


def _held_prefix(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest end of ``text`` that could start one of ``markers``."""
    longest = 0
    for marker in markers:
        for size in range(min(len(marker) - 1, len(text)), longest, -1):
            if text.endswith(marker[:size]):
                longest = size
                break
    return longest


class ThinkParser:
    """``<think>reasoning</think>answer``; ``<think>`` counts only at the start of a reply.

    Args:
        in_reasoning: the prompt already opened ``<think>`` (the reply begins inside it).
    """

    def __init__(self, in_reasoning: bool = False) -> None:
        self._state = "reasoning" if in_reasoning else "start"
        self._buffer = ""
        self._strip_lead = True  # whitespace right after a marker is markup, not text

    def feed(self, text: str) -> list[Piece]:
        self._buffer += text
        out: list[Piece] = []
        while self._buffer:
            if self._state == "start":
                stripped = self._buffer.lstrip()
                if not stripped:
                    return out  # only whitespace so far: wait
                if stripped.startswith(THINK_OPEN):
                    self._buffer = stripped[len(THINK_OPEN) :]
                    self._state, self._strip_lead = "reasoning", True
                    continue
                if THINK_OPEN.startswith(stripped):
                    return out  # could still become <think>
                self._state = "content"
                self._strip_lead = True
                continue
            if self._strip_lead:
                self._buffer = self._buffer.lstrip()
                if not self._buffer:
                    return out
                self._strip_lead = False
            if self._state == "content":
                out.append(Piece(self._buffer, Channel.CONTENT))
                self._buffer = ""
                return out
            # reasoning: up to </think>; trailing whitespace before it is held back
            end = self._buffer.find(THINK_CLOSE)
            if end >= 0:
                text_part = self._buffer[:end].rstrip()
                if text_part:
                    out.append(Piece(text_part, Channel.REASONING))
                self._buffer = self._buffer[end + len(THINK_CLOSE) :]
                self._state, self._strip_lead = "content", True
                continue
            hold = _held_prefix(self._buffer, (THINK_CLOSE,))
            emit = self._buffer[: len(self._buffer) - hold]
            kept = emit.rstrip()
            if kept:
                out.append(Piece(kept, Channel.REASONING))
            self._buffer = emit[len(kept) :] + self._buffer[len(emit) :]
            return out
        return out

    def finish(self) -> list[Piece]:
        rest, self._buffer = self._buffer, ""
        if self._state == "reasoning":
            rest = rest.rstrip()
            return [Piece(rest, Channel.REASONING)] if rest else []
        rest = rest.strip() if self._strip_lead else rest
        return [Piece(rest, Channel.CONTENT)] if rest else []


class HarmonyParser:
    """gpt-oss's channels: ``analysis`` is reasoning, ``final`` (and a plain ``commentary``
    preamble) is the answer; tool-call headers and the markers themselves are dropped.

    The reply begins inside an assistant header (the prompt ends with ``<|start|>assistant``).
    Without ``<|end|>`` (rendered as nothing when a build treats it as a control token) a new
    ``<|start|>`` also ends the message.
    """

    def __init__(self) -> None:
        self._state = "header"
        self._header = ""
        self._channel = Channel.CONTENT
        self._buffer = ""
        self._opened = False  # a message body was ever entered

    def _enter_body(self) -> None:
        header = self._header
        name = ""
        if H_CHANNEL in header:
            after = header.split(H_CHANNEL, 1)[1].strip()
            name = after.split()[0] if after.split() else ""
        tool_call = " to=" in f" {header}" and "to=assistant" not in header
        if name == "analysis" or tool_call:
            self._channel = Channel.REASONING
        else:  # final, a commentary preamble, or no channel at all
            self._channel = Channel.CONTENT
        self._state, self._header, self._opened = "body", "", True

    def feed(self, text: str) -> list[Piece]:
        self._buffer += text
        out: list[Piece] = []
        while self._buffer:
            positions = [(self._buffer.find(m), m) for m in _HARMONY_MARKERS]
            found = [(at, m) for at, m in positions if at >= 0]
            if not found:
                hold = _held_prefix(self._buffer, _HARMONY_MARKERS)
                self._take(self._buffer[: len(self._buffer) - hold], out)
                self._buffer = self._buffer[len(self._buffer) - hold :]
                return out
            at, marker = min(found)
            self._take(self._buffer[:at], out)
            self._buffer = self._buffer[at + len(marker) :]
            self._on_marker(marker)
        return out

    def _take(self, text: str, out: list[Piece]) -> None:
        if not text:
            return
        if self._state == "header":
            self._header += text
        elif self._state == "body":
            if out and out[-1].channel is self._channel:
                out[-1] = Piece(out[-1].text + text, self._channel)
            else:
                out.append(Piece(text, self._channel))
        # "done": text between a message's end and the next <|start|> is not the model's

    def _on_marker(self, marker: str) -> None:
        if marker == H_MESSAGE and self._state == "header":
            self._enter_body()
        elif marker == H_START:
            self._state, self._header = "header", ""
        elif marker in (H_END, H_RETURN, H_CALL):
            self._state = "done"
        elif self._state == "header":  # <|channel|>, <|constrain|> belong to the header
            self._header += marker

    def finish(self) -> list[Piece]:
        out: list[Piece] = []
        rest, self._buffer = self._buffer, ""
        self._take(rest, out)
        if not self._opened and self._header.strip():
            # Never a message: a model that ignored the format. Show its words, not markup.
            text = self._header
            for marker in _HARMONY_MARKERS:
                text = text.replace(marker, " ")
            out.append(Piece(" ".join(text.split()), Channel.CONTENT))
        self._header = ""
        return out


def split_reply(text: str, fmt: ReplyFormat | None = None) -> tuple[str, str]:
    """(content, reasoning) of a whole reply that still holds its markup.

    Used for replies saved before reasoning was kept apart. Without ``fmt`` the markup
    decides: harmony markers mean gpt-oss, a ``</think>`` means a thinking model.
    """
    if fmt is None:
        if H_CHANNEL in text or H_MESSAGE in text:
            fmt = ReplyFormat.HARMONY
        elif THINK_CLOSE in text or text.lstrip().startswith(THINK_OPEN):
            fmt = ReplyFormat.THINK
        else:
            return text, ""
    if fmt is ReplyFormat.THINK and THINK_CLOSE in text and THINK_OPEN not in text:
        parser: ReplyParser = ThinkParser(in_reasoning=True)
    else:
        parser = parser_for(fmt, "")
    pieces = parser.feed(text) + parser.finish()
    content = "".join(p.text for p in pieces if p.channel is Channel.CONTENT)
    reasoning = "".join(p.text for p in pieces if p.channel is Channel.REASONING)
    return content, reasoning


class StopMatcher:
    """Ends an answer at the first of a caller's stop strings (OpenAI's ``stop``).

    Only answer text is matched, never reasoning. Text that could be the start of a stop
    string is held back until the next piece decides it, so the stop string itself is never
    shown; ``finish`` returns what was held when the reply ends another way.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.stopped = False
        self._held = ""

    def feed(self, pieces: list[Piece]) -> list[Piece]:
        if not self.stops:
            return pieces
        out: list[Piece] = []
        for piece in pieces:
            if self.stopped:
                break
            if piece.channel is not Channel.CONTENT:
                out.append(piece)
                continue
            text = self._held + piece.text
            found = [i for i in (text.find(s) for s in self.stops) if i >= 0]
            if found:
                self.stopped = True
                text, self._held = text[: min(found)], ""
            else:
                held = _held_prefix(text, self.stops)
                text, self._held = text[: len(text) - held], text[len(text) - held :]
            if text:
                out.append(Piece(text))
        return out

    def finish(self) -> list[Piece]:
        held, self._held = self._held, ""
        return [Piece(held)] if held and not self.stopped else []
