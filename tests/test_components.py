"""Every registered component builds from its default config and does one CPU step.

This is the contract a third-party plugin must meet too: ``ipd plugins`` lists it, so it must
build from its defaults and answer its protocol with the right shapes. Training is cut to one
step through the config's ``n_steps`` (every built-in has it).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from registry import (
    BuildContext,
    Planner,
    PlanningContext,
    SequencePolicy,
    UncertaintyMetric,
    ValueLearner,
    WorldModel,
    get_registry,
)

REG = get_registry()
CTX = BuildContext(obs_dim=3, act_dim=2, act_low=(-1.0, -2.0), act_high=(1.0, 2.0))


@pytest.fixture(scope="module")
def dataset():
    from ipd_plugins.data import TrajectoryDataset

    rng = np.random.default_rng(0)
    eps = []
    for _ in range(4):
        t = 30
        eps.append(
            dict(
                observations=rng.normal(size=(t + 1, 3)),
                actions=rng.uniform([-1, -2], [1, 2], size=(t, 2)),
                rewards=rng.normal(size=t),
                terminations=np.zeros(t),
                truncations=np.eye(t)[-1],
            )
        )
    return TrajectoryDataset.from_episodes(
        eps,
        env_id="Pendulum-v1",
        action_low=np.array([-1.0, -2.0]),
        action_high=np.array([1.0, 2.0]),
    )


def _one_step(kind: str, name: str, **extra):
    cls = REG.config_class(kind, name)
    values = {"n_steps": 1} if "n_steps" in cls.__dataclass_fields__ else {}
    values.update({k: v for k, v in extra.items() if k in cls.__dataclass_fields__})
    return REG.create(kind, name, values, CTX)


@pytest.fixture(scope="module")
def value(dataset):
    v = _one_step("value", "qov", hidden=16)
    v.fit(dataset)
    return v


@pytest.fixture(scope="module")
def world_model(dataset):
    wm = _one_step("world_model", "pe", hidden=16, n_hidden=1)
    wm.fit(dataset)
    return wm


def _in_bounds(a: torch.Tensor) -> bool:
    low, high = torch.tensor(CTX.act_low), torch.tensor(CTX.act_high)
    return bool(((a >= low - 1e-5) & (a <= high + 1e-5)).all())


@pytest.mark.parametrize("name", REG.names("value"))
def test_value_learners(name, dataset, tmp_path):
    v = _one_step("value", name)
    assert isinstance(v, ValueLearner)
    v.fit(dataset)
    obs, act = torch.randn(5, 3), torch.rand(5, 2)
    assert v.q(obs, act).shape == (5,) and v.v(obs).shape == (5,)
    assert v.act(obs).shape == (5, 2) and _in_bounds(v.act(obs, deterministic=False))
    v.save(tmp_path / "w.pt")
    other = _one_step("value", name)
    other.load(tmp_path / "w.pt")
    torch.testing.assert_close(other.v(obs), v.v(obs))


@pytest.mark.parametrize("name", REG.names("world_model"))
def test_world_models(name, dataset, tmp_path):
    wm = _one_step("world_model", name)
    assert isinstance(wm, WorldModel)
    wm.fit(dataset)
    step = wm.step(torch.randn(5, 3), torch.rand(5, 2))
    assert step.next_obs.shape == (5, 3) and step.reward.shape == (5,)
    assert step.done.shape == (5,) and step.done.dtype == torch.bool
    assert step.member_mean.shape == step.member_var.shape and step.member_mean.shape[1:] == (5, 3)
    assert (step.member_var > 0).all()
    wm.save(tmp_path / "w.pt")
    _one_step("world_model", name).load(tmp_path / "w.pt")


@pytest.mark.parametrize("name", REG.names("uncertainty"))
def test_uncertainty_metrics(name):
    metric = _one_step("uncertainty", name)
    assert isinstance(metric, UncertaintyMetric)
    u = metric(torch.randn(3, 7, 4), torch.rand(3, 7, 4) + 0.1)
    assert u.shape == (7,) and torch.isfinite(u).all() and (u >= 0).all()
    kappa = metric.calibrate(torch.rand(100))
    assert kappa > 0


@pytest.mark.parametrize("name", REG.names("planner"))
def test_planners(name, value, world_model):
    planner = _one_step("planner", name)
    assert isinstance(planner, Planner)
    ctx = PlanningContext(value, world_model, _one_step("uncertainty", "gjs"), kappa=float("inf"))
    acts = planner.plan(torch.randn(6, 3), ctx)
    assert acts.shape == (6, 2) and _in_bounds(acts)


@pytest.mark.parametrize("name", REG.names("policy"))
def test_policies(name, dataset, value, tmp_path):
    policy = _one_step("policy", name)
    assert isinstance(policy, SequencePolicy)
    policy.fit(dataset, value)
    actor = policy.actor(value)
    obs = torch.randn(4, 3)
    actor.reset(obs)
    for _ in range(3):
        a = actor.act(obs)
        assert a.shape == (4, 2) and _in_bounds(a)
        actor.observe(torch.zeros(4))
    policy.save(tmp_path / "w.pt")
    _one_step("policy", name).load(tmp_path / "w.pt")
