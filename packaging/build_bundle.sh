#!/usr/bin/env bash
# Build the one-folder app bundle with PyInstaller.
#
#   packaging/build_bundle.sh [cpu|metal|cuda|vulkan]   -> build/dist-<variant>/moe-chat/
#                                                    (macOS: also "MoE Chat.app")
#
# A virtual environment of its own (build/venv-<variant>) holds the app, its runtime
# dependencies, the engine wheel of that variant (packaging/build_engine.sh) and PyInstaller;
# no test tools. The engine is the hot-experts build (packaging/HOT-EXPERTS.md): without a
# split asked for at load it runs llama.cpp's own code, and the app can use it to put each
# layer's hottest experts on the GPU. Runs on Linux, macOS and Windows (Git Bash); Python >= 3.11.
set -euo pipefail
cd "$(dirname "$0")/.."

variant="${1:-cpu}"
python="${PYTHON:-python3}"
bash packaging/build_engine.sh "$variant" hot
wheel="$(ls build/engine/"$variant"-hot/llama_cpp_python-*.whl)"

venv="build/venv-$variant"
[[ -d "$venv" ]] || "$python" -m venv "$venv"
bin="$venv/bin"; [[ -d "$bin" ]] || bin="$venv/Scripts"  # Windows venvs use Scripts/
vpython="$bin/python"
"$vpython" -m pip install --quiet --upgrade pip
# The engine first, from the wheel built for this variant, so that installing the app does
# not build llama-cpp-python again from source (or take a cached wheel of other flags).
"$vpython" -m pip install --quiet --force-reinstall --no-deps "$wheel"
"$vpython" -m pip install --quiet ".[package,nvidia]"
"$vpython" -m pip install --quiet --force-reinstall --no-deps .  # this tree's code, always

"$vpython" packaging/make_icons.py build/icons
started=$SECONDS
# From build/, so that the source tree's own *.egg-info (left by `pip install -e`) is not
# what the bundle reads its version from.
root="$(pwd)"
(cd build && "$root/$vpython" -m PyInstaller --noconfirm --clean --log-level WARN \
  --distpath "$root/build/dist-$variant" --workpath "$root/build/work-$variant" \
  "$root/packaging/moe-chat.spec")
echo "bundle $variant: built in $((SECONDS - started)) s: build/dist-$variant/moe-chat"
