"""Multi-turn conversations with reasoning through each family's real chat template, and
gpt-oss holding a conversation on its own template in the engine."""

from __future__ import annotations

import codecs
from pathlib import Path

import pytest

from engine.chat_format import ReplyFormat, TemplateOptions
from engine.session import LoadSettings, SamplingSettings, Session
from engine.synthetic import build_arch_model
from tests.helpers.templates import FAMILY_TEMPLATES, templates_dir

CONVERSATION = [
    {"role": "system", "content": "You are a geography tutor."},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris.", "reasoning": "The user wants the capital."},
    {"role": "user", "content": "And of Italy?"},
]


@pytest.fixture(scope="module")
def templates() -> Path:
    return templates_dir()


def _session_with(template: Path, arch: str, folder: Path) -> Session:
    path = build_arch_model(folder / f"{arch}.gguf", arch, chat_template=template.read_text())
    return Session(path, settings=LoadSettings(n_ctx=2048))


@pytest.mark.parametrize("arch", sorted(FAMILY_TEMPLATES))
def test_multi_turn_with_reasoning_renders_through_the_real_template(
    arch: str, templates: Path, tmp_path: Path
) -> None:
    with _session_with(templates / FAMILY_TEMPLATES[arch], arch, tmp_path) as session:
        prompt = session.format_prompt(CONVERSATION)
        reply = session.chat(CONVERSATION, SamplingSettings.greedy(8))
    assert "Capital of France?" in prompt and "Paris." in prompt and "And of Italy?" in prompt
    assert "You are a geography tutor." in prompt
    assert reply.stats.prompt_tokens > 10
    assert "<|channel|>" not in reply.text and "<think>" not in reply.text


def test_gpt_oss_holds_a_conversation_with_its_reasoning_apart(
    templates: Path, tmp_path: Path
) -> None:
    """What failed before: the second message. History goes back as final text plus
    thinking, earlier reasoning is dropped by the template, and no markup is in a reply."""
    with _session_with(templates / FAMILY_TEMPLATES["gpt-oss"], "gpt-oss", tmp_path) as session:
        assert session.reply_format is ReplyFormat.HARMONY
        conversation = [CONVERSATION[0], CONVERSATION[1]]
        for turn in range(3):
            reply = session.chat(conversation, SamplingSettings.greedy(12))
            assert "<|" not in reply.text + reply.reasoning
            conversation += [
                {"role": "assistant", "content": reply.text or f"Answer {turn}.",
                 "reasoning": reply.reasoning or f"Thought {turn}."},
                {"role": "user", "content": f"Next question {turn}?"},
            ]  # fmt: skip
        prompt = session.format_prompt(conversation, TemplateOptions(reasoning_effort="high"))
    assert "Reasoning: high" in prompt
    assert "<|start|>assistant<|channel|>final<|message|>" in prompt
    assert "<|channel|>analysis" not in prompt  # earlier turns' reasoning is not sent back
    assert prompt.endswith("<|start|>assistant")


def test_gpt_oss_reply_split_from_the_engines_own_token_pieces(
    templates: Path, tmp_path: Path
) -> None:
    """A harmony reply as the model emits it, token by token (markers are single special
    tokens, words are vocabulary tokens), rendered by the engine and parsed as it streams."""
    from engine.chat_format import Channel, parser_for
    from engine.synthetic import WORDS

    def word(text: str) -> int:
        return 3 + 256 + WORDS.index(text)  # "▁word" tokens follow <unk> <s> </s> and bytes

    def spelled(text: str) -> list[int]:
        return [3 + byte for byte in text.encode()]  # byte tokens, as a byte-level BPE would

    with _session_with(templates / FAMILY_TEMPLATES["gpt-oss"], "gpt-oss", tmp_path) as session:

        def marker(text: str) -> int:
            [token] = session.tokenize(text)
            return token

        tokens = [
            marker("<|channel|>"), *spelled("analysis"), marker("<|message|>"),
            word("hello"), word("world"), marker("<|end|>"), marker("<|start|>"),
            *spelled("assistant"), marker("<|channel|>"), *spelled("final"),
            marker("<|message|>"), word("river"), word("stone"),
        ]  # fmt: skip
        parser = parser_for(session.reply_format, session.format_prompt(CONVERSATION))
        decoder = codecs.getincrementaldecoder("utf-8")()
        pieces = []
        for token in tokens:
            pieces += parser.feed(decoder.decode(session.token_bytes(token)))
        pieces += parser.finish()
    answer = "".join(p.text for p in pieces if p.channel is Channel.CONTENT)
    thought = "".join(p.text for p in pieces if p.channel is Channel.REASONING)
    assert (answer.strip(), thought.strip()) == ("river stone", "hello world")


def test_qwen3_thinking_switch(templates: Path, tmp_path: Path) -> None:
    with _session_with(templates / FAMILY_TEMPLATES["qwen3moe"], "qwen3moe", tmp_path) as session:
        on = session.format_prompt(CONVERSATION)
        off = session.format_prompt(CONVERSATION, TemplateOptions(enable_thinking=False))
        reply = session.chat(CONVERSATION, SamplingSettings.greedy(8),
                             options=TemplateOptions(enable_thinking=False))  # fmt: skip
    assert on.endswith("<|im_start|>assistant\n")
    assert off.rstrip().endswith("</think>")
    assert "The user wants the capital." not in on  # reasoning of an earlier turn is dropped
    assert reply.reasoning == ""  # with thinking off, all of it is answer
