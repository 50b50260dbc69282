"""MachineProfile: CPU, RAM, GPUs, disk; from the engine first, vendor probes next, the OS last.

Every probe may fail or be absent; a value nobody could read is None ("unknown"), never 0.
The engine is probed in a child process with a timeout, so a GPU driver that hangs or
aborts cannot take the app down.
"""

from __future__ import annotations

import contextlib
import json
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from engine import paths
from engine.child import run_json
from engine.units import format_bytes

GB = 1e9

# Memory bandwidth in GB/s of common GPUs (vendor data sheets), matched by name, longest first.
GPU_BANDWIDTH_GBS = {
    "H200": 4800, "H100 PCIe": 2000, "H100": 3350, "A100 80GB PCIe": 1935, "A100 80GB": 2039,
    "A100": 1555, "L40S": 864, "L40": 864, "A10G": 600, "A10": 600, "L4": 300, "T4": 320,
    "RTX 5090": 1792, "RTX 5080": 960, "RTX 5070 Ti": 896, "RTX 5070": 672,
    "RTX 4090": 1008, "RTX 4080": 717, "RTX 4070 Ti": 504, "RTX 4070": 504,
    "RTX 4060 Ti": 288, "RTX 4060": 272, "RTX 3090": 936, "RTX 3080": 760, "RTX 3070": 448,
    "RTX 3060": 360, "RX 7900 XTX": 960, "RX 7900 XT": 800, "RX 7800 XT": 624,
    "RX 6900 XT": 512, "RX 6800 XT": 512, "M1 Ultra": 800, "M1 Max": 400, "M1 Pro": 200,
    "M1": 68, "M2 Ultra": 800, "M2 Max": 400, "M2 Pro": 200, "M2": 100, "M3 Ultra": 800,
    "M3 Max": 400, "M3 Pro": 150, "M3": 100, "M4 Max": 546, "M4 Pro": 273, "M4": 120,
}  # fmt: skip
PCI_VENDORS = {"0x10de": "NVIDIA", "0x1002": "AMD", "0x8086": "Intel"}
# macOS lets the GPU use about this share of unified memory by default (an estimate).
APPLE_GPU_SHARE = 0.75
ENGINE_PROBE_TIMEOUT_S = 30.0


def gpu_bandwidth(name: str) -> float | None:
    """Bytes/s for a known GPU name, else None."""
    for key in sorted(GPU_BANDWIDTH_GBS, key=len, reverse=True):
        if re.search(rf"\b{re.escape(key)}\b", name):
            return GPU_BANDWIDTH_GBS[key] * GB
    return None


@dataclass(frozen=True)
class GPUInfo:
    """One GPU. ``engine_device`` is the engine's name for it when this engine build can use it."""

    name: str
    vendor: str
    memory_total: int | None
    memory_free: int | None
    bandwidth: float | None
    source: str  # "engine", "nvml", "sysfs", "apple", "os"
    engine_device: str | None = None
    unified_memory: bool = False
    memory_is_estimate: bool = False


@dataclass(frozen=True)
class RemoteDevice:
    """A device another computer lends over ggml's RPC backend (``moe-chat worker``).

    ``kind`` is "GPU" or "CPU" as the worker describes it, or "unknown" for a server that
    does not (llama.cpp's own rpc-server). The link figures are measured by engine.rpc.
    """

    endpoint: str  # host:port of the worker
    index: int  # the device's number on that worker
    name: str  # the worker's name for it ("CUDA0", "CPU")
    description: str  # "NVIDIA GeForce RTX 4090", a CPU's model
    kind: str
    memory_free: int | None
    memory_total: int | None
    bandwidth: float | None  # bytes/s of its memory, when known
    latency_s: float | None = None  # a round trip to the worker
    transfer_bps: float | None = None  # bytes/s across the link (the slower direction)

    @property
    def engine_device(self) -> str:
        """Its name in the engine once registered (engine.devices.remote_device_name)."""
        return f"RPC{self.index}[{self.endpoint}]"

    @property
    def host(self) -> str:
        return self.endpoint.rsplit(":", 1)[0]

    def describe(self) -> str:
        what = {"GPU": "GPU", "CPU": "RAM"}.get(self.kind, "device")
        free = format_bytes(self.memory_free) if self.memory_free else "unknown"
        return f"{self.endpoint}: {self.description or self.name} ({what}, {free} available)"


