#!/usr/bin/env bash
# Build the portable llama-cpp-python wheel the Containerfile builds (no -march=native; every
# x86 CPU variant as a loadable ggml backend), install it into its own venv and show which
# CPU variant ggml picks on this machine.
#
#   wheel: .state/wheels/portable/llama_cpp_python-<version>-*.whl
#   venv:  .state/venv-portable (python3.11)
#
# pip's wheel cache is keyed by the requirement, not by CMAKE_ARGS, so the build runs with
# --no-cache-dir: it never reuses the native wheel of .venv and never overwrites it.
# Idempotent: the wheel and the venv are reused when present (FORCE=1 rebuilds the wheel).
# Long: ~15 CPU variants are compiled. Parallelism: JOBS (default 2).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
PYTHON="${PYTHON:-python3.11}"
JOBS="${JOBS:-2}"
WHEELS="$ROOT/.state/wheels/portable"
VENV="$ROOT/.state/venv-portable"
# The same local sdist scripts/build_llama_server.sh downloads, when it is there.
SDIST="$ROOT/.state/llama.cpp/dist/llama_cpp_python-$VERSION.tar.gz"
# Pins of llama-cpp-python's runtime deps, as in the project venv.
DEPS=(numpy==2.4.6 jinja2==3.1.6 MarkupSafe==3.0.4 diskcache==5.6.3 typing-extensions==4.16.0)

mkdir -p "$WHEELS"
wheel="$(ls "$WHEELS"/llama_cpp_python-"$VERSION"-*.whl 2>/dev/null | head -n1 || true)"
if [[ -z "$wheel" || "${FORCE:-0}" == 1 ]]; then
  rm -f "$WHEELS"/llama_cpp_python-"$VERSION"-*.whl
  src="llama-cpp-python==$VERSION"
  [[ -f "$SDIST" ]] && src="$SDIST"
  echo "building portable wheel from $src ($(date -u +%FT%TZ))"
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON" \
  FORCE_CMAKE=1 CMAKE_BUILD_PARALLEL_LEVEL="$JOBS" \
    "$ROOT/.venv/bin/pip" wheel --no-deps --no-cache-dir --no-binary llama-cpp-python \
      --wheel-dir "$WHEELS" "$src"
  wheel="$(ls "$WHEELS"/llama_cpp_python-"$VERSION"-*.whl | head -n1)"
  echo "built $wheel ($(date -u +%FT%TZ))"
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet "${DEPS[@]}"
"$VENV/bin/pip" install --quiet --no-deps --force-reinstall "$wheel"
# llmfn and the dev package (llmfn-dev: scripts, bench, tests.support), editable and without
# their dependencies: bench_portable.py, kernel_noise.py and the kernel-agreement test import
# only their stdlib-only parts here.
"$VENV/bin/pip" install --quiet --no-deps -e "$ROOT/llmfn" -e "$ROOT"

echo "CPU backend variants in the wheel:"
"$VENV/bin/python" -m zipfile -l "$wheel" | grep -o '[^ ]*libggml-cpu[^ ]*\.so' | sort

# Does it load a model, and which CPU variant does ggml pick here? Run from / so the current
# directory (one of ggml's default backend search paths) holds no backend.
model="$("$ROOT/.venv/bin/python" -c 'from scripts.model_files import smollm2_path; print(smollm2_path())')"
cd /
"$VENV/bin/python" "$ROOT/bench/bench_portable.py" --check --model "$model"
