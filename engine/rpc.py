"""Other computers' memory through ggml's RPC backend: ``moe-chat worker`` and its clients.

A worker serves this computer's GPUs and/or CPU with llama.cpp's own RPC server
(``ggml_backend_rpc_start_server``); the model host registers workers with the engine
(``ggml_backend_rpc_add_server``) and places whole blocks of layers on them (engine.planner).

Three things the engine's RPC client does not do, done here:

* **Time limits.** The client blocks forever on a server that accepts and never answers,
  and aborts the process on one that refuses. ``hello`` speaks the protocol's first
  message (command 14, HELLO) itself, with a timeout, before the engine connects.
* **Version checks with a reason.** ``hello`` reads the server's protocol version and
  refuses one this engine cannot talk to, saying which.
* **Noticing a computer that vanished.** The client waits forever on a worker whose
  computer went off the network mid-reply. ``keep_alive`` turns on TCP keepalive and a
  user timeout on the engine's connections, so the kernel fails them within seconds and
  the engine's process stops (the model host then names the computer).
* **What a device is.** The client sees every remote device as a "GPU" named ``RPC<n>``
  with the endpoint as its description, and a remote CPU reports all of its RAM as free.
  A MoE Chat worker also answers ``GET /`` on the next port (``port + 1``) with a JSON
  "card": each device's name, kind, free memory and bandwidth. It only describes; it
  accepts no commands.

The RPC protocol has no authentication and no encryption. Workers bind to 127.0.0.1 unless
told otherwise, and refuse every-interface or public addresses without
``--allow-any-address``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ipaddress
import json
import os
import signal
import socket
import struct
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple, TextIO

from engine import package_version
from engine.errors import MoeChatError
from engine.hardware import RemoteDevice, cached_ram_bandwidth, cgroup_memory_limit, gpu_bandwidth
from engine.units import format_bytes

DEFAULT_PORT = 50052  # llama.cpp's rpc-server default
CARD_PORT_OFFSET = 1  # a MoE Chat worker describes itself on port + 1
# The RPC protocol of the pinned engine (ggml-rpc.h: RPC_PROTO_*_VERSION of llama.cpp
# 0c1e57098, in llama-cpp-python 0.3.36). tests/engine/test_rpc.py checks it against a
# running server, so an engine upgrade that changes it fails there first.
PROTOCOL = (7, 0, 0)
HELLO_TIMEOUT_S = 5.0
CARD_TIMEOUT_S = 3.0
TEST_TIMEOUT_S = 60.0
_HELLO = 14  # RPC_CMD_HELLO, fixed across protocol versions
_CAPS_SIZE = 24  # RPC_CONN_CAPS_SIZE: transport capabilities (zero: plain TCP)
# Shared address space (carrier-grade NAT, and the addresses Tailscale hands out).
_SHARED_SPACE = ipaddress.ip_network("100.64.0.0/10")


class WorkerError(MoeChatError):
    """A worker could not be used; the message says which and why."""


class Endpoint(NamedTuple):
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def card_port(self) -> int:
        return self.port + CARD_PORT_OFFSET


def parse_endpoint(text: str, default_port: int = DEFAULT_PORT) -> Endpoint:
    """``"192.168.1.20:50052"`` (or a host name, port optional) as an Endpoint.

    Raises:
        WorkerError: not an address the engine's RPC client can use.
    """
    text = text.strip()
    if not text:
        raise WorkerError("Type the other computer's address, such as 192.168.1.20:50052.")
    if text.startswith("[") or text.count(":") > 1:
        raise WorkerError(
            f"{text} is an IPv6 address; llama.cpp's RPC backend speaks IPv4 only.",
            "Use the other computer's IPv4 address or its host name.",
        )
    host, _, port_text = text.partition(":")
    if not host or any(c.isspace() or c in "/@?#" for c in host):
        raise WorkerError(f"{text!r} is not a host name or an IPv4 address.")
    if not port_text:
        return Endpoint(host, default_port)
    if not port_text.isdigit() or not 0 < int(port_text) < 65535:
        raise WorkerError(f"{port_text!r} is not a port number (1 to 65534).")
    return Endpoint(host, int(port_text))


def listen_address(host: str, allow_any: bool = False) -> str:
    """The IPv4 address a worker may listen on, from what the user typed.

    Loopback and private networks (home and office LANs, link-local, 100.64/10) are fine;
    every interface (0.0.0.0) or a public address needs ``allow_any``: anyone who can reach
    the port can use this computer's memory.

    Raises:
        WorkerError: the address is not allowed, or not this computer's.
    """
    try:
        address = ipaddress.ip_address(socket.gethostbyname(host))
    except (OSError, UnicodeError, ValueError) as exc:
        raise WorkerError(f"{host} is not an address of this computer ({exc}).") from exc
    if not isinstance(address, ipaddress.IPv4Address):
        raise WorkerError(f"{host} is not an IPv4 address; the RPC server speaks IPv4 only.")
    safe = address.is_loopback or address.is_private or address in _SHARED_SPACE
    if address.is_unspecified and not allow_any:
        raise WorkerError(
            f"{host} listens on every network this computer is on, and the RPC protocol has "
            "no password or encryption.",
            "Give this computer's address on your own network (such as 192.168.1.20), or "
            "add --allow-any-address if you really mean every interface.",
        )
    if not safe and not address.is_unspecified and not allow_any:
        raise WorkerError(
            f"{host} is a public address: anyone on the internet could use this computer's "
            "memory, as the RPC protocol has no password or encryption.",
            "Use an address on your own network, or add --allow-any-address.",
        )
    return str(address)


# -- talking to a worker ---------------------------------------------------------------------


def hello(endpoint: Endpoint, timeout: float = HELLO_TIMEOUT_S) -> tuple[int, int, int]:
    """Open a connection, send HELLO, read the server's protocol version, close.

    Raises:
        WorkerError: unreachable, silent past ``timeout``, not an RPC server, or one
            speaking a protocol this engine cannot (the message says which).
    """
    request = struct.pack("<BQ", _HELLO, _CAPS_SIZE) + bytes(_CAPS_SIZE)
    try:
        with socket.create_connection((endpoint.host, endpoint.port), timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(request)
            header = _receive(sock, 8)
            (size,) = struct.unpack("<Q", header)
            body = _receive(sock, size) if 0 < size <= 256 else b""
    except TimeoutError as exc:
        raise WorkerError(
            f"The computer at {endpoint} accepted the connection but did not answer within "
            f"{timeout:g} s.",
            "It may be busy serving another MoE Chat, or stopped; restart `moe-chat worker` there.",
        ) from exc
    except _Closed as exc:
        raise WorkerError(
            f"The computer at {endpoint} closed the connection without answering.",
            "It may be serving another MoE Chat or not be an RPC worker.",
        ) from exc
    except OSError as exc:
        raise WorkerError(
            f"The computer at {endpoint} could not be reached ({exc.strerror or exc}).",
            "Check that `moe-chat worker` runs there and that its address and port are right.",
        ) from exc
    if len(body) < 3:
        raise WorkerError(f"{endpoint} answered, but not as an RPC worker does.")
    version = (body[0], body[1], body[2])
    if version[0] != PROTOCOL[0] or version[1] > PROTOCOL[1]:
        raise WorkerError(
            f"The computer at {endpoint} runs an incompatible engine: RPC protocol "
            f"{'.'.join(map(str, version))}, where this MoE Chat speaks "
            f"{'.'.join(map(str, PROTOCOL))}.",
            f"Install the same MoE Chat version ({package_version()}) on both computers.",
        )
    return version


class _Closed(Exception):
    pass


def _receive(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise _Closed
        data += chunk
    return data


@dataclass(frozen=True)
class WorkerCard:
    """What a MoE Chat worker says about itself on ``port + 1``."""

    version: str  # MoE Chat's
    engine: str  # llama-cpp-python's
    protocol: tuple[int, int, int]
    devices: tuple[dict[str, Any], ...]  # index, name, description, kind, memory_*, bandwidth


def fetch_card(endpoint: Endpoint, timeout: float = CARD_TIMEOUT_S) -> WorkerCard | None:
    """The worker's card, or None if nothing answers there (llama.cpp's own rpc-server)."""
    request = f"GET / HTTP/1.0\r\nHost: {endpoint.host}\r\n\r\n".encode()
    try:
        with socket.create_connection((endpoint.host, endpoint.card_port), timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(request)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        _, _, body = b"".join(chunks).partition(b"\r\n\r\n")
        raw = json.loads(body)
        return WorkerCard(
            version=str(raw["version"]),
            engine=str(raw["engine"]),
            protocol=tuple(int(x) for x in raw["protocol"][:3]),  # type: ignore[arg-type]
            devices=tuple(dict(d) for d in raw["devices"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remote_devices(
    endpoint: Endpoint, card: WorkerCard | None, engine_memory: Sequence[tuple[int, int]]
) -> tuple[RemoteDevice, ...]:
    """The worker's devices as the planner sees them: the card's description where there
    is one, else what the engine's client reports (``engine_memory``: (free, total) per
    device, in the worker's order)."""
    described = {int(d["index"]): d for d in card.devices} if card else {}
    devices = []
    for index, (free, total) in enumerate(engine_memory):
        d = described.get(index, {})
        devices.append(
            RemoteDevice(
                endpoint=str(endpoint),
                index=index,
                name=str(d.get("name", f"device {index}")),
                description=str(d.get("description", "")),
                kind=str(d.get("kind", "unknown")),
                memory_free=_int_or_none(d.get("memory_free", free)),
                memory_total=_int_or_none(d.get("memory_total", total)),
                bandwidth=_float_or_none(d.get("bandwidth")),
            )
        )
    return tuple(devices)


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and value > 0 else None


