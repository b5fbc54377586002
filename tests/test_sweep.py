"""`ipd sweep` on Ray with the tiny pendulum dataset: a shared stage made once, a re-run that
does nothing, a killed worker retried to the same result, a sweep across a 2-node cluster."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from tiny import TINY_IPD as TINY

from ipd_plugins.commands import main
from ipd_plugins.sweep import (
    describe,
    estimate_seconds,
    expand,
    find_finished,
    load_spec,
    parse_spec,
    run_sweep,
    select,
)

ROOT = Path(__file__).resolve().parents[1]
MPC = {"set": TINY}
GREEDY = {"set": TINY, "components": {"planner": "greedy"}}


def _spec(folder: Path, out: Path, methods: dict, name: str = "grid") -> Path:
    data = {"out": str(out), "datasets": ["pendulum-medium-replay"], "seeds": [0]}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**data, "methods": methods}, sort_keys=False))
    return path


def _results(out: Path) -> dict[str, dict]:
    return {
        r["label"]: {**r, "_dir": p.parent}
        for p in sorted(out.glob("*/seed_*/results.json"))
        for r in [json.loads(p.read_text())]
    }


def _copy_shared_stages(src: Path, dst: Path) -> None:
    """Seed a fresh out folder with the value, world model and augmentation of ``src`` (keys do
    not depend on where the cache is): the trials there only train their policy."""
    for stage in ("value", "world_model", "augment"):
        shutil.copytree(src / "cache" / stage, dst / "cache" / stage)


@pytest.fixture(scope="module")
def swept(store, tmp_path_factory):
    """`ipd sweep` on a local Ray instance: mpc and greedy (sharing the value function and the
    world model) and a trial with a bad option."""
    folder = tmp_path_factory.mktemp("sweep")
    bad = {"set": [*TINY, "planner.n_mpc=0"]}
    spec = _spec(folder, folder / "runs", {"mpc": MPC, "greedy": GREEDY, "bad": bad})
    args = ["sweep", str(spec), "--num-cpus", "2", "--progress-seconds", "5"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    return folder / "runs", spec, result


def test_local_sweep_makes_a_shared_stage_once_and_a_rerun_does_nothing(swept):
    out, spec, result = swept
    assert result.exit_code == 1, result.output  # the bad trial failed, the others finished
    assert "bad, pendulum-medium-replay, seed 0: invalid: planner.n_mpc must be >= 1" in (
        result.output
    )
    assert "made once, for trials 1, 2" in result.output, result.output
    runs = _results(out)
    assert set(runs) == {"mpc", "greedy"}
    # one value function and one world model, made by their own tasks; each trial reused them
    assert len(list((out / "cache" / "value").iterdir())) == 1
    assert len(list((out / "cache" / "world_model").iterdir())) == 1
    assert len(list((out / "cache" / "augment").iterdir())) == 2
    for r in runs.values():
        assert r["stage_reused"]["value"] and r["stage_reused"]["world_model"]
        assert not r["stage_reused"]["augment"] and not r["stage_reused"]["policy"]
    logs = out / "sweeps" / "grid" / "logs"
    assert len(list(logs.glob("stage-value-*.log"))) == 1
    summary = json.loads((out / "sweeps" / "grid" / "summary.json").read_text())
    assert summary["counts"] == {
        "done": 0, "finished": 2, "failed": 0, "invalid": 1, "cancelled": 0, "not run": 0,
    }  # fmt: skip
    assert len({t["node"] for t in summary["trials"] if t["node"]}) == 1

    # the same command again runs nothing (and starts no Ray)
    again = CliRunner().invoke(main, ["sweep", str(spec)], catch_exceptions=False)
    assert again.output.count("finished earlier") == 2, again.output
    assert "to run" not in again.output and "[value]" not in again.output
    plan = CliRunner().invoke(main, ["sweep", str(spec), "--dry-run"])
    assert "3 trials: 2 done, 0 to run, 1 invalid." in plan.output
    assert "value       trials 1, 2" in plan.output

    from ipd_plugins.compare import load_records

    assert {r.label for r in load_records([out])} == {"mpc", "greedy"}

    # --collect: the finished trials go to the record, a new one is listed, nothing runs
    data = yaml.safe_load(spec.read_text())
    data["record"] = str(spec.parent / "record")
    data["methods"].pop("bad")
    data["methods"]["later"] = {"set": [*TINY, "planner.n_mpc=5"]}
    grown = spec.parent / "grown.yaml"
    grown.write_text(yaml.safe_dump(data, sort_keys=False))
    before = sorted(out.glob("*/seed_*"))
    got = CliRunner().invoke(main, ["sweep", str(grown), "--collect"], catch_exceptions=False)
    counts = "3 trials: 0 finished now, 2 already done, 0 failed, 1 not run"
    assert got.exit_code == 0 and counts in got.output, got.output
    assert {r.label for r in load_records([spec.parent / "record"])} == {"mpc", "greedy"}
    assert sorted(out.glob("*/seed_*")) == before and "[value]" not in got.output

    # --reproduce on Ray: the record's mpc trained again elsewhere, its scores compared
    (kept,) = (spec.parent / "record").glob("*mpc*/seed_0/results.json")
    recorded = kept.read_bytes()
    args = ["sweep", str(grown), "--reproduce", "--methods", "mpc", "--num-cpus", "1",
            "--out", str(spec.parent / "again")]  # fmt: skip
    redo = CliRunner().invoke(main, args, catch_exceptions=False)
    assert redo.exit_code == 0 and "reproduces the record's scores (policy " in redo.output, (
        redo.output
    )
    assert kept.read_bytes() == recorded


def _killer(marker: str):
    """A Ray worker setup hook: the first worker to reach policy step 30 kills itself."""

    def hook() -> None:
        import os
        import signal
        from pathlib import Path

        import ipd_plugins.stages as stages

        original = stages.CurveLogger.__call__

        def call(self, step, values):
            original(self, step, values)
            if self.stage == "policy" and step >= 30 and not Path(marker).exists():
                Path(marker).write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)

        stages.CurveLogger.__call__ = call

    return hook


def test_a_killed_worker_is_retried_and_resumes_to_the_same_result(swept, tmp_path):
    out, _, _ = swept
    new = tmp_path / "runs"
    _copy_shared_stages(out, new)
    marker = tmp_path / "killed"
    lines: list[str] = []
    result = run_sweep(
        load_spec(_spec(tmp_path, new, {"mpc": MPC})),
        num_cpus=1,
        echo=lines.append,
        runtime_env={"worker_process_setup_hook": _killer(str(marker))},
    )
    assert marker.exists(), "no worker was killed"
    (outcome,) = result.outcomes
    assert outcome.status == "finished", lines
    (log,) = (new / "sweeps" / "grid" / "logs").glob("trial-*.log")
    assert "[policy] resuming" in log.read_text()
    resumed, reference = _results(new)["mpc"], _results(out)["mpc"]
    np.testing.assert_allclose(
        resumed["scores"]["policy"]["returns"], reference["scores"]["policy"]["returns"], rtol=1e-4
    )


def test_a_local_sweeps_trials_run_at_the_drivers_priority():
    import ray

    from ipd_plugins.sweep.ray_driver import _init_ray

    def niceness() -> int:
        return os.nice(0)

    assert _init_ray(None, 1, None), "Ray was already running"
    try:
        assert ray.get(ray.remote(niceness).remote()) == niceness()  # Ray's default is +15
    finally:
        ray.shutdown()


def test_a_sweep_across_a_two_node_cluster(swept, tmp_path):
    from ray.cluster_utils import Cluster

    out, _, _ = swept
    new = tmp_path / "runs"
    _copy_shared_stages(out, new)
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        spec = load_spec(_spec(tmp_path, new, {"mpc": MPC, "greedy": GREEDY}))
        result = run_sweep(spec, address=cluster.address, echo=lambda m: None)
    finally:
        cluster.shutdown()
    assert [o.status for o in result.outcomes] == ["finished", "finished"]
    assert len({o.node for o in result.outcomes}) == 2  # one trial on each node
    for label, r in _results(new).items():  # and the same scores as the local sweep's
        assert (
            r["scores"]["policy"]["returns"] == _results(out)[label]["scores"]["policy"]["returns"]
        )


def test_a_ray_trial_another_sweep_finished_meanwhile_is_not_run_again(
    swept, tmp_path, monkeypatch
):
    """A Ray task runs its trial under the trial's claim: one that another sweep on the same
    out finished after this sweep was planned is reported done, its results kept, not trained
    again (the serial executor's test above covers the waiting)."""
    from ipd_plugins.sweep import engine

    out, _, _ = swept
    new = tmp_path / "runs"
    _copy_shared_stages(out, new)
    spec = load_spec(_spec(tmp_path, new, {"mpc": MPC}))
    (trial,) = expand(spec)
    finished = Path(trial.run_dir) / "results.json"
    finished.parent.mkdir(parents=True)
    shutil.copy(_results(out)["mpc"]["_dir"] / "results.json", finished)
    before = finished.read_bytes()
    monkeypatch.setattr(engine, "find_finished", lambda *a, **k: None)  # planned: not finished
    lines: list[str] = []
    (outcome,) = run_sweep(spec, num_cpus=1, echo=lines.append).outcomes
    assert outcome.status == "done", lines
    assert any(
        "mpc, pendulum-medium-replay, seed 0: finished by another process" in x for x in lines
    )
    assert finished.read_bytes() == before
    (log,) = (new / "sweeps" / "grid" / "logs").glob("trial-*.log")
    assert "[policy]" not in log.read_text()


def test_reproduce_trains_a_recorded_run_again_and_keeps_the_record(store, tmp_path):
    """A run whose folder was lost is only in the record: `--reproduce` trains it again into
    --out, says whether the scores are the record's, and never replaces the record's copy."""
    data = {
        "out": str(tmp_path / "runs"),
        "record": str(tmp_path / "record"),
        "datasets": ["pendulum-medium-replay"],
        "seeds": [0],
        "methods": {"mpc": MPC},
    }
    spec = tmp_path / "grid.yaml"
    spec.write_text(yaml.safe_dump(data, sort_keys=False))

    def sweep(*args: str) -> str:
        got = CliRunner().invoke(main, ["sweep", str(spec), *args], catch_exceptions=False)
        assert got.exit_code == 0, got.output
        return got.output

    sweep("--serial")
    (kept,) = (tmp_path / "record").glob("*/seed_0/results.json")
    recorded = kept.read_bytes()
    policy = json.loads(recorded)["scores"]["policy"]["normalized_mean"]
    lost = ["--out", str(tmp_path / "elsewhere")]  # the first run's folder is not there
    assert "finished earlier" in sweep("--serial", *lost)  # without the flag: done in the record
    assert "1 trials: 0 done, 1 to run" in sweep("--dry-run", "--reproduce", *lost)
    again = sweep("--serial", "--reproduce", *lost)
    assert "1 finished now" in again
    assert f"reproduces the record's scores (policy {policy:.2f}" in again, again
    assert "against the record: 1 of 1 reproduce its scores" in again
    assert kept.read_bytes() == recorded  # the first result stands (its wall times too)

    # a record that another machine wrote, with other scores: kept, and the difference named
    other = json.loads(recorded)
    other["scores"]["policy"]["normalized_mean"] = policy + 5.0
    other["scores"]["policy"]["returns"][0] += 1.0
    kept.write_text(json.dumps(other))
    differs = sweep("--serial", "--reproduce", *lost)  # finished in --out: checked, not run
    assert f"differs from the record, which is kept ({kept}): policy {policy + 5:.2f} -> " in (
        differs
    ), differs
    assert json.loads(kept.read_text()) == other
    assert "against the record: 0 of 1 reproduce its scores" in differs

    # a record written before a config field was added: another hash, the same run
    older = kept.parent.parent.with_name(kept.parent.parent.name.rsplit("__", 1)[0] + "__0ld")
    kept.parent.parent.rename(older)
    lost = ["--out", str(tmp_path / "third")]
    assert "finished earlier" in sweep("--serial", *lost)
    third = sweep("--serial", "--reproduce", *lost)
    assert "1 finished now" in third and "differs from the record, which is kept (" in third
    assert [p.name for p in (tmp_path / "record").iterdir()] == [older.name]  # no second copy
    bare = tmp_path / "bare.yaml"
    bare.write_text(yaml.safe_dump({k: v for k, v in data.items() if k != "record"}))
    got = CliRunner().invoke(main, ["sweep", str(bare), "--reproduce", "--serial"])
    assert got.exit_code == 2 and "bare.yaml names no record" in got.output, got.output


def test_two_serial_sweeps_split_the_trials_by_claiming_run_folders(tmp_path, monkeypatch):
    """A trial whose run folder another process claims is put off while another can run; found
    finished by that process later, it is not run again; when only claimed trials are left, the
    first is waited for and, if that process died without finishing it, run here."""
    from ipd_plugins.stages import stage_lock
    from ipd_plugins.sweep import engine
    from ipd_plugins.sweep.spec import Trial
    from ipd_plugins.sweep.trials import claim_path

    out = tmp_path / "runs"
    config = {"run": {"out_dir": str(out)}}
    trials = [
        Trial(i, f"m{i}", "ipd", "d", 0, config, str(out / f"m{i}__0" / "seed_0"))
        for i in (1, 2, 3)
    ]
    other = {i: contextlib.ExitStack() for i in (1, 3)}  # the other process runs trials 1 and 3
    for i, claim in other.items():
        claim.enter_context(stage_lock(claim_path(trials[i - 1])))
    ran, lines = [], []

    def write_results(t: Trial) -> None:
        (Path(t.run_dir) / "results.json").write_text(json.dumps({"scores": {}}))

    def run_trial(t: Trial, echo, progress) -> None:
        ran.append(t.index)
        if t.index == 2:  # meanwhile the other process finishes trial 1
            write_results(trials[0])
            other[1].close()
        write_results(t)

    def echo(line: str) -> None:
        lines.append(line)
        if "m3, d, seed 0: another process is running it; waiting for it" in line:
            other[3].close()  # ... and dies on trial 3 without finishing it

    monkeypatch.setattr(engine, "run_trial", run_trial)
    outcomes = engine.run_trials(trials, executor="serial", echo=echo)
    assert ran == [2, 3], lines
    assert [o.status for o in outcomes] == ["done", "finished", "finished"]
    assert any("m1, d, seed 0: finished by another process" in x for x in lines), lines
    assert any("waiting for it" in x for x in lines), lines


def test_a_serial_trial_that_fails_is_reported_and_the_next_runs(tmp_path, monkeypatch):
    from ipd_plugins.sweep import engine
    from ipd_plugins.sweep.spec import Trial

    out = tmp_path / "runs"
    config = {"run": {"out_dir": str(out)}}
    trials = [
        Trial(i, f"m{i}", "ipd", "d", 0, config, str(out / f"m{i}__0" / "seed_0")) for i in (1, 2)
    ]

    def run_trial(t: Trial, echo, progress) -> None:
        if t.index == 1:
            raise ValueError("diverged\nat step 3")
        (Path(t.run_dir) / "results.json").write_text(json.dumps({"scores": {}}))

    monkeypatch.setattr(engine, "run_trial", run_trial)
    lines: list[str] = []
    outcomes = engine.run_trials(trials, executor="serial", echo=lines.append)
    assert [o.status for o in outcomes] == ["failed", "finished"]
    assert outcomes[0].error == "ValueError: diverged"
    assert "[sweep] m1, d, seed 0: failed: ValueError: diverged" in lines


def test_the_score_table_spec_is_the_72_runs_of_scores_py():
    spec = load_spec(ROOT / "benchmarks" / "experiments" / "scores.yaml")
    trials = expand(spec)
    assert len(trials) == 72 and not any(t.error for t in trials)
    path = ROOT / "benchmarks" / "experiments" / "scores.py"
    module_spec = importlib.util.spec_from_file_location("ipd_bench_scores_sweep", path)
    scores = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(scores)
    planned = {
        (m, d, s): str(scores.planned(m, d, s, spec.profile, spec.out, 1)[0])
        for d in scores.DATASETS
        for s in scores.SEEDS
        for m in scores.METHODS
    }
    assert {(t.label, t.dataset, t.seed): t.run_dir for t in trials} == planned
    finished = {t.index: find_finished(t, str(ROOT / spec.record)) for t in trials}
    text = describe(trials, finished, spec)
    assert "72 trials" in text and "shared by several trials: none" in text
    assert "value 18, world_model 18, augment 18, policy 18, baseline 54" in text


def test_a_slice_of_the_tuning_spec_keeps_its_run_folders():
    spec = load_spec(ROOT / "benchmarks" / "experiments" / "tuning.yaml")
    whole = {(t.label, t.dataset, t.seed): t.run_dir for t in expand(spec)}
    assert len(whole) == 54 and not any(t.error for t in expand(spec))
    grids = (("budget", 18), ("ablations", 33), ("fig3_hcr", 18), ("variants", 99))
    for name, n in grids:  # issue 26's grids
        other = expand(load_spec(ROOT / "benchmarks" / "experiments" / f"{name}.yaml"))
        assert len(other) == n and not any(t.error for t in other), name
        if name != "budget":  # its `ipd` trains 20k steps; these reuse the tuning grid's runs
            ipd = {(t.dataset, t.seed): t.run_dir for t in other if t.label == "ipd"}
            assert ipd == {k: whole["ipd", *k] for k in ipd}, name
            assert len(ipd) == {"ablations": 3, "fig3_hcr": 3, "variants": 9}[name]
    table = expand(load_spec(ROOT / "benchmarks" / "experiments" / "table_v2.yaml"))
    assert len(table) == 144 and not any(t.error for t in table)
    assert {t.seed for t in table} == {10, 11, 12}  # seeds no tuning has seen
    part = select(spec, ["hopper-medium-replay"], [1, 2], ["ipd", "gtp alone"])
    trials = expand(part)
    assert [(t.label, t.seed) for t in trials] == [
        ("ipd", 1), ("gtp alone", 1), ("ipd", 2), ("gtp alone", 2)
    ]  # fmt: skip
    assert all(whole[t.label, t.dataset, t.seed] == t.run_dir for t in trials)
    assert select(spec) == spec
    with pytest.raises(ValueError, match="no method 'gtp'; the spec's methods: 'ipd'"):
        select(spec, methods=["gtp"])
    with pytest.raises(ValueError, match="no seed 7"):
        select(spec, seeds=[7])
    out = CliRunner().invoke(
        main, ["sweep", str(ROOT / "benchmarks/experiments/tuning.yaml"), "--dry-run",
               "--methods", "dt", "--seeds", "0", "--datasets", "hopper-medium"],
    )  # fmt: skip
    assert out.exit_code == 0 and "1 trials: " in out.output and "baseline-dt" in out.output


def test_the_dry_run_estimates_the_time_left_from_the_finished_trials(tmp_path):
    spec = load_spec(ROOT / "benchmarks" / "experiments" / "tuning.yaml")
    part = select(spec, ["hopper-medium", "hopper-medium-replay"], [0, 1], ["iql", "dt", "ipd"])
    trials = expand(part)
    at = {(t.label, t.dataset, t.seed): t for t in trials}
    finished = {t.index: None for t in trials}

    def done(label, dataset, seed, wall):
        path = tmp_path / f"{label}-{dataset}-{seed}" / "results.json"
        path.parent.mkdir()
        path.write_text(json.dumps({"wall_seconds": wall}))
        finished[at[label, dataset, seed].index] = path

    done("iql", "hopper-medium", 0, 100.0)
    done("iql", "hopper-medium-replay", 0, 500.0)
    done("dt", "hopper-medium", 0, 1000.0)
    done("dt", "hopper-medium", 1, 2000.0)
    # iql: each dataset's own finished trial; dt on hopper-medium-replay: dt's mean anywhere
    # (1500, twice); ipd: no finished trial, not counted
    assert estimate_seconds(trials, finished) == (100 + 500 + 2 * 1500, 8, 4)
    text = describe(trials, finished, part)
    assert "estimate: ~1h00m of trial time for the 8 to run" in text
    assert "4 with none of their method not counted" in text
    none_done = describe(trials, {t.index: None for t in trials}, part)
    assert "estimate: none (no trial to run has a finished trial of its method)" in none_done
    # a grid's trials take the pace of their method's other grid points
    ablations = load_spec(ROOT / "benchmarks" / "experiments" / "ablations.yaml")
    rtg = expand(select(ablations, seeds=[0, 1], methods=["rtg"]))
    assert len(rtg) == 10 and len({t.label for t in rtg}) == 5
    finished = {t.index: None for t in rtg}  # `done` writes into the new maps
    at = {(t.label, t.dataset, t.seed): t for t in rtg}
    done(rtg[0].label, "hopper-medium", 0, 600.0)
    assert estimate_seconds(rtg, finished) == (9 * 600.0, 9, 0)


def test_bad_specs_fail_with_a_sentence(tmp_path):
    base = {"datasets": ["pendulum-medium-replay"], "methods": {"ipd": {}}}
    with pytest.raises(ValueError, match="unknown key.*a spec takes"):
        parse_spec({**base, "seed": [0]})
    with pytest.raises(ValueError, match="unknown baseline 'iqll'"):
        parse_spec({**base, "methods": {"x": {"baseline": "iqll"}}})
    with pytest.raises(ValueError, match="grid.*unknown section 'plan'"):
        parse_spec({**base, "methods": {"x": {"grid": {"plan.n_mpc": [1, 2]}}}})
    with pytest.raises(ValueError, match="num_cpus must be > 0"):
        parse_spec({**base, "resources": {"num_cpus": 0}})
    with pytest.raises(ValueError, match="methods.awr 1, alpha 0: a method label may not contain"):
        parse_spec({**base, "methods": {"awr 1, alpha 0": {}}})  # `--methods` splits on commas
    two = parse_spec({**base, "methods": {"a": {}, "b": {}}})
    with pytest.raises(ValueError, match="are the same run"):
        expand(two)
    spec = tmp_path / "s.yaml"
    spec.write_text("datasets: [x]\nmethods: !!python/object/apply:os.system [echo]\n")
    result = CliRunner().invoke(main, ["sweep", str(spec), "--dry-run"])
    assert result.exit_code == 2 and "plain values only" in result.output


def test_ipd_run_does_not_import_ray():
    code = (
        "import sys; import ipd_plugins.commands, ipd_plugins.pipeline, ipd_plugins.sweep, "
        "ipd_plugins.ablations; assert 'ray' not in sys.modules, 'ray imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
