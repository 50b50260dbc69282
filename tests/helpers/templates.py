"""The families' real chat templates, from llama.cpp's models/templates/ in the engine's own
source distribution (llama-cpp-python 0.3.36 on the package index), fetched at test time
and cached; never committed."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ENGINE_SDIST = "llama-cpp-python==0.3.36"
_MEMBER = "/vendor/llama.cpp/models/templates/"

# Catalog architecture -> the template of that family that llama.cpp ships. Families with no
# template there (olmoe, llama/Mixtral, deepseek2 V2-Lite, ernie4_5-moe, smallthinker) run the
# template inside their GGUF, which cannot be fetched here.
FAMILY_TEMPLATES = {
    "qwen3moe": "Qwen-Qwen3-0.6B.jinja",
    "gpt-oss": "openai-gpt-oss-120b.jinja",
    "granitemoe": "ibm-granite-granite-3.3-2B-Instruct.jinja",
    "granitehybrid": "ibm-granite-granite-4.0.jinja",
    "phimoe": "microsoft-Phi-3.5-mini-instruct.jinja",
    "lfm2moe": "LFM2-8B-A1B.jinja",
    "glm4moe": "GLM-4.6.jinja",
    "qwen2moe": "Qwen-Qwen2.5-7B-Instruct.jinja",
}


def templates_dir() -> Path:
    """A folder of the ``.jinja`` templates, downloaded once per machine."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    folder = cache / "moe-chat-tests" / "llama-cpp-python-0.3.36-templates"
    if (folder / FAMILY_TEMPLATES["gpt-oss"]).is_file():
        return folder
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary",
             ":all:", "--dest", tmp, ENGINE_SDIST],
            check=True,
        )  # fmt: skip
        [sdist] = Path(tmp).glob("llama_cpp_python-*.tar.gz")
        folder.mkdir(parents=True, exist_ok=True)
        with tarfile.open(sdist) as archive:
            for member in archive.getmembers():
                if _MEMBER in member.name and member.name.endswith(".jinja") and member.isfile():
                    source = archive.extractfile(member)
                    assert source is not None
                    (folder / Path(member.name).name).write_bytes(source.read())
    return folder