def _float_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


def connect(
    endpoints: Sequence[str], timeout: float = HELLO_TIMEOUT_S
) -> tuple[tuple[RemoteDevice, ...], tuple[str, ...]]:
    """Register each worker with this process's engine and measure its link.

    For the model host's child process: the engine aborts its process when a registered
    worker goes away. A worker that is unreachable, silent or incompatible is left out, and
    a sentence saying why is among the notes returned.
    """
    from engine.devices import add_rpc_server, measure_link

    found: list[RemoteDevice] = []
    notes: list[str] = []
    for text in endpoints:
        try:
            endpoint = parse_endpoint(text)
            hello(endpoint, timeout)
        except WorkerError as exc:
            notes.append(f"{exc} It was left out.")
            continue
        card = fetch_card(endpoint)
        registered = add_rpc_server(str(endpoint))
        link = measure_link(registered[0].name)
        memory = [(d.memory_free or 0, d.memory_total or 0) for d in registered]
        for device in remote_devices(endpoint, card, memory):
            found.append(_with_link(device, link.latency_s, link.upload_bps, link.download_bps))
    return tuple(found), tuple(notes)


# A connection to a worker whose computer stopped answering fails after about this long.
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT = 5, 2, 4
USER_TIMEOUT_MS = 15_000  # sent data unacknowledged this long: the link is gone


