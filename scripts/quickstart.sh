#!/usr/bin/env bash
# The main job on a fresh machine: install dependencies, build, and train the quickstart recipe
# on the embedded default corpus (GCIDE) with 2 data-parallel ranks under mpirun (one thread
# each, 4 windows per rank = the recipe's global batch of 8). Outputs go to runs/quickstart/;
# re-running continues from the latest checkpoint. Extra arguments are recipe overrides.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/install.sh
bash scripts/build.sh
mpirun --allow-run-as-root --oversubscribe -np 2 --mca mpi_yield_when_idle 1 \
  --mca btl_vader_single_copy_mechanism none \
  ./build/condense train recipes/quickstart.yaml --resume train.threads=1 data.batch_size=4 "$@"
./build/condense generate runs/quickstart --prompt "Apple, n." --max-new-tokens 40
