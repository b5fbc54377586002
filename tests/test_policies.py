"""Sequence policies: the causal transformer, window sampling, eq. 26, V-token acting, RTG, I/O."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ipd_plugins.data.dataset import TrajectoryDataset
from ipd_plugins.data.toy import ToyReachValue, register_toy_reach, toy_reach_dataset
from ipd_plugins.evaluate import CallableActor, evaluate
from ipd_plugins.policies.gpt import CausalTransformer, DecisionModel
from ipd_plugins.policies.ipd_dt import advantage_weights, ipd_loss
from ipd_plugins.policies.sequence_data import (
    SequenceSampler,
    discounted_returns_to_go,
    returns_to_go,
    window_indices,
)
from registry import manager
from registry.protocols import Actor, BuildContext, SequencePolicy


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny nets: one thread is faster than two and suffers less from a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY = {"n_layer": 2, "n_embd": 32, "n_head": 2, "context": 5, "batch_size": 16, "n_steps": 20}


# -- the 1-d ToyReach task of ipd_plugins.data.toy: move x to 0, reward -|x'| ----------------
TOY_ID = register_toy_reach()


CTX = BuildContext(obs_dim=1, act_dim=1, act_low=(-1.0,), act_high=(1.0,), seed=0)


def make(name: str, **overrides):
    return manager.create("policy", name, {**TINY, **overrides}, CTX)


# -- the transformer ---------------------------------------------------------------------------
def test_causal_transformer_output_at_t_ignores_later_tokens():
    torch.manual_seed(0)
    net = CausalTransformer(n_layer=2, n_embd=16, n_head=2, max_tokens=12, dropout=0.0).eval()
    x = torch.randn(3, 12, 16)
    y = net(x)
    for t in range(11):
        x2 = x.clone()
        x2[:, t + 1 :] += torch.randn_like(x2[:, t + 1 :])
        y2 = net(x2)
        torch.testing.assert_close(y2[:, : t + 1], y[:, : t + 1])
        assert not torch.allclose(y2[:, t + 1 :], y[:, t + 1 :])


@pytest.mark.parametrize("position", ["timestep", "window"])
@pytest.mark.parametrize("layout", ["vsa", "sa", "s"])
def test_decision_model_action_at_t_sees_only_past_and_own_state(layout, position):
    torch.manual_seed(0)
    B, T, O, A = 2, 6, 4, 3
    base = DecisionModel(
        O,
        A,
        -torch.ones(A),
        torch.ones(A),
        context=T,
        n_layer=2,
        n_embd=16,
        n_head=2,
        dropout=0.0,
        token_layout=layout,
        position=position,
        max_timestep=50,
    ).eval()
    time = torch.tensor([[0, 1, 2, 3, 4, 5], [30, 31, 32, 33, 34, 35]])

    def model(obs, act, cond, mask=None):
        return base(obs, act, cond, mask, time)

    assert base.tokens_per_step == {"vsa": 3, "sa": 2, "s": 1}[layout]
    assert base.transformer.max_tokens == base.tokens_per_step * T
    obs, act, cond = torch.randn(B, T, O), torch.randn(B, T, A), torch.randn(B, T)
    pred = model(obs, act, cond)
    assert pred.shape == (B, T, A)
    assert pred.abs().max() <= 1.0
    for t in range(T):
        # the step's own action and everything later must not change the prediction at t
        act2 = act.clone()
        act2[:, t:] = torch.randn_like(act2[:, t:])
        obs2, cond2 = obs.clone(), cond.clone()
        obs2[:, t + 1 :] += 1.0
        cond2[:, t + 1 :] += 1.0
        torch.testing.assert_close(model(obs2, act2, cond2)[:, : t + 1], pred[:, : t + 1])
    # ... but the step's own state and conditioning do
    obs3, cond3 = obs.clone(), cond.clone()
    obs3[:, 2] += 1.0
    cond3[:, 3] += 1.0
    assert not torch.allclose(model(obs3, act, cond)[:, 2], pred[:, 2])
    assert not torch.allclose(model(obs, act, cond3)[:, 3], pred[:, 3])
    # the time in the episode is seen only with position="timestep"
    later = base(obs, act, cond, None, time + 7)
    assert torch.allclose(later, pred) == (position == "window")


def test_left_padding_is_masked_out():
    torch.manual_seed(0)
    model = DecisionModel(
        2, 1, -torch.ones(1), torch.ones(1), context=5, n_layer=2, n_embd=16, n_head=2, dropout=0.0
    ).eval()
    obs, act, cond = torch.randn(2, 5, 2), torch.randn(2, 5, 1), torch.randn(2, 5)
    mask = torch.tensor([[False, False, True, True, True], [True] * 5])
    time = torch.tensor([[0, 0, 0, 1, 2], [9, 10, 11, 12, 13]])
    pred = model(obs, act, cond, mask, time)
    obs2, act2, cond2 = obs.clone(), act.clone(), cond.clone()
    obs2[0, :2] = 7.0
    act2[0, :2] = -3.0
    cond2[0, :2] = 5.0
    time2 = time.clone()
    time2[0, :2] = 4
    pred2 = model(obs2, act2, cond2, mask, time2)
    torch.testing.assert_close(pred2[0, 2:], pred[0, 2:])
    torch.testing.assert_close(pred2[1], pred[1])
    assert torch.isfinite(pred2).all()


def test_bad_shapes_and_layout_fail_with_sentences():
    with pytest.raises(ValueError, match="token_layout must be one of"):
        make("ipd-dt", token_layout="xyz")
    with pytest.raises(ValueError, match="divisible by"):
        make("dt", n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="position must be one of"):
        make("ipd-dt", position="absolute")
    with pytest.raises(ValueError, match="max_timestep must be >= 1"):
        make("dt", max_timestep=0)
    with pytest.raises(ValueError, match="position_init_std must be > 0"):
        make("ipd-dt", position_init_std=0.0)
    model = DecisionModel(2, 1, -torch.ones(1), torch.ones(1), context=4, n_embd=16, n_head=2)
    time = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(AssertionError, match="obs must be"):
        model(torch.zeros(1, 4, 3), torch.zeros(1, 4, 1), torch.zeros(1, 4), None, time)
    with pytest.raises(AssertionError, match="longer than the context"):
        model(torch.zeros(1, 5, 2), torch.zeros(1, 5, 1), torch.zeros(1, 5))
    with pytest.raises(AssertionError, match="needs timesteps"):
        model(torch.zeros(1, 4, 2), torch.zeros(1, 4, 1), torch.zeros(1, 4))


def test_position_init_std_sets_the_timestep_embedding_scale():
    torch.manual_seed(0)
    args = (2, 1, -torch.ones(1), torch.ones(1))
    default = DecisionModel(*args, context=4, n_embd=64, n_head=2, max_timestep=500)
    gpt2 = DecisionModel(
        *args, context=4, n_embd=64, n_head=2, max_timestep=500, position_init_std=0.02
    )
    assert float(default.embed_pos.weight.std()) == pytest.approx(1.0, rel=0.05)  # PyTorch's
    assert float(gpt2.embed_pos.weight.std()) == pytest.approx(0.02, rel=0.05)
    assert float(gpt2.embed_obs.weight.std()) == pytest.approx(
        float(default.embed_obs.weight.std()), rel=0.2
    )  # only the position table changes


# -- sampling ----------------------------------------------------------------------------------
def test_windows_and_returns_to_go_match_a_naive_loop():
    lengths = np.array([3, 7, 1, 5])
    starts = np.r_[0, np.cumsum(lengths)[:-1]]
    ep_start = torch.as_tensor(np.repeat(starts, lengths))
    end = torch.arange(int(lengths.sum()))
    index, mask = window_indices(end, ep_start, context=4)
    for i in range(int(lengths.sum())):
        s = int(ep_start[i])
        for j, k in enumerate(range(i - 3, i + 1)):
            assert bool(mask[i, j]) == (k >= s)
            if k >= s:
                assert int(index[i, j]) == k
    rewards = np.arange(16, dtype=np.float32)
    rtg = returns_to_go(rewards, lengths)
    bounds = zip(starts, lengths, strict=True)
    naive = [rewards[i : s + n].sum() for s, n in bounds for i in range(s, s + n)]
    np.testing.assert_allclose(rtg, naive)
    with pytest.raises(ValueError, match="episode_lengths sum"):
        returns_to_go(rewards, np.array([3, 3]))


def test_discounted_returns_to_go_match_a_naive_loop():
    rng = np.random.default_rng(1)
    lengths = np.array([4, 1, 9, 3])
    rewards = rng.normal(size=int(lengths.sum())).astype(np.float32)
    tail = np.array([0.0, 2.0, -1.5, 10.0])
    got = discounted_returns_to_go(rewards, lengths, 0.9, tail)
    naive, start = [], 0
    for n, v in zip(lengths, tail, strict=True):
        g, ep = float(v), []
        for r in rewards[start : start + n][::-1]:
            g = float(r) + 0.9 * g
            ep.append(g)
        naive += ep[::-1]
        start += n
    np.testing.assert_allclose(got, naive, rtol=1e-5)
    with pytest.raises(ValueError, match="do not fit together"):
        discounted_returns_to_go(rewards, lengths, 0.9, tail[:3])


def test_ipd_dt_return_tokens_are_bootstrapped_returns_and_acting_still_feeds_v():
    ds, value = toy_reach_dataset(5), ToyReachValue(record=True)
    ds = ds.replace(terminations=np.zeros(ds.n_steps, bool))  # every episode cut by time
    policy = make("ipd-dt", train_token="return", gamma=0.95)
    raw = policy.raw_conditioning(ds, value)
    last = ds.episode_starts + ds.episode_lengths - 1
    tail = -2.0 * np.abs(ds.next_observations[last, 0])  # ToyReachValue's V(s') at each cut
    np.testing.assert_allclose(
        raw, discounted_returns_to_go(ds.rewards, ds.episode_lengths, 0.95, tail), rtol=1e-5
    )
    # a terminated episode gets no bootstrap
    term = ds.terminations.copy()
    term[last[0]] = True
    raw_t = policy.raw_conditioning(ds.replace(terminations=term), value)
    first = slice(0, int(ds.episode_lengths[0]))
    np.testing.assert_allclose(
        raw_t[first],
        discounted_returns_to_go(ds.rewards[first], ds.episode_lengths[:1], 0.95, np.zeros(1)),
        rtol=1e-5,
    )
    policy.fit(ds, value)
    actor = policy.actor(value)
    obs = torch.tensor([[0.3], [-0.7]])
    actor.reset(obs)
    value.v_calls.clear()
    actor.act(obs)
    torch.testing.assert_close(value.v_calls[-1], obs)
    with pytest.raises(ValueError, match="train_token must be"):
        make("ipd-dt", train_token="rtg")


def test_sampler_pads_left_with_zeros():
    ds = toy_reach_dataset(3)
    sampler = SequenceSampler(ds, np.arange(ds.n_steps, dtype=np.float32) + 1, context=5)
    w = sampler.window(torch.tensor([0, 3, 22]))  # ep 0 step 0, ep 0 step 3, ep 1 step 2
    assert w["obs"].shape == (3, 5, 1) and w["mask"].shape == (3, 5)
    assert w["mask"].tolist()[0] == [False] * 4 + [True]
    assert w["mask"].tolist()[2] == [False, False, True, True, True]
    assert w["cond"][2].tolist() == [0, 0, 21, 22, 23]
    expected = torch.tensor([0.0, *ds.observations[:4, 0].tolist()])
    torch.testing.assert_close(w["obs"][1, :, 0], expected)
    assert (w["act"][0, :4] == 0).all()
    # time in the episode, 0 on padding
    assert w["timestep"].tolist() == [[0] * 5, [0, 0, 1, 2, 3], [0, 0, 0, 1, 2]]


def test_timesteps_follow_the_source_episode_in_augmented_segments():
    ds = toy_reach_dataset(2)  # two episodes of 20 steps
    np.testing.assert_array_equal(ds.timesteps(), np.tile(np.arange(20), 2))
    # a 5-step segment continuing episode 1 at its steps 12..16; real steps keep their index
    part = ds.select_episodes([1])
    rows = np.arange(12, 17)
    arrays = {k: getattr(part, k)[rows] for k in ("observations", "actions", "rewards")}
    arrays |= {k: getattr(part, k)[rows] for k in ("next_observations", "terminations")}
    arrays["truncations"] = np.r_[np.zeros(4, bool), True]
    segment = TrajectoryDataset.from_arrays(
        arrays, np.array([5]), extras={"timestep": np.arange(12, 17)}
    )
    both = TrajectoryDataset.concatenate([ds, segment])
    np.testing.assert_array_equal(both.timesteps(), np.r_[np.tile(np.arange(20), 2), 12:17])
    sampler = SequenceSampler(both, np.zeros(both.n_steps, np.float32), context=3)
    assert sampler.window(torch.tensor([both.n_steps - 1]))["timestep"].tolist() == [[14, 15, 16]]


# -- eq. 26 --------------------------------------------------------------------------------------
def test_ipd_loss_matches_independent_computation_and_gradient():
    pred = torch.tensor([[0.5, -0.2], [0.1, 0.4], [-0.3, 0.9]], requires_grad=True)
    target = torch.tensor([[0.4, 0.0], [0.3, 0.1], [-0.5, 1.0]])
    q = -(pred**2).sum(-1) + 2.0  # Q(s, pi): a function of the policy's action
    alpha = 0.7
    loss, info = ipd_loss(pred, target, q, alpha)
    p, t = pred.detach().numpy(), target.numpy()
    qn = -(p**2).sum(-1) + 2.0
    mse = ((p - t) ** 2).mean()
    lam = alpha / np.abs(qn).mean()
    assert loss.item() == pytest.approx(mse - lam * qn.mean(), rel=1e-5)
    assert float(info["mse"]) == pytest.approx(mse, rel=1e-5)
    (grad,) = torch.autograd.grad(loss, pred)
    # lambda is a constant (detached): d/dp [mse - lam * mean(q)] = 2(p-t)/(nA) + lam * 2p / n
    expected = 2 * (p - t) / p.size + lam * 2 * p / p.shape[0]
    np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-5)
    loss0, _ = ipd_loss(pred, target, None, 0.0)
    assert loss0.item() == pytest.approx(mse, rel=1e-5)


def test_weighted_ipd_loss_is_a_weighted_mean_with_weights_held_constant():
    pred = torch.tensor([[0.5, -0.2], [0.1, 0.4], [-0.3, 0.9]], requires_grad=True)
    target = torch.tensor([[0.4, 0.0], [0.3, 0.1], [-0.5, 1.0]])
    w = torch.tensor([0.5, 2.0, 0.5], requires_grad=True)
    loss, info = ipd_loss(pred, target, None, 0.0, w)
    p, t, wn = pred.detach().numpy(), target.numpy(), w.detach().numpy()
    err = ((p - t) ** 2).mean(-1)
    assert loss.item() == pytest.approx((wn * err).sum() / wn.sum(), rel=1e-6)
    grad_p, grad_w = torch.autograd.grad(loss, [pred, w], allow_unused=True)
    np.testing.assert_allclose(
        grad_p.numpy(), wn[:, None] * 2 * (p - t) / p.shape[1] / wn.sum(), rtol=1e-5
    )
    assert grad_w is None  # the weights are not trained through
    same, _ = ipd_loss(pred, target, None, 0.0, torch.ones(3))
    assert same.item() == pytest.approx(((p - t) ** 2).mean(), rel=1e-6)


def test_advantage_weights_are_clipped_awr_weights_over_their_mean():
    value = ToyReachValue(record=True)
    obs = torch.tensor([[1.0], [0.2], [-0.5], [3.0]])
    act = torch.tensor([[-1.0], [0.3], [1.0], [1.0]])
    w = advantage_weights(value, obs, act, beta=2.0, factor=0.5, max_weight=3.0)
    o, a = obs[:, 0].numpy(), act[:, 0].numpy()
    adv = -np.abs(o + 0.3 * a) + 2.0 * np.abs(o)  # ToyReachValue's Q - V
    raw = np.minimum(np.exp(2.0 * 0.5 * adv), 3.0)
    np.testing.assert_allclose(w.numpy(), raw / raw.mean(), rtol=1e-5)
    assert w.mean().item() == pytest.approx(1.0)
    assert raw.max() == 3.0  # the clip was exercised


def test_ipd_dt_awr_variant_weights_the_mse_by_the_logged_actions_advantage():
    ds, value = toy_reach_dataset(4), ToyReachValue(record=True)
    policy = make("ipd-dt", dropout=0.0, alpha=0.0, awr_beta=0.02)
    state = policy.start_training(ds, value)
    returns = ds.episode_returns()
    assert policy.reward_factor == pytest.approx(1000.0 / (returns.max() - returns.min()))
    batch = state.sampler.sample(8)
    pred = policy.net(batch["obs"], batch["act"], batch["cond"], batch["mask"], batch["timestep"])
    loss, _ = policy.loss(pred, batch, value)
    m = batch["mask"].numpy()
    p, a, o = pred.detach().numpy()[m], batch["act"].numpy()[m], batch["obs"].numpy()[m]
    adv = -np.abs(o[:, 0] + 0.3 * a[:, 0]) + 2.0 * np.abs(o[:, 0])
    w = np.minimum(np.exp(0.02 * policy.reward_factor * adv), 100.0)
    expected = (w * ((p - a) ** 2).mean(-1)).sum() / w.sum()
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    assert abs(expected - ((p - a) ** 2).mean()) > 1e-4  # the weighting changed the loss
    with pytest.raises(ValueError, match="awr_beta must be >= 0"):
        make("ipd-dt", awr_beta=-1.0)
    with pytest.raises(ValueError, match="awr_max_weight must be > 0"):
        make("ipd-dt", awr_max_weight=0.0)


def test_ipd_dt_training_loss_is_eq26_on_the_valid_steps():
    ds, value = toy_reach_dataset(4), ToyReachValue(record=True)
    policy = make("ipd-dt", dropout=0.0, alpha=1.3)
    state = policy.start_training(ds, value)
    batch = state.sampler.sample(8)
    pred = policy.net(batch["obs"], batch["act"], batch["cond"], batch["mask"], batch["timestep"])
    loss, _ = policy.loss(pred, batch, value)
    m = batch["mask"].numpy()
    p, a, o = pred.detach().numpy()[m], batch["act"].numpy()[m], batch["obs"].numpy()[m]
    q = -np.abs(o[:, 0] + 0.3 * p[:, 0])
    expected = ((p - a) ** 2).mean() - 1.3 / np.abs(q).mean() * q.mean()
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert m.sum() < m.size  # the batch had padding, which was left out


# -- acting --------------------------------------------------------------------------------------
def test_ipd_dt_acts_with_v_of_the_current_observation():
    ds, value = toy_reach_dataset(6), ToyReachValue(record=True)
    policy = make("ipd-dt")
    assert isinstance(policy, SequencePolicy)
    policy.fit(ds, value)
    shift, scale = float(policy.net.cond_shift), float(policy.net.cond_scale)
    v_data = -2.0 * np.abs(ds.observations[:, 0])
    assert shift == pytest.approx(v_data.mean(), rel=1e-5)
    assert scale == pytest.approx(v_data.std(), rel=1e-4)

    fed: list[torch.Tensor] = []
    policy.net.model.embed_cond.register_forward_hook(lambda m, inp, out: fed.append(inp[0]))
    actor = policy.actor(value)
    assert isinstance(actor, Actor)
    value.v_calls.clear()
    obs0 = torch.tensor([[0.5], [-1.0], [0.2]])
    actor.reset(obs0)
    seen = []
    for step in range(7):
        obs = torch.tensor([[0.5], [-1.0], [0.2]]) * (1 - 0.1 * step)
        seen.append(obs)
        action = actor.act(obs)
        assert action.shape == (3, 1)
        # v was called on exactly the current observations ...
        torch.testing.assert_close(value.v_calls[-1], obs)
        # ... and the conditioning token fed to the network at the current step equals it
        token = fed[-1][:, -1, 0]  # (B,): last step of the window
        torch.testing.assert_close(token, (-2.0 * obs[:, 0].abs() - shift) / scale)
        actor.observe(torch.ones(3))
    # the whole window holds V of the last K observations, oldest first
    window = torch.stack(seen[-5:], 1)[..., 0]  # (B, K)
    torch.testing.assert_close(fed[-1][..., 0], (-2.0 * window.abs() - shift) / scale)
    assert not policy.net.training
    policy.net.train()  # acting in the middle of training leaves the training mode alone
    actor.act(obs)
    assert policy.net.training
    with pytest.raises(ValueError, match="needs the value learner"):
        policy.actor(None)
    with pytest.raises(ValueError, match="needs a value learner"):
        make("ipd-dt").fit(ds, None)


def test_dt_return_to_go_bookkeeping():
    ds = toy_reach_dataset(6)
    policy = make("dt", target_return=10.0, rtg_scale=4.0)
    policy.fit(ds, None)
    actor = policy.actor(None)
    obs = torch.zeros(2, 1)
    actor.reset(obs)
    actor.act(obs)
    torch.testing.assert_close(actor.cond[:, -1], torch.full((2,), 10.0 / 4.0))
    actor.observe(torch.tensor([1.0, -2.0]))
    actor.act(obs)
    actor.observe(torch.tensor([3.0, 0.5]))
    actor.act(obs)
    expected = torch.tensor([[10.0, 9.0, 6.0], [10.0, 12.0, 11.5]]) / 4.0
    torch.testing.assert_close(actor.cond[:, -3:], expected)
    assert actor.mask[:, -3:].all() and not actor.mask[:, :-3].any()
    assert actor.time[:, -3:].tolist() == [[0, 1, 2]] * 2  # time in the episode
    actor.reset(obs)  # a new episode asks for the target again and starts at time 0
    actor.act(obs)
    torch.testing.assert_close(actor.cond[:, -1], torch.full((2,), 2.5))
    assert actor.time[:, -1].tolist() == [0, 0]
    # training tokens: the data's return-to-go / rtg_scale
    state = policy.start_training(ds, None)
    np.testing.assert_allclose(
        state.sampler.cond.numpy(), returns_to_go(ds.rewards, ds.episode_lengths) / 4.0, rtol=1e-6
    )


@pytest.mark.parametrize("name", ["ipd-dt", "dt"])
def test_policy_beats_random_on_toy_task(name):
    torch.manual_seed(0)
    ds, value = toy_reach_dataset(80), ToyReachValue(record=True)
    extra = {"target_return": -1.0, "rtg_scale": 5.0} if name == "dt" else {"alpha": 1.0}
    policy = make(name, n_steps=300, batch_size=32, warmup_steps=50, learning_rate=1e-3, **extra)
    policy.fit(ds, value)
    result = evaluate(policy.actor(value), TOY_ID, n_episodes=8, seed=100)
    gen = torch.Generator().manual_seed(0)
    rand = CallableActor(lambda o: torch.rand(o.shape[0], 1, generator=gen) * 2 - 1)
    baseline = evaluate(rand, TOY_ID, n_episodes=8, seed=100)
    data_mean = float(ds.episode_returns().mean())
    assert result.mean_return > baseline.mean_return + 3.0, (result, baseline)
    assert result.mean_return > data_mean, (result.mean_return, data_mean)


# -- persistence ----------------------------------------------------------------------------------
def test_save_load_round_trip(tmp_path):
    ds, value = toy_reach_dataset(6), ToyReachValue(record=True)
    policy = make("ipd-dt", token_layout="sa")
    policy.fit(ds, value)
    policy.save(tmp_path / "policy.pt")
    fresh = make("ipd-dt", token_layout="sa")
    fresh.load(tmp_path / "policy.pt")
    assert float(fresh.net.cond_scale) == float(policy.net.cond_scale)
    obs = torch.tensor([[0.3], [-0.7]])
    a1, a2 = policy.actor(value), fresh.actor(value)
    a1.reset(obs)
    a2.reset(obs)
    for _ in range(3):
        torch.testing.assert_close(a1.act(obs), a2.act(obs))
    with pytest.raises(ValueError, match="does not fit"):
        make("ipd-dt", token_layout="sa", n_embd=16).load(tmp_path / "policy.pt")


def test_fit_resumes_from_checkpoint(tmp_path):
    ds, value = toy_reach_dataset(6), ToyReachValue(record=True)
    straight = make("ipd-dt", n_steps=20)
    straight.fit(ds, value)
    first = make("ipd-dt", n_steps=10, checkpoint_every=5)
    first.fit(ds, value, work_dir=tmp_path)
    assert (tmp_path / "policy_train_state.pt").exists()
    torch.manual_seed(123)  # whatever happened in between must not matter
    resumed = make("ipd-dt", n_steps=20, checkpoint_every=5)
    logged = []
    metrics = resumed.fit(ds, value, work_dir=tmp_path, log=lambda s, d: logged.append(s))
    assert metrics["resumed_at"] == 10
    assert min(logged) > 10
    pairs = zip(straight.net.state_dict().values(), resumed.net.state_dict().values(), strict=True)
    for p, q in pairs:
        torch.testing.assert_close(p, q)


@pytest.mark.parametrize("how", ["option", "run precision"])
def test_bf16_autocast_trains_and_acts(how):
    ds, value = toy_reach_dataset(4), ToyReachValue(record=True)
    if how == "option":
        policy = make("ipd-dt", autocast_bf16=True, n_steps=5)
    else:
        ctx = dataclasses.replace(CTX, precision="bf16")
        policy = manager.create("policy", "ipd-dt", {**TINY, "n_steps": 5}, ctx)
    assert policy.bf16 and policy.autocast().fast_dtype == torch.bfloat16
    assert policy.autocast()._enabled
    metrics = policy.fit(ds, value)
    assert np.isfinite(metrics["train/loss"])
    actor = policy.actor(value)
    assert actor.autocast_bf16 is (how == "option")  # run.precision trains in bf16, acts in fp32
    actor.reset(torch.zeros(2, 1))
    assert actor.act(torch.zeros(2, 1)).dtype == torch.float32


def test_fp32_precision_leaves_autocast_off():
    policy = make("ipd-dt", n_steps=5)
    assert not policy.bf16 and not policy.autocast()._enabled


def test_registry_knows_both_policies_with_paper_defaults():
    assert {"ipd-dt", "dt"} <= set(manager.names("policy"))
    cfg = manager.config_class("policy", "ipd-dt")()
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.context, cfg.dropout) == (4, 256, 4, 20, 0.01)
    assert cfg.learning_rate == 3e-4


def test_train_step_reports_the_gradient_norm_before_clipping():
    ds, value = toy_reach_dataset(4), ToyReachValue(record=True)

    def grad_norm_after_one_step(clip: float) -> tuple[float, float]:
        policy = make("ipd-dt", n_steps=1, grad_clip=clip)
        state = policy.start_training(ds, value)
        info = policy.train_step(state, value)
        stored = torch.sqrt(sum((p.grad**2).sum() for p in state.params))
        return float(info["grad_norm"]), float(stored)

    reported, stored = grad_norm_after_one_step(1e9)  # never clipped: the gradient as it was
    assert reported == pytest.approx(stored, rel=1e-5)
    reported_clipped, stored_clipped = grad_norm_after_one_step(1e-3)
    assert reported_clipped == pytest.approx(reported, rel=1e-5)  # same seed, same batch
    assert stored_clipped == pytest.approx(1e-3, rel=1e-4)


def test_past_actions_off_makes_the_model_blind_to_the_actions_taken():
    torch.manual_seed(0)
    kw = dict(context=4, n_layer=1, n_embd=16, n_head=2, dropout=0.0, position="window")
    blind = DecisionModel(2, 1, torch.tensor([-1.0]), torch.tensor([1.0]), past_actions=False, **kw)
    obs, cond, mask = torch.randn(3, 4, 2), torch.randn(3, 4), torch.ones(3, 4, dtype=torch.bool)
    a1, a2 = torch.rand(3, 4, 1) * 2 - 1, torch.rand(3, 4, 1) * 2 - 1
    torch.testing.assert_close(blind(obs, a1, cond, mask), blind(obs, a2, cond, mask))
    torch.manual_seed(0)
    seeing = DecisionModel(2, 1, torch.tensor([-1.0]), torch.tensor([1.0]), **kw)
    assert not torch.allclose(seeing(obs, a1, cond, mask), seeing(obs, a2, cond, mask))


# -- few episodes (issue 27) ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "episodes, few_episodes, few",
    [(3, 50, True), (49, 50, True), (50, 50, False), (500, 50, False), (3, 0, False)],
)
def test_few_episodes_switch_to_window_positions_and_drop_the_q_term(episodes, few_episodes, few):
    ctx = dataclasses.replace(CTX, dataset_episodes=episodes)
    policy = manager.create("policy", "ipd-dt", {**TINY, "few_episodes": few_episodes}, ctx)
    assert policy.few is few
    assert policy.net.model.position == ("window" if few else "timestep")
    assert policy.alpha == (0.0 if few else 1.0)
    ds, value = toy_reach_dataset(4), ToyReachValue(record=True)
    metrics = policy.fit(ds, value)
    assert metrics["few_episodes_mode"] == float(few)
    assert ("train/q" in metrics) is not few  # eq. 26's Q term only with enough episodes
    dt = manager.create("policy", "dt", {**TINY, "few_episodes": few_episodes}, ctx)
    assert dt.net.model.position == ("window" if few else "timestep")


def test_a_few_episode_policy_reloads_into_the_same_build(tmp_path):
    ctx = dataclasses.replace(CTX, dataset_episodes=4)
    policy = manager.create("policy", "ipd-dt", {**TINY, "few_episodes": 50}, ctx)
    ds, value = toy_reach_dataset(4), ToyReachValue(record=True)
    policy.fit(ds, value)
    policy.save(tmp_path / "w.pt")
    again = manager.create("policy", "ipd-dt", {**TINY, "few_episodes": 50}, ctx)
    again.load(tmp_path / "w.pt")
    obs = torch.zeros(2, 1)
    a, b = policy.actor(value), again.actor(value)
    a.reset(obs)
    b.reset(obs)
    torch.testing.assert_close(a.act(obs), b.act(obs))
    with pytest.raises(ValueError, match="few_episodes must be >= 0"):
        manager.create("policy", "ipd-dt", {**TINY, "few_episodes": -1}, ctx)


def test_compiled_training_takes_the_same_steps_as_eager():
    """policy.compile: the same seed gives the same weights (to float tolerance) compiled."""
    ds, value = toy_reach_dataset(4), ToyReachValue(record=True)
    eager = make("ipd-dt", n_steps=3, dropout=0.0)
    compiled = make("ipd-dt", n_steps=3, dropout=0.0, compile=True)
    eager.fit(ds, value)
    compiled.fit(ds, value)
    assert compiled.train_forward is not compiled.net  # the compiled module was used
    pairs = zip(eager.net.state_dict().values(), compiled.net.state_dict().values(), strict=True)
    for a, b in pairs:
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
