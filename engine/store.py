"""Conversations and settings in one SQLite file under the app's home directory.

Every message is committed as soon as it exists, and a streaming reply is saved as it grows,
so a crash (of the engine or of the app) loses at most the last few tokens of the reply being
written and never an earlier message. WAL journaling keeps each commit atomic and cheap.

Messages form a tree: each has a parent (the message it answers or follows), so a
regenerated reply or an edited message is a sibling of the one it replaces, and nothing is
ever overwritten. The conversation shown is one path through the tree: from the root down,
the child chosen most recently.

The schema has a version (``PRAGMA user_version``) and ordered migrations, each one
transaction: a database from any older MoE Chat is upgraded in place, and one from a newer
MoE Chat is refused rather than rewritten.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from engine import paths
from engine.errors import StoreError


def _script(db: sqlite3.Connection, script: str) -> None:
    """Run SQL statements one by one, inside the caller's transaction (``executescript``
    would commit it first)."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            db.execute(statement)
            statement = ""
    assert not statement.strip(), f"incomplete SQL: {statement}"


def _create(db: sqlite3.Connection) -> None:
    """Version 1: conversations, messages (a reply kept whole, markup and all), settings."""
    _script(
        db,
        """
    CREATE TABLE conversations (
        id          INTEGER PRIMARY KEY,
        title       TEXT NOT NULL,
        model_path  TEXT,
        created_at  REAL NOT NULL,
        updated_at  REAL NOT NULL
    );
    CREATE TABLE messages (
        id              INTEGER PRIMARY KEY,
        conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        role            TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
        content         TEXT NOT NULL,
        model_name      TEXT,
        stats           TEXT,
        complete        INTEGER NOT NULL DEFAULT 1,
        created_at      REAL NOT NULL
    );
    CREATE INDEX messages_by_conversation ON messages(conversation_id, id);
    CREATE TABLE settings (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
    )


def _add_reasoning(db: sqlite3.Connection) -> None:
    """Version 2: a thinking model's reasoning apart from its answer. The replies saved with
    their markup in them (gpt-oss's channels, ``<think>`` blocks) are split."""
    from engine.chat_format import split_reply

    db.execute("ALTER TABLE messages ADD COLUMN reasoning TEXT NOT NULL DEFAULT ''")
    rows = db.execute("SELECT id, content FROM messages WHERE role='assistant'").fetchall()
    for row in rows:
        content, reasoning = split_reply(row["content"])
        if reasoning or content != row["content"]:
            db.execute(
                "UPDATE messages SET content=?, reasoning=? WHERE id=?",
                (content, reasoning, row["id"]),
            )


def _add_alternatives(db: sqlite3.Connection) -> None:
    """Version 3: messages as a tree, for regenerated replies and edited messages. Each
    message saved so far follows the one before it; the path is the order they had."""
    _script(
        db,
        """
    ALTER TABLE messages ADD COLUMN parent_id INTEGER
        REFERENCES messages(id) ON DELETE CASCADE;
    ALTER TABLE messages ADD COLUMN chosen_at REAL NOT NULL DEFAULT 0;
    UPDATE messages SET chosen_at = created_at, parent_id = (
        SELECT MAX(earlier.id) FROM messages AS earlier
        WHERE earlier.conversation_id = messages.conversation_id AND earlier.id < messages.id
    );
    CREATE INDEX messages_by_parent ON messages(parent_id);
    """,
    )


def _add_conversation_settings(db: sqlite3.Connection) -> None:
    """Version 4: each conversation's system prompt, reasoning setting and draft; saved
    system prompts (presets)."""
    _script(
        db,
        """
    ALTER TABLE conversations ADD COLUMN system_prompt TEXT NOT NULL DEFAULT '';
    ALTER TABLE conversations ADD COLUMN reasoning TEXT NOT NULL DEFAULT '';
    ALTER TABLE conversations ADD COLUMN draft TEXT NOT NULL DEFAULT '';
    CREATE TABLE presets (
        id            INTEGER PRIMARY KEY,
        name          TEXT NOT NULL UNIQUE,
        system_prompt TEXT NOT NULL
    );
    """,
    )


def _add_search(db: sqlite3.Connection) -> None:
    """Version 5: full-text search over every message (SQLite FTS5), kept in step with the
    messages by triggers, and filled from the messages already saved."""
    _script(
        db,
        """
    CREATE VIRTUAL TABLE messages_fts USING fts5(
        content, reasoning, content='messages', content_rowid='id'
    );
    CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
        INSERT INTO messages_fts(rowid, content, reasoning)
        VALUES (new.id, new.content, new.reasoning);
    END;
    CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
        INSERT INTO messages_fts(messages_fts, rowid, content, reasoning)
        VALUES ('delete', old.id, old.content, old.reasoning);
    END;
    CREATE TRIGGER messages_fts_update AFTER UPDATE OF content, reasoning ON messages BEGIN
        INSERT INTO messages_fts(messages_fts, rowid, content, reasoning)
        VALUES ('delete', old.id, old.content, old.reasoning);
        INSERT INTO messages_fts(rowid, content, reasoning)
        VALUES (new.id, new.content, new.reasoning);
    END;
    INSERT INTO messages_fts(messages_fts) VALUES ('rebuild');
    """,
    )


# MIGRATIONS[n] takes a database at version n to version n + 1; a new one is made by all.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    _create,
    _add_reasoning,
    _add_alternatives,
    _add_conversation_settings,
    _add_search,
)
SCHEMA_VERSION = len(MIGRATIONS)

# Highlight markers in search snippets (control characters never typed in a message).
MATCH_START, MATCH_END = "\x02", "\x03"


@dataclass(frozen=True)
class Conversation:
    id: int
    title: str
    model_path: str | None
    created_at: float
    updated_at: float
    system_prompt: str = ""
    reasoning: str = ""  # "" (the model's default), "low"/"medium"/"high" (gpt-oss), "on"/"off"
    draft: str = ""  # what was typed and not sent


@dataclass(frozen=True)
class StoredMessage:
    id: int
    conversation_id: int
    role: str
    content: str
    reasoning: str
    model_name: str | None
    stats: dict[str, Any] | None
    complete: bool
    created_at: float
    parent_id: int | None = None
    chosen_at: float = 0.0
    # This message and its alternatives (same parent), oldest first; set on a path's messages.
    alternatives: tuple[int, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class Preset:
    id: int
    name: str
    system_prompt: str


@dataclass(frozen=True)
class SearchHit:
    conversation_id: int
    title: str
    message_id: int
    role: str
    snippet: str  # matches between MATCH_START and MATCH_END


class Store:
    """The app's database. Use from one thread (the GUI thread in the app).

    Args:
        path: the SQLite file; the app's default database when omitted.

    Raises:
        StoreError: the file cannot be opened, or was written by a newer MoE Chat.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else paths.database_path()
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                self._db.close()
                raise StoreError(
                    f"The conversation database {self.path} was written by a newer MoE Chat.",
                    "Update MoE Chat to open it.",
                )
            for number in range(version, SCHEMA_VERSION):
                self._migrate(number)
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise StoreError(
                f"The conversation database {self.path} cannot be opened: {exc}.",
                "Move the file away to start fresh; MoE Chat will create a new one.",
            ) from exc

    def _migrate(self, version: int) -> None:
        """From ``version`` to the next, in one transaction: a crash leaves the old schema,
        never half a new one."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            MIGRATIONS[version](db)
            db.execute(f"PRAGMA user_version={version + 1}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._db.close()

    def _write(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        try:
            with self._db:
                return self._db.execute(sql, args)
        except sqlite3.Error as exc:
            raise StoreError(f"Saving failed: {exc}.", "Check free disk space.") from exc

    # -- conversations ---------------------------------------------------------------------

    def create_conversation(
        self, title: str = "New chat", model_path: str | None = None, system_prompt: str = ""
    ) -> Conversation:
        now = time.time()
        cursor = self._write(
            "INSERT INTO conversations (title, model_path, created_at, updated_at, "
            "system_prompt) VALUES (?,?,?,?,?)",
            (title, model_path, now, now, system_prompt),
        )
        assert cursor.lastrowid is not None
        return self.conversation(cursor.lastrowid)

    def conversation(self, conversation_id: int) -> Conversation:
        row = self._db.execute(
            "SELECT * FROM conversations WHERE id=?", (conversation_id,)
        ).fetchone()
        if row is None:
            raise StoreError(f"Conversation {conversation_id} no longer exists.")
        return Conversation(**dict(row))

    def conversations(self) -> list[Conversation]:
        """All conversations, most recently active first."""
        rows = self._db.execute("SELECT * FROM conversations ORDER BY updated_at DESC, id DESC")
        return [Conversation(**dict(row)) for row in rows]

    def rename_conversation(self, conversation_id: int, title: str) -> None:
        self._write(
            "UPDATE conversations SET title=? WHERE id=?",
            (title.strip() or "Untitled", conversation_id),
        )

    def set_system_prompt(self, conversation_id: int, text: str) -> None:
        self._write(
            "UPDATE conversations SET system_prompt=? WHERE id=?", (text.strip(), conversation_id)
        )

    def set_reasoning(self, conversation_id: int, reasoning: str) -> None:
        """``""`` for the model's default, ``low``/``medium``/``high`` or ``on``/``off``."""
        if reasoning not in ("", "low", "medium", "high", "on", "off"):
            raise ValueError(f"unknown reasoning setting {reasoning!r}")
        self._write("UPDATE conversations SET reasoning=? WHERE id=?", (reasoning, conversation_id))

    def set_draft(self, conversation_id: int, text: str) -> None:
        """What was typed and not sent; keeps the conversation's place in the list."""
        self._write("UPDATE conversations SET draft=? WHERE id=?", (text, conversation_id))

    def delete_conversation(self, conversation_id: int) -> None:
        self._write("DELETE FROM conversations WHERE id=?", (conversation_id,))

    def prune_empty(self, keep: int | None = None) -> int:
        """Delete conversations with no message, no draft and no system prompt (but ``keep``);
        how many went."""
        cursor = self._write(
            "DELETE FROM conversations WHERE id IS NOT ? AND draft='' AND system_prompt='' "
            "AND NOT EXISTS (SELECT 1 FROM messages WHERE conversation_id=conversations.id)",
            (keep,),
        )
        return cursor.rowcount

    def _touch(self, conversation_id: int) -> None:
        self._write(
            "UPDATE conversations SET updated_at=? WHERE id=?", (time.time(), conversation_id)
        )

    # -- messages --------------------------------------------------------------------------

    def add_message(
        self,
        conversation_id: int,
        role: str,
        content: str,
        *,
        reasoning: str = "",
        model_name: str | None = None,
        stats: dict[str, Any] | None = None,
        complete: bool = True,
        parent_id: int | None = None,
    ) -> StoredMessage:
        """A new message after ``parent_id``, or at the end of the conversation's path. A
        message after a parent that already has children is an alternative to them, and
        becomes the one shown."""
        if parent_id is None:
            path = self.messages(conversation_id)
            parent_id = path[-1].id if path else None
        return self._insert(
            conversation_id, role, content, reasoning, model_name, stats, complete, parent_id
        )

    def edit_message(self, message_id: int, content: str) -> StoredMessage:
        """An edited copy of a message, as its alternative (the original is kept)."""
        original = self.message(message_id)
        return self._insert(
            original.conversation_id, original.role, content, "", None, None, True,
            original.parent_id,
        )  # fmt: skip

    def _insert(
        self,
        conversation_id: int,
        role: str,
        content: str,
        reasoning: str,
        model_name: str | None,
        stats: dict[str, Any] | None,
        complete: bool,
        parent_id: int | None,
    ) -> StoredMessage:
        now = time.time()
        cursor = self._write(
            "INSERT INTO messages (conversation_id, role, content, reasoning, model_name, stats, "
            "complete, created_at, parent_id, chosen_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                conversation_id,
                role,
                content,
                reasoning,
                model_name,
                json.dumps(stats) if stats is not None else None,
                int(complete),
                now,
                parent_id,
                now,
            ),
        )
        self._touch(conversation_id)
        assert cursor.lastrowid is not None
        return self.message(cursor.lastrowid)

    def start_reply(
        self,
        conversation_id: int,
        model_name: str | None,
        parent_id: int | None = None,
    ) -> StoredMessage:
        """An empty assistant message, marked incomplete until ``finish_reply``; after
        ``parent_id`` (an alternative to its other replies) or at the end of the path."""
        return self.add_message(
            conversation_id,
            "assistant",
            "",
            model_name=model_name,
            complete=False,
            parent_id=parent_id,
        )

    def update_reply(self, message_id: int, content: str, reasoning: str = "") -> None:
        """Save the reply so far (called while it streams)."""
        self._write(
            "UPDATE messages SET content=?, reasoning=? WHERE id=?",
            (content, reasoning, message_id),
        )

    def finish_reply(
        self, message_id: int, content: str, stats: dict[str, Any] | None, reasoning: str = ""
    ) -> None:
        self._write(
            "UPDATE messages SET content=?, reasoning=?, stats=?, complete=1 WHERE id=?",
            (content, reasoning, json.dumps(stats) if stats is not None else None, message_id),
        )

    def reopen_reply(self, message_id: int) -> None:
        """Mark a reply incomplete again, while it is continued."""
        self._write("UPDATE messages SET complete=0 WHERE id=?", (message_id,))

    def message(self, message_id: int) -> StoredMessage:
        row = self._db.execute("SELECT * FROM messages WHERE id=?", (message_id,)).fetchone()
        if row is None:
            raise StoreError(f"Message {message_id} no longer exists.")
        return _message(row)

    def messages(self, conversation_id: int) -> list[StoredMessage]:
        """The conversation as shown: from the first message down, at each step the
        alternative chosen most recently; each carries its ``alternatives``."""
        rows = self._db.execute(
            "SELECT * FROM messages WHERE conversation_id=? ORDER BY id", (conversation_id,)
        )
        children: dict[int | None, list[StoredMessage]] = {}
        for row in rows:
            message = _message(row)
            children.setdefault(message.parent_id, []).append(message)
        path: list[StoredMessage] = []
        siblings = children.get(None, [])
        while siblings:
            chosen = max(siblings, key=lambda m: (m.chosen_at, m.id))
            path.append(replace(chosen, alternatives=tuple(m.id for m in siblings)))
            siblings = children.get(chosen.id, [])
        return path

    def choose(self, message_id: int) -> None:
        """Show ``message_id``: it, and every message above it, becomes the chosen one."""
        now = time.time()
        self._write(
            "WITH RECURSIVE up(id, parent_id) AS ("
            " SELECT id, parent_id FROM messages WHERE id=?"
            " UNION ALL SELECT m.id, m.parent_id FROM messages m JOIN up ON m.id = up.parent_id)"
            " UPDATE messages SET chosen_at=? WHERE id IN (SELECT id FROM up)",
            (message_id, now),
        )

    def delete_message(self, message_id: int) -> None:
        """Delete a message and everything after it on its branch."""
        self._write("DELETE FROM messages WHERE id=?", (message_id,))

    # -- presets ---------------------------------------------------------------------------

    def presets(self) -> list[Preset]:
        rows = self._db.execute("SELECT * FROM presets ORDER BY name COLLATE NOCASE")
        return [Preset(**dict(row)) for row in rows]

    def save_preset(self, name: str, system_prompt: str) -> Preset:
        """Save a system prompt under ``name`` (replacing one of that name)."""
        name = name.strip()
        if not name:
            raise StoreError("A preset needs a name.")
        self._write(
            "INSERT INTO presets (name, system_prompt) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET system_prompt=excluded.system_prompt",
            (name, system_prompt.strip()),
        )
        row = self._db.execute("SELECT * FROM presets WHERE name=?", (name,)).fetchone()
        return Preset(**dict(row))

    def delete_preset(self, preset_id: int) -> None:
        self._write("DELETE FROM presets WHERE id=?", (preset_id,))

    # -- search ----------------------------------------------------------------------------

    def search(self, text: str, limit: int = 50) -> list[SearchHit]:
        """Messages (answers and reasoning) holding every word of ``text``, the last word as
        a prefix (so results come while typing); best matches first."""
        words = text.split()
        if not words:
            return []
        terms = ['"' + word.replace('"', '""') + '"' for word in words]
        terms[-1] += "*"
        rows = self._db.execute(
            "SELECT m.conversation_id, c.title, m.id, m.role, "
            f"snippet(messages_fts, -1, '{MATCH_START}', '{MATCH_END}', '…', 12) AS snippet "
            "FROM messages_fts JOIN messages m ON m.id = messages_fts.rowid "
            "JOIN conversations c ON c.id = m.conversation_id "
            "WHERE messages_fts MATCH ? ORDER BY rank LIMIT ?",
            (" ".join(terms), limit),
        )
        return [SearchHit(*row) for row in rows]

    # -- settings --------------------------------------------------------------------------

    def get_setting(self, key: str, default: Any = None) -> Any:
        row = self._db.execute("SELECT value FROM settings WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_setting(self, key: str, value: Any) -> None:
        self._write(
            "INSERT INTO settings (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (key, json.dumps(value)),
        )


def _message(row: sqlite3.Row) -> StoredMessage:
    data = dict(row)
    data["stats"] = json.loads(data["stats"]) if data["stats"] else None
    data["complete"] = bool(data["complete"])
    return StoredMessage(**data)