def connections_to(endpoints: Sequence[str]) -> Iterator[socket.socket]:
    """This process's TCP connections to ``endpoints`` (the engine's own RPC sockets among
    them), each a duplicate closed when the caller moves on. Linux only: found through
    /proc/self/fd; elsewhere none."""
    wanted = set()
    for text in endpoints:
        endpoint = parse_endpoint(text)
        with contextlib.suppress(OSError):
            for info in socket.getaddrinfo(endpoint.host, endpoint.port, socket.AF_INET):
                wanted.add(info[4][:2])
    if not wanted or not os.path.isdir("/proc/self/fd"):
        return
    for name in os.listdir("/proc/self/fd"):
        try:
            copy = os.dup(int(name))
        except OSError:
            continue  # closed meanwhile (the listing's own descriptor)
        try:
            sock = socket.socket(fileno=copy)
        except OSError:
            os.close(copy)
            continue  # not a socket
        with sock:
            try:
                if sock.type == socket.SOCK_STREAM and sock.getpeername()[:2] in wanted:
                    yield sock
            except OSError:
                continue  # not connected


def keep_alive(endpoints: Sequence[str]) -> int:
    """Turn on keepalive probes and a user timeout on this process's connections to
    ``endpoints``; returns how many (0 where the platform cannot, see ``connections_to``).

    A live worker answers the probes from its kernel even while it computes for minutes,
    so only a worker whose computer is unreachable is cut off. The engine holds a
    connection only while a buffer or backend there needs it: call this once the model's
    weights are being placed (and again after a reload).
    """
    if not hasattr(socket, "TCP_KEEPIDLE"):
        return 0
    count = 0
    for sock in connections_to(endpoints):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE_S)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL_S)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)
            if hasattr(socket, "TCP_USER_TIMEOUT"):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS)
            count += 1
    return count


