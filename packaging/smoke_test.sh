#!/usr/bin/env bash
# Build the Linux installers and prove on this machine that they install, start and chat.
# .ci/run calls this after the tests. Sizes, cold start and a screenshot of the running app
# are written to the log folder ($CI_LOG_DIR, default build/ci-logs) and printed.
#
# What it needs from Debian (xvfb, xdotool, imagemagick, desktop-file-utils, appstream,
# nsis) it installs with apt-get when it runs as root; otherwise a missing tool is reported
# as a skipped check, never as a passed one.
set -euo pipefail
cd "$(dirname "$0")/.."

logs="${CI_LOG_DIR:-build/ci-logs}"
mkdir -p "$logs"
work="$(mktemp -d)"
cleanup() {
  [[ -n "${xvfb_pid:-}" ]] && kill "$xvfb_pid" 2>/dev/null || true
  if [[ -n "${installed:-}" ]]; then apt-get purge -y -q moe-chat >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "SMOKE TEST FAILED: $*" >&2; exit 1; }
step() { echo; echo "== $*"; }
skip() { echo "SKIPPED: $*"; skipped+=("$*"); }
skipped=()
starts=()
have() { command -v "$1" >/dev/null 2>&1; }

step "tools"
missing=()
for tool in Xvfb:xvfb openbox:openbox xdotool:xdotool import:imagemagick \
    desktop-file-validate:desktop-file-utils appstreamcli:appstream makensis:nsis \
    readelf:binutils curl:curl; do
  have "${tool%%:*}" || missing+=("${tool#*:}")
