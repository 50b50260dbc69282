"""Downloads against the fake Hub on 127.0.0.1: resolve, fetch, resume, verify, install."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from engine.downloads import (
    Downloader,
    DownloadError,
    DownloadEvent,
    HubConfig,
    NotEnoughSpace,
    OfflineError,
    Release,
    RetryPolicy,
    part_path,
    resolve,
)
from engine.gguf_file import read_gguf
from engine.library import HubSettings, Library
from tests.conftest import GATED_REPO, HUB_REPO, SPLIT_REPO
from tests.helpers.fake_hub import FakeHub, Fault, sha256_of

FAST = RetryPolicy(attempts=3, backoff=0.05, max_backoff=0.2, stall_timeout=1.0)
MiB = 1 << 20


class Events:
    """Collects what the downloader reports, from its thread."""

    def __init__(self) -> None:
        self.items: list[DownloadEvent] = []
        self.lock = threading.Lock()

    def __call__(self, event: DownloadEvent) -> None:
        with self.lock:
            self.items.append(event)

    def states(self) -> list[str]:
        with self.lock:
            return [e.state for e in self.items]

    def wait_for(self, test: Any, timeout: float = 20.0) -> DownloadEvent:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for event in self.items:
                    if test(event):
                        return event
            time.sleep(0.01)
        raise AssertionError(f"no such event; saw {self.states()}")


def hub_config(library: Library) -> HubConfig:
    return HubConfig.from_library(library)


def downloader(library: Library, events: Events, **kwargs: Any) -> Downloader:
    return Downloader(library, events, retry=kwargs.pop("retry", FAST), **kwargs)


def download_all(library: Library, release: Release, events: Events | None = None) -> None:
    """Queue ``release`` and wait until the downloader has nothing left to do."""
    loader = downloader(library, events or Events())
    try:
        loader.enqueue(release)
        assert loader.wait_idle(30)
    finally:
        loader.close()


def single(library: Library) -> Release:
    return resolve(HUB_REPO, "Q8_0", hub_config(library), catalog_id="synthetic", quant="Q8_0")


# -- resolve -----------------------------------------------------------------------------------


def holds_for(seconds: float, check: Callable[[], bool], what_went_wrong: str) -> None:
    """Assert that ``check`` stays true for ``seconds``, looking every 10 ms: that nothing
    happens has no event to wait on, and one look after a sleep misses what comes and goes."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert check(), what_went_wrong
        time.sleep(0.01)


def test_resolve_lists_exact_files_with_hashes_pinned_to_the_commit(
    library: Library, hub: FakeHub, hub_files: dict[str, Path]
) -> None:
    release = single(library)
    assert release.commit == hub.repos[HUB_REPO].commit
    (remote,) = release.files
    assert remote.path == "Synthetic-MoE-Q8_0.gguf"
    assert remote.size == hub_files["single"].stat().st_size
    assert remote.sha256 == sha256_of(hub_files["single"])

    split = resolve(SPLIT_REPO, "Q8_0", hub_config(library))
    assert [f.path for f in split.files] == [
        f"Q8_0/Split-MoE-Q8_0-0000{i}-of-00003.gguf" for i in (1, 2, 3)
    ]
    by_first_part = resolve(SPLIT_REPO, split.files[0].path, hub_config(library))
    assert by_first_part.files == split.files
    catalog_list = resolve(SPLIT_REPO, [f.path for f in split.files], hub_config(library))
    assert catalog_list.files == split.files


def test_resolve_explains_missing_repo_missing_quant_and_gated_repo(
    library: Library, hub: FakeHub
) -> None:
    with pytest.raises(DownloadError, match="There is no repository nobody/Nothing-GGUF"):
        resolve("nobody/Nothing-GGUF", "Q4_K_M", hub_config(library))
    with pytest.raises(DownloadError, match=r"has no GGUF file for Q2_K.*Synthetic-MoE-Q8_0\.gguf"):
        resolve(HUB_REPO, "Q2_K", hub_config(library))
    with pytest.raises(DownloadError, match=r"has no GGUF file for missing\.gguf"):
        resolve(HUB_REPO, "missing.gguf", hub_config(library))

    with pytest.raises(DownloadError, match="gated") as no_token:
        resolve(GATED_REPO, "Q8_0", hub_config(library))
    assert f"{hub.endpoint}/{GATED_REPO}" in no_token.value.hint
    assert "token" in no_token.value.hint

    library.save_token("hf_not_accepted")
    with pytest.raises(DownloadError, match="gated") as wrong_token:
        resolve(GATED_REPO, "Q8_0", hub_config(library))
    assert "no access yet" in wrong_token.value.hint

    hub.tokens.add("hf_accepted")
    library.save_token("hf_accepted")
    assert resolve(GATED_REPO, "Q8_0", hub_config(library)).files[0].path == "Gated-Q8_0.gguf"


