"""Benchmark: our downloader vs plain curl, same file, same local Hub, alternating in one run.

Run from the repository root, after the README's test command installed everything:

    .venv/bin/python bench/download.py [--size-mb 1024] [--rounds 3]

Serves a file of random bytes (named like a GGUF) from the test suite's fake Hub on
127.0.0.1 (API on one port, CDN on another, as the real Hub redirects), in a process of its
own so that neither client shares a Python interpreter with the server, then alternately:
- ours: resolve + Downloader (huggingface-hub's HTTP session into our partial file, sha256 while
  writing, atomic install into the manifest), from the first request to the installed model;
- curl: ``curl -L`` of the same resolve URL (following the same redirect) to a file.
Each run starts with an empty destination and after an ``os.sync()``, so one run's
writeback does not throttle the next. Prints MB/s per run, the ratio of
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


def compare(source: Path, rate: float, rounds: int, work: Path) -> dict[str, list[float]]:
    """MB/s of each contender, alternating, from a fake Hub limited to ``rate`` bytes/s."""
    size = source.stat().st_size
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.fake_hub", str(rate), REPO, f"{FILE}={source}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert server.stdout is not None and server.stdin is not None
    try:
        endpoint = server.stdout.readline().strip()
        url = f"{endpoint}/{REPO}/resolve/main/{FILE}"
        curl(url, work / "warm-up")  # page cache and server warm for both contenders
        (work / "warm-up").unlink()
        speeds: dict[str, list[float]] = {"ours": [], "curl": []}
        for round_ in range(rounds):
            for name in ("ours", "curl") if round_ % 2 == 0 else ("curl", "ours"):
                home = work / f"home-{name}"
                shutil.rmtree(home, ignore_errors=True)
                home.mkdir()
                os.sync()  # earlier runs' dirty pages must not throttle this run's writes
                seconds = ours(home, endpoint) if name == "ours" else curl(url, home / FILE)
                speeds[name].append(size / seconds / 1e6)
                print(f"  round {round_ + 1} {name:4s}: {size / seconds / 1e6:7.0f} MB/s")
        assert Library(work / "home-ours").installed(), "ours installed nothing"
    finally:
        server.stdin.close()
        server.wait()
    return speeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--links", default="0,125", help="server rates in MB/s, 0 = unlimited (default 0,125)"
    )
    args = parser.parse_args()
    if shutil.which("curl") is None:
        raise SystemExit("curl is not installed")
    work = Path(tempfile.mkdtemp(prefix="bench-download-"))
    try:
        source = work / FILE
        make_file(source, args.size_mb << 20)
        size = source.stat().st_size
        start = time.perf_counter()
        with open(source, "rb") as f:
            while block := f.read(8 << 20):
                hashlib.sha256(block)
        hash_s = time.perf_counter() - start
        results = []
        for link in (float(x) for x in args.links.split(",")):
            print(f"link {'unlimited (loopback)' if not link else f'{link:.0f} MB/s'}:")
            speeds = compare(source, link * 1e6, args.rounds, work)
            results.append((link, statistics.median(speeds["ours"]),
                            statistics.median(speeds["curl"])))  # fmt: skip
        print(f"\n{size / 1e9:.2f} GB from 127.0.0.1, {args.rounds} rounds alternating, medians")
        print(f"{'link':>12s} {'ours MB/s':>10s} {'curl MB/s':>10s} {'ours/curl':>10s}")
        for link, ours_mb, curl_mb in results:
            name = f"{link:.0f} MB/s" if link else "unlimited"
            print(f"{name:>12s} {ours_mb:10.0f} {curl_mb:10.0f} {ours_mb / curl_mb:10.2f}")
        print(
            f"sha256 of the file alone: {hash_s:.2f} s ({size / hash_s / 1e9:.2f} GB/s). Ours "
            "hashes while it writes, so verifying costs no pass after the download; a separate "
            "pass would add this time."
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
