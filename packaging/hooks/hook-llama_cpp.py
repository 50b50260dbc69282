"""PyInstaller hook for llama-cpp-python (the engine).

llama_cpp opens its library from ``<package>/lib/`` (``libllama.so``, ``llama.dll`` or
``libllama.dylib``), so the bundle keeps that sub-path. The wheel stores every library three
times under version names (``libggml.so``, ``.so.0``, ``.so.0.25.3``); collecting the folder
would ship each one three times. Only the library Python opens is collected here. The ggml
libraries it links to are then found by PyInstaller's dependency analysis under the one name
the linker asks for (the soname) and land beside it, thanks to the ``$ORIGIN`` run path.
OpenMP (libgomp, or vcomp140.dll on Windows) is collected the same way.

The vision and server parts of llama_cpp are not collected: the app uses neither.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PyInstaller.utils.hooks import get_package_paths

_, _package_dir = get_package_paths("llama_cpp")
_lib = Path(_package_dir) / "lib"
if sys.platform == "win32":
    _candidates = ["llama.dll", "libllama.dll"]
elif sys.platform == "darwin":
    _candidates = ["libllama.dylib", "libllama.so"]
else:
    _candidates = ["libllama.so"]
_found = [_lib / name for name in _candidates if (_lib / name).is_file()]
if not _found:
    raise SystemExit(f"llama_cpp has no engine library in {_lib}: is llama-cpp-python built?")
binaries = [(str(_found[0]), "llama_cpp/lib")]
excludedimports = ["llama_cpp.server", "llama_cpp.llava_cpp", "llama_cpp.mtmd_cpp"]
