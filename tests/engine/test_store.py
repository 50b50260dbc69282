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
from engine.store import MATCH_END, MATCH_START, SCHEMA_VERSION, Store
from tests.helpers import old_databases


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
    assert (reply.role, reply.content, reply.reasoning) == ("assistant", "Paris.", "")
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


def test_reasoning_is_kept_apart_from_the_answer(tmp_path: Path) -> None:
    store = Store(tmp_path / "chat.sqlite3")
    chat = store.create_conversation()
    reply = store.start_reply(chat.id, "gpt-oss")
    store.update_reply(reply.id, "", "Thinking about it")
    partial = store.message(reply.id)
    assert (partial.role, partial.content, partial.reasoning) == (
        "assistant", "", "Thinking about it"
    )  # fmt: skip
    store.finish_reply(reply.id, "Paris.", {"generated_tokens": 9}, "The capital is Paris.")
    done = store.message(reply.id)
    assert (done.content, done.reasoning, done.complete) == (
        "Paris.",
        "The capital is Paris.",
        True,
    )
    thanks = store.add_message(chat.id, "user", "Thanks")
    assert (thanks.role, thanks.content, thanks.reasoning) == ("user", "Thanks", "")


def test_version_1_database_is_migrated_and_its_markup_split(tmp_path: Path) -> None:
    """Replies saved by version 1 held gpt-oss's channels or a <think> block in their text,
    which the next turn's template rejects; the migration splits them and loses nothing."""
    db = tmp_path / "chat.sqlite3"
    old = sqlite3.connect(db)
    old.executescript(old_databases.VERSION_1)
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
    assert version == SCHEMA_VERSION


def test_a_database_made_by_the_version_2_schema_upgrades_in_place(tmp_path: Path) -> None:
    """Today's users have version 2 files: every message stays, in order, and each new
    feature (alternatives, conversation settings, presets, search) works on them."""
    db = tmp_path / "chat.sqlite3"
    insert = "INSERT INTO messages (conversation_id, role, content, reasoning, created_at) "
    old_databases.make_database(
        db,
        old_databases.VERSION_2,
        [
            ("INSERT INTO conversations VALUES (1, 'Rivers', NULL, 1.0, 5.0)", ()),
            ("INSERT INTO conversations VALUES (2, 'Other', NULL, 1.0, 2.0)", ()),
            (insert + "VALUES (1, 'user', 'Longest river?', '', 1.0)", ()),
            (insert + "VALUES (2, 'user', 'Unrelated', '', 1.5)", ()),
            (insert + "VALUES (1, 'assistant', 'The Nile.', 'Nile or Amazon', 2.0)", ()),
            (insert + "VALUES (1, 'user', 'And in Europe?', '', 3.0)", ()),
            ("INSERT INTO settings VALUES ('last_model_path', '\"/m.gguf\"')", ()),
        ],
    )
    store = Store(db)
    path = store.messages(1)
    assert [(m.role, m.content, m.reasoning) for m in path] == [
        ("user", "Longest river?", ""),
        ("assistant", "The Nile.", "Nile or Amazon"),
        ("user", "And in Europe?", ""),
    ]
    assert [m.alternatives for m in path] == [(m.id,) for m in path]
    assert [m.content for m in store.messages(2)] == ["Unrelated"]
    assert store.get_setting("last_model_path") == "/m.gguf"
    conversation = store.conversation(1)
    assert (conversation.system_prompt, conversation.reasoning, conversation.draft) == ("", "", "")
    assert store.presets() == []
    [hit] = store.search("amazon")
    assert (hit.conversation_id, hit.message_id, hit.title) == (1, path[1].id, "Rivers")
    reply = store.start_reply(1, "model", parent_id=path[0].id)  # a regenerated answer
    assert [m.id for m in store.messages(1)] == [path[0].id, reply.id]
    store.close()
    assert sqlite3.connect(db).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_a_failed_migration_keeps_the_last_whole_version(tmp_path: Path) -> None:
    """Each migration is one transaction: when one fails (here a table already has the
    name it needs), the file stays at the version before it, with everything in it."""
    db = tmp_path / "chat.sqlite3"
    old_databases.make_database(
        db,
        old_databases.VERSION_2 + "CREATE TABLE presets (x);",
        [
            ("INSERT INTO conversations VALUES (1, 'Kept', NULL, 1.0, 1.0)", ()),
            ("INSERT INTO messages (conversation_id, role, content, created_at) "
             "VALUES (1, 'user', 'still here', 1.0)", ()),
        ],
    )  # fmt: skip
    with pytest.raises(StoreError, match="cannot be opened"):
        Store(db)
    raw = sqlite3.connect(db)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == 3  # alternatives went in
    columns = [row[1] for row in raw.execute("PRAGMA table_info(conversations)")]
    assert "system_prompt" not in columns  # and not half of the next one
    assert raw.execute("SELECT content FROM messages").fetchall() == [("still here",)]


