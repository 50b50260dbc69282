"""The engine's backend devices and the ctypes bridge that puts tensors on them.

The only module that handles raw ggml pointers. llama-cpp-python declares
``llama_model_params.tensor_buft_overrides`` as an unused ``c_void_p`` and has no
parameter for it; the engine honours it, so we build the NULL-terminated array here.
"""

from __future__ import annotations

import ctypes
import os
import re
import statistics
import time
from dataclasses import dataclass
from typing import Any

from engine import package_version
from engine.errors import ModelLoadError
from engine.native import ggml, hot_experts_counter, llama_cpp
from engine.placement import Placement

DEVICE_KINDS = {0: "CPU", 1: "GPU", 2: "iGPU", 3: "ACCEL", 4: "META"}


@dataclass(frozen=True)
class Device:
    """One backend device as the engine sees it.

    ``memory_free``/``memory_total`` are None for the CPU, whose figures from the engine
    mean nothing (system RAM is measured with psutil instead).
    """

    index: int
    name: str
    description: str
    kind: str
    memory_free: int | None
    memory_total: int | None

    @property
    def is_gpu(self) -> bool:
        return self.kind in ("GPU", "iGPU")


def _device_handles() -> list[Any]:
    lib = ggml()
    return [lib.ggml_backend_dev_get(i) for i in range(lib.ggml_backend_dev_count())]


def _named_handles() -> list[tuple[str, Any]]:
    """Each engine device's name with its handle.

    A device another computer lends over RPC is named as its buffers are, ``RPC<i>[host:port]``
    (the worker's i-th device), not ``RPC<n>`` (the engine's running count over every worker
    it was told of, which differs from process to process).
    """
    lib = ggml()
    named = []
    per_endpoint: dict[str, int] = {}
    for handle in _device_handles():
        name = (lib.ggml_backend_dev_name(handle) or b"").decode()
        if re.fullmatch(r"RPC\d+", name):
            endpoint = (lib.ggml_backend_dev_description(handle) or b"").decode()
            index = per_endpoint.get(endpoint, 0)
            per_endpoint[endpoint] = index + 1
            name = remote_device_name(endpoint, index)
        named.append((name, handle))
    return named


def remote_device_name(endpoint: str, index: int) -> str:
    """The engine device a worker's ``index``-th device is, once registered."""
    return f"RPC{index}[{endpoint}]"


def list_devices() -> list[Device]:
    """Every device the engine can use, CPU included, in the engine's order."""
    lib = ggml()
    devices = []
    for index, (name, handle) in enumerate(_named_handles()):
        kind = DEVICE_KINDS.get(lib.ggml_backend_dev_type(handle), "unknown")
        free: int | None = None
        total: int | None = None
        if kind != "CPU":
            free_c, total_c = ctypes.c_size_t(0), ctypes.c_size_t(0)
            lib.ggml_backend_dev_memory(handle, ctypes.byref(free_c), ctypes.byref(total_c))
            free, total = int(free_c.value) or None, int(total_c.value) or None
        devices.append(
            Device(
                index=index,
                name=name,
                description=(lib.ggml_backend_dev_description(handle) or b"").decode(),
                kind=kind,
                memory_free=free,
                memory_total=total,
            )
        )
    return devices


def compiled_backends() -> list[str]:
    """Names of the backends this engine build carries (``CPU``, ``CUDA``, ``Vulkan``, ``RPC``…)."""
    lib = ggml()
    lib.ggml_backend_reg_count.restype = ctypes.c_size_t
    lib.ggml_backend_reg_get.argtypes = [ctypes.c_size_t]
    lib.ggml_backend_reg_get.restype = ctypes.c_void_p
    lib.ggml_backend_reg_name.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_reg_name.restype = ctypes.c_char_p
    count = lib.ggml_backend_reg_count()
    return [
        (lib.ggml_backend_reg_name(lib.ggml_backend_reg_get(i)) or b"?").decode()
        for i in range(count)
    ]


# Backends that run the model on an accelerator, in the order a build's name prefers them.
ACCELERATOR_BACKENDS = ("CUDA", "ROCm", "HIP", "Metal", "Vulkan", "SYCL", "CANN", "MUSA")
# Entries of the CPU part of llama_print_system_info that are features, not instruction sets.
_NOT_INSTRUCTION_SETS = {"LLAMAFILE", "OPENMP", "REPACK", "KLEIDIAI", "ACCELERATE"}


