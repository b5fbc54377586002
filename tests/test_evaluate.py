"""The evaluator: lockstep batched rollouts, determinism per seed, D4RL normalisation."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from ipd_plugins.evaluate import CallableActor, EvalResult, evaluate, normalized_scores


class ToyStop(gym.Env):
    """x moves by 0.3 a; reward -|x'|; the episode terminates once |x'| < 0.1 (varying lengths)."""

    observation_space = gym.spaces.Box(-5.0, 5.0, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.x = float(self.np_random.uniform(-2.0, 2.0))
        return np.array([self.x], np.float32), {}

    def step(self, action):
        self.x = float(np.clip(self.x + 0.3 * float(action[0]), -5, 5))
        return np.array([self.x], np.float32), -abs(self.x), abs(self.x) < 0.1, False, {}


TOY_ID = "IpdTestToyStop-v0"
if TOY_ID not in gym.registry:
    gym.register(id=TOY_ID, entry_point=ToyStop, max_episode_steps=30)


class RecordingActor:
    """A proportional controller that records what the evaluator passes it."""

    def __init__(self, gain: float = 1.0):
        self.gain, self.resets, self.batch_sizes, self.rewards = gain, [], [], []

    def reset(self, obs):
        self.resets.append(obs.clone())

    def act(self, obs):
        self.batch_sizes.append(obs.shape[0])
        return (-self.gain * obs).clamp(-1, 1)

    def observe(self, reward):
        self.rewards.append(reward.clone())


def single_episode_return(seed: int, gain: float = 1.0) -> tuple[float, int]:
    env = gym.make(TOY_ID)
    obs, _ = env.reset(seed=seed)
    total, n, done = 0.0, 0, False
    while not done:
        obs, r, term, trunc, _ = env.step(np.clip(-gain * obs, -1, 1))
        total, n, done = total + r, n + 1, term or trunc
    return total, n


def test_batched_rollout_equals_one_episode_at_a_time():
    actor = RecordingActor()
    result = evaluate(actor, TOY_ID, n_episodes=5, seed=7)
    expected = [single_episode_return(7 + i) for i in range(5)]
    np.testing.assert_allclose(result.returns, [r for r, _ in expected], rtol=1e-5)
    assert list(result.lengths) == [n for _, n in expected]
    assert len(set(result.lengths)) > 1  # episodes really ended at different times
    assert set(actor.batch_sizes) == {5}  # one batched call per step for all envs
    assert len(actor.batch_sizes) == max(result.lengths)
    # finished envs are masked: their reward rows are zero after their last step
    rewards = torch.stack(actor.rewards)  # (steps, B)
    for j, n in enumerate(result.lengths):
        assert (rewards[n:, j] == 0).all()
    assert result.mean_return == pytest.approx(np.mean(result.returns))
    assert result.std_return == pytest.approx(np.std(result.returns))


class HistoryActor(RecordingActor):
    """Keeps the observation tensors it is handed without copying, as d3rlpy's DT wrapper does."""

    def __init__(self):
        super().__init__()
        self.kept = []

    def act(self, obs):
        self.kept.append(obs)
        return super().act(obs)


def test_observations_kept_by_an_actor_are_not_overwritten_later():
    # regression: the evaluator handed out views of the buffer it then overwrote in place, so a
    # history-keeping actor (d3rlpy's DT wrapper) saw every past observation as the newest one
    actor = HistoryActor()
    evaluate(actor, TOY_ID, n_episodes=1, seed=7)
    env = gym.make(TOY_ID)
    obs, _ = env.reset(seed=7)
    for kept in actor.kept:
        np.testing.assert_allclose(kept.numpy()[0], obs)
        obs, *_ = env.step(np.clip(-obs, -1, 1))
    assert len(actor.kept) > 2 and len({float(k[0, 0]) for k in actor.kept}) == len(actor.kept)


def test_same_seed_same_result_and_waves_do_not_change_it():
    a = evaluate(RecordingActor(), TOY_ID, n_episodes=6, seed=3)
    b = evaluate(RecordingActor(), TOY_ID, n_episodes=6, seed=3)
    waves = evaluate(RecordingActor(), TOY_ID, n_episodes=6, seed=3, n_envs=4)
    other = evaluate(RecordingActor(), TOY_ID, n_episodes=6, seed=4)
    assert a.returns == b.returns and a.lengths == b.lengths
    np.testing.assert_allclose(waves.returns, a.returns, rtol=1e-6)
    assert other.returns != a.returns
    # episode i starts from reset(seed=seed+i): seed 4's episodes are seed 3's shifted by one
    np.testing.assert_allclose(other.returns[:5], a.returns[1:], rtol=1e-6)


