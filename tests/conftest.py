"""Shared fixtures: an isolated app home, the test models, and the RPC second device."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
        yield add_rpc_server(endpoint)[0].name


# -- the fake Hugging Face Hub -----------------------------------------------------------------

HUB_REPO = "moe-chat-test/Synthetic-MoE-GGUF"
SPLIT_REPO = "moe-chat-test/Split-MoE-GGUF"
GATED_REPO = "moe-chat-test/Gated-MoE-GGUF"


@pytest.fixture(scope="session")
def hub_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A ~14 MB synthetic MoE (big enough to cut mid-file) and the same model in 3 parts."""
    from engine.synthetic import SyntheticSpec
    from tests.helpers.models import copy_gguf

    folder = tmp_path_factory.mktemp("hub")
    spec = SyntheticSpec(n_layers=4, n_embd=256, expert_ffn=256, n_head=4, head_dim=64)
    single = build_synthetic_moe(folder / "Synthetic-MoE-Q8_0.gguf", spec)
    copy_gguf(single, folder / "Split-MoE-Q8_0.gguf", split_max_tensors=20)
    parts = sorted(folder.glob("Split-MoE-Q8_0-0000*-of-*.gguf"))
    assert len(parts) == 3, parts
    return {"single": single, **{f"part{i}": p for i, p in enumerate(parts, 1)}}


@pytest.fixture
def hub(hub_files: dict[str, Path]) -> Iterator[Any]:
    """A running fake Hub with a single-file repo, a split repo (in a quant folder) and a gated
    repo, and no users but the tests."""
    from tests.helpers.fake_hub import running_hub

    with running_hub() as fake:
        fake.add_repo(HUB_REPO, {"Synthetic-MoE-Q8_0.gguf": hub_files["single"],
                                 "Synthetic-MoE-F16.gguf": hub_files["part3"]})  # fmt: skip
        fake.add_repo(
            SPLIT_REPO, {f"Q8_0/{hub_files[f'part{i}'].name}": hub_files[f"part{i}"]
                         for i in (1, 2, 3)}
        )  # fmt: skip
        fake.add_repo(GATED_REPO, {"Gated-Q8_0.gguf": hub_files["single"]}, gated=True)
        yield fake


@pytest.fixture
def library(app_home: Path, hub: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The app's library pointed at the fake Hub, with no token or offline flag from outside."""
    from engine.library import HubSettings, Library

    for name in ("HF_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    lib = Library(app_home)
    lib.set_hub(HubSettings(endpoint=hub.endpoint))
    return lib