def test_regenerate_and_edit_keep_every_alternative(tmp_path: Path) -> None:
    store = Store(tmp_path / "chat.sqlite3")
    chat = store.create_conversation()
    question = store.add_message(chat.id, "user", "Name a colour")
    first = store.add_message(chat.id, "assistant", "Red.")
    follow = store.add_message(chat.id, "user", "Another?")
    second = store.start_reply(chat.id, "model", parent_id=question.id)
    store.finish_reply(second.id, "Blue.", None)
    path = store.messages(chat.id)
    assert [m.content for m in path] == ["Name a colour", "Blue."]
    assert path[1].alternatives == (first.id, second.id)
    store.choose(first.id)  # back to the first answer: its follow-up comes back too
    assert [m.content for m in store.messages(chat.id)] == ["Name a colour", "Red.", "Another?"]
    store.choose(follow.id)
    assert [m.id for m in store.messages(chat.id)] == [question.id, first.id, follow.id]
    edited = store.edit_message(question.id, "Name a fruit")
    path = store.messages(chat.id)
    assert [m.content for m in path] == ["Name a fruit"]
    assert path[0].alternatives == (question.id, edited.id)
    reply = store.add_message(chat.id, "assistant", "Apple.")
    assert reply.parent_id == edited.id
    store.choose(question.id)
    assert [m.content for m in store.messages(chat.id)] == ["Name a colour", "Red.", "Another?"]
    store.delete_message(first.id)  # its branch goes with it
    assert [m.content for m in store.messages(chat.id)] == ["Name a colour", "Blue."]
    store.close()


def test_search_finds_words_and_prefixes_across_conversations(tmp_path: Path) -> None:
    store = Store(tmp_path / "chat.sqlite3")
    a = store.create_conversation("Python")
    b = store.create_conversation("Cooking")
    store.add_message(a.id, "user", 'How do I sort a list in "Python"?')
    reply = store.start_reply(a.id, "model")
    store.finish_reply(reply.id, "Use sorted(items).", None, reasoning="They want sorting")
    store.add_message(b.id, "user", "A recipe for sourdough bread")
    assert {hit.conversation_id for hit in store.search("sor")} == {a.id}  # sort, sorted
    [hit] = store.search("sourdough")
    assert hit.title == "Cooking" and hit.role == "user"
    assert f"{MATCH_START}sourdough{MATCH_END}" in hit.snippet
    [hit] = store.search("wANT sortin")  # reasoning counts; case does not
    assert hit.message_id == reply.id
    assert store.search('"python"') and store.search("") == []
    assert store.search('AND OR NOT ( * "') == []  # operators are words, never a syntax error
    store.update_reply(reply.id, "Use list.sort().")
    assert store.search("sorted") == [] and store.search("list.sort")
    store.delete_conversation(a.id)
    assert store.search("sort") == []
    store.close()


def test_conversation_settings_drafts_presets_and_empty_chats(tmp_path: Path) -> None:
    store = Store(tmp_path / "chat.sqlite3")
    used = store.create_conversation("used")
    store.add_message(used.id, "user", "hi")
    drafted = store.create_conversation()
    store.set_draft(drafted.id, "half a thought")
    prompted = store.create_conversation()
    store.set_system_prompt(prompted.id, "  Answer in French.  ")
    store.set_reasoning(prompted.id, "high")
    empty, current = store.create_conversation(), store.create_conversation()
    assert store.prune_empty(keep=current.id) == 1
    assert {c.id for c in store.conversations()} == {used.id, drafted.id, prompted.id, current.id}
    assert store.conversation(drafted.id).draft == "half a thought"
    assert store.conversation(prompted.id).system_prompt == "Answer in French."
    assert store.conversation(prompted.id).reasoning == "high"
    with pytest.raises(ValueError):
        store.set_reasoning(prompted.id, "maximum")
    with pytest.raises(StoreError):
        store.conversation(empty.id)
    store.save_preset("French", "Answer in French.")
    store.save_preset("coder", "You write Python.")
    store.save_preset("French", "Réponds en français.")  # same name: replaced
    assert [(p.name, p.system_prompt) for p in store.presets()] == [
        ("coder", "You write Python."),
        ("French", "Réponds en français."),
    ]
    store.delete_preset(store.presets()[0].id)
    assert [p.name for p in store.presets()] == ["French"]
    with pytest.raises(StoreError, match="name"):
        store.save_preset("  ", "x")
    store.close()
