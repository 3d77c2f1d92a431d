#!/usr/bin/env bash
# condense's C++ unit tests under AddressSanitizer + UndefinedBehaviorSanitizer: configures
# build-asan/ with -DCONDENSE_SANITIZE=ON (condense's own code instrumented; LibTorch's prebuilt
# libraries are not), builds the gtest executables and runs them through ctest. Assumes
# scripts/install.sh has run. Any sanitizer report fails the test that triggered it
# (halt_on_error; UBSan without recovery).
#
#   bash scripts/sanitize.sh                 # every gtest executable (not the MPI or Python tests)
#   bash scripts/sanitize.sh test_core test_codecs   # a subset
#
# ASAN_OPTIONS: LibTorch's CUDA libraries map memory where ASan's shadow gap would be
# (protect_shadow_gap=0), and their one-time allocations are never freed (detect_leaks=0: leak
# checking would report LibTorch, not condense).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCONDENSE_SANITIZE=ON >/dev/null
if [ $# -gt 0 ]; then targets=("$@"); else
  targets=()
  for f in tests/test_*.cpp; do targets+=("$(basename "$f" .cpp)"); done
fi
echo "sanitize: building ${targets[*]}"
ninja -C build-asan -j"${CONDENSE_JOBS:-$(nproc)}" "${targets[@]}"
export ASAN_OPTIONS="protect_shadow_gap=0:detect_leaks=0:halt_on_error=1:abort_on_error=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
regex="^($(IFS='|'; echo "${targets[*]}"))\\."
cd build-asan
ctest --output-on-failure --no-tests=error -j"${CONDENSE_TEST_JOBS:-2}" --timeout 1200 -R "$regex"
