"""Environments behind datasets: can they be built, what to install, their spaces, ref scores."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from ipd_plugins.data import DatasetError, EnvironmentUnavailableError, envs
from ipd_plugins.data.envs import (
    check_environment,
    env_key,
    env_spaces,
    max_episode_steps,
    ref_scores,
)


@pytest.fixture
def fresh_cache():
    """Forget the cached spaces before and after (tests below fake failures)."""
    envs._spaces.cache_clear()
    yield
    envs._spaces.cache_clear()


def test_known_environment_and_its_spaces(fresh_cache, monkeypatch):
    check_environment("Pendulum-v1")
    spaces = env_spaces("Pendulum-v1")
    assert (spaces.obs_dim, spaces.act_dim) == (3, 1)
    np.testing.assert_array_equal(spaces.act_low, [-2.0])
    np.testing.assert_array_equal(spaces.act_high, [2.0])
    spaces.act_low[0] = 7.0  # callers get copies: the cache is not changed
    assert env_spaces("Pendulum-v1").act_low[0] == -2.0

    def no_more_builds(*args, **kwargs):
        raise AssertionError("built again")

    monkeypatch.setattr(envs, "make_env", no_more_builds)  # cached: built once per id
    assert env_spaces("Pendulum-v1").obs_dim == 3
    obs_dim, act_dim, low, high = env_spaces("Pendulum-v1")  # a 4-tuple
    assert (obs_dim, act_dim) == (3, 1)
    assert max_episode_steps("Pendulum-v1") == 200
    assert max_episode_steps("Hopper-v5") == 1000
    assert max_episode_steps("NoSuchEnv-v0") is None and max_episode_steps(None) is None


def test_unknown_id_says_so_with_close_matches(fresh_cache):
    with pytest.raises(EnvironmentUnavailableError) as err:
        check_environment("Hoper-v5")
    msg = str(err.value)
    assert "unknown environment 'Hoper-v5'" in msg and "Hopper-v5" in msg
    assert isinstance(err.value, DatasetError) and err.value.install is None
    with pytest.raises(EnvironmentUnavailableError, match="environment of the task 'hopper' is "):
        check_environment("hopper-medium-v2")  # D4RL's dataset name, not a gymnasium id
    with pytest.raises(EnvironmentUnavailableError, match="no environment id given"):
        check_environment("")


@pytest.mark.parametrize(
    "env_id", ["AdroitHandDoor-v1", "AdroitHandPen-v1", "FrankaKitchen-v1", "AntMaze_UMaze-v5"]
)
def test_missing_gymnasium_robotics_names_the_package(fresh_cache, monkeypatch, env_id):
    monkeypatch.setitem(sys.modules, "gymnasium_robotics", None)  # as if not installed
    with pytest.raises(EnvironmentUnavailableError) as err:
        check_environment(env_id)
    assert "gymnasium-robotics" in str(err.value)
    assert err.value.install == "pip install gymnasium-robotics"
    assert f"'{env_id}'" in str(err.value)


def test_missing_mujoco_names_the_extra(fresh_cache, monkeypatch):
    import gymnasium as gym

    def no_mujoco(env_id, **kwargs):
        raise gym.error.DependencyNotInstalled("MuJoCo is not installed")

    monkeypatch.setattr(envs, "make_env", no_mujoco)
    with pytest.raises(EnvironmentUnavailableError) as err:
        check_environment("Walker2d-v5")
    assert 'pip install "gymnasium[mujoco]"' in str(err.value)
    assert err.value.install == 'pip install "gymnasium[mujoco]"'
    assert envs.action_bounds("Walker2d-v5") is None  # the old helper still answers None


def test_adroit_ids_map_to_the_shipped_reference_scores():
    for task in ("door", "pen", "hammer", "relocate"):
        expected = ref_scores(task)
        assert expected is not None
        for version in ("v0", "v1", "v2"):
            env_id = f"AdroitHand{task.capitalize()}-{version}"
            assert env_key(env_id) == task
            assert ref_scores(env_id) == expected
    assert ref_scores("D4RL/door/human-v2") == ref_scores("door")
    assert ref_scores("AdroitHandDoor-v1") == (-56.512833, 2880.5693087298737)
