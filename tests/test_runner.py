"""The augment-then-distill runner end to end on a tiny Pendulum dataset (seconds per run)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from tiny import TINY_IPD as TINY

from ipd_plugins.commands import main


def _run(out: Path, *extra: str) -> str:
    args = ["run", "--dataset", "pendulum-medium-replay", "--out", str(out), "--quiet"]
    for item in TINY:
        args += ["--set", item]
    result = CliRunner().invoke(main, [*args, *extra], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _run_dir(out: Path, planner: str = "mpc") -> Path:
    (run,) = [p for p in out.iterdir() if p.name != "cache" and f"-{planner}-" in p.name]
    return run / "seed_0"


def test_run_writes_every_artifact_and_reuses_stages(store, tmp_path):
    out = tmp_path / "runs"
    log = _run(out)
    run_dir = _run_dir(out)
    for name in ("config.yaml", "stages.json", "results.json", "eval.json"):
        assert (run_dir / name).exists(), name
    stages = json.loads((run_dir / "stages.json").read_text())
    assert set(stages) == {"value", "world_model", "augment", "policy"}
    for stage in stages.values():
        folder = Path(stage["path"])
        assert (folder / "done.json").exists() and not stage["reused"]
    assert (Path(stages["augment"]["path"]) / "segments.npz").exists()
    assert (Path(stages["policy"]["path"]) / "log.csv").exists()
    assert any((run_dir / "tb").rglob("events.out.tfevents.*"))
    results = json.loads((run_dir / "results.json").read_text())
    assert results["augment"]["selected"] > 0 and results["augment"]["imagined_steps_kept"] > 0
    assert results["scores"]["policy"]["n_episodes"] == 2
    assert results["scores"]["policy"]["normalized_mean"] is not None
    assert "qop" in results["scores"]
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["components"]["planner"] == "mpc" and config["planner"]["n_mpc"] == 3
    assert config["meta"]["dataset_hash"] == results["dataset"]["hash"]
    assert "torch" in config["meta"]["versions"]
    assert config["meta"]["machine"].endswith(" cores")  # the CPU: datasets made differ by CPU
    assert "normalised" in log

    # An ablation that changes only the planner reuses the value function and the world model.
    log = _run(out, "--planner", "greedy")
    stages = json.loads((_run_dir(out, "greedy") / "stages.json").read_text())
    assert stages["value"]["reused"] and stages["world_model"]["reused"]
    assert not stages["augment"]["reused"] and not stages["policy"]["reused"]
    assert "[value] reusing" in log and "[world_model] reusing" in log

    # Replaying the written config reuses everything and gives the same scores.
    first = json.loads((run_dir / "results.json").read_text())
    result = CliRunner().invoke(main, ["run", "--config", str(run_dir / "config.yaml"), "--quiet"])
    assert result.exit_code == 0, result.output
    again = json.loads((run_dir / "results.json").read_text())
    assert all(again["stage_reused"].values())
    assert again["scores"]["policy"]["returns"] == first["scores"]["policy"]["returns"]

    # `ipd eval` re-evaluates the finished run with the same evaluator.
    result = CliRunner().invoke(main, ["eval", str(run_dir), "--episodes", "2"])
    assert result.exit_code == 0, result.output
    evaluated = json.loads((run_dir / "eval.json").read_text())
    assert evaluated["policy"]["returns"] == first["scores"]["policy"]["returns"]


def test_interrupted_stage_resumes_to_the_same_result(store, tmp_path, monkeypatch):
    import ipd_plugins.stages as runner

    _run(tmp_path / "a")
    reference = json.loads((_run_dir(tmp_path / "a") / "results.json").read_text())

    original = runner.CurveLogger.__call__

    def crash_in_policy(self, step, values):
        original(self, step, values)
        if self.stage == "policy" and step >= 30:
            raise RuntimeError("killed mid-stage")

    monkeypatch.setattr(runner.CurveLogger, "__call__", crash_in_policy)
    with pytest.raises(RuntimeError, match="killed mid-stage"):
        _run(tmp_path / "b", "--debug")  # --debug: the error propagates instead of `Error:`
    run_dir = _run_dir(tmp_path / "b")
    assert not (run_dir / "results.json").exists()
    monkeypatch.setattr(runner.CurveLogger, "__call__", original)
    log = _run(tmp_path / "b")
    assert "[value] reusing" in log and "[augment] reusing" in log
    assert "[policy] resuming" in log
    resumed = json.loads((run_dir / "results.json").read_text())
    # the time of the killed process counts: the stages it made, and the policy's checkpoint
    stages = json.loads((run_dir / "stages.json").read_text())
    assert stages["policy"]["resumed_seconds"] > 0
    assert {s["run"] for s in stages.values()} == {str(run_dir.resolve())}
    assert resumed["wall_seconds"] >= sum(resumed["stage_seconds"].values())
    np.testing.assert_allclose(
        resumed["scores"]["policy"]["returns"], reference["scores"]["policy"]["returns"], rtol=1e-4
    )


def test_bad_options_fail_with_a_sentence(store, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["run", "--planner", "nope", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "known planner names: greedy, mpc" in result.output
    result = runner.invoke(main, ["run", "--set", "planner.n_mpcc=3", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "valid options" in result.output
    result = runner.invoke(main, ["run", "--set", "oops", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "SECTION.KEY=VALUE" in result.output
    result = runner.invoke(main, ["run", "--set", "planner.n_mpc=0", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "n_mpc must be >= 1" in result.output


def test_export_augmented_run_as_minari(store, tmp_path):
    import minari

    from ipd_plugins.data.minari_io import from_minari

    out = tmp_path / "runs"
    _run(out)
    run_dir = _run_dir(out)
    result = CliRunner().invoke(main, ["data", "export", str(run_dir), "test/pendulum/aug-v0"])
    assert result.exit_code == 0, result.output
    results = json.loads((run_dir / "results.json").read_text())
    kept = results["augment"]["imagined_steps_kept"]
    assert f"({kept} imagined)" in result.output
    back = from_minari("test/pendulum/aug-v0")
    assert back.extras["imagined"].sum() == kept
    assert (
        back.n_steps
        == results["dataset"]["steps"]
        + len(back.extras["imagined"])
        - (results["dataset"]["steps"])
    )
    assert minari.load_dataset("test/pendulum/aug-v0").total_steps == back.n_steps
    again = CliRunner().invoke(main, ["data", "export", str(run_dir), "test/pendulum/aug-v0"])
    assert again.exit_code != 0 and "exists" in again.output
