"""The model manager dialog: the machine, the recommendation, the catalog planned, local models."""

from __future__ import annotations

import html
from dataclasses import replace
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDialog,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.api_control import ApiControl
from app.background import run_in_background
from app.downloads import Downloads, DownloadsPanel, action_text, catalog_key
from app.settings_dialog import SettingsDialog
from engine.catalog import CatalogModel, load_catalog
from engine.computers import check, lent_devices, load_computers, ram_limit
from engine.downloads import DownloadEvent
from engine.errors import MoeChatError, user_message
from engine.gguf_file import GGUFInfo, read_gguf
from engine.hardware import MachineProfile, detect
from engine.library import InstalledModel
from engine.planner import Candidate, ModelShape, Plan, Settings, Verdict, plan, rank, recommend
from engine.store import Store
from engine.units import format_bytes

MEASURED_KEY = "measured_models"  # path: what the engine reported when it was last loaded
RECOMMENDED_KEY = "recommended_model"  # (model id, quant) last recommended
CONTEXT_KEY = "context_length"
CONTEXTS = (2048, 4096, 8192, 16384, 32768, 65536, 131072)
VERDICT_COLOURS = {  # (on a light background, on a dark one)
    Verdict.FULL_GPU: ("#047857", "#34d399"),
    Verdict.HYBRID: ("#1d4ed8", "#7ab4ff"),
    Verdict.CPU_ONLY: ("#92400e", "#f5b942"),
    Verdict.POOLED: ("#6d28d9", "#c4b5fd"),
    Verdict.TOO_LARGE: ("#b91c1c", "#f87171"),
}
RECOMMENDED_MARK = "★ "
COLUMNS = ("Model", "Quant", "Size", "Verdict", "Speed", "GPU", "RAM", "Hub repository", "")
ACTION_COLUMN = len(COLUMNS) - 1
SOURCES = {"hub": "downloaded, verified", "copied": "imported (copy)", "linked": "your file"}


def _gb(n_bytes: float) -> str:
    """A table cell's size: a dash for none."""
    return format_bytes(n_bytes) if n_bytes else "–"


def breakdown(result: Plan) -> str:
    """The memory breakdown and placement of a plan, as tooltip text."""
    lines = [result.summary(), f"Placement: {result.placement.label}"]
    for device in result.devices:
        if not device.total:
            continue
        lines.append(
            f"{device.label}: weights {_gb(device.weights)}, KV cache {_gb(device.kv_cache)}, "
            f"compute {_gb(device.compute)} (budget {_gb(device.budget)})"
        )
    lines.append(
        f"Prompt about {result.prompt_tokens_per_s:.0f} tokens/s; "
        f"context {result.n_ctx} tokens"
        + ("" if result.shape.exact else "; sizes estimated from the catalog")
    )
    return "\n".join(lines)


def machine_summary(machine: MachineProfile, unreachable: tuple[str, ...] = ()) -> str:
    cpu = machine.cpu_model or "unknown CPU"
    cores = f"{machine.physical_cores} cores" if machine.physical_cores else "cores unknown"
    ram = (
        f"{format_bytes(machine.ram_total)} RAM ({format_bytes(machine.ram_available or 0)} free)"
        if machine.ram_total
        else "RAM unknown"
    )
    bandwidth = (
        f", ~{machine.ram_bandwidth / 1e9:.0f} GB/s measured" if machine.ram_bandwidth else ""
    )
    lines = [f"<b>CPU</b> {html.escape(cpu)}, {cores} · <b>RAM</b> {ram}{bandwidth}"]
    for gpu in machine.gpus:
        memory = (
            f"{format_bytes(gpu.memory_free or 0)} of {format_bytes(gpu.memory_total)} free"
            if gpu.memory_total
            else "memory unknown"
        )
        estimate = " (estimate)" if gpu.memory_is_estimate else ""
        usable = f"engine device {gpu.engine_device}" if gpu.engine_device else "not usable"
        lines.append(f"<b>GPU</b> {html.escape(gpu.name)}: {memory}{estimate} · {usable}")
    if not machine.gpus:
        lines.append("<b>GPU</b> none found")
    for device in machine.remotes:
        link = (
            f" · round trip {device.latency_s * 1000:.2f} ms, "
            f"{format_bytes(int(device.transfer_bps or 0))}/s"
            if device.latency_s is not None
            else " · link not tested yet"
        )
        lines.append(f"<b>Other computer</b> {html.escape(device.describe())}{link}")
    for endpoint in unreachable:
        lines.append(f"<b>Other computer</b> {html.escape(endpoint)}: unreachable")
    backends = ", ".join(machine.engine_backends) if machine.engine_backends else "unknown"
    lines.append(f"<b>Engine backends</b> {backends}")
    return "<br>".join(lines)


