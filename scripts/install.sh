#!/usr/bin/env bash
# Installs everything condense needs on a fresh Debian bookworm machine, idempotently:
# Debian packages (compilers' libraries, MPI, HDF5, yaml-cpp, sentencepiece, CLI/log/JSON,
# googletest, ccache, the GCIDE and fortunes corpora) and a project virtualenv (.venv) holding
# the pinned torch wheel whose LibTorch condense links, plus the reference packages tests use.
#
# torch pin: 2.11.0 is the first PyPI wheel built against CUDA 13 (Requires-Dist names
# nvidia-*-cu13), matching the CUDA 13 toolkit in /usr/local/cuda, and it is the version the
# GPU machines carry. It runs on CPU-only machines too.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TORCH_VERSION="${CONDENSE_TORCH_VERSION:-2.11.0}"
APT_PACKAGES=(build-essential cmake ninja-build ccache pkg-config zlib1g-dev
  libopenmpi-dev openmpi-bin libhdf5-dev libyaml-cpp-dev libsentencepiece-dev sentencepiece
  libcli11-dev libspdlog-dev libfmt-dev nlohmann-json3-dev googletest libgtest-dev
  dict-gcide fortunes fortunes-min iproute2)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "[install] apt-get install ${missing[*]}"
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
stamp="$VENV/.condense-deps-$TORCH_VERSION-v2"
if [[ ! -f "$stamp" ]]; then
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q "torch==$TORCH_VERSION"
  "$VENV/bin/pip" install -q numpy h5py "transformers>=4.45,<5" safetensors tensorboard sentencepiece pytest
  touch "$stamp"
fi
echo "[install] ok: $("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)')"
