"""The pipeline's stages and checks: what is shared between runs, and what fails before training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
from click.testing import CliRunner
from tiny import TINY_IPD as TINY

from ipd_plugins.commands import main
from ipd_plugins.commands.eval import check_acting_options
from ipd_plugins.pipeline import prepare, stage_keys
from ipd_plugins.run_config import load_config_file, parse_overrides, resolve_config

ROOT = Path(__file__).resolve().parents[1]


def _keys(*pairs: str, components: dict | None = None, seed: int = 0) -> dict[str, str]:
    cfg = resolve_config(
        components=components, run={"seed": seed}, overrides=parse_overrides(list(pairs))
    )
    return stage_keys(cfg, "data-hash", "Pendulum-v1")


def test_stage_keys_share_exactly_what_a_change_leaves_alone():
    base = _keys()
    planner = _keys(components={"planner": "greedy"})
    assert planner["value"] == base["value"] and planner["world_model"] == base["world_model"]
    assert planner["augment"] != base["augment"] and planner["policy"] != base["policy"]
    policy = _keys("policy.alpha=0.5")
    assert policy["augment"] == base["augment"] and policy["policy"] != base["policy"]
    value = _keys("value.beta=1")
    assert value["world_model"] == base["world_model"] and value["value"] != base["value"]
    assert value["augment"] != base["augment"]  # pi_QOP drives identification and MPC
    assert all(_keys(seed=1)[k] != base[k] for k in base)  # every stage is per seed
    assert _keys("run.eval_episodes=3") == base  # evaluation is not a stage


def test_a_field_read_only_when_acting_names_the_run_but_shares_the_trained_policy():
    dt = {"policy": "dt"}
    low, high = (_keys(f"policy.target_return={t}", components=dt) for t in (1800, 5400))
    assert low == high  # fig. 3: one trained DT, asked for two returns
    assert _keys("policy.rtg_scale=500", components=dt)["policy"] != low["policy"]  # trained
    names = {
        resolve_config(
            components=dt, overrides=parse_overrides([f"policy.target_return={t}"])
        ).run_name
        for t in (1800, 5400)
    }
    assert len(names) == 2  # two runs, two folders
    curve = ("run.eval_every=100",)  # a curve's points act while the policy trains
    low, high = (_keys(*curve, f"policy.target_return={t}", components=dt) for t in (1800, 5400))
    assert low["augment"] == high["augment"] and low["policy"] != high["policy"]
    # an acting option, as gtp's sampler: `ipd eval RUN --set policy.target_return=...` takes it
    check_acting_options(resolve_config(components=dt).configs["policy"], ["target_return"])


def test_ipd_dt_token_shift_is_a_new_acting_option():
    base = _keys()
    assert _keys("policy.token_shift=2") == base  # one trained ipd-dt, asked for more
    run_name = resolve_config().run_name
    shifted = resolve_config(overrides=parse_overrides(["policy.token_shift=2"])).run_name
    assert shifted != run_name
    # added after runs were recorded: at 0 every earlier run keeps its folder name
    assert "token_shift" not in resolve_config().hash_part("policy", acting=True)["config"]
    check_acting_options(resolve_config().configs["policy"], ["token_shift"])


def test_a_second_return_target_reuses_the_trained_dt_and_acts_with_its_own(store, tmp_path):
    out = tmp_path / "runs"
    outputs = []
    for target in (1800, 5400):
        args = ["--dataset", "pendulum-medium-replay", "--policy", "dt"]
        result = _run(out, *args, "--set", f"policy.target_return={target}")
        assert result.exit_code == 0, result.output
        outputs.append(result.output)
    assert "[policy] reusing" in outputs[1] and "[policy] reusing" not in outputs[0]
    assert len([p for p in (out / "cache" / "policy").iterdir() if p.is_dir()]) == 1
    runs = {
        load_config_file(path)["policy"]["target_return"]: path.parent
        for path in out.glob("*/seed_0/config.yaml")
    }
    assert sorted(runs) == [1800.0, 5400.0]
    # and a finished dt run acts for another target without retraining
    run = runs[1800.0]
    for target in ("900", "900.0"):  # one target, one file
        result = CliRunner().invoke(
            main, ["eval", str(run), "--set", f"policy.target_return={target}"]
        )
        assert result.exit_code == 0, result.output
    assert len(list(run.glob("eval_*.json"))) == 1 and "running" not in result.output


def test_options_that_change_neither_data_nor_effect_share_the_trained_policy(store, tmp_path):
    """`ipd` and `ipd eq26` on a large dataset: a few-episodes threshold below the data's
    episode count has no effect, so the second run reuses the first one's policy."""
    out = tmp_path / "runs"
    outputs = []
    for few in (0, 2):
        args = ["--dataset", "pendulum-medium-replay", "--set", f"policy.few_episodes={few}"]
        result = _run(out, *args)
        assert result.exit_code == 0, result.output
        outputs.append(result.output)
    assert "same training data and effective config" in outputs[1], outputs[1]
    results = [json.loads(p.read_text()) for p in sorted(out.glob("*/seed_0/results.json"))]
    assert sorted(r["stage_reused"]["policy"] for r in results) == [False, True]
    assert results[0]["scores"] == results[1]["scores"]
    assert len([p for p in (out / "cache" / "policy").iterdir() if p.is_dir()]) == 1
    # an option that does change the effect trains its own policy
    result = _run(out, "--dataset", "pendulum-medium-replay", "--set", "policy.few_episodes=999")
    assert result.exit_code == 0 and "policy.few_episodes=999:" in result.output, result.output
    assert len([p for p in (out / "cache" / "policy").iterdir() if p.is_dir()]) == 2