# -- download, verify, install -----------------------------------------------------------------


def test_single_file_download_is_verified_and_installed(
    library: Library, hub: FakeHub, hub_files: dict[str, Path]
) -> None:
    events = Events()
    release = single(library)
    loader = downloader(library, events)
    try:
        loader.enqueue(release)
        assert loader.wait_idle(30)
    finally:
        loader.close()
    done = events.wait_for(lambda e: e.state == "done")
    (model,) = library.installed()
    assert model.source == "hub"
    assert (model.repo, model.commit, model.catalog_id, model.quant) == (
        HUB_REPO, hub.repos[HUB_REPO].commit, "synthetic", "Q8_0",
    )  # fmt: skip
    assert done.model_path == model.path
    assert Path(model.path).is_relative_to(library.home / "models")
    assert sha256_of(Path(model.path)) == model.files[0].sha256 == release.files[0].sha256
    assert read_gguf(model.path).n_experts == 8
    assert loader.jobs() == []
    assert not list(library.models_dir.rglob("*.part"))
    running = [e for e in events.items if e.state == "running"]
    assert [e.done for e in running] == sorted(e.done for e in running)
    assert running[-1].total == release.size
    # The manifest on disk says the same after a restart.
    assert Library(library.home).installed() == [model]


def test_split_model_downloads_every_part(library: Library, hub: FakeHub) -> None:
    events = Events()
    release = resolve(SPLIT_REPO, "Q8_0", hub_config(library))
    download_all(library, release, events)
    (model,) = library.installed()
    assert len(model.files) == 3
    assert model.path.endswith("Split-MoE-Q8_0-00001-of-00003.gguf")
    info = read_gguf(model.path)
    assert [str(p) for p in info.parts] == [f.path for f in model.files]
    assert {e.file_count for e in events.items if e.state == "running"} == {3}


