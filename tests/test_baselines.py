"""`ipd baseline`: every d3rlpy algorithm on the tiny pendulum dataset, scored like `ipd run`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from tiny import TINY_DT_BASELINE

from ipd_plugins.baselines import D3rlpyBaseline, DTBaselineConfig, resolve_baseline
from ipd_plugins.commands import main
from registry import names

BASELINES = names("baseline")

TINY = [
    "baseline.n_steps=60",
    "baseline.hidden=32",
    "baseline.checkpoint_every=20",
    "baseline.log_every=20",
    "run.eval_episodes=2",
    "run.threads=1",
]


def _baseline(algo: str, out: Path, *extra: str, check: bool = True):
    args = ["baseline", algo, "--dataset", "pendulum-medium-replay", "--out", str(out)]
    for item in TINY + (TINY_DT_BASELINE if algo == "dt" else []):
        args += ["--set", item]
    result = CliRunner().invoke(main, [*args, *extra], catch_exceptions=not check)
    if check:
        assert result.exit_code == 0, result.output
    return result


def _seed_dir(out: Path, algo: str, seed: int = 0) -> Path:
    (run,) = [p for p in out.iterdir() if f"__baseline-{algo}__" in p.name]
    return run / f"seed_{seed}"


@pytest.mark.parametrize("algo", list(BASELINES))
def test_each_baseline_trains_and_is_scored_like_ipd_run(store, tmp_path, algo):
    out = tmp_path / "runs"
    result = _baseline(algo, out)
    run_dir = _seed_dir(out, algo)
    for name in ("config.yaml", "results.json", "eval.json", "stages.json"):
        assert (run_dir / name).exists(), name
    results = json.loads((run_dir / "results.json").read_text())
    assert results["method"] == results["label"] == algo
    assert results["components"] == {"baseline": algo}
    policy = results["scores"]["policy"]
    # the runner's evaluator: evaluation seeds 100_000 + seed, the dataset's env, normalised
    assert policy["seed"] == 100_000 and policy["env_id"] == "Pendulum-v1"
    assert policy["n_episodes"] == 2 and policy["normalized_mean"] is not None
    assert results["train"]["steps"] == 60.0
    assert json.loads((run_dir / "eval.json").read_text()) == results["scores"]
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["baseline"]["algo"] == algo and config["baseline"]["n_steps"] == 60
    assert config["meta"]["dataset_hash"] == results["dataset"]["hash"]
    assert "normalised" in result.output

    # the saved weights, loaded into a fresh learner, act exactly as evaluated
    stages = json.loads((run_dir / "stages.json").read_text())
    from ipd_plugins.data.sources import resolve_dataset
    from ipd_plugins.evaluate import evaluate
    from registry import BuildContext

    ds = resolve_dataset("pendulum-medium-replay")
    low, high = ds.action_bounds
    ctx = BuildContext(ds.obs_dim, ds.act_dim, tuple(low.tolist()), tuple(high.tolist()), "cpu", 0,
                       "Pendulum-v1")  # fmt: skip
    cfg = resolve_baseline(
        algo, "quick", {k: v for k, v in config["baseline"].items() if k != "algo"}
    )
    fresh = D3rlpyBaseline(cfg, ctx, ds)
    fresh.load(Path(stages["train"]["path"]) / "weights.pt")
    refs = (ds.ref_min_score, ds.ref_max_score)
    again = evaluate(fresh.actor(), "Pendulum-v1", 2, seed=100_000, ref_scores=refs)
    assert again.normalized_mean == pytest.approx(policy["normalized_mean"], rel=1e-5)
    np.testing.assert_allclose(again.returns, policy["returns"], rtol=1e-5)


def test_ipd_eval_asks_a_trained_dt_for_another_return(store, tmp_path):
    """`--set baseline.target_return` is an acting option: scored again, nothing retrains."""
    out = tmp_path / "runs"
    _baseline("dt", out)
    run_dir = _seed_dir(out, "dt")
    own = json.loads((run_dir / "eval.json").read_text())
    args = ["eval", str(run_dir), "--set", "baseline.target_return=-50"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "[baseline]" not in result.output  # loaded, not trained
    (file,) = run_dir.glob("eval_none_*.json")
    other = json.loads(file.read_text())["policy"]
    assert other["acting"] == {"target_return": -50.0}
    assert json.loads((run_dir / "eval.json").read_text()) == own  # the run's scores stay
    assert other["returns"] != own["policy"]["returns"]  # the token changes what it does
    # the same weights asked for -50 directly act as scored
    from ipd_plugins.baselines.run import load_trained_baseline
    from ipd_plugins.evaluate import evaluate

    trained = load_trained_baseline(run_dir)
    actor = trained.baseline.acting_as(target_return=-50.0).actor()
    again = evaluate(actor, "Pendulum-v1", 2, seed=100_000)
    np.testing.assert_allclose(again.returns, other["returns"], rtol=1e-5)
    # refused: a training option and an algorithm without acting options (before anything
    # loads), a target that is no number
    for option, message in (
        ("baseline.n_layer=1", "`ipd baseline dt --set baseline.n_layer=...`"),
        ("baseline.target_return=none", "give target_return a number"),
        ("baseline.target_return=abc", "cannot read 'abc' as float"),
    ):
        result = CliRunner().invoke(main, ["eval", str(run_dir), "--set", option])
        assert result.exit_code == 2 and message in result.output, result.output
    _baseline("bc", out)
    result = CliRunner().invoke(
        main, ["eval", str(_seed_dir(out, "bc")), "--set", "baseline.target_return=1"]
    )
    assert result.exit_code == 2 and "baseline 'bc' has none" in result.output, result.output


def test_same_seed_same_result_and_the_cache_is_reused(store, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _baseline("td3+bc", a)
    _baseline("td3+bc", b)
    ra = json.loads((_seed_dir(a, "td3+bc") / "results.json").read_text())
    rb = json.loads((_seed_dir(b, "td3+bc") / "results.json").read_text())
    assert ra["scores"]["policy"]["returns"] == rb["scores"]["policy"]["returns"]
    assert ra["train"]["critic_loss"] == rb["train"]["critic_loss"]
    log = _baseline("td3+bc", a).output
    assert "[baseline] reusing" in log
    again = json.loads((_seed_dir(a, "td3+bc") / "results.json").read_text())
    assert again["stage_reused"] == {"train": True}
    assert again["scores"]["policy"]["returns"] == ra["scores"]["policy"]["returns"]


def test_interrupted_training_resumes_to_the_same_weights(store, tmp_path, monkeypatch):
    import ipd_plugins.stages as runner

    _baseline("iql", tmp_path / "a")
    ref = json.loads((_seed_dir(tmp_path / "a", "iql") / "results.json").read_text())

    original = runner.CurveLogger.__call__

    def crash(self, step, values):
        original(self, step, values)
        if step >= 40:
            raise RuntimeError("killed mid-training")

    monkeypatch.setattr(runner.CurveLogger, "__call__", crash)
    with pytest.raises(RuntimeError, match="killed mid-training"):
        _baseline("iql", tmp_path / "b", "--debug")
    assert not (_seed_dir(tmp_path / "b", "iql") / "results.json").exists()
    monkeypatch.setattr(runner.CurveLogger, "__call__", original)
    log = _baseline("iql", tmp_path / "b").output
    assert "[baseline] resuming" in log
    resumed = json.loads((_seed_dir(tmp_path / "b", "iql") / "results.json").read_text())
    # killed in the log call at step 40 (before its checkpoint): resumes from step 20
    assert resumed["train"]["steps_trained"] == 40.0
    stages = json.loads((_seed_dir(tmp_path / "b", "iql") / "stages.json").read_text())
    assert 0 < stages["train"]["resumed_seconds"] < stages["train"]["seconds"]
    assert resumed["wall_seconds"] >= resumed["stage_seconds"]["train"]  # counts the killed one
    np.testing.assert_allclose(
        resumed["scores"]["policy"]["returns"], ref["scores"]["policy"]["returns"], rtol=1e-5
    )


def test_bc_learns_a_deterministic_behaviour():
    """On data whose actions are a fixed function of the state, BC's predictions beat the
    best constant predictor by far (the pendulum data is mostly exploration noise)."""
    from ipd_plugins.data import TrajectoryDataset
    from registry import BuildContext

    rng = np.random.default_rng(0)
    episodes = []
    for _ in range(4):
        obs = rng.normal(size=(101, 3)).astype(np.float32)
        act = np.clip(1.5 * obs[:-1, :1] - obs[:-1, 1:2], -2, 2).astype(np.float32)
        done = np.zeros(100, bool)
        done[-1] = True
        episodes.append(dict(observations=obs, actions=act, rewards=np.zeros(100, np.float32),
                             terminations=np.zeros(100, bool), truncations=done))  # fmt: skip
    bound = np.array([2.0], np.float32)
    ds = TrajectoryDataset.from_episodes(
        episodes, env_id="Pendulum-v1", name="toy", action_low=-bound, action_high=bound
    )
    ctx = BuildContext(3, 1, (-2.0,), (2.0,), "cpu", 0, "Pendulum-v1")
    cfg = resolve_baseline("bc", "quick", overrides={"n_steps": 400, "hidden": 64})
    bc = D3rlpyBaseline(cfg, ctx, ds)
    bc.fit(ds)
    actor = bc.actor()
    pred = actor.act(torch.as_tensor(ds.observations)).numpy()
    mse = float(((pred - ds.actions) ** 2).mean())
    constant = float(((ds.actions - ds.actions.mean()) ** 2).mean())
    assert mse < 0.1 * constant, (mse, constant)


def test_several_seeds_in_one_command(store, tmp_path):
    out = tmp_path / "runs"
    result = _baseline("bc", out, "--seeds", "0,1")
    assert "over seeds 0, 1" in result.output
    r0 = json.loads((_seed_dir(out, "bc", 0) / "results.json").read_text())
    r1 = json.loads((_seed_dir(out, "bc", 1) / "results.json").read_text())
    assert (r0["seed"], r1["seed"]) == (0, 1)
    assert r1["scores"]["policy"]["seed"] == 100_001
    assert r0["scores"]["policy"]["returns"] != r1["scores"]["policy"]["returns"]


def test_budgets_follow_the_profile_and_dt_targets():
    from ipd_plugins.profiles import PROFILES

    for name, profile in PROFILES.items():
        assert resolve_baseline("iql", name).n_steps == profile["value"]["n_steps"]
        assert resolve_baseline("td3+bc", name).n_steps == profile["value"]["n_steps"]
        dt = resolve_baseline("dt", name)
        assert dt.n_steps == profile["policy"]["n_steps"]
        assert dt.n_embd == profile["policy"].get("n_embd", 256)
        assert dt.n_layer == profile["policy"].get("n_layer", 4)
    assert resolve_baseline("cql", "quick", overrides={"n_steps": "7"}).n_steps == 7

    class Toy:
        @staticmethod
        def episode_returns():
            return np.array([-900.0, -150.0, -400.0])

    cfg = DTBaselineConfig()
    assert cfg.resolved_target(Toy, "Hopper-v5") == 3600.0
    assert cfg.resolved_target(Toy, "Walker2d-v5") == 5000.0
    assert cfg.resolved_target(Toy, "Pendulum-v1") == -150.0  # the best episode
    assert DTBaselineConfig(target_return=12.0).resolved_target(Toy, "Hopper-v5") == 12.0


def test_bad_options_fail_with_a_sentence(store, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["baseline", "sac", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "is not one of bc, cql, dt, iql, rebrac, td3+bc" in result.output
    result = _baseline("iql", tmp_path, "--set", "planner.n_mpc=3", check=False)
    assert result.exit_code == 2 and "sections: run, baseline" in result.output
    result = _baseline("iql", tmp_path, "--set", "baseline.nope=3", check=False)
    assert result.exit_code == 2 and "valid options" in result.output
    result = _baseline("iql", tmp_path, "--seed", "1", "--seeds", "0,1", check=False)
    assert result.exit_code == 2 and "either --seed or --seeds" in result.output
    result = _baseline("dt", tmp_path, "--set", "baseline.n_head=3", check=False)
    assert result.exit_code == 2 and "divisible" in result.output
    from registry import BuildContext

    ctx = BuildContext(3, 1, (-np.inf,), (np.inf,), "cpu", 0, "Pendulum-v1")
    with pytest.raises(ValueError, match="finite action bounds"):
        D3rlpyBaseline(resolve_baseline("bc", "quick"), ctx, None)


def test_rebrac_takes_the_papers_betas_for_the_dataset():
    from ipd_plugins.baselines.run import resolve_settings

    def betas(dataset: str, **overrides):
        run = {"dataset": dataset, "profile": "quick"}
        _, cfg = resolve_settings("rebrac", run, {"baseline": overrides}, {})
        return cfg.actor_beta, cfg.critic_beta

    assert betas("hopper-medium") == (0.01, 0.001)
    assert betas("hopper-medium-replay") == (0.05, 0.5)  # its own row, not hopper-medium's
    assert betas("ipd/walker2d/medium-replay-v0") == (0.05, 0.01)
    assert betas("pendulum-medium") == (0.01, 0.01)  # not in the paper's table
    assert betas("hopper-medium-replay", critic_beta=0.2) == (0.05, 0.2)  # --set wins
    # the other baselines have no per-dataset defaults
    _, iql = resolve_settings("iql", {"dataset": "hopper-medium", "profile": "quick"}, {}, {})
    assert iql == resolve_baseline("iql", "quick")
