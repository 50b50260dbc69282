"""The conversations on the side: new, search over every message, rename, delete."""

from __future__ import annotations

import html

from PySide6.QtCore import Qt, QTimer, Signal, Slot
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from engine.store import MATCH_END, MATCH_START, Store

RUNNING_MARK = "● "  # before the title of the conversation a reply is being written in
SEARCH_DELAY_MS = 150


class Sidebar(QWidget):
    """Lists the store's conversations; says which one the user picked, never changes data
    itself (the window does, through the store)."""

    conversation_chosen = Signal(int)
    message_found = Signal(int, int)  # conversation, message
    new_requested = Signal()
    rename_requested = Signal()
    delete_requested = Signal()

    def __init__(self, store: Store, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.store = store
        self.running: int | None = None  # the conversation a reply is being written in
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 8, 4, 8)
        self.new_button = QPushButton("New chat", self)
        self.new_button.setAccessibleName("New chat")
        self.new_button.clicked.connect(self.new_requested)
        layout.addWidget(self.new_button)
        self.search = QLineEdit(self)
        self.search.setPlaceholderText("Search all chats (Ctrl+F)")
        self.search.setAccessibleName("Search all chats")
        self.search.setClearButtonEnabled(True)
        self.search.textChanged.connect(self._on_search_text_changed)
        self.search.returnPressed.connect(self._on_search_return_pressed)
        layout.addWidget(self.search)
        self.conversation_list = QListWidget(self)
        self.conversation_list.setAccessibleName("Chats")
        self.conversation_list.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.conversation_list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.conversation_list.setUniformItemSizes(True)
        self.conversation_list.currentItemChanged.connect(self._on_conversation_list_changed)
        self.conversation_list.itemDoubleClicked.connect(lambda _item: self.rename_requested.emit())
        layout.addWidget(self.conversation_list, 1)
        self.results = QListWidget(self)
        self.results.setAccessibleName("Search results")
        self.results.setWordWrap(True)
        self.results.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.results.itemActivated.connect(self._on_result_activated)
        self.results.itemClicked.connect(self._on_result_activated)
        self.results.hide()
        layout.addWidget(self.results, 1)
        self.no_results = QLabel("No message matches.", self)
        self.no_results.setObjectName("hintLabel")
        self.no_results.hide()
        layout.addWidget(self.no_results)
        row = QHBoxLayout()
        self.rename_button = QPushButton("Rename", self)
        self.rename_button.setAccessibleName("Rename chat")
        self.rename_button.setToolTip("Rename this chat (F2)")
        self.rename_button.clicked.connect(self.rename_requested)
        self.delete_button = QPushButton("Delete", self)
        self.delete_button.setAccessibleName("Delete chat")
        self.delete_button.setToolTip("Delete this chat (Del in the list)")
        self.delete_button.clicked.connect(self.delete_requested)
        row.addWidget(self.rename_button)
        row.addWidget(self.delete_button)
        layout.addLayout(row)
        delete = QShortcut(QKeySequence.StandardKey.Delete, self.conversation_list)
        delete.setContext(Qt.ShortcutContext.WidgetShortcut)
        delete.activated.connect(self.delete_requested)
        self._search_timer = QTimer(self)
        self._search_timer.setSingleShot(True)
        self._search_timer.setInterval(SEARCH_DELAY_MS)
        self._search_timer.timeout.connect(self.run_search)
        self.setTabOrder(self.new_button, self.search)
        self.setTabOrder(self.search, self.conversation_list)
        self.setTabOrder(self.conversation_list, self.results)
        self.setTabOrder(self.results, self.rename_button)
        self.setTabOrder(self.rename_button, self.delete_button)

    # -- the list --------------------------------------------------------------------------

    def refresh(self, select: int | None) -> None:
        """List the conversations again, ``select`` current (no signal for it)."""
        self.conversation_list.blockSignals(True)
        self.conversation_list.clear()
        current = None
        for conversation in self.store.conversations():
            running = conversation.id == self.running
            item = QListWidgetItem((RUNNING_MARK if running else "") + conversation.title)
            item.setData(Qt.ItemDataRole.UserRole, conversation.id)
            tip = conversation.title + ("\nA reply is being written." if running else "")
            item.setToolTip(tip)
            self.conversation_list.addItem(item)
            if conversation.id == select:
                current = item
        if current is not None:
            self.conversation_list.setCurrentItem(current)
        self.conversation_list.blockSignals(False)

    @Slot(QListWidgetItem, QListWidgetItem)
    def _on_conversation_list_changed(
        self, item: QListWidgetItem | None, _previous: object
    ) -> None:
        if item is not None:
            self.conversation_chosen.emit(int(item.data(Qt.ItemDataRole.UserRole)))

    # -- search ----------------------------------------------------------------------------

    def start_search(self) -> None:
        self.search.setFocus()
        self.search.selectAll()

    @Slot(str)
    def _on_search_text_changed(self, text: str) -> None:
        if text.strip():
            self._search_timer.start()
        else:
            self._search_timer.stop()
            self.run_search()

    @Slot()
    def run_search(self) -> None:
        """Show the messages matching the search box (the list of chats when it is empty)."""
        query = self.search.text().strip()
        searching = bool(query)
        self.results.clear()
        if searching:
            for hit in self.store.search(query):
                snippet = " ".join(hit.snippet.split())
                snippet = snippet.replace(MATCH_START, "«").replace(MATCH_END, "»")
                who = "You" if hit.role == "user" else "Reply"
                item = QListWidgetItem(f"{hit.title}\n{who}: {snippet}")
                item.setData(Qt.ItemDataRole.UserRole, (hit.conversation_id, hit.message_id))
                item.setToolTip(html.escape(hit.title))
                self.results.addItem(item)
        self.conversation_list.setVisible(not searching)
        self.results.setVisible(searching)
        self.no_results.setVisible(searching and self.results.count() == 0)

    @Slot()
    def _on_search_return_pressed(self) -> None:
        self._search_timer.stop()
        self.run_search()
        if self.results.count():
            self.results.setFocus()
            self.results.setCurrentRow(0)

    @Slot(QListWidgetItem)
    def _on_result_activated(self, item: QListWidgetItem) -> None:
        conversation_id, message_id = item.data(Qt.ItemDataRole.UserRole)
        self.message_found.emit(int(conversation_id), int(message_id))

    def clear_search(self) -> None:
        self.search.clear()
