"""d3rlpy ``ReplayBuffer`` / ``MDPDataset`` <-> :class:`TrajectoryDataset`.

A d3rlpy episode stores ``T`` observations, ``T`` actions, ``T`` rewards and one ``terminated``
flag; s'_t is ``observations[t+1]``. So the format has no room for the final next observation:

* **to_d3rlpy**: every step is kept (observations, actions, rewards: returns and sequence
  slices are exact). For a terminated episode d3rlpy samples all ``T`` transitions (the last
  with ``terminal=1`` and a zero s', which it never bootstraps from). For a truncated (or
  unfinished) episode d3rlpy samples only ``T-1`` transitions: the last step's s' is lost. This
  is d3rlpy's own convention (its ``MDPDataset`` and online writer do the same with timeouts),
  so d3rlpy baselines trained on the result see the data exactly as they see D4RL data. A
  one-step unfinished episode has no transition at all and d3rlpy leaves it out of
  ``buffer.episodes``.
* **from_d3rlpy**: a terminated episode keeps all ``T`` steps; its last s' is unknown and set to
  the last observation, flagged by the boolean extra ``next_obs_missing`` (a dynamics model
  should skip that row). A non-terminated episode keeps its ``T-1`` steps with a known s' (the
  unsampled last step is dropped, and a warning says how many) and its new last step is marked
  truncated.

So ``from_d3rlpy(to_d3rlpy(ds))`` equals ``ds`` except for the last step of every truncated
episode (gone) and the last s' of every terminated episode (flagged placeholder).
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ipd_plugins.data import envs
from ipd_plugins.data.dataset import DatasetError, TrajectoryDataset
from ipd_plugins.data.hdf5_io import NEXT_OBS_MISSING
from ipd_plugins.data.validate import enforce_action_bounds, named_source

if TYPE_CHECKING:
    import d3rlpy

__all__ = [
    "to_d3rlpy",
    "from_d3rlpy",
    "module_states",
    "load_module_states",
    "seeded",
    "run_updates",
]


def to_d3rlpy(ds: TrajectoryDataset) -> d3rlpy.dataset.ReplayBuffer:
    """A d3rlpy ``ReplayBuffer`` (``InfiniteBuffer``) with one d3rlpy ``Episode`` per episode.

    ``terminated`` is the episode's last ``terminations`` flag; rewards have shape (T, 1).
    """
    from d3rlpy.constants import ActionSpace
    from d3rlpy.dataset import Episode, InfiniteBuffer, ReplayBuffer

    episodes = [
        Episode(
            observations=np.ascontiguousarray(ep.observations, np.float32),
            actions=np.ascontiguousarray(ep.actions, np.float32),
            rewards=np.ascontiguousarray(ep.rewards, np.float32).reshape(-1, 1),
            terminated=bool(ep.terminations[-1]),
        )
        for ep in ds.episodes()
    ]
    return ReplayBuffer(
        InfiniteBuffer(),
        episodes=episodes,
        action_space=ActionSpace.CONTINUOUS,
        action_size=ds.act_dim,
    )


def from_d3rlpy(
    buffer: d3rlpy.dataset.ReplayBufferBase,
    *,
    env_id: str | None = None,
    name: str = "d3rlpy",
    clip_actions: bool = False,
) -> TrajectoryDataset:
    """Read the episodes of a d3rlpy ``ReplayBuffer``/``MDPDataset`` (see the module docstring).

    d3rlpy keeps no environment: ``env_id`` (optional) supplies the reference scores and the
    declared action space (when gymnasium can create it); actions outside it are an error
    unless ``clip_actions=True``.
    """
    src = f"d3rlpy buffer '{name}'"
    cols: dict[str, list[np.ndarray]] = {}
    lengths: list[int] = []
    dropped = 0
    for i, ep in enumerate(buffer.episodes):
        obs = ep.observations
        if not isinstance(obs, np.ndarray) or obs.ndim != 2:
            raise DatasetError(
                f"{src}, episode {i}: only flat (T, O) observation arrays are supported, got "
                f"{type(obs).__name__} {getattr(obs, 'shape', '')}"
            )
        t = int(ep.actions.shape[0])
        if len(obs) != t or len(ep.rewards) != t:
            raise DatasetError(
                f"{src}, episode {i}: {len(obs)} observations, {t} actions and "
                f"{len(ep.rewards)} rewards; expected equal lengths"
            )
        terminated = bool(ep.terminated)
        n = t if terminated else t - 1
        if n <= 0:
            dropped += t
            continue
        next_obs = np.concatenate([obs[1:], obs[-1:]])[:n]
        term = np.zeros(n, bool)
        trunc = np.zeros(n, bool)
        missing = np.zeros(n, bool)
        if terminated:
            term[-1] = missing[-1] = True
        else:
            trunc[-1] = True
            dropped += 1
        row = {
            "observations": obs[:n],
            "next_observations": next_obs,
            "actions": np.asarray(ep.actions).reshape(t, -1)[:n],
            "rewards": np.asarray(ep.rewards).reshape(t)[:n],
            "terminations": term,
            "truncations": trunc,
            NEXT_OBS_MISSING: missing,
        }
        for key, value in row.items():
            cols.setdefault(key, []).append(value)
        lengths.append(n)
    if not lengths:
        raise DatasetError(f"{src}: no episode with a transition (the buffer is empty)")
    if dropped:
        warnings.warn(
            f"{src}: dropped {dropped} step(s): the last step of each non-terminated episode has "
            "no next observation in d3rlpy's format",
            stacklevel=2,
        )
    arrays = {k: np.concatenate(v) for k, v in cols.items()}
    missing = arrays.pop(NEXT_OBS_MISSING)
    bounds = envs.action_bounds(env_id)
    low, high = bounds if bounds is not None else (None, None)
    arrays["actions"], _ = enforce_action_bounds(
        arrays["actions"], low, high, clip_actions=clip_actions, source=src
    )
    ref = envs.ref_scores(env_id) or (None, None)
    with named_source(src):
        return TrajectoryDataset.from_arrays(
            arrays,
            np.asarray(lengths, np.int64),
            env_id=env_id,
            name=name,
            ref_min_score=ref[0],
            ref_max_score=ref[1],
            action_low=low,
            action_high=high,
            extras={NEXT_OBS_MISSING: missing} if missing.any() else {},
        )


# -- d3rlpy algorithms behind ipd's plumbing (the value plugin and the baselines) ------------
def module_states(modules: Any) -> dict[str, dict[str, Any]]:
    """The state dicts of a d3rlpy impl's torch modules, by name (weights-only saving)."""
    return {name: m.state_dict() for name, m in modules.get_torch_modules().items()}


