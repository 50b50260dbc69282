#!/usr/bin/env bash
# Build the engine (llama-cpp-python) wheel that an installer ships.
#
#   packaging/build_engine.sh [cpu|metal|cuda|vulkan]   -> build/engine/<variant>/*.whl
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

out="build/engine/$variant"
stamp="$out/CMAKE_ARGS"
if [[ -f "$stamp" && "$(cat "$stamp")" == "llama-cpp-python==$version $cmake_args" ]] \
    && compgen -G "$out/llama_cpp_python-$version-*.whl" >/dev/null; then
  echo "engine $variant: reusing $(ls "$out"/llama_cpp_python-*.whl)"
  exit 0
fi

rm -rf "$out" && mkdir -p "$out"
echo "engine $variant: building llama-cpp-python==$version with CMAKE_ARGS='$cmake_args'"
started=$SECONDS
CMAKE_ARGS="$cmake_args" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
  "$python" -m pip wheel --no-cache-dir --no-deps --no-binary llama-cpp-python \
  "llama-cpp-python==$version" -w "$out"
echo "llama-cpp-python==$version $cmake_args" > "$stamp"
echo "engine $variant: built in $((SECONDS - started)) s: $(ls "$out"/llama_cpp_python-*.whl)"
