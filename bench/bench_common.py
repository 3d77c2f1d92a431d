"""Helpers shared by the benchmark drivers in bench/ (Python: benchmarks and baselines only)."""
from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def finish_report(section: str, results: str, append: bool, json_out: str | None, payload: dict) -> None:
    """Prints a markdown section, writes `payload` as JSON to json_out (if given) and appends the
    section to the results file (creating it with a header) unless append is False."""
    print(section)
    if json_out:
        with open(json_out, "w") as f:
            json.dump(payload, f, indent=1)
    if append:
        path = Path(results)
        if not path.exists():
            path.write_text("# Benchmark results\n\nEach section is appended by the benchmark that "
                            "produced it, with its command, machine and load.\n")
        with open(path, "a") as f:
            f.write(section)
        print(f"appended to {path}")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (for result headers)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_head() -> str:
    """The short commit of the repository (read-only: does not touch the index)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
    except Exception:
        return "unknown"


def held_out_order(n: int) -> list[int]:
    """0..n-1 in bit-reversed order, as data/token_store.cpp's held_out_order()."""
    bits = max(0, (n - 1).bit_length()) if n > 0 else 0
    order = []
    for i in range(1 << bits):
        r = int(format(i, f"0{bits}b")[::-1], 2) if bits else 0
        if r < n:
            order.append(r)
    return order


def held_out_ids(f):
    """The validation split of an open condense token store (h5py.File) as condense's validation,
    eval and calibration read it (TokenStore::held_out_ids): its documents in held_out_order."""
    import numpy as np
    ids, off = f["val/ids"][...], f["val/doc_offsets"][...]
    docs = len(off) - 1
    if docs <= 0:
        return ids
    return np.concatenate([ids[off[d]:off[d + 1]] for d in held_out_order(docs)])
