"""Reasoning apart from the answer, for each family's real output markup, however it is split."""

from __future__ import annotations

import random

import pytest

from engine.chat_format import (
    Channel,
    HarmonyParser,
    Piece,
    ReplyFormat,
    ReplyParser,
    StopMatcher,
    TemplateOptions,
    ThinkParser,
    continuation,
    parser_for,
    reply_format,
    split_reply,
)

# What gpt-oss writes after the prompt's "<|start|>assistant" (harmony format).
HARMONY_REPLY = (
    "<|channel|>analysis<|message|>User asks for the capital. Simple: Paris.<|end|>"
    "<|start|>assistant<|channel|>final<|message|>The capital of France is **Paris**."
    "<|return|>"
)
# The same, as a build renders it that treats <|end|> and <|return|> as control tokens
# (printed as nothing).
HARMONY_NO_END = (
    "<|channel|>analysis<|message|>User asks for the capital. Simple: Paris."
    "<|start|>assistant<|channel|>final<|message|>The capital of France is **Paris**."
)
QWEN3_REPLY = "<think>\nThe user greets me.\nI greet back.\n</think>\n\nHello! How can I help?"


def _run(parser: ReplyParser, pieces: list[str]) -> tuple[str, str]:
    out = []
    for piece in pieces:
        out += parser.feed(piece)
    out += parser.finish()
    content = "".join(p.text for p in out if p.channel is Channel.CONTENT)
    reasoning = "".join(p.text for p in out if p.channel is Channel.REASONING)
    return content, reasoning


