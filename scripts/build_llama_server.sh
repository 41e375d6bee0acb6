#!/usr/bin/env bash
# Build llama.cpp's llama-server from the llama.cpp source that llama-cpp-python vendors, so a
# benchmark compares the same ggml/llama code. Output: .state/llama.cpp/build/bin/llama-server.
# Idempotent: does nothing when the binary exists (delete it, or set FORCE=1, to rebuild).
#
# Flags follow the default pip build of llama-cpp-python here: Release, GGML_NATIVE on
# (-march=native), OpenMP on, shared ggml libraries. Only the server target is built.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
PIP="${PIP:-$ROOT/.venv/bin/pip}"
JOBS="${JOBS:-2}"
STATE="$ROOT/.state/llama.cpp"
SRC="$STATE/src"
BUILD="$STATE/build"
BIN="$BUILD/bin/llama-server"

if [[ -x "$BIN" && "${FORCE:-0}" != 1 ]]; then
  echo "llama-server present: $BIN"
  exit 0
fi

mkdir -p "$STATE/dist"
sdist="$(ls "$STATE"/dist/llama_cpp_python-"$VERSION".tar.gz 2>/dev/null || true)"
if [[ -z "$sdist" ]]; then
  # The sdist from PyPI carries vendor/llama.cpp at the commit this release pins.
  "$PIP" download --no-deps --no-binary :all: \
    "llama-cpp-python==$VERSION" -d "$STATE/dist"
  sdist="$STATE/dist/llama_cpp_python-$VERSION.tar.gz"
fi

if [[ ! -f "$SRC/.extracted-$VERSION" ]]; then
  rm -rf "$SRC"
  mkdir -p "$SRC"
  tar -xzf "$sdist" -C "$SRC" --strip-components=1
  touch "$SRC/.extracted-$VERSION"
fi

cmake -S "$SRC/vendor/llama.cpp" -B "$BUILD" \
  -DCMAKE_BUILD_TYPE=Release \
  -DBUILD_SHARED_LIBS=ON \
  -DLLAMA_BUILD_SERVER=ON \
  -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_TOOLS=ON
cmake --build "$BUILD" --target llama-server -j "$JOBS"
test -x "$BIN"
echo "built $BIN"
