#!/usr/bin/env bash
# Builds the libFuzzer targets for the safetensors and GGUF readers with clang-14
# (-fsanitize=fuzzer,address,undefined; libFuzzer comes from Debian's libclang-rt-14-dev) and
# runs each for a bounded time on its seed corpus. Exit status is non-zero if a build fails or
# a target finds a crash (the reproducer is left in OUT_DIR).
# usage: tests/fuzz/run_fuzz.sh SECONDS OUT_DIR [SEED_DIR]   (SEED_DIR/{safetensors,gguf}/)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SECONDS_EACH="${1:-30}"
OUT="${2:-/tmp/condense-fuzz}"
SEEDS="${3:-}"
CXX="${CONDENSE_FUZZ_CXX:-clang++-14}"
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
  (cd "$OUT" && "$bin" -max_total_time="$SECONDS_EACH" -max_len=16384 -rss_limit_mb=2048 \
     -print_final_stats=1 "$corpus" 2>&1 | grep -E "stat::number_of_executed_units|ERROR|SUMMARY|Done" || true)
  # libFuzzer's exit status is lost in the pipe above: a crash leaves crash-*/leak-*/timeout-* files.
  if compgen -G "$OUT/crash-*" >/dev/null || compgen -G "$OUT/leak-*" >/dev/null || compgen -G "$OUT/oom-*" >/dev/null; then
    echo "[fuzz] $name: crash reproducers in $OUT"; exit 1
  fi
done
echo "[fuzz] ok"
