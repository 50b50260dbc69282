"""Run one of the engine's modules in a child process and read the JSON it prints.

What can crash or hang the engine (probing devices, a memory dry run) runs as
``python -m engine.<module>`` so that only the child is lost; it prints one JSON object on
its last such line. In an installed app ``sys.executable`` is the bundle, which runs ``-m``
itself (packaging/entry.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def run_json(
    module: str, args: list[str], timeout: float, python: str | None = None
) -> tuple[dict[str, Any] | None, int]:
    """The last JSON object ``python -m module *args`` printed (None if none), and its exit
    code.

    Raises:
        OSError: the child could not be started.
        subprocess.TimeoutExpired: it ran past ``timeout`` seconds (and was killed).
    """
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(
        [python or sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    for line in reversed(result.stdout.splitlines()):
        if line.startswith("{"):
            try:
                parsed = json.loads(line)
            except ValueError:
                continue
            if isinstance(parsed, dict):
                return parsed, result.returncode
    return None, result.returncode
