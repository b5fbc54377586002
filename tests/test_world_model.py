"""World model ``pe`` (paper eq. 13-16) and termination rules (issue 5)."""

from __future__ import annotations

import dataclasses
import importlib
import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal

from ipd_plugins.data.dataset import TrajectoryDataset
from ipd_plugins.uncertainty.gjs import pairwise_gjs
from ipd_plugins.world_models.losses import (
    covariance_regulariser,
    ensemble_mean_cov,
    gamma_exp,
    gaussian_nll,
    reparameterised_mean,
    reward_loss,
    soft_bound_logvar,
    transition_consistency_loss,
)
from ipd_plugins.world_models.pe import PEConfig
from ipd_plugins.world_models.termination import (
    hopper_terminated,
    known_termination_rule,
    never_terminates,
    walker2d_terminated,
)
from registry.manager import PluginRegistry
from registry.protocols import BuildContext, WorldModel, WorldModelStep

O, A = 3, 2


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # the test machine is shared: one intra-op thread is several times faster under load
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- eq. 13-16: pure functions against hand computations -------------------------------------
def test_ensemble_mean_cov_and_reparameterised_mean():
    mean = torch.tensor([[[1.0, 2.0]], [[3.0, 6.0]]])  # (E=2,B=1,O=2)
    var = torch.tensor([[[1.0, 4.0]], [[3.0, 12.0]]])
    m, c = ensemble_mean_cov(mean, var)
    torch.testing.assert_close(m, torch.tensor([[2.0, 4.0]]))
    torch.testing.assert_close(c, torch.tensor([[2.0, 8.0]]))
    eps = torch.tensor([[0.5, -1.0]])
    # mu_PE = mean + Sigma^(1/2) eps = (2 + sqrt2 * 0.5, 4 - sqrt8)
    expected = torch.tensor([[2.0 + math.sqrt(2) * 0.5, 4.0 - math.sqrt(8)]])
    torch.testing.assert_close(reparameterised_mean(m, c, eps), expected)


def test_gamma_exp_and_covariance_regulariser():
    assert gamma_exp(0, 1.0, 1e5) == 1.0
    assert gamma_exp(1e5, 1.0, 1e5) == pytest.approx(math.exp(-1))
    assert gamma_exp(5e4, 2.0, 1e5) == pytest.approx(2 * math.exp(-0.5))
    with pytest.raises(ValueError, match="decay rate"):
        gamma_exp(1, 1.0, 0.0)
    cov = torch.tensor([[1.0, 2.0], [0.5, 0.5]])
    # rows: (0.5*(1-0.5))^2 + (0.5*(2-0.5))^2 = 0.0625 + 0.5625 = 0.625; (0)^2 + 0 = 0
    assert float(covariance_regulariser(cov, 0.5, 0.5)) == pytest.approx(0.625 / 2)


def test_transition_consistency_and_reward_loss():
    mu = torch.tensor([[1.0, 1.0], [0.0, 2.0]])
    y = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    cov = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    # mse: (1 + 4) / 2 = 2.5; reg with weight 1 toward 0: (1 + 1) per row -> 2
    assert float(transition_consistency_loss(mu, y, cov, 0.0, 1.0)) == pytest.approx(4.5)
    assert float(transition_consistency_loss(mu, y, cov, 1.0, 1.0)) == pytest.approx(2.5)
    assert float(reward_loss(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0]))) == 5.0


def test_gaussian_nll_matches_log_prob_and_soft_bounds():
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(3, 4, 2, generator=g), torch.randn(3, 4, 2, generator=g)
    y = torch.randn(4, 2, generator=g)
    ref = -Normal(mean, (0.5 * logvar).exp()).log_prob(y).sum(-1).mean() - math.log(2 * math.pi)
    torch.testing.assert_close(gaussian_nll(mean, logvar, y), ref)
    raw = torch.linspace(-50, 50, 1001)
    out = soft_bound_logvar(raw, -10.0, 0.2)
    assert float(out.min()) >= -10.0 and out.max() <= torch.tensor(0.2)
    assert torch.all(out[1:] >= out[:-1])
    inside = soft_bound_logvar(torch.tensor([-14.0, 3.0]), -10.0, 0.2)
    assert -10.0 < float(inside[0]) < -9.9 and 0.0 < float(inside[1]) < 0.2
    assert float(soft_bound_logvar(torch.tensor(-4.0), -10.0, 0.2)) == pytest.approx(-4.0, abs=0.02)


