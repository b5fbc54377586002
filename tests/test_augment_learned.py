"""Imaginary augmentation with learned models (qov + pe + gjs) on Pendulum-v1.

The imagined segments are replayed in the real environment (Pendulum's state can be set from
an observation), so "better than the logged data" is checked against the true dynamics, not
against the model that produced them.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from ipd_plugins.augment import AugmentConfig, augment
from ipd_plugins.data.make import generate
from ipd_plugins.pipeline import context_for
from ipd_plugins.training import seed_everything
from ipd_plugins.uncertainty.reliable import calibrate_kappa
from registry import create

H_CON = 10


@pytest.fixture(scope="module")
def learned():
    torch.set_num_threads(1)
    ds = generate("pendulum-medium-replay", n_steps=6000, seed=0)
    ctx = context_for(ds, seed=0, env_id="Pendulum-v1")
    value = create("value", "qov", {"n_steps": 3000, "hidden": 64}, ctx)
    value.fit(ds)
    wm_config = {"n_steps": 3000, "hidden": 64, "n_hidden": 2}
    world_model = create("world_model", "pe", wm_config, ctx)
    world_model.fit(ds)
    uncertainty = create("uncertainty", "gjs", {}, ctx)
    kappa, _ = calibrate_kappa(ds, world_model, uncertainty, n_pairs=5000)
    return ds, ctx, value, world_model, uncertainty, kappa


def _replay(segments) -> np.ndarray:
    """True return of each segment's imagined actions, replayed from its first imagined state."""
    env = gym.make("Pendulum-v1").unwrapped
    env.reset(seed=0)
    out = []
    for i in range(segments.n_episodes):
        ep = segments.episode(i)
        o = ep.observations[H_CON]
        env.state = np.array([np.arctan2(o[1], o[0]), o[2]], dtype=np.float64)
        out.append(sum(float(env.step(a)[1]) for a in ep.actions[H_CON:]))
    return np.array(out)


def test_mpc_segments_beat_the_logged_steps_in_the_real_environment(learned):
    ds, ctx, value, world_model, uncertainty, kappa = learned
    seed_everything(0)
    planner = create("planner", "mpc", {}, ctx)
    res = augment(
        ds, value, world_model, uncertainty, planner, kappa, AugmentConfig(), seed=0, progress=False
    )
    seg = res.segments
    assert res.report["selected"] > 100 and res.report["imagined_steps_kept"] > 1000
    true = _replay(seg)
    imagined = seg.extras["imagined"]
    model = np.add.reduceat(np.where(imagined, seg.rewards, 0.0), seg.episode_starts)
    source = seg.extras["source_index"][seg.episode_starts]
    n = seg.episode_lengths - H_CON
    logged = np.array([ds.rewards[s : s + k].sum() for s, k in zip(source, n, strict=True)])
    # the imagined continuation is better than what the behaviour policy did from there ...
    assert true.mean() > logged.mean() + 2.0, (true.mean(), logged.mean())
    assert (true > logged).mean() > 0.6
    # ... and the model's rewards are close to the true ones
    assert abs(model.mean() - true.mean()) < 0.1 * abs(true.mean())


def test_only_reliable_pairs_are_kept_and_off_data_states_are_unreliable(learned):
    ds, ctx, value, world_model, uncertainty, _ = learned
    u_data = torch.as_tensor(ds.observations[:2000]), torch.as_tensor(ds.actions[:2000])
    step = world_model.step(*u_data)
    u = uncertainty(step.member_mean, step.member_var)
    strict_kappa = float(torch.quantile(u, 0.5))  # half of the data's own pairs count as unreliable
    greedy = create("planner", "greedy", {}, ctx)
    res = augment(
        ds,
        value,
        world_model,
        uncertainty,
        greedy,
        strict_kappa,
        AugmentConfig(),
        seed=0,
        progress=False,
    )
    assert res.report["cut_by_uncertainty"] > 0
    seg = res.segments
    kept = seg.extras["imagined"]
    step = world_model.step(
        torch.as_tensor(seg.observations[kept]), torch.as_tensor(seg.actions[kept])
    )
    # every kept imagined pair is inside the reliable set (the model samples the same means)
    assert (uncertainty(step.member_mean, step.member_var) < strict_kappa).all()
    # states far from the data (angular velocities of 20-30, the data's are within +-8) are
    # mostly outside it (an ensemble can agree off the data, so not all of them are)
    shift = torch.tensor([1.0, 1.0, 3.0]), torch.tensor([0.0, 0.0, 20.0])
    far = torch.as_tensor(ds.observations[:500]) * shift[0] + shift[1]
    step = world_model.step(far, torch.as_tensor(ds.actions[:500]))
    u_far = uncertainty(step.member_mean, step.member_var)
    assert (u_far > strict_kappa).float().mean() > 0.7
    assert u_far.median() > 1.5 * strict_kappa
