"""Conversations and settings in one SQLite file under the app's home directory.

Every message is committed as soon as it exists, and a streaming reply is saved as it grows,
so a crash (of the engine or of the app) loses at most the last few tokens of the reply being
written and never an earlier message. WAL journaling keeps each commit atomic and cheap.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine import paths
from engine.errors import StoreError

SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id          INTEGER PRIMARY KEY,
    title       TEXT NOT NULL,
    model_path  TEXT,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id              INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role            TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
    content         TEXT NOT NULL,
    reasoning       TEXT NOT NULL DEFAULT '',
    model_name      TEXT,
    stats           TEXT,
    complete        INTEGER NOT NULL DEFAULT 1,
    created_at      REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages(conversation_id, id);
CREATE TABLE IF NOT EXISTS settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

# Version 1 kept a thinking model's reply whole, markup and all; version 2 keeps its
# reasoning apart. The migration adds the column and splits the replies already saved.
_MIGRATE_1_TO_2 = "ALTER TABLE messages ADD COLUMN reasoning TEXT NOT NULL DEFAULT '';"


@dataclass(frozen=True)
class Conversation:
    id: int
    title: str
    model_path: str | None
    created_at: float
    updated_at: float


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

    def as_chat(self) -> dict[str, str]:
        """The message as the session takes it (reasoning only where there is some)."""
        chat = {"role": self.role, "content": self.content}
        if self.reasoning:
            chat["reasoning"] = self.reasoning
        return chat


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
            if version == 1:
                self._migrate_from_1()
            elif version < SCHEMA_VERSION:
                # One script, one transaction: a crash leaves the old schema, never half a new one.
                self._db.executescript(
                    f"BEGIN; {_SCHEMA} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;"
                )
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise StoreError(
                f"The conversation database {self.path} cannot be opened: {exc}.",
                "Move the file away to start fresh; MoE Chat will create a new one.",
            ) from exc

    def close(self) -> None:
        self._db.close()

    def _migrate_from_1(self) -> None:
        """Add the reasoning column and split the replies saved with their markup in them
        (gpt-oss's channels, ``<think>`` blocks), in one transaction."""
        from engine.chat_format import split_reply

        db = self._db
        db.execute("BEGIN")
        try:
            db.execute(_MIGRATE_1_TO_2)
            rows = db.execute("SELECT id, content FROM messages WHERE role='assistant'").fetchall()
            for row in rows:
                content, reasoning = split_reply(row["content"])
                if reasoning or content != row["content"]:
                    db.execute(
                        "UPDATE messages SET content=?, reasoning=? WHERE id=?",
                        (content, reasoning, row["id"]),
                    )
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _write(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        try:
            with self._db:
                return self._db.execute(sql, args)
        except sqlite3.Error as exc:
            raise StoreError(f"Saving failed: {exc}.", "Check free disk space.") from exc

    # -- conversations ---------------------------------------------------------------------

    def create_conversation(
        self, title: str = "New chat", model_path: str | None = None
    ) -> Conversation:
        now = time.time()
        cursor = self._write(
            "INSERT INTO conversations (title, model_path, created_at, updated_at) "
            "VALUES (?,?,?,?)",
            (title, model_path, now, now),
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

    def delete_conversation(self, conversation_id: int) -> None:
        self._write("DELETE FROM conversations WHERE id=?", (conversation_id,))

    def _touch(self, conversation_id: int, model_path: str | None = None) -> None:
        if model_path is None:
            self._write(
                "UPDATE conversations SET updated_at=? WHERE id=?", (time.time(), conversation_id)
            )
        else:
            self._write(
                "UPDATE conversations SET updated_at=?, model_path=? WHERE id=?",
                (time.time(), model_path, conversation_id),
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
    ) -> StoredMessage:
        cursor = self._write(
            "INSERT INTO messages (conversation_id, role, content, reasoning, model_name, stats, "
            "complete, created_at) VALUES (?,?,?,?,?,?,?,?)",
            (
                conversation_id,
                role,
                content,
                reasoning,
                model_name,
                json.dumps(stats) if stats is not None else None,
                int(complete),
                time.time(),
            ),
        )
        self._touch(conversation_id)
        assert cursor.lastrowid is not None
        return self.message(cursor.lastrowid)

    def start_reply(self, conversation_id: int, model_name: str | None) -> StoredMessage:
        """An empty assistant message, marked incomplete until ``finish_reply``."""
        return self.add_message(
            conversation_id, "assistant", "", model_name=model_name, complete=False
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

    def message(self, message_id: int) -> StoredMessage:
        row = self._db.execute("SELECT * FROM messages WHERE id=?", (message_id,)).fetchone()
        if row is None:
            raise StoreError(f"Message {message_id} no longer exists.")
        return _message(row)

    def messages(self, conversation_id: int) -> list[StoredMessage]:
        rows = self._db.execute(
            "SELECT * FROM messages WHERE conversation_id=? ORDER BY id", (conversation_id,)
        )
        return [_message(row) for row in rows]

    def delete_message(self, message_id: int) -> None:
        self._write("DELETE FROM messages WHERE id=?", (message_id,))

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
