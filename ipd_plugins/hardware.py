"""What the machine offers a run: CPU threads that do not thrash, and bf16 where it is native.

Two runs that each take every core slow each other down by an order of magnitude on a 2-core
machine (OpenMP threads spin while they wait for a core), not by two. So every ``ipd`` process
that sets its threads writes a *claim* (``<pid>.json``: how many threads it took) into a shared
folder, under a file lock, and a new run takes only the cores that neither the live claims nor
other work (the 1-minute load, or the cores busy right now where fewer, beyond what the claims
explain) already use -- at least one.
Runs started at the same moment see each other's claims at once, where the load average
would lag by a minute. Claims of processes that have exited are removed by the next reader.

``run.precision: auto`` trains in bf16 autocast where the chip computes bf16 natively (a CPU
with AVX-512 BF16 or AMX, a CUDA GPU that supports it) and in fp32 elsewhere, where bf16 is
emulated and slower (benchmarks/results/precision.md).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import json
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

__all__ = [
    "usable_cores",
    "claims_dir",
    "thread_rule",
    "auto_threads",
    "set_threads",
    "PRECISIONS",
    "cpu_model",
    "machine_summary",
    "native_bf16",
    "resolve_device",
    "resolve_precision",
    "autocast",
]

#: where the claims live; ``IPD_CLAIMS_DIR`` overrides (tests, or a shared scratch folder)
CLAIMS_ENV = "IPD_CLAIMS_DIR"


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cpu_times() -> tuple[int, int] | None:
    """(idle, total) jiffies of all CPUs since boot (Linux ``/proc/stat``), else None."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(x) for x in fh.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return (fields[3] + fields[4], sum(fields)) if len(fields) == 8 else None


def _busy_cores(window: float = 0.2) -> float | None:
    """Cores busy over the last ``window`` seconds (all processes), or None off Linux."""
    first = _cpu_times()
    if first is None:
        return None
    time.sleep(window)
    second = _cpu_times()
    if second is None or second[1] <= first[1]:
        return None
    idle, total = second[0] - first[0], second[1] - first[1]
    return (1.0 - idle / total) * (os.cpu_count() or 1)


def _load() -> float:
    """Other work on the machine, in cores: the 1-minute load average, or the cores busy right
    now where that is lower (the average still counts a job that ended a minute ago; a run
    started just after it would otherwise take one thread for its whole life)."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    busy = _busy_cores() if load > 0.5 else None
    return load if busy is None else min(load, busy)


def claims_dir() -> Path:
    """The folder of thread claims shared by this user's ``ipd`` processes on this machine."""
    path = os.environ.get(CLAIMS_ENV)
    if path:
        return Path(path)
    return Path(tempfile.gettempdir()) / f"ipd-threads-{os.getuid()}"


def thread_rule(cores: int, load: float, claimed_by_others: int, claimed_by_self: int = 0) -> int:
    """Threads for a run: the cores left by other runs' claims and by other work.

    ``load`` (the 1-minute load average) counts the claimed runs too once they have run for a
    while, so only the load beyond all claims (``claimed_by_others + claimed_by_self``) is
    counted as other work. At least 1, at most ``cores``.
    """
    other_work = max(0.0, load - claimed_by_others - claimed_by_self)
    free = cores - claimed_by_others - other_work
    return max(1, min(cores, int(free + 0.5)))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_claims(folder: Path) -> dict[int, int]:
    """pid -> threads of the live claims; removes those of processes that have exited."""
    claims = {}
    for path in folder.glob("*.json"):
        try:
            pid = int(path.stem)
            threads = int(json.loads(path.read_text())["threads"])
        except (ValueError, KeyError, TypeError, OSError, json.JSONDecodeError):
            path.unlink(missing_ok=True)  # unreadable: not a claim anyone can rely on
            continue
        if _alive(pid):
            claims[pid] = threads
        else:
            path.unlink(missing_ok=True)
    return claims


def _release(folder: Path, pid: int) -> None:
    with contextlib.suppress(OSError):
        (folder / f"{pid}.json").unlink(missing_ok=True)


