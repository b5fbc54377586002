"""`run.eval_every`: a curve point at step k is the final score of a k-step run (ipd-dt, DT),
and scoring it changes nothing in training."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from tiny import TINY_DT_BASELINE, TINY_IPD

from ipd_plugins.commands import main
from ipd_plugins.curve import isolated, read_curve

BASELINE = [
    "baseline.hidden=32",
    "baseline.checkpoint_every=20",
    "baseline.log_every=10",
    *TINY_DT_BASELINE,
    "run.eval_episodes=2",
    "run.threads=1",
]


def _invoke(args: list[str], sets: list[str], *extra: str):
    for item in [*sets, *extra]:
        args += ["--set", item]
    return CliRunner().invoke(main, args)


def _ipd(out: Path, *extra: str):
    args = ["run", "--out", str(out), "--quiet", "--dataset", "pendulum-medium-replay"]
    result = _invoke(args, TINY_IPD, *extra)
    assert result.exit_code == 0, result.output
    (path,) = out.glob("*/seed_0/results.json")
    results = json.loads(path.read_text())
    path.unlink()  # the next run in `out` writes its own
    stages = json.loads((path.parent / "stages.json").read_text())
    return results, stages


def _baseline(out: Path, *extra: str):
    args = ["baseline", "dt", "--out", str(out), "--dataset", "pendulum-medium-replay"]
    result = _invoke(args, BASELINE, *extra)
    assert result.exit_code == 0, result.output
    (path,) = out.glob("*__baseline-dt__*/seed_0/results.json")
    return json.loads(path.read_text())


@pytest.fixture
def greedy_score(monkeypatch):
    """Scoring that draws from torch's, numpy's and Python's global RNGs, as an environment or
    an actor may: a curve point that did so outside :func:`isolated` would change training."""
    import ipd_plugins.baselines.run as baseline_run
    import ipd_plugins.pipeline as pipeline
    from ipd_plugins.evaluate import score

    def drawing(*args, **kwargs):
        torch.rand(7), np.random.rand(7), random.random()
        return score(*args, **kwargs)

    monkeypatch.setattr(pipeline, "score", drawing)
    monkeypatch.setattr(baseline_run, "score", drawing)


def _point(curve: list[dict], step: int) -> dict:
    (point,) = [p for p in curve if p["step"] == step]
    return point


def _same_score(point: dict, final: dict) -> None:
    """A curve point and a final evaluation agree exactly (not approximately)."""
    assert point["normalized_mean"] == final["normalized_mean"]
    assert point["normalized_std"] == final["normalized_std"]
    assert point["mean_return"] == final["mean_return"]
    assert point["n_episodes"] == final["n_episodes"] == 2


def _weights(stages: dict) -> dict[str, torch.Tensor]:
    return torch.load(Path(stages["policy"]["path"]) / "weights.pt", weights_only=True)


def test_an_ipd_curve_point_is_the_score_of_a_shorter_run(store, tmp_path, greedy_score):
    out = tmp_path / "runs"
    curved, stages = _ipd(out, "policy.n_steps=20", "run.eval_every=10")
    assert [p["step"] for p in curved["curve"]] == [10, 20]
    final = curved["scores"]["policy"]
    _same_score(_point(curved["curve"], 20), final)
    weights = _weights(stages)

    # reused: the curve comes from the stage's log.csv
    again, _ = _ipd(out, "policy.n_steps=20", "run.eval_every=10")
    assert again["stage_reused"]["policy"] and again["curve"] == curved["curve"]

    # the same 20 steps without curve points: the same weights. The curve is in the policy's
    # stage key (a stage without its points is not reused for a curve), not upstream.
    plain, plain_stages = _ipd(out, "policy.n_steps=20")
    assert "curve" not in plain and not plain["stage_reused"]["policy"]
    assert (
        plain["stage_reused"]["augment"]
        and plain_stages["policy"]["key"] != stages["policy"]["key"]
    )
    for name, tensor in _weights(plain_stages).items():
        assert torch.equal(tensor, weights[name]), name
    assert plain["scores"]["policy"]["returns"] == final["returns"]

    # a 10-step run's final score is the point at step 10
    short, _ = _ipd(out, "policy.n_steps=10")
    _same_score(_point(curved["curve"], 10), short["scores"]["policy"])


def test_a_dt_baseline_curve_point_is_the_score_of_a_shorter_run(store, tmp_path, greedy_score):
    curved = _baseline(tmp_path / "a", "baseline.n_steps=20", "run.eval_every=10")
    assert [p["step"] for p in curved["curve"]] == [10, 20]
    _same_score(_point(curved["curve"], 20), curved["scores"]["policy"])
    plain = _baseline(tmp_path / "b", "baseline.n_steps=20")
    assert "curve" not in plain
    assert plain["scores"]["policy"]["returns"] == curved["scores"]["policy"]["returns"]
    assert plain["train"]["loss"] == curved["train"]["loss"]
    short = _baseline(tmp_path / "c", "baseline.n_steps=10")
    _same_score(_point(curved["curve"], 10), short["scores"]["policy"])


def test_eval_every_off_the_log_steps_fails_before_training(store, tmp_path):
    out = tmp_path / "runs"
    args = ["run", "--out", str(out), "--quiet", "--dataset", "pendulum-medium-replay"]
    result = _invoke(args, TINY_IPD, "run.eval_every=15")
    assert result.exit_code != 0
    assert "run.eval_every=15" in result.output and "policy.log_every=10" in result.output
    args = ["baseline", "dt", "--out", str(out), "--dataset", "pendulum-medium-replay"]
    result = _invoke(args, BASELINE, "run.eval_every=25")
    assert result.exit_code != 0
    assert "run.eval_every=25" in result.output and "baseline.log_every=10" in result.output
    assert not (out / "cache").exists()


def test_read_curve_keeps_the_last_row_of_each_step(tmp_path):
    log = tmp_path / "log.csv"
    rows = [
        "step,key,value,time",
        "10,loss,1.0,0",
        "10,eval_normalized,5.0,0",  # a point from before the curve format: left out
        "20,eval_normalized,1.0,0",
        "20,eval_normalized_std,0.5,0",
        "20,eval_return,-100.0,0",
        "20,eval_return_std,3.0,0",
        "20,eval_episodes,2,0",
        "30,eval_return,-50.0,0",  # not a multiple of eval_every
        "20,eval_normalized,2.0,1",  # resumed: the stage logged step 20 again
        "20,eval_normalized_std,0.25,1",
        "20,eval_return,-90.0,1",
        "20,eval_return_std,3.0,1",
        "20,eval_episodes,2,1",
        "40,eval_normalized,-7.0,1",  # no reference scores: the mean return, no std
        "40,eval_return,-7.0,1",
        "40,eval_return_std,1.0,1",
        "40,eval_episodes,2,1",
    ]
    log.write_text("\n".join(rows) + "\n")
    assert read_curve(log, 20) == [
        {"step": 20, "normalized_mean": 2.0, "normalized_std": 0.25, "mean_return": -90.0,
         "std_return": 3.0, "n_episodes": 2},
        {"step": 40, "normalized_mean": None, "normalized_std": None, "mean_return": -7.0,
         "std_return": 1.0, "n_episodes": 2},
    ]  # fmt: skip
    assert read_curve(tmp_path / "missing.csv", 20) == [] and read_curve(log, 0) == []


def test_isolated_restores_every_random_stream_and_module_mode():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))

    class Owner:
        def __init__(self):
            self.net = net

    net.train()
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    with isolated(Owner()):
        torch.rand(5), np.random.rand(5), random.random()
        net.eval()
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert got[2] == expected[2]
    assert all(m.training for m in net.modules())
    with pytest.raises(RuntimeError), isolated(net):  # restored on an error too
        net.eval()
        raise RuntimeError
    assert all(m.training for m in net.modules())
