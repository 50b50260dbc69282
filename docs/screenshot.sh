#!/usr/bin/env bash
# Takes the screenshots in docs/ on a 1366x768 screen (a common laptop): the model manager
# from the real app under Xvfb (first run, then downloading from a local test Hub), then the
# chat in light and dark and the Experts panel (docs/screenshots.py, the real windows).
# Needs Debian's xvfb, xdotool and imagemagick, and the README's test command run first.
set -euo pipefail
cd "$(dirname "$0")/.."
home=$(mktemp -d)
model=$(.venv/bin/python -c 'from tests.helpers.models import smollm2_path; print(smollm2_path())')
Xvfb :95 -screen 0 1366x768x24 >/dev/null 2>&1 &
xvfb=$!
app=
trap 'kill $app $xvfb 2>/dev/null; rm -rf "$home"' EXIT
sleep 1
export DISPLAY=:95 MOE_CHAT_HOME="$home" QT_QPA_PLATFORM=xcb

# The model manager as a new user first sees it (no model chosen yet), in the dark
# appearance (Settings → Appearance).
.venv/bin/python -c 'from engine.store import Store; Store().set_setting("theme", "dark")'
.venv/bin/moe-chat >/dev/null 2>&1 &
app=$!
xdotool search --sync --onlyvisible --name '^Models$' >/dev/null
sleep "${PROBE_DELAY:-4}"  # machine detection and planning
import -window root docs/model-manager-dark.png
echo "wrote docs/model-manager-dark.png"

# The model manager downloading: a fake Hub on 127.0.0.1 serves SmolLM2 under a catalog
# repository's name (limited to 8 MB/s so progress shows); a download queued before start,
# as if the app had been closed mid-download, resume on their own.
kill $app 2>/dev/null || true
rm -rf "$home"; mkdir -p "$home"
exec 3> >(.venv/bin/python -m tests.helpers.fake_hub 8000000 \
  bartowski/granite-3.1-1b-a400m-instruct-GGUF "granite-3.1-1b-a400m-instruct-Q8_0.gguf=$model" \
  > "$home/endpoint")
sleep 2
.venv/bin/python - "$(cat "$home/endpoint")" <<'PY'
import sys
from engine.downloads import Downloader, HubConfig, resolve
from engine.library import HubSettings, Library
library = Library()
library.set_hub(HubSettings(endpoint=sys.argv[1]))
hub = HubConfig.from_library(library)
queue = Downloader(library, start=False)
repo = "bartowski/granite-3.1-1b-a400m-instruct-GGUF"
queue.enqueue(resolve(repo, "Q8_0", hub, name="IBM Granite-3.1-1B-A400M-Instruct Q8_0",
                      catalog_id="granite-3.1-1b-a400m-instruct", quant="Q8_0"))
PY
.venv/bin/moe-chat >/dev/null 2>&1 &
app=$!
xdotool search --sync --onlyvisible --name '^Models$' >/dev/null
sleep "${PROBE_DELAY:-4}"
import -window root docs/model-manager.png
echo "wrote docs/model-manager.png (downloading)"
exec 3>&-

kill $app 2>/dev/null || true
rm -rf "$home"; mkdir -p "$home"
.venv/bin/python docs/screenshots.py
