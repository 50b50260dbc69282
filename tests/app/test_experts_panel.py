"""View → Experts, driven offscreen with the real engine counting real routing."""

from __future__ import annotations

import os
import signal
from dataclasses import replace
from pathlib import Path

import numpy as np
from PySide6.QtCore import QObject, Qt, QThreadPool, Slot
from PySide6.QtWidgets import QMessageBox
from pytest import MonkeyPatch
from pytestqt.qtbot import QtBot

from app.chat_window import ChatWindow
from app.experts_panel import ExpertsPanel
from engine.heat import HeatProfile, model_key
from engine.paths import app_home
from engine.session import SamplingSettings, Stats
from tests.app.test_chat_window import LOAD_TIMEOUT_MS, load, open_window, type_and_send
from tests.helpers.windows import close


class Recorder(QObject):
    """Heat updates as the GUI receives them, and whether a reply was streaming then."""

    def __init__(self, window: ChatWindow) -> None:
        super().__init__()
        self.window = window
        self.items: list[tuple[HeatProfile, bool]] = []

    @Slot(object)
    def add(self, heat: HeatProfile) -> None:
        self.items.append((heat, self.window.stop_button.isEnabled()))


def test_heat_map_fills_in_while_a_reply_streams(qtbot: QtBot, synthetic_model: Path) -> None:
    window = open_window(qtbot)
    model = load(qtbot, window, synthetic_model)
    panel = window.open_experts()
    qtbot.waitExposed(panel)
    assert panel.heat_map.relative is None
    assert "Turn counting on" in panel.summary.text()
    # the placement summary is the loaded plan's
    assert f"Placement: {model.placement}" in panel.placement.text()
    on_gpu = len(model.gpu_expert_layers)
    assert f"expert layers on a GPU: {on_gpu} of {model.n_layers}" in panel.placement.text()

    updates = Recorder(window)  # on the GUI thread: the worker's signal arrives queued
    window.worker.heat_updated.connect(updates.add)
    panel.profiling.click()
    qtbot.waitUntil(lambda: panel.heat is not None, timeout=LOAD_TIMEOUT_MS)
    assert panel.heat is not None and panel.heat.total.sum() == 0
    assert "Counting" in panel.summary.text()
    with qtbot.waitSignal(window.reply_done, timeout=LOAD_TIMEOUT_MS) as finished:
        type_and_send(qtbot, window, "hello world expert router")
    stats = finished.args[0]
    final = panel.heat  # the worker sends the reply's last counts before it says it is done
    assert final is not None
    # every reply token fed back to the model was counted (at max_tokens the last is not)
    assert final.tokens["generation"] == stats["generated_tokens"] - (stats["stop_reason"] != "end")
    assert final.tokens["generation"] > 0
    # the map moved while the reply was still streaming: its first piece brought the prompt's
    during = [heat for heat, streaming in updates.items if streaming]
    assert any(h.tokens["prompt"] > 0 and h.total.sum() < final.total.sum() for h in during)
    assert panel.heat_map.relative is not None
    assert np.isclose(panel.heat_map.relative.mean(), 1.0)  # shares x experts average to 1
    assert "generated tokens counted" in panel.summary.text()
    assert len(panel.coverage.curve) == model.n_experts + 1
    assert panel.coverage.curve[-1] == 1.0
    # counts were saved for this model file
    saved = HeatProfile.load(model_key(synthetic_model))
    assert saved is not None and np.array_equal(saved.total, final.total)
    panel.close()
    close(window)


def test_counting_survives_a_data_folder_it_cannot_write(
    qtbot: QtBot, synthetic_model: Path
) -> None:
    """No place to keep the counts (a file where the heat folder goes): the reply and the
    counting go on; only the saving is skipped."""
    (app_home() / "heat").write_text("not a folder")
    window = open_window(qtbot)
    load(qtbot, window, synthetic_model)
    panel = window.open_experts()
    panel.profiling.click()
    qtbot.waitUntil(lambda: panel.heat is not None, timeout=LOAD_TIMEOUT_MS)
    with qtbot.waitSignal(window.reply_done, timeout=LOAD_TIMEOUT_MS):
        type_and_send(qtbot, window, "hello")
    assert panel.heat is not None and panel.heat.tokens["prompt"] > 0
    assert not window.error_banner.isVisible()
    panel.close()
    close(window)