def test_normalisation_is_the_d4rl_formula():
    ref = (-30.0, -2.0)
    result = evaluate(RecordingActor(), TOY_ID, n_episodes=4, seed=0, ref_scores=ref)
    norm = [100 * (r - ref[0]) / (ref[1] - ref[0]) for r in result.returns]
    assert result.normalized_mean == pytest.approx(np.mean(norm))
    assert result.normalized_std == pytest.approx(np.std(norm))
    np.testing.assert_allclose(
        normalized_scores(np.array([-30.0, -2.0, -16.0]), *ref), [0, 100, 50]
    )
    plain = evaluate(RecordingActor(), TOY_ID, n_episodes=2, seed=0)
    assert plain.normalized_mean is None and plain.normalized_std is None
    with pytest.raises(ValueError, match="must differ"):
        normalized_scores(np.zeros(2), 1.0, 1.0)


def test_max_steps_caps_episodes_and_result_serialises():
    result = evaluate(RecordingActor(gain=0.0), TOY_ID, n_episodes=3, seed=0, max_steps=4)
    uncapped = evaluate(RecordingActor(gain=0.0), TOY_ID, n_episodes=3, seed=0)
    assert result.lengths == tuple(min(n, 4) for n in uncapped.lengths)
    assert max(uncapped.lengths) == 30  # the env's own time limit
    d = result.to_dict()
    assert d["returns"] == list(result.returns) and d["n_episodes"] == 3
    assert isinstance(result, EvalResult)
    with pytest.raises(AttributeError):
        result.mean_return = 0.0  # frozen


def test_callable_actor_wraps_numpy_and_torch_functions_on_pendulum():
    calls = []

    def numpy_policy(obs):
        calls.append(type(obs))
        return np.zeros((obs.shape[0], 1), np.float32)

    r1 = evaluate(
        CallableActor(numpy_policy, as_numpy=True), "Pendulum-v1", 2, seed=1, max_steps=20
    )
    assert calls and all(c is np.ndarray for c in calls)
    r2 = evaluate(
        CallableActor(lambda o: torch.zeros(o.shape[0], 1)), "Pendulum-v1", 2, seed=1, max_steps=20
    )
    assert r1.returns == r2.returns
    with pytest.raises(AssertionError, match="must return"):
        CallableActor(lambda o: torch.zeros(3)).act(torch.zeros(2, 3))


def test_bad_arguments_fail_with_sentences():
    with pytest.raises(ValueError, match="n_episodes"):
        evaluate(RecordingActor(), TOY_ID, n_episodes=0)
    with pytest.raises(ValueError, match="cannot make"):
        evaluate(RecordingActor(), "NoSuchEnv-v9", n_episodes=1)


@pytest.mark.parametrize("env_id", ["Hopper-v5", "Walker2d-v5", "HalfCheetah-v5"])
def test_state_restored_from_an_observation_replays_the_same_step(env_id):
    from ipd_plugins.data.envs import set_state_from_observation

    env = gym.make(env_id)
    obs, _ = env.reset(seed=3)
    rng = np.random.default_rng(0)
    logged = []
    for _ in range(30):  # a short gentle random walk, logged as (s, a, r, s')
        a = rng.uniform(-0.3, 0.3, env.action_space.shape).astype(np.float32)
        nxt, r, terminated, _, _ = env.step(a)
        logged.append((obs, a, r, nxt))
        obs = nxt
        if terminated:
            break
    replay = gym.make(env_id)
    replay.reset(seed=99)  # a different start: the state comes only from the observation
    nq = replay.unwrapped.model.nq
    # Walker2d clips observed velocities to +-10: such observations cannot be restored exactly
    exact = [step for step in logged if np.abs(step[0][nq - 1 :]).max() < 10]
    assert len(exact) >= 10
    for s, a, r, s_next in exact[::-1]:  # any order: each step from its own observation
        set_state_from_observation(replay, s)
        got, r2, _, _, _ = replay.step(a)
        np.testing.assert_allclose(got, s_next, rtol=1e-6, atol=1e-8)
        assert r2 == pytest.approx(r, rel=1e-6, abs=1e-9)
    with pytest.raises(ValueError, match="not qpos"):
        set_state_from_observation(replay, np.zeros(3))
    with pytest.raises(ValueError, match="not a MuJoCo environment"):
        set_state_from_observation(gym.make("Pendulum-v1"), np.zeros(3))


def test_make_env_routes_mujoco_warnings(tmp_path, monkeypatch, capfd):
    """MuJoCo 4's notice on gymnasium's half_cheetah.xml (``settotalmass``) is neither printed
    nor appended to ``MUJOCO_LOG.TXT`` in the working directory; other MuJoCo warnings still
    reach Python's ``warnings``."""
    mujoco = pytest.importorskip("mujoco")
    from ipd_plugins.data.envs import make_env

    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        make_env("HalfCheetah-v5").close()
    out, err = capfd.readouterr()
    assert "settotalmass" not in out + err
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()
    with pytest.warns(RuntimeWarning, match="MuJoCo: some other warning"):
        mujoco.get_mju_user_warning()("some other warning")
