#!/usr/bin/env bash
# Configures and builds condense into build/ (ccache + a LibTorch precompiled header keep
# rebuilds fast). Assumes scripts/install.sh has run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
ninja -C build -j"${CONDENSE_JOBS:-$(nproc)}"
