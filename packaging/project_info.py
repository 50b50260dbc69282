"""Facts the packaging scripts take from pyproject.toml, so there is one place for each.

python packaging/project_info.py version          -> 0.1.0
python packaging/project_info.py engine-version   -> the pinned llama-cpp-python version
"""

from __future__ import annotations

import sys
from pathlib import Path

import tomllib

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def project() -> dict[str, object]:
    with PYPROJECT.open("rb") as f:
        table: dict[str, object] = tomllib.load(f)["project"]
    return table


def version() -> str:
    return str(project()["version"])


def engine_version() -> str:
    for requirement in project()["dependencies"]:  # type: ignore[attr-defined]
        name, _, pinned = str(requirement).partition("==")
        if name.strip() == "llama-cpp-python" and pinned:
            return pinned.strip()
    raise SystemExit("pyproject.toml does not pin llama-cpp-python with ==")


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "version"
    print({"version": version, "engine-version": engine_version}[what]())