class Progress(QObject):
    """Tuning progress as the GUI receives it; optionally presses Cancel at the first report."""

    def __init__(self, window: ChatWindow, cancel: bool = False) -> None:
        super().__init__()
        self.window = window
        self.cancel = cancel
        self.items: list[tuple[float, str, bool]] = []

    @Slot(float, str)
    def add(self, fraction: float, message: str) -> None:
        panel = self.window.experts
        self.items.append((fraction, message, panel.tune_progress.isVisible()))
        if self.cancel and panel.cancel_button.isEnabled():
            panel.cancel_button.click()


def test_tune_for_this_machine_measures_and_reloads_with_the_fastest(
    qtbot: QtBot, synthetic_model: Path
) -> None:
    window = open_window(qtbot)
    before = load(qtbot, window, synthetic_model)
    assert not before.tuned and (before.predicted_generation_tokens_per_s or 0) > 0
    panel = window.open_experts()
    qtbot.waitExposed(panel)
    assert not panel.results.isVisible()
    progress = Progress(window)
    window.worker.tune_progressed.connect(progress.add)
    with qtbot.waitSignal(window.model_ready, timeout=2 * LOAD_TIMEOUT_MS) as reloaded:
        panel.tune_button.click()
        qtbot.waitUntil(lambda: bool(progress.items), timeout=LOAD_TIMEOUT_MS)
        # while it measures, the chat explains why it waits
        type_and_send(qtbot, window, "hello")
        assert "Tuning" in window.error_label.text()
    model = reloaded.args[0]
    assert all(visible for _, _, visible in progress.items)
    assert any("Measuring candidate" in message for _, message, _ in progress.items)
    tuning = model.tuning
    assert model.tuned and model.placement.startswith("Tuned: ")
    assert "Tuned: " in window.model_label.text()
    # the table lists every measured candidate and marks the fastest, which the load used
    rows = panel.results.rowCount()
    assert panel.results.isVisible() and rows == len(tuning.measurements) >= 2
    marked = [r for r in range(rows) if panel.results.item(r, 0).text().startswith("✓")]
    assert marked == [tuning.measurements.index(tuning.best)]
    assert tuning.best.label in panel.tune_status.text()
    assert not panel.tune_progress.isVisible() and panel.tune_button.isEnabled()

    with qtbot.waitSignal(window.reply_done, timeout=LOAD_TIMEOUT_MS) as finished:
        type_and_send(qtbot, window, "hello world")
    measured = finished.args[0]["generation_tokens_per_s"]
    assert f"measured in the last reply: {measured:.1f}" in panel.placement.text()
    panel.close()
    close(window)


def test_cancelled_tuning_changes_nothing(qtbot: QtBot, upcycled_moe: Path) -> None:
    window = open_window(qtbot)
    load(qtbot, window, upcycled_moe)
    panel = window.open_experts()
    progress = Progress(window, cancel=True)
    window.worker.tune_progressed.connect(progress.add)
    with qtbot.waitSignal(window.model_ready, timeout=4 * LOAD_TIMEOUT_MS) as reloaded:
        panel.tune_button.click()
    model = reloaded.args[0]
    assert not model.tuned and model.tuning is None
    assert "nothing was changed" in panel.tune_status.text()
    assert not panel.results.isVisible() and not window.error_banner.isVisible()
    assert not list((app_home() / "tuning").glob("*.json"))
    panel.close()
    close(window)


