"""engine/export.py: a conversation as Markdown and JSON, the shown path only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.errors import StoreError
from engine.export import export
from engine.store import Store


def test_markdown_and_json_hold_the_conversation_as_shown(tmp_path: Path) -> None:
    store = Store(tmp_path / "chat.sqlite3")
    chat = store.create_conversation("Sorting")
    store.set_system_prompt(chat.id, "Be brief.\nUse Python.")
    question = store.add_message(chat.id, "user", "Sort a list?")
    store.add_message(chat.id, "assistant", "Old answer")
    reply = store.start_reply(chat.id, "Qwen3", parent_id=question.id)
    code = "```python\ndef f(xs):\n    return sorted(xs)\n```"
    store.finish_reply(reply.id, code, {"generated_tokens": 12}, reasoning="Simple.")
    store.add_message(chat.id, "user", "Thanks")

    markdown = export(store, chat.id, tmp_path / "chat.md").read_text(encoding="utf-8")
    assert markdown.startswith("# Sorting\n")
    assert "> Be brief.\n> Use Python." in markdown
    assert "## You\n\nSort a list?" in markdown and "## Qwen3\n" in markdown
    assert "    return sorted(xs)" in markdown  # indentation kept
    assert "Old answer" not in markdown  # the alternative not shown is not exported
    assert "<summary>Reasoning</summary>\n\nSimple." in markdown

    document = json.loads(export(store, chat.id, tmp_path / "chat.JSON").read_text("utf-8"))
    assert document["title"] == "Sorting"
    assert document["system_prompt"] == "Be brief.\nUse Python."
    assert [(m["role"], m["content"]) for m in document["messages"]] == [
        ("user", "Sort a list?"),
        ("assistant", code),
        ("user", "Thanks"),
    ]
    assert document["messages"][1]["reasoning"] == "Simple."
    assert document["messages"][1]["stats"] == {"generated_tokens": 12}
    store.close()


def test_a_bad_suffix_or_folder_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "chat.sqlite3")
    chat = store.create_conversation()
    with pytest.raises(StoreError, match=r"\.md or \.json"):
        export(store, chat.id, tmp_path / "chat.txt")
    with pytest.raises(StoreError, match="Could not write"):
        export(store, chat.id, tmp_path / "missing" / "chat.md")
    left = [p.name for p in tmp_path.iterdir() if not p.name.startswith("chat.sqlite")]
    assert left == []
    store.close()
