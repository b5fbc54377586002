"""Imaginary augmentation (Alg. 1) on the 1-d system with an exact model of ``tests/fakes.py``.

Imagined returns are true returns there, so every check is about the algorithm itself.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from fakes import CTX, ExactModel, FakeValue, VarUncertainty, one_d_dataset, run_augment

from ipd_plugins.augment import (
    AugmentConfig,
    augment,
    candidate_states,
    cap_segments,
    select_top_k,
)
from ipd_plugins.planners.greedy import GreedyConfig
from ipd_plugins.planners.mpc import MPCConfig
from ipd_plugins.returns import discounted_return
from ipd_plugins.uncertainty.reliable import calibrate_kappa
from registry import WorldModelStep


def test_candidate_states_window():
    idx, ep = candidate_states(np.array([5, 8]), context=2, horizon=3)
    # episode 0 (steps 0-4): t in [2, 2]; episode 1 (steps 5-12): local t in [2, 5]
    assert idx.tolist() == [2, 7, 8, 9, 10]
    assert ep.tolist() == [0, 1, 1, 1, 1]


def test_select_top_k_per_episode():
    gap = np.array([1.0, 5.0, 3.0, 9.0, 2.0, 7.0])
    episode = np.array([0, 0, 0, 1, 1, 1])
    # K = floor(n_aug * |tau| / H_I): episode 0 has 20 steps -> 2, episode 1 has 10 -> 1
    chosen = select_top_k(gap, episode, np.array([20, 10]), n_aug=1.0, horizon=10)
    assert chosen.tolist() == [1, 2, 3]
    # K capped by the candidates of the episode
    assert len(select_top_k(gap, episode, np.array([200, 200]), 1.0, 10)) == 6
    assert len(select_top_k(gap, episode, np.array([20, 10]), 0.0, 10)) == 0


def test_cap_segments_keeps_the_largest_gaps_within_the_share():
    gap = np.array([1.0, 5.0, 3.0, 9.0, 2.0, 7.0])
    chosen = np.array([0, 1, 3, 5])
    # share 0.2 of 100 logged steps with 5-step segments: S*5 / (S*5 + 100) <= 0.2 -> S <= 5
    assert cap_segments(chosen, gap, 100, 5, 0.2).tolist() == [0, 1, 3, 5]
    # share 0.1 -> S <= 100/9/5 = 2.2 -> the two largest gaps (9 at 3, 7 at 5), in order
    assert cap_segments(chosen, gap, 100, 5, 0.1).tolist() == [3, 5]
    assert cap_segments(chosen, gap, 10, 5, 0.1).tolist() == []
    tied = np.array([4.0, 4.0, 4.0])
    assert cap_segments(np.arange(3), tied, 100, 25, 0.5).tolist() == [0, 1, 2]
    assert cap_segments(np.arange(3), tied, 50, 25, 0.5).tolist() == [0, 1]  # ties: first


def test_max_share_caps_the_segments_of_a_run():
    ds = one_d_dataset()
    full = run_augment(MPCConfig(), ds)
    capped = run_augment(MPCConfig(), ds, max_share=0.25)
    n_seg = capped.segments.n_steps
    assert n_seg / (n_seg + ds.n_steps) <= 0.25 < full.segments.n_steps / full.dataset.n_steps
    assert capped.report["selected"] == int(0.25 / 0.75 * ds.n_steps / 8)
    # the kept states are those with the largest gaps of the uncapped selection
    assert capped.report["gap_mean_selected"] > full.report["gap_mean_selected"]
    with pytest.raises(ValueError, match="max_share must be in"):
        AugmentConfig(max_share=1.0)


def test_discounted_return_matches_loop():
    g = torch.Generator().manual_seed(0)
    r = torch.randn(4, 3, generator=g)
    alive = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.float)
    v = torch.randn(3, generator=g)
    out = discounted_return(r, alive, v, 0.9)
    for b in range(3):
        ref = sum(0.9**k * r[k, b] * alive[k, b] for k in range(4)) + 0.9**4 * alive[4, b] * v[b]
        assert out[b] == pytest.approx(float(ref), abs=1e-6)


def test_augment_structure_and_provenance():
    ds = one_d_dataset()
    res = run_augment(MPCConfig(), ds)
    seg, rep = res.segments, res.report
    assert rep["candidates"] == 6 * (40 - 3 - 5 + 1)
    assert rep["selected"] == 6 * (40 // 5)
    assert rep["imagined_steps_kept"] == rep["selected"] * 5  # nothing unreliable, no terminations
    assert seg.n_episodes == rep["selected"] and (seg.episode_lengths == 3 + 5).all()
    assert res.dataset.n_steps == ds.n_steps + seg.n_steps
    imag = res.dataset.extras["imagined"]
    assert not imag[: ds.n_steps].any() and imag.sum() == rep["imagined_steps_kept"]
    assert (res.dataset.extras["source_index"][: ds.n_steps] == -1).all()
    # each segment: 3 real steps copied from the data, then imagined steps from s_t on
    ep0 = seg.episode(0)
    src = int(seg.extras["source_index"][0])
    np.testing.assert_array_equal(ep0.observations[:3], ds.observations[src - 3 : src])
    np.testing.assert_allclose(ep0.observations[3], ds.observations[src])
    np.testing.assert_allclose(ep0.next_observations[:-1], ep0.observations[1:])
    assert ep0.truncations[-1] and not ep0.terminations.any()
    # segment steps carry the time of the steps they continue in the source episode
    t_src = src - ds.episode_starts[ds.episode_index[src]]
    np.testing.assert_array_equal(seg.timesteps()[:8], t_src - 3 + np.arange(8))
    real_times = res.dataset.timesteps()[: ds.n_steps]
    np.testing.assert_array_equal(real_times, ds.timesteps())
    # imagined rewards are the model's (here the true) rewards
    np.testing.assert_allclose(ep0.rewards[3:], -(ep0.next_observations[3:, 0] ** 2), rtol=1e-5)


def test_selected_states_are_the_worst_logged_ones():
    ds = one_d_dataset()
    res = run_augment(GreedyConfig(), ds)
    assert res.report["gap_mean_selected"] > res.report["gap_mean_candidates"] > 0
    assert res.report["gap_mean_augmented"] > 0  # imagined continuations beat the logged steps


def test_uncertainty_cut_stops_rollouts_leaving_the_data():
    ds = one_d_dataset()
    # |s| < 0.5 is "reliable": rollouts that start or wander outside are cut there
    res = run_augment(GreedyConfig(), ds, kappa=0.5 + 1e-3)
    rep = res.report
    assert rep["cut_by_uncertainty"] > 0
    assert rep["imagined_steps_kept"] < rep["selected"] * 5
    imagined_obs = res.dataset.observations[res.dataset.extras["imagined"]]
    assert (np.abs(imagined_obs) <= 0.5 + 1e-3).all()


def test_termination_ends_rollouts_and_no_bootstrap():
    class Falls(ExactModel):
        def step(self, obs, act, generator=None):
            out = super().step(obs, act)
            return WorldModelStep(
                out.next_obs,
                out.reward,
                torch.ones(len(obs), dtype=torch.bool),
                out.member_mean,
                out.member_var,
            )

    ds = one_d_dataset()
    res = augment(
        ds,
        FakeValue(),
        Falls(),
        VarUncertainty(),
        GreedyConfig().create(CTX),
        1e9,
        AugmentConfig(horizon=5, context=3),
        progress=False,
    )
    assert res.report["ended_by_termination"] == res.report["selected"]
    assert (res.segments.episode_lengths == 4).all()  # 3 real + 1 imagined terminal step
    assert res.segments.terminations.sum() == res.segments.n_episodes


def test_calibrate_kappa_uses_dataset_pairs():
    ds = one_d_dataset()
    kappa, stats = calibrate_kappa(ds, ExactModel(), VarUncertainty(), n_pairs=10_000)
    u = np.abs(ds.observations[:, 0]) + 1e-3
    assert kappa == pytest.approx(np.quantile(u, 0.99), rel=1e-4)
    assert stats["u_p50"] <= stats["u_p90"] <= kappa


def test_zero_n_aug_returns_the_dataset_unchanged():
    ds = one_d_dataset()
    res = run_augment(MPCConfig(), ds, n_aug=0.0)
    assert res.segments is None and res.dataset is ds and res.report["selected"] == 0


class _Killed(Exception):
    pass


class NoisyModel(ExactModel):
    """ExactModel plus noise from the augmentation's generator; raises at call ``kill_at``.
    Each call that returns takes one second of ``clock``."""

    def __init__(self, kill_at=None, clock=None):
        self.calls, self.kill_at, self.clock = 0, kill_at, clock if clock is not None else [0.0]

    def step(self, obs, act, generator=None):
        self.calls += 1
        if self.calls == self.kill_at:
            raise _Killed
        self.clock[0] += 1.0
        out = super().step(obs, act)
        noise = 0.01 * torch.randn(out.next_obs.shape, generator=generator)
        return WorldModelStep(
            out.next_obs + noise, out.reward, out.done, out.member_mean, out.member_var
        )


@pytest.mark.parametrize("kill_at", [20, 150])  # during identification, during the rollouts
def test_a_killed_augmentation_resumes_to_the_same_result(tmp_path, monkeypatch, kill_at):
    ds = one_d_dataset()
    clock = [0.0]  # model calls are the only thing that takes time
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])

    def run(model, work_dir):
        torch.manual_seed(0)  # MPC's pi_QOP samples draw from the global RNG
        return augment(
            ds,
            FakeValue(),
            model,
            VarUncertainty(),
            MPCConfig().create(CTX),
            1e9,
            AugmentConfig(horizon=5, context=3, chunk_size=16),
            seed=0,
            progress=False,
            work_dir=work_dir,
            save_every_seconds=0.0,
        )

    uninterrupted = NoisyModel(clock=clock)
    whole = run(uninterrupted, None)
    with pytest.raises(_Killed):
        run(NoisyModel(kill_at=kill_at, clock=clock), tmp_path)
    assert (tmp_path / "augment_train_state.pt").exists()
    clock[0] += 100.0  # the time lost with the chunk in flight is not counted
    again = NoisyModel(clock=clock)
    resumed = run(again, tmp_path)
    # only the chunk in flight is done again (a rollout chunk: 5 steps x (10 MPC + 1) calls)
    left = uninterrupted.calls - kill_at
    assert left < again.calls <= left + 5 * 11
    assert resumed.segments.n_steps == whole.segments.n_steps > 0
    for key in ("observations", "actions", "rewards", "next_observations"):
        np.testing.assert_array_equal(getattr(resumed.segments, key), getattr(whole.segments, key))
    assert resumed.report["simulated_transitions"] == whole.report["simulated_transitions"]
    # each loop's time is summed over both processes (the chunk in flight counted once)
    for key in ("identification_seconds", "rollout_seconds"):
        assert resumed.report[key] == whole.report[key] > 0
