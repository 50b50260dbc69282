"""``moe-chat worker`` and the client checks around the engine's RPC backend, on loopback."""

from __future__ import annotations

import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from engine.placement import Placement
from engine.rpc import (
    DEFAULT_PORT,
    PROTOCOL,
    USER_TIMEOUT_MS,
    Endpoint,
    WorkerError,
    check_worker,
    connections_to,
    fetch_card,
    hello,
    keep_alive,
    listen_address,
    parse_endpoint,
)
from engine.session import Session
from tests.helpers.rpc_server import (
    old_protocol_server,
    running_worker,
    silent_server,
    start_worker,
    stop_worker,
)


def test_endpoints_are_parsed_with_a_default_port_and_ipv6_is_refused() -> None:
    assert parse_endpoint(" 127.0.0.2:6000 ") == Endpoint("127.0.0.2", 6000)
    assert parse_endpoint("desktop.local") == Endpoint("desktop.local", DEFAULT_PORT)
    assert str(Endpoint("127.0.0.1", 1)) == "127.0.0.1:1"
    for bad, words in (("", "address"), ("[::1]:50052", "IPv6"), ("host:http", "port"),
                       ("host:70000", "port"), ("a b:1", "host name")):  # fmt: skip
        with pytest.raises(WorkerError, match=words):
            parse_endpoint(bad)


def test_a_worker_listens_on_loopback_or_a_private_network_unless_told_otherwise() -> None:
    assert listen_address("127.0.0.1") == "127.0.0.1"
    assert listen_address("localhost") == "127.0.0.1"
    assert listen_address("192.168.1.20") == "192.168.1.20"  # checked, not bound
    assert listen_address("10.0.0.5") == "10.0.0.5"
    assert listen_address("100.101.102.103") == "100.101.102.103"  # shared space (VPNs)
    with pytest.raises(WorkerError, match="every network"):
        listen_address("0.0.0.0")
    with pytest.raises(WorkerError, match="public address"):
        listen_address("8.8.8.8")
    assert listen_address("0.0.0.0", allow_any=True) == "0.0.0.0"
    assert listen_address("8.8.8.8", allow_any=True) == "8.8.8.8"
    with pytest.raises(WorkerError, match="not an address"):
        listen_address("no-such-host.invalid")


def test_the_worker_refuses_every_interface_without_the_flag_and_starts_nothing() -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "app.main", "worker", "--host", "0.0.0.0", "--port", "50999"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "every network" in result.stdout and "--allow-any-address" in result.stdout
    with socket.socket() as probe:  # nothing was left listening
        probe.bind(("127.0.0.1", 50999))


def test_a_worker_says_what_it_serves_and_warns_then_stops_cleanly_on_sigint() -> None:
    worker = start_worker("127.0.0.2")
    try:
        text = worker.text
        assert "CPU:" in text and "lends" in text
        assert f"Address: {worker.endpoint}" in text
        assert "no authentication and no encryption" in text
        version = hello(parse_endpoint(worker.endpoint))
        assert version == PROTOCOL  # the engine speaks what engine.rpc expects
        card = fetch_card(parse_endpoint(worker.endpoint))
        assert card is not None and card.protocol == PROTOCOL
        (device,) = card.devices
        assert device["kind"] == "CPU" and 0 < device["memory_free"] <= device["memory_total"]
    finally:
        worker.process.send_signal(signal.SIGINT)
        code = worker.process.wait(15)
        stop_worker(worker)
    assert code == 0 and "Worker stopped." in worker.text
    with socket.socket() as probe:  # the port is free again
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.2", int(worker.endpoint.rsplit(":", 1)[1])))


def test_sigterm_stops_a_worker_too() -> None:
    worker = start_worker()
    worker.process.send_signal(signal.SIGTERM)
    code = worker.process.wait(15)
    stop_worker(worker)
    assert code == 0 and "Worker stopped." in worker.text


def test_a_port_in_use_is_a_sentence_not_a_crash() -> None:
    with running_worker() as first:
        port = first.endpoint.rsplit(":", 1)[1]
        import subprocess
        import sys

        result = subprocess.run(
            [sys.executable, "-m", "app.main", "worker", "--port", port, "--device", "CPU"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 2 and "is taken" in result.stdout


def test_the_link_test_reports_devices_round_trip_and_transfer_rate() -> None:
    with running_worker("127.0.0.2") as worker:
        report = check_worker(worker.endpoint)
    assert report.protocol == PROTOCOL and report.version is not None
    (device,) = report.devices
    assert device.kind == "CPU" and device.endpoint == worker.endpoint
    assert device.engine_device == f"RPC0[{worker.endpoint}]"
    assert device.memory_free and device.bandwidth
    assert 0 < report.latency_s < 0.5
    assert report.upload_bps > 1e6 and report.download_bps > 1e6
    assert "round trip" in report.summary()


def test_a_silent_worker_times_out_instead_of_hanging() -> None:
    with silent_server() as endpoint:
        started = time.monotonic()
        with pytest.raises(WorkerError, match=r"did not answer within 0\.5 s"):
            hello(parse_endpoint(endpoint), timeout=0.5)
        assert time.monotonic() - started < 3
        with pytest.raises(WorkerError, match="did not answer"):
            check_worker(endpoint)


def test_a_worker_of_another_protocol_version_is_refused_with_the_reason() -> None:
    refused = pytest.raises(WorkerError, match=r"incompatible engine: RPC protocol 6\.1\.0")
    with old_protocol_server((6, 1, 0)) as endpoint, refused:
        hello(parse_endpoint(endpoint))
    newer = (PROTOCOL[0], PROTOCOL[1] + 1, 0)
    with old_protocol_server(newer) as endpoint, pytest.raises(WorkerError, match="incompatible"):
        hello(parse_endpoint(endpoint))


def test_an_unreachable_worker_says_so() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening
        with pytest.raises(WorkerError, match="could not be reached"):
            hello(Endpoint("127.0.0.1", port), timeout=1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="found through /proc (Linux)")
def test_the_engines_connection_to_a_worker_in_use_gets_keepalive_and_a_user_timeout(
    synthetic_model: Path, rpc_device: str
) -> None:
    """So that a worker whose computer vanishes mid-reply ends the engine's process in
    seconds (the model host then names it) instead of leaving the reply hanging."""
    endpoint = rpc_device[rpc_device.index("[") + 1 : -1]
    with Session(synthetic_model, Placement(n_gpu_layers=-1, use_mmap=False)):
        assert keep_alive([endpoint]) >= 1
        options = [
            (
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
            )
            for sock in connections_to([endpoint])
        ]
    assert options and all(alive and timeout == USER_TIMEOUT_MS for alive, timeout in options)
    assert keep_alive(["127.0.0.3:1"]) == 0  # no connection there: nothing touched
