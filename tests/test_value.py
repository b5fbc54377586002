"""Value learners (paper sec. 3.1): the maths of eq. 1-5 against hand computations, `qov` on a
tiny MDP with known values, persistence and resumption, and the d3rlpy-backed `d3rlpy-iql`."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

import registry
from ipd_plugins.data.dataset import TrajectoryDataset
from ipd_plugins.nn import EnsembleMLP, mixed_forward, mlp
from ipd_plugins.value import losses as L
from ipd_plugins.value.d3rlpy_iql import D3rlpyIQLConfig
from ipd_plugins.value.qov import QOVConfig, bernoulli_drop_mask
from registry.protocols import BuildContext, ValueLearner


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The machine's cores are shared: one torch thread avoids oversubscription stalls."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------
# eq. 1-5 as pure functions


def test_huber_expectile_against_hand_numbers():
    e = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0])
    # Huber, delta = 1: |e| <= 1 -> e^2/2, else 1 * (|e| - 1/2)
    huber = torch.tensor([2.5, 0.5, 0.125, 0.0, 0.125, 0.5, 1.5, 2.5])
    torch.testing.assert_close(L.huber(e, 1.0), huber)
    # tau = 0.7: negative errors weigh 0.3, non-negative 0.7
    expected = torch.tensor([0.75, 0.15, 0.0375, 0.0, 0.0875, 0.35, 1.05, 1.75])
    torch.testing.assert_close(L.huber_expectile(e, 0.7, 1.0), expected)
    # a larger delta keeps e = 2 quadratic: 0.7 * 2^2 / 2
    assert L.huber_expectile(torch.tensor([2.0]), 0.7, 2.5).item() == pytest.approx(1.4)
    # a tensor delta (what the percentile window yields) behaves the same
    torch.testing.assert_close(L.huber_expectile(e, 0.7, torch.tensor(1.0)), expected)


def test_value_loss_is_eq3_mean_and_only_moves_v():
    q_hat = torch.tensor([1.0, 2.0, -1.0], requires_grad=True)
    v = torch.tensor([0.0, 3.0, 1.0], requires_grad=True)
    # e = q - v = [1, -1, -2]; delta 1.5: [0.7*0.5, 0.3*0.5, 0.3*1.5*(2-0.75)]
    loss = L.value_loss(q_hat, v, 0.7, 1.5)
    assert loss.item() == pytest.approx((0.35 + 0.15 + 0.5625) / 3)
    loss.backward()
    assert q_hat.grad is None  # Q_target is a constant for the V loss
    # d/dv: -w * clip(e, -delta, delta) / B
    torch.testing.assert_close(v.grad, torch.tensor([-0.7, 0.3, 0.45]) / 3)


def test_q_loss_masks_terminal_bootstrap():
    q_pred = torch.tensor([[1.0, 0.0], [2.0, 1.0]])  # (E=2, B=2)
    reward = torch.tensor([1.0, 0.5])
    not_done = torch.tensor([1.0, 0.0])  # the second transition terminates
    next_v = torch.tensor([10.0, 10.0])
    # targets: 1 + 0.9*10 = 10 and 0.5 (no bootstrap through the terminal state)
    expected = ((10 - 1) ** 2 + (0.5 - 0) ** 2 + (10 - 2) ** 2 + (0.5 - 1) ** 2) / 4
    assert L.q_loss(q_pred, reward, not_done, next_v, 0.9).item() == pytest.approx(expected)
    with pytest.raises(ValueError, match=r"\(E,B\)"):
        L.q_loss(q_pred[0], reward, not_done, next_v, 0.9)


def test_awr_weights_clip_and_loss():
    adv = torch.tensor([-1.0, 0.0, 0.5, 2.0])
    w = L.awr_weights(adv, beta=3.0, max_weight=100.0)
    torch.testing.assert_close(w, torch.tensor([math.exp(-3), 1.0, math.exp(1.5), 100.0]))
    log_prob = torch.tensor([-1.0, -2.0, -0.5, -0.1])
    assert L.awr_loss(log_prob, w).item() == pytest.approx(-(w * log_prob).mean().item())
    # the log-density against torch.distributions
    x, mean, log_std = torch.randn(5, 3), torch.randn(5, 3), torch.randn(5, 3) * 0.3
    ref = torch.distributions.Normal(mean, log_std.exp()).log_prob(x).sum(-1)
    torch.testing.assert_close(L.gaussian_log_prob(x, mean, log_std), ref)


@pytest.mark.parametrize("n", [1, 2, 7, 1000])
def test_huber_threshold_matches_numpy_percentile(n):
    x = np.abs(np.random.default_rng(n).normal(size=n)).astype(np.float32)
    for p in (0.0, 0.5, 0.96, 1.0):
        got = L.huber_threshold(torch.from_numpy(x), p).item()
        assert got == pytest.approx(float(np.percentile(x, 100 * p)), rel=1e-5, abs=1e-7)


def test_percentile_window_keeps_the_most_recent_values():
    window = L.PercentileWindow(size=50, percentile=0.96)
    rng = np.random.default_rng(0)
    seen: list[float] = []
    for n in (10, 30, 25, 7, 80, 3):  # wraps around, and one push larger than the window
        batch = rng.exponential(size=n).astype(np.float32) * (1 + len(seen) / 10)
        window.push(torch.from_numpy(batch))
        seen.extend(batch.tolist())
        expected = np.percentile(np.asarray(seen[-50:], np.float32), 96)
        assert window.threshold().item() == pytest.approx(float(expected), rel=1e-5)
    clone = L.PercentileWindow(size=50, percentile=0.96)
    clone.load_state_dict(window.state_dict())
    assert clone.threshold().item() == window.threshold().item()
    with pytest.raises(ValueError, match="fraction"):
        L.PercentileWindow(size=10, percentile=96)


def test_soft_update_is_polyak():
    target, online = [torch.zeros(3), torch.ones(2)], [torch.ones(3), torch.full((2,), 3.0)]
    L.soft_update(target, online, 0.1)
    torch.testing.assert_close(target[0], torch.full((3,), 0.1))
    torch.testing.assert_close(target[1], torch.full((2,), 1.2))


def test_fast_dropout_mask_has_dropouts_distribution():
    torch.manual_seed(0)
    p, shape = 0.01, (256, 256)
    masks = torch.stack([bernoulli_drop_mask(shape, p) for _ in range(40)])
    dropped = (masks == 0).float()
    n = dropped.numel()
    assert abs(dropped.mean().item() - p) < 5 * math.sqrt(p * (1 - p) / n)
    assert torch.all((masks == 0) | torch.isclose(masks, torch.tensor(1 / (1 - p))))
    # no positional structure: drops spread evenly over rows and columns
    per_col = dropped.mean((0, 1))
    assert per_col.std().item() < 3 * math.sqrt(p * (1 - p) / (40 * 256))
    assert torch.equal(bernoulli_drop_mask((4, 5), 0.0), torch.ones(4, 5))
    big = bernoulli_drop_mask((1000,), 0.5)
    assert 0.4 < (big == 0).float().mean().item() < 0.6


# ---------------------------------------------------------------------------------------------
# a tiny MDP with known values

# A chain of L states (one-hot observations) walked left to right whatever the action; the
# episode terminates after the last state. Actions are 1-d in [-1, 1], reward r = 0.5 + a.
# Behaviour data: 2 episodes in 5 always take a "good" action (+0.8, small noise), the rest
# a "bad" one (-0.8). As every action leads to the same next state,
#   V_tau(s) = m_tau * (1 - gamma^(L - s)) / (1 - gamma),
# with m_tau the tau-expectile of the one-step reward under the behaviour mix: m_0.5 is the
# behaviour policy's mean reward, m_tau -> the best in-support reward 1.3 as tau -> 1.
CHAIN, GAMMA, P_GOOD, GOOD, BAD = 5, 0.9, 0.4, 0.8, -0.8


def _chain_dataset(n_episodes: int = 200, seed: int = 0) -> TrajectoryDataset:
    rng = np.random.default_rng(seed)
    eye = np.eye(CHAIN + 1, dtype=np.float32)[:, :CHAIN]  # row CHAIN: the terminal state (zeros)
    episodes = []
    for i in range(n_episodes):
        a0 = GOOD if i % 5 < 5 * P_GOOD else BAD  # exactly P_GOOD of the episodes are good
        act = np.clip(a0 + 0.05 * rng.normal(size=(CHAIN, 1)), -1, 1).astype(np.float32)
        episodes.append(
            {
                "observations": eye[np.arange(CHAIN + 1)],
                "actions": act,
                "rewards": 0.5 + act[:, 0],
                "terminations": np.arange(CHAIN) == CHAIN - 1,
                "truncations": np.zeros(CHAIN, bool),
            }
        )
    return TrajectoryDataset.from_episodes(episodes, name="chain")


def _expectile(tau: float) -> float:
    hi, lo = 0.5 + GOOD, 0.5 + BAD
    w_hi, w_lo = tau * P_GOOD, (1 - tau) * (1 - P_GOOD)
    return (w_hi * hi + w_lo * lo) / (w_hi + w_lo)


def _chain_values(m: float) -> np.ndarray:
    steps_left = CHAIN - np.arange(CHAIN)
    return m * (1 - GAMMA**steps_left) / (1 - GAMMA)


CHAIN_CTX = BuildContext(obs_dim=CHAIN, act_dim=1, act_low=(-1.0,), act_high=(1.0,), seed=0)
SMALL = dict(
    hidden=64,
    n_layers=2,
    lr=1e-3,
    actor_lr=1e-3,
    tau_target=0.05,
    gamma=GAMMA,
    batch_size=128,
    log_every=100,
)


@pytest.fixture(scope="module")
def chain() -> TrajectoryDataset:
    return _chain_dataset()


@pytest.fixture(scope="module")
def chain_learners(chain):
    out = {}
    for tau in (0.5, 0.9):
        learner = QOVConfig(tau=tau, n_steps=700, **SMALL).create(CHAIN_CTX)
        metrics = learner.fit(chain)
        out[tau] = (learner, metrics)
    return out


def _v_chain(learner) -> np.ndarray:
    return learner.v(torch.eye(CHAIN)).numpy()


def test_qov_v_between_behaviour_and_best_and_grows_with_tau(chain_learners):
    behaviour = _chain_values(_expectile(0.5))  # = the behaviour policy's value
    best = _chain_values(0.5 + GOOD)
    v5, v9 = _v_chain(chain_learners[0.5][0]), _v_chain(chain_learners[0.9][0])
    # tau = 0.5 recovers the behaviour value; tau = 0.9 its own expectile value
    np.testing.assert_allclose(v5, behaviour, atol=0.25)
    np.testing.assert_allclose(v9, _chain_values(_expectile(0.9)), atol=0.3)
    # above the behaviour value, at most the best in-support value, closer to it as tau grows
    assert np.all(v9 > behaviour + 0.5)
    assert np.all(v9 <= best + 0.1)
    assert np.all(np.abs(best - v9) < np.abs(best - v5) - 0.5)
    assert chain_learners[0.9][1]["steps"] == 700


def test_qov_in_bf16_learns_the_chains_values_with_fp32_outputs(chain):
    learner = QOVConfig(tau=0.9, n_steps=700, **SMALL).create(
        dataclasses.replace(CHAIN_CTX, precision="bf16")
    )
    learner.fit(chain)
    np.testing.assert_allclose(_v_chain(learner), _chain_values(_expectile(0.9)), atol=0.3)
    assert learner.v(torch.eye(CHAIN)).dtype == torch.float32


def test_mixed_forward_keeps_the_output_layer_in_fp32():
    torch.manual_seed(0)
    net = mlp(8, 1, hidden=32)
    x = torch.randn(16, 8)
    out = mixed_forward(net, x, "bf16")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, net(x), atol=0.05, rtol=0.02)  # bf16 hidden, same function
    assert torch.equal(mixed_forward(net, x, "fp32"), net(x))
    # the output layer's own rounding is fp32's: a bias of 300 keeps a 0.01 change
    with torch.no_grad():
        net[-1].bias.fill_(300.0)
    a = mixed_forward(net, x, "bf16")
    with torch.no_grad():
        net[-1].bias.add_(0.01)
    torch.testing.assert_close(mixed_forward(net, x, "bf16") - a, torch.full_like(a, 0.01))
    ens = EnsembleMLP(2, 8, 1, hidden=32, n_hidden=2)
    assert mixed_forward(ens, x.expand(2, -1, -1), "bf16").shape == (2, 16, 1)


def test_qov_q_orders_actions_and_policy_prefers_the_better_one(chain_learners):
    learner = chain_learners[0.9][0]
    obs = torch.eye(CHAIN)
    q_good = learner.q(obs, torch.full((CHAIN, 1), GOOD))
    q_bad = learner.q(obs, torch.full((CHAIN, 1), BAD))
    # Q(s, a) = 0.5 + a + gamma V(s'): the gap is the reward gap 1.6 everywhere
    np.testing.assert_allclose((q_good - q_bad).detach().numpy(), 1.6, atol=0.3)
    mean_action = learner.act(obs).numpy()[:, 0]
    behaviour_mean = P_GOOD * GOOD + (1 - P_GOOD) * BAD  # -0.16: what cloning would give
    assert np.all(mean_action > 0.5), mean_action
    assert np.all(mean_action > behaviour_mean + 0.5)
    # q is differentiable w.r.t. the action (eq. 26's Q guidance) without touching the weights
    act = torch.zeros(CHAIN, 1, requires_grad=True)
    learner.q(obs, act).sum().backward()
    assert act.grad is not None and torch.all(act.grad > 0)
    assert all(p.grad is None for p in learner.nets.q_target.parameters())


# ---------------------------------------------------------------------------------------------
# protocol, persistence, resumption, errors


def test_qov_protocol_bounds_and_registry(tmp_path):
    ctx = BuildContext(obs_dim=3, act_dim=2, act_low=(0.0, -3.0), act_high=(2.0, 1.0), seed=1)
    learner = registry.create("value", "qov", {"hidden": 16, "n_steps": 5}, ctx)
    assert isinstance(learner, ValueLearner)
    assert learner.gamma == 0.99
    obs = torch.randn(64, 3) * 5
    for deterministic in (True, False):
        a = learner.act(obs, deterministic=deterministic)
        assert a.shape == (64, 2)
        assert torch.all(a >= torch.tensor([0.0, -3.0])) and torch.all(
            a <= torch.tensor([2.0, 1.0])
        )
    assert learner.q(obs, a).shape == (64,) and learner.v(obs).shape == (64,)
    with pytest.raises(ValueError, match=r"\(B,3\)"):
        learner.v(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="rows"):
        learner.q(obs, a[:3])
    assert {"qov", "d3rlpy-iql"} <= set(registry.names("value"))


def test_qov_bad_config_fails_with_a_message():
    with pytest.raises(ValueError, match="tau"):
        QOVConfig(tau=1.5)
    with pytest.raises(ValueError, match="fraction"):
        QOVConfig.from_dict({"huber_percentile": 96})
    with pytest.raises(ValueError, match="log_std_min"):
        QOVConfig(log_std_min=3.0)
    with pytest.raises(ValueError, match="no option"):
        QOVConfig.from_dict({"expectile": 0.7})
    with pytest.raises(ValueError, match="finite action bounds"):
        QOVConfig().create(BuildContext(1, 1, (-math.inf,), (math.inf,)))
    with pytest.raises(ValueError, match="obs_dim"):
        QOVConfig(n_steps=1).create(BuildContext(3, 1, (-1.0,), (1.0,))).fit(_chain_dataset(2))


def test_qov_save_load_round_trip(tmp_path, chain):
    learner = QOVConfig(n_steps=50, **SMALL).create(CHAIN_CTX)
    learner.fit(chain)
    learner.save(tmp_path / "qov.pt")
    other = QOVConfig(**SMALL).create(BuildContext(CHAIN, 1, (-1.0,), (1.0,), seed=7))
    obs, act = torch.eye(CHAIN), torch.rand(CHAIN, 1) * 2 - 1
    assert not torch.equal(other.v(obs), learner.v(obs))
    other.load(tmp_path / "qov.pt")
    assert torch.equal(other.v(obs), learner.v(obs))
    assert torch.equal(other.q(obs, act), learner.q(obs, act))
    assert torch.equal(other.act(obs), learner.act(obs))
    assert other.step == 50
    wrong = QOVConfig(hidden=32).create(CHAIN_CTX)
    with pytest.raises(ValueError, match="hidden"):
        wrong.load(tmp_path / "qov.pt")
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a qov checkpoint"):
        wrong.load(tmp_path / "other.pt")
    elsewhere = QOVConfig(**SMALL).create(BuildContext(CHAIN + 1, 1, (-1.0,), (1.0,)))
    with pytest.raises(ValueError, match=r"trained for obs_dim, act_dim = \(\d+, 1\)"):
        elsewhere.load(tmp_path / "qov.pt")


class _Interrupt(Exception):
    pass


def test_qov_resumes_after_interruption_exactly(tmp_path, chain):
    cfg = dict(SMALL, n_steps=120, checkpoint_every=40, log_every=20)
    straight = QOVConfig(**cfg).create(CHAIN_CTX)
    straight.fit(chain)

    def crash_at_100(step, metrics):
        if step == 100:
            raise _Interrupt

    interrupted = QOVConfig(**cfg).create(CHAIN_CTX)
    with pytest.raises(_Interrupt):
        interrupted.fit(chain, work_dir=tmp_path, log=crash_at_100)
    assert interrupted.step == 100  # the last checkpoint is at 80
    resumed = QOVConfig(**cfg).create(CHAIN_CTX)
    metrics = resumed.fit(chain, work_dir=tmp_path)
    assert metrics["steps"] == 120 and metrics["steps_trained"] == 40
    for (name, a), b in zip(
        straight.nets.state_dict().items(), resumed.nets.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    # a longer run continues from the finished checkpoint
    longer = QOVConfig(**dict(cfg, n_steps=160)).create(CHAIN_CTX)
    metrics = longer.fit(chain, work_dir=tmp_path)
    assert (metrics["steps"], metrics["steps_trained"]) == (160, 40)


# ---------------------------------------------------------------------------------------------
# d3rlpy-iql


def test_d3rlpy_iql_trains_answers_and_round_trips(tmp_path, chain):
    cfg = D3rlpyIQLConfig(
        hidden=64,
        n_steps=600,
        batch_size=128,
        gamma=GAMMA,
        tau_target=0.05,
        actor_lr=1e-3,
        critic_lr=1e-3,
        log_every=200,
    )
    learner = cfg.create(CHAIN_CTX)
    assert isinstance(learner, ValueLearner)
    logged = []
    metrics = learner.fit(chain, log=lambda step, m: logged.append(step))
    assert metrics["steps"] == 600 and logged == [200, 400, 600]
    obs = torch.eye(CHAIN)
    a = learner.act(obs)
    assert a.shape == (CHAIN, 1) and learner.q(obs, a).shape == (CHAIN,)
    assert torch.all(learner.act(obs, deterministic=False).abs() <= 1.0)
    v = learner.v(obs).numpy()
    assert v.shape == (CHAIN,) and np.all(np.isfinite(v))
    # sane: between the behaviour value and the best in-support value, decreasing along the chain
    behaviour, best = _chain_values(_expectile(0.5)), _chain_values(0.5 + GOOD)
    assert np.all(v > behaviour - 0.5) and np.all(v < best + 0.5), v
    assert np.all(np.diff(v) < 0), v
    learner.save(tmp_path / "iql.pt")
    other = cfg.create(BuildContext(CHAIN, 1, (-1.0,), (1.0,), seed=3))
    other.load(tmp_path / "iql.pt")
    assert torch.equal(other.v(obs), learner.v(obs))
    assert torch.equal(other.act(obs), learner.act(obs))
    with pytest.raises(ValueError, match="expectile"):
        D3rlpyIQLConfig.from_dict({"expectile": 0.0})  # d3rlpy's name, read as tau


def test_d3rlpy_iql_takes_the_paper_names_and_its_old_ones():
    """tau/beta as in qov; d3rlpy's expectile/weight_temp still read, and hashed as before."""
    from registry.config import identity_dict

    old = D3rlpyIQLConfig.from_dict({"expectile": 0.8, "weight_temp": 2.0})
    new = D3rlpyIQLConfig.from_dict({"tau": 0.8, "beta": 2.0})
    assert (old.tau, old.beta) == (0.8, 2.0) and old == new
    ident = identity_dict(new)
    assert ident["expectile"] == 0.8 and ident["weight_temp"] == 2.0 and "tau" not in ident
    with pytest.raises(ValueError, match="not both"):
        D3rlpyIQLConfig.from_dict({"tau": 0.8, "expectile": 0.7})


