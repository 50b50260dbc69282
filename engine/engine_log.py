"""The native engine's log: forwarded to Python logging, captured around loads, and parsed.

llama.cpp reports where it put bytes ("CPU_Mapped model buffer size = 92.10 MiB") and why a
load failed only through its log callback, so the session captures the lines of each load.
"""

from __future__ import annotations

import ctypes
import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

logger = logging.getLogger("moe_chat.engine.native")

# enum ggml_log_level in the pinned ggml.h: 0 none, 1 debug, 2 info, 3 warn, 4 error,
# 5 continuation of the previous piece.
# (llama-cpp-python's own _logger.py still documents an older order.)
LOG_WARN, LOG_ERROR, LOG_CONT = 3, 4, 5
_LEVELS = {
    0: logging.DEBUG,
    1: logging.DEBUG,
    2: logging.INFO,
    3: logging.WARNING,
    4: logging.ERROR,
}

_lock = threading.Lock()
_captures: list[list[tuple[int, str]]] = []
_callback: Any = None  # keeps the ctypes callback alive for the life of the process
_last_level = 2


def install(bindings: ModuleType) -> None:
    """Route the engine's log (llama and ggml) through this module. Idempotent."""
    global _callback
    if _callback is not None:
        return

    @bindings.llama_log_callback  # type: ignore[untyped-decorator]
    def _on_log(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
        global _last_level
        if level == LOG_CONT:
            level = _last_level
        _last_level = level
        line = text.decode("utf-8", errors="replace")
        with _lock:
            for capture in _captures:
                capture.append((level, line))
        if line.strip():
            logger.log(_LEVELS.get(level, logging.DEBUG), "%s", line.rstrip())

    _callback = _on_log
    bindings.llama_log_set(_callback, ctypes.c_void_p(0))


@contextmanager
def capture() -> Iterator[list[tuple[int, str]]]:
    """Collect ``(level, text)`` log pieces emitted while the block runs (any thread)."""
    lines: list[tuple[int, str]] = []
    with _lock:
        _captures.append(lines)
    try:
        yield lines
    finally:
        with _lock:
            _captures.remove(lines)


_MODEL_BUFFER = re.compile(r"load_tensors:\s+(.+?) model buffer size =\s+([\d.]+) MiB")
_KV_BUFFER = re.compile(r"llama_kv_cache:\s+(.+?) KV buffer size =\s+([\d.]+) MiB")
_KV_TOTAL = re.compile(r"llama_kv_cache: size =\s+([\d.]+) MiB")
_RS_BUFFER = re.compile(r"llama_memory_recurrent:\s+(.+?) RS buffer size =\s+([\d.]+) MiB")
_RS_TOTAL = re.compile(r"llama_memory_recurrent: size =\s+([\d.]+) MiB")
_COMPUTE_BUFFER = re.compile(r"sched_reserve:\s+(.+?) compute buffer size =\s+([\d.]+) MiB")
_MIB = 1024 * 1024


@dataclass
class LoadReport:
    """Bytes the engine says it placed, per buffer name (``CPU_Mapped``, ``CUDA0``, ``RPC0[…]``)."""

    model_buffers: dict[str, int] = field(default_factory=dict)
    kv_buffers: dict[str, int] = field(default_factory=dict)
    compute_buffers: dict[str, int] = field(default_factory=dict)
    recurrent_buffers: dict[str, int] = field(default_factory=dict)  # Mamba/conv state
    kv_total: int = 0  # all devices together; the only KV figure a dry run reports
    recurrent_total: int = 0  # likewise for recurrent state
    errors: list[str] = field(default_factory=list)

    def device_totals(self) -> dict[str, int]:
        """Weights, KV cache and compute buffers together, per device."""
        totals: dict[str, int] = {}
        for buffers in (
            self.model_buffers,
            self.kv_buffers,
            self.compute_buffers,
            self.recurrent_buffers,
        ):
            for device, size in per_device(buffers).items():
                totals[device] = totals.get(device, 0) + size
        return totals


def buffer_device(buffer_name: str) -> str:
    """The device whose memory a buffer occupies: ``CUDA0`` for ``CUDA0``, a worker's
    ``RPC0[127.0.0.1:50052]`` for itself, and ``CPU`` for host buffers (``CPU_Mapped``,
    ``CPU_REPACK``, and ``CUDA_Host``, the GPU backend's pinned buffer in system RAM)."""
    if buffer_name.startswith("CPU") or buffer_name.endswith("_Host"):
        return "CPU"
    if buffer_name.startswith("RPC"):  # named like the device (engine.devices)
        return buffer_name
    return buffer_name.split("[")[0]


def per_device(buffers: dict[str, int]) -> dict[str, int]:
    """Buffer sizes summed by the device they occupy."""
    totals: dict[str, int] = {}
    for name, size in buffers.items():
        device = buffer_device(name)
        totals[device] = totals.get(device, 0) + size
    return totals


def parse_load_log(lines: list[tuple[int, str]]) -> LoadReport:
    """Turn captured log lines into a LoadReport. Sizes are as precise as the log (0.01 MiB)."""
    report = LoadReport()
    text = "".join(piece for _, piece in lines)
    for pattern, target in (
        (_MODEL_BUFFER, report.model_buffers),
        (_KV_BUFFER, report.kv_buffers),
        (_COMPUTE_BUFFER, report.compute_buffers),
        (_RS_BUFFER, report.recurrent_buffers),
    ):
        for match in pattern.finditer(text):
            name = match.group(1).strip()
            target[name] = target.get(name, 0) + round(float(match.group(2)) * _MIB)
    report.kv_total = sum(round(float(m.group(1)) * _MIB) for m in _KV_TOTAL.finditer(text))
    report.recurrent_total = sum(round(float(m.group(1)) * _MIB) for m in _RS_TOTAL.finditer(text))
    report.errors = [
        piece.strip() for level, piece in lines if level == LOG_ERROR and piece.strip()
    ]
    return report
