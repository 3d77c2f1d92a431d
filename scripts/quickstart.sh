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
# What the trained model does: its held-out perplexity, then a few dictionary-style prompts.
echo "== validation (held-out GCIDE entries)"
./build/condense eval runs/quickstart --batches 32
for prompt in "Apple, n." "Music, n." "Quickly, adv." "To run, v. i."; do
  echo "== generate --prompt \"$prompt\""
  ./build/condense generate runs/quickstart --prompt "$prompt" --max-new-tokens 48 \
    --temperature 0.7 --top-p 0.9 --seed 1 --threads 2
  echo
done
