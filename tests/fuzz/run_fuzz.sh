#!/usr/bin/env bash
# Builds the libFuzzer targets for the safetensors and GGUF readers with clang-14
# (-fsanitize=fuzzer,address,undefined; libFuzzer comes from Debian's libclang-rt-14-dev) and
# runs each for a bounded time on its seed corpus. Exit status is non-zero if a build fails, a
# target exits non-zero or leaves a crash/leak/oom/timeout reproducer (in OUT_DIR), or runs
# fewer than CONDENSE_FUZZ_MIN_UNITS inputs (default 1000).
# usage: tests/fuzz/run_fuzz.sh SECONDS OUT_DIR [SEED_DIR]   (SEED_DIR/{safetensors,gguf}/)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SECONDS_EACH="${1:-30}"
OUT="${2:-/tmp/condense-fuzz}"
SEEDS="${3:-}"
CXX="${CONDENSE_FUZZ_CXX:-clang++-14}"
MIN_UNITS="${CONDENSE_FUZZ_MIN_UNITS:-1000}"  # executed inputs each target must reach
mkdir -p "$OUT"
declare -A SRC=([safetensors]="io/safetensors_header.cpp" [gguf]="io/gguf_reader.cpp")
for name in safetensors gguf; do
  bin="$OUT/fuzz_$name"
  "$CXX" -std=c++17 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -I"$ROOT" "$ROOT/tests/fuzz/fuzz_$name.cpp" "$ROOT/${SRC[$name]}" -lfmt -o "$bin"
  corpus="$OUT/corpus_$name"
  mkdir -p "$corpus"
  if [[ -n "$SEEDS" && -d "$SEEDS/$name" ]]; then cp -n "$SEEDS/$name"/* "$corpus"/ 2>/dev/null || true; fi
  echo "[fuzz] $name for ${SECONDS_EACH}s"
  log="$OUT/fuzz_$name.log"
  set +e
  (cd "$OUT" && "$bin" -max_total_time="$SECONDS_EACH" -max_len=16384 -rss_limit_mb=2048 \
     -print_final_stats=1 "$corpus" > "$log" 2>&1)
  status=$?
  set -e
  grep -E "stat::number_of_executed_units|ERROR|SUMMARY|Done" "$log" || true
  if [[ $status -ne 0 ]]; then
    echo "[fuzz] $name: libFuzzer exited with status $status (log: $log)"; exit 1
  fi
  if compgen -G "$OUT/crash-*" >/dev/null || compgen -G "$OUT/leak-*" >/dev/null ||
     compgen -G "$OUT/oom-*" >/dev/null || compgen -G "$OUT/timeout-*" >/dev/null; then
    echo "[fuzz] $name: reproducers in $OUT"; exit 1
  fi
  # A target that ran (almost) nothing proves nothing: require a floor of executed inputs.
  units=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -n 1)
  if [[ -z "$units" || "$units" -lt "$MIN_UNITS" ]]; then
    echo "[fuzz] $name: executed ${units:-no} inputs, fewer than the floor $MIN_UNITS"; exit 1
  fi
  echo "[fuzz] $name: $units inputs, no crash"
done
echo "[fuzz] ok"
