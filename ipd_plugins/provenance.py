"""What a run folder records about where it came from: versions, machine, git commit, data."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["run_meta", "versions", "machine", "git_commit"]

_DISTRIBUTIONS = ("ipd", "torch", "numpy", "d3rlpy", "minari", "gymnasium", "mujoco", "pluggy")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in _DISTRIBUTIONS:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def machine() -> str:
    """The CPU model and core count: float kernels, so made datasets and runs, differ by CPU."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def git_commit() -> str:
    """The package's git commit (``+dirty`` with uncommitted changes), or ``unknown``."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if out.returncode != 0:
        return "unknown"
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def run_meta(data_hash: str, replay: str) -> dict[str, Any]:
    """The provenance a run folder's ``config.yaml`` carries under ``meta`` (not an input)."""
    return {
        "dataset_hash": data_hash,
        "versions": versions(),
        "machine": machine(),
        "git_commit": git_commit(),
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
        "replay": replay,
    }
