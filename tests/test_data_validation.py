"""Every bad input gets an error naming the field (and the file or id it came from)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from ipd_plugins.data import (
    DatasetError,
    TrajectoryDataset,
    from_d4rl_hdf5,
    from_minari,
    load_dataset,
    load_npz,
    save_npz,
    to_d4rl_hdf5,
)
from ipd_plugins.data.dataset import STEP_FIELDS
from ipd_plugins.data.validate import enforce_action_bounds

N = 12  # steps of the toy dataset (episodes of 5, 3, 4)


def _arrays(ds: TrajectoryDataset) -> dict[str, np.ndarray]:
    return {k: getattr(ds, k).copy() for k in STEP_FIELDS}


def _build(ds, **changes):
    arrays = _arrays(ds)
    lengths = changes.pop("episode_lengths", ds.episode_lengths)
    arrays.update(changes)
    return TrajectoryDataset.from_arrays(arrays, lengths)


# -- the in-memory dataset ----------------------------------------------------------------
def test_nan_and_inf(toy_dataset):
    obs = toy_dataset.observations.copy()
    obs[7, 1] = np.nan
    with pytest.raises(DatasetError, match=r"observations: 1 NaN/inf value\(s\), first at step 7"):
        _build(toy_dataset, observations=obs)
    rew = toy_dataset.rewards.copy()
    rew[[2, 9]] = np.inf
    with pytest.raises(DatasetError, match=r"rewards: 2 NaN/inf value\(s\), first at step 2"):
        _build(toy_dataset, rewards=rew)
    act = toy_dataset.actions.copy()
    act[0, 0] = -np.inf
    with pytest.raises(DatasetError, match="actions: 1 NaN/inf"):
        _build(toy_dataset, actions=act)


def test_mismatched_lengths(toy_dataset):
    with pytest.raises(DatasetError, match=f"rewards: has {N - 1} rows but actions has {N}"):
        _build(toy_dataset, rewards=toy_dataset.rewards[:-1])
    with pytest.raises(DatasetError, match=f"next_observations: has {N + 1} rows"):
        _build(toy_dataset, next_observations=np.zeros((N + 1, 3)))
    with pytest.raises(DatasetError, match=f"episode_lengths: sum to 11 but there are {N} steps"):
        _build(toy_dataset, episode_lengths=[5, 3, 3])
    with pytest.raises(DatasetError, match="episode_lengths: episode 1 is empty"):
        _build(toy_dataset, episode_lengths=[5, 0, 7])
    with pytest.raises(DatasetError, match=r"extras\['imagined'\]: has 3 rows"):
        toy_dataset.replace(extras={"imagined": np.zeros(3, bool)})


def test_empty_data(toy_dataset):
    with pytest.raises(DatasetError, match="no episodes: the dataset is empty"):
        TrajectoryDataset.from_episodes([])
    empty = {k: v[:0] for k, v in _arrays(toy_dataset).items()}
    with pytest.raises(DatasetError, match=r"actions: the dataset is empty \(0 steps\)"):
        TrajectoryDataset.from_arrays(empty, np.zeros(0, np.int64))


def test_wrong_ranks(toy_dataset):
    with pytest.raises(DatasetError, match=r"observations: expected rank 2, got shape \(12,\)"):
        _build(toy_dataset, observations=toy_dataset.observations[:, 0])
    # (N, 2) rewards are not flattened into 2N values: the rank is reported
    with pytest.raises(DatasetError, match=r"rewards: expected rank 1, got shape \(12, 2\)"):
        _build(toy_dataset, rewards=np.zeros((N, 2)))
    ok = _build(toy_dataset, rewards=toy_dataset.rewards[:, None])  # (N, 1) is fine
    np.testing.assert_array_equal(ok.rewards, toy_dataset.rewards)
    with pytest.raises(DatasetError, match=r"next_observations: dim 4 != observations dim 3"):
        _build(toy_dataset, next_observations=np.zeros((N, 4)))


def test_missing_key_in_episodes(make_episodes):
    eps = make_episodes()
    del eps[1]["rewards"]
    with pytest.raises(DatasetError, match="episode 1: missing key 'rewards'"):
        TrajectoryDataset.from_episodes(eps)
    eps = make_episodes()
    eps[0]["observations"] = eps[0]["observations"][:-2]
    with pytest.raises(DatasetError, match="episode 0: observations has 4 rows for 5 actions"):
        TrajectoryDataset.from_episodes(eps)


def test_actions_outside_the_space(toy_dataset):
    act = toy_dataset.actions.copy()
    act[3, 0] = 2.5
    with pytest.raises(
        DatasetError,
        match=r"actions: 1 step\(s\) outside the action space "
        r"\[-2, 2\]; first at step 3, dim 0 \(value 2.5\).*clip_actions=True",
    ):
        toy_dataset.replace(actions=act)
    with pytest.warns(UserWarning, match=r"toy: clipped 1 of 12 step\(s\)"):
        clipped, n = enforce_action_bounds(act, [-2.0], [2.0], clip_actions=True, source="toy")
    assert n == 1 and clipped[3, 0] == 2.0
    np.testing.assert_array_equal(np.delete(clipped, 3, 0), np.delete(act, 3, 0))


@pytest.mark.parametrize("key", ["terminations", "truncations"])
def test_flags_must_be_0_or_1(toy_dataset, key):
    flags = getattr(toy_dataset, key).astype(np.float64)
    flags[6] = np.nan  # used to become a termination
    with pytest.raises(DatasetError, match=rf"{key}: 1 NaN value\(s\), first at step 6"):
        _build(toy_dataset, **{key: flags})
    flags[6] = 0.5
    with pytest.raises(DatasetError, match=rf"{key}: 1 value\(s\) neither 0 nor 1.*value 0.5"):
        _build(toy_dataset, **{key: flags})
    flags[6] = 1.0
    np.testing.assert_array_equal(getattr(_build(toy_dataset, **{key: flags}), key), flags == 1)


def test_no_silent_casts(toy_dataset):
    obs = toy_dataset.observations.astype(np.float64)
    obs[3, 2] = 1e300  # finite in float64, inf in float32
    with pytest.raises(DatasetError, match=r"observations: 1 value\(s\) too large for float32"):
        _build(toy_dataset, observations=obs)
    with pytest.raises(
        DatasetError, match=r"episode_lengths: 2 value\(s\) that are not whole.*episode 1"
    ):
        _build(toy_dataset, episode_lengths=np.array([5.0, 2.5, 4.5]))
    np.testing.assert_array_equal(
        _build(toy_dataset, episode_lengths=np.array([5.0, 3.0, 4.0])).episode_lengths, [5, 3, 4]
    )
    with pytest.raises(DatasetError, match="rewards: dtype <U1 is not a real number type"):
        _build(toy_dataset, rewards=np.array(["a"] * N))
    arrays = _arrays(toy_dataset)
    del arrays["truncations"]
    with pytest.raises(DatasetError, match="truncations: missing"):
        TrajectoryDataset.from_arrays(arrays, toy_dataset.episode_lengths)
    with pytest.raises(DatasetError, match="observations: dim 0"):
        _build(toy_dataset, observations=np.zeros((N, 0)), next_observations=np.zeros((N, 0)))


def test_validate_does_not_import_the_dataset_module():
    import subprocess
    import sys

    # stub the package so its __init__ (which imports every module) does not run
    code = """
