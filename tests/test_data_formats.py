"""Round trips for every dataset format, the Minari first-observation guarantee, `ipd data info`."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from ipd_plugins.data import (
    DatasetError,
    TrajectoryDataset,
    env_key,
    from_d3rlpy,
    from_d4rl_hdf5,
    from_minari,
    load_dataset,
    load_npz,
    minari_local_ids,
    ref_scores,
    register_ref_scores,
    save_npz,
    to_d3rlpy,
    to_d4rl_hdf5,
    to_minari,
)
from ipd_plugins.data.dataset import ARRAY_FIELDS
from ipd_plugins.data.envs import REF_SCORES

HOPPER_REF = (-20.272305, 3234.3)


def _same(a: TrajectoryDataset, b: TrajectoryDataset) -> None:
    for key in ARRAY_FIELDS:
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)
    assert a.env_id == b.env_id
    assert (a.ref_min_score, a.ref_max_score) == (b.ref_min_score, b.ref_max_score)
    assert sorted(a.extras) == sorted(b.extras)
    for key in a.extras:
        np.testing.assert_array_equal(a.extras[key], b.extras[key], err_msg=key)
    assert a.content_hash() == b.content_hash()


def _hopper_dataset(make_episodes, returns=(100.0, 300.0, 200.0), lengths=(5, 3, 4)):
    eps = make_episodes(lengths=lengths, obs_dim=11, act_dim=3, act_bound=1.0)
    for ep, ret in zip(eps, returns, strict=True):
        ep["rewards"] = np.full(len(ep["actions"]), ret / len(ep["actions"]), np.float32)
    lo, hi = ref_scores("Hopper-v5")
    return TrajectoryDataset.from_episodes(
        eps,
        env_id="Hopper-v5",
        name="hop",
        ref_min_score=lo,
        ref_max_score=hi,
        action_low=-np.ones(3, np.float32),
        action_high=np.ones(3, np.float32),
    )


# -- envs ---------------------------------------------------------------------------------
def test_ref_scores_for_every_spelling():
    assert ref_scores("Hopper-v5") == HOPPER_REF
    assert ref_scores("Hopper-v4") == ref_scores("hopper") == HOPPER_REF
    assert ref_scores("hopper-medium-replay-v2") == HOPPER_REF
    assert ref_scores("mujoco/hopper/medium-v0") == HOPPER_REF
    assert env_key("HalfCheetah-v5") == "halfcheetah"
    assert env_key("Walker2d-v5") == "walker2d"
    assert env_key("Ant-v5") == "ant"
    assert ref_scores("CartPole-v1") is None and ref_scores(None) is None


def test_register_ref_scores(monkeypatch):
    monkeypatch.setattr("ipd_plugins.data.envs.REF_SCORES", dict(REF_SCORES))
    import ipd_plugins.data.envs as envs

    assert envs.ref_scores("MountainCarContinuous-v0") is None
    key = envs.register_ref_scores("MountainCarContinuous-v0", -5.0, 95.0)
    assert key == "mountaincarcontinuous"
    assert envs.ref_scores("MountainCarContinuous-v0") == (-5.0, 95.0)
    assert envs.ref_scores("mountaincarcontinuous") == (-5.0, 95.0)
    with pytest.raises(ValueError, match="ref_min < ref_max"):
        envs.register_ref_scores("MountainCarContinuous-v0", 1.0, 0.0)
    assert register_ref_scores is envs.register_ref_scores


# -- Minari -------------------------------------------------------------------------------
def test_minari_round_trip_with_minaris_own_reader(minari_store, toy_dataset):
    import minari

    ds = toy_dataset.replace(
        extras={"imagined": np.arange(12) % 3 == 0, "source_index": np.arange(12) - 1}
    )
    mds = to_minari(ds, "ipdtest/toy-v0", description="toy")
    assert (minari_store / "ipdtest" / "toy-v0" / "data").is_dir()
    assert minari_local_ids() == ["ipdtest/toy-v0"]

    # minari's own API reads what we wrote: T+1 observations per episode, Pendulum's spaces
    raw = minari.load_dataset("ipdtest/toy-v0")
    assert raw.total_episodes == 3 and raw.total_steps == 12
    assert raw.env_spec.id == "Pendulum-v1" and mds.env_spec.id == "Pendulum-v1"
    for i, ep in enumerate(raw.iterate_episodes()):
        own = ds.episode(i)
        assert ep.observations.shape == (len(own) + 1, 3)
        np.testing.assert_array_equal(ep.observations[:-1], own.observations)
        np.testing.assert_array_equal(ep.observations[-1], own.next_observations[-1])
        np.testing.assert_array_equal(ep.actions, own.actions)

    back = from_minari("ipdtest/toy-v0")
    _same(back, ds)
    assert back.name == "toy"
    np.testing.assert_array_equal(back.action_low, [-2.0])  # from Pendulum's action space
    _same(from_minari(raw), ds)  # an open MinariDataset works too


def test_minari_each_episode_starts_with_its_own_observation(minari_store, make_episodes):
    eps = make_episodes(lengths=(4, 6, 3), ends=("trunc", "term", "trunc"))
    ds = TrajectoryDataset.from_episodes(eps, env_id="Pendulum-v1")
    to_minari(ds, "firstobs-v0")
    back = from_minari("firstobs-v0")
    for i, ep in enumerate(eps):
        got = back.episode(i)
        np.testing.assert_array_equal(got.observations[0], ep["observations"][0])
        np.testing.assert_array_equal(got.observations, ep["observations"][:-1])
        np.testing.assert_array_equal(got.next_observations, ep["observations"][1:])
        # episode i's observations are offset by 100 i: nothing borrowed from episode i-1
        assert np.all(np.abs(got.observations - 100 * i) < 50)

    # d3rlpy's get_minari on the same local dataset shifts every later episode by one row
    from d3rlpy.datasets import get_minari

    d3, _ = get_minari("firstobs-v0")
    first_obs_d3 = d3.episodes[1].observations[0]
    np.testing.assert_array_equal(first_obs_d3, eps[0]["observations"][-1])  # the bug
    assert not np.array_equal(first_obs_d3, back.episode(1).observations[0])


def test_minari_stores_reference_scores(minari_store, make_episodes):
    import minari

    ds = _hopper_dataset(make_episodes)
    mds = to_minari(ds, "hop-v0")
    meta = mds.storage.metadata
    assert (meta["ref_min_score"], meta["ref_max_score"]) == HOPPER_REF
    returns = ds.episode_returns()
    np.testing.assert_allclose(
        100 * minari.get_normalized_score(mds, returns), ds.normalized_score(returns), rtol=1e-6
    )
    back = from_minari("hop-v0")
    assert back.env_id == "Hopper-v5" and (back.ref_min_score, back.ref_max_score) == HOPPER_REF


def test_minari_overwrite_and_cleanup(minari_store, toy_dataset, monkeypatch):
    to_minari(toy_dataset, "dup-v0")
    with pytest.raises(DatasetError, match="'dup-v0' already exists.*overwrite=True"):
        to_minari(toy_dataset, "dup-v0")
    smaller = toy_dataset.select_episodes([2])
    to_minari(smaller, "dup-v0", overwrite=True)
    assert from_minari("dup-v0").n_steps == 4

    # a write that fails half-way leaves no folder behind, so the next attempt succeeds
    from minari.dataset._storages.hdf5_storage import HDF5Storage

    def boom(self, episodes):
        raise RuntimeError("disk full")

    with monkeypatch.context() as m:
        m.setattr(HDF5Storage, "update_episodes", boom)
        with pytest.raises(RuntimeError, match="disk full"):
            to_minari(toy_dataset, "broken-v0")
    assert not (minari_store / "broken-v0").exists()
    assert to_minari(toy_dataset, "broken-v0").total_steps == 12


def test_minari_without_env_id(minari_store, toy_dataset):
    ds = toy_dataset.replace(env_id=None, action_low=None, action_high=None)
    to_minari(ds, "noenv-v0")
    back = from_minari("noenv-v0")
    assert back.env_id is None and back.action_low is None  # no space was declared
    _same(back, ds)


def test_minari_rejects_what_it_cannot_hold(minari_store, toy_dataset):
    nxt = toy_dataset.next_observations.copy()
    nxt[1] += 1.0
    with pytest.raises(DatasetError, match=r"episode 0: next_observations\[1\] differs"):
        to_minari(toy_dataset.replace(next_observations=nxt), "bad-v0")
    with pytest.raises(DatasetError, match="env_id 'Hopper-v5' has observations"):
        to_minari(
            toy_dataset.replace(env_id="Hopper-v5", action_low=None, action_high=None), "bad-v0"
        )
    assert minari_local_ids() == []


# -- D4RL HDF5 ----------------------------------------------------------------------------
def test_hdf5_round_trip(tmp_path, toy_dataset):
    ds = toy_dataset.replace(
        extras={"imagined": np.arange(12) % 2 == 0}, ref_min_score=-1.0, ref_max_score=1.0
    )
    path = to_d4rl_hdf5(ds, tmp_path / "toy.hdf5")
    with h5py.File(path) as f:  # the D4RL layout
        assert {
            "observations",
            "actions",
            "rewards",
            "terminals",
            "timeouts",
            "next_observations",
        } <= set(f)
        assert f.attrs["env_id"] == "Pendulum-v1"
        np.testing.assert_array_equal(np.flatnonzero(f["timeouts"][()]), [7, 11])
    _same(from_d4rl_hdf5(path), ds)


def _write_d4rl(path, ds, next_obs=True, **attrs):
    with h5py.File(path, "w") as f:
        f["observations"] = ds.observations
        f["actions"] = ds.actions
        f["rewards"] = ds.rewards
        f["terminals"] = ds.terminations
        f["timeouts"] = ds.truncations
        if next_obs:
            f["next_observations"] = ds.next_observations
        f.attrs.update(attrs)


def test_hdf5_written_by_h5py_with_next_observations(tmp_path, make_episodes):
    # three episodes: terminated, timed out, and a final one that just stops
    eps = make_episodes(lengths=(4, 3, 5), ends=("term", "trunc", "none"))
    ds = TrajectoryDataset.from_episodes(eps)
    path = tmp_path / "d4rl.h5"
    _write_d4rl(path, ds, env_id="hopper-medium-v2")  # D4RL's name: ref scores, no gym env
    back = from_d4rl_hdf5(path, env_id="Pendulum-v1")
    np.testing.assert_array_equal(back.episode_lengths, [4, 3, 5])
    np.testing.assert_allclose(
        back.episode_returns(), [ep["rewards"].sum() for ep in eps], rtol=1e-6
    )
    np.testing.assert_array_equal(back.next_observations, ds.next_observations)
    assert back.env_id == "Pendulum-v1" and back.ref_min_score == ref_scores("Pendulum-v1")[0]
    np.testing.assert_array_equal(back.action_high, [2.0])  # from Pendulum's action space
    hop = from_d4rl_hdf5(path)  # env_id from the file attribute -> D4RL hopper scores
    assert hop.env_id == "hopper-medium-v2" and hop.action_low is None
    assert (hop.ref_min_score, hop.ref_max_score) == HOPPER_REF
    with pytest.raises(
        DatasetError,
        match=r"d4rl.h5: actions have shape \(12, 1\) but the "
        r"action space has shape \(3,\)",
    ):
        from_d4rl_hdf5(path, env_id="Hopper-v5")


def test_hdf5_without_next_observations_follows_qlearning_dataset(tmp_path, make_episodes):
    eps = make_episodes(lengths=(4, 3, 1, 5), ends=("term", "trunc", "trunc", "none"))
    ds = TrajectoryDataset.from_episodes(eps)
    path = tmp_path / "nonext.hdf5"
    _write_d4rl(path, ds, next_obs=False)
    with pytest.warns(UserWarning, match="dropped 3 row.*final unterminated"):
        back = from_d4rl_hdf5(path)
    # terminated episode kept whole; timeout episodes and the final one lose their last row;
    # the one-row timeout episode disappears
    np.testing.assert_array_equal(back.episode_lengths, [4, 2, 4])
    keep = np.r_[0:4, 4:6, 8:12]
    np.testing.assert_array_equal(back.observations, ds.observations[keep])
    np.testing.assert_array_equal(back.rewards, ds.rewards[keep])
    # s' is the next row inside the episode (known for all but the terminal row)
    np.testing.assert_array_equal(back.next_observations[:3], ds.observations[1:4])
    np.testing.assert_array_equal(back.next_observations[4:6], ds.observations[5:7])
    np.testing.assert_array_equal(back.next_observations[6:], ds.observations[9:13])
    np.testing.assert_array_equal(back.terminations, np.eye(10, dtype=bool)[3])
    np.testing.assert_array_equal(np.flatnonzero(back.truncations), [5, 9])
    np.testing.assert_array_equal(np.flatnonzero(back.extras["next_obs_missing"]), [3])
    np.testing.assert_array_equal(back.next_observations[3], back.observations[3])


# -- D4RL HDF5 files from other projects: each quirk loads with a note, or a clear error ----
def _raw_h5(path, n=12, obs_dim=3, **fields):
    """An HDF5 file with observations/actions/rewards and the given extra ``fields``."""
    rng = np.random.default_rng(1)
    with h5py.File(path, "w") as f:
        f["observations"] = rng.normal(size=(n, obs_dim))
        f["actions"] = rng.uniform(-1, 1, (n, 1))
        f["rewards"] = rng.normal(size=n)
        for key, value in fields.items():
            f[key] = value
    return path


def test_hdf5_without_timeouts(tmp_path):
    term = np.zeros(12, bool)
    term[4] = True
    path = _raw_h5(tmp_path / "noto.h5", terminals=term, next_observations=np.zeros((12, 3)))
    with pytest.warns(UserWarning, match="no 'timeouts'.*end only at terminals and at the end"):
        ds = from_d4rl_hdf5(path, env_id="Pendulum-v1")
    np.testing.assert_array_equal(ds.episode_lengths, [5, 7])
    assert not ds.truncations.any() and np.flatnonzero(ds.terminations).tolist() == [4]
    with pytest.warns(UserWarning, match=r"after episode_length=3 steps .*3 such end"):
        ds = from_d4rl_hdf5(path, env_id="Pendulum-v1", episode_length=3)
    # a terminal restarts the count: 3 + 2 (terminal), then 3 + 3 + 1 (end of the file)
    np.testing.assert_array_equal(ds.episode_lengths, [3, 2, 3, 3, 1])
    np.testing.assert_array_equal(np.flatnonzero(ds.truncations), [2, 7, 10])


def test_hdf5_without_terminals_and_timeouts(tmp_path):
    path = _raw_h5(tmp_path / "dapg.hdf5", next_observations=np.zeros((12, 3)))
    with pytest.raises(DatasetError) as err:
        from_d4rl_hdf5(path, env_id="Pendulum-v1")
    msg = str(err.value)
    assert "neither 'terminals' nor 'timeouts'" in msg and "episode_length=N" in msg
    with pytest.warns(UserWarning, match="no 'terminals' in the file: no step is taken as a term"):
        ds = from_d4rl_hdf5(path, env_id="Pendulum-v1", episode_length=4)
    np.testing.assert_array_equal(ds.episode_lengths, [4, 4, 4])
    assert not ds.terminations.any() and np.flatnonzero(ds.truncations).tolist() == [3, 7, 11]
    with pytest.raises(DatasetError, match="episode_length: must be a positive integer"):
        from_d4rl_hdf5(path, episode_length=0)


def test_hdf5_with_timeouts_only(tmp_path):
    path = _raw_h5(tmp_path / "to.h5", timeouts=np.eye(12, dtype=bool)[5])
    with pytest.warns(UserWarning, match="no 'terminals'"):
        ds = from_d4rl_hdf5(path, env_id="Pendulum-v1")
    # no next_observations: the last row of each episode is dropped (said in another note)
    np.testing.assert_array_equal(ds.episode_lengths, [5, 5])
    assert not ds.terminations.any()


def test_hdf5_terminal_at_the_time_limit_warns(tmp_path):
    n = 250  # Pendulum-v1's time limit is 200 steps
    term = np.zeros(n, bool)
    term[199] = True
    path = _raw_h5(tmp_path / "limit.h5", n=n, terminals=term, timeouts=np.zeros(n, bool))
    with pytest.warns(
        UserWarning,
        match=r"1 of 2 episode\(s\) end with a terminal at exactly "
        r"step 200, Pendulum-v1's time limit: that looks like a time limit",
    ):
        ds = from_d4rl_hdf5(path, env_id="Pendulum-v1")
    assert ds.terminations[199]  # kept as it is, only warned about


def test_hdf5_float64_and_column_vectors(tmp_path, toy_dataset):
    ds = toy_dataset
    path = tmp_path / "f64.hdf5"
    with h5py.File(path, "w") as f:
        f["observations"] = ds.observations.astype(np.float64) / 3
        f["next_observations"] = ds.next_observations.astype(np.float64) / 3
        f["actions"] = ds.actions.astype(np.float64)
        f["rewards"] = ds.rewards.astype(np.float64)[:, None]  # (N, 1)
        f["terminals"] = ds.terminations.astype(np.float64)[:, None]
        f["timeouts"] = ds.truncations.astype(np.int64)[:, None]
        f.attrs["env_id"] = "Pendulum-v1"
    back = from_d4rl_hdf5(path)
    np.testing.assert_array_equal(
        back.observations, (ds.observations.astype(np.float64) / 3).astype(np.float32)
    )
    np.testing.assert_array_equal(back.rewards, ds.rewards)
    np.testing.assert_array_equal(back.terminations, ds.terminations)
    np.testing.assert_array_equal(back.truncations, ds.truncations)
    np.testing.assert_array_equal(back.episode_lengths, ds.episode_lengths)
    assert back.observations.dtype == np.float32 and back.rewards.shape == (12,)


def test_hdf5_without_next_observations_says_what_it_kept(tmp_path, make_episodes):
    eps = make_episodes(lengths=(4, 3), ends=("term", "term"))
    ds = TrajectoryDataset.from_episodes(eps)
    path = tmp_path / "terms.hdf5"
    _write_d4rl(path, ds, next_obs=False, env_id="Pendulum-v1")
    with pytest.warns(UserWarning, match=r"kept 2 terminal row\(s\).*own observation.*next_obs_"):
        back = from_d4rl_hdf5(path)
    np.testing.assert_array_equal(back.episode_lengths, [4, 3])  # nothing dropped
    np.testing.assert_array_equal(np.flatnonzero(back.extras["next_obs_missing"]), [3, 6])


# -- summaries of augmented datasets -------------------------------------------------------
def test_summary_counts_imagined_segments_apart(toy_dataset):
    # episodes 0 and 1 are real; episode 2 is a segment (a real prefix, then imagined steps)
    imagined = np.zeros(12, bool)
    imagined[9:] = True
    rewards = np.r_[np.full(5, 10.0), np.full(3, 20.0), np.full(4, 100.0)].astype(np.float32)
    ds = toy_dataset.replace(
        rewards=rewards, extras={"imagined": imagined}, ref_min_score=0.0, ref_max_score=100.0
    )
    s = ds.summary()
    assert (s["episodes"], s["imagined_segments"], s["imagined_steps"]) == (2, 1, 3)
    assert (s["return_min"], s["return_mean"], s["return_max"]) == (50.0, 55.0, 60.0)
    assert s["normalized_mean"] == pytest.approx(55.0) and s["returns_of"] == "real episodes"
    assert s["steps"] == 12
    plain = toy_dataset.summary()
    assert plain["episodes"] == 3 and "imagined_segments" not in plain


# -- npz ----------------------------------------------------------------------------------
def test_npz_round_trip(tmp_path, toy_dataset):
    ds = toy_dataset.replace(
        extras={"imagined": np.arange(12) % 2 == 0, "source_index": np.arange(12, dtype=np.int64)},
        ref_min_score=-3.0,
        ref_max_score=7.5,
        name="npz-toy",
    )
    path = save_npz(ds, tmp_path / "sub" / "toy.npz")
    assert sorted(p.name for p in path.parent.iterdir()) == ["toy.npz"]  # no temp file left
    back = load_npz(path)
    _same(back, ds)
    assert back.name == "npz-toy"
    np.testing.assert_array_equal(back.action_low, ds.action_low)
    assert back.extras["source_index"].dtype == np.int64


# -- d3rlpy -------------------------------------------------------------------------------
def test_d3rlpy_round_trip(toy_dataset):
    from d3rlpy.dataset import BasicTransitionPicker

    ds = toy_dataset  # episodes: terminated (5), truncated (3), truncated (4)
    buf = to_d3rlpy(ds)
    assert [ep.terminated for ep in buf.episodes] == [True, False, False]
    assert buf.transition_count == 5 + 2 + 3
    picker = BasicTransitionPicker()
    t = picker(buf.episodes[1], 1)  # an inner step of episode 1: s' is ours
    np.testing.assert_array_equal(t.next_observation, ds.next_observations[6])
    assert t.terminal == 0.0
    assert picker(buf.episodes[0], 4).terminal == 1.0
    np.testing.assert_allclose(
        [ep.compute_return() for ep in buf.episodes], ds.episode_returns(), rtol=1e-6
    )

    with pytest.warns(UserWarning, match="dropped 2 step"):
        back = from_d3rlpy(buf, env_id="Pendulum-v1")
    np.testing.assert_array_equal(back.episode_lengths, [5, 2, 3])
    keep = np.r_[0:5, 5:7, 8:11]
    np.testing.assert_array_equal(back.observations, ds.observations[keep])
    np.testing.assert_array_equal(back.actions, ds.actions[keep])
    np.testing.assert_array_equal(back.next_observations[:4], ds.next_observations[:4])
    np.testing.assert_array_equal(back.next_observations[5:], ds.next_observations[keep][5:])
    np.testing.assert_array_equal(back.terminations, ds.terminations[keep])
    np.testing.assert_array_equal(np.flatnonzero(back.truncations), [6, 9])
    np.testing.assert_array_equal(np.flatnonzero(back.extras["next_obs_missing"]), [4])
    np.testing.assert_array_equal(back.action_low, [-2.0])


def test_from_d3rlpy_reads_an_mdp_dataset(toy_dataset):
    from d3rlpy.dataset import MDPDataset

    ds = toy_dataset
    mdp = MDPDataset(ds.observations, ds.actions, ds.rewards, ds.terminations, ds.truncations)
    with pytest.warns(UserWarning, match="dropped 2 step"):
        back = from_d3rlpy(mdp)
    np.testing.assert_array_equal(back.episode_lengths, [5, 2, 3])
    assert back.env_id is None and back.ref_min_score is None


# -- sources and the CLI ------------------------------------------------------------------
def test_load_dataset_picks_the_loader(tmp_path, minari_store, toy_dataset):
    to_minari(toy_dataset, "src/toy-v0")
    to_d4rl_hdf5(toy_dataset, tmp_path / "a.h5")
    save_npz(toy_dataset, tmp_path / "a.npz")
    for source in ("src/toy-v0", str(tmp_path / "a.h5"), str(tmp_path / "a.npz")):
        _same(load_dataset(source), toy_dataset)


def test_info_on_minari_hopper_dataset(minari_store, make_episodes):
    from ipd_plugins.commands import main

    ds = _hopper_dataset(make_episodes)
    to_minari(ds, "mujoco/hop/tiny-v0")
    res = CliRunner().invoke(main, ["data", "info", "mujoco/hop/tiny-v0"])
    assert res.exit_code == 0, res.output
    lines = dict(
        line.split(None, 1)
        for line in res.output.splitlines()
        if line.split()[0] in ("episodes", "steps", "obs_dim", "act_dim", "env_id")
    )
    assert lines == {
        "episodes": "3",
        "steps": "12",
        "obs_dim": "11",
        "act_dim": "3",
        "env_id": "Hopper-v5",
    }
    assert "return min/mean/max      100.00 / 200.00 / 300.00" in res.output
    lo, hi = HOPPER_REF
    norm = [100 * (r - lo) / (hi - lo) for r in (100.0, 200.0, 300.0)]  # 3.70 / 6.77 / 9.84
    assert f"normalised min/mean/max  {norm[0]:.2f} / {norm[1]:.2f} / {norm[2]:.2f}" in res.output


def test_info_on_hdf5_json(tmp_path, make_episodes):
    from ipd_plugins.commands import main

    ds = _hopper_dataset(make_episodes, returns=(10.0, 50.0, 30.0))
    path = tmp_path / "hop.hdf5"
    _write_d4rl(path, ds, env_id="Hopper-v5")
    res = CliRunner().invoke(main, ["data", "info", str(path), "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert (d["episodes"], d["steps"], d["obs_dim"], d["act_dim"]) == (3, 12, 11, 3)
    assert d["return_min"] == pytest.approx(10.0) and d["return_max"] == pytest.approx(50.0)
    assert d["return_mean"] == pytest.approx(30.0)
    lo, hi = HOPPER_REF
    assert d["normalized_mean"] == pytest.approx(100 * (30.0 - lo) / (hi - lo))
    assert d["env_id"] == "Hopper-v5"


def test_info_without_reference_scores_and_unknown_source(tmp_path, minari_store, toy_dataset):
    from ipd_plugins.commands import main

    no_refs = toy_dataset.replace(env_id=None, ref_min_score=None, ref_max_score=None)
    save_npz(no_refs, tmp_path / "t.npz")
    res = CliRunner().invoke(main, ["data", "info", str(tmp_path / "t.npz")])
    assert res.exit_code == 0 and "normalised               n/a" in res.output
    to_minari(toy_dataset, "known-v0")
    res = CliRunner().invoke(main, ["data", "info", "missing-v0"])
    assert res.exit_code != 0
    assert "unknown dataset source 'missing-v0'" in res.output and "known-v0" in res.output
