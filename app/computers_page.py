"""Settings → Computers: other computers (``moe-chat worker``) whose GPU or RAM a model may use.

Add ``host:port``, Test it (devices, memory, round trip, transfer rate), tick whether models
may use it. Every change is remembered at once; checks run in the background and an
unreachable computer is only shown as such.
"""

from __future__ import annotations

import html
from dataclasses import replace

from PySide6.QtCore import QEvent, QObject, Qt, QTimer, Signal, Slot
from PySide6.QtGui import QKeyEvent
from PySide6.QtWidgets import (
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.background import run_in_background
from engine.computers import (
    RAM_LIMIT_KEY,
    Computer,
    Status,
    check,
    load_computers,
    ram_limit,
    save_computers,
)
from engine.errors import user_message
from engine.rpc import DEFAULT_PORT, WorkerError, WorkerReport, check_worker, parse_endpoint
from engine.store import Store
from engine.units import format_bytes

SECURITY_NOTE = (
    "On the other computer run <code>moe-chat worker --host ITS-ADDRESS</code>; it prints the "
    "address to add here. The RPC protocol has no password and no encryption: anyone who can "
    "reach a worker can use that computer's memory. Use it only on a network you trust."
)


class ComputersPage(QWidget):
    """The list of computers with Add, Test and Remove."""

    tested = Signal(str)  # endpoint, after a Test finished (with a result or an error)
    checked = Signal()  # after the background check of every computer

    def __init__(self, store: Store, busy: tuple[str, ...] = (), parent: QWidget | None = None):
        super().__init__(parent)
        self.store = store
        self.busy = busy  # in use by the loaded model: its worker serves one client at a time
        self.computers = load_computers(store)
        self.status: dict[str, str] = {}
        layout = QVBoxLayout(self)
        intro = QLabel(
            "A model too big for this computer can use another computer's GPU or RAM "
            "through llama.cpp's RPC backend. " + SECURITY_NOTE,
            self,
        )
        intro.setWordWrap(True)
        intro.setTextFormat(Qt.TextFormat.RichText)
        layout.addWidget(intro)

        add_row = QHBoxLayout()
        self.address = QLineEdit(self)
        self.address.setPlaceholderText(f"192.168.1.20:{DEFAULT_PORT}")
        self.address.setAccessibleName("Computer address")
        self.address.installEventFilter(self)  # Return adds; it must not also press Save
        self.add_button = QPushButton("Add", self)
        self.add_button.clicked.connect(self.add)
        add_row.addWidget(self.address, 1)
        add_row.addWidget(self.add_button)
        layout.addLayout(add_row)

        self.list = QListWidget(self)
        self.list.setAccessibleName("Computers")
        self.list.itemChanged.connect(self._on_item_changed)
        self.list.currentRowChanged.connect(self._on_current_row_changed)
        layout.addWidget(self.list, 1)

        buttons = QHBoxLayout()
        self.test_button = QPushButton("Test", self)
        self.test_button.setToolTip("Ask it for its devices and measure the link")
        self.test_button.clicked.connect(self.test_selected)
        self.remove_button = QPushButton("Remove", self)
        self.remove_button.clicked.connect(self.remove_selected)
        buttons.addWidget(self.test_button)
        buttons.addWidget(self.remove_button)
        buttons.addStretch(1)
        layout.addLayout(buttons)

        limit_row = QHBoxLayout()
        self.ram_limit = QDoubleSpinBox(self)
        self.ram_limit.setRange(0, 4096)
        self.ram_limit.setDecimals(1)
        self.ram_limit.setSuffix(" GB")
        self.ram_limit.setSpecialValueText("no limit")
        self.ram_limit.setAccessibleName("RAM limit for a model")
        self.ram_limit.setValue((ram_limit(store) or 0) / 1e9)
        self.ram_limit.valueChanged.connect(self._on_ram_limit_changed)
        limit_row.addWidget(QLabel("Use at most", self))
        limit_row.addWidget(self.ram_limit)
        limit_row.addWidget(QLabel("of this computer's RAM for a model", self), 1)
        layout.addLayout(limit_row)
        self.ram_limit.setToolTip(
            "The rest of a model goes to the ticked computers above, when it fits there"
        )

        self.details = QLabel(self)
        self.details.setWordWrap(True)
        self.details.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.details.setAccessibleName("Test result")
        layout.addWidget(self.details)
        self._fill()
        self._check_all()

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if (
            watched is self.address
            and event.type() == QEvent.Type.KeyPress
            and isinstance(event, QKeyEvent)
            and event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter)
            and self.address.text().strip()
        ):
            self.add()
            return True  # the dialog's default button (Save) would close it
        return super().eventFilter(watched, event)

    # -- list ------------------------------------------------------------------------------

    def _fill(self, select: str | None = None) -> None:
        self.list.blockSignals(True)
        self.list.clear()
        for computer in self.computers:
            item = QListWidgetItem(self._line(computer), self.list)
            item.setData(Qt.ItemDataRole.UserRole, computer.endpoint)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if computer.enabled else
                               Qt.CheckState.Unchecked)  # fmt: skip
            item.setToolTip("Ticked: models may use it")
            if computer.endpoint == select:
                self.list.setCurrentItem(item)
        self.list.blockSignals(False)
        self._update_buttons()

    def _line(self, computer: Computer) -> str:
        status = self.status.get(computer.endpoint, "checking…")
        if computer.endpoint in self.busy:
            status = "in use by the loaded model"
        devices = "; ".join(
            f"{d.description or d.name} ({'RAM' if d.kind == 'CPU' else d.kind}, "
            f"{format_bytes(d.memory_free or 0)})"
            for d in computer.devices
        )
        link = ""
        measured = next((d for d in computer.devices if d.latency_s is not None), None)
        if measured is not None and measured.latency_s is not None:
            rate = format_bytes(int(measured.transfer_bps or 0))
            link = f" · {measured.latency_s * 1000:.2f} ms, {rate}/s"
        elif not computer.tested:
            link = " · not tested yet"
        return f"{computer.endpoint} — {status}" + (f" — {devices}" if devices else "") + link

    def _selected(self) -> Computer | None:
        item = self.list.currentItem()
        if item is None:
            return None
        endpoint = item.data(Qt.ItemDataRole.UserRole)
        return next((c for c in self.computers if c.endpoint == endpoint), None)

    def _replace(self, computer: Computer) -> None:
        self.computers = [computer if c.endpoint == computer.endpoint else c
                          for c in self.computers]  # fmt: skip
        save_computers(self.store, self.computers)
        self._fill(select=self._selected_endpoint())

    def _selected_endpoint(self) -> str | None:
        selected = self._selected()
        return selected.endpoint if selected is not None else None

    def _update_buttons(self) -> None:
        selected = self._selected()
        self.test_button.setEnabled(selected is not None and selected.endpoint not in self.busy)
        self.remove_button.setEnabled(selected is not None)

    @Slot(int)
    def _on_current_row_changed(self, _row: int) -> None:
        self._update_buttons()
        self.details.clear()

    @Slot(QListWidgetItem)
    def _on_item_changed(self, item: QListWidgetItem) -> None:
        endpoint = item.data(Qt.ItemDataRole.UserRole)
        enabled = item.checkState() == Qt.CheckState.Checked
        computer = next((c for c in self.computers if c.endpoint == endpoint), None)
        if computer is not None and computer.enabled != enabled:
            self.computers = [replace(c, enabled=enabled) if c is computer else c
                              for c in self.computers]  # fmt: skip
            save_computers(self.store, self.computers)

    @Slot(float)
    def _on_ram_limit_changed(self, value: float) -> None:
        self.store.set_setting(RAM_LIMIT_KEY, int(value * 1e9) if value > 0 else None)

    # -- actions ---------------------------------------------------------------------------

    @Slot()
    def add(self) -> None:
        try:
            endpoint = str(parse_endpoint(self.address.text()))
        except WorkerError as exc:
            self.details.setText(html.escape(str(exc)))
            return
        if any(c.endpoint == endpoint for c in self.computers):
            self.details.setText(f"{endpoint} is in the list already.")
            return
        self.computers.append(Computer(endpoint))
        save_computers(self.store, self.computers)
        self.address.clear()
        self._fill(select=endpoint)
        self.test_selected()

    @Slot()
    def remove_selected(self) -> None:
        selected = self._selected()
        if selected is None:
            return
        self.computers = [c for c in self.computers if c.endpoint != selected.endpoint]
        save_computers(self.store, self.computers)
        self.details.setText(f"{selected.endpoint} removed.")
        self._fill()

    @Slot()
    def test_selected(self) -> None:
        selected = self._selected()
        if selected is None or selected.endpoint in self.busy:
            return
        endpoint = selected.endpoint
        self.status[endpoint] = "testing…"
        self._fill(select=endpoint)
        self.test_button.setEnabled(False)
        self.details.setText(f"Testing {endpoint}: its devices, then 8 MiB each way…")

        def done(report: WorkerReport) -> None:
            self.status[endpoint] = "up"
            computer = next((c for c in self.computers if c.endpoint == endpoint), None)
            if computer is not None:
                self._replace(computer.with_report(report))
            self.details.setText(html.escape(report.summary()).replace("\n", "<br>"))
            self.tested.emit(endpoint)

        def failed(error: BaseException) -> None:
            self.status[endpoint] = "unreachable"
            self._fill(select=endpoint)
            self.details.setText(html.escape(user_message(error)))
            self.tested.emit(endpoint)

        run_in_background(lambda: check_worker(endpoint), done, self, failed)

    def _check_all(self) -> None:
        computers = list(self.computers)
        if not computers:  # after the caller could connect to it, as with a real check
            QTimer.singleShot(0, self.checked.emit)
            return

        def done(statuses: list[Status]) -> None:
            fresh = {s.computer.endpoint: s.computer for s in statuses if s.reachable}
            self.computers = [fresh.get(c.endpoint, c) for c in self.computers]
            for status in statuses:
                self.status[status.computer.endpoint] = status.message
            self._fill(select=self._selected_endpoint())
            self.checked.emit()

        run_in_background(lambda: [check(c) for c in computers], done, self)
