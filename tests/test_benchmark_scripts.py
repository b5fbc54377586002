"""The benchmark scripts' own logic: scores.py's run matching, value_calibration's maths, the
DT cross-checks, flip_probe's counting; and the toy task the speed scripts score on."""

from __future__ import annotations

import ast
import copy
import importlib
import importlib.util
import json
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ipd_plugins.baselines import load_trained_baseline
from ipd_plugins.data.dataset import TrajectoryDataset
from ipd_plugins.evaluate import evaluate, score
from ipd_plugins.run_config import resolve_config

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _script(name: str):
    """Load ``benchmarks/<kind>/<name>.py`` (a script, not a package module) by its path."""
    (path,) = BENCHMARKS.glob(f"*/{name}.py")
    spec = importlib.util.spec_from_file_location(f"ipd_bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


SCRIPTS = sorted(BENCHMARKS.glob("*/*.py"))


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_import_of_every_script_resolves(path, monkeypatch):
    # the imports inside functions too: a module or name the package moved fails here, not
    # an hour into a benchmark; a script's own folder is on sys.path when it runs
    monkeypatch.syspath_prepend(str(path.parent))
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            assert node.level == 0, f"{path.name}: relative import (scripts are not a package)"
            module = importlib.import_module(node.module)
            for alias in node.names:
                found = hasattr(module, alias.name) or importlib.util.find_spec(
                    f"{node.module}.{alias.name}"
                )
                assert found, f"{path.name}: {node.module} has no {alias.name}"


scores = _script("scores")
dt_crosscheck = _script("dt_crosscheck")
value_calibration = _script("value_calibration")


def _current() -> tuple[dict, dict]:
    run = {"dataset": "hopper-medium", "seed": 0, "profile": "default", "threads": 1}
    cfg = resolve_config(run=run)
    return cfg.to_dict(), cfg.identity_dict()


def test_same_config_other_provenance_counts():
    now, ident = _current()
    old = copy.deepcopy(now)
    old["run"]["out_dir"] = "elsewhere"
    old["meta"] = {"git_commit": "abc", "written": "yesterday"}
    assert scores.same_run(old, now, ident)
    old["run"]["seed"] = 1
    assert not scores.same_run(old, now, ident)


def test_field_added_later_at_old_behaviour_counts_but_not_otherwise():
    now, ident = _current()
    old = copy.deepcopy(now)
    for key in ("gamma", "train_token", "position_init_std"):  # declared with added_later
        del old["policy"][key]
    assert scores.same_run(old, now, ident)
    run = {"dataset": "hopper-medium", "seed": 0, "profile": "default", "threads": 1}
    changed = resolve_config(run=run, overrides={"policy": {"train_token": "return"}})
    assert not scores.same_run(old, changed.to_dict(), changed.identity_dict())
    recorded_other = copy.deepcopy(now)
    recorded_other["policy"]["train_token"] = "return"
    assert not scores.same_run(recorded_other, now, ident)


def test_missing_behaviour_changing_field_or_other_value_is_a_different_run():
    now, ident = _current()
    old = copy.deepcopy(now)
    del old["policy"]["position"]  # added with a new default: old runs used "window"
    assert not scores.same_run(old, now, ident)
    old = copy.deepcopy(now)
    old["value"]["tau"] = 0.9
    assert not scores.same_run(old, now, ident)


def test_finished_finds_an_equivalent_record_under_another_name(tmp_path):
    now, ident = _current()
    out, record = tmp_path / "out", tmp_path / "record"
    rd = out / "hopper-medium__qov-pe-gjs-mpc-ipd-dt__aaaaaaaa" / "seed_0"
    assert scores.finished(rd, now, ident, str(out), str(record)) is None
    old = copy.deepcopy(now)
    del old["policy"]["train_token"]
    other = record / "hopper-medium__qov-pe-gjs-mpc-ipd-dt__bbbbbbbb" / "seed_0"
    other.mkdir(parents=True)
    (other / "config.yaml").write_text(yaml.safe_dump(old))
    (other / "results.json").write_text("{}")
    assert scores.finished(rd, now, ident, str(out), str(record)) == other / "results.json"
    seed1 = rd.parent / "seed_1"
    assert scores.finished(seed1, now, ident, str(out), str(record)) is None


def _record(
    root: Path,
    run_name: str,
    seed: int,
    score: float,
    baseline: str | None = None,
    data_hash: str = "x",
    machine: str | None = None,
    label: str | None = None,
):
    folder = root / run_name / f"seed_{seed}"
    folder.mkdir(parents=True)
    dataset = run_name.split("__")[0]
    components = {"baseline": baseline} if baseline else {"value": "qov", "policy": "ipd-dt"}
    stats = {"source": dataset, "name": dataset, "hash": data_hash, "episodes": 7}
    results = {
        "dataset": {**stats, "normalized_mean": 45.6},
        "components": components,
        "seed": seed,
        "scores": {"policy": {"normalized_mean": score, "mean_return": 0.0, "n_episodes": 10}},
    }
    if not baseline:  # IPD runs also score pi_QOP
        results["scores"]["qop"] = {"normalized_mean": score + 10.0, "n_episodes": 10}
    results["stage_seconds"] = {"train": 60.0 * (seed + 1)}
    if baseline:
        results.update(label=baseline, method=baseline)
    if label:
        results["label"] = label
    (folder / "results.json").write_text(json.dumps(results))
    if machine:
        (folder / "config.yaml").write_text(yaml.safe_dump({"meta": {"machine": machine}}))


def test_table_keeps_one_column_per_method_and_says_how_complete_it_is(tmp_path):
    record = tmp_path / "record"
    # IPD seeds recorded under two config hashes (a field added between them): one column
    _record(record, "hopper-medium__qov-pe-gjs-mpc-ipd-dt__aaaaaaaa", 0, 40.0)
    _record(record, "hopper-medium__qov-pe-gjs-mpc-ipd-dt__bbbbbbbb", 1, 50.0)
    _record(record, "hopper-medium__baseline-iql__cccccccc", 0, 30.0, baseline="iql")
    table = tmp_path / "scores.md"
    text = scores.write_table(str(record), "runs/x", "default", table, reps=50)
    assert table.read_text() == text
    assert "| dataset | ipd | iql |" in text
    assert "| hopper-medium | 45.0 ± 7.1 (n=2) | 30.0 (n=1) |" in text
    assert "Recorded: 3 of the 72 planned runs" in text
    assert "compare them row by row" in text
    assert "for scale: hopper-medium 45.6." in text
    assert "| ipd | 2 | 3.0 | 1.5 | 1.0 |" in text  # wall minutes: total, median, fastest
    assert "| hopper-medium | 45.0 | 55.0 | 2 |" in text  # IPD's seeds vs pi_QOP, IQL has none
    # IPD's mean minus IQL's (45 - 30), and paper table 1's (81.6 - 66.3)
    assert "| dataset | IPD - iql |" in text
    assert "| hopper-medium | +15.0 (+15.3) |" in text
    assert "| IPD ahead on | 1 of 1 |" in text
    assert "| IPD ahead on, (dataset, seed) pairs | 1 of 1 |" in text  # seed 0: 40 against 30
    # every run, seed by seed, the two IPD hashes in one column
    assert "| hopper-medium | 0 | 40.0 | 30.0 |\n| hopper-medium | 1 | 50.0 | - |\n" in text
    # IQL's seed 1 gives ipd and iql the same cells: their IQMs compare, the plan is not done
    _record(record, "hopper-medium__baseline-iql__cccccccc", 1, 32.0, baseline="iql")
    text = scores.write_table(str(record), "runs/x", "default", table, 50, ("ipd", "iql"))
    assert "Recorded: 4 of the 36 planned runs" in text
    assert "Every method has the same 2 (dataset, seed) cells, so their IQMs compare" in text
    assert "compare them row by row" not in text
    # with DT planned too (no run yet), the cells differ again
    text = scores.write_table(str(record), "runs/x", "default", table, 50, ("ipd", "dt", "iql"))
    assert "compare them row by row" in text
    # the same (dataset, method, seed) twice is refused, naming both records
    _record(record, "hopper-medium__qov-pe-gjs-mpc-ipd-dt__dddddddd", 1, 55.0)
    with pytest.raises(ValueError, match="ipd hopper-medium seed 1 is recorded twice"):
        scores.write_table(str(record), "runs/x", "default", table, reps=50)


def test_table_counts_ipd_ahead_seed_by_seed_as_well_as_on_the_means(tmp_path):
    record = tmp_path / "record"
    for seed, ipd, iql in ((0, 40.0, 30.0), (1, 50.0, 60.0)):  # means level at 45
        _record(record, "hopper-medium__qov-pe-gjs-mpc-ipd-dt__aaaaaaaa", seed, ipd)
        _record(record, "hopper-medium__baseline-iql__cccccccc", seed, iql, baseline="iql")
    text = scores.write_table(str(record), "runs/x", "default", tmp_path / "t.md", reps=50)
    assert "| IPD ahead on | 0 of 1 |" in text
    assert "| IPD ahead on, (dataset, seed) pairs | 1 of 2 |" in text


def test_table_lists_the_dataset_realisations_only_when_runs_differ(tmp_path):
    record = tmp_path / "record"
    _record(record, "hopper-medium__qov-pe-gjs-mpc-ipd-dt__aaaaaaaa", 0, 40.0, data_hash="h1")
    _record(record, "hopper-medium__baseline-iql__cccccccc", 0, 30.0, "iql", data_hash="h1")
    table = tmp_path / "scores.md"
    assert "Datasets made more than once" not in scores.write_table(
        str(record), "runs/x", "default", table, reps=50
    )
    _record(record, "hopper-medium__baseline-iql__cccccccc", 1, 31.0, "iql", "h2", "AMD EPYC")
    text = scores.write_table(str(record), "runs/x", "default", table, reps=50)
    assert "Datasets made more than once" in text
    assert "| hopper-medium | `h1` | 7 | 45.6 | ipd 0, iql 0 | not recorded |" in text
    assert "| hopper-medium | `h2` | 7 | 45.6 | iql 1 | AMD EPYC |" in text


class _LinearV:
    """V(s) = 10 s[0]."""

    def v(self, obs: torch.Tensor) -> torch.Tensor:
        return 10.0 * obs[:, 0]


def test_value_calibration_against_a_loop():
    # episode 1: 3 steps, terminated; episode 2: 2 steps, truncated (G bootstraps with V(s'))
    obs = np.array([[0.0], [1.0], [2.0], [5.0], [6.0]])
    next_obs = np.array([[1.0], [2.0], [3.0], [6.0], [7.0]])
    rewards = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    term = np.array([0, 0, 1, 0, 0], bool)
    trunc = np.array([0, 0, 0, 0, 1], bool)
    ds = TrajectoryDataset.from_arrays(
        {
            "observations": obs,
            "actions": np.zeros((5, 1)),
            "rewards": rewards,
            "next_observations": next_obs,
            "terminations": term,
            "truncations": trunc,
        },
        np.array([3, 2]),
    )
    gamma, tau = 0.9, 0.7
    v, v_next = 10.0 * obs[:, 0], 10.0 * next_obs[:, 0]
    g = np.zeros(5)
    for start, end in ((0, 3), (3, 5)):
        after = 0.0 if term[end - 1] else v_next[end - 1]
        for t in reversed(range(start, end)):
            after = rewards[t] + gamma * after
            g[t] = after
    y = rewards + gamma * (1 - term) * v_next
    above = np.mean([max(e, 0.0) for e in y - v])
    below = np.mean([max(-e, 0.0) for e in y - v])

    c = value_calibration.calibration(_LinearV(), ds, gamma, tau)
    assert c["mean_v"] == pytest.approx(v.mean())
    assert c["mean_g"] == pytest.approx(g.mean(), rel=1e-5)
    assert c["mean_v_minus_g"] == pytest.approx((v - g).mean(), rel=1e-5)
    assert c["p_g_above_v"] == pytest.approx((g > v).mean())
    assert c["balance"] == pytest.approx(tau * above - (1 - tau) * below, rel=1e-5)


def test_dt_crosscheck_copies_d3rlpys_dt_exactly_and_both_loops_act_alike(store, tmp_path):
    # a tiny d3rlpy DT on the pendulum data (actions in [-2, 2]: the action scaling is checked)
    from click.testing import CliRunner

    from ipd_plugins.commands import main

    out = tmp_path / "runs"
    args = ["baseline", "dt", "--dataset", "pendulum-medium-replay", "--out", str(out)]
    for item in ("n_steps=40", "n_layer=2", "n_embd=32", "n_head=2", "context=5",
                 "batch_size=16", "warmup_steps=10", "dropout=0.1"):  # fmt: skip
        args += ["--set", f"baseline.{item}"]
    result = CliRunner().invoke(main, [*args, "--set", "run.eval_episodes=1"])
    assert result.exit_code == 0, result.output
    (run_dir,) = [p / "seed_0" for p in out.iterdir() if "__baseline-dt__" in p.name]
    # the reloaded baseline replays the run's own evaluation
    trained = load_trained_baseline(run_dir)
    recorded = json.loads((run_dir / "eval.json").read_text())["policy"]["returns"]
    again = score(
        trained.baseline.actor(), trained.ctx.env_id, 1, trained.ctx.seed, trained.dataset
    )
    np.testing.assert_allclose(again.returns, recorded, rtol=1e-5)
    pair = dt_crosscheck.load_pair(run_dir)
    diff, n_steps = dt_crosscheck.teacher_forced_difference(pair, n_windows=64)
    assert n_steps > 64 and diff < 1e-5
    actors = [pair.baseline.actor(), pair.policy.actor(None)]
    worst, steps = dt_crosscheck.lockstep(actors, pair.ctx.env_id, seed=3)
    assert steps == 200 and worst < 1e-5
    # DTActor hands d3rlpy's wrapper (which keeps what it gets as its context) copies, so a
    # caller reusing its observation buffer cannot rewrite the context ...
    d3_actor = pair.baseline.actor()
    obs = torch.zeros(1, pair.ctx.obs_dim)
    d3_actor.reset(obs)
    d3_actor.act(obs)
    obs += 1.0  # the caller reuses its buffer
    d3_actor.act(obs)
    kept = list(d3_actor.wrappers[0]._observations)
    np.testing.assert_array_equal(kept[0], np.zeros(pair.ctx.obs_dim))
    # ... and the two acting loops score the same episodes alike through the evaluator
    refs = (pair.ds.ref_min_score, pair.ds.ref_max_score)
    a, b = (
        evaluate(actor, pair.ctx.env_id, n_episodes=2, seed=5, ref_scores=refs)
        for actor in (pair.baseline.actor(), pair.policy.actor(None))
    )
    np.testing.assert_allclose(a.returns, b.returns, rtol=1e-4)
    # a copy missing one layer is caught: the check is not vacuous
    with torch.no_grad():
        pair.policy.net.model.transformer.blocks[1].mlp[2].weight.zero_()
    diff, _ = dt_crosscheck.teacher_forced_difference(pair, n_windows=64)
    assert diff > 1e-4


def test_dt_train_lockstep_our_update_with_d3rlpys_loss_and_decay_is_d3rlpys(store):
    # pendulum actions are in [-2, 2], so d3rlpy's loss in [-1, 1] units is checked too
    from ipd_plugins.baselines import resolve_baseline

    lockstep = _script("dt_train_lockstep")
    cfg = resolve_config(run={"dataset": "pendulum-medium-replay", "profile": "quick"})
    sizes = {"n_layer": 2, "n_embd": 32, "n_head": 2, "context": 5, "batch_size": 16}
    bconf = resolve_baseline("dt", "quick", {**sizes, "warmup_steps": 10, "dropout": 0.0}, None)
    recorder = lockstep._ClipRecorder(bconf.grad_clip)
    torch.nn.utils.clip_grad_norm_ = recorder
    try:
        rows = lockstep.run_variant(cfg, bconf, "+ d3rlpy decay", 30, recorder, False)
    finally:
        torch.nn.utils.clip_grad_norm_ = recorder._orig
    assert [s for s, _ in rows] == [1, 10, 30]
    assert max(d for _, d in rows) < 1e-5  # 30 shared steps later the networks still agree
    # both trainers went through the clip once per step, with the same norms
    ours, theirs = recorder.norms["ours + d3rlpy decay"], recorder.norms["d3rlpy + d3rlpy decay"]
    assert len(ours) == len(theirs) == 30
    np.testing.assert_allclose(ours, theirs, rtol=1e-4)
    # training the action embedding too, the two parametrisations of it (raw actions vs
    # [-1, 1]) step apart: the check sees a real difference in the update rule
    recorder = lockstep._ClipRecorder(bconf.grad_clip)
    rows_all = lockstep.run_variant(cfg, bconf, "+ d3rlpy decay", 30, recorder, True)
    assert rows_all[-1][1] > 3 * rows[-1][1]


flip_probe = _script("flip_probe")


def test_flip_probe_counts_flipped_episodes_and_steps():
    # episode 1 rolls past pi/2 at its third step; episode 2 stays upright
    angle = np.array([0.0, 1.0, 2.0, -2.5, 0.1, -1.5])
    ds = TrajectoryDataset.from_arrays(
        {
            "observations": np.stack([np.zeros(6), angle], axis=1),
            "actions": np.zeros((6, 1)),
            "rewards": np.array([1.0, 1.0, 1.0, 1.0, 5.0, 5.0]),
            "next_observations": np.zeros((6, 2)),
            "terminations": np.zeros(6, bool),
            "truncations": np.array([0, 0, 0, 1, 0, 1], bool),
        },
        np.array([4, 2]),
    )
    data = flip_probe.dataset_summary(ds, angle_index=1)
    assert data["episodes"] == 2 and data["flipped_episodes"] == 1
    assert data["flipped_step_share"] == pytest.approx(2 / 6)
    assert data["return_flipped"] == pytest.approx(4.0) and data["return_steady"] == 10.0

    class Result:  # two episodes of one wave, the second one step shorter
        returns, lengths = (30.0, 10.0), (3, 2)

    obs = np.zeros((3, 2, 2))
    obs[:, 0, 1] = [0.0, 3.0, 3.0]  # episode 1 flips at step 1
    obs[2, 1, 1] = 3.0  # after episode 2 ended: must not count
    rows = flip_probe.episode_rows(Result(), obs, 1, refs=(10.0, 110.0))
    assert [r["first_flip"] for r in rows] == [1, None]
    assert [r["flipped_share"] for r in rows] == pytest.approx([2 / 3, 0.0])
    assert [r["normalised"] for r in rows] == pytest.approx([20.0, 0.0])


def test_flip_probe_awr_weight_share_against_a_hand_computation():
    class Value:  # Q(s, a) - V(s) = a
        def q(self, obs, act):
            return obs[:, 0] + act[:, 0]

        def v(self, obs):
            return obs[:, 0]

    acts = np.array([0.0, 1.0, -1.0, 2.0])
    ds = TrajectoryDataset.from_arrays(
        {
            "observations": np.array([[3.0], [1.0], [-2.0], [0.5]]),
            "actions": acts[:, None],
            "rewards": np.array([0.0, 1.0, 0.0, 1.5]),  # returns 1 and 1.5: factor 2000
            "next_observations": np.zeros((4, 1)),
            "terminations": np.zeros(4, bool),
            "truncations": np.array([0, 1, 0, 1], bool),
        },
        np.array([2, 2]),
    )
    mask = np.array([False, True, True, False])
    beta = 0.001  # beta * factor = 2
    w = np.minimum(np.exp(2.0 * acts), 20.0)  # exp(4) = 54.6 is clipped
    share = flip_probe.awr_weight_share(ds, Value(), mask, beta, max_weight=20.0, chunk=3)
    assert share == pytest.approx(w[mask].sum() / w.sum())


def test_flip_probe_recorder_sees_every_observation_the_actor_gets():
    from ipd_plugins.evaluate import CallableActor

    rec = flip_probe.RecordingActor(CallableActor(lambda obs: torch.zeros(obs.shape[0], 1)))
    result = evaluate(rec, "Pendulum-v1", n_episodes=2, seed=3, max_steps=7)
    obs = np.stack(rec.observations)
    assert obs.shape == (7, 2, 3) and result.lengths == (7, 7)
    first = np.stack([gym_reset("Pendulum-v1", 3 + j) for j in range(2)])
    np.testing.assert_allclose(obs[0], first, rtol=1e-6)


def gym_reset(env_id: str, seed: int) -> np.ndarray:
    import gymnasium as gym

    env = gym.make(env_id)
    try:
        return env.reset(seed=seed)[0]
    finally:
        env.close()


def test_load_trained_baseline_names_what_is_wrong_with_the_folder(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"run": {}, "components": {}}))
    with pytest.raises(ValueError, match="not an `ipd baseline` run folder"):
        load_trained_baseline(tmp_path)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"run": {}, "baseline": {"algo": "bc"}}))
    with pytest.raises(FileNotFoundError, match="did not finish training"):
        load_trained_baseline(tmp_path)


