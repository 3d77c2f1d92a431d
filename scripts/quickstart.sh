#!/usr/bin/env bash
# The main job on a fresh machine: install dependencies, build, and train the quickstart recipe
# on the embedded default corpus (GCIDE). Outputs go to runs/quickstart/; re-running continues
# from the latest checkpoint. Extra arguments are recipe overrides (e.g. train.steps=600).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/install.sh
bash scripts/build.sh
./build/condense train recipes/quickstart.yaml --resume "$@"
./build/condense generate runs/quickstart --prompt "Apple, n." --max-new-tokens 40
