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