def _with_link(device: RemoteDevice, latency: float, up: float, down: float) -> RemoteDevice:
    return RemoteDevice(**{**asdict(device), "latency_s": latency, "transfer_bps": min(up, down)})


@dataclass(frozen=True)
class WorkerReport:
    """What Settings → Computers → Test shows."""

    endpoint: str
    protocol: tuple[int, int, int]
    devices: tuple[RemoteDevice, ...]
    latency_s: float
    upload_bps: float
    download_bps: float
    version: str | None  # the worker's MoE Chat version; None: not a MoE Chat worker

    def summary(self) -> str:
        lines = [f"{d.describe()}" for d in self.devices]
        lines.append(
            f"round trip {self.latency_s * 1000:.2f} ms; "
            f"{format_bytes(int(self.upload_bps))}/s there, "
            f"{format_bytes(int(self.download_bps))}/s back"
        )
        if self.version is None:
            lines.append("not a MoE Chat worker: what its devices are is unknown")
        return "\n".join(lines)


def check_worker(text: str, timeout: float = TEST_TIMEOUT_S) -> WorkerReport:
    """Check a worker and measure its link, in a child process (the engine's client aborts
    its process when a server misbehaves).

    Raises:
        WorkerError: as ``hello``, or the measurement failed or timed out.
    """
    import subprocess

    from engine.child import run_json

    endpoint = parse_endpoint(text)
    protocol = hello(endpoint)
    try:
        result, code = run_json("engine.rpc", ["--measure", str(endpoint)], timeout)
    except subprocess.TimeoutExpired as exc:
        raise WorkerError(
            f"The computer at {endpoint} stopped answering while its link was measured "
            f"(no reply in {timeout:g} s)."
        ) from exc
    except OSError as exc:
        raise WorkerError(f"The link test could not start: {exc}.") from exc
    if code != 0 or result is None or "error" in (result or {}):
        detail = (result or {}).get("error") or f"the test process exited with code {code}"
        raise WorkerError(f"The link test of {endpoint} failed: {detail}.")
    card = fetch_card(endpoint)
    devices = remote_devices(endpoint, card, [tuple(m) for m in result["memory"]])
    return WorkerReport(
        endpoint=str(endpoint),
        protocol=protocol,
        devices=tuple(
            _with_link(d, result["latency_s"], result["upload_bps"], result["download_bps"])
            for d in devices
        ),
        latency_s=float(result["latency_s"]),
        upload_bps=float(result["upload_bps"]),
        download_bps=float(result["download_bps"]),
        version=card.version if card else None,
    )


def _measure_main(text: str) -> int:
    from engine.devices import add_rpc_server, measure_link

    try:
        registered = add_rpc_server(text)
        link = measure_link(registered[0].name)
    except MoeChatError as exc:
        print(json.dumps({"error": str(exc)}))
        return 1
    memory = [(d.memory_free or 0, d.memory_total or 0) for d in registered]
    print(json.dumps({**asdict(link), "memory": memory}))
    return 0


