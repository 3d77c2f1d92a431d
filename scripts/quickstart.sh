#!/usr/bin/env bash
# The main job on a fresh machine: install what it needs, build the condense binary, and train
# the quickstart recipe on the embedded default corpus (GCIDE) with 2 data-parallel ranks under
# mpirun (one thread each, 4 windows per rank = the recipe's global batch of 8). Outputs go to
# runs/quickstart/; re-running continues from the latest checkpoint. Extra arguments are recipe
# overrides. Only the main job's dependencies and target: the test-only packages and the test
# executables come with scripts/test.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
say() { echo "[quickstart $(date +%H:%M:%S)] $*"; }
say "1/4 installing dependencies (scripts/install.sh; first time: a few minutes, mostly downloading torch)"
bash scripts/install.sh
say "2/4 building the condense binary (scripts/build.sh condense; about 10 minutes the first time on 2 cores)"
bash scripts/build.sh condense
say "3/4 training recipes/quickstart.yaml on 2 ranks (the first run also tokenizes GCIDE, ~30 s)"
mpirun --allow-run-as-root --oversubscribe -np 2 --mca mpi_yield_when_idle 1 \
  --mca btl_vader_single_copy_mechanism none \
  ./build/condense train recipes/quickstart.yaml --resume train.threads=1 data.batch_size=4 "$@"
# What the trained model does: its held-out perplexity, then a few dictionary-style prompts.
say "4/4 what the trained model does"
echo "== validation (held-out GCIDE entries)"
./build/condense eval runs/quickstart --batches 32
for prompt in "Apple, n." "Music, n." "Quickly, adv." "To run, v. i."; do
  echo "== generate --prompt \"$prompt\""
  ./build/condense generate runs/quickstart --prompt "$prompt" --max-new-tokens 48 \
    --temperature 0.7 --top-p 0.9 --seed 1 --threads 2
  echo
done
