"""How the loaded model samples its replies: each setting, with the model's defaults."""

from __future__ import annotations

from PySide6.QtCore import Slot
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from engine.session import SamplingSettings

SAMPLING_KEY = "sampling"  # settings: model file name -> the fields changed from its defaults


class SamplingDialog(QDialog):
    """Edit the sampling of one model; ``settings()`` is what the dialog shows."""

    def __init__(
        self,
        model_name: str,
        defaults: SamplingSettings,
        source: str,
        current: SamplingSettings,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.defaults = defaults
        self.setWindowTitle("Sampling settings")
        layout = QVBoxLayout(self)
        intro = QLabel(
            f"How {model_name} picks each word of a reply. Kept for this model. "
            f"Its defaults: {source}.",
            self,
        )
        intro.setWordWrap(True)
        layout.addWidget(intro)
        form = QFormLayout()

        def number(low: float, high: float, step: float, name: str, tip: str) -> QDoubleSpinBox:
            box = QDoubleSpinBox(self)
            box.setRange(low, high)
            box.setSingleStep(step)
            box.setDecimals(2)
            box.setAccessibleName(name)
            box.setToolTip(tip)
            form.addRow(name, box)
            return box

        def whole(low: int, high: int, name: str, tip: str) -> QSpinBox:
            box = QSpinBox(self)
            box.setRange(low, high)
            box.setAccessibleName(name)
            box.setToolTip(tip)
            form.addRow(name, box)
            return box

        self.temperature = number(
            0.0, 2.0, 0.05, "Temperature", "Higher is more varied; 0 always picks the likeliest"
        )
        self.top_p = number(0.0, 1.0, 0.01, "Top-p", "Pick only among the likeliest words that "
                            "together have this probability (1: off)")  # fmt: skip
        self.top_k = whole(0, 1000, "Top-k", "Pick only among this many likeliest words (0: off)")
        self.min_p = number(0.0, 1.0, 0.01, "Min-p", "Leave out words less likely than this "
                            "share of the likeliest (0: off)")  # fmt: skip
        self.repeat_penalty = number(1.0, 2.0, 0.01, "Repeat penalty",
                                     "Above 1 makes recent words less likely (1: off)")  # fmt: skip
        self.max_tokens = whole(16, 262_144, "Max tokens", "The longest a reply may be")
        self.seed = whole(-1, 2**31 - 1, "Seed", "The same seed gives the same reply")
        self.seed.setSpecialValueText("random")
        layout.addLayout(form)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok
            | QDialogButtonBox.StandardButton.Cancel
            | QDialogButtonBox.StandardButton.RestoreDefaults,
            self,
        )
        self.reset_button = buttons.button(QDialogButtonBox.StandardButton.RestoreDefaults)
        self.reset_button.setText("Model's defaults")
        self.reset_button.clicked.connect(self._on_reset_button_clicked)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        self.buttons = buttons
        layout.addWidget(buttons)
        self._show(current)

    def _show(self, sampling: SamplingSettings) -> None:
        self.temperature.setValue(sampling.temperature)
        self.top_p.setValue(sampling.top_p)
        self.top_k.setValue(sampling.top_k)
        self.min_p.setValue(sampling.min_p)
        self.repeat_penalty.setValue(sampling.repeat_penalty)
        self.max_tokens.setValue(sampling.max_tokens)
        self.seed.setValue(sampling.seed)

    @Slot()
    def _on_reset_button_clicked(self) -> None:
        self._show(self.defaults)

    def settings(self) -> SamplingSettings:
        return self.defaults.updated(
            {
                "temperature": self.temperature.value(),
                "top_p": self.top_p.value(),
                "top_k": self.top_k.value(),
                "min_p": self.min_p.value(),
                "repeat_penalty": self.repeat_penalty.value(),
                "max_tokens": self.max_tokens.value(),
                "seed": self.seed.value(),
            }
        )