# -- the worker ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Served:
    handle: Any
    name: str
    description: str
    kind: str


def _choose_devices(names: Sequence[str]) -> list[_Served]:
    """The engine devices to serve: those named, or every GPU, or else the CPU (as
    llama.cpp's rpc-server chooses)."""
    from engine.devices import DEVICE_KINDS, _named_handles
    from engine.native import ggml

    lib = ggml()
    available = []
    for name, handle in _named_handles():
        if name.startswith("RPC"):
            continue
        kind = DEVICE_KINDS.get(lib.ggml_backend_dev_type(handle), "unknown")
        kind = "GPU" if kind in ("GPU", "iGPU") else kind
        description = (lib.ggml_backend_dev_description(handle) or b"").decode()
        available.append(_Served(handle, name, description, kind))
    if names:
        chosen = []
        for wanted in names:
            match = next((d for d in available if d.name.lower() == wanted.lower()), None)
            if match is None:
                raise WorkerError(
                    f"This computer has no device {wanted!r}; it has "
                    f"{', '.join(d.name for d in available)}."
                )
            chosen.append(match)
        return chosen
    gpus = [d for d in available if d.kind == "GPU"]
    return gpus or [d for d in available if d.kind == "CPU"]


LEND_MARGIN = 1 << 30  # RAM a worker keeps for its own computer's programs


def _card(
    served: Sequence[_Served], ram_bandwidth: float | None, lend: int | None = None
) -> dict[str, Any]:
    """Each served device and the memory it lends: a GPU's free memory, or the RAM that is
    available less a margin for this computer's own programs; at most ``lend`` bytes each."""
    import psutil

    from engine.native import ggml

    lib = ggml()
    devices = []
    for index, device in enumerate(served):
        if device.kind == "CPU":  # the engine counts all RAM as free; ask the OS
            total = psutil.virtual_memory().total
            free = psutil.virtual_memory().available
            limit = cgroup_memory_limit()
            if limit is not None and limit < total:
                total, free = limit, min(free, limit)
            free = max(0, free - LEND_MARGIN)
            bandwidth = ram_bandwidth
        else:
            free_c, total_c = ctypes.c_size_t(0), ctypes.c_size_t(0)
            lib.ggml_backend_dev_memory(device.handle, ctypes.byref(free_c), ctypes.byref(total_c))
            free, total = int(free_c.value), int(total_c.value)
            bandwidth = gpu_bandwidth(device.description)
        if lend is not None:
            free = min(free, lend)
        devices.append({"index": index, "name": device.name, "description": device.description,
                        "kind": device.kind, "memory_free": free, "memory_total": total,
                        "bandwidth": bandwidth})  # fmt: skip
    return {"app": "moe-chat", "version": package_version(),
            "engine": package_version("llama-cpp-python"), "protocol": list(PROTOCOL),
            "devices": devices}  # fmt: skip


