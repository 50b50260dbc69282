"""``moe-chat --self-test``: headless, exits 0 with a reply and its speed, loads no Qt."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from engine.devices import engine_build


def test_self_test_passes_without_a_display(tmp_path: Path) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "MOE_CHAT_HOME": str(tmp_path / "home"),
    }
    code = (
        "import sys\n"
        "from app.main import main\n"
        "rc = main(['--self-test'])\n"
        "qt = [m for m in sys.modules if m.startswith(('PySide6', 'shiboken6'))]\n"
        "print('qt modules loaded:', qt)\n"
        "sys.exit(rc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=Path(__file__).parents[2],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert "self-test passed" in result.stdout
    assert "reply: '" in result.stdout and "tokens/s" in result.stdout
    assert f"engine: {engine_build().describe()}" in result.stdout  # this machine's build
    assert "hardware probe (child process): ok" in result.stdout
    assert "qt modules loaded: []" in result.stdout


def test_version_flag() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app", "--version"],
        cwd=Path(__file__).parents[2],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    assert result.stdout.startswith("moe-chat ")


def test_bundle_entry_runs_engine_modules_as_children() -> None:
    """In the bundle ``sys.executable`` is the app; packaging/entry.py serves ``-m engine.…``."""
    root = Path(__file__).parents[2]
    result = subprocess.run(
        [
            sys.executable,
            str(root / "packaging" / "entry.py"),
            "-m",
            "engine.hardware",
            "--engine-probe",
        ],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    assert "CPU" in probe["backends"]
    assert any(device["kind"] == "CPU" for device in probe["devices"])
