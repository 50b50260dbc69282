"""engine/store.py: round trips, ordering, settings, and what survives a crash."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine import paths
from engine.errors import StoreError
from engine.store import Store


def test_default_database_lives_under_the_app_home(app_home: Path) -> None:
    store = Store()
    assert store.path == app_home / "moe-chat.sqlite3"
    assert paths.models_dir() == app_home / "models"
    store.close()


def test_round_trip_survives_reopening(tmp_path: Path) -> None:
    db = tmp_path / "chat.sqlite3"
    store = Store(db)
    chat = store.create_conversation("Capitals", model_path="/models/a.gguf")
    store.add_message(chat.id, "user", "What is the capital of France?")
    stats = {"generated_tokens": 7, "generation_tokens_per_s": 41.5}
    store.add_message(chat.id, "assistant", "Paris.", model_name="SmolLM2", stats=stats)
    store.set_setting("last_model_path", "/models/a.gguf")
    store.close()

    again = Store(db)
    [conversation] = again.conversations()
    assert (conversation.title, conversation.model_path) == ("Capitals", "/models/a.gguf")
    user, reply = again.messages(conversation.id)
    assert (user.role, user.content, user.complete) == (
        "user",
        "What is the capital of France?",
        True,
    )
    assert (reply.content, reply.model_name, reply.stats) == ("Paris.", "SmolLM2", stats)
    assert [m.as_chat() for m in (user, reply)][1] == {"role": "assistant", "content": "Paris."}
    assert again.get_setting("last_model_path") == "/models/a.gguf"
    assert again.get_setting("missing", 5) == 5
    again.close()


def test_rename_delete_and_recent_first(tmp_path: Path) -> None:
    store = Store(tmp_path / "chat.sqlite3")
    old = store.create_conversation("old")
    new = store.create_conversation("new")
    store.add_message(old.id, "user", "bump")  # activity moves it to the top
    assert [c.title for c in store.conversations()] == ["old", "new"]
    store.rename_conversation(new.id, "  renamed  ")
    assert store.conversation(new.id).title == "renamed"
    store.delete_conversation(old.id)
    assert [c.title for c in store.conversations()] == ["renamed"]
    assert store.messages(old.id) == []  # messages went with it
    with pytest.raises(StoreError, match="no longer exists"):
        store.conversation(old.id)
    store.close()


def test_streaming_reply_is_saved_as_it_grows(tmp_path: Path) -> None:
    store = Store(tmp_path / "chat.sqlite3")
    chat = store.create_conversation()
    reply = store.start_reply(chat.id, "model")
    assert not reply.complete and reply.content == ""
    store.update_reply(reply.id, "Par")
    assert store.message(reply.id).content == "Par"
    store.finish_reply(reply.id, "Paris.", {"generated_tokens": 2})
    done = store.message(reply.id)
    assert done.complete and done.content == "Paris." and done.stats == {"generated_tokens": 2}
    store.close()


def test_a_crash_mid_reply_loses_no_earlier_message(tmp_path: Path) -> None:
    db = tmp_path / "chat.sqlite3"
    script = textwrap.dedent(
        f"""
        import os, signal
        from engine.store import Store
        store = Store({str(db)!r})
        chat = store.create_conversation("before the crash")
        store.add_message(chat.id, "user", "first question")
        store.add_message(chat.id, "assistant", "first answer")
        store.add_message(chat.id, "user", "second question")
        reply = store.start_reply(chat.id, "model")
        store.update_reply(reply.id, "half an ans")
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[2])
    assert result.returncode == -9
    store = Store(db)
    [chat] = store.conversations()
    messages = store.messages(chat.id)
    assert [m.content for m in messages] == [
        "first question",
        "first answer",
        "second question",
        "half an ans",
    ]
    assert [m.complete for m in messages] == [True, True, True, False]
    store.close()


def test_database_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "chat.sqlite3"
    Store(db).close()
    with sqlite3.connect(db) as raw:
        raw.execute("PRAGMA user_version=99")
    with pytest.raises(StoreError, match="newer MoE Chat"):
        Store(db)


def test_corrupt_database_gives_a_readable_error(tmp_path: Path) -> None:
    db = tmp_path / "chat.sqlite3"
    db.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot be opened"):
        Store(db)


VERSION_1_SCHEMA = """
CREATE TABLE conversations (id INTEGER PRIMARY KEY, title TEXT NOT NULL, model_path TEXT,
    created_at REAL NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE messages (id INTEGER PRIMARY KEY, conversation_id INTEGER NOT NULL
    REFERENCES conversations(id) ON DELETE CASCADE, role TEXT NOT NULL, content TEXT NOT NULL,
    model_name TEXT, stats TEXT, complete INTEGER NOT NULL DEFAULT 1, created_at REAL NOT NULL);
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
PRAGMA user_version=1;
"""


def test_reasoning_is_kept_apart_from_the_answer(tmp_path: Path) -> None:
    store = Store(tmp_path / "chat.sqlite3")
    chat = store.create_conversation()
    reply = store.start_reply(chat.id, "gpt-oss")
    store.update_reply(reply.id, "", "Thinking about it")
    assert store.message(reply.id).as_chat() == {
        "role": "assistant", "content": "", "reasoning": "Thinking about it"
    }  # fmt: skip
    store.finish_reply(reply.id, "Paris.", {"generated_tokens": 9}, "The capital is Paris.")
    done = store.message(reply.id)
    assert (done.content, done.reasoning, done.complete) == (
        "Paris.",
        "The capital is Paris.",
        True,
    )
    assert store.add_message(chat.id, "user", "Thanks").as_chat() == {
        "role": "user", "content": "Thanks"
    }  # fmt: skip


def test_version_1_database_is_migrated_and_its_markup_split(tmp_path: Path) -> None:
    """Replies saved by version 1 held gpt-oss's channels or a <think> block in their text,
    which the next turn's template rejects; the migration splits them and loses nothing."""
    db = tmp_path / "chat.sqlite3"
    old = sqlite3.connect(db)
    old.executescript(VERSION_1_SCHEMA)
    old.execute("INSERT INTO conversations VALUES (1, 'Old', NULL, 1.0, 1.0)")
    rows = [
        (1, "user", "Capital of France?"),
        (1, "assistant", "<|channel|>analysis<|message|>Easy.<|start|>assistant<|channel|>"
                         "final<|message|>Paris."),
        (1, "user", "And Italy?"),
        (1, "assistant", "<think>\nRome, surely.\n</think>\n\nRome."),
        (1, "assistant", "Plain text with a < sign."),
    ]  # fmt: skip
    old.executemany(
        "INSERT INTO messages (conversation_id, role, content, created_at) VALUES (?,?,?,2.0)", rows
    )
    old.commit()
    old.close()

    store = Store(db)
    messages = store.messages(1)
    assert [(m.content, m.reasoning) for m in messages] == [
        ("Capital of France?", ""),
        ("Paris.", "Easy."),
        ("And Italy?", ""),
        ("Rome.", "Rome, surely."),
        ("Plain text with a < sign.", ""),
    ]
    store.close()
    version = sqlite3.connect(db).execute("PRAGMA user_version").fetchone()[0]
    assert version == 2