def test_dropped_connection_resumes_without_fetching_bytes_again(
    library: Library, hub: FakeHub
) -> None:
    release = single(library)
    size = release.size
    hub.fail_next = [Fault("drop", after=size // 2)]
    download_all(library, release)
    assert len(library.installed()) == 1
    gets = hub.counters.gets("/blobs/")
    assert len(gets) == 2
    assert gets[1][1].startswith("bytes=") and int(gets[1][1][6:-1]) > 0
    # Only what was lost in flight (under one 1 MiB chunk) is served twice.
    assert hub.counters.bytes_served < size + MiB


def test_server_errors_are_retried_with_backoff(library: Library, hub: FakeHub) -> None:
    events = Events()
    release = single(library)
    hub.fail_next = [Fault("status", status=500), Fault("status", status=503)]
    download_all(library, release, events)
    assert len(library.installed()) == 1
    assert events.states().count("retrying") == 2
    assert "retrying in" in next(e.message for e in events.items if e.state == "retrying")


def test_a_server_that_keeps_failing_fails_the_download_and_resume_finishes_it(
    library: Library, hub: FakeHub
) -> None:
    events = Events()
    release = single(library)
    hub.fail_next = [Fault("drop", after=3 * MiB)] + [Fault("status", status=500)] * 4
    loader = downloader(library, events)
    try:
        job = loader.enqueue(release)
        failed = events.wait_for(lambda e: e.state == "failed")
        assert "did not arrive after 3 tries" in failed.message
        assert "Resume" in failed.message
        assert loader.jobs()[0].state == "failed"
        kept = part_path(library.models_dir, release, release.files[0]).stat().st_size
        assert kept >= 2 * MiB
        loader.resume(job.id)
        assert loader.wait_idle(30)
    finally:
        loader.close()
    assert len(library.installed()) == 1
    assert hub.counters.bytes_served < release.size + MiB


def test_stall_watchdog_drops_a_silent_connection_and_resumes(
    library: Library, hub: FakeHub
) -> None:
    release = single(library)
    hub.fail_next = [Fault("stall", after=2 * MiB, seconds=120)]
    # Without the watchdog this would hang for the server's 120 s stall.
    download_all(library, release)
    assert len(library.installed()) == 1
    assert len(hub.counters.gets("/blobs/")) >= 2


def test_wrong_content_is_rejected_and_nothing_installed(library: Library, hub: FakeHub) -> None:
    events = Events()
    release = single(library)
    hub.corrupt.add(release.files[0].sha256)
    loader = downloader(library, events)
    try:
        loader.enqueue(release)
        failed = events.wait_for(lambda e: e.state == "failed")
    finally:
        loader.close()
    assert "arrived damaged" in failed.message
    assert "deleted" in failed.message
    assert library.installed() == []
    assert not [p for p in library.models_dir.rglob("*") if p.is_file()]


def test_pause_keeps_the_partial_file_and_resume_continues_it(
    library: Library, hub: FakeHub
) -> None:
    events = Events()
    release = single(library)
    hub.rate = 4 * MiB
    loader = downloader(library, events)
    part = part_path(library.models_dir, release, release.files[0])
    try:
        job = loader.enqueue(release)
        events.wait_for(lambda e: e.state == "running" and e.done >= 2 * MiB)
        loader.pause(job.id)
        assert loader.wait_idle(10)
        paused_at = part.stat().st_size
        holds_for(0.3, lambda: part.stat().st_size == paused_at, "written to after the pause")
        assert loader.jobs()[0].state == "paused"
        assert Library(library.home).saved_downloads()[0]["state"] == "paused"
        hub.rate = None
        served_before = hub.counters.bytes_served
        loader.resume(job.id)
        assert loader.wait_idle(30)
    finally:
        loader.close()
    assert len(library.installed()) == 1
    assert hub.counters.gets("/blobs/")[-1][1] == f"bytes={paused_at}-"
    assert hub.counters.bytes_served - served_before == release.size - paused_at


def test_cancel_stops_and_deletes_the_partial_file(library: Library, hub: FakeHub) -> None:
    events = Events()
    release = single(library)
    hub.rate = 4 * MiB
    loader = downloader(library, events)
    try:
        job = loader.enqueue(release)
        events.wait_for(lambda e: e.state == "running" and e.done >= MiB)
        loader.cancel(job.id)
        assert loader.jobs() == []
        assert loader.wait_idle(10)
    finally:
        loader.close()
    assert "cancelled" in events.states()
    assert library.installed() == []
    assert not list(library.models_dir.rglob("*.part"))
    assert Library(library.home).saved_downloads() == []


def test_not_enough_disk_space_is_refused_before_any_byte(library: Library, hub: FakeHub) -> None:
    release = single(library)
    loader = downloader(library, Events(), free=lambda directory: 500_000_000)
    try:
        with pytest.raises(NotEnoughSpace, match=r"needs 1\.1 GB .* 500 MB is free"):
            loader.enqueue(release)
    finally:
        loader.close()
    assert loader.jobs() == []
    assert hub.counters.gets("/blobs/") == []


def test_offline_mode_sends_no_request(
    library: Library, hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = single(library)  # resolved while online
    hub.counters.requests.clear()
    library.set_hub(HubSettings(endpoint=hub.endpoint, offline=True))
    with pytest.raises(OfflineError, match="Offline mode is on"):
        resolve(HUB_REPO, "Q8_0", hub_config(library))
    loader = downloader(library, Events())
    try:
        loader.enqueue(release)  # stays queued while offline
        holds_for(0.5, lambda: loader.jobs()[0].state == "queued", "started while offline")
    finally:
        loader.close()
    library.set_hub(HubSettings(endpoint=hub.endpoint))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError, match="HF_HUB_OFFLINE"):
        resolve(HUB_REPO, "Q8_0", hub_config(library))
    assert hub.counters.requests == []


def test_offline_mode_turned_on_mid_download_stops_it_until_turned_off(
    library: Library, hub: FakeHub
) -> None:
    events = Events()
    release = single(library)
    hub.rate = 2 * MiB
    loader = downloader(library, events)
    try:
        loader.enqueue(release)
        events.wait_for(lambda e: e.state == "running" and e.done >= MiB)
        library.set_hub(HubSettings(endpoint=hub.endpoint, offline=True))
        loader.wake()
        deadline = time.monotonic() + 10
        while loader.running():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        requests = len(hub.counters.requests)
        holds_for(0.3, lambda: len(hub.counters.requests) == requests, "asked the Hub offline")
        assert loader.jobs()[0].state == "queued"
        hub.rate = None
        library.set_hub(HubSettings(endpoint=hub.endpoint))
        loader.wake()
        assert loader.wait_idle(30)
    finally:
        loader.close()
    assert len(library.installed()) == 1


# -- surviving a killed app --------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from engine.downloads import Downloader, Release
    from engine.library import Library

    library = Library(Path(sys.argv[1]))
    Downloader(library).enqueue(Release.from_json(json.loads(sys.argv[2])))
    time.sleep(600)
    """
)


def test_a_killed_app_resumes_its_download_on_the_next_start(
    library: Library, hub: FakeHub
) -> None:
    release = single(library)
    hub.rate = 2 * MiB
    part = part_path(library.models_dir, release, release.files[0])
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(library.home), json.dumps(release.to_json())],
        cwd=Path(__file__).parents[2],
    )
    try:
        deadline = time.monotonic() + 30
        while not (part.exists() and part.stat().st_size >= 3 * MiB):
            assert time.monotonic() < deadline and child.poll() is None
            time.sleep(0.02)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    kept = part.stat().st_size
    served_before = hub.counters.bytes_served
    hub.rate = None

    restarted = Library(library.home)
    assert restarted.saved_downloads()[0]["state"] == "queued"
    loader = downloader(restarted, Events())
    try:
        assert loader.wait_idle(30)
    finally:
        loader.close()
    (model,) = restarted.installed()
    assert sha256_of(Path(model.path)) == release.files[0].sha256
    fetched_again = hub.counters.bytes_served - served_before
    assert fetched_again <= release.size - kept
    assert hub.counters.gets("/blobs/")[-1][1] == f"bytes={kept}-"


MANIFEST_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from engine.library import InstalledModel, Library, ModelFile

    library = Library(Path(sys.argv[1]))
    i = 0
    while True:
        i += 1
        files = tuple(ModelFile(f"/models/{i}-{n}.gguf", n) for n in range(200))
        library.install(InstalledModel(f"m{i}", f"model {i}", "linked", files))
    """
)


def test_the_manifest_survives_a_crash_during_its_write(app_home: Path) -> None:
    manifest = app_home / "models.json"
    for round_ in range(6):
        child = subprocess.Popen(
            [sys.executable, "-c", MANIFEST_WRITER, str(app_home)],
            cwd=Path(__file__).parents[2],
        )
        deadline = time.monotonic() + 20
        while not manifest.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05 + 0.07 * round_)
        child.send_signal(signal.SIGKILL)
        child.wait()
        data = json.loads(manifest.read_text())  # never torn
        models = Library(app_home).installed()
        assert len(models) == len(data["installed"]) >= 1
        assert all(len(m.files) == 200 for m in models)
    assert not list(app_home.glob(".models.json.*.tmp"))  # the next start sweeps leftovers


