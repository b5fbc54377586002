"""What the machine offers a run: how many CPU threads it can use without thrashing."""

from __future__ import annotations

import os

import torch

__all__ = ["usable_cores", "auto_threads", "set_threads"]


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def auto_threads() -> int:
    """Intra-op threads for a new run: the usable cores not already busy (1-minute load).

    Two runs that each take every core slow each other down by an order of magnitude on a
    2-core machine (OpenMP threads spin while waiting for a core), not by two; so a run started
    beside a busy process takes what is left, at least one thread.
    """
    cores = usable_cores()
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):
        busy = 0.0
    return max(1, min(cores, int(cores - busy + 0.5)))


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (``None``: :func:`auto_threads`); returns the number set."""
    n = int(threads) if threads else auto_threads()
    torch.set_num_threads(n)
    return n