def _card_server(host: str, port: int, card: Any) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(card()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def serve(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    devices: Sequence[str] = (),
    allow_any: bool = False,
    threads: int | None = None,
    lend: int | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """``moe-chat worker``: serve this computer's devices until SIGINT or SIGTERM.

    Returns:
        0 after a clean stop, 2 when it could not start (the reason printed).
    """
    try:
        address = listen_address(host, allow_any)
        _check_port_free(address, port)
        _check_port_free(address, port + CARD_PORT_OFFSET)
        from engine.devices import compiled_backends
        from engine.native import ggml

        if "RPC" not in compiled_backends():
            raise WorkerError(
                "This engine build has no RPC support.",
                'Rebuild llama-cpp-python with CMAKE_ARGS="-DGGML_RPC=ON".',
            )
        served = _choose_devices(devices)
    except MoeChatError as exc:
        print(f"moe-chat worker: {exc}", file=out)
        if exc.hint:
            print(exc.hint, file=out)
        return 2
    ram_bandwidth = cached_ram_bandwidth() if any(d.kind == "CPU" for d in served) else None
    card = _card_server(
        address, port + CARD_PORT_OFFSET, lambda: _card(served, ram_bandwidth, lend)
    )
    threading.Thread(target=card.serve_forever, name="worker-card", daemon=True).start()

    lib = ggml()
    reg = lib.ggml_backend_reg_by_name(b"RPC")
    start = ctypes.CFUNCTYPE(
        None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t,
        ctypes.POINTER(ctypes.c_void_p),
    )(lib.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_rpc_start_server"))  # fmt: skip
    handles = (ctypes.c_void_p * len(served))(*[d.handle for d in served])
    n_threads = threads or max(1, _physical_cores())
    stopped = threading.Event()
    failed = threading.Event()

    def run_server() -> None:
        start(f"{address}:{port}".encode(), None, n_threads, len(served), handles)
        failed.set()  # it returns only when it could not listen
        stopped.set()

    print(f"MoE Chat worker {package_version()} (llama-cpp-python "
          f"{package_version('llama-cpp-python')}, RPC protocol "
          f"{'.'.join(map(str, PROTOCOL))})", file=out)  # fmt: skip
    print("Serving:", file=out)
    for entry in _card(served, ram_bandwidth, lend)["devices"]:
        what = "RAM" if entry["kind"] == "CPU" else entry["kind"]
        print(f"  {entry['name']}: {entry['description']} ({what}), lends "
              f"{format_bytes(entry['memory_free'])} of "
              f"{format_bytes(entry['memory_total'])}", file=out)  # fmt: skip
    print(f"Address: {address}:{port}  (in MoE Chat: Settings → Computers → Add)", file=out)
    print(f"Description for the app: http://{address}:{port + CARD_PORT_OFFSET}/", file=out)
    print("WARNING: the RPC protocol has no authentication and no encryption. Anyone who can "
          "reach this address can use this computer's memory and run work on it. Run it only "
          "on a network you trust.", file=out)  # fmt: skip
    print("Press Ctrl+C to stop.", file=out, flush=True)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    threading.Thread(target=run_server, name="rpc-server", daemon=True).start()
    while not stopped.wait(0.2):
        pass
    card.shutdown()
    if failed.is_set():
        print(f"moe-chat worker: could not listen on {address}:{port}.", file=out, flush=True)
        return 2
    print("Worker stopped.", file=out, flush=True)
    # The engine's server has no stop call and blocks in accept(): end the process here.
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(0)


def _check_port_free(address: str, port: int) -> None:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
        try:
            probe.bind((address, port))
        except OSError as exc:
            raise WorkerError(
                f"Port {port} on {address} is taken ({exc.strerror or exc}).",
                "Stop what uses it, or pick another port with --port.",
            ) from exc


def _physical_cores() -> int:
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def worker_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="moe-chat worker",
        description="Lend this computer's GPU and/or RAM to MoE Chat on another computer, "
        "through llama.cpp's RPC backend. The RPC protocol has no authentication or "
        "encryption: run it only on a network you trust.",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this computer only)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"RPC port (default {DEFAULT_PORT}); the app also reads port+1",
    )
    parser.add_argument("--device", nargs="+", default=[], metavar="NAME",
                        help="devices to serve, as the engine names them (CUDA0, Vulkan0, "
                        "CPU); default: every GPU, else the CPU")  # fmt: skip
    parser.add_argument("--threads", type=int, help="CPU threads (default: physical cores)")
    parser.add_argument("--memory", type=float, metavar="GB",
                        help="lend at most this much of each device's memory (default: what "
                        "is free, less 1 GB of RAM for this computer's own programs)")  # fmt: skip
    parser.add_argument("--allow-any-address", action="store_true",
                        help="allow 0.0.0.0 or a public address (anyone who reaches it can "
                        "use this computer)")  # fmt: skip
    args = parser.parse_args(list(argv))
    lend = int(args.memory * 1e9) if args.memory is not None else None
    return serve(args.host, args.port, args.device, args.allow_any_address, args.threads, lend)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--measure"]:
        sys.exit(_measure_main(sys.argv[2]))
    sys.exit(worker_main(sys.argv[1:]))
