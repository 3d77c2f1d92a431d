#!/usr/bin/env bash
# Builds the libFuzzer targets for every reader of user files: the safetensors and GGUF readers,
# the byte-level BPE tokenizer (its serialized form in checkpoints and token stores, and
# tokenizer.json), the strict recipe parser, and the HDF5 token store and checkpoint readers,
# with clang-14 (-fsanitize=fuzzer,address,undefined; libFuzzer comes from Debian's
# libclang-rt-14-dev), and runs each for a bounded time on its seed corpus. Exit status is
# non-zero if a build fails, a target exits non-zero or leaves a crash/leak/oom/timeout
# reproducer (in OUT_DIR), or runs fewer than CONDENSE_FUZZ_MIN_UNITS inputs (default 1000).
#
# The recipe and HDF5 targets need LibTorch (their structs hold tensors): their reader sources
# are compiled here with clang and instrumented, and the rest of condense is linked from the
# GCC build in CONDENSE_BUILD_DIR (default build/; its `condense` link line supplies the
# libraries), so run scripts/build.sh first.
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
TEXT="text/bpe_tokenizer.cpp text/bpe_vocabulary.cpp text/pretokenizer.cpp text/byte_unicode.cpp text/utf8.cpp text/unicode_nfc.cpp core/hash.cpp"
declare -A SRC=([safetensors]="io/safetensors_header.cpp" [gguf]="io/gguf_reader.cpp io/gguf_iq1_grids.cpp io/gguf_iq2_grids.cpp io/gguf_iq3_grids.cpp"
                [bpe_vocab]="$TEXT" [tokenizer_json]="$TEXT text/bpe_tokenizer_json.cpp")
SRC[recipe]="recipes/recipe_parser.cpp recipes/yaml_binder.cpp"
SRC[hdf5_readers]="io/hdf5_file.cpp data/token_store.cpp trainer/checkpoint.cpp"
declare -A LIBS=([safetensors]="-lfmt" [gguf]="-lfmt" [bpe_vocab]="-lfmt -lpcre2-8"
                 [tokenizer_json]="-lfmt -lpcre2-8" [recipe]="@condense" [hdf5_readers]="@condense")
TARGETS="${CONDENSE_FUZZ_TARGETS:-safetensors gguf bpe_vocab tokenizer_json recipe hdf5_readers}"
BUILD="${CONDENSE_BUILD_DIR:-$ROOT/build}"
# Longest input libFuzzer tries: the HDF5 target's inputs are edit scripts applied to valid
# files (tests/fuzz/fuzz_hdf5_readers.cpp) and carry whole tensors.
declare -A MAX_LEN=([hdf5_readers]=65536)
# The LibTorch targets start at about 900 MB of RSS under ASan (LibTorch's libraries): a higher
# RSS ceiling, and a per-allocation limit so that one runaway allocation is reported with its
# stack (an RSS overrun is only noticed later, by a thread that cannot name the input). No leak
# checks there: LeakSanitizer's stop-the-world scan of such a process hung at full CPU after an
# RSS overrun (its tracer survived the fuzzer being killed), and the libraries' global caches
# are not per-input leaks anyway; the four plain targets keep them.
declare -A LIMITS=([recipe]="-rss_limit_mb=4096 -malloc_limit_mb=1024 -detect_leaks=0"
                   [hdf5_readers]="-rss_limit_mb=4096 -malloc_limit_mb=1024 -detect_leaks=0")

# "@condense": the include flags of condense's own sources and the libraries of its link line,
# both read from the CMake build (compile_commands.json and `ninja -t commands condense`).
condense_flags() {
  [[ -f "$BUILD/compile_commands.json" && -f "$BUILD/build.ninja" ]] ||
    { echo "[fuzz] $BUILD has no CMake build: run scripts/build.sh first" >&2; return 1; }
  python3 - "$BUILD" <<'PY'
import json, shlex, subprocess, sys
build = sys.argv[1]
cmds = json.load(open(f"{build}/compile_commands.json"))
entry = next(c for c in cmds if c["file"].endswith("recipes/recipe_parser.cpp"))
args = shlex.split(entry["command"])
flags = []
for i, a in enumerate(args):
    if a in ("-isystem", "-I") and i + 1 < len(args):
        flags += [a, args[i + 1]]
    elif a.startswith(("-I", "-D")) and a not in ("-I", "-D"):
        flags.append(a)
link = subprocess.run(["ninja", "-C", build, "-t", "commands", "condense"], capture_output=True,
                      text=True, check=True).stdout.strip().splitlines()[-1]
# ": && /usr/bin/c++ FLAGS OBJECTS -o condense LIBS && :": the part with the linker's -o.
tokens = shlex.split(next(part for part in link.split("&&") if " -o " in part))
libs = tokens[tokens.index("-o") + 2:]
libs = [t if t.startswith(("-", "/")) else f"{build}/{t}" for t in libs]
print(shlex.join(flags))
print(shlex.join(libs))
PY
}
for name in $TARGETS; do
  bin="$OUT/fuzz_$name"
  srcs=()
  for f in ${SRC[$name]}; do srcs+=("$ROOT/$f"); done
  cflags=() libs=()
  if [[ "${LIBS[$name]}" == "@condense" ]]; then
    if [[ -z "${lines+set}" ]]; then  # read once for every target that needs them
      mapfile -t lines < <(condense_flags || echo "FAILED")
      [[ ${#lines[@]} -eq 2 ]] || { echo "[fuzz] $name: cannot read condense's build flags from $BUILD"; exit 1; }
    fi
    eval "cflags=(${lines[0]})"
    eval "libs=(${lines[1]})"
  else
    read -r -a libs <<< "${LIBS[$name]}"
  fi
  if [[ "$name" == hdf5_readers ]]; then
    # The files its edit scripts start from (store.h5, checkpoint.h5).
    export CONDENSE_FUZZ_HDF5_BASE="${CONDENSE_FUZZ_HDF5_BASE:-${SEEDS:+$SEEDS/hdf5_base}}"
    [[ -f "${CONDENSE_FUZZ_HDF5_BASE:-}/store.h5" && -f "$CONDENSE_FUZZ_HDF5_BASE/checkpoint.h5" ]] ||
      { echo "[fuzz] hdf5_readers needs CONDENSE_FUZZ_HDF5_BASE (or SEED_DIR/hdf5_base) with store.h5 and checkpoint.h5"; exit 1; }
  fi
  echo "[fuzz] building $name"
  "$CXX" -std=c++17 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -I"$ROOT" "${cflags[@]}" "$ROOT/tests/fuzz/fuzz_$name.cpp" "${srcs[@]}" "${libs[@]}" -o "$bin"
  corpus="$OUT/corpus_$name"
  mkdir -p "$corpus"
  # The seed corpora kept in the repo (tests/fuzz/seeds/<target>/), then the caller's.
  for d in "$ROOT/tests/fuzz/seeds/$name" ${SEEDS:+"$SEEDS/$name"}; do
    if [[ -d "$d" ]]; then cp -n "$d"/* "$corpus"/ 2>/dev/null || true; fi
  done
  echo "[fuzz] $name for ${SECONDS_EACH}s"
  log="$OUT/fuzz_$name.log"
  set +e
  # A fuzzer that hangs (in a sanitizer's report, say) is stopped and fails the run.
  (cd "$OUT" && timeout -k 10 $((2 * SECONDS_EACH + 120)) "$bin" -max_total_time="$SECONDS_EACH" -max_len="${MAX_LEN[$name]:-16384}" ${LIMITS[$name]:--rss_limit_mb=2048} \
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