def test_toy_task_the_speed_scripts_score_on(toy_reach):
    # policy_speed.py's toy score table: optimal about -1.2, random about -22
    from ipd_plugins.evaluate import CallableActor

    ds, value = toy_reach.dataset(80), toy_reach.value(record=True)
    assert ds.env_id == toy_reach.env_id and ds.n_episodes == 80 and ds.n_steps == 1600
    # the environment replays the dataset's steps: same dynamics, same rewards
    env = gym_make(toy_reach.env_id)
    env.reset(seed=0)
    env.unwrapped.x = float(ds.observations[0, 0])
    for t in range(20):
        obs, reward, terminated, truncated, _ = env.step(ds.actions[t])
        assert obs[0] == pytest.approx(ds.next_observations[t, 0], abs=1e-6)
        assert reward == pytest.approx(ds.rewards[t], abs=1e-6)
    assert truncated and not terminated and ds.truncations[19]
    env.close()
    greedy = evaluate(CallableActor(value.act), toy_reach.env_id, n_episodes=20, seed=1000)
    gen = torch.Generator().manual_seed(0)
    rand = CallableActor(lambda obs: torch.rand(obs.shape[0], 1, generator=gen) * 2 - 1)
    random = evaluate(rand, toy_reach.env_id, n_episodes=20, seed=1000)
    assert -2.0 < greedy.mean_return and random.mean_return < -15.0
    assert random.mean_return < ds.episode_returns().mean() < greedy.mean_return
    assert len(value.v_calls) == 0 and value.v(torch.ones(3, 1)).tolist() == [-2.0] * 3
    assert len(value.v_calls) == 1  # record=True keeps what v() was asked