class ModelManager(QDialog):
    """Pick what to run. Emits ``model_chosen`` with a GGUF path for the chat window to load."""

    model_chosen = Signal(str)
    machine_ready = Signal()
    predictions_updated = Signal()
    memory_checked = Signal(str)
    imported = Signal(str)  # path, or "" when the import failed

    def __init__(
        self,
        store: Store,
        downloads: Downloads,
        parent: QWidget | None = None,
        api: ApiControl | None = None,
    ) -> None:
        super().__init__(parent)
        self.api = api  # the local API's settings live in the same Settings dialog
        self.setWindowTitle("Models")
        self._fit_to_screen(1180, 860)
        self.store = store
        self.downloads = downloads
        self.library = downloads.library
        self._actions: dict[str, tuple[QPushButton, QPushButton]] = {}
        self.machine: MachineProfile | None = None
        self.catalog: list[CatalogModel] = []
        self.candidates: list[Candidate] = []
        self._headers: dict[tuple[str, int, int], GGUFInfo] = {}
        self.recommended: Candidate | None = None
        self.loaded_path: str | None = None  # the model the chat window has loaded
        self._build_ui()
        try:
            self.catalog = load_catalog()
        except MoeChatError as exc:
            self.recommendation.setText(html.escape(str(exc)))
        models = self.library.models_dir  # the disk downloads go to: the user's chosen one
        computers = [c for c in load_computers(store) if c.enabled]

        def look() -> tuple[MachineProfile, tuple[str, ...]]:
            statuses = [check(c) for c in computers]  # each a couple of seconds at most
            machine = detect(models_dir=models, remotes=lent_devices(statuses))
            return machine, tuple(s.computer.endpoint for s in statuses if not s.reachable)

        run_in_background(look, self._on_detect_succeeded, self, self._on_detect_failed)

    # -- construction ----------------------------------------------------------------------

    def _fit_to_screen(self, width: int, height: int) -> None:
        """Open at ``width`` x ``height``, or smaller where the screen is (a 1366x768 laptop
        has about 1366x720 for a window once the panel and the title bar are counted)."""
        screen = self.screen().availableGeometry() if self.screen() is not None else None
        if screen is not None:
            width = min(width, screen.width() - 40)
            height = min(height, screen.height() - 48)
        self.resize(width, height)

    def _build_ui(self) -> None:
        layout = QVBoxLayout(self)
        machine_box = QGroupBox("This machine", self)
        machine_layout = QVBoxLayout(machine_box)
        self.machine_label = QLabel("Looking at this machine…", machine_box)
        self.machine_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.warning_label = QLabel(machine_box)
        self.warning_label.setObjectName("warningLabel")
        self.warning_label.setWordWrap(True)
        self.warning_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.warning_label.hide()
        machine_layout.addWidget(self.machine_label)
        machine_layout.addWidget(self.warning_label)
        layout.addWidget(machine_box)

        recommendation_row = QHBoxLayout()
        self.recommendation = QLabel("Planning…", self)
        self.recommendation.setObjectName("recommendation")
        self.recommendation.setWordWrap(True)
        self.recommend_button = QPushButton("Download recommended", self)
        self.recommend_button.setObjectName("recommendButton")
        self.recommend_button.setToolTip("Download the recommended model, or load it once here")
        self.recommend_button.clicked.connect(self._on_recommend_button_clicked)
        self.recommend_button.hide()
        recommendation_row.addWidget(self.recommendation, 1)
        recommendation_row.addWidget(self.recommend_button, 0, Qt.AlignmentFlag.AlignTop)
        layout.addLayout(recommendation_row)

        controls = QHBoxLayout()
        controls.addWidget(QLabel("Context:", self))
        self.context_combo = QComboBox(self)
        for n_ctx in CONTEXTS:
            self.context_combo.addItem(f"{n_ctx // 1024}k tokens", n_ctx)
        saved = self.store.get_setting(CONTEXT_KEY, 4096)
        self.context_combo.setCurrentIndex(CONTEXTS.index(saved) if saved in CONTEXTS else 1)
        self.context_combo.currentIndexChanged.connect(self._on_context_combo_changed)
        controls.addWidget(self.context_combo)
        controls.addSpacing(16)
        controls.addWidget(QLabel("Family:", self))
        self.family_combo = QComboBox(self)
        self.family_combo.addItem("All families", "")
        self.family_combo.currentIndexChanged.connect(self._refill_table)
        controls.addWidget(self.family_combo)
        self.fits_only = QCheckBox("Runs here only", self)
        self.fits_only.setChecked(True)
        self.fits_only.toggled.connect(self._refill_table)
        controls.addWidget(self.fits_only)
        controls.addStretch(1)
        self.settings_button = QPushButton("Settings…", self)
        self.settings_button.setToolTip("Hub token, Hub address, offline mode, models folder")
        self.settings_button.clicked.connect(self.open_settings)
        controls.addWidget(self.settings_button)
        layout.addLayout(controls)

        self.table = QTableWidget(0, len(COLUMNS), self)
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.verticalHeader().hide()
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for column in range(1, len(COLUMNS)):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(ACTION_COLUMN, QHeaderView.ResizeMode.Fixed)
        self.table.setColumnWidth(ACTION_COLUMN, 220)  # "Resume (100%)" and "Cancel"
        catalog_box = QWidget(self)
        catalog_layout = QVBoxLayout(catalog_box)
        catalog_layout.setContentsMargins(0, 0, 0, 0)
        catalog_layout.addWidget(self.table, 1)
        self.download_error = QLabel(self)
        self.download_error.setObjectName("warningLabel")
        self.download_error.setWordWrap(True)
        self.download_error.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.download_error.hide()
        catalog_layout.addWidget(self.download_error)
        self.downloads_panel = DownloadsPanel(self.downloads, self)
        self.downloads_panel.load_requested.connect(self._choose)
        catalog_layout.addWidget(self.downloads_panel)
        self.downloads.changed.connect(self._on_downloads_changed)
        self.downloads.resolve_failed.connect(self._on_downloads_resolve_failed)

        local_box = QGroupBox("Models on this computer", self)
        local_layout = QVBoxLayout(local_box)
        self.local_table = QTableWidget(0, 6, local_box)
        self.local_table.setHorizontalHeaderLabels(
            ("Model", "File", "Verdict", "Predicted", "Measured", "Size")
        )
        self.local_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.local_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.local_table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.local_table.verticalHeader().hide()
        self.local_table.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.local_table.itemDoubleClicked.connect(lambda _item: self.load_selected())
        self.local_table.itemSelectionChanged.connect(self._on_local_table_selection_changed)
        local_layout.addWidget(self.local_table)
        self.details = QLabel(local_box)
        self.details.setWordWrap(True)
        self.details.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        local_layout.addWidget(self.details)
        buttons = QHBoxLayout()
        self.open_button = QPushButton("Import GGUF…", local_box)
        self.open_button.setToolTip("Add a GGUF you already have: copy it, or use it in place")
        self.open_button.clicked.connect(self._on_open_button_clicked)
        self.delete_button = QPushButton("Delete", local_box)
        self.delete_button.clicked.connect(self.delete_selected)
        self.check_button = QPushButton("Check memory", local_box)
        self.check_button.setToolTip("Ask the engine what it would reserve, without loading")
        self.check_button.clicked.connect(self.check_selected)
        self.load_button = QPushButton("Load", local_box)
        self.load_button.setDefault(True)
        self.load_button.clicked.connect(self.load_selected)
        self.local_error = QLabel(local_box)
        self.local_error.setObjectName("warningLabel")
        buttons.addWidget(self.open_button)
        buttons.addWidget(self.delete_button)
        buttons.addWidget(self.local_error, 1)
        buttons.addWidget(self.check_button)
        buttons.addWidget(self.load_button)
        local_layout.addLayout(buttons)
        # The two lists share the height; the user moves the line between them.
        splitter = QSplitter(Qt.Orientation.Vertical, self)
        splitter.setChildrenCollapsible(False)
        splitter.addWidget(catalog_box)
        splitter.addWidget(local_box)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)
        layout.addWidget(splitter, 1)
        self.table.setMinimumHeight(120)
        self.local_table.setMinimumHeight(70)

    # -- machine ---------------------------------------------------------------------------

    @Slot(object)
    def _on_detect_succeeded(self, result: tuple[MachineProfile, tuple[str, ...]]) -> None:
        machine, unreachable = result
        self.machine = machine
        self.machine_label.setText(machine_summary(machine, unreachable))
        warnings = list(machine.notes)
        hint = machine.reinstall_hint()
        if machine.unusable_gpus and hint:
            names = ", ".join(g.name for g in machine.unusable_gpus)
            warnings.append(
                f"This engine build cannot use {names}. To use it, reinstall the engine:\n{hint}"
            )
        if warnings:
            self.warning_label.setText("\n".join(warnings))
            self.warning_label.show()
        families = sorted({m.family for m in self.catalog})
        for family in families:
            self.family_combo.addItem(family, family)
        self._replan()
        self.machine_ready.emit()

    @Slot(object)
    def _on_detect_failed(self, error: BaseException) -> None:
        reason = html.escape(user_message(error))
        self.machine_label.setText(f"This machine could not be examined: {reason}")
        self.recommendation.setText("No recommendation without a machine profile.")
        self.machine_ready.emit()

    # -- predictions -----------------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        return Settings(
            n_ctx=int(self.context_combo.currentData()), ram_limit=ram_limit(self.store)
        )

    @Slot()
    def _on_context_combo_changed(self) -> None:
        self.store.set_setting(CONTEXT_KEY, int(self.context_combo.currentData()))
        self._replan()

    def _replan(self) -> None:
        if self.machine is None:
            return
        settings = self.settings
        last = self.store.get_setting(RECOMMENDED_KEY)
        incumbent = (
            (str(last[0]), str(last[1])) if isinstance(last, list) and len(last) == 2 else None
        )
        self.candidates = rank(self.catalog, self.machine, settings, incumbent)
        best = recommend(self.catalog, self.machine, settings, incumbent)
        self.recommended = best[0] if best is not None else None
        if best is not None:
            self.store.set_setting(RECOMMENDED_KEY, [best[0].model.id, best[0].quant.quant])
        if best is None:
            self.recommendation.setText(
                "<b>No catalog model fits this machine.</b> Close other programs or pick a "
                "shorter context."
            )
        else:
            candidate, reason = best
            self.recommendation.setText(
                f"<b>Recommended:</b> {html.escape(reason)}<br>"
                f"{html.escape(candidate.model.description)} "
                f"{html.escape(candidate.plan.summary())}"
            )
        self._refill_table()
        self._refill_local()
        self.predictions_updated.emit()

    @Slot()
    def _refill_table(self) -> None:
        family = self.family_combo.currentData()
        rows = [
            c
            for c in self.candidates
            if (not family or c.model.family == family)
            and (not self.fits_only.isChecked() or c.plan.runs)
        ]
        self.table.setRowCount(len(rows))
        self._actions.clear()
        dark = self.palette().color(QPalette.ColorRole.Base).lightness() < 128
        highlight = QColor(self.palette().color(QPalette.ColorRole.Highlight))
        highlight.setAlpha(60)
        for row, candidate in enumerate(rows):
            p = candidate.plan
            recommended = candidate == self.recommended
            cells = (
                (RECOMMENDED_MARK if recommended else "") + candidate.model.display_name,
                candidate.quant.quant,
                _gb(candidate.model.size_estimate(candidate.quant)),
                p.verdict.value,
                f"{p.decode_tokens_per_s:.0f} tok/s" if p.runs else "–",
                _gb(p.gpu_bytes),
                _gb(p.ram_bytes),
                candidate.quant.repo,
            )
            tip = breakdown(p) + f"\n\n{candidate.model.description}"
            if recommended:
                tip = "Recommended for this machine.\n" + tip
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(tip)
                if column == 3:
                    item.setForeground(QColor(VERDICT_COLOURS[p.verdict][int(dark)]))
                if recommended:
                    font = item.font()
                    font.setBold(True)
                    item.setFont(font)
                    item.setBackground(highlight)
                self.table.setItem(row, column, item)
            self.table.setCellWidget(row, ACTION_COLUMN, self._action_cell(candidate))
        self._update_recommend_button()

    # -- downloads -------------------------------------------------------------------------

    def _installed(self, key: str) -> InstalledModel | None:
        return next(
            (m for m in self.library.installed() if catalog_key(m.catalog_id, m.quant) == key), None
        )

    def _action_cell(self, candidate: Candidate) -> QWidget:
        """Download / Pause / Resume / Load, and Cancel while a download exists."""
        key = catalog_key(candidate.model.id, candidate.quant.quant)
        cell = QWidget(self.table)
        row = QHBoxLayout(cell)
        row.setContentsMargins(2, 0, 2, 0)
        primary = QPushButton(cell)
        primary.setObjectName(f"action:{key}")
        cancel = QPushButton("Cancel", cell)
        primary.clicked.connect(lambda: self._on_action(candidate))
        cancel.clicked.connect(lambda: self._on_cancel(key))
        row.addWidget(primary)
        row.addWidget(cancel)
        self._actions[key] = (primary, cancel)
        self._update_action(key)
        return cell

    def _update_action(self, key: str) -> None:
        buttons = self._actions.get(key)
        if buttons is None:
            return
        primary, cancel = buttons
        try:
            text, loaded, event, installed = self._action_state(key)
            primary.setText(text)
            primary.setEnabled(not loaded)
            primary.setToolTip(event.message if event is not None else "")
            cancel.setVisible(event is not None and not installed)
        except RuntimeError:  # the row was rebuilt meanwhile
            self._actions.pop(key, None)
        if self.recommended is not None and key == self._recommended_key():
            self._update_recommend_button()

    def _action_state(self, key: str) -> tuple[str, bool, DownloadEvent | None, bool]:
        """(the button's text, whether it is the loaded model, its download, installed)."""
        event = self.downloads.for_key(key)
        model = self._installed(key)
        loaded = model is not None and model.path == self.loaded_path
        text = "Loaded" if loaded else action_text(event, model is not None)
        if event is not None and model is None and event.state != "failed":
            text += f" ({event.fraction:.0%})"
        return text, loaded, event, model is not None

    def _recommended_key(self) -> str:
        assert self.recommended is not None
        return catalog_key(self.recommended.model.id, self.recommended.quant.quant)

    def _update_recommend_button(self) -> None:
        """The recommendation's own button: the same action as its row's."""
        if self.recommended is None:
            self.recommend_button.hide()
            return
        text, loaded, _event, _installed = self._action_state(self._recommended_key())
        size = _gb(self.recommended.model.size_estimate(self.recommended.quant))
        verb = text.split(" (")[0]
        labels = {
            "Download": f"Download recommended ({size})",
            "Load": "Load recommended",
            "Loaded": "Recommended model loaded",
        }
        label = labels.get(verb, f"{text}: recommended")
        self.recommend_button.setText(label)
        self.recommend_button.setEnabled(not loaded)
        self.recommend_button.show()

    @Slot()
    def _on_recommend_button_clicked(self) -> None:
        if self.recommended is not None:
            self._on_action(self.recommended)

    def _on_action(self, candidate: Candidate) -> None:
        key = catalog_key(candidate.model.id, candidate.quant.quant)
        self.download_error.hide()
        installed = self._installed(key)
        event = self.downloads.for_key(key)
        if installed is not None:
            self._choose(installed.path)
        elif event is None:
            for button in (self._actions.get(key, (None,))[0], self.recommend_button):
                if button is not None and (button is not self.recommend_button
                                           or candidate == self.recommended):  # fmt: skip
                    button.setText("Asking the Hub…")
                    button.setEnabled(False)
            quant = candidate.quant
            self.downloads.start(
                key,
                quant.repo,
                list(quant.files),
                name=f"{candidate.model.display_name} {quant.quant}",
                catalog_id=candidate.model.id,
                quant=quant.quant,
            )
        elif event.state in ("paused", "failed"):
            self.downloads.downloader.resume(event.job_id)
        else:
            self.downloads.downloader.pause(event.job_id)

    def _on_cancel(self, key: str) -> None:
        event = self.downloads.for_key(key)
        if event is not None:
            self.downloads.downloader.cancel(event.job_id)

    @Slot(str, str)
    def _on_downloads_resolve_failed(self, key: str, message: str) -> None:
        self.download_error.setText(message)
        self.download_error.show()
        if key in self._actions:
            self._actions[key][0].setEnabled(True)
            self._update_action(key)
        self._update_recommend_button()

    @Slot(object)
    def _on_downloads_changed(self, event: DownloadEvent) -> None:
        key = self.downloads.keys.get(event.job_id)  # progress comes ten times a second
        for row_key in [key] if key in self._actions else list(self._actions):
            self._update_action(row_key)
        if event.state == "done":
            self._refill_local()
            self._select_path(event.model_path)

    # -- local models ----------------------------------------------------------------------

    def add_local(self, path: str, copy: bool = False) -> None:
        """Import a GGUF (checked by the header reader) off the GUI thread; ``imported`` tells
        when it is done, with the path to load or "" and the reason in ``local_error``."""
        self.local_error.setText("Copying…" if copy else "Checking…")
        self.open_button.setEnabled(False)

        def done(model: InstalledModel) -> None:
            self.open_button.setEnabled(True)
            self.local_error.clear()
            self._refill_local()
            self._select_path(model.path)
            self.imported.emit(model.path)

        def failed(error: BaseException) -> None:
            self.open_button.setEnabled(True)
            self.local_error.setText(user_message(error))
            self.imported.emit("")

        run_in_background(lambda: self.library.import_file(path, copy), done, self, failed)

    def _select_path(self, path: str) -> None:
        for row in range(self.local_table.rowCount()):
            item = self.local_table.item(row, 0)
            if item is not None and item.data(Qt.ItemDataRole.UserRole) == path:
                self.local_table.selectRow(row)
                return

    def _info(self, path: str) -> GGUFInfo:
        """The header of a local model, read once per file version (a re-plan re-reads none)."""
        stat = Path(path).stat() if Path(path).exists() else None
        key = (path, stat.st_mtime_ns if stat else 0, stat.st_size if stat else 0)
        if key not in self._headers:
            self._headers[key] = read_gguf(path)
        return self._headers[key]

    def _local_plan(self, path: str) -> Plan | None:
        if self.machine is None:
            return None
        return plan(ModelShape.from_gguf(self._info(path)), self.machine, self.settings)

    def _refill_local(self) -> None:
        models = self.library.installed()
        measured_all: dict[str, Any] = self.store.get_setting(MEASURED_KEY, {})
        self.local_table.setRowCount(len(models))
        for row, model in enumerate(models):
            path = model.path
            try:
                info = self._info(path)
                predicted = self._local_plan(path)
            except MoeChatError as exc:
                cells: tuple[str, ...] = (model.name, path, str(exc), "–", "–", "–")
                tip = str(exc)
            else:
                measured = measured_all.get(path, {})
                speed = measured.get("generation_tokens_per_s")
                cells = (
                    info.name + (" (loaded)" if path == self.loaded_path else ""),
                    path,
                    predicted.verdict.value if predicted else "…",
                    f"{predicted.decode_tokens_per_s:.0f} tok/s"
                    if predicted and predicted.runs
                    else "–",
                    f"{speed:.0f} tok/s" if speed else "not loaded yet",
                    _gb(info.file_size),
                )
                tip = (breakdown(predicted) if predicted else path) + (
                    f"\n\n{SOURCES.get(model.source, model.source)}"
                    + (f" from {model.repo} at {model.commit[:10]}" if model.repo else "")
                )
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(tip)
                item.setData(Qt.ItemDataRole.UserRole, path)
                if path == self.loaded_path:
                    font = item.font()
                    font.setBold(True)
                    item.setFont(font)
                self.local_table.setItem(row, column, item)

    def selected_path(self) -> str | None:
        rows = self.local_table.selectionModel().selectedRows()
        item = self.local_table.item(rows[0].row(), 0) if rows else None
        return str(item.data(Qt.ItemDataRole.UserRole)) if item is not None else None

    @Slot()
    def _on_local_table_selection_changed(self) -> None:
        path = self.selected_path()
        self.details.setText(self.comparison(path) if path else "")

    def comparison(self, path: str, dry: Any = None) -> str:
        """Predicted memory per device, beside the dry run's and the last real load's."""
        try:
            predicted = self._local_plan(path)
        except MoeChatError as exc:
            return str(exc)
        if predicted is None:
            return ""
        measured = self.store.get_setting(MEASURED_KEY, {}).get(path, {}).get("devices", {})
        lines = [f"{predicted.placement.label}, context {predicted.n_ctx}:"]
        for device in predicted.devices:
            if not device.total:
                continue
            line = f"{device.device}: predicted {_gb(device.total)}"
            if dry is not None:
                dry_bytes = (
                    device.weights
                    + (dry.kv_total if device.kv_cache else 0)
                    + sum(v for k, v in dry.compute_buffers.items() if k.startswith(device.device))
                )
                line += f", dry run {_gb(dry_bytes)}"
            if device.device in measured:
                line += f", measured {_gb(measured[device.device])} at the last load"
            lines.append(line)
        return "\n".join(lines)

    @Slot()
    def check_selected(self) -> None:
        """Run the engine's memory dry run for the selected model, off the GUI thread."""
        path = self.selected_path()
        predicted = self._local_plan(path) if path else None
        if path is None or predicted is None:
            self.local_error.setText("Select a model to check.")
            return
        from engine.dryrun import dry_run

        self.check_button.setEnabled(False)
        self.details.setText(self.comparison(path) + "\nAsking the engine…")

        def done(report: Any) -> None:
            self.check_button.setEnabled(True)
            self.details.setText(self.comparison(path, report))
            self.memory_checked.emit(path)

        def failed(error: BaseException) -> None:
            self.check_button.setEnabled(True)
            self.details.setText(
                self.comparison(path) + f"\nThe check failed: {user_message(error)}"
            )
            self.memory_checked.emit(path)

        placement = replace(predicted.placement, use_mmap=False)
        run_in_background(lambda: dry_run(path, placement, predicted.n_ctx), done, self, failed)

    @Slot()
    def _on_open_button_clicked(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Import a GGUF model", str(Path.home()), "GGUF models (*.gguf);;All files (*)"
        )
        if not path:
            return
        ask = QMessageBox(self)
        ask.setWindowTitle("Import a GGUF model")
        ask.setText(f"Copy {Path(path).name} into the models folder, or use it where it is?")
        ask.setInformativeText(
            f"Models folder: {self.library.models_dir}\nA file used in place is never deleted "
            "by MoE Chat; if you move it, import it again."
        )
        copy = ask.addButton("Copy", QMessageBox.ButtonRole.AcceptRole)
        in_place = ask.addButton("Use in place", QMessageBox.ButtonRole.AcceptRole)
        ask.addButton(QMessageBox.StandardButton.Cancel)
        ask.exec()
        if ask.clickedButton() in (copy, in_place):
            self.add_local(path, copy=ask.clickedButton() is copy)

    @Slot()
    def delete_selected(self) -> None:
        path = self.selected_path()
        model = self.library.find_path(path) if path else None
        if model is None:
            self.local_error.setText("Select a model to delete.")
            return
        if model.source == "linked":
            question = f"Remove {model.name} from this list? The file stays where it is."
        else:
            question = f"Delete {model.name} and free {_gb(model.size)}?"
        answer = QMessageBox.question(self, "Delete model", question)
        if answer == QMessageBox.StandardButton.Yes:
            self.library.remove(model.id)
            self._refill_local()
            for key in list(self._actions):
                self._update_action(key)

    @Slot()
    def open_settings(self) -> SettingsDialog:
        dialog = SettingsDialog(self.downloads, self, self.api, self.store)
        dialog.accepted.connect(self.downloads_panel.refresh_offline)
        dialog.accepted.connect(self._refill_local)
        dialog.open()
        return dialog

    def set_loaded(self, path: str | None) -> None:
        """Mark the model the chat window has loaded (None: none)."""
        self.loaded_path = path
        self._refill_local()
        for key in list(self._actions):
            self._update_action(key)
        self._update_recommend_button()

    @Slot(str)
    def _choose(self, path: str) -> None:
        self.model_chosen.emit(path)
        self.accept()

    @Slot()
    def load_selected(self) -> None:
        path = self.selected_path()
        if path is None:
            self.local_error.setText("Select a model to load, download one, or import a GGUF.")
            return
        self._choose(path)