def _splits(text: str, seed: int) -> list[str]:
    """``text`` cut at random places, markers included (as a tokenizer may cut them)."""
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(text)), k=min(len(text) - 1, len(text) // 3)))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


@pytest.mark.parametrize("reply", [HARMONY_REPLY, HARMONY_NO_END])
def test_harmony_channels_split_into_reasoning_and_answer_however_the_pieces_fall(
    reply: str,
) -> None:
    expected = ("The capital of France is **Paris**.", "User asks for the capital. Simple: Paris.")
    assert _run(HarmonyParser(), [reply]) == expected
    assert _run(HarmonyParser(), list(reply)) == expected  # one character per piece
    for seed in range(20):
        assert _run(HarmonyParser(), _splits(reply, seed)) == expected


def test_harmony_tool_call_and_commentary_preamble() -> None:
    reply = (
        "<|channel|>analysis<|message|>Need the weather tool.<|end|>"
        "<|start|>assistant<|channel|>commentary<|message|>Checking the weather.<|end|>"
        "<|start|>assistant to=functions.get_weather<|channel|>commentary <|constrain|>json"
        '<|message|>{"city": "Paris"}<|call|>'
    )
    content, reasoning = _run(HarmonyParser(), _splits(reply, 3))
    assert content == "Checking the weather."
    assert reasoning == 'Need the weather tool.{"city": "Paris"}'
    assert "<|" not in content + reasoning


def test_harmony_output_without_any_header_is_shown_as_words_not_markup() -> None:
    content, reasoning = _run(HarmonyParser(), ["hello <|channel|> world"])
    assert (content, reasoning) == ("hello world", "")


def test_think_block_at_the_start_of_a_reply() -> None:
    expected = ("Hello! How can I help?", "The user greets me.\nI greet back.")
    assert _run(ThinkParser(), list(QWEN3_REPLY)) == expected
    for seed in range(20):
        assert _run(ThinkParser(), _splits(QWEN3_REPLY, seed)) == expected


def test_template_that_opens_think_in_the_prompt_gets_only_the_closing_tag_back() -> None:
    # DeepSeek-R1 and GLM-style templates end the prompt with "<think>\n".
    parser = parser_for(ReplyFormat.THINK, "<|Assistant|><think>\n")
    reply = "Let me count: 2 + 2 = 4.\n</think>\n\nIt is 4."
    assert _run(parser, list(reply)) == ("It is 4.", "Let me count: 2 + 2 = 4.")


def test_thinking_turned_off_in_the_prompt_starts_in_the_answer() -> None:
    # Qwen3's enable_thinking=False renders an empty think block into the prompt.
    parser = parser_for(ReplyFormat.THINK, "<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert _run(parser, ["Hi", " there"]) == ("Hi there", "")


def test_think_tags_later_in_an_answer_are_text() -> None:
    reply = "Use <think> tags like </think> this."
    assert _run(ThinkParser(), list(reply)) == (reply, "")


def test_a_reply_cut_off_while_thinking_keeps_its_reasoning() -> None:
    assert _run(ThinkParser(), ["<th", "ink>Still go", "ing</th"]) == ("", "Still going</th")


def test_plain_replies_pass_through_untouched() -> None:
    reply = "  Two spaces, then\n\ttext with < and <| in it."
    assert _run(ThinkParser(), list(reply)) == (reply.lstrip(), "")


def test_reply_format_follows_the_template() -> None:
    assert reply_format("{{ '<|start|>assistant<|channel|>final<|message|>' }}") is (
        ReplyFormat.HARMONY
    )
    assert reply_format("{% if enable_thinking %}<think>{% endif %}") is ReplyFormat.THINK
    assert reply_format(None) is ReplyFormat.THINK


def test_split_reply_repairs_replies_saved_with_their_markup() -> None:
    assert split_reply(HARMONY_REPLY) == (
        "The capital of France is **Paris**.",
        "User asks for the capital. Simple: Paris.",
    )
    assert split_reply(QWEN3_REPLY) == (
        "Hello! How can I help?",
        "The user greets me.\nI greet back.",
    )
    assert split_reply("Reasoned.\n</think>\nAnswer.") == ("Answer.", "Reasoned.")
    assert split_reply("Just an answer.") == ("Just an answer.", "")


def test_template_options() -> None:
    assert TemplateOptions().as_kwargs() == {}
    assert TemplateOptions("high", False).as_kwargs() == {
        "reasoning_effort": "high",
        "enable_thinking": False,
    }
    with pytest.raises(ValueError, match="low, medium or high"):
        TemplateOptions("extreme").as_kwargs()


def test_a_stop_string_is_found_wherever_the_pieces_cut_it() -> None:
    text = "The answer is 42.\nUser: next question"
    for cut in range(1, len(text)):
        for second in range(cut, len(text)):
            matcher = StopMatcher(("\nUser:", "never"))
            pieces = [text[:cut], text[cut:second], text[second:]]
            shown = [p for chunk in pieces if chunk for p in matcher.feed([Piece(chunk)])]
            shown += matcher.finish()
            assert "".join(p.text for p in shown) == "The answer is 42."
            assert matcher.stopped


def test_without_a_stop_string_held_text_comes_out_at_the_end() -> None:
    matcher = StopMatcher(("</end>",))
    shown = matcher.feed([Piece("thinking", Channel.REASONING), Piece("ends in </e")])
    assert [p.text for p in shown] == ["thinking", "ends in "]
    assert [p.text for p in matcher.finish()] == ["</e"] and not matcher.stopped


@pytest.mark.parametrize(
    ("fmt", "prompt", "reply"),
    [
        (ReplyFormat.HARMONY, "<|start|>assistant", HARMONY_REPLY),
        (ReplyFormat.THINK, "<|im_start|>assistant\n", QWEN3_REPLY),
        (ReplyFormat.THINK, "<|Assistant|><think>\n", QWEN3_REPLY.removeprefix("<think>")),
        (ReplyFormat.THINK, "<|im_start|>assistant\n<think>\n\n</think>\n\n", "Hi there, you."),
    ],
)
def test_a_reply_cut_anywhere_continues_as_if_never_stopped(
    fmt: ReplyFormat, prompt: str, reply: str
) -> None:
    """Continue: what was shown of a cut reply is reopened after the prompt; whatever the
    model writes next is split as one run over the reopened text would split it, and a reply
    cut inside a word of its reasoning or answer comes out whole."""
    whole = _run(parser_for(fmt, prompt), [reply])
    for cut in range(len(reply) + 1):
        parser = parser_for(fmt, prompt)
        shown = parser.feed(reply[:cut])  # a stopped reply keeps what was shown
        content = "".join(p.text for p in shown if p.channel is Channel.CONTENT)
        reasoning = "".join(p.text for p in shown if p.channel is Channel.REASONING)
        markup, resumed = continuation(fmt, prompt, content, reasoning)
        rest_content, rest_reasoning = _run(resumed, [reply[cut:]])
        one_run = _run(parser_for(fmt, prompt), [markup + reply[cut:]])
        assert (content + rest_content, reasoning + rest_reasoning) == one_run, (cut, markup)
        for word in ("greet", "help", "capital", "France", "there"):
            at = reply.find(word)
            if at >= 0 and cut == at + 2:  # inside a word: nothing held back
                assert one_run == whole, (cut, markup)