done
if ((${#missing[@]})) && [[ "$(id -u)" == 0 ]] && have apt-get; then
  echo "installing ${missing[*]}"
  apt-get update -q >/dev/null && \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${missing[@]}" >/dev/null || echo "could not install ${missing[*]}"
fi

step "build: bundle, tarball and .deb (CPU engine, -DGGML_NATIVE=OFF)"
started=$SECONDS
if ! bash packaging/linux/build_packages.sh cpu >"$logs/build.txt" 2>&1; then
  tail -40 "$logs/build.txt"; fail "the build failed (log: $logs/build.txt)"
fi
grep -E "^(engine|bundle|tarball|deb)" "$logs/build.txt"
build_s=$((SECONDS - started))
version="$(python3 packaging/project_info.py version)"
bundle=build/dist-cpu/moe-chat
deb="dist/moe-chat_${version}_amd64.deb"
tarball="dist/moe-chat-$version-linux-x86_64.tar.gz"
[[ -x "$bundle/moe-chat" && -f "$deb" && -f "$tarball" ]] || fail "the build left no bundle or .deb"

# The self-test in a clean environment: no Python, no venv, no variables of this shell.
self_test() {  # self_test LABEL PROGRAM
  local home="$work/home-$1" out="$logs/self-test-$1.txt"
  mkdir -p "$home"
  if ! env -i HOME="$home" PATH=/usr/bin:/bin QT_QPA_PLATFORM=offscreen "$2" --self-test \
      >"$out" 2>&1; then
    cat "$out"; fail "$1: $2 --self-test exited non-zero"
  fi
  cat "$out"
  grep -q "^reply: '..*'" "$out" || fail "$1: the self-test printed no reply"
  grep -q "tokens/s" "$out" || fail "$1: the self-test printed no tokens/s"
  # installers ship the hot-experts engine (packaging/build_bundle.sh): it must split
  grep -q "^hot experts: .* same reply as unsplit" "$out" \
    || fail "$1: the engine did not split a layer's experts (not the hot-experts build?)"
}

step "self-test of the bundle (env -i)"
self_test bundle "$bundle/moe-chat"

step "the bundle serves the local API (moe-chat serve), answers, and stops on SIGTERM"
if have curl; then
  model="$work/serve-model.gguf"
  .venv/bin/python -c "import sys; from engine.synthetic import build_synthetic_moe as b; b(sys.argv[1])" "$model"
  serve_log="$logs/serve.txt"
  env -i HOME="$work/home-serve" PATH=/usr/bin:/bin "$bundle/moe-chat" serve "$model" --port 0 \
    >"$serve_log" 2>&1 &
  serve_pid=$!
  address=""
  for _ in $(seq 300); do
    address="$(grep -o 'http://127.0.0.1:[0-9]*/v1' "$serve_log" || true)"
    [[ -n "$address" ]] && break
    kill -0 "$serve_pid" 2>/dev/null || { cat "$serve_log"; fail "moe-chat serve exited"; }
    sleep 0.1
  done
  [[ -n "$address" ]] || { kill "$serve_pid"; fail "moe-chat serve printed no address"; }
  answer="$(curl -s --max-time 60 "$address/chat/completions" -H 'Content-Type: application/json' \
    -d '{"messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}')"
  kill -TERM "$serve_pid"
  wait "$serve_pid" || { cat "$serve_log"; fail "moe-chat serve did not stop cleanly"; }
  echo "$answer" | grep -q '"completion_tokens":[1-9]' || fail "the API gave no reply: $answer"
  grep -q "^Stopped." "$serve_log" || fail "moe-chat serve did not say it stopped"
  echo "ok: $address answered ($answer)"
else
  skip "curl is not installed: the bundled API was not called"
fi

step "the bundle lends this computer (moe-chat worker), its self-test uses it, SIGTERM stops it"
worker_log="$logs/worker.txt" worker_test="$logs/self-test-workers.txt"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
env -i HOME="$work/home-worker" PATH=/usr/bin:/bin "$bundle/moe-chat" worker --port "$port" \
  --device CPU --threads 1 >"$worker_log" 2>&1 &
worker_pid=$!
for _ in $(seq 300); do
  grep -q "Press Ctrl+C" "$worker_log" && break
  kill -0 "$worker_pid" 2>/dev/null || { cat "$worker_log"; fail "moe-chat worker exited"; }
  sleep 0.1
done
grep -q "no authentication and no encryption" "$worker_log" || fail "the worker gave no warning"
if ! env -i HOME="$work/home-workers" PATH=/usr/bin:/bin "$bundle/moe-chat" --self-test \
    --workers "127.0.0.1:$port" >"$worker_test" 2>&1; then
  cat "$worker_test" "$worker_log"; kill "$worker_pid"; fail "the self-test with a worker failed"
fi
kill -TERM "$worker_pid"
wait "$worker_pid" || { cat "$worker_log"; fail "moe-chat worker did not stop cleanly"; }
grep "^placed on" "$worker_test"
grep -q "^placed on RPC0\[127.0.0.1:$port\]: " "$worker_test" || fail "nothing was placed on the worker"
grep -q "^Worker stopped." "$worker_log" || fail "moe-chat worker did not say it stopped"

step "self-test of the .deb, extracted with dpkg-deb -x"
root="$work/deb-root"
dpkg-deb -x "$deb" "$root"
[[ "$(readlink "$root/usr/bin/moe-chat")" == /opt/moe-chat/moe-chat ]] \
  || fail "/usr/bin/moe-chat does not point into /opt/moe-chat"
self_test deb-extract "$root/opt/moe-chat/moe-chat"
dpkg-deb -I "$deb" | sed -n '/Package:/,/Description:/p'

step "desktop entry and AppStream metadata"
desktop_file="$root/usr/share/applications/io.github.moechat.MoEChat.desktop"
[[ -f "$desktop_file" && -f "$root/usr/share/icons/hicolor/256x256/apps/moe-chat.png" ]] \
  || fail "the .deb has no desktop entry or icon"
if have desktop-file-validate; then
  desktop-file-validate "$desktop_file" || fail "desktop-file-validate rejected the entry"
  echo "desktop-file-validate: ok"
else
  skip "desktop-file-validate is not installed"
fi
if have appstreamcli; then
  appstreamcli validate --no-net "$root/usr/share/metainfo/io.github.moechat.MoEChat.metainfo.xml" \
    || fail "appstreamcli rejected the metainfo"
else
  skip "appstreamcli is not installed"
fi

step "system libraries: everything the bundle links to is inside it or a declared dependency"
declared="$(grep -v '^#' packaging/linux/system-libs.txt | awk '{for (i = 2; i <= NF; i++) print $i}')"
shipped="$(find "$bundle" \( -type f -o -type l \) -name '*.so*' -printf '%f\n' | sort -u)"
undeclared="$(find "$bundle" -type f -name '*.so*' -print0 \
  | xargs -0 readelf -d -W 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | sort -u \
  | grep -vxF -f <(printf '%s\n' $declared $shipped) || true)"
[[ -z "$undeclared" ]] || fail "linked but neither shipped nor declared: $undeclared"
echo "ok: $(echo "$declared" | wc -l) system libraries declared, all others shipped"

step "install the .deb for real (apt-get) and self-test the installed app"
app="$bundle/moe-chat"
if [[ "$(id -u)" == 0 ]] && have apt-get; then
  install_deb() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q "./$deb" >/dev/null; }
  install_deb || { apt-get update -q >/dev/null && install_deb; } \
    || fail "apt-get could not install $deb (its dependencies?)"
  installed=1
  self_test installed /usr/bin/moe-chat
  app=/usr/bin/moe-chat
else
  skip "real install needs root and apt-get: the GUI start uses the bundle"
fi

step "start $app on a real X server (Xvfb, xcb platform), screenshot, Ctrl+Q"
if have Xvfb && have xdotool && have import; then
  display=":$((90 + RANDOM % 100))"
  Xvfb "$display" -screen 0 1280x800x24 -nolisten tcp >/dev/null 2>&1 &
  xvfb_pid=$!
  for _ in $(seq 100); do
    DISPLAY=$display xdotool getdisplaygeometry >/dev/null 2>&1 && break
    sleep 0.05
  done
  # A window manager places and decorates windows as on a desktop (dialogs centred on
  # their parent); it dies with the X server.
  if have openbox; then
    DISPLAY=$display openbox >/dev/null 2>&1 &
    sleep 0.5
  else
    skip "openbox is not installed: windows are shown without a window manager"
  fi
  screenshot() {  # screenshot NAME: the whole screen into the log folder; blank fails
    local png="$logs/installed-app-$1.png"
    DISPLAY=$display import -window root "$png"
    local colours
    colours="$(identify -format '%k' "$png")"
    echo "screenshot: $png ($colours colours)"
    ((colours > 50)) || fail "the screenshot $png is blank"
  }
  gui_home="$work/home-gui"
  mkdir -p "$gui_home"
  for run in cold warm; do
    [[ $run == cold ]] && sync && { echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null \
      && echo "page cache dropped before the cold start"
    t0=$(date +%s%N)
    env -i HOME="$gui_home" PATH=/usr/bin:/bin DISPLAY="$display" QT_QPA_PLATFORM=xcb \
      "$app" >"$logs/gui-$run.txt" 2>&1 &
    app_pid=$!
    window=""
    for _ in $(seq 400); do
      window="$(DISPLAY=$display xdotool search --onlyvisible --name '^MoE Chat$' 2>/dev/null \
        | head -1)" || true
      [[ -n "$window" ]] && break
      if ! kill -0 "$app_pid" 2>/dev/null; then
        cat "$logs/gui-$run.txt"; fail "the app exited before showing a window"
      fi
      sleep 0.02
    done
    [[ -n "$window" ]] || fail "no window within 8 s"
    starts+=("$run start to a shown window: $((($(date +%s%N) - t0) / 1000000)) ms")
    echo "${starts[-1]}"
    sleep 2  # let it paint, open the first-run model manager, probe the hardware
    if [[ $run == cold ]]; then
      screenshot first-run  # the model manager opens by itself on a first start
      dialog="$(DISPLAY=$display xdotool search --onlyvisible --name '^Models$' | head -1)" \
        || fail "the model manager did not open on the first start"
      DISPLAY=$display xdotool windowfocus --sync "$dialog" key Escape
      sleep 1
      screenshot chat-window
    fi
    DISPLAY=$display xdotool windowfocus --sync "$window" key --clearmodifiers ctrl+q
    for _ in $(seq 200); do kill -0 "$app_pid" 2>/dev/null || break; sleep 0.05; done
    if kill -0 "$app_pid" 2>/dev/null; then
      kill "$app_pid"; fail "the app did not quit on Ctrl+Q"
    fi
    wait "$app_pid" || { cat "$logs/gui-$run.txt"; fail "the app exited with an error"; }
  done
  kill "$xvfb_pid" 2>/dev/null || true
  xvfb_pid=
else
  skip "Xvfb, xdotool or ImageMagick is not installed: no real start"
fi

step "uninstall: no files left but the user's own data"
if [[ -n "${installed:-}" ]]; then
  mapfile -t owned < <(dpkg -L moe-chat | grep -v '^/\.$')
  apt-get purge -y -q moe-chat >/dev/null || fail "apt-get could not remove moe-chat"
  installed=
  left=()
  for path in "${owned[@]}"; do
    [[ -e "$path" && ! -d "$path" ]] && left+=("$path")
  done
  [[ ! -e /opt/moe-chat ]] || left+=(/opt/moe-chat)
  ((${#left[@]} == 0)) || fail "uninstall left files behind: ${left[*]}"
  if [[ -n "${gui_home:-}" ]]; then
    [[ -f "$gui_home/.local/share/moe-chat/moe-chat.sqlite3" ]] \
      || fail "the user's conversations went away with the package"
  fi
  echo "removed: ${#owned[@]} packaged paths gone, the user's data folder kept"
else
  skip "nothing was installed"
fi

step "Windows installer script (NSIS)"
if have makensis; then
  # The Windows bundle can only be built on Windows (.github/workflows/windows.yml); the
  # Linux bundle stands in for it here, so this checks that the script compiles.
  started=$SECONDS
  makensis -V2 -DVERSION="$version" -DBUNDLE_DIR="$PWD/$bundle" \
    -DICON="$PWD/build/icons/moe-chat.ico" -DOUTFILE="$work/MoE-Chat-$version-check.exe" \
    packaging/windows/moe-chat.nsi || fail "makensis failed"
  echo "installer: $(($(stat -c %s "$work/MoE-Chat-$version-check.exe") / 1000000)) MB"
  echo "makensis: compiled in $((SECONDS - started)) s"
else
  skip "makensis is not installed (Debian package nsis): the NSIS script was not compiled"
fi

step "summary"
{
  echo "bundle: $(du -sm "$bundle" | cut -f1) MB (target <= 300)"
  echo ".deb: $(($(stat -c %s "$deb") / 1000000)) MB (target <= 110)"
  echo "tar.gz: $(($(stat -c %s "$tarball") / 1000000)) MB"
  printf '%s\n' "${starts[@]}"
  echo "build time: $build_s s"
  ((${#skipped[@]} == 0)) || printf 'skipped: %s\n' "${skipped[@]}"
} | tee "$logs/packaging-summary.txt"
(($(du -sm "$bundle" | cut -f1) <= 300)) || fail "the bundle is over 300 MB"
(($(stat -c %s "$deb") <= 110000000)) || fail "the .deb is over 110 MB"
echo "smoke test passed"
