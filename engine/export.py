"""One conversation as a Markdown or JSON file, as it is shown (the chosen alternatives)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from engine.errors import StoreError
from engine.store import Store, StoredMessage

FORMATS = {"md": "Markdown (*.md)", "json": "JSON (*.json)"}


def to_markdown(store: Store, conversation_id: int) -> str:
    conversation = store.conversation(conversation_id)
    parts = [f"# {conversation.title}\n"]
    if conversation.system_prompt:
        parts.append(f"**System prompt**\n\n{_quoted(conversation.system_prompt)}\n")
    for message in store.messages(conversation_id):
        who = "You" if message.role == "user" else (message.model_name or "Assistant")
        parts.append(f"## {who}\n")
        if message.reasoning:
            parts.append(f"<details><summary>Reasoning</summary>\n\n{message.reasoning}\n\n"
                         "</details>\n")  # fmt: skip
        parts.append(message.content + "\n")
        if not message.complete:
            parts.append("*(interrupted)*\n")
    return "\n".join(parts)


def to_json(store: Store, conversation_id: int) -> str:
    conversation = store.conversation(conversation_id)
    document = {
        "title": conversation.title,
        "created_at": conversation.created_at,
        "exported_at": time.time(),
        "system_prompt": conversation.system_prompt,
        "messages": [_json_message(m) for m in store.messages(conversation_id)],
    }
    return json.dumps(document, ensure_ascii=False, indent=2) + "\n"


def export(store: Store, conversation_id: int, path: str | Path) -> Path:
    """Write the conversation to ``path``, in the format its suffix names (``.md`` or
    ``.json``); written whole or not at all.

    Raises:
        StoreError: the suffix is neither, or the file cannot be written.
    """
    path = Path(path)
    kind = path.suffix.lower().lstrip(".")
    if kind not in FORMATS:
        raise StoreError(f"Cannot export as “{path.suffix}”.", "Choose a .md or .json file.")
    text = to_markdown(store, conversation_id) if kind == "md" else to_json(store, conversation_id)
    partial = path.with_name(path.name + ".part")
    try:
        partial.write_text(text, encoding="utf-8")
        partial.replace(path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise StoreError(f"Could not write {path}: {exc.strerror or exc}.") from exc
    return path


def _json_message(message: StoredMessage) -> dict[str, object]:
    item: dict[str, object] = {"role": message.role, "content": message.content}
    if message.reasoning:
        item["reasoning"] = message.reasoning
    if message.model_name:
        item["model"] = message.model_name
    item["created_at"] = message.created_at
    if message.stats:
        item["stats"] = message.stats
    if not message.complete:
        item["interrupted"] = True
    return item


def _quoted(text: str) -> str:
    return "\n".join(f"> {line}" if line else ">" for line in text.splitlines())
