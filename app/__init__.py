"""MoE Chat's PySide6 GUI: windows and workers that turn clicks into engine calls."""
