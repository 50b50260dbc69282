"""Downloading from the model manager, against the fake Hub: progress, pause, resume, load."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QPushButton
from pytestqt.qtbot import QtBot

from app.chat_window import ChatWindow
from app.model_manager import ModelManager
from engine.library import Library
from tests.helpers.fake_hub import FakeHub
from tests.helpers.windows import TIMEOUT_MS, close, open_manager

MiB = 1 << 20
# A real catalog row; the fake Hub serves the synthetic MoE under its repo and file name.
KEY = "granite-3.1-1b-a400m-instruct:Q8_0"
REPO = "bartowski/granite-3.1-1b-a400m-instruct-GGUF"
FILE = "granite-3.1-1b-a400m-instruct-Q8_0.gguf"


def open_all(qtbot: QtBot, library: Library) -> tuple[ChatWindow, ModelManager]:
    """The model manager showing every catalog row, runnable here or not."""
    window, manager = open_manager(qtbot, library)
    manager.fits_only.setChecked(False)
    return window, manager


def action(manager: ModelManager, key: str) -> QPushButton:
    button = manager.table.findChild(QPushButton, f"action:{key}")
    assert button is not None, key
    return button


def wait_event(qtbot: QtBot, window: ChatWindow, test: Any) -> Any:
    seen: list[Any] = []

    def check(event: Any) -> bool:
        if test(event):
            seen.append(event)
            return True
        return False

    with qtbot.waitSignal(window.downloads.changed, timeout=TIMEOUT_MS, check_params_cb=check):
        pass
    return seen[0]


def test_download_pause_resume_and_load_from_the_model_manager(
    qtbot: QtBot, library: Library, hub: FakeHub, hub_files: dict[str, Path]
) -> None:
    hub.add_repo(REPO, {FILE: hub_files["single"]})
    hub.rate = 4 * MiB
    window, manager = open_all(qtbot, library)
    assert action(manager, KEY).text() == "Download"

    qtbot.mouseClick(action(manager, KEY), Qt.MouseButton.LeftButton)
    moving = wait_event(qtbot, window, lambda e: e.state == "running" and e.speed)
    (row,) = manager.downloads_panel.rows.values()
    assert row.bar.value() > 0
    assert "MB/s" in row.status.text() and "left" in row.status.text()
    assert action(manager, KEY).text().startswith("Pause (")
    assert "↓" in window.download_label.text()

    qtbot.mouseClick(action(manager, KEY), Qt.MouseButton.LeftButton)  # Pause
    paused = wait_event(qtbot, window, lambda e: e.state == "paused")
    assert paused.done >= moving.done
    assert action(manager, KEY).text().startswith("Resume (")
    assert row.pause_button.text() == "Resume"

    hub.rate = None
    qtbot.mouseClick(row.pause_button, Qt.MouseButton.LeftButton)  # Resume, in the list
    done = wait_event(qtbot, window, lambda e: e.state == "done")
    assert row.load_button.isVisible() and not row.bar.isVisible()
    assert "Installed" in row.status.text()
    assert action(manager, KEY).text() == "Load"
    (model,) = library.installed()
    assert done.model_path == model.path
    assert manager.selected_path() == model.path  # the new model is selected below

    with qtbot.waitSignal(window.model_ready, timeout=TIMEOUT_MS) as loaded:
        qtbot.mouseClick(row.load_button, Qt.MouseButton.LeftButton)
    assert loaded.args[0].path == model.path
    close(window)


def test_unfinished_downloads_are_listed_again_after_a_restart_and_cancel_deletes_them(
    qtbot: QtBot, library: Library, hub: FakeHub, hub_files: dict[str, Path]
) -> None:
    hub.add_repo(REPO, {FILE: hub_files["single"]})
    hub.rate = 2 * MiB
    window, manager = open_all(qtbot, library)
    qtbot.mouseClick(action(manager, KEY), Qt.MouseButton.LeftButton)
    wait_event(qtbot, window, lambda e: e.state == "running" and e.done >= MiB)
    qtbot.mouseClick(action(manager, KEY), Qt.MouseButton.LeftButton)  # Pause
    wait_event(qtbot, window, lambda e: e.state == "paused")
    close(window)

    window, manager = open_all(qtbot, Library(library.home))
    (row,) = manager.downloads_panel.rows.values()
    assert row.status.text().startswith("Paused at")
    assert row.pause_button.text() == "Resume"
    assert list(window.library.models_dir.rglob("*.part"))
    qtbot.mouseClick(row.cancel_button, Qt.MouseButton.LeftButton)
    wait_event(qtbot, window, lambda e: e.state == "cancelled")
    assert manager.downloads_panel.rows == {}
    assert action(manager, KEY).text() == "Download"
    window.downloads.downloader.wait_idle(10)
    assert not list(window.library.models_dir.rglob("*.part"))
    close(window)


def test_hub_errors_show_the_cause_and_the_fix(
    qtbot: QtBot, library: Library, hub: FakeHub
) -> None:
    window, manager = open_all(qtbot, library)  # the fake Hub has no granite repo
    with qtbot.waitSignal(window.downloads.resolve_failed, timeout=TIMEOUT_MS):
        qtbot.mouseClick(action(manager, KEY), Qt.MouseButton.LeftButton)
    assert manager.download_error.isVisible()
    assert f"There is no repository {REPO}" in manager.download_error.text()
    assert action(manager, KEY).text() == "Download" and action(manager, KEY).isEnabled()
    close(window)


def test_settings_store_the_token_privately_and_offline_mode_is_shown(
    qtbot: QtBot, library: Library, hub: FakeHub
) -> None:
    window, manager = open_all(qtbot, library)
    assert not manager.downloads_panel.offline_label.isVisible()
    dialog = manager.open_settings()
    dialog.token.setText("hf_private")
    dialog.offline.setChecked(True)
    with qtbot.waitSignal(dialog.accepted):
        dialog.save()
    assert library.saved_token() == "hf_private"
    assert os.stat(library.token_file).st_mode & 0o777 == 0o600
    assert library.hub.offline and library.hub.endpoint == hub.endpoint
    assert manager.downloads_panel.offline_label.isVisible()
    assert "Offline mode is on (Settings)" in manager.downloads_panel.offline_label.text()
    hub.counters.requests.clear()
    with qtbot.waitSignal(window.downloads.resolve_failed, timeout=TIMEOUT_MS):
        qtbot.mouseClick(action(manager, KEY), Qt.MouseButton.LeftButton)
    assert "Offline mode is on" in manager.download_error.text()
    assert hub.counters.requests == []
    close(window)


def test_any_repository_and_quant_typed_by_the_user(
    qtbot: QtBot, library: Library, hub: FakeHub
) -> None:
    from tests.conftest import SPLIT_REPO

    window, manager = open_all(qtbot, library)
    panel = manager.downloads_panel
    panel.repo_edit.setText("not a repo")
    with qtbot.waitSignal(window.downloads.resolve_failed):
        qtbot.mouseClick(panel.get_button, Qt.MouseButton.LeftButton)
    assert "owner/name" in manager.download_error.text()
    panel.repo_edit.setText(SPLIT_REPO)
    panel.file_edit.setText("Q8_0")
    qtbot.mouseClick(panel.get_button, Qt.MouseButton.LeftButton)
    done = wait_event(qtbot, window, lambda e: e.state == "done")
    (model,) = library.installed()
    assert len(model.files) == 3 and done.model_path == model.path
    assert manager.selected_path() == model.path
    close(window)


def test_the_recommended_model_is_highlighted_downloaded_in_one_click_and_marked_loaded(
    qtbot: QtBot, library: Library, hub: FakeHub, hub_files: dict[str, Path]
) -> None:
    window, manager = open_manager(qtbot, library)
    best = manager.recommended
    assert best is not None
    [row] = [r for r in range(manager.table.rowCount())
             if manager.table.item(r, 0).text().startswith("★ ")]  # fmt: skip
    name = manager.table.item(row, 0)
    assert name.text() == "★ " + best.model.display_name and name.font().bold()
    assert "Recommended" in name.toolTip()
    others = [manager.table.item(r, 0) for r in range(manager.table.rowCount()) if r != row]
    assert not any(item.font().bold() for item in others)
    button = manager.recommend_button
    assert button.isVisible() and button.text().startswith("Download recommended (")
    hub.add_repo(best.quant.repo, {best.quant.files[0]: hub_files["single"]})
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
    key = f"{best.model.id}:{best.quant.quant}"
    wait_event(qtbot, window, lambda e: window.downloads.keys.get(e.job_id) == key
               and e.state == "done")  # fmt: skip
    qtbot.waitUntil(lambda: button.text() == "Load recommended")
    with qtbot.waitSignal(window.model_ready, timeout=TIMEOUT_MS):
        qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
    manager = window.open_model_manager()  # opened again, as a user would to check
    with qtbot.waitSignal(manager.machine_ready, timeout=TIMEOUT_MS):
        pass
    assert manager.recommend_button.text() == "Recommended model loaded"
    assert not manager.recommend_button.isEnabled()
    assert action(manager, key).text() == "Loaded"
    local = manager.local_table.item(0, 0)
    assert local.text().endswith("(loaded)") and local.font().bold()
    close(window)