@dataclass(frozen=True)
class EngineBuild:
    """What the engine build in use carries: shown by the About box and ``--self-test``."""

    version: str  # llama-cpp-python's
    backends: tuple[str, ...]  # compiled in, whether or not a device is present
    cpu_instruction_sets: tuple[str, ...]  # what the CPU code was compiled for
    hot_experts: bool = False  # carries packaging/hot-experts.patch (engine.native)

    @property
    def accelerator(self) -> str | None:
        """The GPU backend of this build (``CUDA``, ``Vulkan``, ``Metal``…), None for CPU only."""
        return next((b for b in ACCELERATOR_BACKENDS if b in self.backends), None)

    def describe(self) -> str:
        kind = f"{self.accelerator} build" if self.accelerator else "CPU-only build"
        isas = ", ".join(self.cpu_instruction_sets) or "baseline"
        split = "; splits hot experts" if self.hot_experts else ""
        return (
            f"llama.cpp via llama-cpp-python {self.version}: {kind} "
            f"(backends {', '.join(self.backends)}; CPU code for {isas}{split})"
        )


def engine_build() -> EngineBuild:
    """Describe the engine build this process loaded."""
    bindings = llama_cpp()
    info = (bindings.llama_print_system_info() or b"").decode(errors="replace")
    return EngineBuild(
        version=package_version("llama-cpp-python"),
        backends=tuple(compiled_backends()),
        cpu_instruction_sets=parse_cpu_instruction_sets(info),
        hot_experts=hot_experts_counter() is not None,
    )


def parse_cpu_instruction_sets(system_info: str) -> tuple[str, ...]:
    """``CPU : SSE3 = 1 | AVX2 = 1 | OPENMP = 1 | …`` -> ``("SSE3", "AVX2")``."""
    sets: list[str] = []
    section = ""
    for part in system_info.split("|"):
        if ":" in part:  # a new section starts: "CPU : SSE3 = 1", "CUDA : ARCHS = 900"
            section, _, part = part.partition(":")
            section = section.strip()
        name, _, value = (piece.strip() for piece in part.partition("="))
        if section == "CPU" and value == "1" and name not in _NOT_INSTRUCTION_SETS:
            sets.append(name)
    return tuple(sets)


def buffer_type(device_name: str) -> Any:
    """The default buffer type of the named device (``CPU``, ``CUDA0``, ``RPC0[…]``).

    Raises:
        ModelLoadError: no such device.
    """
    lib = ggml()
    handle = device_handle(device_name)
    return lib.ggml_backend_dev_buffer_type(handle)


def device_handle(device_name: str) -> Any:
    """The engine's handle of the named device (as ``list_devices`` names it).

    Raises:
        ModelLoadError: no such device.
    """
    named = _named_handles()
    for name, handle in named:
        if name == device_name:
            return handle
    names = [name for name, _ in named]
    raise ModelLoadError(
        f"The placement asks for device '{device_name}', but this machine's engine only has "
        f"{', '.join(names)}.",
        "Re-plan the placement for this machine.",
    )


class _BuftOverride(ctypes.Structure):
    # struct llama_model_tensor_buft_override {
    #     const char * pattern; ggml_backend_buffer_type_t buft; }
    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


class TensorOverrides:
    """A NULL-terminated ``llama_model_tensor_buft_override`` array kept alive with its strings.

    The model keeps reading the patterns after load, so an instance must live as long as the
    model it was passed to.
    """

    def __init__(self, placement: Placement) -> None:
        limit = int(llama_cpp().llama_max_tensor_buft_overrides())
        rules = placement.rules
        if len(rules) >= limit:
            raise ModelLoadError(
                f"The placement has {len(rules)} tensor rules; the engine accepts at most "
                f"{limit - 1}."
            )
        for rule in rules:
            try:
                re.compile(rule.pattern)
            except re.error as exc:
                raise ModelLoadError(
                    f"Placement pattern {rule.pattern!r} is invalid: {exc}."
                ) from exc
        self._patterns = [rule.pattern.encode() for rule in rules]
        self._array = (_BuftOverride * (len(rules) + 1))()
        for slot, (rule, pattern) in enumerate(zip(rules, self._patterns, strict=True)):
            self._array[slot].pattern = pattern
            self._array[slot].buft = buffer_type(rule.device)
        self._array[len(rules)].pattern = None
        self._array[len(rules)].buft = None

    @property
    def address(self) -> int | None:
        """What to assign to ``llama_model_params.tensor_buft_overrides`` (None: no rules)."""
        if not self._patterns:
            return None
        return ctypes.addressof(self._array)