def _d4rl_file(path: Path, scale: float = 1.0, with_env: bool = False) -> Path:
    """The tiny pendulum data as a D4RL-style HDF5 file, actions times ``scale``."""
    from ipd_plugins.data.sources import resolve_dataset

    ds = resolve_dataset("pendulum-medium-replay")
    with h5py.File(path, "w") as f:
        f["observations"] = ds.observations
        f["next_observations"] = ds.next_observations
        f["actions"] = ds.actions * scale
        f["rewards"] = ds.rewards
        f["terminals"] = ds.terminations
        f["timeouts"] = ds.truncations
        if with_env:
            f.attrs["env_id"] = "Pendulum-v1"
    return path


def _run(out: Path, *extra: str, tiny: bool = True):
    args = ["run", "--out", str(out), "--quiet"]
    for item in TINY if tiny else []:
        args += ["--set", item]
    return CliRunner().invoke(main, [*args, *extra])


def test_env_on_the_command_line_reaches_the_loader_and_the_results(store, tmp_path):
    data = _d4rl_file(tmp_path / "expert.hdf5", scale=1.25)  # actions up to 2.5 > Pendulum's 2
    out = tmp_path / "runs"
    refused = _run(out, "--dataset", str(data), "--env", "Pendulum-v1")
    assert refused.exit_code == 1 and "--clip-actions" in refused.output
    assert "Traceback" not in refused.output and not (out / "cache").exists()
    result = _run(out, "--dataset", str(data), "--env", "Pendulum-v1", "--clip-actions")
    assert result.exit_code == 0, result.output
    (results_path,) = out.glob("*/seed_0/results.json")
    results = json.loads(results_path.read_text())
    assert results["dataset"]["env_id"] == "Pendulum-v1"
    assert results["scores"]["policy"]["normalized_mean"] is not None
    config = (results_path.parent / "config.yaml").read_text()
    assert "env_id: Pendulum-v1" in config and "clip_actions: true" in config


def test_what_cannot_work_fails_before_training_with_one_line(store, tmp_path):
    data = _d4rl_file(tmp_path / "plain.hdf5")
    out = tmp_path / "runs"
    cases = [
        (["--dataset", str(data)], "--env ENV_ID"),  # the file does not name its environment
        (["--dataset", str(data), "--env", "AdroitHandDoor-v1"], "gymnasium-robotics"),
        (["--dataset", str(data), "--env", "Hopper-v5"], "Hopper-v5's is"),  # dims differ
        (["--dataset", str(data), "--env", "NoSuchEnv-v0"], "NoSuchEnv-v0"),
        (["--dataset", "pendulum-medium-replay", "--device", "cuda"], "CUDA"),
        (["--dataset", str(tmp_path / "missing.npz")], "missing.npz"),
    ]
    for args, words in cases:
        result = _run(out, *args)
        assert result.exit_code == 1, (args, result.output)
        assert result.output.count("Error:") == 1 and words in result.output, result.output
        assert "Traceback" not in result.output
        assert not (out / "cache").exists(), args
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    result = _run(blocked / "runs", "--dataset", "pendulum-medium-replay")
    assert result.exit_code == 1 and "cannot write there" in result.output
    debug = _run(out, "--dataset", str(data), "--debug")
    assert debug.exit_code == 1 and debug.exception is not None  # --debug: the real exception


def test_prepare_checks_the_data_against_the_environment(store):
    p = prepare("pendulum-medium-replay", seed=3)
    assert p.ctx.env_id == "Pendulum-v1" and p.ctx.obs_dim == 3 and p.ctx.seed == 3
    assert p.data_hash == p.dataset.content_hash()


