"""engine/session.py on the synthetic MoE: streaming, cancel, stats, sampling, errors, unload."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from engine.chat_format import Channel, Piece
from engine.errors import GenerationError, ModelFileError, ModelLoadError
from engine.session import LoadSettings, SamplingSettings, Session, Stats
from engine.synthetic import SyntheticSpec
from tests.helpers.models import copy_gguf

HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture
def session(synthetic_model: Path) -> Session:
    with Session(synthetic_model) as loaded:
        yield loaded


def test_stream_yields_pieces_and_stats(session: Session) -> None:
    pieces = list(session.stream(HELLO, SamplingSettings(seed=1, max_tokens=16)))
    stats = session.last_stats
    assert len(pieces) >= 2 and "".join(p.text for p in pieces).strip()
    assert {p.channel for p in pieces} == {Channel.CONTENT}
    assert stats.generated_tokens == 16 and stats.stop_reason == "length"
    assert stats.prompt_tokens > 3 and stats.prompt_tokens_cached == 0
    assert 0 < stats.time_to_first_token <= stats.total_s
    assert stats.prompt_tokens_per_s > 0 and stats.generation_tokens_per_s > 0
    assert stats.rss_bytes > 10 * 2**20
    assert set(Stats().to_dict()) <= set(stats.to_dict())


def test_prompt_uses_the_models_own_chat_template(session: Session) -> None:
    prompt = session.format_prompt(HELLO)
    assert prompt == "user: hello\nassistant:"


def test_greedy_is_deterministic_and_reuses_the_cached_prompt(session: Session) -> None:
    first = session.chat(HELLO, SamplingSettings.greedy(12))
    second = session.chat(HELLO, SamplingSettings.greedy(12))
    assert first.text == second.text
    assert second.stats.prompt_tokens_cached == second.stats.prompt_tokens - 1


def test_follow_up_reuses_the_shared_prefix(session: Session) -> None:
    first = session.chat(HELLO, SamplingSettings.greedy(8))
    follow = [
        *HELLO,
        {"role": "assistant", "content": first.text},
        {"role": "user", "content": "more"},
    ]
    reply = session.chat(follow, SamplingSettings.greedy(8))
    assert reply.stats.prompt_tokens_cached >= first.stats.prompt_tokens


def test_same_seed_same_reply(session: Session) -> None:
    sampling = SamplingSettings(temperature=1.0, seed=42, max_tokens=20)
    assert session.chat(HELLO, sampling).text == session.chat(HELLO, sampling).text


def test_cancel_stops_within_one_token(session: Session) -> None:
    cancel = threading.Event()
    seen = []

    def on_token(piece: Piece) -> None:
        seen.append(piece)
        if len(seen) == 3:
            cancel.set()

    reply = session.chat(HELLO, SamplingSettings(seed=3, max_tokens=200), on_token, cancel)
    assert reply.stats.stop_reason == "cancelled"
    assert reply.stats.generated_tokens <= 4
    assert len(seen) <= 4


def test_cancel_before_start_is_not_an_error(session: Session) -> None:
    cancel = threading.Event()
    cancel.set()
    reply = session.chat(HELLO, SamplingSettings(max_tokens=50), cancel=cancel)
    assert reply.stats.stop_reason == "cancelled" and reply.stats.generated_tokens == 0


def test_session_is_usable_after_a_cancel(session: Session) -> None:
    cancel = threading.Event()
    cancel.set()
    session.chat(HELLO, cancel=cancel)
    assert session.chat(HELLO, SamplingSettings.greedy(5)).stats.generated_tokens == 5


def test_context_full_ends_the_reply(synthetic_model: Path) -> None:
    with Session(synthetic_model, settings=LoadSettings(n_ctx=64)) as small:
        reply = small.chat(HELLO, SamplingSettings(seed=1, max_tokens=5000))
        n_ctx = small.n_ctx  # the engine rounds the context up to its padding (256)
    assert reply.stats.stop_reason == "context_full"
    assert reply.stats.prompt_tokens + reply.stats.generated_tokens == n_ctx


def test_prompt_longer_than_the_context_is_refused(synthetic_model: Path) -> None:
    with Session(synthetic_model, settings=LoadSettings(n_ctx=64)) as small:
        long = [{"role": "user", "content": "hello world " * (small.n_ctx + 10)}]
        with pytest.raises(GenerationError, match="last message is too long"):
            small.chat(long)


def test_a_conversation_longer_than_the_context_drops_its_oldest_turns(
    synthetic_model: Path,
) -> None:
    """The chat never ends by itself: old turns go, the system prompt and the question stay."""
    system = {"role": "system", "content": "You are terse."}
    with Session(synthetic_model, settings=LoadSettings(n_ctx=256)) as small:
        conversation = [system]
        dropped = []
        for turn in range(12):
            conversation.append({"role": "user", "content": f"{turn} " + "hello world " * 8})
            reply = small.chat(conversation, SamplingSettings.greedy(16))
            assert reply.stats.generated_tokens > 0  # every message gets a reply
            dropped.append(reply.stats.dropped_turns)
            conversation.append({"role": "assistant", "content": reply.text})
            kept, text, n_dropped, _parser = small.fit_prompt(conversation[:-1], 64)
            assert len(kept) <= small.n_ctx - 64 and n_dropped == dropped[-1]
            assert text.startswith("system: You are terse.")
            assert f"user: {turn} hello" in text
        n_ctx = small.n_ctx
    assert dropped[0] == 0 and dropped[-1] > 0, dropped
    assert dropped == sorted(dropped)  # a longer conversation never keeps more old turns
    assert n_ctx == 256


def test_a_cut_stays_put_so_the_turns_kept_are_not_computed_again(
    synthetic_model: Path,
) -> None:
    """Past the context, each new turn reuses the kept turns' keys/values: the cut moves only
    when the conversation no longer fits after it, and then frees room for several turns.
    (Cutting the fewest turns each time moved it on every turn: all ~980 tokens of the
    prompt computed again per turn, here; now ~720 every fifth turn and ~66 in between.)"""
    system = {"role": "system", "content": "You are terse."}
    with Session(synthetic_model, settings=LoadSettings(n_ctx=1024)) as small:
        conversation = [system]
        cut, recomputed = [], 0
        for turn in range(60):
            conversation.append({"role": "user", "content": f"{turn} hello"})
            reply = small.chat(conversation, SamplingSettings.greedy(4))
            conversation.append({"role": "assistant", "content": reply.text})
            stats = reply.stats
            assert stats.prompt_tokens + 4 <= small.n_ctx
            if stats.dropped_turns:
                cut.append(stats.dropped_turns)
                recomputed += stats.prompt_tokens_cached < stats.prompt_tokens // 2
    assert len(cut) >= 30 and cut == sorted(cut), cut
    moves = len(set(cut))
    assert recomputed == moves  # the whole prompt is computed only where the cut moved
    assert moves <= len(cut) // 3, cut


def test_context_is_capped_at_the_training_length(synthetic_model: Path) -> None:
    with Session(synthetic_model, settings=LoadSettings(n_ctx=100_000)) as big:
        assert big.n_ctx == SyntheticSpec().context_length


def test_closed_session_refuses_to_chat(synthetic_model: Path) -> None:
    loaded = Session(synthetic_model)
    loaded.close()
    loaded.close()  # idempotent
    assert not loaded.loaded
    with pytest.raises(GenerationError, match="No model is loaded"):
        loaded.chat(HELLO)


def test_truncated_file_is_refused_before_the_engine_sees_it(
    tmp_path: Path, synthetic_model: Path
) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(synthetic_model.read_bytes()[:-1000])
    with pytest.raises(ModelFileError, match="incomplete"):
        Session(cut)


def test_engine_refusal_becomes_a_readable_error(tmp_path: Path, synthetic_model: Path) -> None:
    broken = copy_gguf(synthetic_model, tmp_path / "broken.gguf", drop=("blk.2.attn_q.weight",))
    with pytest.raises(ModelLoadError) as caught:
        Session(broken)
    assert "could not load" in str(caught.value)
    assert "blk.2.attn_q.weight" in str(caught.value)


def test_model_larger_than_the_machine_is_refused(
    synthetic_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The machine's size is an input of the check; pretend this one has 100 kB of RAM.
    real = psutil.virtual_memory()
    monkeypatch.setattr(psutil, "virtual_memory", lambda: real._replace(total=100_000))
    with pytest.raises(ModelLoadError, match=r"needs .* [KMG]B for its weights"):
        Session(synthetic_model)


def test_load_progress_is_reported_and_can_abort(synthetic_model: Path) -> None:
    values: list[float] = []
    with Session(synthetic_model, on_progress=lambda v: values.append(v) or True):
        pass
    assert values and values[-1] == pytest.approx(1.0)
    with pytest.raises(ModelLoadError, match="cancelled"):
        Session(synthetic_model, on_progress=lambda _v: False)


def test_split_model_loads_and_chats(tmp_path: Path, synthetic_model: Path) -> None:
    copy_gguf(synthetic_model, tmp_path / "split.gguf", split_max_tensors=20)
    whole = Session(synthetic_model)
    expected = whole.chat(HELLO, SamplingSettings.greedy(8)).text
    whole.close()
    with Session(tmp_path / "split-00002-of-00003.gguf") as split:
        assert split.path.name == "split-00001-of-00003.gguf"
        assert split.chat(HELLO, SamplingSettings.greedy(8)).text == expected


def test_a_stop_string_ends_the_answer_before_it(session: Session) -> None:
    whole = session.chat(HELLO, SamplingSettings.greedy(24)).text
    cut = next(i for i in range(len(whole) // 2, len(whole)) if whole[i].strip())
    stop = whole[cut : cut + 2]
    reply = session.chat(HELLO, replace(SamplingSettings.greedy(24), stop=("\x00", stop)))
    assert reply.text == whole[: whole.find(stop)]
    assert reply.stats.stop_reason == "stop"


def test_complete_continues_plain_text_without_the_template(session: Session) -> None:
    text = "".join(p.text for p in session.complete("user: hello", SamplingSettings.greedy(8)))
    assert session.last_stats.generated_tokens == 8 and session.last_stats.stop_reason == "length"
    # no template around it: the prompt is the chat prompt minus "\nassistant:", so the
    # greedy continuation is the model's own next tokens after "user: hello"
    assert session.last_stats.prompt_tokens == len(session.tokenize("user: hello"))
    assert text
    with pytest.raises(GenerationError, match="context holds"):
        list(session.complete("word " * 5000))


def test_a_stopped_reply_continues_where_it_stopped(smollm2: Path) -> None:
    """Continue: the greedy reply cut after a few tokens and resumed is the reply that was
    never cut."""
    question = [{"role": "user", "content": "What is the capital of France?"}]
    with Session(smollm2, settings=LoadSettings(n_ctx=512)) as session:
        whole = session.chat(question, SamplingSettings.greedy(24)).text
        cut = session.chat(question, SamplingSettings.greedy(8)).text
        assert cut and whole.startswith(cut) and whole != cut
        partial = [*question, {"role": "assistant", "content": cut}]
        rest = "".join(
            p.text for p in session.stream(partial, SamplingSettings.greedy(16), resume=True)
        )
        assert session.last_stats.generated_tokens == 16
    assert cut + rest == whole