def test_the_map_explains_itself_has_a_scale_and_hides_for_a_dense_model(
    qtbot: QtBot, synthetic_model: Path, smollm2: Path
) -> None:
    from app.experts_panel import FULL_AT, HOT, MIN_CELL_H, _label_step, heat_colour

    window = open_window(qtbot)
    model = load(qtbot, window, synthetic_model)
    panel = window.open_experts()
    qtbot.waitExposed(panel)
    assert panel.explanation.isVisible() and "VRAM" in panel.explanation.text()
    assert panel.plots.isVisible()
    panel.profiling.click()
    qtbot.waitUntil(lambda: panel.heat is not None, timeout=LOAD_TIMEOUT_MS)
    with qtbot.waitSignal(window.reply_done, timeout=LOAD_TIMEOUT_MS):
        type_and_send(qtbot, window, "hello world expert router")
    qtbot.waitUntil(lambda: panel.heat_map.relative is not None)
    # Cells are never squeezed below readable: the map scrolls instead.
    assert panel.heat_map.minimumHeight() >= model.n_layers * MIN_CELL_H
    # The scale runs from the background (never picked) to full colour at FULL_AT x average.
    base = panel.heat_map.palette().color(panel.heat_map.backgroundRole())
    assert heat_colour(0.0, base) == base and heat_colour(FULL_AT, base) == HOT
    image = panel.heat_map.grab().toImage()
    hot = [image.pixelColor(x, image.height() - 25) for x in range(image.width())]
    assert any(abs(p.red() - HOT.red()) + abs(p.green() - HOT.green()) < 20 for p in hot)
    # Layer numbers are drawn at steps that fit: every layer when tall enough, fewer if not.
    assert _label_step(4, 200, 16) == 1 and _label_step(48, 300, 16) == 4
    assert _label_step(128, 512, 30) == 16  # 32 px apart would be too close for 30 px

    load(qtbot, window, smollm2)  # a dense model: no experts to show
    assert not panel.plots.isVisible() and not panel.profiling.isVisible()
    assert "dense model" in panel.summary.text()
    assert panel.placement.text().startswith("Placement:")
    panel.close()
    close(window)


def _counted_copy(
    qtbot: QtBot, synthetic_model: Path, tmp_path: Path
) -> tuple[ChatWindow, ExpertsPanel, Path]:
    """The window with the user's own copy of the model loaded and one reply's heat counted."""
    source = tmp_path / "mine.gguf"  # the user's own file, which stays as it is
    source.write_bytes(synthetic_model.read_bytes())
    window = open_window(qtbot)
    load(qtbot, window, source)
    panel = window.open_experts()
    qtbot.waitExposed(panel)
    panel.profiling.click()
    qtbot.waitUntil(lambda: panel.heat is not None, timeout=LOAD_TIMEOUT_MS)
    with qtbot.waitSignal(window.reply_done, timeout=LOAD_TIMEOUT_MS):
        type_and_send(qtbot, window, "hello world expert router")
    return window, panel, source


def test_order_experts_by_heat_writes_a_listed_copy_with_the_heat_and_loads_it(
    qtbot: QtBot, synthetic_model: Path, tmp_path: Path, monkeypatch: MonkeyPatch
) -> None:
    window, panel, source = _counted_copy(qtbot, synthetic_model, tmp_path)
    counted = HeatProfile.load(model_key(source))
    assert counted is not None and counted.total.sum() > 0

    asked: list[str] = []
    monkeypatch.setattr(
        QMessageBox, "question", lambda _p, _t, text: asked.append(text) or QMessageBox.Yes
    )
    with qtbot.waitSignal(
        window.model_ready,
        timeout=LOAD_TIMEOUT_MS,
        check_params_cb=lambda m: m.path.endswith(".by-heat.gguf"),
    ) as ready:
        window.reorder_model()
    copy = ready.args[0]
    assert "on disk; the original stays" in asked[0]
    assert Path(copy.path).parent == window.library.models_dir / "imported"
    assert copy.heat_ordered and window.library.find_path(copy.path) is not None
    assert source.read_bytes() == synthetic_model.read_bytes()
    assert panel.tune_status.text().startswith("Wrote mine.by-heat.gguf")
    carried = HeatProfile.load(model_key(copy.path))
    assert carried is not None and carried.tokens == counted.tokens
    assert np.all(np.diff(carried.total, axis=1) <= 0)  # hottest first in every layer
    panel.close()
    close(window)


