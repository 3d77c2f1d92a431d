#!/usr/bin/env bash
# All tests on a fresh machine: install dependencies, build, run the C++ (gtest) and Python
# reference tests through ctest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/install.sh --tests
bash scripts/build.sh
cd build
# A skipped Python test fails the run (tests/python/conftest.py): every test must run here.
export CONDENSE_REQUIRE_ALL_TESTS=1
ctest --output-on-failure --no-tests=error -j"${CONDENSE_TEST_JOBS:-2}" --timeout 1200
