"""The model manager dialog on this machine: machine, recommendation, live predictions, loading."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QAbstractItemView
from pytestqt.qtbot import QtBot

from app.model_manager import RECOMMENDED_KEY, ModelManager
from engine.gguf_file import read_gguf
from engine.planner import ModelShape, plan
from tests.helpers.windows import TIMEOUT_MS, close, open_manager


def add_local(qtbot: QtBot, manager: ModelManager, path: Path) -> None:
    with qtbot.waitSignal(manager.imported, timeout=TIMEOUT_MS) as imported:
        manager.add_local(str(path))
    assert imported.args == [str(path)], manager.local_error.text()


def column(table: QAbstractItemView, index: int) -> list[str]:
    return [table.item(row, index).text() for row in range(table.rowCount())]  # type: ignore[attr-defined]


def test_shows_the_machine_and_a_recommendation(qtbot: QtBot) -> None:
    window, manager = open_manager(qtbot)
    machine = manager.machine_label.text()
    assert "CPU" in machine and "RAM" in machine and "Engine backends" in machine
    assert "CPU" in machine.split("Engine backends")[1]
    assert manager.recommendation.text().startswith("<b>Recommended:</b> ")
    assert "tokens/s" in manager.recommendation.text()
    rows = manager.table.rowCount()
    assert rows > 5
    assert "Too large for this machine" not in column(manager.table, 3)  # "runs here only"
    manager.fits_only.setChecked(False)
    assert manager.table.rowCount() > rows
    assert "Too large for this machine" in column(manager.table, 3)
    tip = manager.table.item(0, 0).toolTip()
    assert "Placement:" in tip and "weights" in tip and "KV cache" in tip
    # remembered, so the next start keeps it unless another is clearly better
    model_id, quant = window.store.get_setting(RECOMMENDED_KEY)
    assert any(c.model.id == model_id and c.quant.quant == quant for c in manager.candidates)
    assert manager.candidates[0].model.id == model_id
    close(window)


def test_context_length_changes_every_prediction(qtbot: QtBot) -> None:
    window, manager = open_manager(qtbot)
    manager.fits_only.setChecked(False)
    before = column(manager.table, 6)  # RAM per model
    with qtbot.waitSignal(manager.predictions_updated):
        manager.context_combo.setCurrentIndex(manager.context_combo.findData(131072))
    after = column(manager.table, 6)
    assert before != after
    assert window.store.get_setting("context_length") == 131072
    close(window)


def test_family_filter(qtbot: QtBot) -> None:
    window, manager = open_manager(qtbot)
    manager.fits_only.setChecked(False)
    manager.family_combo.setCurrentIndex(manager.family_combo.findData("Mixtral"))
    assert set(column(manager.table, 0)) == {"Mixtral-8x7B-Instruct-v0.1"}
    close(window)


def test_loading_a_local_model_from_the_dialog_starts_the_chat(
    qtbot: QtBot, synthetic_model: Path, tmp_path: Path
) -> None:
    window, manager = open_manager(qtbot)
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(synthetic_model.read_bytes()[:5000])
    with qtbot.waitSignal(manager.imported, timeout=TIMEOUT_MS) as imported:
        manager.add_local(str(bad))
    assert imported.args == [""]
    assert "incomplete" in manager.local_error.text()
    add_local(qtbot, manager, synthetic_model)
    assert manager.local_table.rowCount() == 1
    planned = plan(ModelShape.from_gguf(read_gguf(synthetic_model)), manager.machine,
                   manager.settings)  # fmt: skip
    assert manager.local_table.item(0, 2).text() == planned.verdict.value  # from its header
    with qtbot.waitSignal(window.model_ready, timeout=TIMEOUT_MS) as loaded:
        qtbot.mouseClick(manager.load_button, Qt.MouseButton.LeftButton)
    assert loaded.args[0].path == str(synthetic_model)
    assert [m.path for m in window.library.installed()] == [str(synthetic_model)]
    with qtbot.waitSignal(window.reply_done, timeout=TIMEOUT_MS):
        window.input.setPlainText("hello")
        window.send()
    close(window)


def test_predicted_vs_dry_run_vs_measured_for_a_local_model(qtbot: QtBot, smollm2: Path) -> None:
    window, manager = open_manager(qtbot)
    add_local(qtbot, manager, smollm2)
    with qtbot.waitSignal(manager.memory_checked, timeout=TIMEOUT_MS):
        qtbot.mouseClick(manager.check_button, Qt.MouseButton.LeftButton)
    details = manager.details.text()
    assert "CPU: predicted" in details and "dry run" in details
    manager.context_combo.setCurrentIndex(manager.context_combo.findData(8192))
    with qtbot.waitSignal(window.model_ready, timeout=TIMEOUT_MS) as loaded:
        qtbot.mouseClick(manager.load_button, Qt.MouseButton.LeftButton)
    assert loaded.args[0].n_ctx == 8192  # the context the predictions were made for
    with qtbot.waitSignal(window.reply_done, timeout=TIMEOUT_MS):
        # long enough a reply to count as a speed measurement (more than 8 tokens), whatever
        # the sampler picks: "Name three colours." sometimes got "Red, blue and green."
        window.input.setPlainText("Write three sentences about the sea.")
        window.send()
    again = window.open_model_manager()
    with qtbot.waitSignal(again.machine_ready, timeout=TIMEOUT_MS):
        pass
    again.local_table.selectRow(0)
    assert again.local_table.item(0, 4).text().endswith("tok/s")  # measured speed
    assert "measured" in again.details.text() and "at the last load" in again.details.text()
    close(window)
