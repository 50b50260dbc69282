"""engine/native.py: loading the engine after numpy keeps the C++ runtime authoritative."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF symbol scopes")
def test_cxx_runtime_is_global_even_when_numpy_loaded_it_first() -> None:
    # On a CUDA build, libllama otherwise binds std::ostream calls to libggml-cuda's private
    # copies and segfaults while loading any model (seen on an H100). CPU builds do not crash,
    # so the test checks the cause: libstdc++ must be in the global symbol scope.
    code = (
        "import ctypes, numpy\n"
        "from engine.native import llama_cpp\n"
        "llama_cpp()\n"
        "print(hasattr(ctypes.CDLL(None), '_ZNSt8ios_base4InitC1Ev'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[2],
        timeout=120,
    )
    assert result.stdout.strip() == "True", result.stderr[-2000:]


def test_ggml_functions_are_found_in_ggml_when_libllama_does_not_export_them() -> None:
    """Windows DLLs do not re-export their dependencies' symbols; libm stands in for that."""
    import ctypes.util
    from types import SimpleNamespace

    from engine.native import _EngineLibraries, llama_cpp

    bindings = llama_cpp()
    libm = ctypes.CDLL(ctypes.util.find_library("m"))
    libs = _EngineLibraries(SimpleNamespace(_lib=libm, _base_path=bindings._base_path))  # type: ignore[arg-type]
    assert libs.ggml_backend_dev_count is not None
    assert libs.ggml_get_name is not None
