#!/usr/bin/env bash
# Configures and builds condense into build/ (ccache + a LibTorch precompiled header keep
# rebuilds fast). Assumes scripts/install.sh has run.
#
#   bash scripts/build.sh                 everything: the condense binary and, when googletest is
#                                         installed (install.sh --tests), the test executables
#   bash scripts/build.sh condense        only the condense binary (what the main job needs)
#
# Extra CMake options go in CONDENSE_CMAKE_ARGS (e.g. "-DCONDENSE_SANITIZE=ON").
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
echo "[build $(date +%H:%M:%S)] configuring build/ (CMake)"
# shellcheck disable=SC2086
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo ${CONDENSE_CMAKE_ARGS:-} >/dev/null
echo "[build $(date +%H:%M:%S)] compiling ${*:-all targets} with ${CONDENSE_JOBS:-$(nproc)} jobs" \
     "(a first build of condense took about 10 minutes on 2 cores; ninja numbers the steps)"
ninja -C build -j"${CONDENSE_JOBS:-$(nproc)}" "$@"
echo "[build $(date +%H:%M:%S)] ok"
