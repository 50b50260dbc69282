"""engine/engine_log.py: which device a buffer of the engine's log occupies."""

from __future__ import annotations

from engine.engine_log import per_device


def test_buffers_are_counted_on_the_device_whose_memory_they_use() -> None:
    buffers = {
        "CPU_Mapped": 1,
        "CPU_REPACK": 2,
        "CUDA_Host": 4,  # pinned, but in system RAM
        "CUDA0": 8,
        "RPC0[127.0.0.1:50052]": 16,
    }
    assert per_device(buffers) == {"CPU": 7, "CUDA0": 8, "RPC0[127.0.0.1:50052]": 16}
