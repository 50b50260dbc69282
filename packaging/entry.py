"""Entry point of the bundled app (PyInstaller runs this file as ``moe-chat``).

The engine runs hardware probes and dry runs as ``sys.executable -m engine.<module>`` so that
a crash in native code cannot take the window down. In the bundle ``sys.executable`` is this
program, not Python, so ``-m engine.<module>`` is served here, before the app starts.
"""

from __future__ import annotations

import runpy
import sys


def _attach_windows_console() -> None:
    """A windowed Windows program has no stdout; ``--self-test`` prints into its console."""
    if sys.platform != "win32" or sys.stdout is not None:
        return
    import ctypes

    if ctypes.windll.kernel32.AttachConsole(-1):  # the console of the shell that started us
        sys.stdout = open("CONOUT$", "w", encoding="utf-8")  # noqa: SIM115 (lives as long as we do)
        sys.stderr = sys.stdout


if len(sys.argv) > 2 and sys.argv[1] == "-m" and sys.argv[2].startswith("engine."):
    module = sys.argv[2]
    sys.argv = [sys.argv[0], *sys.argv[3:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    sys.exit(0)

if (
    sys.argv[1:2] in (["serve"], ["worker"])  # the headless commands print to the console
    or "--self-test" in sys.argv
    or "--version" in sys.argv
    or "--help" in sys.argv
):
    _attach_windows_console()

from app.main import main  # noqa: E402

sys.exit(main())
