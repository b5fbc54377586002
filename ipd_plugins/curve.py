"""Budget curves: the policy scored every ``run.eval_every`` steps while it trains.

A curve point at step k is the run's final evaluation (same actor, adapter, ``eval_episodes``
and evaluation seeds, :func:`~ipd_plugins.evaluate.score`) of the weights at step k, taken
inside :func:`isolated`: training's random streams (torch, numpy, Python) and every module's
train/eval mode are as they were before it. So, for a policy whose schedule does not depend on
``n_steps`` (``ipd-dt``'s and d3rlpy DT's warm-up then constant rate), the point at step k is
the score of a k-step run, and one run gives the scores of every budget k = eval_every, 2
eval_every, ...; for others (``gtp``'s curriculum, IQL's cosine schedule) it is a learning
curve.

The points go to the stage's ``log.csv`` (keys :data:`CURVE_KEYS`), and :func:`read_curve`
reads them back for ``results.json`` (a reused or resumed stage included).
"""

from __future__ import annotations

import contextlib
import csv
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ipd_plugins.evaluate import EvalResult
from registry.protocols import Logger

__all__ = [
    "CURVE_KEYS",
    "isolated",
    "curve_values",
    "with_curve",
    "read_log",
    "read_curve",
    "missing_steps",
    "stage_curve",
]

#: ``log.csv`` keys of a curve point. ``eval_normalized`` is the normalised mean (the mean
#: return when the env has no reference scores, as before); ``eval_normalized_std`` is logged
#: only when the scores are normalised.
CURVE_KEYS = (
    "eval_normalized",
    "eval_normalized_std",
    "eval_return",
    "eval_return_std",
    "eval_episodes",
)


def _modules(owners: tuple[Any, ...], depth: int = 2) -> list[nn.Module]:
    """Every ``nn.Module`` that ``owners`` are, or hold as attributes (``depth`` levels)."""
    found: dict[int, nn.Module] = {}

    def visit(obj: Any, level: int) -> None:
        if isinstance(obj, nn.Module):
            for m in obj.modules():
                found.setdefault(id(m), m)
            return
        if level == 0 or isinstance(obj, (str, bytes, int, float, np.ndarray, torch.Tensor)):
            return
        items = getattr(obj, "__dict__", None)
        if isinstance(items, dict):
            for value in list(items.values()):
                visit(value, level - 1)

    for owner in owners:
        visit(owner, depth)
    return list(found.values())


@contextlib.contextmanager
def isolated(*owners: Any) -> Iterator[None]:
    """Run an evaluation mid-training without changing what training does next: torch's global
    RNG (CPU, and every CUDA device once CUDA is in use), numpy's and Python's are restored
    afterwards, and so is the train/eval mode of every module ``owners`` are or hold (e.g. a
    policy's net, which acting may switch to eval mode: dropout)."""
    modes = [(m, m.training) for m in _modules(owners)]
    py_state = random.getstate()
    np_state = np.random.get_state()
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    devices = list(range(torch.cuda.device_count())) if cuda else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        for module, training in modes:
            module.training = training


def curve_values(res: EvalResult) -> dict[str, float]:
    """What ``log.csv`` gets of one curve point."""
    out = {
        "eval_normalized": res.mean_return if res.normalized_mean is None else res.normalized_mean
    }
    if res.normalized_std is not None:
        out["eval_normalized_std"] = res.normalized_std
    out.update(
        eval_return=res.mean_return,
        eval_return_std=res.std_return,
        eval_episodes=float(res.n_episodes),
    )
    return out


def with_curve(log: Logger, every: int, evaluate: Callable[[], EvalResult], *owners: Any) -> Logger:
    """``log``, plus a curve point (``evaluate()`` inside :func:`isolated` of ``owners``)
    logged at every step that is a multiple of ``every`` (0: ``log`` itself)."""
    if not every:
        return log

    def logged(step: int, values: dict[str, float]) -> None:
        log(step, values)
        if step > 0 and step % every == 0:
            with isolated(*owners):
                res = evaluate()
            log(step, curve_values(res))

    return logged


def read_log(path: Path, keys: tuple[str, ...] | None = None) -> dict[int, dict[str, float]]:
    """step -> key -> value of a stage's ``log.csv`` (only ``keys``, if given): for each step
    and key the last row wins (a resumed stage logs again the steps after its checkpoint)."""
    rows: dict[int, dict[str, float]] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            if keys is None or row.get("key") in keys:
                rows.setdefault(int(row["step"]), {})[row["key"]] = float(row["value"])
    return rows


def read_curve(path: Path, every: int) -> list[dict[str, Any]]:
    """The curve points of a stage's ``log.csv`` (:func:`read_log`) at multiples of ``every``,
    by step. Points logged before the curve had ``eval_return`` (3-episode ``eval_normalized``
    only) are not comparable and are left out."""
    if not every or not path.exists():
        return []
    rows = read_log(path, CURVE_KEYS)
    out = []
    for step in sorted(rows):
        point = rows[step]
        if step % every or "eval_return" not in point:
            continue
        normalized = "eval_normalized_std" in point
        out.append(
            {
                "step": step,
                "normalized_mean": point.get("eval_normalized") if normalized else None,
                "normalized_std": point.get("eval_normalized_std"),
                "mean_return": point["eval_return"],
                "std_return": point.get("eval_return_std"),
                "n_episodes": int(point.get("eval_episodes", 0)),
            }
        )
    return out


def missing_steps(
    curve: list[dict[str, Any]], every: int, n_steps: int | None, episodes: int
) -> list[int]:
    """The multiples of ``every`` up to ``n_steps`` without a point of ``episodes`` episodes
    (a stage reused from a run with another ``eval_every`` or ``eval_episodes``)."""
    if not every or not n_steps:
        return []
    have = {p["step"] for p in curve if p["n_episodes"] == episodes}
    return [k for k in range(every, n_steps + 1, every) if k not in have]


def stage_curve(
    stage_dir: str | Path,
    every: int,
    n_steps: int | None,
    episodes: int,
    echo: Callable[[str], None],
    stage: str,
) -> list[dict[str, Any]]:
    """The curve of a trained stage (:func:`read_curve` of its ``log.csv``), saying which points
    are missing (the curve is in the stage's key, so only a stage whose log.csv predates the
    points' format lacks them)."""
    path = Path(stage_dir) / "log.csv"
    curve = read_curve(path, every)
    missing = missing_steps(curve, every, n_steps, episodes)
    if missing:
        echo(
            f"[{stage}] no {episodes}-episode curve point at step(s) "
            f"{', '.join(map(str, missing))} in {path} (a stage logged before curve points had "
            "this format; delete it to retrain)"
        )
    return curve
