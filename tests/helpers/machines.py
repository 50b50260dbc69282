"""Fixed machine profiles for planner tests (inputs, not probes)."""

from __future__ import annotations

from engine.hardware import GPUInfo, MachineProfile

GIB = 1 << 30


def machine(
    ram_total_gib: float,
    ram_available_gib: float,
    gpus: tuple[GPUInfo, ...] = (),
    cores: int = 8,
    ram_gbs: float = 60,
) -> MachineProfile:
    return MachineProfile(
        os="Linux",
        cpu_model="Test CPU",
        physical_cores=cores,
        logical_cores=cores * 2,
        cpu_features=("avx2",),
        ram_total=int(ram_total_gib * GIB),
        ram_available=int(ram_available_gib * GIB),
        ram_bandwidth=ram_gbs * 1e9,
        gpus=gpus,
        engine_backends=("CUDA", "CPU") if gpus else ("CPU",),
        disk_free=500 * GIB,
    )


def gpu(name: str, free_gib: float, device: str = "CUDA0", gbs: float = 300) -> GPUInfo:
    return GPUInfo(
        name=name,
        vendor="NVIDIA",
        memory_total=int((free_gib + 0.5) * GIB),
        memory_free=int(free_gib * GIB),
        bandwidth=gbs * 1e9,
        source="engine",
        engine_device=device,
    )


LAPTOP_16 = machine(16, 13)
GPU_8_RAM_32 = machine(32, 26, (gpu("NVIDIA GeForce RTX 4060", 7.5, gbs=272),))
GPU_24_RAM_64 = machine(64, 56, (gpu("NVIDIA GeForce RTX 4090", 23, gbs=1008),), cores=16)
APPLE_16 = machine(
    16,
    13,
    (
        GPUInfo(
            name="Apple M2",
            vendor="Apple",
            memory_total=12 * GIB,
            memory_free=12 * GIB,
            bandwidth=100e9,
            source="engine",
            engine_device="MTL0",
            unified_memory=True,
            memory_is_estimate=True,
        ),
    ),
    ram_gbs=100,
)
TWO_GPUS_12_8 = machine(
    64,
    56,
    (
        gpu("NVIDIA GeForce RTX 3060", 11.5, "CUDA0", 360),
        gpu("NVIDIA GeForce RTX 4060", 7.5, "CUDA1", 272),
    ),
)
PROFILES = {
    "laptop-16": LAPTOP_16,
    "gpu-8-ram-32": GPU_8_RAM_32,
    "gpu-24-ram-64": GPU_24_RAM_64,
    "apple-16": APPLE_16,
    "two-gpus-12-8": TWO_GPUS_12_8,
}