def _episodes_with_rewards(*per_episode: list[float]) -> TrajectoryDataset:
    eps = []
    for rewards in per_episode:
        t = len(rewards)
        eps.append(
            {
                "observations": np.zeros((t + 1, 2), np.float32),
                "actions": np.zeros((t, 1), np.float32),
                "rewards": np.asarray(rewards, np.float32),
                "terminations": np.zeros(t, bool),
                "truncations": np.eye(1, t, t - 1, dtype=bool)[0],
            }
        )
    return TrajectoryDataset.from_episodes(eps)


def test_reward_factor_is_iqls_normalisation_and_survives_equal_returns():
    from ipd_plugins.returns import reward_factor

    ds = _episodes_with_rewards([1.0, 2.0], [5.0, 5.0, 10.0])  # returns 3 and 20: spread 17
    assert reward_factor(ds, 2.0, normalize=True) == pytest.approx(2.0 * 1000.0 / 17.0)
    assert reward_factor(ds, 2.0, normalize=False) == 2.0
    flat = _episodes_with_rewards([1.0, 1.0], [2.0])  # both return 2: nothing to normalise by
    with pytest.warns(UserWarning, match="no spread"):
        assert reward_factor(flat, 0.5, normalize=True) == 0.5


def test_reward_factor_of_an_augmented_dataset_counts_only_the_original_episodes():
    from ipd_plugins.returns import reward_factor

    real = _episodes_with_rewards([1.0, 2.0], [5.0, 5.0, 10.0])  # spread 17
    segment = _episodes_with_rewards([0.1], [30.0])  # imagined segments: returns 0.1 and 30
    segment.extras["source_index"] = np.array([0, 3], np.int64)  # grown from real steps
    real.extras["source_index"] = np.full(real.n_steps, -1, np.int64)
    both = TrajectoryDataset.concatenate([real, segment])
    assert reward_factor(both) == pytest.approx(1000.0 / 17.0)
