"""What the About box and ``--self-test`` say about the engine build."""

from __future__ import annotations

from engine.devices import EngineBuild, engine_build, parse_cpu_instruction_sets


def test_cpu_instruction_sets_come_from_the_cpu_section_only() -> None:
    info = (
        "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | AVX512 = 0 | OPENMP = 1 | REPACK = 1 | "
        "CUDA : ARCHS = 900 | USE_GRAPHS = 1 | PEER_MAX_BATCH_SIZE = 128 | "
    )
    assert parse_cpu_instruction_sets(info) == ("SSE3", "AVX", "AVX2")


def test_accelerator_is_the_gpu_backend_not_rpc() -> None:
    cpu = EngineBuild("0.3.36", ("RPC", "CPU"), ("AVX2",))
    cuda = EngineBuild("0.3.36", ("CUDA", "CPU"), ("AVX2",))
    assert cpu.accelerator is None and "CPU-only build" in cpu.describe()
    assert cuda.accelerator == "CUDA" and "CUDA build" in cuda.describe()


def test_the_loaded_engine_describes_itself() -> None:
    build = engine_build()
    assert build.version == "0.3.36"
    assert "CPU" in build.backends
    assert build.cpu_instruction_sets  # x86 (SSE3, AVX…) or ARM (NEON…)
    assert build.describe().startswith("llama.cpp via llama-cpp-python 0.3.36: ")
