"""Lazy access to the native engine (llama-cpp-python) and the ggml symbols it does not bind.

Importing llama_cpp loads several shared libraries, so it happens on first use, not at app
start; a broken install then becomes an EngineUnavailableError instead of a crash at import.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
import threading
from types import ModuleType
from typing import Any

from engine.errors import EngineUnavailableError

_lock = threading.Lock()
_module: ModuleType | None = None
_ggml: Any = None


def llama_cpp() -> ModuleType:
    """The ``llama_cpp.llama_cpp`` low-level bindings, with the backend initialised once."""
    global _module
    with _lock:
        if _module is None:
            _promote_libstdcxx()
            try:
                from llama_cpp import llama_cpp as bindings
            except Exception as exc:  # OSError from dlopen, ImportError, RuntimeError
                raise EngineUnavailableError(
                    f"The inference engine (llama-cpp-python) could not be loaded: {exc}.",
                    "Reinstall it with: pip install --force-reinstall --no-cache-dir "
                    "llama-cpp-python==0.3.36",
                ) from exc
            from engine import engine_log

            engine_log.install(bindings)
            bindings.llama_backend_init()
            _module = bindings
        return _module


def _promote_libstdcxx() -> None:
    """Put the system C++ runtime in the global symbol scope before the engine loads.

    llama-cpp-python loads its libraries RTLD_GLOBAL. A CUDA build's libggml-cuda carries
    its own copies of C++ stream templates; if libstdc++ is only in a local scope (numpy
    loaded it first, as reading a GGUF header does), libllama binds its ``std::ostream``
    calls to those copies and crashes in ``codecvt`` while printing the model summary
    (seen on an H100 with a CUDA 13 build). Promoting libstdc++ first keeps it authoritative.
    """
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError):
        ctypes.CDLL("libstdc++.so.6", mode=ctypes.RTLD_GLOBAL)


class _EngineLibraries:
    """ggml's functions, looked up in libllama first, then in libggml and libggml-base.

    On Linux and macOS libllama's handle also finds the symbols of the libraries it links
    to; a Windows DLL does not re-export them, so there they come from ggml(-base).dll.
    """

    def __init__(self, bindings: ModuleType) -> None:
        self._libs: list[Any] = [bindings._lib]
        self._base_path = bindings._base_path
        self._loaded_ggml = False

    def __getattr__(self, name: str) -> Any:
        for lib in self._libs:
            with contextlib.suppress(AttributeError):
                function = getattr(lib, name)
                setattr(self, name, function)  # found once, then a plain attribute
                return function
        if not self._loaded_ggml:
            self._loaded_ggml = True
            from llama_cpp._ctypes_extensions import load_shared_library

            for base in ("ggml", "ggml-base"):
                with contextlib.suppress(OSError, RuntimeError, FileNotFoundError):
                    self._libs.append(load_shared_library(base, self._base_path))
            return self.__getattr__(name)
        raise AttributeError(f"the engine's libraries export no {name}")


HOT_EXPERTS_ENV = "LLAMA_HOT_EXPERTS"  # read by the hot-experts variant when a model loads


def hot_experts_counter() -> Any | None:
    """``llama_model_n_expert_hot(model, layer)`` of an engine built with
    packaging/hot-experts.patch (``packaging/build_engine.sh cpu hot``), or None: a stock
    engine keeps all of a layer's experts in one tensor and cannot split them."""
    lib = llama_cpp()._lib
    function = getattr(lib, "llama_model_n_expert_hot", None)
    if function is not None:
        function.argtypes = [ctypes.c_void_p, ctypes.c_int32]
        function.restype = ctypes.c_int32
    return function


def ggml() -> Any:
    """The engine's libraries, with ggml's backend-device and tensor functions declared."""
    global _ggml
    bindings = llama_cpp()
    with _lock:
        if _ggml is None:
            lib = _EngineLibraries(bindings)
            vp, sz = ctypes.c_void_p, ctypes.c_size_t
            signatures: dict[str, tuple[list[Any], Any]] = {
                "ggml_backend_dev_count": ([], sz),
                "ggml_backend_dev_get": ([sz], vp),
                "ggml_backend_dev_name": ([vp], ctypes.c_char_p),
                "ggml_backend_dev_description": ([vp], ctypes.c_char_p),
                "ggml_backend_dev_type": ([vp], ctypes.c_int),
                "ggml_backend_dev_memory": (
                    [vp, ctypes.POINTER(sz), ctypes.POINTER(sz)],
                    None,
                ),
                "ggml_backend_dev_buffer_type": ([vp], vp),
                "ggml_backend_buft_name": ([vp], ctypes.c_char_p),
                "ggml_backend_register": ([vp], None),
                "ggml_backend_reg_by_name": ([ctypes.c_char_p], vp),
                "ggml_backend_reg_get_proc_address": ([vp, ctypes.c_char_p], vp),
                "ggml_get_name": ([vp], ctypes.c_char_p),
                "ggml_nbytes": ([vp], sz),
                "ggml_backend_tensor_get": ([vp, vp, sz, sz], None),
            }
            for name, (argtypes, restype) in signatures.items():
                function = getattr(lib, name)
                function.argtypes = argtypes
                function.restype = restype
            _ggml = lib
        return _ggml
