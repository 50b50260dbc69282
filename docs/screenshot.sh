#!/usr/bin/env bash
# Takes docs/chat-window.png: the real app under Xvfb, SmolLM2 loaded, a reply streaming.
# Needs Debian's xvfb, xdotool and imagemagick, and the README's test command run first.
set -euo pipefail
cd "$(dirname "$0")/.."
home=$(mktemp -d)
model=$(.venv/bin/python -c 'from tests.helpers.models import smollm2_path; print(smollm2_path())')
Xvfb :95 -screen 0 1280x860x24 >/dev/null 2>&1 &
xvfb=$!
trap 'kill $app $xvfb 2>/dev/null; rm -rf "$home"' EXIT
sleep 1
export DISPLAY=:95 MOE_CHAT_HOME="$home" QT_QPA_PLATFORM=xcb
.venv/bin/moe-chat "$model" >/dev/null 2>&1 &
app=$!
window=$(xdotool search --sync --onlyvisible --name '^MoE Chat$' | head -1)
xdotool windowsize "$window" 1200 800 windowmove "$window" 0 0
sleep 4  # model load
xdotool windowfocus --sync "$window"
xdotool type --delay 20 "What is the capital of France?"
xdotool key Return
sleep 3
xdotool type --delay 20 "Write a long story about a lighthouse keeper and the sea."
xdotool key Return
sleep "${SHOT_DELAY:-0.8}"  # mid-reply
import -window root -crop 1200x800+0+0 docs/chat-window.png
echo "wrote docs/chat-window.png"

# The model manager as a new user first sees it (no model chosen yet).
kill $app 2>/dev/null || true
rm -rf "$home"; mkdir -p "$home"
.venv/bin/moe-chat >/dev/null 2>&1 &
app=$!
xdotool search --sync --onlyvisible --name '^Models$' >/dev/null
sleep "${PROBE_DELAY:-4}"  # machine detection and planning
import -window root -crop 1040x720+0+0 docs/model-manager.png
echo "wrote docs/model-manager.png"
