#!/usr/bin/env bash
# Prepares what scripts/device_check.sh needs on a GPU machine that has no Debian development
# libraries and no network (the machines lent here: one H200, torch 2.11.0+cu130 at
# /opt/torch/.venv, nvcc 13; see the device_check.sh header). Run here, after scripts/build.sh:
#
#   bash scripts/device_pack.sh            # writes .device_pack/ (git-ignored, about 25 MB)
#
# Prebuilt and carried rather than built there: the binaries are x86-64 like that machine, built
# against the same torch wheel (2.11.0, CUDA 13), so they run against its LibTorch unchanged;
# building there would need every Debian -dev package carried and minutes of device time.
# The pack holds:
#   bin/   condense, the CUDA test executables and the GPU benchmarks (stripped)
#   lib/   every shared library they load that is neither glibc's, libstdc++/libgcc (newer
#          there), LibTorch's nor CUDA's (those come from the torch wheel there)
#   data/  a small GCIDE token store (12000 documents, 1.3M tokens, vocabulary 4096), since the
#          corpus is a Debian package that machine lacks
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
PACK=.device_pack
targets=(condense tests/test_cuda_memory tests/test_cuda_comm tests/test_cuda_local_update tests/test_cuda_kernels
         bench/codec_device_bench bench/memory_bench)

echo "device_pack: building ${targets[*]}"
ninja -C "$BUILD" "${targets[@]}" >/dev/null
rm -rf "$PACK.tmp" && mkdir -p "$PACK.tmp/bin" "$PACK.tmp/lib" "$PACK.tmp/data"
for t in "${targets[@]}"; do
  strip -o "$PACK.tmp/bin/$(basename "$t")" "$BUILD/$t"
done

# The shared-library closure, minus what the GPU machine provides itself: glibc and the GCC
# runtime (newer there), and everything of the torch wheel and CUDA (its torch/lib and nvidia/*
# libraries, found there through LD_LIBRARY_PATH).
provided='^(linux-vdso|ld-linux|libc\.so|libm\.so|libdl\.so|libpthread\.so|librt\.so|libutil\.so|libresolv\.so|libstdc\+\+|libgcc_s)'
for t in "${targets[@]}"; do ldd "$BUILD/$t"; done |
  awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | sort -u |
  while read -r name path; do
    [[ $name =~ $provided ]] && continue
    [[ $path == */site-packages/* || $path == /usr/local/cuda* ]] && continue
    cp -L "$path" "$PACK.tmp/lib/$name"
  done

store="$PACK.tmp/data/gcide12k-bpe4096.h5"
"$BUILD/condense" prepare --corpus gcide --max-documents 12000 --vocab-size 4096 --out "$store" >/dev/null 2>&1

tar -C "$PACK.tmp" -cJf "$PACK.tmp/pack.tar.xz" bin lib data
rm -rf "$PACK" && mkdir -p "$PACK" && mv "$PACK.tmp/pack.tar.xz" "$PACK/" && rm -rf "$PACK.tmp"
git rev-parse HEAD >"$PACK/commit" 2>/dev/null || true
if ! git diff --quiet HEAD 2>/dev/null; then echo "dirty" >>"$PACK/commit"; fi
echo "device_pack: $(du -h "$PACK/pack.tar.xz" | cut -f1) in $PACK/pack.tar.xz ($(wc -l <"$PACK/commit") line commit file)"
echo "device_pack: run on the GPU machine with: bash scripts/device_check.sh  (carry .device_pack)"
