"""Workers for the tests: the real ``moe-chat worker`` in a child process, on loopback.

A worker serves this machine's CPU as a second device (typed GPU by the engine's client).
Several on 127.0.0.1, 127.0.0.2, … stand for several computers. Needs an engine built with
``-DGGML_RPC=ON`` (see TECH-NOTES). Loopback addresses only.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` whose next port (the worker's card) is free too."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port < 65534:
            with socket.socket() as card, contextlib.suppress(OSError):
                card.bind((host, port + 1))
                return port
    raise RuntimeError("no free pair of ports")


@dataclass
class Worker:
    endpoint: str
    process: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    @property
    def text(self) -> str:
        return "".join(self.output)


def start_worker(host: str = "127.0.0.1", *extra: str) -> Worker:
    """Start ``moe-chat worker --host HOST --port P --device CPU``; return once it answers."""
    port = free_port(host)
    process = subprocess.Popen(
        [sys.executable, "-m", "app.main", "worker", "--host", host, "--port", str(port),
         "--device", "CPU", "--threads", "2", *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    worker = Worker(f"{host}:{port}", process)

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            worker.output.append(line)

    worker.reader = threading.Thread(target=read, daemon=True)
    worker.reader.start()
    deadline = time.monotonic() + 60
    while "Press Ctrl+C" not in worker.text or not _accepts(host, port):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_worker(worker)
            raise RuntimeError(f"the worker did not start ({process.returncode}): {worker.text}")
        time.sleep(0.05)
    return worker


def _accepts(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), 0.5):
        return True
    return False


def stop_worker(worker: Worker) -> None:
    """Kill it (if it still runs) and close its pipe."""
    if worker.process.poll() is None:
        worker.process.kill()
    worker.process.wait(10)
    if worker.reader is not None:
        worker.reader.join(10)
    if worker.process.stdout is not None:
        worker.process.stdout.close()


@contextlib.contextmanager
def running_worker(host: str = "127.0.0.1") -> Iterator[Worker]:
    worker = start_worker(host)
    try:
        yield worker
    finally:
        stop_worker(worker)


@contextlib.contextmanager
def running_server() -> Iterator[str]:
    """A worker on 127.0.0.1; yields its ``host:port``."""
    with running_worker() as worker:
        yield worker.endpoint


@contextlib.contextmanager
def silent_server(host: str = "127.0.0.1") -> Iterator[str]:
    """A socket that accepts connections and never says anything."""
    with socket.socket() as listener:
        listener.bind((host, 0))
        listener.listen(8)
        held: list[socket.socket] = []
        stop = threading.Event()

        def accept() -> None:
            listener.settimeout(0.2)
            while not stop.is_set():
                with contextlib.suppress(OSError):
                    held.append(listener.accept()[0])

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        try:
            yield f"{host}:{listener.getsockname()[1]}"
        finally:
            stop.set()
            thread.join()
            for conn in held:
                conn.close()


@contextlib.contextmanager
def old_protocol_server(version: tuple[int, int, int], host: str = "127.0.0.1") -> Iterator[str]:
    """A server that answers HELLO as an RPC server of protocol ``version`` would (the other
    side of the conversation, to test the refusal)."""
    import struct

    with socket.socket() as listener:
        listener.bind((host, 0))
        listener.listen(8)
        listener.settimeout(0.2)
        stop = threading.Event()

        def serve() -> None:
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except OSError:
                    continue
                with conn:
                    conn.settimeout(2)
                    with contextlib.suppress(OSError):
                        conn.recv(1 + 8 + 24)
                        conn.sendall(struct.pack("<Q", 28) + bytes([*version, 0]) + bytes(24))

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            yield f"{host}:{listener.getsockname()[1]}"
        finally:
            stop.set()
            thread.join()
