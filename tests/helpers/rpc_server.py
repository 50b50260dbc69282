"""A ggml RPC server on loopback, serving this machine's CPU as a second (GPU-typed) device.

Run as a child process (``python tests/helpers/rpc_server.py 127.0.0.1:PORT``); it blocks
serving until killed. Needs an engine built with ``-DGGML_RPC=ON`` (see TECH-NOTES).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path


def serve(endpoint: str) -> None:
    from llama_cpp import llama_cpp as ll

    lib = ll._lib
    lib.ggml_backend_reg_by_name.argtypes = [ctypes.c_char_p]
    lib.ggml_backend_reg_by_name.restype = ctypes.c_void_p
    lib.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
    lib.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
    lib.ggml_backend_dev_by_type.restype = ctypes.c_void_p
    ll.llama_backend_init()
    reg = lib.ggml_backend_reg_by_name(b"RPC")
    if not reg:
        sys.exit("this engine has no RPC backend (build with -DGGML_RPC=ON)")
    address = lib.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_rpc_start_server")
    start = ctypes.CFUNCTYPE(
        None,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_size_t,
        ctypes.POINTER(ctypes.c_void_p),
    )(address)
    devices = (ctypes.c_void_p * 1)(lib.ggml_backend_dev_by_type(0))  # the CPU device
    start(endpoint.encode(), None, max(1, (os.cpu_count() or 2) // 2), 1, devices)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running_server(timeout: float = 30.0) -> Iterator[str]:
    """Start a server in a child process; yield its ``host:port`` once it accepts connections."""
    endpoint = f"127.0.0.1:{free_port()}"
    child = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), endpoint],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        host, port = endpoint.split(":")
        deadline = time.monotonic() + timeout
        while True:
            if child.poll() is not None:
                raise RuntimeError(
                    f"RPC server exited: {child.stderr.read().decode() if child.stderr else ''}"
                )
            with contextlib.suppress(OSError), socket.create_connection((host, int(port)), 0.5):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("RPC server did not start")
            time.sleep(0.1)
        yield endpoint
    finally:
        child.kill()
        child.wait()
        if child.stderr:
            child.stderr.close()


if __name__ == "__main__":
    serve(sys.argv[1])
