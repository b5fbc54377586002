"""Files that survive crashes and never run code: atomic writes and weights-only loading.

Every write goes to a temporary file in the target's folder that is then renamed over the
target, so a crash never leaves half a file. Checkpoints hold only tensors and plain values and
are read back with ``torch.load(weights_only=True)``: a checkpoint file can never run code.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

__all__ = [
    "atomic_write",
    "atomic_write_text",
    "write_json",
    "atomic_save",
    "safe_load",
    "load_component",
    "load_state_checked",
    "set_aside",
    "is_set_aside",
]


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(f)`` on a temporary binary file next to ``path``, then rename it over."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=_jsonable) + "\n")


#: Why a file was set aside (:func:`set_aside`): unusable, made from other inputs, retrained.
SET_ASIDE_REASONS = (".corrupt", ".stale", ".replaced")
#: A set-aside copy's name ends with a reason, then maybe a generation.
_SET_ASIDE_NAME = re.compile(f"({'|'.join(map(re.escape, SET_ASIDE_REASONS))})(\\.\\d+)?$")


def set_aside(path: str | Path, suffix: str) -> Path:
    """Rename ``path`` to ``<path><suffix>`` (``.corrupt``, ``.stale`` or ``.replaced``) and
    return the new path; when that copy exists, to ``<path><suffix>.2``, ``.3``, ...: a file
    set aside is never overwritten, so the first one (the original) stays ``<path><suffix>``."""
    path = Path(path)
    if suffix not in SET_ASIDE_REASONS:
        raise ValueError(f"set_aside: suffix {suffix!r} is not .corrupt, .stale or .replaced")
    target, n = path.with_name(path.name + suffix), 2
    while target.exists():
        target, n = path.with_name(f"{path.name}{suffix}.{n}"), n + 1
    path.replace(target)
    return target


def is_set_aside(name: str) -> bool:
    """Whether a file name is a copy made by :func:`set_aside`."""
    return _SET_ASIDE_NAME.search(name) is not None


def _jsonable(x: Any) -> Any:
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` atomically (see the module docstring)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def safe_load(path: str | Path) -> Any:
    """Load a file written by :func:`atomic_save` without unpickling arbitrary objects.

    A file that is truncated, corrupted or holds pickled objects raises :class:`ValueError`
    naming the file (the stage cache then retrains the stage that wrote it).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError for unsafe content, RuntimeError when truncated
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"{path} cannot be read as a weights-only checkpoint (truncated, corrupted or not "
            f"written by ipd; it is never unpickled): {first}"
        ) from err


def load_component(path: str | Path, fmt: str, what: str, dims: tuple[int, int]) -> dict[str, Any]:
    """:func:`safe_load` a component checkpoint ``{"format", "obs_dim", "act_dim", "state", ...}``
    and check that it is a ``what`` (``format == fmt``) made for ``dims`` = (obs_dim, act_dim)."""
    blob = safe_load(path)
    if not isinstance(blob, dict) or blob.get("format") != fmt:
        raise ValueError(f"{path} is not a {what} checkpoint (format {fmt})")
    saved = (blob["obs_dim"], blob["act_dim"])
    if saved != tuple(dims):
        raise ValueError(
            f"{path} was trained for obs_dim, act_dim = {saved}; this {what} is built for {dims}"
        )
    return blob


def load_state_checked(
    module: torch.nn.Module,
    blob: dict[str, Any],
    path: str | Path,
    what: str,
    sizes: dict[str, Any],
) -> None:
    """``module.load_state_dict(blob["state"])``; a shape mismatch raises :class:`ValueError`
    naming the saved and the current ``sizes`` (config keys, e.g. hidden and n_layers)."""
    try:
        module.load_state_dict(blob["state"])
    except RuntimeError as err:
        saved = {k: blob.get("config", {}).get(k) for k in sizes}
        here = ", ".join(f"{k}={v}" for k, v in sizes.items())
        raise ValueError(
            f"{path} does not fit this {what}'s networks (saved {saved}, here {here}): {err}"
        ) from err