import pathlib, sys, types
import ipd_plugins
pkg = types.ModuleType("ipd_plugins.data")
pkg.__path__ = [str(pathlib.Path(ipd_plugins.__file__).parent / "data")]
sys.modules["ipd_plugins.data"] = pkg
import ipd_plugins.data.validate
assert "ipd_plugins.data.dataset" not in sys.modules, "validate imports dataset"
from ipd_plugins.data.dataset import DatasetError, TrajectoryDataset
from ipd_plugins.data.errors import DatasetError as Same
assert DatasetError is Same
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    from ipd_plugins.data import DatasetError as Exported
    from ipd_plugins.data.errors import DatasetError as Own

    assert Exported is Own is DatasetError


@pytest.mark.parametrize("key", ["terminals", "timeouts"])
def test_hdf5_nan_in_a_flag_names_it(tmp_path, toy_dataset, key):
    arrays = _d4rl_arrays(toy_dataset)
    flags = arrays[key].astype(np.float64)
    flags[2] = np.nan
    path = tmp_path / "nan.hdf5"
    _write_h5(path, {**arrays, key: flags})
    with pytest.raises(DatasetError, match=rf"nan.hdf5: {key}: 1 NaN value\(s\), first at step 2"):
        from_d4rl_hdf5(path)


# -- loaders: missing keys, bad arrays and bounds name the file -----------------------------
def _write_h5(path, arrays, **attrs):
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f[k] = v
        f.attrs.update(attrs)