def add_rpc_server(endpoint: str) -> list[Device]:
    """Register a ggml RPC server (``host:port``) with the engine; return its devices.

    Needs an engine built with ``-DGGML_RPC=ON``. The engine aborts the process if the
    server cannot be reached or does not answer its handshake, so call this in a child
    process (the model host), after ``engine.rpc.hello`` has checked the server with a
    timeout. Registering an endpoint twice returns its devices again.

    Raises:
        ModelLoadError: the engine has no RPC support, or the server offered no device.
    """
    lib = ggml()
    present = [d for d in list_devices() if d.description == endpoint and d.name.startswith("RPC")]
    if present:
        return present
    reg = lib.ggml_backend_reg_by_name(b"RPC")
    if not reg:
        raise ModelLoadError(
            "This engine build has no RPC support.",
            'Rebuild llama-cpp-python with CMAKE_ARGS="-DGGML_RPC=ON".',
        )
    address = lib.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_rpc_add_server")
    if not address:
        raise ModelLoadError("This engine build's RPC backend cannot add servers.")
    add_server = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)(address)
    server_reg = add_server(endpoint.encode())
    if not server_reg:
        raise ModelLoadError(f"The computer at {endpoint} offered no device.")
    lib.ggml_backend_register(server_reg)
    added = [d for d in list_devices() if d.description == endpoint and d.name.startswith("RPC")]
    if not added:
        raise ModelLoadError(f"The computer at {endpoint} offered no device.")
    return added


class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p),
                ("no_alloc", ctypes.c_bool)]  # fmt: skip


GGML_TYPE_I8 = 24


@dataclass(frozen=True)
class LinkMeasure:
    """What a round trip to a device and a block of bytes each way took."""

    latency_s: float  # the median round trip of a small request
    upload_bps: float  # bytes/s to the device
    download_bps: float  # bytes/s back


def measure_link(device_name: str, size: int = 8 << 20, rounds: int = 3) -> LinkMeasure:
    """Time requests to a (remote) device the way the engine makes them: memory queries for
    the round trip, then ``size`` bytes written to a buffer there and read back.

    8 MiB stays under the size at which the RPC client first offers a hash of the data.
    """
    lib = ggml()
    sz, vp = ctypes.c_size_t, ctypes.c_void_p
    for name, argtypes, restype in (
        ("ggml_init", [_InitParams], vp),
        ("ggml_free", [vp], None),
        ("ggml_new_tensor_1d", [vp, ctypes.c_int, ctypes.c_int64], vp),
        ("ggml_backend_alloc_ctx_tensors_from_buft", [vp, vp], vp),
        ("ggml_backend_buffer_free", [vp], None),
        ("ggml_backend_tensor_set", [vp, vp, sz, sz], None),
    ):
        function = getattr(lib, name)
        function.argtypes, function.restype = argtypes, restype
    handle = device_handle(device_name)
    ctx = lib.ggml_init(_InitParams(1 << 20, None, True))
    if not ctx:
        raise ModelLoadError("The engine could not make a scratch context.")
    buffer = None
    try:
        tensor = lib.ggml_new_tensor_1d(ctx, GGML_TYPE_I8, size)
        buffer = lib.ggml_backend_alloc_ctx_tensors_from_buft(ctx, buffer_type(device_name))
        if not buffer:
            raise ModelLoadError(f"{device_name} could not hold {size} bytes.")
        data = ctypes.create_string_buffer(os.urandom(size), size)
        back = ctypes.create_string_buffer(size)
        one = ctypes.create_string_buffer(1)
        # While a buffer lives there the client keeps its connection: these are round trips,
        # not new connections.
        free_c, total_c = sz(0), sz(0)
        trips = []
        for _ in range(9):
            started = time.perf_counter()
            lib.ggml_backend_dev_memory(handle, ctypes.byref(free_c), ctypes.byref(total_c))
            trips.append(time.perf_counter() - started)
        up, down = [], []
        for _ in range(rounds):
            started = time.perf_counter()
            lib.ggml_backend_tensor_set(tensor, data, 0, size)
            lib.ggml_backend_tensor_get(tensor, one, 0, 1)  # a reply: the bytes have arrived
            up.append(time.perf_counter() - started)
            started = time.perf_counter()
            lib.ggml_backend_tensor_get(tensor, back, 0, size)
            down.append(time.perf_counter() - started)
        if back.raw != data.raw:
            raise ModelLoadError(f"{device_name} returned other bytes than it was sent.")
    finally:
        if buffer:
            lib.ggml_backend_buffer_free(buffer)
        lib.ggml_free(ctx)
    latency = statistics.median(trips)
    return LinkMeasure(latency, size / max(1e-9, min(up) - latency), size / max(1e-9, min(down)))


class DeviceList:
    """A NULL-terminated ``ggml_backend_dev_t`` array for ``llama_model_params.devices``,
    kept alive as long as the model it was passed to."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self._array = (ctypes.c_void_p * (len(names) + 1))(*[device_handle(n) for n in names])
        self._array[len(names)] = None

    @property
    def address(self) -> int:
        return ctypes.addressof(self._array)