def auto_threads(folder: Path | None = None) -> int:
    """Intra-op threads a new run would take now (see :func:`thread_rule`), without claiming."""
    folder = folder or claims_dir()
    try:
        with _locked(folder):
            claims = _read_claims(folder)
    except OSError:
        claims = {}
    mine = claims.pop(os.getpid(), 0)
    return thread_rule(usable_cores(), _load(), sum(claims.values()), mine)


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (``None``: the rule) and claim them; returns the number.

    An explicit number is claimed too, so that runs choosing by the rule leave those cores
    alone. The claim is released when the process exits.
    """
    folder = claims_dir()
    pid = os.getpid()
    try:
        with _locked(folder):
            claims = _read_claims(folder)
            mine = claims.pop(pid, 0)
            n = (
                int(threads)
                if threads
                else thread_rule(usable_cores(), _load(), sum(claims.values()), mine)
            )
            tmp = folder / f".{pid}.tmp"
            tmp.write_text(json.dumps({"threads": n}))
            os.replace(tmp, folder / f"{pid}.json")
        atexit.register(_release, folder, pid)
    except OSError:  # no writable temp folder: fall back to the load alone
        n = int(threads) if threads else thread_rule(usable_cores(), _load(), 0)
    torch.set_num_threads(n)
    return n


# -- precision -------------------------------------------------------------------------------
#: ``run.precision`` values: ``auto`` picks bf16 where the hardware computes it natively
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")

#: CPU flags of native bf16 arithmetic (AVX-512 BF16, AMX)
BF16_CPU_FLAGS: frozenset[str] = frozenset({"avx512_bf16", "amx_bf16"})


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def native_bf16(device: str = "cpu") -> bool:
    """Whether ``device`` computes bf16 natively and faster: a CUDA GPU that supports it, or a
    CPU with AVX-512 BF16 / AMX on which a bf16 matmul also beats fp32 (:func:`bf16_pays`).

    Without those flags bf16 is emulated and slower. With them it is not always faster: this
    project measured bf16 at 0.75x of fp32 on a Xeon that reports ``avx512_bf16``
    (benchmarks/results/policy_speed.md) and 2-4x on an EPYC (precision.md); hence the check.
    """
    if torch.device(device).type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bool(cpu_flags() & BF16_CPU_FLAGS) and bf16_pays()


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; else what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _matmul_speedup(n: int = 512, reps: int = 5) -> float:
    """fp32 time over bf16 time of an n^3 matmul on one thread (best of ``reps`` each)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gen = torch.Generator().manual_seed(0)
        a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
        pairs = {torch.float32: (a, b), torch.bfloat16: (a.bfloat16(), b.bfloat16())}
        best = {dtype: float("inf") for dtype in pairs}
        for _ in range(reps):  # alternating, so that a burst of load hits both
            for dtype, (x, y) in pairs.items():
                t = time.perf_counter()
                x @ y
                best[dtype] = min(best[dtype], time.perf_counter() - t)
        return best[torch.float32] / best[torch.bfloat16]
    finally:
        torch.set_num_threads(before)


def bf16_pays(min_speedup: float = 1.2) -> bool:
    """Whether a bf16 matmul runs at least ``min_speedup`` times faster than fp32 on this CPU.

    Measured once per CPU model and torch version (a fraction of a second) and remembered in
    ``$XDG_CACHE_HOME/ipd/bf16.json``, so that every run on a machine makes the same choice
    (and gets the same stage keys) however loaded the machine is later.
    """
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ipd" / "bf16.json"
    key = f"{cpu_model()} | torch {torch.__version__}"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        speedup = _matmul_speedup()
        known[key] = {"speedup": round(speedup, 3), "bf16": speedup >= min_speedup}
        with contextlib.suppress(OSError):
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(known, indent=1))
            os.replace(tmp, cache)
    return bool(known[key]["bf16"])


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a CUDA GPU, else ``cpu``; others unchanged."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_precision(precision: str, device: str = "cpu") -> str:
    """``auto`` -> ``bf16`` where :func:`native_bf16`, else ``fp32``; the others unchanged."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if native_bf16(resolve_device(device)) else "fp32"
    return precision


def autocast(device: str | torch.device, precision: str) -> torch.autocast:
    """The autocast context of a resolved ``precision`` (a no-op for ``fp32``)."""
    device_type = torch.device(device).type
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16")


def machine_summary() -> str:
    """``<CPU model>, <n> cores, native bf16: yes|no``: the line benchmarks print."""
    return f"{cpu_model()}, {os.cpu_count()} cores, native bf16: {'yes' if native_bf16() else 'no'}"