# -- library: import, delete, move, settings ---------------------------------------------------


def test_import_copies_or_links_a_checked_gguf(
    library: Library, hub_files: dict[str, Path], tmp_path: Path
) -> None:
    linked = library.import_file(hub_files["part2"], copy=False)  # any part brings all three
    assert linked.source == "linked" and len(linked.files) == 3
    assert linked.path == str(hub_files["part1"].resolve())
    copied = library.import_file(hub_files["single"], copy=True)
    assert Path(copied.path).parent == library.models_dir / "imported"
    assert sha256_of(Path(copied.path)) == sha256_of(hub_files["single"])

    bad = tmp_path / "notes.gguf"
    bad.write_text("not a model")
    with pytest.raises(Exception, match="not a GGUF"):
        library.import_file(bad, copy=True)
    assert len(library.installed()) == 2

    library.remove(linked.id)  # the user's own files are never deleted
    assert hub_files["part1"].exists()
    library.remove(copied.id)
    assert not Path(copied.path).exists()
    assert library.installed() == []


def test_delete_and_move_models_directory(library: Library, hub: FakeHub, tmp_path: Path) -> None:
    download_all(library, resolve(SPLIT_REPO, "Q8_0", hub_config(library)))
    (model,) = library.installed()
    old_root = library.models_dir
    library.move_models_dir(tmp_path / "elsewhere")
    (moved,) = Library(library.home).installed()
    assert all(Path(f.path).is_relative_to(tmp_path / "elsewhere") for f in moved.files)
    assert all(sha256_of(Path(f.path)) == f.sha256 for f in moved.files)
    assert not any(Path(f.path).exists() for f in model.files)
    assert not (old_root / "moe-chat-test").exists()
    assert read_gguf(moved.path).parts[2] == Path(moved.files[2].path)

    library.remove(moved.id)
    assert not any(Path(f.path).exists() for f in moved.files)
    assert not (tmp_path / "elsewhere" / "moe-chat-test").exists()
    assert Library(library.home).installed() == []


def test_hub_settings_token_and_environment(
    library: Library, hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    library.save_token("hf_secret_value")
    assert os.stat(library.token_file).st_mode & 0o777 == 0o600
    config = hub_config(library)
    assert config.token == "hf_secret_value"
    assert "hf_secret_value" not in repr(config)
    assert "hf_secret_value" not in library.file.read_text()
    library.save_token("")
    assert not library.token_file.exists()

    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    monkeypatch.setattr("huggingface_hub.get_token", lambda: os.environ.get("HF_TOKEN"))
    assert hub_config(library).token == "hf_from_env"
    library.set_hub(HubSettings())
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint + "/")
    assert hub_config(library).endpoint == hub.endpoint


def test_each_library_keeps_its_models_under_its_own_home(tmp_path: Path) -> None:
    # A library opened on another home (a benchmark, a portable install) must not write
    # into the user's default models folder.
    other = Library(tmp_path / "other")
    assert other.models_dir == tmp_path / "other" / "models"