@dataclass(frozen=True)
class MachineProfile:
    """What this machine offers for running a model."""

    os: str
    cpu_model: str | None
    physical_cores: int | None
    logical_cores: int | None
    cpu_features: tuple[str, ...]
    ram_total: int | None
    ram_available: int | None
    ram_bandwidth: float | None
    gpus: tuple[GPUInfo, ...]
    engine_backends: tuple[str, ...] | None
    disk_free: int | None
    notes: tuple[str, ...] = field(default_factory=tuple)
    remotes: tuple[RemoteDevice, ...] = ()  # what other computers lend (Settings → Computers)
    # the engine can put a layer's hot experts apart from the rest (packaging/HOT-EXPERTS.md)
    splits_experts: bool = False

    @property
    def usable_gpus(self) -> tuple[GPUInfo, ...]:
        return tuple(g for g in self.gpus if g.engine_device)

    @property
    def unusable_gpus(self) -> tuple[GPUInfo, ...]:
        """GPUs that are there but that this engine build cannot use."""
        return tuple(g for g in self.gpus if not g.engine_device)

    def reinstall_hint(self) -> str | None:
        """The exact command that rebuilds the engine for a GPU it cannot use yet."""
        vendors = {g.vendor for g in self.unusable_gpus}
        flag = (
            "-DGGML_CUDA=on"
            if "NVIDIA" in vendors
            else "-DGGML_HIP=on"
            if "AMD" in vendors
            else "-DGGML_VULKAN=on"
            if vendors - {"Apple"}
            else None
        )
        if flag is None:
            return None
        return (
            f'CMAKE_ARGS="{flag}" pip install --force-reinstall --no-cache-dir '
            "--no-binary llama-cpp-python llama-cpp-python==0.3.36"
        )


# -- the engine's own view (in a child process) ----------------------------------------------


def probe_engine(
    timeout: float = ENGINE_PROBE_TIMEOUT_S, python: str | None = None
) -> dict[str, Any] | None:
    """Devices, backends and CPU features as the engine reports them, or None if it cannot tell.

    Runs ``python -m engine.hardware --engine-probe`` so a crash or hang stays in the child.
    """
    try:
        parsed, code = run_json("engine.hardware", ["--engine-probe"], timeout, python)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parsed if code == 0 else None


def engine_view() -> dict[str, Any]:
    """What ``probe_engine`` reports, asked in this process (the engine must load here)."""
    from engine.devices import engine_build, list_devices

    build = engine_build()
    return {
        "backends": list(build.backends),
        "devices": [asdict(d) for d in list_devices()],
        "cpu_features": sorted(name.lower() for name in build.cpu_instruction_sets),
        "hot_experts": build.hot_experts,
    }


def _engine_probe_main() -> None:
    print(json.dumps(engine_view()))


# -- vendor probes ---------------------------------------------------------------------------


def probe_nvml() -> list[GPUInfo] | None:
    """NVIDIA GPUs through nvidia-ml-py, if it is installed and a driver answers."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:
        return None
    gpus = []
    try:
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            name = name.decode() if isinstance(name, bytes) else str(name)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                GPUInfo(
                    name=name,
                    vendor="NVIDIA",
                    memory_total=int(memory.total),
                    memory_free=int(memory.free),
                    bandwidth=gpu_bandwidth(name),
                    source="nvml",
                )
            )
    except Exception:
        return gpus or None
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()
    return gpus


def probe_sysfs(root: Path = Path("/sys/class/drm")) -> list[GPUInfo] | None:
    """GPUs the Linux kernel lists; AMD cards also report their VRAM there."""
    if not root.is_dir():
        return None
    gpus = []
    for card in sorted(root.glob("card[0-9]*")):
        if "-" in card.name:  # connectors such as card0-DP-1
            continue
        device = card / "device"
        vendor = _read(device / "vendor")
        if vendor not in PCI_VENDORS:
            continue
        total = _read_int(device / "mem_info_vram_total")
        used = _read_int(device / "mem_info_vram_used")
        name = _read(device / "product_name") or f"{PCI_VENDORS[vendor]} GPU ({card.name})"
        gpus.append(
            GPUInfo(
                name=name,
                vendor=PCI_VENDORS[vendor],
                memory_total=total,
                memory_free=total - used if total is not None and used is not None else None,
                bandwidth=gpu_bandwidth(name),
                source="sysfs",
            )
        )
    return gpus


def probe_apple(ram_total: int | None) -> list[GPUInfo] | None:
    """Apple Silicon's GPU shares system RAM; its usable share is an estimate."""
    if sys.platform != "darwin" or platform.machine() != "arm64":
        return None
    chip = _sysctl("machdep.cpu.brand_string") or "Apple Silicon"
    usable = int(ram_total * APPLE_GPU_SHARE) if ram_total else None
    return [
        GPUInfo(
            name=chip,
            vendor="Apple",
            memory_total=usable,
            memory_free=usable,
            bandwidth=gpu_bandwidth(chip),
            source="apple",
            unified_memory=True,
            memory_is_estimate=True,
        )
    ]


