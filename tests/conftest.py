"""Shared fixtures: an isolated app home, the test models, and the RPC second device."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from engine.synthetic import build_synthetic_moe
from tests.helpers.models import build_upcycled_moe, smollm2_path


@pytest.fixture(autouse=True)
def app_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own MOE_CHAT_HOME, so no test sees a real user's data."""
    home = tmp_path / "home"
    monkeypatch.setenv("MOE_CHAT_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def synthetic_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_synthetic_moe(tmp_path_factory.mktemp("models") / "synthetic-moe.gguf")


@pytest.fixture(scope="session")
def smollm2() -> Path:
    return smollm2_path()


@pytest.fixture(scope="session")
def upcycled_moe(tmp_path_factory: pytest.TempPathFactory, smollm2: Path) -> Path:
    """SmolLM2 with each FFN turned into 4 identical experts, 2 used per token."""
    return build_upcycled_moe(smollm2, tmp_path_factory.mktemp("models") / "smollm2-moe4.gguf")


@pytest.fixture(scope="session")
def rpc_device() -> Iterator[str]:
    """A second device (type GPU) served over loopback RPC; yields its engine device name.

    Registration is process-wide and cannot be undone, so the server lives for the whole
    test session.
    """
    from engine.devices import add_rpc_server
    from tests.helpers.rpc_server import running_server

    with running_server() as endpoint:
        device = add_rpc_server(endpoint)
        yield device.name
