"""The engine's backend devices and the ctypes bridge that puts tensors on them.

The only module that handles raw ggml pointers. llama-cpp-python declares
``llama_model_params.tensor_buft_overrides`` as an unused ``c_void_p`` and has no
parameter for it; the engine honours it, so we build the NULL-terminated array here.
"""

from __future__ import annotations

import ctypes
import re
from dataclasses import dataclass
from typing import Any

from engine import package_version
from engine.errors import ModelLoadError
from engine.native import ggml, llama_cpp
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


def list_devices() -> list[Device]:
    """Every device the engine can use, CPU included, in the engine's order."""
    lib = ggml()
    devices = []
    for index, handle in enumerate(_device_handles()):
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
                name=(lib.ggml_backend_dev_name(handle) or b"").decode(),
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

    @property
    def accelerator(self) -> str | None:
        """The GPU backend of this build (``CUDA``, ``Vulkan``, ``Metal``…), None for CPU only."""
        return next((b for b in ACCELERATOR_BACKENDS if b in self.backends), None)

    def describe(self) -> str:
        kind = f"{self.accelerator} build" if self.accelerator else "CPU-only build"
        isas = ", ".join(self.cpu_instruction_sets) or "baseline"
        return (
            f"llama.cpp via llama-cpp-python {self.version}: {kind} "
            f"(backends {', '.join(self.backends)}; CPU code for {isas})"
        )


def engine_build() -> EngineBuild:
    """Describe the engine build this process loaded."""
    bindings = llama_cpp()
    info = (bindings.llama_print_system_info() or b"").decode(errors="replace")
    return EngineBuild(
        version=package_version("llama-cpp-python"),
        backends=tuple(compiled_backends()),
        cpu_instruction_sets=parse_cpu_instruction_sets(info),
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
    names = []
    for handle in _device_handles():
        name = (lib.ggml_backend_dev_name(handle) or b"").decode()
        names.append(name)
        if name == device_name:
            return lib.ggml_backend_dev_buffer_type(handle)
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


def add_rpc_server(endpoint: str) -> Device:
    """Register a ggml RPC server (``host:port``) as a device and return it.

    Needs an engine built with ``-DGGML_RPC=ON``. Used for machines that lend their GPU
    over the network, and by the tests as a second device without a GPU.

    Raises:
        ModelLoadError: the engine has no RPC support or the server cannot be reached.
    """
    lib = ggml()
    before = {device.name for device in list_devices()}
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
        raise ModelLoadError(f"The RPC server at {endpoint} could not be reached.")
    lib.ggml_backend_register(server_reg)
    added = [device for device in list_devices() if device.name not in before]
    if not added:
        raise ModelLoadError(f"The RPC server at {endpoint} offered no device.")
    return added[0]