def test_two_runs_on_one_out_folder_train_each_stage_once(store, tmp_path):
    """Started together, one run trains each stage; the other waits for it and reuses it."""
    out = tmp_path / "runs"
    args = [sys.executable, "-m", "ipd_plugins.commands", "run", "--out", str(out), "--quiet"]
    args += ["--dataset", "pendulum-medium-replay"]
    for item in TINY:
        args += ["--set", item]
    env = {**os.environ, "MINARI_DATASETS_PATH": str(store)}
    procs = [
        subprocess.Popen(args, env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    logs = [p.communicate(timeout=600)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs
    both = "".join(logs)
    for stage in ("value", "world_model", "augment", "policy"):
        assert both.count(f"[{stage}] running") == 1, both
        assert both.count(f"[{stage}] reusing") == 1, both
        assert len([p for p in (out / "cache" / stage).iterdir() if p.is_dir()]) == 1


def test_a_file_without_episode_ends_needs_episode_length(store, tmp_path):
    """Raw demonstrations with neither 'terminals' nor 'timeouts' (e.g. DAPG's door demos)."""
    data = _d4rl_file(tmp_path / "raw.hdf5")
    with h5py.File(data, "a") as f:
        del f["terminals"], f["timeouts"]
    info = ["data", "info", str(data), "--env", "Pendulum-v1"]
    refused = CliRunner().invoke(main, info)
    assert refused.exit_code == 1 and "--episode-length N" in refused.output
    result = CliRunner().invoke(main, [*info, "--episode-length", "200", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["episodes"] == 6 and summary["truncations"] == 6 and summary["terminations"] == 0


def test_export_best_keeps_the_highest_return_episodes(store):
    from ipd_plugins.data.minari_io import from_minari
    from ipd_plugins.data.sources import resolve_dataset

    full = resolve_dataset("pendulum-medium-replay")
    result = CliRunner().invoke(
        main, ["data", "export", "pendulum-medium-replay", "test/pendulum/best-v0", "--best", "3"]
    )
    assert result.exit_code == 0, result.output
    best = from_minari("test/pendulum/best-v0")
    top = np.sort(full.episode_returns())[-3:]
    np.testing.assert_allclose(np.sort(best.episode_returns()), top, rtol=1e-5)
    assert best.n_episodes == 3 and best.env_id == full.env_id


def test_data_commands_take_names_list_exports_and_name_the_overwrite_flag(store):
    info = CliRunner().invoke(main, ["data", "info", "pendulum-medium-replay"])
    assert info.exit_code == 0 and "Pendulum-v1" in info.output
    export = ["data", "export", "pendulum-medium-replay", "test/pendulum/copy-v0"]
    assert CliRunner().invoke(main, export).exit_code == 0
    listing = CliRunner().invoke(main, ["data", "list"]).output
    assert "test/pendulum/copy-v0" in listing
    again = CliRunner().invoke(main, export)
    assert again.exit_code == 1 and "pass --overwrite" in again.output


def test_retrain_trains_a_cached_stage_again_and_keeps_what_it_replaces(store, tmp_path):
    """`--retrain value`: the value function trains again (its old files set aside); with one
    seed it comes out the same, so the stages made from it are reused and the scores repeat."""
    out = tmp_path / "runs"
    assert _run(out).exit_code == 0
    (results,) = out.glob("*/seed_0/results.json")
    before = results.read_bytes()
    bad = _run(out, "--retrain", "value,valu")
    assert bad.exit_code == 2 and "--retrain valu: no such stage; stages: value, world_model" in (
        bad.output
    ), bad.output
    assert "[value]" not in bad.output
    again = _run(out, "--retrain", "value")
    assert again.exit_code == 0, again.output
    assert "[value] --retrain: setting" in again.output and "[value] running" in again.output
    assert "[augment] reusing" in again.output and "[policy] reusing" in again.output
    assert "stale" not in again.output  # the same weights: the augmentation's inputs are its
    (folder,) = (out / "cache" / "value").iterdir()
    assert (folder / "weights.pt.replaced").read_bytes() == (folder / "weights.pt").read_bytes()
    assert (results.parent / "results.json.replaced").read_bytes() == before
    new = json.loads(results.read_text())
    assert new["scores"] == json.loads(before)["scores"] and not new["stage_reused"]["value"]
    second = results.read_bytes()
    assert _run(out, "--retrain", "value").exit_code == 0  # again: the first copies stay
    assert (results.parent / "results.json.replaced").read_bytes() == before
    assert (results.parent / "results.json.replaced.2").read_bytes() == second
    assert (folder / "done.json.replaced.2").exists() and not (folder / "done.json.2").exists()
