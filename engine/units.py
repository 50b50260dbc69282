"""Sizes and durations as people read them: one convention for every message and window.

Decimal units (1 GB = 10^9 bytes), as disks, the Hub and download sizes are quoted.
"""

from __future__ import annotations


def format_bytes(n: float) -> str:
    """``18.6 GB``, ``840 MB``, ``12 KB``, ``512 B``; 100 GB and more without a decimal."""
    if n >= 100e9:
        return f"{n / 1e9:.0f} GB"
    if n >= 1e9:
        return f"{n / 1e9:.1f} GB"
    if n >= 1e6:
        return f"{n / 1e6:.0f} MB"
    if n >= 1e3:
        return f"{n / 1e3:.0f} KB"
    return f"{n:.0f} B"


def format_duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``2.5 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