# -- CPU, RAM, disk --------------------------------------------------------------------------


def cgroup_memory_limit(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The memory limit of this process's cgroup on Linux, if one is set."""
    for candidate in (root / "memory.max", root / "memory" / "memory.limit_in_bytes"):
        text = _read(candidate)
        if text and text != "max" and text.isdigit():
            value = int(text)
            if value < 1 << 60:  # v1 reports "no limit" as a huge number
                return value
    return None


def cpu_model() -> str | None:
    text = _read(Path("/proc/cpuinfo"))
    if text:
        match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
        if match:
            return match.group(1).strip()
    if sys.platform == "darwin":
        return _sysctl("machdep.cpu.brand_string")
    return platform.processor() or None


def cpu_features_from_os() -> tuple[str, ...]:
    text = _read(Path("/proc/cpuinfo")) or ""
    match = re.search(r"^(flags|Features)\s*:\s*(.+)$", text, re.MULTILINE)
    flags = set(match.group(2).split()) if match else set()
    wanted = ("avx", "avx2", "avx512f", "avx512_bf16", "avx512_vnni", "fma", "f16c", "amx_tile",
              "asimd", "sve", "i8mm")  # fmt: skip
    found = [name for name in wanted if name in flags]
    if "asimd" in found:
        found.append("neon")
    if sys.platform == "darwin" and platform.machine() == "arm64":
        found.append("neon")
    return tuple(sorted(set(found)))


def measure_ram_bandwidth(
    seconds: float = 0.5, threads: int | None = None, rounds: int = 5
) -> float | None:
    """Bytes/s read plus written by parallel copies of large arrays (a rough, short probe).

    The median of ``rounds`` probes over ``seconds`` in all: one probe swung between 14 and
    25 GB/s from start to start on the same machine, and the recommendation with it.
    """
    try:
        import numpy as np
    except ImportError:
        return None
    threads = threads or psutil.cpu_count(logical=False) or 1
    size = 64 * 1024 * 1024
    sources = [np.ones(size // 8) for _ in range(threads)]
    targets = [np.empty_like(s) for s in sources]
    for source, target in zip(sources, targets, strict=True):
        np.copyto(target, source)  # touch the pages once, before any timing

    def probe(length: float) -> float | None:
        moved: list[int] = [0] * threads
        deadline = time.perf_counter() + length

        def work(i: int) -> None:
            while time.perf_counter() < deadline:
                np.copyto(targets[i], sources[i])
                moved[i] += 2 * size

        start = time.perf_counter()
        workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        elapsed = time.perf_counter() - start
        total: int = sum(moved)
        return total / elapsed if elapsed > 0 and total else None

    rates = [rate for rate in (probe(seconds / rounds) for _ in range(rounds)) if rate]
    return statistics.median(rates) if rates else None


MACHINE_CACHE_VERSION = 1  # machine.json: a newer one is read as unknown, never rewritten


def cached_ram_bandwidth(cache: Path | None = None) -> float | None:
    """The bandwidth probe, run once per machine and remembered in the app's home."""
    cache = cache or paths.machine_cache_path()
    key = f"{cpu_model()}|{psutil.virtual_memory().total}|{psutil.cpu_count(logical=False)}"
    newer = False
    with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
        stored = json.loads(cache.read_text())
        newer = stored.get("version", 1) > MACHINE_CACHE_VERSION
        if not newer and stored.get("key") == key and stored.get("ram_bandwidth"):
            return float(stored["ram_bandwidth"])
    measured = measure_ram_bandwidth()
    if measured and not newer:  # a newer MoE Chat's cache is left as it is
        with contextlib.suppress(OSError):
            cache.write_text(json.dumps({"version": MACHINE_CACHE_VERSION, "key": key,
                                         "ram_bandwidth": measured}))  # fmt: skip
    return measured


# -- the whole profile -----------------------------------------------------------------------


def detect(
    engine: dict[str, Any] | bool | None = True,
    sysfs_root: Path = Path("/sys/class/drm"),
    measure_bandwidth: bool = True,
    remotes: tuple[RemoteDevice, ...] = (),
    models_dir: Path | None = None,
) -> MachineProfile:
    """Probe this machine.

    Args:
        engine: True to probe the engine in a child process, False to skip it, or an
            already-probed result (None meaning the probe failed).
        sysfs_root: where Linux lists GPUs (tests point it elsewhere).
        measure_bandwidth: run (or reuse) the RAM bandwidth probe.
        remotes: devices other computers lend (engine.rpc); the engine's own view of them
            (RPC devices, all typed GPU) is never counted as this machine's GPUs.
        models_dir: the folder models go to, whose disk ``disk_free`` measures (default:
            the app's default models folder).
    """
    notes: list[str] = []
    memory = psutil.virtual_memory()
    ram_total: int | None = int(memory.total)
    ram_available: int | None = int(memory.available)
    limit = cgroup_memory_limit()
    if limit is not None and ram_total is not None and limit < ram_total:
        notes.append(f"RAM limited to {format_bytes(limit)} by this process's cgroup")
        ram_total = limit
        ram_available = min(ram_available or limit, limit)

    probed = probe_engine() if engine is True else (None if engine is False else engine)
    if engine is not False and probed is None:
        notes.append("the engine could not be asked about its devices (it failed or timed out)")
    engine_gpus = [
        GPUInfo(
            name=d["description"] or d["name"],
            vendor=_vendor_of(d["description"] or d["name"]),
            memory_total=d["memory_total"],
            memory_free=d["memory_free"],
            bandwidth=gpu_bandwidth(d["description"] or ""),
            source="engine",
            engine_device=d["name"],
        )
        for d in (probed or {}).get("devices", [])
        if d["kind"] in ("GPU", "iGPU") and not d["name"].startswith("RPC")
    ]
    vendor_gpus = probe_nvml() or probe_apple(ram_total) or probe_sysfs(sysfs_root) or []
    gpus = list(engine_gpus)
    for gpu in vendor_gpus:
        match = next((g for g in gpus if _same_gpu(g, gpu)), None)
        if match is None:
            gpus.append(gpu)
        elif match.bandwidth is None and gpu.bandwidth is not None:
            gpus[gpus.index(match)] = GPUInfo(**{**asdict(match), "bandwidth": gpu.bandwidth})
    return MachineProfile(
        os=f"{platform.system()} {platform.release()}".strip(),
        cpu_model=cpu_model(),
        physical_cores=psutil.cpu_count(logical=False),
        logical_cores=psutil.cpu_count(logical=True),
        cpu_features=tuple(probed["cpu_features"]) if probed else cpu_features_from_os(),
        ram_total=ram_total,
        ram_available=ram_available,
        ram_bandwidth=cached_ram_bandwidth() if measure_bandwidth else None,
        gpus=tuple(gpus),
        engine_backends=tuple(probed["backends"]) if probed else None,
        disk_free=_disk_free(models_dir or paths.models_dir()),
        notes=tuple(notes),
        remotes=tuple(remotes),
        splits_experts=bool(probed.get("hot_experts")) if probed else False,
    )


def _same_gpu(a: GPUInfo, b: GPUInfo) -> bool:
    if a.vendor != b.vendor:
        return False
    if a.memory_total and b.memory_total:
        return abs(a.memory_total - b.memory_total) < 0.05 * max(a.memory_total, b.memory_total)
    return True


def _vendor_of(name: str) -> str:
    lowered = name.lower()
    for word, vendor in (("nvidia", "NVIDIA"), ("geforce", "NVIDIA"), ("rtx", "NVIDIA"),
                         ("radeon", "AMD"), ("amd", "AMD"), ("intel", "Intel"),
                         ("apple", "Apple"), ("m1", "Apple"), ("m2", "Apple"), ("m3", "Apple"),
                         ("m4", "Apple")):  # fmt: skip
        if word in lowered:
            return vendor
    return "unknown"


def _disk_free(path: Path) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return None


def _read_int(path: Path) -> int | None:
    text = _read(path)
    return int(text) if text and text.isdigit() else None


def _sysctl(name: str) -> str | None:
    try:
        result = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None


if __name__ == "__main__" and sys.argv[1:] == ["--engine-probe"]:
    _engine_probe_main()
