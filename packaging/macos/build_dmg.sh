#!/usr/bin/env bash
# macOS: "MoE Chat.app" in a .dmg, on a Mac (Apple Silicon), with the Metal engine.
#
#   packaging/macos/build_dmg.sh [metal|cpu]   -> dist/MoE-Chat-<version>-macos-arm64[-cpu].dmg
#
# PyInstaller's BUNDLE step (packaging/moe-chat.spec) makes the .app and signs it ad hoc;
# hdiutil makes the disk image with an Applications link to drag it onto. The app is not
# notarized: on first start the user opens it with right-click → Open (README, Install).
set -euo pipefail
cd "$(dirname "$0")/../.."

variant="${1:-metal}"
[[ "$(uname)" == Darwin ]] || { echo "build the macOS app on macOS" >&2; exit 2; }
python="${PYTHON:-python3}"
version="$("$python" packaging/project_info.py version)"
bash packaging/build_bundle.sh "$variant"
app="build/dist-$variant/MoE Chat.app"
[[ -d "$app" ]] || { echo "PyInstaller made no $app" >&2; exit 1; }

# The self-test of the app as it will be installed: no Python, no venv in the environment.
env -i HOME="$(mktemp -d)" PATH=/usr/bin:/bin QT_QPA_PLATFORM=offscreen \
  "$app/Contents/MacOS/moe-chat" --self-test

suffix=""; [[ "$variant" == metal ]] || suffix="-$variant"
dmg="dist/MoE-Chat-$version-macos-$(uname -m)$suffix.dmg"
staging="$(mktemp -d)"
cp -R "$app" "$staging/"
ln -s /Applications "$staging/Applications"
mkdir -p dist
rm -f "$dmg"
hdiutil create -volname "MoE Chat" -srcfolder "$staging" -fs HFS+ -format UDZO -ov "$dmg"
rm -rf "$staging"
echo "dmg: $dmg ($(du -h "$dmg" | cut -f1))"
