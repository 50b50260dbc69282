"""Memory dry run: what the engine would reserve for a model, without loading its weights.

The engine's ``no_alloc`` mode logs KV cache and compute buffer sizes per device but can
abort the whole process, so it runs in a child process with a timeout. Weight buffers
print 0 in this mode; take weight bytes from the GGUF tensor table instead.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from engine.child import run_json
from engine.engine_log import LoadReport
from engine.errors import ModelLoadError
from engine.placement import Placement


def dry_run(
    path: str | Path, placement: Placement, n_ctx: int, timeout: float = 120.0
) -> LoadReport:
    """KV cache and compute buffers the engine would allocate, per device.

    Raises:
        ModelLoadError: the dry run failed, crashed or timed out (the message says which).
    """
    request = json.dumps({"path": str(path), "placement": asdict(placement), "n_ctx": n_ctx})
    try:
        data, code = run_json("engine.dryrun", [request], timeout)
    except subprocess.TimeoutExpired as exc:
        raise ModelLoadError(f"The memory check did not finish in {timeout:.0f} s.") from exc
    if data is None:
        raise ModelLoadError(
            "The memory check crashed in the engine" + (f" (exit {code})." if code else ".")
        )
    if "error" in data:
        raise ModelLoadError(str(data["error"]))
    return LoadReport(**data)


def _main(request: str) -> None:
    from engine.errors import MoeChatError
    from engine.session import LoadSettings, Session

    args = json.loads(request)
    placement = Placement.from_dict(args["placement"])
    try:
        session = Session(args["path"], placement, LoadSettings(n_ctx=args["n_ctx"]), dry_run=True)
    except MoeChatError as exc:
        print(json.dumps({"error": str(exc)}))
        return
    print(json.dumps(asdict(session.load_report)))
    session.close()


if __name__ == "__main__":
    _main(sys.argv[1])