def _d4rl_arrays(ds):
    return {
        "observations": ds.observations,
        "actions": ds.actions,
        "rewards": ds.rewards,
        "terminals": ds.terminations,
        "timeouts": ds.truncations,
        "next_observations": ds.next_observations,
    }


@pytest.mark.parametrize("missing", ["observations", "actions", "rewards"])
def test_hdf5_missing_key(tmp_path, toy_dataset, missing):
    arrays = _d4rl_arrays(toy_dataset)
    del arrays[missing]
    path = tmp_path / "broken.hdf5"
    _write_h5(path, arrays)
    with pytest.raises(DatasetError, match=rf"broken.hdf5: missing key '{missing}' \(the D4RL "):
        load_dataset(str(path))


def test_hdf5_bad_arrays(tmp_path, toy_dataset):
    path = tmp_path / "bad.h5"
    arrays = _d4rl_arrays(toy_dataset)
    _write_h5(path, {**arrays, "terminals": arrays["terminals"][:-2]})
    with pytest.raises(DatasetError, match=r"bad.h5: terminals has shape \(10,\) but actions has"):
        from_d4rl_hdf5(path)
    _write_h5(path, {**arrays, "observations": arrays["observations"][:, 0]})
    with pytest.raises(DatasetError, match=r"bad.h5: observations has rank 1 .* expected rank 2"):
        from_d4rl_hdf5(path)
    obs = arrays["observations"].copy()
    obs[4] = np.nan
    _write_h5(path, {**arrays, "observations": obs})
    with pytest.raises(
        DatasetError,
        match=r"bad.h5: observations: 3 NaN/inf value\(s\), first "
        "at step 4",
    ):
        from_d4rl_hdf5(path)
    _write_h5(path, {k: v[:0] for k, v in arrays.items()})
    with pytest.raises(DatasetError, match="bad.h5: the file holds no steps"):
        from_d4rl_hdf5(path)
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(DatasetError, match="text.h5: not a readable HDF5 file"):
        from_d4rl_hdf5(tmp_path / "text.h5")
    with pytest.raises(DatasetError, match="nothere.hdf5: no such file"):
        load_dataset(str(tmp_path / "nothere.hdf5"))


def test_hdf5_actions_outside_the_space_and_clipping(tmp_path, make_episodes):
    eps = make_episodes(obs_dim=11, act_dim=3, act_bound=1.0)
    ds = TrajectoryDataset.from_episodes(eps)
    arrays = _d4rl_arrays(ds)
    act = arrays["actions"].copy()
    act[2, 1], act[9, 0] = 1.5, -1.25
    path = tmp_path / "hop.hdf5"
    _write_h5(path, {**arrays, "actions": act}, env_id="Hopper-v5")  # bounds from the env
    with pytest.raises(
        DatasetError,
        match=r"hop.hdf5: actions: 2 step\(s\) outside the action "
        r"space \[-1, 1\]; first at step 2, dim 1 \(value 1.5\)",
    ):
        load_dataset(str(path))
    with pytest.warns(UserWarning, match=r"hop.hdf5: clipped 2 of 12 step\(s\)"):
        got = load_dataset(str(path), clip_actions=True)
    assert got.actions[2, 1] == 1.0 and got.actions[9, 0] == -1.0
    np.testing.assert_array_equal(np.delete(got.actions, [2, 9], 0), np.delete(act, [2, 9], 0))


@pytest.mark.parametrize("missing", ["observations", "episode_lengths", "truncations"])
def test_npz_missing_key(tmp_path, toy_dataset, missing):
    path = save_npz(toy_dataset, tmp_path / "toy.npz")
    with np.load(path) as f:
        data = {k: f[k] for k in f.files if k != missing}
    np.savez(tmp_path / "cut.npz", **data)
    with pytest.raises(DatasetError, match=rf"cut.npz: missing key '{missing}' \(an ipd npz"):
        load_dataset(str(tmp_path / "cut.npz"))


