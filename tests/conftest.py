"""Shared fixtures (keep small; append new fixtures at the end)."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def minari_store(tmp_path, monkeypatch):
    """An empty local Minari store in a temp folder (``MINARI_DATASETS_PATH``)."""
    store = tmp_path / "minari"
    store.mkdir()
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(store))
    return store


def _make_episodes(
    lengths=(5, 3, 4),
    obs_dim=3,
    act_dim=1,
    act_bound=2.0,
    ends=("term", "trunc", "trunc"),
    seed=0,
):
    """Per-episode dicts (Minari layout, T+1 observations). Episode i's observations are
    offset by 100 i, so a step borrowed from a neighbouring episode is easy to spot."""
    rng = np.random.default_rng(seed)
    eps = []
    for i, (t, end) in enumerate(zip(lengths, ends, strict=True)):
        last = np.zeros(t, bool)
        last[-1] = True
        eps.append(
            dict(
                observations=(rng.normal(size=(t + 1, obs_dim)) + 100 * i).astype(np.float32),
                actions=rng.uniform(-act_bound, act_bound, (t, act_dim)).astype(np.float32),
                rewards=rng.normal(size=t).astype(np.float32),
                terminations=last & (end == "term"),
                truncations=last & (end == "trunc"),
            )
        )
    return eps


@pytest.fixture
def make_episodes():
    """The episode factory above: ``make_episodes(lengths=..., ends=..., ...)``."""
    return _make_episodes


@pytest.fixture
def toy_dataset():
    """A 3-episode Pendulum-v1-shaped dataset (terminated, truncated, truncated)."""
    from ipd_plugins.data import TrajectoryDataset
    from ipd_plugins.data.envs import ref_scores

    bound = np.array([2.0], np.float32)
    ref_min, ref_max = ref_scores("Pendulum-v1")
    return TrajectoryDataset.from_episodes(
        _make_episodes(),
        env_id="Pendulum-v1",
        name="toy",
        ref_min_score=ref_min,
        ref_max_score=ref_max,
        action_low=-bound,
        action_high=bound,
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A Minari store with a 1,200-step pendulum-medium-replay dataset (one per test module)."""
    path = tmp_path_factory.mktemp("minari")
    mp = pytest.MonkeyPatch()
    mp.setenv("MINARI_DATASETS_PATH", str(path))
    from ipd_plugins.data.make import make_dataset

    make_dataset("pendulum-medium-replay", steps=1_200, seed=0)
    yield path
    mp.undo()


@pytest.fixture
def toy_reach():
    """The 1-d ToyReach task of ``ipd_plugins.data.toy``, registered with gymnasium:
    ``toy_reach.env_id``, ``toy_reach.dataset(n_episodes=60, seed=0)`` (noisy controllers) and
    ``toy_reach.value(record=False)`` (its exact value learner)."""
    from types import SimpleNamespace

    from ipd_plugins.data.toy import ToyReachValue, register_toy_reach, toy_reach_dataset

    return SimpleNamespace(
        env_id=register_toy_reach(), dataset=toy_reach_dataset, value=ToyReachValue
    )


@pytest.fixture(autouse=True, scope="session")
def _bf16_cache(tmp_path_factory):
    """``run.precision: auto`` measures once whether bf16 pays on this CPU and remembers it in
    ``$XDG_CACHE_HOME/ipd``: a temp folder here, not the user's cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
    yield
    mp.undo()