# -- pe on a known linear-Gaussian system -----------------------------------------------------
A_MAT = np.array([[0.9, 0.1, 0.0], [0.0, 0.8, 0.2], [0.1, 0.0, 0.95]])
B_MAT = np.array([[0.5, -0.3], [0.2, 0.4], [-0.6, 0.1]])
NOISE_STD = np.array([0.05, 0.1, 0.2])


def _linear_data(n: int, seed: int) -> TrajectoryDataset:
    rng = np.random.default_rng(seed)
    s = rng.uniform(-1, 1, (n, O)).astype(np.float32)
    a = rng.uniform(-1, 1, (n, A)).astype(np.float32)
    s2 = s @ A_MAT.T + a @ B_MAT.T + rng.normal(size=(n, O)) * NOISE_STD
    r = s.sum(1) - 0.1 * (a**2).sum(1)
    arrays = dict(
        observations=s,
        actions=a,
        rewards=r,
        next_observations=s2,
        terminations=np.zeros(n),
        truncations=np.zeros(n),
    )
    return TrajectoryDataset.from_arrays(arrays, np.full(n // 100, 100))


SMALL = dict(hidden=64, n_hidden=2, batch_size=256, lr=1e-3, decay_T=500.0, eval_every=250)
CTX = BuildContext(O, A, (-1.0,) * A, (1.0,) * A, seed=0)


@pytest.fixture(scope="module")
def fitted():
    torch.manual_seed(0)
    wm = PEConfig(n_steps=1500, **SMALL).create(CTX)
    metrics = wm.fit(_linear_data(10_000, 0))
    return wm, metrics


def test_pe_is_a_world_model_and_learns_the_linear_system(fitted):
    wm, metrics = fitted
    assert isinstance(wm, WorldModel)
    noise_mse = float(np.mean(NOISE_STD**2))  # the best possible next-state MSE
    # predicting s' = s would cost far more; the model gets near the noise floor
    assert metrics["holdout_obs_mse"] < 1.5 * noise_mse
    assert metrics["holdout_reward_mse"] < 0.01  # reward variance is about 1
    test = _linear_data(2_000, 1)
    obs, act = torch.as_tensor(test.observations), torch.as_tensor(test.actions)
    out = wm.step(obs, act, generator=torch.Generator().manual_seed(0))
    assert isinstance(out, WorldModelStep)
    assert out.next_obs.shape == (2000, O) and out.reward.shape == (2000,)
    assert out.done.dtype == torch.bool and not out.done.any()  # no terminations in the data
    assert out.member_mean.shape == out.member_var.shape == (3, 2000, O)
    true_mean = obs.double() @ torch.as_tensor(A_MAT.T) + act.double() @ torch.as_tensor(B_MAT.T)
    mean_err = (out.member_mean.mean(0).double() - true_mean).square().mean(0)
    assert torch.all(mean_err < 0.2 * torch.as_tensor(NOISE_STD**2))
    # predicted variances (raw units) within a factor of 2 of the true noise variance
    ratio = out.member_var.mean((0, 1)).double() / torch.as_tensor(NOISE_STD**2)
    assert torch.all((ratio > 0.5) & (ratio < 2.0)), ratio
    # a member-per-row sample has the true noise spread around the true mean
    resid_var = (out.next_obs.double() - true_mean).var(0)
    assert torch.all((resid_var / torch.as_tensor(NOISE_STD**2) - 1).abs() < 0.5)
    true_r = obs.sum(1) - 0.1 * act.square().sum(1)
    assert float((out.reward - true_r).square().mean()) < 0.01


def test_pe_disagrees_more_off_distribution(fitted):
    wm, _ = fitted
    g = torch.Generator().manual_seed(5)
    act = torch.rand(1000, A, generator=g) * 2 - 1
    on = wm.step(torch.rand(1000, O, generator=g) * 2 - 1, act)
    off = wm.step(torch.rand(1000, O, generator=g) + 3.0, act)  # states never seen (|s| <= 1)
    u_on = pairwise_gjs(on.member_mean, on.member_var)
    u_off = pairwise_gjs(off.member_mean, off.member_var)
    assert float(u_off.median()) > 5 * float(u_on.median())
    spread_on = on.member_mean.std(0).mean()
    spread_off = off.member_mean.std(0).mean()
    assert float(spread_off) > 3 * float(spread_on)


def test_pe_step_is_seeded_and_bf16_is_close(fitted, tmp_path):
    wm, _ = fitted
    obs, act = torch.zeros(64, O), torch.zeros(64, A)
    a = wm.step(obs, act, torch.Generator().manual_seed(1)).next_obs
    b = wm.step(obs, act, torch.Generator().manual_seed(1)).next_obs
    assert torch.equal(a, b)
    bf = PEConfig(n_steps=1500, step_dtype="bfloat16", **SMALL).create(CTX)
    path = tmp_path / "wm.pt"
    wm.save(path)
    bf.load(path)
    full, half = wm.step(obs, act), bf.step(obs, act)
    assert half.member_mean.dtype == torch.float32
    torch.testing.assert_close(half.member_mean, full.member_mean, atol=0.05, rtol=0.05)


def test_run_precision_bf16_trains_and_steps_in_bf16_and_still_learns(fitted, tmp_path):
    wm, metrics = fitted
    bf = PEConfig(n_steps=1500, **SMALL).create(dataclasses.replace(CTX, precision="bf16"))
    assert (bf.train_dtype, bf.step_dtype) == ("bfloat16", "bfloat16")
    torch.manual_seed(0)
    bf_metrics = bf.fit(_linear_data(10_000, 0))
    noise_mse = float(np.mean(NOISE_STD**2))
    assert bf_metrics["holdout_obs_mse"] < 1.5 * noise_mse  # as the fp32 model does
    obs, act = torch.rand(256, O) * 2 - 1, torch.rand(256, A) * 2 - 1
    out = bf.step(obs, act)
    assert out.member_mean.dtype == torch.float32
    torch.testing.assert_close(out.member_mean, wm.step(obs, act).member_mean, atol=0.1, rtol=0.1)


def test_save_load_round_trip(fitted, tmp_path):
    wm, _ = fitted
    path = tmp_path / "pe.pt"
    wm.save(path)
    other = PEConfig(n_steps=1500, sample="ensemble_mean", **SMALL).create(
        BuildContext(O, A, (-1.0,) * A, (1.0,) * A, seed=7)
    )
    obs, act = torch.randn(32, O), torch.rand(32, A)
    assert not torch.allclose(other.step(obs, act).member_mean, wm.step(obs, act).member_mean)
    other.load(path)
    before, after = wm.step(obs, act), other.step(obs, act)
    torch.testing.assert_close(after.member_mean, before.member_mean)
    torch.testing.assert_close(after.member_var, before.member_var)
    torch.testing.assert_close(after.reward, before.reward)
    torch.testing.assert_close(after.next_obs, before.member_mean.mean(0))  # ensemble_mean mode
    wrong = PEConfig(**{**SMALL, "hidden": 32}).create(CTX)
    with pytest.raises(ValueError, match="does not fit this world model"):
        wrong.load(path)


def test_fit_resumes_from_its_checkpoint(tmp_path):
    cfg = dict(SMALL, hidden=16, eval_every=50, checkpoint_every=50, patience=0)
    data = _linear_data(2_000, 3)
    straight = PEConfig(n_steps=200, **cfg).create(CTX)
    straight.fit(data)
    first = PEConfig(n_steps=100, **cfg).create(CTX)
    first.fit(data, work_dir=tmp_path)
    assert (tmp_path / "pe_train_state.pt").exists()
    resumed = PEConfig(n_steps=200, **cfg).create(CTX)
    metrics = resumed.fit(data, work_dir=tmp_path)
    assert metrics["steps"] == 200
    for key, value in straight.modules.state_dict().items():
        torch.testing.assert_close(resumed.modules.state_dict()[key], value, msg=key)


def test_config_and_input_errors():
    with pytest.raises(ValueError, match="pe.sample"):
        PEConfig(sample="mixture")
    with pytest.raises(ValueError, match="min_logvar"):
        PEConfig(min_logvar=1.0, max_logvar=0.0)
    with pytest.raises(ValueError, match="no termination rule is known"):
        PEConfig(termination="rule").create(CTX)
    wm = PEConfig(**{**SMALL, "hidden": 8}).create(CTX)
    with pytest.raises(ValueError, match=r"act must be \(B, 2\)"):
        wm.step(torch.zeros(4, O), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="obs_dim=3"):
        wm.fit(
            TrajectoryDataset.from_arrays(
                dict(
                    observations=np.zeros((10, 4)),
                    actions=np.zeros((10, A)),
                    rewards=np.zeros(10),
                    next_observations=np.zeros((10, 4)),
                    terminations=np.zeros(10),
                    truncations=np.zeros(10),
                ),
                np.array([10]),
            )
        )


def test_registered():
    mod = importlib.import_module("ipd_plugins.world_models.pe")
    reg = PluginRegistry(builtins=(mod,), entry_points=False)
    assert reg.names("world_model") == ["pe"]
    wm = reg.create("world_model", "pe", {"hidden": "8", "n_hidden": "1"}, CTX)
    assert wm.config.n_members == 3 and wm.config.hidden == 8
    from ipd_plugins.builtin import DEFAULT_PLUGINS

    assert "ipd_plugins.world_models.pe" in DEFAULT_PLUGINS


# -- termination ------------------------------------------------------------------------------
def _env_states(env_id: str, n_steps: int, seed: int, **kwargs):
    gym = pytest.importorskip("gymnasium")
    env = gym.make(env_id, **kwargs)
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    next_obs, terminated = [], []
    for _ in range(n_steps):
        obs, _, term, trunc, _ = env.step(env.action_space.sample())
        next_obs.append(obs)
        terminated.append(term)
        if term or trunc:
            obs, _ = env.reset()
    env.close()
    return torch.as_tensor(np.array(next_obs), dtype=torch.float32), np.array(terminated)


@pytest.mark.parametrize("exclude", [True, False])
def test_hopper_rule_matches_gymnasium(exclude):
    next_obs, terminated = _env_states(
        "Hopper-v5", 400, seed=0, exclude_current_positions_from_observation=exclude
    )
    assert terminated.sum() >= 5  # random actions fall over quickly: both classes present
    rule = known_termination_rule("Hopper-v5", next_obs.shape[1])
    np.testing.assert_array_equal(rule(next_obs).numpy(), terminated)
    np.testing.assert_array_equal(hopper_terminated(next_obs, exclude).numpy(), terminated)


def test_walker2d_rule_matches_gymnasium():
    next_obs, terminated = _env_states("Walker2d-v5", 400, seed=1)
    assert terminated.sum() >= 3
    np.testing.assert_array_equal(walker2d_terminated(next_obs).numpy(), terminated)
    rule = known_termination_rule("Walker2d-v5", 17)
    np.testing.assert_array_equal(rule(next_obs).numpy(), terminated)


def test_known_rules_lookup():
    assert known_termination_rule("HalfCheetah-v5", 17) is never_terminates
    assert known_termination_rule("Pendulum-v1", 3) is never_terminates
    assert known_termination_rule("Ant-v5", 105) is None
    assert known_termination_rule(None, 3) is None
    with pytest.raises(ValueError, match="obs_dim=13"):
        known_termination_rule("Hopper-v5", 13)
    x = torch.tensor([[1.2, 0.0] + [0.0] * 9, [0.5, 0.0] + [0.0] * 9, [1.2, 0.3] + [0.0] * 9])
    assert hopper_terminated(x).tolist() == [False, True, True]


def test_learned_termination_beats_the_base_rate():
    rng = np.random.default_rng(0)
    n = 6_000
    s = rng.uniform(-1, 1, (n, O)).astype(np.float32)
    a = rng.uniform(-1, 1, (n, A)).astype(np.float32)
    s2 = (s * 0.9 + 0.2 * a[:, :1]).astype(np.float32)
    done = s2[:, 0] + s2[:, 1] > 0.8  # an unknown rule; ~15% of steps terminate
    lengths, start = [], 0
    for end in np.flatnonzero(done):  # episodes end where they terminate
        lengths.append(end + 1 - start)
        start = end + 1
    if start < n:
        lengths.append(n - start)
    arrays = dict(
        observations=s,
        actions=a,
        rewards=np.zeros(n),
        next_observations=s2,
        terminations=done,
        truncations=np.zeros(n),
    )
    data = TrajectoryDataset.from_arrays(arrays, np.array(lengths), env_id="Toy-v0")
    wm = PEConfig(n_steps=600, **{**SMALL, "hidden": 32}).create(
        BuildContext(O, A, (-1.0,) * A, (1.0,) * A, seed=0)
    )
    metrics = wm.fit(data)
    assert wm.termination_mode == "learned"
    base = metrics["termination_base_rate"]
    assert 0.6 < base < 0.95
    assert metrics["termination_accuracy"] > base + 0.5 * (1 - base)
    # and step() uses it
    out = wm.step(torch.as_tensor(s[:2000]), torch.as_tensor(a[:2000]))
    true = torch.as_tensor(out.next_obs[:, 0] + out.next_obs[:, 1] > 0.8)
    acc = float((out.done == true).float().mean())
    assert acc > base + 0.3 * (1 - base)
    # the rule of a known env wins over learning in "auto" mode
    hopper = PEConfig(**{**SMALL, "hidden": 8}).create(
        BuildContext(11, 3, (-1.0,) * 3, (1.0,) * 3, env_id="Hopper-v5")
    )
    assert hopper.termination_mode == "rule"
