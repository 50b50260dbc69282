#!/usr/bin/env bash
# Build the engine (llama-cpp-python) wheel that an installer ships.
#
#   packaging/build_engine.sh [cpu|metal|cuda|vulkan] [hot]   -> build/engine/<variant>[-hot]/*.whl
#
# "hot" builds from the source distribution with packaging/hot-experts.patch applied to its
# llama.cpp (each layer's hottest experts in tensors of their own; packaging/HOT-EXPERTS.md)
# and also unpacks the wheel's libraries into build/engine/<variant>-hot/lib, which
# LLAMA_CPP_LIB_PATH can point the installed bindings at.
#
# Every variant is portable: -DGGML_NATIVE=OFF targets any x86-64 CPU with AVX2 (any Apple
# Silicon Mac) instead of the build machine's own CPU. CUDA and Vulkan add their backend on
# top and need the CUDA toolkit / Vulkan SDK (glslc) on the build machine; metal is macOS's. EXTRA_CMAKE_ARGS adds more,
# e.g. EXTRA_CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=86;89;90" for a smaller CUDA build.
#
# pip reuses a cached wheel whatever CMAKE_ARGS says, so this never uses pip's cache; the
# wheel it builds is kept under build/engine/<variant>/ with the flags it was built with,
# and is rebuilt only when those flags change.
set -euo pipefail
cd "$(dirname "$0")/.."

variant="${1:-cpu}"
flavour="${2:-}"
[[ -z "$flavour" || "$flavour" == hot ]] || { echo "unknown flavour '$flavour' (hot)" >&2; exit 2; }
python="${PYTHON:-python3}"
version="$("$python" packaging/project_info.py engine-version)"
case "$variant" in
  cpu)    backend_args=""  # on macOS Metal is on by default: turn it off for a CPU build
          [[ "$(uname)" == Darwin ]] && backend_args="-DGGML_METAL=OFF" ;;
  metal)  backend_args="-DGGML_METAL=ON" ;;
  cuda)   backend_args="-DGGML_CUDA=on" ;;
  vulkan) backend_args="-DGGML_VULKAN=on" ;;
  *) echo "unknown engine variant '$variant' (cpu, metal, cuda or vulkan)" >&2; exit 2 ;;
esac
cmake_args="-DGGML_NATIVE=OFF -DGGML_RPC=ON -DLLAVA_BUILD=OFF $backend_args ${EXTRA_CMAKE_ARGS:-}"
cmake_args="$(echo "$cmake_args" | xargs)"  # tidy spaces: the stamp compares exact text

out="build/engine/$variant${flavour:+-$flavour}"
mkdir -p build/engine
if command -v flock >/dev/null; then  # one build of a variant at a time (Linux's util-linux)
  exec 9>"build/engine/.lock-$variant${flavour:+-$flavour}"
  flock 9
fi
stamp="$out/CMAKE_ARGS"
what="llama-cpp-python==$version $cmake_args"
patch_file=packaging/hot-experts.patch
[[ -n "$flavour" ]] && what="$what patch $("$python" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest()[:16])' "$patch_file")"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$what" ]] \
    && compgen -G "$out/llama_cpp_python-$version-*.whl" >/dev/null; then
  echo "engine $variant${flavour:+ $flavour}: reusing $(ls "$out"/llama_cpp_python-*.whl)"
  exit 0
fi

rm -rf "$out" && mkdir -p "$out"
echo "engine $variant${flavour:+ $flavour}: building $what"
started=$SECONDS
source="llama-cpp-python==$version"
if [[ -n "$flavour" ]]; then  # the source distribution, patched
  "$python" -m pip download --no-cache-dir --no-deps --no-binary :all: "$source" -d "$out/sdist"
  tar -xzf "$out"/sdist/llama_cpp_python-"$version".tar.gz -C "$out/sdist"
  source="$out/sdist/llama_cpp_python-$version"
  patch -p1 --forward --directory "$source/vendor/llama.cpp" < "$patch_file"
fi
CMAKE_ARGS="$cmake_args" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
  "$python" -m pip wheel --no-cache-dir --no-deps --no-binary llama-cpp-python "$source" -w "$out"
if [[ -n "$flavour" ]]; then
  rm -rf "$out/sdist"
  "$python" - "$out" <<'UNPACK'
import sys, zipfile
from pathlib import Path
out = Path(sys.argv[1])
(wheel,) = out.glob("llama_cpp_python-*.whl")
with zipfile.ZipFile(wheel) as archive:
    for name in archive.namelist():
        if name.startswith("llama_cpp/lib/"):
            target = out / "lib" / Path(name).name
            target.parent.mkdir(exist_ok=True)
            target.write_bytes(archive.read(name))
UNPACK
fi
echo "$what" > "$stamp"
echo "engine $variant${flavour:+ $flavour}: built in $((SECONDS - started)) s: $(ls "$out"/llama_cpp_python-*.whl)"
