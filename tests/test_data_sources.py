"""The environment named by the caller reaches every loader; resolve_dataset makes known names."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from ipd_plugins.data import (
    DatasetError,
    EnvironmentUnavailableError,
    TrajectoryDataset,
    from_minari,
    load_dataset,
    load_npz,
    ref_scores,
    resolve_dataset,
    to_minari,
)

N = 12


def _hopper_arrays(max_action: float = 5.1, obs_dim: int = 11) -> dict[str, np.ndarray]:
    """12 steps of Hopper-shaped data (episodes 5, 3, 4) with two actions out of [-1, 1]."""
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(N + 1, obs_dim))
    actions = rng.uniform(-1, 1, (N, 3))
    actions[2, 1], actions[9, 0] = max_action, -2.0
    ends = np.zeros(N, bool)
    ends[[4, 7]] = True
    return {
        "observations": obs[:-1],
        "next_observations": obs[1:],
        "actions": actions,
        "rewards": rng.normal(size=N),
        "terminals": np.eye(N, dtype=bool)[4],
        "timeouts": np.eye(N, dtype=bool)[7] | np.eye(N, dtype=bool)[11],
    }


def _write_hdf5(path, arrays, **attrs):
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f[key] = value
        f.attrs.update(attrs)
    return str(path)


def _write_npz(path, arrays, **extra):
    """A plain ``np.savez`` file of another project: no meta_json, no bounds."""
    np.savez(
        path,
        observations=arrays["observations"],
        next_observations=arrays["next_observations"],
        actions=arrays["actions"],
        rewards=arrays["rewards"],
        terminations=arrays["terminals"],
        truncations=arrays["timeouts"],
        episode_lengths=np.array([5, 3, 4]),
        **extra,
    )
    return str(path)


@pytest.fixture(params=["hdf5", "npz"])
def hopper_file(request, tmp_path):
    """A file with no env_id and actions up to 5.1, in each format."""
    arrays = _hopper_arrays()
    if request.param == "hdf5":
        return _write_hdf5(tmp_path / "other.hdf5", arrays), arrays
    return _write_npz(tmp_path / "other.npz", arrays), arrays


def test_named_environment_checks_the_actions(hopper_file):
    path, arrays = hopper_file
    with pytest.warns(UserWarning, match="no environment: the data names none"):
        unchecked = load_dataset(path)  # nothing to check against: loaded as it is
    assert unchecked.env_id is None and unchecked.actions.max() == pytest.approx(5.1)
    with pytest.raises(DatasetError) as err:
        load_dataset(path, env_id="Hopper-v5")
    msg = str(err.value)
    assert "--clip-actions" in msg and "2 step(s) outside the action space [-1, 1]" in msg
    assert "Hopper-v5" in msg and "value 5.1" in msg
    with pytest.warns(UserWarning, match=r"clipped 2 of 12 step\(s\)"):
        ds = load_dataset(path, env_id="Hopper-v5", clip_actions=True)
    assert ds.env_id == "Hopper-v5"
    assert (ds.ref_min_score, ds.ref_max_score) == ref_scores("Hopper-v5")  # normalised scores
    np.testing.assert_array_equal(ds.action_low, -np.ones(3, np.float32))
    assert ds.actions[2, 1] == 1.0 and ds.actions[9, 0] == -1.0
    keep = np.ones(N, bool)
    keep[[2, 9]] = False
    np.testing.assert_array_equal(ds.actions[keep], arrays["actions"][keep].astype(np.float32))


def test_observation_dim_that_does_not_match_the_environment(tmp_path):
    arrays = _hopper_arrays(max_action=0.5, obs_dim=9)
    for path in (
        _write_hdf5(tmp_path / "nine.hdf5", arrays),
        _write_npz(tmp_path / "nine.npz", arrays),
    ):
        with pytest.raises(DatasetError) as err:
            load_dataset(path, env_id="Hopper-v5")
        msg = str(err.value)
        assert "observations" in msg and "observation dim is 9, Hopper-v5's is 11" in msg
        assert msg.startswith(path)


def test_npz_is_checked_against_the_environment_not_only_its_stored_bounds(tmp_path, toy_dataset):
    arrays = {k: getattr(toy_dataset, k) for k in ("observations", "next_observations")}
    doubled = toy_dataset.actions * 2  # a Pendulum set with actions doubled (up to 4)
    path = tmp_path / "pend.npz"
    np.savez(
        path,
        **arrays,
        actions=doubled,
        rewards=toy_dataset.rewards,
        terminations=toy_dataset.terminations,
        truncations=toy_dataset.truncations,
        episode_lengths=toy_dataset.episode_lengths,
        action_low=np.array([-4.0], np.float32),  # the file's own (wrong) bounds
        action_high=np.array([4.0], np.float32),
        meta_json=np.asarray('{"env_id": "Pendulum-v1"}'),
    )
    with pytest.raises(DatasetError, match=r"outside the action space \[-2, 2\].*Pendulum-v1"):
        load_npz(path)
    with pytest.warns(UserWarning, match="Pendulum-v1's action space is"):
        ds = load_npz(path, clip_actions=True)
    np.testing.assert_array_equal(ds.action_high, [2.0])
    assert np.abs(ds.actions).max() == 2.0


def test_given_environment_overrides_the_files_with_a_warning(tmp_path, toy_dataset):
    from ipd_plugins.data import to_d4rl_hdf5

    path = to_d4rl_hdf5(toy_dataset.replace(env_id="MyPendulum-v0"), tmp_path / "p.hdf5")
    with pytest.warns(UserWarning, match="cannot be built"):
        own = load_dataset(str(path))  # the file's id is kept, nothing checked against it
    assert own.env_id == "MyPendulum-v0"
    with pytest.warns(UserWarning, match="names the environment 'MyPendulum-v0'; using"):
        ds = load_dataset(str(path), env_id="Pendulum-v1")
    assert ds.env_id == "Pendulum-v1" and ds.ref_min_score == ref_scores("Pendulum-v1")[0]
    with pytest.raises(EnvironmentUnavailableError, match="unknown environment 'Pendulm-v1'"):
        load_dataset(str(path), env_id="Pendulm-v1")  # a given id must be buildable


def test_minari_dataset_with_a_given_environment(minari_store, toy_dataset):
    to_minari(toy_dataset, "pend/toy-v0")
    assert from_minari("pend/toy-v0", env_id="Pendulum-v1").env_id == "Pendulum-v1"
    with pytest.raises(DatasetError, match=r"'pend/toy-v0': actions have shape \(12, 1\).*Hop"):
        load_dataset("pend/toy-v0", env_id="Hopper-v5")
    with pytest.warns(UserWarning, match="episode_length=50 ignored"):
        load_dataset("pend/toy-v0", episode_length=50)


def test_resolve_dataset_makes_a_known_name_first(minari_store, monkeypatch):
    from ipd_plugins.data import make

    made = []
    real = make.make_dataset

    def small(name, **kwargs):
        made.append(name)
        return real(name, steps=400, seed=0)

    monkeypatch.setattr(make, "make_dataset", small)
    said: list[str] = []
    ds = resolve_dataset("pendulum-medium", echo=said.append)
    assert made == ["pendulum-medium"] and ds.n_steps == 400 and ds.env_id == "Pendulum-v1"
    assert said == ["[data] ipd/pendulum/medium-v0 is not in the local Minari store: making it"]
    again = resolve_dataset("ipd/pendulum/medium-v0", env_id="Pendulum-v1", echo=said.append)
    assert made == ["pendulum-medium"] and len(said) == 1  # in the store now: not made again
    assert again.content_hash() == ds.content_hash()
    with pytest.raises(DatasetError, match="unknown dataset source 'pendulum-hard'.*ipd data make"):
        resolve_dataset("pendulum-hard")


def test_a_dataset_another_process_is_making_is_waited_for_not_made_twice(
    minari_store, monkeypatch
):
    """Two runs that need a dataset not made yet: the second waits on the first's lock and
    loads what it made (before, it made the dataset too and failed on the existing id)."""
    import threading

    from minari.storage import get_dataset_path

    from ipd_plugins.data import make
    from ipd_plugins.data.minari_io import to_minari
    from ipd_plugins.stages import stage_lock

    made, loaded = [], []
    monkeypatch.setattr(make, "make_dataset", lambda name, **kw: made.append(name))
    mid = make.dataset_id("pendulum-medium")
    with make.making(mid), make.making(mid):  # reentrant in one process
        pass
    path = get_dataset_path(mid)
    with stage_lock(path.parent / f".{path.name}.making.lock"):  # the other process makes it
        second = threading.Thread(target=lambda: loaded.append(resolve_dataset(mid, echo=print)))
        second.start()
        to_minari(make.generate("pendulum-medium", n_steps=400, seed=0), mid)
    second.join(timeout=60)
    assert made == [] and loaded[0].n_steps == 400

    # a store this user cannot write (a shared one): read without the lock
    def read_only(real):
        def call(self, *args, **kwargs):
            if self.name.endswith(".making.lock"):
                raise PermissionError(13, "Permission denied", str(self))
            return real(self, *args, **kwargs)

        return call

    for method in ("touch", "open"):
        monkeypatch.setattr(Path, method, read_only(getattr(Path, method)))
    assert resolve_dataset(mid).content_hash() == loaded[0].content_hash() and made == []


def test_resolve_dataset_passes_the_options_to_files(tmp_path):
    arrays = _hopper_arrays()
    del arrays["timeouts"], arrays["terminals"]
    path = _write_hdf5(tmp_path / "raw.hdf5", arrays)
    with pytest.raises(DatasetError, match="neither 'terminals' nor 'timeouts'.*episode_length"):
        resolve_dataset(path, env_id="Hopper-v5", clip_actions=True)
    with pytest.warns(UserWarning, match="clipped 2 of 12"):
        ds = resolve_dataset(path, env_id="Hopper-v5", clip_actions=True, episode_length=6)
    assert isinstance(ds, TrajectoryDataset) and ds.env_id == "Hopper-v5"
    np.testing.assert_array_equal(ds.episode_lengths, [6, 6])
    np.testing.assert_array_equal(np.flatnonzero(ds.truncations), [5, 11])
    assert not ds.terminations.any()
