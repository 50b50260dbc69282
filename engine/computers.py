"""The other computers whose memory the app may use (Settings → Computers), remembered.

Each is a ``moe-chat worker`` address with what its last Test measured. Checking whether
one is up reads its card (``engine.rpc.fetch_card``, a short timeout) and never touches its
RPC port, which serves one client at a time: a worker busy with the loaded model still
answers. Nothing here blocks for long: an unreachable computer is shown as such.
"""

from __future__ import annotations

import contextlib
import socket
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

from engine.hardware import RemoteDevice
from engine.rpc import WorkerReport, fetch_card, parse_endpoint, remote_devices
from engine.store import Store

COMPUTERS_KEY = "computers"
RAM_LIMIT_KEY = "ram_limit_bytes"  # at most this much of this computer's RAM for a model
CHECK_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Computer:
    endpoint: str  # host:port
    enabled: bool = True  # offered to the planner when a model loads
    devices: tuple[RemoteDevice, ...] = ()  # as the last Test (or check) saw them
    tested_at: float = 0.0  # when the link was last measured (0: never)
    version: str | None = None  # its MoE Chat version; None: unknown or not MoE Chat

    @property
    def tested(self) -> bool:
        return self.tested_at > 0

    def with_report(self, report: WorkerReport) -> Computer:
        return replace(self, devices=report.devices, tested_at=time.time(),
                       version=report.version)  # fmt: skip


def load_computers(store: Store) -> list[Computer]:
    """The remembered computers, in the order they were added (unreadable entries dropped)."""
    computers = []
    for raw in store.get_setting(COMPUTERS_KEY, []) or []:
        with contextlib.suppress(KeyError, TypeError, ValueError):
            computers.append(
                Computer(
                    endpoint=str(raw["endpoint"]),
                    enabled=bool(raw.get("enabled", True)),
                    devices=tuple(RemoteDevice(**d) for d in raw.get("devices", ())),
                    tested_at=float(raw.get("tested_at", 0.0)),
                    version=raw.get("version"),
                )
            )
    return computers


def save_computers(store: Store, computers: list[Computer]) -> None:
    store.set_setting(COMPUTERS_KEY, [_plain(c) for c in computers])


def _plain(computer: Computer) -> dict[str, Any]:
    data = asdict(computer)
    data["devices"] = [asdict(d) for d in computer.devices]
    return data


@dataclass(frozen=True)
class Status:
    computer: Computer  # with the devices' memory as it is now, when the card answered
    reachable: bool
    message: str  # "up", "up (not a MoE Chat worker)", or why not


def check(computer: Computer, timeout: float = CHECK_TIMEOUT_S) -> Status:
    """Is it up, and how much memory does it lend now? (Seconds at most; no RPC traffic.)"""
    endpoint = parse_endpoint(computer.endpoint)
    card = fetch_card(endpoint, timeout)
    if card is not None:
        fresh = remote_devices(endpoint, card, [(0, 0)] * len(card.devices))
        measured = {d.index: d for d in computer.devices}
        devices = tuple(
            replace(d, latency_s=measured[d.index].latency_s,
                    transfer_bps=measured[d.index].transfer_bps)
            if d.index in measured else d
            for d in fresh
        )  # fmt: skip
        return Status(replace(computer, devices=devices, version=card.version), True, "up")
    try:
        with socket.create_connection((endpoint.host, endpoint.port), timeout):
            pass
    except OSError as exc:
        return Status(computer, False, f"unreachable ({exc.strerror or exc})")
    return Status(computer, True, "up (not a MoE Chat worker: its devices are not described)")


def lent_devices(statuses: list[Status]) -> tuple[RemoteDevice, ...]:
    """The devices of the enabled computers that are up, for the machine profile."""
    return tuple(
        device for s in statuses if s.reachable and s.computer.enabled
        for device in s.computer.devices
    )  # fmt: skip


def enabled_endpoints(computers: list[Computer]) -> tuple[str, ...]:
    return tuple(c.endpoint for c in computers if c.enabled)


def ram_limit(store: Store) -> int | None:
    """The user's cap on this computer's RAM for a model (None: all that is free)."""
    value = store.get_setting(RAM_LIMIT_KEY)
    return int(value) if isinstance(value, (int, float)) and value > 0 else None
