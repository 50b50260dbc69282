"""engine/units.py: one way to write a size."""

from __future__ import annotations

from engine.units import format_bytes, format_duration


def test_sizes_read_as_people_read_them() -> None:
    assert [format_bytes(n) for n in (0, 512, 12_300, 840e6, 18.56e9, 120.4e9)] == [
        "0 B", "512 B", "12 KB", "840 MB", "18.6 GB", "120 GB"
    ]  # fmt: skip


def test_durations_read_as_people_read_them() -> None:
    assert [format_duration(s) for s in (5, 89, 600, 5400, 9000)] == [
        "5 s", "89 s", "10 min", "1.5 h", "2.5 h"
    ]  # fmt: skip