def test_a_copy_written_during_a_reply_loads_when_the_reply_ends(
    qtbot: QtBot, synthetic_model: Path, tmp_path: Path, monkeypatch: MonkeyPatch
) -> None:
    """Chatting goes on while the copy is written: the reply in progress is not cut off."""
    window, panel, _source = _counted_copy(qtbot, synthetic_model, tmp_path)
    monkeypatch.setattr(QMessageBox, "question", lambda *_a: QMessageBox.Yes)
    window.sampling = SamplingSettings.greedy(1500)  # ~0.5 s: far longer than the GUI lags
    pid = window.host.pid
    events: list[str] = []
    window.reply_done.connect(lambda stats: events.append(f"reply {stats['stop_reason']}"))
    window.model_ready.connect(lambda model: events.append(f"ready {Path(model.path).name}"))

    def on_piece(_piece: str) -> None:  # the reply is streaming; the engine is held in it
        window.piece_shown.disconnect(on_piece)
        os.kill(pid, signal.SIGSTOP)
        try:
            window.reorder_model()
            qtbot.waitUntil(lambda: not panel.reordering, timeout=LOAD_TIMEOUT_MS)
        finally:
            os.kill(pid, signal.SIGCONT)

    window.piece_shown.connect(on_piece)
    qtbot.mouseClick(window.new_button, Qt.MouseButton.LeftButton)  # a short prompt: room
    with qtbot.waitSignal(window.reply_done, timeout=LOAD_TIMEOUT_MS):
        type_and_send(qtbot, window, "tell me about experts")
    assert panel.tune_status.text() == "Wrote mine.by-heat.gguf; it loads when this reply ends."
    qtbot.waitUntil(lambda: len(events) == 2, timeout=LOAD_TIMEOUT_MS)
    assert events == ["reply length", "ready mine.by-heat.gguf"]
    [*_, last] = window.store.messages(window.conversation_id)
    assert last.complete and last.stats["generated_tokens"] == 1500
    panel.close()
    close(window)


def test_closing_the_window_stops_a_copy_being_written_and_leaves_no_part_of_it(
    qtbot: QtBot, hub_files: dict[str, Path], tmp_path: Path, monkeypatch: MonkeyPatch
) -> None:
    # the fake Hub's 14 MB model: a copy that takes long enough to be closed on
    window, panel, _source = _counted_copy(qtbot, hub_files["single"], tmp_path)
    monkeypatch.setattr(QMessageBox, "question", lambda *_a: QMessageBox.Yes)
    imported = window.library.models_dir / "imported"
    window.reorder_model()
    assert panel.reordering
    panel.close()
    close(window)
    assert QThreadPool.globalInstance().waitForDone(LOAD_TIMEOUT_MS)
    assert not imported.exists() or not any(imported.iterdir())


def test_the_panel_says_where_the_hot_experts_are_and_what_they_served(
    qtbot: QtBot, synthetic_model: Path
) -> None:
    """Each engine and file the panel meets: what it shows about hot experts on the GPU."""
    window = open_window(qtbot)
    loaded = load(qtbot, window, synthetic_model)
    panel = window.open_experts()
    qtbot.waitExposed(panel)
    assert not panel.hot.isVisible()  # this machine's CPU only: no VRAM to talk about
    on_gpu = {"CUDA0": 3 << 30, "CPU": 12 << 30}
    heat = HeatProfile(loaded.n_layers, loaded.n_experts, loaded.n_experts_used)
    heat.add("generation", 0, np.array([0, 1, 0]), 3)
    panel.set_heat(heat)

    panel.set_model(replace(loaded, device_bytes=on_gpu))  # a stock engine
    assert "whole expert layers only" in panel.hot.text()
    assert not panel.reorder_button.isVisible()

    panel.set_model(replace(loaded, device_bytes=on_gpu, splits_experts=True))
    panel.set_heat(heat)
    assert "Order experts by heat writes such a copy" in panel.hot.text()
    assert panel.reorder_button.isVisible() and panel.reorder_button.isEnabled()

    split = replace(
        loaded,
        device_bytes=on_gpu,
        splits_experts=True,
        heat_ordered=True,
        hot_experts=(3, 2, 2, 1),
        hot_share=0.61,
    )
    panel.set_model(split)
    text = panel.hot.text()
    assert "Hot experts on the GPU: 8 of 32, 1\u20133 of 8 per layer" in text
    assert "Expected from the counted heat: 61% of expert reads" in text
    assert "Turn counting on" in text and not panel.reorder_button.isVisible()
    reply = Stats(generated_tokens=20, generation_tokens_per_s=5.0, hot_read_share=0.574)
    panel.set_reply_stats({**reply.to_dict(), "profiling": True})
    assert "Measured in the last reply: 57%." in panel.hot.text()
    panel.close()
    close(window)