def gym_make(env_id: str):
    import gymnasium as gym

    return gym.make(env_id)


def test_precision_benchmark_writes_speed_peak_and_same_batch_curves(store, tmp_path, monkeypatch):
    """benchmarks/speed/precision.py end to end, tiny: both precisions train on the same
    batches from the same weights, so their first logged losses agree to bf16's precision."""
    bench = _script("precision")
    out = tmp_path / "precision.md"
    argv = ["precision.py", "--dataset", "ipd/pendulum/medium-replay-v0", "--profile", "quick",
            "--stages", "value,world_model", "--curve-steps", "12", "--speed-steps", "3",
            "--rounds", "1", "--out", str(out)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    bench.main()
    text = out.read_text()
    assert "Matmul peak" in text and "| value |" in text and "| world_model |" in text
    rows = [ln for ln in text.splitlines() if ln.startswith("| 2 |")]  # the first curve point
    assert len(rows) == 2
    for row in rows:
        cells = [float(c) for c in row.strip("|").split("|")[1:]]
        fp32, bf16 = cells[0::2], cells[1::2]
        np.testing.assert_allclose(bf16, fp32, rtol=0.05)


def test_budget_plot_averages_the_curves_over_seeds(tmp_path):
    budget_plot = _script("budget_plot")

    def run(folder, seed, label, curve, score, steps, baseline=None, dataset="hopper-medium"):
        seed_dir = tmp_path / folder / f"{dataset}__{label}__0/seed_{seed}"
        seed_dir.mkdir(parents=True)
        results = {
            "label": label, "seed": seed, "dataset": {"source": dataset},
            "scores": {"policy": {"normalized_mean": score, "mean_return": 1.0}},
            "components": {"baseline": baseline} if baseline else {"policy": label},
        }  # fmt: skip
        if curve is not None:
            results["curve"] = [
                {"step": k, "normalized_mean": v, "normalized_std": 1.0, "mean_return": 0.0,
                 "std_return": 0.0, "n_episodes": 10} for k, v in curve
            ]  # fmt: skip
        (seed_dir / "results.json").write_text(json.dumps(results))
        (seed_dir / "config.yaml").write_text(yaml.safe_dump({"baseline": {"n_steps": steps}}))

    run("budget", 0, "ipd", [(2000, 10.0), (4000, 30.0)], 30.0, 4000)
    run("budget", 1, "ipd", [(2000, 20.0), (4000, 50.0)], 50.0, 4000)
    run("tuning", 0, "dt", None, 60.0, 8000)
    run("tuning", 0, "iql", None, 30.0, 30000, baseline="iql")
    run("tuning", 0, "dt", None, 70.0, 8000, dataset="walker2d-medium")  # no curve there
    curves = budget_plot.load([str(tmp_path / "budget")])
    assert dict(curves["hopper-medium"]["ipd"]) == {2000: [10.0, 20.0], 4000: [30.0, 50.0]}
    reference = budget_plot.load_reference([str(tmp_path / "tuning")])
    assert dict(reference["hopper-medium"]["dt"]) == {8000: [60.0]}
    assert dict(reference["hopper-medium"]["d3rlpy iql"]) == {30000: [30.0]}  # a baseline's run
    text = budget_plot.markdown(curves, reference)
    # sample std over seeds: (10, 20) -> sqrt(50) = 7.07, (30, 50) -> sqrt(200) = 14.14
    assert "| ipd | 15.0 +- 7.1 (2) | 40.0 +- 14.1 (2) |  |" in text
    assert "| dt (final) |  |  | 60.0 (1) |" in text
    assert "walker2d-medium" in reference and "walker2d-medium" not in text  # no curve: no table
    budget_plot.plot(curves, reference, tmp_path / "budget.png")
    assert (tmp_path / "budget.png").stat().st_size > 1000


def test_dwm_table_picks_the_step_size_on_the_tuning_seed_and_reports_the_others():
    dwm_scores = _script("dwm_scores")
    run = "/o/hopper-medium-replay__baseline-rebrac__ab12cd34/seed_{}"

    def row(seed: int, lr: float, without: float, with_: float) -> dict:
        return {"run": run.format(seed), "actor": "policy", "lr": lr, "options": [],
                "without": without, "with": with_}  # fmt: skip

    rows = [row(0, 1e-5, 50.0, 55.0), row(0, 1e-4, 50.0, 40.0), row(1, 1e-5, 60.0, 62.0),
            row(2, 1e-5, 40.0, 46.0), row(2, 1e-4, 40.0, 99.0)]  # fmt: skip
    text = dwm_scores.table(rows)
    # seeds 1-2 at the tuning seed's 1e-5; sample stds: (60, 40) 14.1, (62, 46) 11.3, (2, 6) 2.8
    assert "| hopper-medium-replay | rebrac | 1e-05 | 50.0 -> 55.0 | 1, 2 | 50.0 +- 14.1 | " in text
    assert "| 54.0 +- 11.3 | 4.0 +- 2.8 |" in text
    # table v2: only the fresh seeds are reported; an untuned dataset at its one step size
    walker = "/o/walker2d-medium__baseline-rebrac__ef56ab78/seed_10"
    untuned = {**row(10, 1e-6, 70.0, 71.0), "run": walker}
    halfcheetah = {**row(1, 1e-5, 30.0, 31.0), "run": "/o/halfcheetah__baseline-rebrac__0/seed_1"}
    v2 = dwm_scores.table([*rows, row(10, 1e-5, 20.0, 23.0), untuned, halfcheetah], report={10})
    assert "| hopper-medium-replay | rebrac | 1e-05 | 50.0 -> 55.0 | 10 | 20.0 | 23.0 | 3.0 |" in v2
    assert "| walker2d-medium | rebrac | 1e-06 | not tuned | 10 | 70.0 | 71.0 | 1.0 |" in v2
    assert "halfcheetah" not in v2  # no fresh seed
    assert "walker2d" not in dwm_scores.table([*rows, untuned])  # no tuning seed, no report


def test_dwm_scores_refuses_a_record_copy_before_evaluating_anything(tmp_path, monkeypatch, capsys):
    dwm_scores = _script("dwm_scores")
    record = tmp_path / "hopper-medium__baseline-rebrac__ab12cd34" / "seed_0"
    record.mkdir(parents=True)
    (record / "results.json").write_text("{}")  # what a sweep's `record` keeps: no eval.json
    monkeypatch.setattr(dwm_scores, "evaluate", lambda *a: pytest.fail("evaluated a bad folder"))
    out = tmp_path / "o.jsonl"
    argv = ["dwm_scores.py", "--runs", str(record), "--lrs", "1e-6", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit):
        dwm_scores.main()
    err = capsys.readouterr().err
    assert "no eval.json" in err and str(record) in err
    assert not out.exists()


def test_dwm_scores_writes_no_row_a_concurrent_command_wrote(tmp_path, monkeypatch):
    dwm_scores = _script("dwm_scores")
    run = tmp_path / "hopper-medium__baseline-rebrac__ab12cd34" / "seed_0"
    run.mkdir(parents=True)
    (run / "eval.json").write_text(json.dumps({"policy": {"normalized_mean": 40.0}}))
    out = tmp_path / "o.jsonl"
    theirs = {"run": str(run), "actor": "policy", "lr": 1e-6, "options": [], "actors": [],
              "without": 40.0, "with": 41.0}  # fmt: skip
    calls = []

    def evaluate(run, lr, *args):  # at 1e-6 the other command appends its row meanwhile
        calls.append(lr)
        if lr == 1e-6:
            out.write_text(json.dumps(theirs) + "\n")
        return {"file": "f", "seconds": 1.0,
                "policy": {"normalized_mean": 42.0, "normalized_std": 1.0}}  # fmt: skip

    monkeypatch.setattr(dwm_scores, "evaluate", evaluate)
    argv = ["dwm_scores.py", "--runs", str(run), "--lrs", "1e-6,1e-5", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    dwm_scores.main()
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(r["lr"], r["with"]) for r in rows] == [(1e-6, 41.0), (1e-5, 42.0)]  # 1e-6: theirs
    assert calls == [1e-6, 1e-5]
    monkeypatch.setattr(dwm_scores, "evaluate", lambda *a: pytest.fail("evaluated it again"))
    dwm_scores.main()  # both rows on file: a rerun evaluates nothing


def test_gtp_acting_table_averages_each_sampler_over_seeds():
    gtp_acting = _script("gtp_acting")
    run = "/o/hopper-medium__qov-pe-gjs-mpc-gtp__ab12cd34/seed_{}"
    rows = [
        {"run": run.format(s), "label": "gtp alone", "sampler": kind, "k": k,
         "normalized_mean": base + (10.0 if kind == "euler" else 0.0)}
        for s, base in ((0, 20.0), (1, 30.0)) for kind, k in gtp_acting.SAMPLERS
    ]  # fmt: skip
    text = gtp_acting.table(rows[:-1])  # seed 1's euler 40 missing
    assert "| hopper-medium | gtp alone | 0, 1 | 25.0 +- 7.1 |" in text  # sample std of (20, 30)
    assert text.rstrip().endswith("| 35.0 +- 7.1 | 30.0 |"), text  # one seed: no std


def test_context_probe_acts_on_the_last_k_steps_of_the_window():
    from ipd_plugins.policies.base import SequenceActor
    from registry import manager
    from registry.protocols import BuildContext

    context_probe = _script("context_probe")
    ctx = BuildContext(obs_dim=3, act_dim=2, act_low=(-1.0, -1.0), act_high=(1.0, 1.0), seed=0)
    torch.manual_seed(0)
    net_cfg = {"context": 4, "n_layer": 1, "n_embd": 16, "n_head": 2, "max_timestep": 50}
    net = manager.create("policy", "ipd-dt", net_cfg, ctx).net.eval()
    v = lambda obs: obs.sum(-1)  # noqa: E731  (a state-only token, as V(s))
    full = SequenceActor(net, v)
    keep_all = context_probe.ShortContextActor(net, v, keep=4)
    keep_1 = context_probe.ShortContextActor(net, v, keep=1)
    obs = torch.randn(2, 3)
    for actor in (full, keep_all, keep_1):
        actor.reset(obs)
    for t in range(6):
        a_full, a_all, a_1 = full.act(obs), keep_all.act(obs), keep_1.act(obs)
        torch.testing.assert_close(a_all, a_full)  # keep = K is the evaluator's actor
        # keep = 1: the current state alone, at its time in the episode, as a 1-step window
        token = (v(obs) - net.cond_shift) / net.cond_scale
        one = net(
            obs[:, None], torch.zeros(2, 1, 2), token[:, None],
            torch.ones(2, 1, dtype=torch.bool), torch.full((2, 1), t),
        )[:, -1]  # fmt: skip
        torch.testing.assert_close(a_1, one)
        if t > 0:
            assert not torch.allclose(a_1, a_full)  # history changes the action
        obs = torch.randn(2, 3)
    with pytest.raises(ValueError, match=r"keep must be in \[1, 4\]"):
        context_probe.ShortContextActor(net, v, keep=5)


def test_ablations_plot_pairs_each_variant_with_ipd_on_the_same_seeds(tmp_path):
    ablations_plot = _script("ablations_plot")

    def run(folder, dataset, label, seed, score):
        seed_dir = tmp_path / folder / f"{dataset}__x__{zlib.crc32(label.encode()):08x}/seed_{seed}"
        seed_dir.mkdir(parents=True)
        results = {
            "label": label, "seed": seed, "dataset": {"source": dataset},
            "scores": {"policy": {"normalized_mean": score, "mean_return": 1.0}},
        }  # fmt: skip
        (seed_dir / "results.json").write_text(json.dumps(results))

    for seed, (ipd, greedy, two) in enumerate([(50.0, 40.0, 60.0), (60.0, 56.0, 58.0)]):
        run("abl", "hopper-medium", "ipd", seed, ipd)
        run("var", "hopper-medium", "ipd", seed, ipd)  # the same run in a second record
        run("abl", "hopper-medium", "greedy", seed, greedy)
        run("abl", "hopper-medium", "n_aug[augment.n_aug=2]", seed, two)
    run("abl", "hopper-medium", "rtg[policy.target_return=3600]", 0, 30.0)
    run("var", "hopper-medium", "no segments", 1, 45.0)
    run("var", "hopper-medium-replay", "no segments", 0, 20.0)  # no ablation ran there
    run("abl", "halfcheetah-medium-replay", "ipd", 0, 24.0)  # only fig. 3 ran there
    run("abl", "halfcheetah-medium-replay", "rtg[policy.target_return=6000]", 0, 27.0)
    run("var", "halfcheetah-medium-replay", "no segments", 0, 26.0)
    table = ablations_plot.load([str(tmp_path / "abl"), str(tmp_path / "var")])
    assert sorted(table) == ["halfcheetah-medium-replay", "hopper-medium"]
    rows = ablations_plot.groups(table["hopper-medium"])
    assert [x for _, x in rows["n_aug"]] == [None, 0.0, 2.0]  # ipd, then by N_aug
    assert list(ablations_plot.groups(table["halfcheetah-medium-replay"])) == ["rtg"]
    text = ablations_plot.markdown(table)
    # greedy - ipd per seed: -10, -4 -> mean -7, sample std sqrt(18) = 4.24
    assert "| `greedy` | 40.0 | 56.0 | 48.0 +- 11.3 | -7.0 +- 4.2 (2) |" in text
    assert "| `no segments` |  | 45.0 | 45.0 | -15.0 (1) |" in text
    assert "| `rtg[policy.target_return=3600]` | 30.0 |  | 30.0 | -20.0 (1) |" in text
    assert "halfcheetah-medium-replay: V(s) tokens" in text
    assert "halfcheetah-medium-replay: MPC" not in text  # an ablation that did not run there
    assert "halfcheetah-medium-replay: Augmentation" not in text  # `no segments` alone
    ablations_plot.plot(table, tmp_path / "abl.png")
    assert (tmp_path / "abl.png").stat().st_size > 1000
    run("var2", "hopper-medium", "greedy", 0, 41.0)  # the same (label, seed), another score
    with pytest.raises(SystemExit, match="two runs with different scores"):
        ablations_plot.load([str(tmp_path / "abl"), str(tmp_path / "var2")])


def test_table_for_another_grid_checks_issue_26s_goal(tmp_path):
    record = tmp_path / "record"
    for seed in (10, 11):  # ipd ahead of dt and iql on hopper-medium, behind on walker2d
        _record(record, "hopper-medium__qov-pe-gjs-mpc-ipd-dt__aaaaaaaa", seed, 60.0 + seed)
        _record(record, "hopper-medium__baseline-dt__bbbbbbbb", seed, 50.0, baseline="dt")
        _record(record, "hopper-medium__baseline-iql__cccccccc", seed, 40.0, baseline="iql")
        _record(record, "walker2d-medium__qov-pe-gjs-mpc-ipd-dt__dddddddd", seed, 30.0)
        _record(record, "walker2d-medium__baseline-dt__eeeeeeee", seed, 70.0, baseline="dt")
        _record(record, "walker2d-medium__baseline-iql__ffffffff", seed, 20.0, baseline="iql")
        # an IPD variant scores pi_QOP too (its own value stage's): not pooled into ipd's
        _record(
            record, "hopper-medium__qov-pe-gjs-mpc-ipd-dt__gggggggg", seed, 0.0, label="ipd eq26"
        )
    methods = ("ipd", "ipd eq26", "dt", "iql")
    text = scores.write_table(
        str(record), "runs/v2", "default", tmp_path / "v2.md", 50, methods, (10, 11), "Table v2"
    )
    assert text.startswith("# Table v2, profile `default`")
    assert "Recorded: 14 of the 48 planned runs (6 datasets x 2 seeds x 4 methods)" in text
    assert "| dataset | IPD - dt | IPD - iql |" in text  # IPD's variants are not baselines
    assert "| walker2d-medium | -40.0 (+15.5) | +10.0 (+11.2) |" in text  # paper: 89.5-74, -78.3
    assert "**1 of 2** (hopper-medium)" in text and "Not met." in text
    assert "--seeds 10,11 --methods 'ipd,ipd eq26,dt,iql'" in text  # how to rebuild it
    assert "| hopper-medium | 70.5 | 80.5 | 2 |" in text  # pi_QOP of ipd only: 80, 81
    assert "IPD's IQM CI [" in text  # two seeds a dataset: a real interval
    single = tmp_path / "single"
    for d, ipd, dt in [("hopper-medium", 60.0, 50.0), ("walker2d-medium", 30.0, 70.0)]:
        _record(single, f"{d}__qov-pe-gjs-mpc-ipd-dt__aaaaaaaa", 10, ipd)
        _record(single, f"{d}__baseline-dt__bbbbbbbb", 10, dt, baseline="dt")
        _record(single, f"{d}__baseline-iql__cccccccc", 10, 20.0, baseline="iql")
    one_seed = scores.write_table(
        str(single), "runs/v2", "default", tmp_path / "v1.md", 50, methods, (10,), "Table v2"
    )
    assert "CI above DT's: **not measurable yet** (one run per dataset). Not met." in one_seed
    assert "| ipd | 45.0 | - (1 run per dataset) | 2 |" in one_seed


def test_training_log_averages_each_metric_between_curve_points(tmp_path, capsys, monkeypatch):
    stage = tmp_path / "cache" / "policy" / "k"
    stage.mkdir(parents=True)
    rows = ["step,key,value,time"]
    rows += [f"{s},mse,{v},0" for s, v in [(1, 4.0), (2, 2.0), (3, 9.0), (4, 1.0)]]
    rows += ["3,mse,3.0,0", "2,q,5.0,0"]  # step 3 logged again after a resume: the last wins
    rows += ["2,eval_normalized,40.0,0", "4,eval_normalized,50.0,0"]
    (stage / "log.csv").write_text("\n".join(rows) + "\n")
    run = tmp_path / "hopper-medium__x" / "seed_0"
    run.mkdir(parents=True)
    (run / "stages.json").write_text(json.dumps({"policy": {"path": str(stage)}}))
    curve = [{"step": 2, "normalized_mean": 40.0}, {"step": 4, "normalized_mean": 50.0}]
    (run / "results.json").write_text(json.dumps({"label": "ipd", "curve": curve}))
    probe = _script("training_log")
    monkeypatch.setattr(sys, "argv", ["training_log.py", str(run), "--metrics", "mse,q"])
    probe.main()
    out = capsys.readouterr().out
    assert out.startswith("ipd, hopper-medium__x/seed_0")
    assert "| 2 | 3 | 5 | 40.0 |" in out  # mse (4 + 2) / 2, q at step 2 only
    assert "| 4 | 2 | - | 50.0 |" in out  # mse (3 + 1) / 2; no q logged in (2, 4]
    (run / "results.json").write_text(json.dumps({"label": "ipd"}))
    with pytest.raises(SystemExit, match="no curve"):
        probe.main()


def test_lanes_requeue_puts_the_runs_in_flight_before_the_rest_of_the_queue(tmp_path):
    import subprocess

    old = tmp_path / "s1"
    old.mkdir()
    t = "2026-12-05T09:00:00Z"
    (old / "laneA.log").write_text(f"{t} start run a\n{t} end rc=0 run a\n{t} start run b\n")
    (old / "laneB.log").write_text(f"{t} start run c\n{t} end rc=1 run c\n{t} queue empty\n")
    (old / "notes.log").write_text("not a lane log\n")
    (old / "queue.txt").write_text("run d\n# a comment\nrun e\n")
    new = tmp_path / "s2" / "queue.txt"
    lanes = str(BENCHMARKS / "tools" / "lanes.sh")
    done = subprocess.run(
        ["bash", lanes, "--requeue", str(old / "queue.txt"), str(new)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert new.read_text().splitlines() == ["run b", "run d", "# a comment", "run e"]
    assert "3 commands" in done.stdout
    again = subprocess.run(
        ["bash", lanes, "--requeue", str(old / "queue.txt"), str(new)],
        capture_output=True,
        text=True,
    )
    assert again.returncode == 2 and "exists; not overwritten" in again.stderr


def _table_v2_queue_lines(queue, tmp_path, monkeypatch, capsys, record: Path, rows: Path):
    """The queue's lines for ``record`` and ``rows``, checked against what they lack: every
    (dataset, seed) with a trial left gets a sweep line (the short baselines their own too),
    chained with the `dwm` rows it lacks; a recorded run without its row and without its folder
    is trained again with --reproduce. Returns the lines' (full, short, again) sets."""
    import dataclasses
    import re

    from ipd_plugins.sweep import expand, find_finished, load_spec

    wt, out = tmp_path / "wt", tmp_path / "runs"
    argv = ["q", "--worktree", str(wt), "--out", str(out), "--record", str(record)]
    monkeypatch.setattr(sys, "argv", [*argv, "--dwm-rows", str(rows)])
    monkeypatch.chdir(tmp_path)
    queue.main()
    printed = capsys.readouterr()
    lines = printed.out.splitlines()
    spec = load_spec(BENCHMARKS / "experiments" / "table_v2.yaml")
    spec = dataclasses.replace(spec, out=str(out), record=str(record))
    trials = [t for t in expand(spec) if t.error is None]
    left = {(t.seed, t.dataset, t.label) for t in trials if find_finished(t, spec.record) is None}
    have = [json.loads(x) for x in rows.read_text().splitlines() if x.strip()]
    rowed = {(Path(r["run"]).parent.name, Path(r["run"]).name) for r in have}
    no_row = {
        (t.seed, t.dataset, t.label)
        for t in trials
        if t.label in ("ipd", "rebrac")
        and (Path(t.run_dir).parent.name, f"seed_{t.seed}") not in rowed
    }
    full, short, again, dwm = set(), set(), set(), []
    for line in lines:
        assert line.startswith(f"cd {wt} && ") and f"--serial --out {out} " in line, line
        seed, dataset = re.search(r"--seeds (\d+) --datasets (\S+)", line).groups()
        key = (int(seed), dataset)
        if "--methods iql,td3+bc" in line:
            short.add(key)
        elif "--reproduce" in line:
            again.add((*key, re.search(r"--methods '([^']+)'", line).group(1)))
        else:
            full.add(key)
        for run in re.findall(r"--runs (\S+)", line):
            assert run.startswith(str(out)), run
            folder = Path(run)
            label = "rebrac" if "baseline-rebrac" in folder.parent.name else "ipd"
            dwm.append((int(folder.name[5:]), folder.parent.name.split("__")[0], label))
        assert f"--out {rows} " in line or "dwm_scores.py" not in line, line
    assert full == {(s, d) for s, d, m in left if m not in ("iql", "td3+bc")}
    assert short == {(s, d) for s, d, m in left if m in ("iql", "td3+bc")}
    assert again == no_row - left  # recorded, and no folder under the fresh --out
    assert sorted(dwm) == sorted(no_row)  # each missing row once, after its run
    assert bool(lines) != ("nothing left" in printed.err)
    return full, short, again


def test_table_v2_queue_has_a_line_for_each_missing_trial_and_dwm_row(
    tmp_path, monkeypatch, capsys
):
    """On the checkout's record as it stands, and on a copy lacking an `ipd` run (and its row),
    an IQL run, and the `dwm` row of a recorded ReBRAC run."""
    import dataclasses
    import shutil

    from ipd_plugins.sweep import expand, find_finished, load_spec

    queue = _script("table_v2_queue")
    record = BENCHMARKS / "results" / "table_v2_runs"
    _table_v2_queue_lines(queue, tmp_path, monkeypatch, capsys, record, queue.DWM_ROWS)

    trimmed, rows = tmp_path / "record", tmp_path / "rows.jsonl"
    shutil.copytree(record, trimmed)
    spec = load_spec(BENCHMARKS / "experiments" / "table_v2.yaml")
    spec = dataclasses.replace(spec, out=str(tmp_path / "runs"), record=str(trimmed))
    trials = {(t.seed, t.dataset, t.label): t for t in expand(spec) if t.error is None}
    gone = [trials[10, "hopper-medium", "ipd"], trials[11, "walker2d-medium", "iql"]]
    for t in gone:
        done = find_finished(t, spec.record, in_out=False)  # only ever the copy's folders
        if done is not None:
            shutil.rmtree(done.parent)
    unrowed = {Path(trials[12, "halfcheetah-medium", "rebrac"].run_dir).parent.name}
    unrowed.add(Path(gone[0].run_dir).parent.name)
    kept = [
        x
        for x in queue.DWM_ROWS.read_text().splitlines()
        if x.strip() and Path(json.loads(x)["run"]).parent.name not in unrowed
    ]
    rows.write_text("\n".join(kept) + "\n")
    full, short, again = _table_v2_queue_lines(queue, tmp_path, monkeypatch, capsys, trimmed, rows)
    assert (10, "hopper-medium") in full and (11, "walker2d-medium") in short
    assert (12, "halfcheetah-medium", "rebrac") in again
