"""The planners (paper eq. 25 and the fig. 2 ablation) on the exact 1-d system of ``fakes``."""

from __future__ import annotations

import numpy as np
import torch
from fakes import (
    CTX,
    ExactModel,
    FakeValue,
    VarUncertainty,
    one_d_dataset,
    run_augment,
    true_return,
)

from ipd_plugins.planners.greedy import GreedyConfig
from ipd_plugins.planners.mpc import MPCConfig
from registry import PlanningContext


def _eq25_score(s0: float, first: float, value: FakeValue, horizon: int, gamma: float) -> float:
    """Eq. 25 by hand: the candidate first action, then pi_QOP's mean, then gamma^H V."""
    s, total = torch.tensor([[s0]]), 0.0
    for k in range(horizon):
        a = torch.tensor([[first]]) if k == 0 else value.act(s)
        s = (s + a).clamp(-5, 5)
        total += gamma**k * float(-(s[0, 0] ** 2))
    return total + gamma**horizon * float(value.v(s)[0])


def test_mpc_takes_the_candidate_with_the_best_eq25_score():
    """The chosen first action is the argmax of eq. 25 over the candidates it drew."""
    value, horizon, gamma = FakeValue(), 4, 0.9
    planner = MPCConfig(n_mpc=6, horizon=horizon, gamma=gamma).create(CTX)
    obs = torch.tensor([[0.8], [-1.5], [2.0]])
    ctx = PlanningContext(value, ExactModel(), VarUncertainty(), kappa=1e9)
    torch.manual_seed(3)
    chosen = planner.plan(obs, ctx)
    torch.manual_seed(3)  # the same candidates again: pi_QOP samples, the first one its mean
    drawn = value.act(obs.repeat_interleave(6, dim=0), deterministic=False).view(3, 6)
    drawn[:, 0] = value.act(obs)[:, 0]
    for b in range(3):
        scores = [_eq25_score(float(obs[b, 0]), float(a), value, horizon, gamma) for a in drawn[b]]
        assert float(chosen[b, 0]) == float(drawn[b, int(np.argmax(scores))])
    assert planner.simulated == 3 * 6 * horizon


def test_greedy_is_pi_qop_mean():
    obs = torch.linspace(-3, 3, 7)[:, None]
    ctx = PlanningContext(FakeValue(), ExactModel(), VarUncertainty(), kappa=1e9)
    assert torch.equal(GreedyConfig().create(CTX).plan(obs, ctx), FakeValue().act(obs))


def test_mpc_discards_candidates_that_leave_the_reliable_set():
    planner = MPCConfig(n_mpc=4, horizon=3).create(CTX)
    obs = torch.full((256, 1), 0.2)
    torch.manual_seed(0)
    ctx = PlanningContext(FakeValue(), ExactModel(), VarUncertainty(), kappa=0.45)
    acts = planner.plan(obs, ctx)
    # a first action taking |s| past 0.45 makes the candidate unreliable at step 2: never chosen
    # while the mean action (-0.06 -> s = 0.14) stays reliable
    assert ((obs + acts).abs() <= 0.45).all()


def test_planning_context_reliable_is_eq12():
    ctx = PlanningContext(FakeValue(), ExactModel(), VarUncertainty(), kappa=0.5)
    step = ExactModel().step(torch.tensor([[0.2], [0.7]]), torch.zeros(2, 1))
    assert ctx.reliable(step).tolist() == [True, False]  # U = |s| + 1e-3 against kappa 0.5


def test_mpc_beats_greedy_on_the_same_states_in_the_true_system():
    ds = one_d_dataset()
    returns = {}
    for cfg in (MPCConfig(n_mpc=8, horizon=5), GreedyConfig()):
        seg = run_augment(cfg, ds).segments
        totals = []
        for i in range(seg.n_episodes):
            ep = seg.episode(i)
            totals.append(true_return(float(ep.observations[3, 0]), ep.actions[3:, 0], 0.99))
        returns[cfg.name] = np.mean(totals)
    assert returns["mpc"] > returns["greedy"] + 0.1, returns
