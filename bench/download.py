"""Benchmark: our downloader vs plain curl, same file, same local Hub, alternating in one run.

Run from the repository root, after the README's test command installed everything:

    .venv/bin/python bench/download.py [--size-mb 1024] [--rounds 3]

Serves a file of random bytes (named like a GGUF) from the test suite's fake Hub on
127.0.0.1 (API on one port, CDN on another, as the real Hub redirects), then alternately:
- ours: resolve + Downloader (huggingface-hub's http_get into our partial file, sha256 while
  writing, atomic install into the manifest), from the first request to the installed model;
- curl: ``curl -L`` of the same resolve URL (following the same redirect) to a file.
Each round starts with the file out of both destinations. Prints MB/s per run, the ratio of
medians (target: >= 0.9), and what a separate verification pass would cost: hashing the
file alone, the work our downloader does while the bytes arrive.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.downloads import Downloader, HubConfig, resolve
from engine.library import HubSettings, Library
from tests.helpers.fake_hub import running_hub

REPO = "bench/Random-GGUF"
FILE = "random-Q8_0.gguf"


def make_file(path: Path, size: int) -> None:
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for i in range(size >> 20):
            f.write(block[i % 7 :] + block[: i % 7])  # distinct blocks, cheap to make


def ours(home: Path, endpoint: str) -> float:
    library = Library(home)
    library.set_hub(HubSettings(endpoint=endpoint))
    start = time.perf_counter()
    release = resolve(REPO, FILE, HubConfig.from_library(library))
    loader = Downloader(library)
    try:
        loader.enqueue(release)
        if not loader.wait_idle(3600) or not library.installed():
            raise SystemExit(f"download failed: {loader.jobs()}")
    finally:
        loader.close()
    return time.perf_counter() - start


def curl(url: str, out: Path) -> float:
    start = time.perf_counter()
    subprocess.run(["curl", "-sSfL", "-o", str(out), url], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("curl") is None:
        raise SystemExit("curl is not installed")
    work = Path(tempfile.mkdtemp(prefix="bench-download-"))
    try:
        source = work / FILE
        make_file(source, args.size_mb << 20)
        size = source.stat().st_size
        with running_hub() as hub:
            hub.add_repo(REPO, {FILE: source})
            url = f"{hub.endpoint}/{REPO}/resolve/main/{FILE}"
            speeds: dict[str, list[float]] = {"ours": [], "curl": []}
            for round_ in range(args.rounds):
                for name in ("ours", "curl") if round_ % 2 == 0 else ("curl", "ours"):
                    home = work / f"home-{name}"
                    shutil.rmtree(home, ignore_errors=True)
                    home.mkdir()
                    target = home / FILE
                    seconds = ours(home, hub.endpoint) if name == "ours" else curl(url, target)
                    speeds[name].append(size / seconds / 1e6)
                    print(f"round {round_ + 1} {name:4s}: {size / seconds / 1e6:7.0f} MB/s")
            shutil.rmtree(work / "home-curl", ignore_errors=True)
            start = time.perf_counter()
            digest = hashlib.sha256()
            with open(source, "rb") as f:
                while block := f.read(8 << 20):
                    digest.update(block)
            hash_s = time.perf_counter() - start
            assert digest.hexdigest() == hub.repos[REPO].files[FILE].sha256
        ours_mb, curl_mb = statistics.median(speeds["ours"]), statistics.median(speeds["curl"])
        print(f"\n{size / 1e9:.2f} GB over 127.0.0.1, {args.rounds} rounds alternating")
        print(f"median: ours {ours_mb:.0f} MB/s, curl {curl_mb:.0f} MB/s")
        print(f"ratio ours/curl: {ours_mb / curl_mb:.2f} (target >= 0.90)")
        print(
            f"sha256 of the file alone: {hash_s:.2f} s ({size / hash_s / 1e9:.2f} GB/s), "
            f"{hash_s / (size / (ours_mb * 1e6)):.0%} of our download time; ours hashes while "
            "writing, so a separate verification pass would add this after the download."
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