def load_module_states(modules: Any, state: dict[str, Any], path: Path, what: str) -> None:
    """Load :func:`module_states` back; a mismatch fails naming ``path`` and ``what``."""
    try:
        for name, module in modules.get_torch_modules().items():
            module.load_state_dict(state[name])
    except (RuntimeError, KeyError) as err:
        raise ValueError(f"{path} does not fit this {what}'s networks: {err}") from err
    modules.set_eval()


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """torch's and numpy's global RNGs seeded with ``seed`` (d3rlpy samples with numpy's),
    both restored afterwards so the caller's streams are untouched."""
    np_state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            np.random.seed(seed % 2**32)
            torch.manual_seed(seed)
            yield
    finally:
        np.random.set_state(np_state)


def run_updates(
    algo: Any,
    sample: Callable[[], Any],
    start: int,
    n_steps: int,
    log_every: int,
    checkpoint_every: int,
    save: Callable[[int], None],
    log: Callable[[int, dict[str, float]], None] | None,
    name: str,
) -> dict[str, float]:
    """d3rlpy's ``algo.update(sample())`` from step ``start + 1`` to ``n_steps`` (what its
    ``fit`` does), with ipd's logging (means over ``log_every`` steps, non-finite losses an
    error) and ``save(step)`` every ``checkpoint_every`` steps and at the end. The modules are
    in train mode while updating (d3rlpy's ``update`` sets it) and in eval mode afterwards,
    also when training fails."""
    from tqdm.auto import tqdm

    sums: dict[str, float] = {}
    count, last = 0, {}
    t0 = time.perf_counter()
    bar = tqdm(total=n_steps, initial=min(start, n_steps), desc=name, disable=None, leave=False)
    try:
        for step in range(start + 1, n_steps + 1):
            for k, v in algo.update(sample()).items():
                sums[k] = sums.get(k, 0.0) + float(v)
            count += 1
            bar.update(1)
            if step % log_every == 0 or step == n_steps:
                last = {k: v / count for k, v in sums.items()}
                sums, count = {}, 0
                if not all(math.isfinite(v) for v in last.values()):
                    raise FloatingPointError(f"{name}: non-finite losses at step {step}: {last}")
                if log is not None:
                    log(step, dict(last))
            if step % checkpoint_every == 0 or step == n_steps:
                save(step)
    finally:
        bar.close()
        algo.impl.modules.set_eval()
    elapsed = time.perf_counter() - t0
    trained = max(0, n_steps - start)
    return {
        **last,
        "steps": float(max(start, n_steps)),
        "steps_trained": float(trained),
        "steps_per_sec": trained / elapsed if trained and elapsed > 0 else 0.0,
    }
