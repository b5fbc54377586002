"""Dataset making: the pendulum family, MuJoCo datasets from snapshots, SAC maths and runs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ipd_plugins.data.behavior import (
    BehaviorActor,
    load_snapshot,
    save_snapshot,
    snapshot_metadata,
    tanh_gaussian_sample,
)
from ipd_plugins.data.make import (
    PENDULUM_REF_MAX,
    PENDULUM_REF_MIN,
    BehaviorMissingError,
    dataset_id,
    generate,
    make_dataset,
)
from ipd_plugins.data.sac import (
    SAC,
    SACConfig,
    actor_loss,
    critic_loss,
    read_snapshot_log,
    td_target,
    temperature_loss,
    train_sac,
)


@pytest.fixture
def store(tmp_path, monkeypatch):
    path = tmp_path / "minari"
    path.mkdir()
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(path))
    return path


# -- the pendulum family -------------------------------------------------------------------
def test_pendulum_same_seed_same_data_other_seed_other_data():
    a = generate("pendulum-medium-replay", n_steps=1000, seed=0)
    b = generate("pendulum-medium-replay", n_steps=1000, seed=0)
    c = generate("pendulum-medium-replay", n_steps=1000, seed=1)
    assert a.content_hash() == b.content_hash()
    assert a.content_hash() != c.content_hash()


def test_pendulum_family_quality_and_episode_structure():
    medium = generate("pendulum-medium", n_steps=3000, seed=0)
    replay = generate("pendulum-medium-replay", n_steps=3000, seed=0)
    expert = generate("pendulum-medium", n_steps=2000, seed=0, epsilon=0.0)
    random = generate("pendulum-medium", n_steps=2000, seed=0, epsilon=1.0)
    for ds in (medium, replay):
        assert ds.n_steps == 3000
        assert ds.env_id == "Pendulum-v1"
        assert (ds.ref_min_score, ds.ref_max_score) == (PENDULUM_REF_MIN, PENDULUM_REF_MAX)
        # Pendulum never terminates; every episode ends truncated (200 steps, or the final cut)
        assert not ds.terminations.any()
        assert ds.truncations.sum() == ds.n_episodes
        ends = np.cumsum(ds.episode_lengths) - 1
        assert ds.truncations[ends].all()
        assert (ds.episode_lengths == 200).sum() >= ds.n_episodes - 1
        # chained within episodes
        for ep in ds.episodes():
            np.testing.assert_array_equal(ep.next_observations[:-1], ep.observations[1:])
        assert np.abs(ds.actions).max() <= 2.0
    norm = {
        k: float(d.normalized_score(d.episode_returns().mean()))
        for k, d in dict(medium=medium, replay=replay, expert=expert, random=random).items()
    }
    assert 35 < norm["medium"] < 70, norm
    assert norm["random"] < norm["replay"] < norm["medium"] < norm["expert"], norm
    assert norm["expert"] > 85 and abs(norm["random"]) < 20, norm
    # the medium data is mixed quality: a spread of episode scores
    scores = medium.normalized_score(medium.episode_returns()[:-1])
    assert scores.max() - scores.min() > 20


def test_make_dataset_writes_a_minari_dataset(store):
    import minari

    from ipd_plugins.data.minari_io import from_minari

    mid = make_dataset("pendulum-medium", steps=1000, seed=3)
    assert mid == dataset_id("pendulum-medium") == "ipd/pendulum/medium-v0"
    mds = minari.load_dataset(mid)
    assert mds.total_steps == 1000
    ds = from_minari(mid)
    assert ds.content_hash() == generate("pendulum-medium", n_steps=1000, seed=3).content_hash()
    returns = ds.episode_returns()
    got = minari.get_normalized_score(mds, returns)
    np.testing.assert_allclose(100 * got, ds.normalized_score(returns), rtol=1e-6)
    # present: kept unless overwrite
    assert make_dataset("pendulum-medium", steps=500, seed=3) == mid
    assert minari.load_dataset(mid).total_steps == 1000
    make_dataset("pendulum-medium", steps=500, seed=3, overwrite=True)
    assert minari.load_dataset(mid).total_steps == 500


def test_cli_make_and_list(store):
    from ipd_plugins.commands import main

    runner = CliRunner()
    out = runner.invoke(main, ["data", "make", "pendulum-medium-replay", "--steps", "600"])
    assert out.exit_code == 0, out.output
    assert "ipd/pendulum/medium-replay-v0: 600 steps" in out.output
    again = runner.invoke(main, ["data", "make", "pendulum-medium-replay", "--steps", "600"])
    assert again.exit_code != 0 and "--overwrite" in again.output
    listing = runner.invoke(main, ["data", "list"])
    assert listing.exit_code == 0, listing.output
    rows = {line.split()[0]: line.split() for line in listing.output.splitlines()[1:]}
    assert set(rows) >= {"hopper-medium", "walker2d-medium-replay", "pendulum-medium"}
    assert rows["pendulum-medium-replay"][3] == "yes"
    assert rows["pendulum-medium"][3] == "no"


def test_cli_make_says_whether_it_made_the_reference_realisation(store, monkeypatch):
    from ipd_plugins.commands import main
    from ipd_plugins.data import make as make_module
    from ipd_plugins.data.minari_io import from_minari

    monkeypatch.setattr(make_module, "REFERENCE_HASHES", {"pendulum-medium": "0123456789abcdef"})
    runner = CliRunner()
    out = runner.invoke(main, ["data", "make", "pendulum-medium"])
    assert out.exit_code == 0, out.output
    made = from_minari("ipd/pendulum/medium-v0").content_hash()
    assert f"content hash {made}: another realisation than the reference 0123456789abcdef" in (
        out.output
    )
    monkeypatch.setattr(make_module, "REFERENCE_HASHES", {"pendulum-medium": made})
    again = runner.invoke(main, ["data", "make", "pendulum-medium", "--overwrite"])
    assert f"content hash {made}: the reference realisation" in again.output
    other_seed = runner.invoke(
        main, ["data", "make", "pendulum-medium", "--overwrite", "--seed", "1"]
    )
    assert other_seed.exit_code == 0 and "content hash" not in other_seed.output


# -- MuJoCo datasets from snapshots --------------------------------------------------------
def _fake_behavior(root, task="hopper", obs_dim=11, act_dim=3):
    folder = root / task
    for i, step in enumerate((10, 20)):
        torch.manual_seed(i)
        save_snapshot(
            folder / f"step_{step:07d}.safetensors",
            BehaviorActor(obs_dim, act_dim, 16),
            {"step": step},
            dtype=torch.float16,
        )
    index = {
        "env_id": "Hopper-v5",
        "medium": "step_0000020.safetensors",
        "replay": [
            {"file": "uniform", "steps": 100},
            {"file": "step_0000010.safetensors", "steps": 150},
            {"file": "step_0000020.safetensors", "steps": 250},
        ],
    }
    (folder / "index.json").write_text(json.dumps(index))


def test_mujoco_datasets_from_a_snapshot_folder(store, tmp_path, monkeypatch):
    import minari

    _fake_behavior(tmp_path / "behavior")
    monkeypatch.setenv("IPD_BEHAVIOR_DIR", str(tmp_path / "behavior"))
    mid = make_dataset("hopper-medium", steps=400, seed=0)
    assert mid == "ipd/hopper/medium-v0"
    mds = minari.load_dataset(mid)
    assert mds.total_steps == 400
    from ipd_plugins.data.minari_io import from_minari

    ds = from_minari(mid)
    assert ds.env_id == "Hopper-v5"
    assert (ds.ref_min_score, ds.ref_max_score) == pytest.approx((-20.272305, 3234.3))
    assert ds.content_hash() == generate("hopper-medium", n_steps=400, seed=0).content_hash()
    assert ds.content_hash() != generate("hopper-medium", n_steps=400, seed=1).content_hash()
    # an untrained hopper falls: episodes end terminated
    assert ds.terminations.any()

    # medium-replay: by default the training's length (100 + 150 + 250 steps), in order
    replay = generate("hopper-medium-replay", seed=0)
    assert replay.n_steps == 500
    first = replay.select_episodes(np.arange(3))  # the uniform warm-up comes first
    assert np.abs(first.actions).max() <= 1.0
    scaled = generate("hopper-medium-replay", n_steps=1000, seed=0)
    assert scaled.n_steps == 1000


def test_missing_behaviour_says_how_to_train(tmp_path, monkeypatch, store):
    from ipd_plugins.commands import main

    monkeypatch.setenv("IPD_BEHAVIOR_DIR", str(tmp_path / "nothing"))
    with pytest.raises(BehaviorMissingError, match="train_behavior.py"):
        generate("walker2d-medium", n_steps=10)
    out = CliRunner().invoke(main, ["data", "make", "walker2d-medium"])
    assert out.exit_code != 0
    assert "benchmarks/tools/train_behavior.py" in out.output and "walker2d" in out.output


def test_unknown_name_lists_the_catalogue():
    with pytest.raises(KeyError, match="hopper-medium"):
        dataset_id("hopper-expert")


# -- snapshots -----------------------------------------------------------------------------
def test_snapshot_round_trip(tmp_path):
    torch.manual_seed(0)
    actor = BehaviorActor(
        5, 2, hidden=32, action_low=np.array([-2.0, 0.0]), action_high=np.array([2.0, 1.0])
    )
    obs = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32)
    save_snapshot(tmp_path / "a.safetensors", actor, {"step": 42, "eval_return_stoch": 1.5})
    back, meta = load_snapshot(tmp_path / "a.safetensors")
    assert meta["step"] == 42 and meta["hidden"] == 32
    assert snapshot_metadata(tmp_path / "a.safetensors")["eval_return_stoch"] == 1.5
    np.testing.assert_array_equal(back.act(obs, deterministic=True), actor.act(obs, True))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    np.testing.assert_array_equal(back.act(obs, generator=g1), actor.act(obs, generator=g2))
    a = back.act(obs, generator=g1)
    assert (a[:, 0] >= -2).all() and (a[:, 0] <= 2).all() and (a[:, 1] >= 0).all()
    save_snapshot(tmp_path / "h.safetensors", actor, dtype=torch.float16)
    half, _ = load_snapshot(tmp_path / "h.safetensors")
    np.testing.assert_allclose(half.act(obs, True), actor.act(obs, True), atol=5e-3)
    assert (tmp_path / "h.safetensors").stat().st_size < (tmp_path / "a.safetensors").stat().st_size

    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not an ipd behaviour snapshot"):
        load_snapshot(tmp_path / "other.safetensors")


# -- SAC -----------------------------------------------------------------------------------
def test_tanh_gaussian_log_prob_matches_torch_distributions():
    from torch.distributions import Independent, Normal, TransformedDistribution
    from torch.distributions.transforms import TanhTransform

    torch.manual_seed(0)
    mean, log_std = torch.randn(6, 3), torch.randn(6, 3).clamp(-2, 1)
    noise = torch.randn(6, 3)
    a, logp = tanh_gaussian_sample(mean, log_std, noise)
    dist = TransformedDistribution(Independent(Normal(mean, log_std.exp()), 1), TanhTransform())
    u = mean + log_std.exp() * noise
    torch.testing.assert_close(a, torch.tanh(u))
    torch.testing.assert_close(logp, dist.log_prob(torch.tanh(u)), atol=2e-3, rtol=1e-4)


def test_sac_losses_by_hand():
    rew, done = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 1.0])
    y = td_target(rew, done, torch.tensor([10.0, 10.0]), torch.tensor([-1.0, -1.0]), 0.5, 0.9)
    torch.testing.assert_close(y, torch.tensor([1.0 + 0.9 * (10.0 + 0.5), 2.0]))
    q = torch.tensor([[1.0, 2.0], [3.0, 2.0]])
    # head 0: ((1-1)^2 + (2-4)^2)/2 = 2 ; head 1: ((3-1)^2 + (2-4)^2)/2 = 4
    assert critic_loss(q, torch.tensor([1.0, 4.0])).item() == pytest.approx(6.0)
    assert actor_loss(torch.tensor([1.0, -1.0]), torch.tensor([3.0, 5.0]), 0.5).item() == (
        pytest.approx(((0.5 - 3) + (-0.5 - 5)) / 2)
    )
    log_alpha = torch.tensor(0.0, requires_grad=True)
    # entropy too low (log pi above -H_target): the loss must raise alpha
    temperature_loss(log_alpha, torch.tensor([2.0, 2.0]), target_entropy=-1.0).backward()
    assert log_alpha.grad.item() < 0  # gradient descent increases log alpha


def test_sac_update_learns_a_one_step_task():
    """Bandit: r = -(a - 0.5)^2, every step terminal; the mean action must move to 0.5."""
    torch.manual_seed(0)
    cfg = SACConfig(hidden=32, batch_size=64, lr=3e-3, init_alpha=0.05)
    sac = SAC(cfg, 2, 1, np.array([-1.0]), np.array([1.0]))
    g = torch.Generator().manual_seed(0)
    obs = torch.ones(64, 2)
    before = abs(float(sac.actor.act(obs[:1].numpy(), True)[0, 0]) - 0.5)
    for _ in range(300):
        act = torch.rand(64, 1, generator=g) * 2 - 1
        rew = -((act[:, 0] - 0.5) ** 2)
        sac.update(obs, act, rew, obs, torch.ones(64))
    after = abs(float(sac.actor.act(obs[:1].numpy(), True)[0, 0]) - 0.5)
    assert after < 0.15 and after < before
    q = sac.critic(torch.cat([torch.ones(2, 2), torch.tensor([[0.5], [-1.0]])], -1))[:, :, 0]
    assert (q[:, 0] > q[:, 1]).all()  # Q prefers a = 0.5 over a = -1


def test_train_sac_resumes_from_its_checkpoint(tmp_path):
    cfg = SACConfig(
        env_id="Pendulum-v1",
        total_steps=400,
        start_steps=100,
        snapshot_every=200,
        hidden=16,
        batch_size=32,
        eval_episodes_det=1,
        eval_episodes_stoch=1,
    )

    class Stop(Exception):
        pass

    def crash(step, _stats):
        if step == 300:
            raise Stop

    with pytest.raises(Stop):
        train_sac(cfg, tmp_path, log=crash, print_every=100)
    assert [r["step"] for r in read_snapshot_log(tmp_path)] == [200]
    rows = train_sac(cfg, tmp_path, print_every=100)
    assert [r["step"] for r in rows] == [200, 400]
    assert (tmp_path / "DONE").exists()
    actor, meta = load_snapshot(tmp_path / rows[-1]["file"])
    assert meta["step"] == 400 and math.isfinite(meta["eval_return_det"])
    assert actor.obs_dim == 3 and actor.act_dim == 1
    # a finished run returns at once with the same log
    assert [r["step"] for r in train_sac(cfg, tmp_path)] == [200, 400]
