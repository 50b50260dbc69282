"""A conversation's system prompt, with saved presets to start from."""

from __future__ import annotations

from PySide6.QtCore import Slot
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from engine.store import Store


class SystemPromptDialog(QDialog):
    """Edit one conversation's system prompt; on OK it is saved to the store."""

    def __init__(self, store: Store, conversation_id: int, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.store = store
        self.conversation_id = conversation_id
        self.setWindowTitle("System prompt")
        self.resize(560, 380)
        layout = QVBoxLayout(self)
        hint = QLabel(
            "Instructions the model reads before this chat: a role, a tone, rules. They apply "
            "to the next reply on.",
            self,
        )
        hint.setWordWrap(True)
        layout.addWidget(hint)
        row = QHBoxLayout()
        self.presets = QComboBox(self)
        self.presets.setAccessibleName("Presets")
        self.presets.activated.connect(self._on_presets_activated)
        self.save_button = QPushButton("Save as preset…", self)
        self.save_button.clicked.connect(self._on_save_button_clicked)
        self.delete_button = QPushButton("Delete preset", self)
        self.delete_button.clicked.connect(self._on_delete_button_clicked)
        row.addWidget(self.presets, 1)
        row.addWidget(self.save_button)
        row.addWidget(self.delete_button)
        layout.addLayout(row)
        self.text = QPlainTextEdit(self)
        self.text.setAccessibleName("System prompt")
        self.text.setTabChangesFocus(True)
        self.text.setPlaceholderText("For example: You are a concise assistant. Answer in French.")
        self.text.setPlainText(store.conversation(conversation_id).system_prompt)
        layout.addWidget(self.text, 1)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel, self
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self._fill_presets()
        self.text.setFocus()

    def _fill_presets(self, select: str | None = None) -> None:
        self.presets.clear()
        self.presets.addItem("Presets…", None)
        for preset in self.store.presets():
            self.presets.addItem(preset.name, preset.id)
            if preset.name == select:
                self.presets.setCurrentIndex(self.presets.count() - 1)
        self.delete_button.setEnabled(self.presets.currentData() is not None)

    @Slot(int)
    def _on_presets_activated(self, index: int) -> None:
        preset_id = self.presets.itemData(index)
        self.delete_button.setEnabled(preset_id is not None)
        for preset in self.store.presets():
            if preset.id == preset_id:
                self.text.setPlainText(preset.system_prompt)

    @Slot()
    def _on_save_button_clicked(self) -> None:
        current = self.presets.currentText() if self.presets.currentData() is not None else ""
        name, ok = QInputDialog.getText(self, "Save preset", "Name:", text=current)
        if ok and name.strip():
            preset = self.store.save_preset(name, self.text.toPlainText())
            self._fill_presets(select=preset.name)

    @Slot()
    def _on_delete_button_clicked(self) -> None:
        preset_id = self.presets.currentData()
        if preset_id is not None:
            self.store.delete_preset(int(preset_id))
            self._fill_presets()

    def accept(self) -> None:
        self.store.set_system_prompt(self.conversation_id, self.text.toPlainText())
        super().accept()
