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
