"""engine/library.py: the list of installed models, its versions, and what survives bad files."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from engine.errors import ModelFileError, StoreError
from engine.library import MANIFEST_NAME, SCHEMA, HubSettings, Library


def test_imports_settings_and_token_survive_reopening(
    tmp_path: Path, synthetic_model: Path
) -> None:
    library = Library(tmp_path)
    linked = library.import_file(synthetic_model, copy=False)
    copied = library.import_file(synthetic_model, copy=True)
    library.set_hub(HubSettings(endpoint="http://127.0.0.1:9", offline=True))
    library.save_token("hf_secret")
    again = Library(tmp_path)
    assert {m.id for m in again.installed()} == {linked.id, copied.id}
    found = again.find_path(str(synthetic_model.resolve()))
    assert found is not None and found.id == linked.id and found.source == "linked"
    assert Path(copied.path).parent == again.models_dir / "imported"
    assert again.hub == HubSettings(endpoint="http://127.0.0.1:9", offline=True)
    assert again.saved_token() == "hf_secret"
    assert stat.S_IMODE(again.token_file.stat().st_mode) == 0o600
    assert "hf_secret" not in (tmp_path / MANIFEST_NAME).read_text()
    assert json.loads((tmp_path / MANIFEST_NAME).read_text())["schema"] == SCHEMA
    again.remove(copied.id)  # a copy's file goes; the user's own file never does
    again.remove(linked.id)
    assert not Path(copied.path).exists() and synthetic_model.exists()
    assert Library(tmp_path).installed() == []


def test_a_file_that_is_not_a_model_is_refused_and_nothing_listed(tmp_path: Path) -> None:
    notes = tmp_path / "notes.gguf"
    notes.write_text("not a model")
    library = Library(tmp_path / "home")
    with pytest.raises(ModelFileError):
        library.import_file(notes, copy=True)
    assert library.installed() == [] and not (library.models_dir / "imported").exists()


def test_a_list_written_by_a_newer_moe_chat_is_refused_and_never_rewritten(
    tmp_path: Path,
) -> None:
    manifest = tmp_path / MANIFEST_NAME
    newer = {"schema": SCHEMA + 1, "installed": [{"a field": "this build does not know"}]}
    manifest.write_text(json.dumps(newer))
    before = manifest.read_bytes()
    with pytest.raises(StoreError, match="newer MoE Chat"):
        Library(tmp_path)
    assert manifest.read_bytes() == before


@pytest.mark.parametrize("content", ["{half a file", "[1, 2, 3]", '{"schema": "two"}'])
def test_an_unreadable_list_is_kept_aside_and_a_new_one_started(
    tmp_path: Path, content: str
) -> None:
    manifest = tmp_path / MANIFEST_NAME
    manifest.write_text(content)
    (tmp_path / f".{MANIFEST_NAME}.abc.tmp").write_text("left by a crash mid-write")
    library = Library(tmp_path)
    assert library.installed() == []
    [aside] = tmp_path.glob(f"{MANIFEST_NAME}.unreadable-*")
    assert aside.read_text() == content  # kept for the user, never deleted
    assert not list(tmp_path.glob(f".{MANIFEST_NAME}.*.tmp"))


def test_a_list_without_a_schema_is_the_first_version(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"models_dir": str(tmp_path / "m")}))
    assert Library(tmp_path).models_dir == tmp_path / "m"
