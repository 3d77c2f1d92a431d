#!/usr/bin/env bash
# Builds the libFuzzer targets for the safetensors and GGUF readers and the byte-level BPE
# tokenizer (its serialized form in checkpoints and token stores, and tokenizer.json) with clang-14
# (-fsanitize=fuzzer,address,undefined; libFuzzer comes from Debian's libclang-rt-14-dev) and
# runs each for a bounded time on its seed corpus. Exit status is non-zero if a build fails, a
# target exits non-zero or leaves a crash/leak/oom/timeout reproducer (in OUT_DIR), or runs
# fewer than CONDENSE_FUZZ_MIN_UNITS inputs (default 1000).
# usage: tests/fuzz/run_fuzz.sh SECONDS OUT_DIR [SEED_DIR]   (SEED_DIR/<target>/: seed inputs)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SECONDS_EACH="${1:-30}"
OUT="${2:-/tmp/condense-fuzz}"
SEEDS="${3:-}"
CXX="${CONDENSE_FUZZ_CXX:-clang++-14}"
MIN_UNITS="${CONDENSE_FUZZ_MIN_UNITS:-1000}"  # executed inputs each target must reach
mkdir -p "$OUT"
# Each target: the reader's sources (space-separated) and the libraries they need.
TEXT="text/bpe_tokenizer.cpp text/bpe_vocabulary.cpp text/pretokenizer.cpp text/byte_unicode.cpp text/utf8.cpp core/hash.cpp"
declare -A SRC=([safetensors]="io/safetensors_header.cpp" [gguf]="io/gguf_reader.cpp"
                [bpe_vocab]="$TEXT" [tokenizer_json]="$TEXT text/bpe_tokenizer_json.cpp")
declare -A LIBS=([safetensors]="-lfmt" [gguf]="-lfmt" [bpe_vocab]="-lfmt -lpcre2-8"
                 [tokenizer_json]="-lfmt -lpcre2-8")
TARGETS="${CONDENSE_FUZZ_TARGETS:-safetensors gguf bpe_vocab tokenizer_json}"
for name in $TARGETS; do
  bin="$OUT/fuzz_$name"
  srcs=()
  for f in ${SRC[$name]}; do srcs+=("$ROOT/$f"); done
  # shellcheck disable=SC2086
  "$CXX" -std=c++17 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -I"$ROOT" "$ROOT/tests/fuzz/fuzz_$name.cpp" "${srcs[@]}" ${LIBS[$name]} -o "$bin"
  corpus="$OUT/corpus_$name"
  mkdir -p "$corpus"
  # The seed corpora kept in the repo (tests/fuzz/seeds/<target>/), then the caller's.
  for d in "$ROOT/tests/fuzz/seeds/$name" ${SEEDS:+"$SEEDS/$name"}; do
    if [[ -d "$d" ]]; then cp -n "$d"/* "$corpus"/ 2>/dev/null || true; fi
  done
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
