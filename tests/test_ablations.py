"""`ipd ablate planner|n-aug|rtg` and `ipd run --seeds` on the tiny pendulum dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from tiny import TINY_IPD as TINY

from ipd_plugins.ablations import n_aug_variants, parse_targets, rtg_variants
from ipd_plugins.commands import main


def _invoke(*args: str, check: bool = True):
    full = list(args)
    for item in TINY:
        full += ["--set", item]
    result = CliRunner().invoke(main, full, catch_exceptions=not check)
    if check:
        assert result.exit_code == 0, result.output
    return result


def _ablate(kind: str, out: Path, *extra: str, check: bool = True):
    return _invoke(
        "ablate", kind, "--dataset", "pendulum-medium-replay", "--out", str(out), "--quiet",
        "--reps", "200", *extra, check=check,
    )  # fmt: skip


def _results(out: Path) -> list[dict]:
    return [
        {**json.loads(p.read_text()), "_dir": p.parent}
        for p in sorted(out.glob("*/seed_*/results.json"))
    ]


def _stages(run_dir: Path) -> dict:
    return json.loads((run_dir / "stages.json").read_text())


def test_planner_ablation_trains_value_and_world_model_once_per_seed(store, tmp_path):
    out = tmp_path / "runs"
    result = _ablate("planner", out, "--seeds", "0,1", "--set", "augment.n_aug=0.5")
    runs = _results(out)
    assert sorted((r["label"], r["seed"]) for r in runs) == [
        ("greedy", 0), ("greedy", 1), ("mpc", 0), ("mpc", 1),
    ]  # fmt: skip
    for r in runs:
        assert r["ablation"]["kind"] == "planner"
        assert r["components"]["planner"] == r["label"]
        stages = _stages(r["_dir"])
        if r["label"] == "greedy":  # runs after mpc within its seed: value + world model reused
            assert stages["value"]["reused"] and stages["world_model"]["reused"]
            assert not stages["augment"]["reused"]
        else:
            assert not stages["value"]["reused"]
    # one value function and one world model per seed in the cache
    assert len(list((out / "cache" / "value").iterdir())) == 2
    assert len(list((out / "cache" / "world_model").iterdir())) == 2
    md = out / "ablations" / "planner__pendulum-medium-replay.md"
    text = md.read_text()
    assert "MPC vs greedy augmentation (paper fig. 2)" in text
    assert "| dataset | mpc | greedy |" in text and "(n=2)" in text
    assert md.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert text in result.output

    # a second call runs nothing again: every variant has finished
    again = _ablate("planner", out, "--seeds", "0,1", "--set", "augment.n_aug=0.5")
    assert again.output.count("finished earlier") == 4 and "[value]" not in again.output


def test_n_aug_ablation_sweeps_the_augmentation_ratio(store, tmp_path):
    out = tmp_path / "runs"
    _ablate("n-aug", out, "--seeds", "0", "--values", "0,0.5")
    runs = {r["label"]: r for r in _results(out)}
    assert set(runs) == {"N_aug=0", "N_aug=0.5"}
    assert runs["N_aug=0"]["augment"]["selected"] == 0
    assert runs["N_aug=0.5"]["augment"]["selected"] > 0
    assert runs["N_aug=0.5"]["ablation"]["x"] == 0.5
    config = yaml.safe_load((runs["N_aug=0.5"]["_dir"] / "config.yaml").read_text())
    assert config["augment"]["n_aug"] == 0.5
    # the second variant reused the first one's value function and world model
    stages = _stages(runs["N_aug=0.5"]["_dir"])
    assert stages["value"]["reused"] and stages["world_model"]["reused"]
    md = out / "ablations" / "n-aug__pendulum-medium-replay.md"
    assert "| dataset | N_aug=0 | N_aug=0.5 |" in md.read_text()
    assert md.with_suffix(".png").exists()
    result = _ablate("n-aug", out, "--values", "0,-1", check=False)
    assert result.exit_code == 2 and ">= 0" in result.output


def test_rtg_ablation_compares_value_conditioning_with_hand_set_targets(store, tmp_path):
    out = tmp_path / "runs"
    _ablate("rtg", out, "--seeds", "0", "--targets", "1x,-300", "--set", "augment.n_aug=0.5")
    runs = {r["label"]: r for r in _results(out)}
    from ipd_plugins.data.sources import resolve_dataset

    best = float(resolve_dataset("pendulum-medium-replay").episode_returns().max())  # 1x
    assert set(runs) == {"V(s) ipd-dt", f"RTG={best:.4g}", "RTG=-300"}
    assert runs["V(s) ipd-dt"]["components"]["policy"] == "ipd-dt"
    dt_dir = runs["RTG=-300"]["_dir"]
    config = yaml.safe_load((dt_dir / "config.yaml").read_text())
    assert config["components"]["policy"] == "dt" and config["policy"]["target_return"] == -300
    # one augmentation, and one trained dt asked for both targets (read only when acting)
    assert _stages(runs[f"RTG={best:.4g}"]["_dir"])["augment"]["reused"]
    assert not _stages(runs[f"RTG={best:.4g}"]["_dir"])["policy"]["reused"]
    assert _stages(dt_dir)["policy"]["reused"]
    assert len(list((out / "cache" / "augment").iterdir())) == 1
    assert len(list((out / "cache" / "policy").iterdir())) == 2  # ipd-dt and dt
    text = (out / "ablations" / "rtg__pendulum-medium-replay.md").read_text()
    assert "V(s) conditioning vs hand-set return-to-go (paper fig. 3)" in text
    result = _ablate("rtg", out, "--targets", "high", check=False)
    assert result.exit_code == 2 and "neither a number" in result.output


def test_variant_builders_and_targets_by_hand():
    returns = [-1000.0, -200.0, -600.0]
    # Fx = min + F (max - min): 0.5x -> -600, 1x -> -200, 2x -> 600; plain numbers pass through
    assert parse_targets("0.5x, 1x,2x,3600", returns) == [-600.0, -200.0, 600.0, 3600.0]
    with pytest.raises(ValueError, match="comma-separated"):
        parse_targets(" , ", returns)
    variants = n_aug_variants([0, 2])
    assert [(v.label, v.overrides, v.x) for v in variants] == [
        ("N_aug=0", {"augment": {"n_aug": 0.0}}, 0.0),
        ("N_aug=2", {"augment": {"n_aug": 2.0}}, 2.0),
    ]
    rtg = rtg_variants([3600.0])
    assert rtg[0].components == {"policy": "ipd-dt"}
    assert rtg[1].components == {"policy": "dt"}
    assert rtg[1].overrides == {"policy": {"target_return": 3600.0}}


def test_run_with_several_seeds(store, tmp_path):
    out = tmp_path / "runs"
    result = _invoke(
        "run", "--dataset", "pendulum-medium-replay", "--out", str(out), "--quiet",
        "--seeds", "0,1", "--set", "augment.n_aug=0.5",
    )  # fmt: skip
    (run,) = [p for p in out.iterdir() if p.name != "cache"]
    r0 = json.loads((run / "seed_0" / "results.json").read_text())
    r1 = json.loads((run / "seed_1" / "results.json").read_text())
    assert (r0["seed"], r1["seed"]) == (0, 1)
    assert r1["scores"]["policy"]["seed"] == 100_001
    assert not any(r1["stage_reused"].values())  # every trained stage is per seed
    assert "over seeds 0, 1" in result.output
    result = _invoke("run", "--seed", "0", "--seeds", "0,1", "--out", str(out), check=False)
    assert result.exit_code == 2 and "either --seed or --seeds" in result.output
    result = _invoke("run", "--seeds", "0,x", "--out", str(out), check=False)
    assert result.exit_code == 2 and "comma-separated integers" in result.output