def test_npz_bad_content(tmp_path, toy_dataset):
    path = save_npz(toy_dataset, tmp_path / "toy.npz")
    with np.load(path) as f:
        data = {k: f[k] for k in f.files}
    data["rewards"] = data["rewards"].copy()
    data["rewards"][5] = np.nan
    np.savez(tmp_path / "nan.npz", **data)
    with pytest.raises(
        DatasetError,
        match=r"nan.npz: rewards: 1 NaN/inf value\(s\), first at "
        "step 5",
    ):
        load_npz(tmp_path / "nan.npz")
    data["rewards"] = np.array([object()] * N, dtype=object)  # needs pickle to load
    np.savez(tmp_path / "pickle.npz", **data)
    with pytest.raises(DatasetError, match="pickle.npz: not a readable npz file without pickle"):
        load_npz(tmp_path / "pickle.npz")
    data = {k: f for k, f in data.items() if k != "rewards"}
    data["actions"] = np.full((N, 1), 3.0, np.float32)
    np.savez(tmp_path / "far.npz", **data, rewards=toy_dataset.rewards)
    with pytest.raises(DatasetError, match=r"far.npz: actions: 12 step\(s\) outside"):
        load_npz(tmp_path / "far.npz")


# -- Minari datasets written with minari's own API ---------------------------------------
def _minari_raw(dataset_id, episodes):
    import minari
    from minari.data_collector import EpisodeBuffer

    buffers = [EpisodeBuffer(id=i, **ep) for i, ep in enumerate(episodes)]
    return minari.create_dataset_from_buffers(
        dataset_id=dataset_id,
        buffer=buffers,
        env="Pendulum-v1",
        algorithm_name="test",
        author="test",
        author_email="t@example.org",
        code_permalink="none",
        description="test",
        eval_env="Pendulum-v1",
    )


def test_minari_bad_content(minari_store, make_episodes):
    eps = make_episodes()
    eps[1]["observations"][0, 2] = np.nan
    _minari_raw("nan-v0", eps)
    with pytest.raises(
        DatasetError,
        match=r"Minari dataset 'nan-v0': observations: 1 NaN/inf "
        r"value\(s\), first at step 5",
    ):
        load_dataset("nan-v0")

    eps = make_episodes()
    eps[2]["actions"][1, 0] = 2.75  # Pendulum's torque is in [-2, 2]
    _minari_raw("far-v0", eps)
    with pytest.raises(
        DatasetError,
        match=r"Minari dataset 'far-v0': actions: 1 step\(s\) "
        r"outside the action space \[-2, 2\]; first at step 9",
    ):
        from_minari("far-v0")
    with pytest.warns(UserWarning, match=r"'far-v0': clipped 1 of 12"):
        assert from_minari("far-v0", clip_actions=True).actions[9, 0] == 2.0

    eps = make_episodes()
    eps[0]["observations"] = eps[0]["observations"][:-1]  # T instead of T+1 observations
    _minari_raw("short-v0", eps)
    with pytest.raises(
        DatasetError,
        match=r"'short-v0', episode 0: observations has shape "
        r"\(5, 3\) for 5 actions; expected \(6, O\)",
    ):
        from_minari("short-v0")


def test_unknown_sources(tmp_path, minari_store, toy_dataset):
    _minari_raw(
        "here-v0",
        [
            dict(
                observations=np.zeros((3, 3), np.float32),
                actions=np.zeros((2, 1), np.float32),
                rewards=np.zeros(2),
                terminations=np.array([False, True]),
                truncations=np.zeros(2, bool),
            )
        ],
    )
    with pytest.raises(
        DatasetError,
        match=r"unknown dataset source 'there-v0'.*\.hdf5.*\.npz"
        r".*holds: here-v0",
    ):
        load_dataset("there-v0")
    with pytest.raises(DatasetError, match="'there-v0' is not in the local store.*here-v0"):
        from_minari("there-v0")
    odd = tmp_path / "data.csv"
    odd.write_text("1,2,3")
    with pytest.raises(DatasetError, match=r"is a file or folder, but its suffix is not"):
        load_dataset(str(odd))
    path = to_d4rl_hdf5(toy_dataset, tmp_path / "ok.hdf5")
    assert load_dataset(str(path)).n_steps == N
