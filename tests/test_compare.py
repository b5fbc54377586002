"""`ipd compare` on fabricated run folders: exact tables and files, IQM and bootstrap maths."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ipd_plugins.commands import main
from ipd_plugins.compare import (
    iqm,
    load_records,
    mean_std,
    method_label,
    paired_changes,
    seed_std,
    stratified_bootstrap_ci,
    summarise,
    to_markdown,
)
from ipd_plugins.run_config import DEFAULT_COMPONENTS


# -- maths against hand computations ------------------------------------------------------
def test_iqm_by_hand():
    # n=6: floor(1.5)=1 dropped at each end -> mean(20, 30, 40, 50) = 35
    assert iqm(np.array([60.0, 10, 50, 20, 40, 30])) == pytest.approx(35.0)
    # n=4: one dropped at each end -> mean(2, 3); the outlier 100 does not count
    assert iqm(np.array([1.0, 2, 3, 100])) == pytest.approx(2.5)
    # n=3: floor(0.75)=0 -> the plain mean
    assert iqm(np.array([1.0, 2, 9])) == pytest.approx(4.0)
    # n=8: two dropped at each end -> mean(3, 4, 5, 6)
    assert iqm(np.arange(1.0, 9.0)) == pytest.approx(4.5)
    # along an axis, row by row
    np.testing.assert_allclose(iqm(np.array([[1.0, 2, 3, 100], [4, 4, 8, 8]]), axis=1), [2.5, 6.0])
    from scipy.stats import trim_mean

    x = np.random.default_rng(3).normal(size=(5, 11))
    np.testing.assert_allclose(iqm(x, axis=1), trim_mean(x, 0.25, axis=1))
    with pytest.raises(ValueError, match="empty"):
        iqm(np.array([]))


def test_seed_std_is_the_sample_std_and_tables_write_one_seed_without_it():
    # (1, 2, 3, 6): mean 3, squared deviations 4 + 1 + 0 + 9 = 14, / (n - 1) -> sqrt(14 / 3)
    assert seed_std([1.0, 2, 3, 6]) == pytest.approx((14 / 3) ** 0.5)
    assert seed_std([5.0]) == 0.0 and seed_std([]) == 0.0
    assert mean_std([1.0, 2, 3, 6]) == f"3.0 +- {(14 / 3) ** 0.5:.1f}"
    assert mean_std([31.64]) == "31.6"  # one seed: no spread to report
    assert mean_std([]) == "-"
    assert mean_std([0.1234, 0.2], digits=2) == "0.16 +- 0.05"


def _naive_ci(groups, reps, seed, confidence=0.95):
    """Replicate by replicate in plain Python, drawing from the rng in the documented order."""
    rng = np.random.default_rng(seed)
    idx = [rng.integers(0, len(g), size=(reps, len(g))) for g in groups]
    stats = []
    for b in range(reps):
        pooled = sorted(float(groups[j][i]) for j in range(len(groups)) for i in idx[j][b])
        k = int(0.25 * len(pooled))
        middle = pooled[k : len(pooled) - k]
        stats.append(sum(middle) / len(middle))
    stats.sort()
    return tuple(np.quantile(stats, [(1 - confidence) / 2, (1 + confidence) / 2]))


def test_stratified_bootstrap_matches_a_loop_and_degenerate_cases():
    groups = [[10.0, 20.0, 35.0], [50.0, 52.0, 90.0, 61.0]]
    lo, hi = stratified_bootstrap_ci(groups, reps=300, seed=7)
    assert (lo, hi) == pytest.approx(_naive_ci(groups, 300, 7))
    pooled_iqm = iqm(np.concatenate([np.asarray(g) for g in groups]))
    assert lo < pooled_iqm < hi
    # seeded: same seed same interval, another seed another one
    assert stratified_bootstrap_ci(groups, reps=300, seed=7) == (lo, hi)
    assert stratified_bootstrap_ci(groups, reps=300, seed=8) != (lo, hi)
    # one run per dataset: every replicate is the data itself -> a zero-width interval
    assert stratified_bootstrap_ci([[3.0], [7.0], [5.0]], reps=50) == pytest.approx((5.0, 5.0))
    # stratified: runs are never borrowed across datasets, so identical runs within each
    # dataset give a zero-width interval even though the datasets differ
    assert stratified_bootstrap_ci([[1.0, 1.0], [9.0, 9.0]], reps=50) == pytest.approx((5.0, 5.0))
    with pytest.raises(ValueError, match="every group"):
        stratified_bootstrap_ci([[1.0], []])


# -- fabricated run folders ---------------------------------------------------------------
def _fake_run(out: Path, run_name: str, seed: int, dataset: str, score: float, **extra) -> Path:
    folder = out / run_name / f"seed_{seed}"
    folder.mkdir(parents=True)
    results = {
        "dataset": {"source": dataset, "name": dataset, "hash": "x"},
        "components": extra.pop("components", dict(DEFAULT_COMPONENTS)),
        "seed": seed,
        "scores": {
            "policy": {"normalized_mean": score, "mean_return": 10 * score, "n_episodes": 10},
            "qop": {"normalized_mean": score - 1.0, "mean_return": 0.0, "n_episodes": 10},
        },
        "stage_seconds": {"value": 60.0, "policy": 60.0},
        **extra,
    }
    (folder / "results.json").write_text(json.dumps(results))
    return folder


@pytest.fixture
def runs(tmp_path):
    out = tmp_path / "runs"
    for seed, (a, b) in enumerate([(50.0, 80.0), (60.0, 90.0), (70.0, 100.0)]):
        _fake_run(out, "hopper-medium__qov-pe-gjs-mpc-ipd-dt__aaaa1111", seed, "hopper-medium", a)
        _fake_run(
            out, "walker2d-medium__qov-pe-gjs-mpc-ipd-dt__bbbb2222", seed, "walker2d-medium", b
        )
        _fake_run(
            out, "hopper-medium__baseline-iql__cccc3333", seed, "hopper-medium", 40.0 + seed,
            label="iql", method="iql", components={"baseline": "iql"},
            stage_seconds={"train": 30.0},
        )  # fmt: skip
    # a stage-cache folder must never be read as a run
    (out / "cache" / "policy" / "k").mkdir(parents=True)
    (out / "cache" / "policy" / "k" / "results.json").write_text("{}")
    return out


def test_compare_writes_the_exact_table_and_a_png(runs, tmp_path):
    md = tmp_path / "report" / "cmp.md"
    result = CliRunner().invoke(main, ["compare", str(runs), "--out", str(md), "--reps", "500"])
    assert result.exit_code == 0, result.output
    ci_ipd = _naive_ci([[50.0, 60.0, 70.0], [80.0, 90.0, 100.0]], 500, 0)
    ci_iql = _naive_ci([[40.0, 41.0, 42.0]], 500, 0)
    expected = f"""# Scores

D4RL-normalised score x100 of the last checkpoint (no best-checkpoint selection): mean +- std over seeds (n = seeds); IQM over all runs of a method with a 95% stratified bootstrap CI (strata = datasets).

| dataset | ipd | iql |
|---|---:|---:|
| hopper-medium | 60.0 ± 10.0 (n=3) | 41.0 ± 1.0 (n=3) |
| walker2d-medium | 90.0 ± 10.0 (n=3) | - |

IQM over runs, 95% stratified bootstrap CI (500 replicates, seed 0):

| method | IQM | 95% CI | runs | train min/run |
|---|---:|---:|---:|---:|
| ipd | 75.0 | [{ci_ipd[0]:.1f}, {ci_ipd[1]:.1f}] | 6 | 2.0 |
| iql | 41.0 | [{ci_iql[0]:.1f}, {ci_iql[1]:.1f}] | 3 | 0.5 |

Not like for like: some methods ran on fewer of the 2 datasets (`iql` 1 of 2), and an IQM pools only its method's datasets; compare those per dataset, or seed by seed with `--against`.
"""  # noqa: E501
    assert md.read_text() == expected
    assert expected in result.output
    png = md.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_takes_globs_seed_folders_and_the_qop_actor(runs, tmp_path):
    md = tmp_path / "q.md"
    pattern = str(runs / "hopper-medium__*")  # quoted: ipd expands it
    result = CliRunner().invoke(main, ["compare", pattern, "--out", str(md), "--actor", "qop"])
    assert result.exit_code == 0, result.output
    text = md.read_text()
    assert "| hopper-medium | 59.0 ± 10.0 (n=3) | 40.0 ± 1.0 (n=3) |" in text
    assert "ipd:qop" in text and "walker2d" not in text
    records = load_records([runs / "hopper-medium__baseline-iql__cccc3333" / "seed_1"])
    assert [(r.label, r.seed, r.score) for r in records] == [("iql", 1, 41.0)]
    result = CliRunner().invoke(main, ["compare", str(tmp_path / "nothing*")])
    assert result.exit_code == 2 and "no run folder matches" in result.output


def test_against_pairs_each_method_with_the_base_on_the_same_seed(runs, tmp_path):
    # iql on hopper-medium: 40, 41, 42 against ipd's 50, 60, 70 -> -10, -19, -28; a fourth
    # iql seed that ipd never ran is left out of the pairs
    _fake_run(
        runs, "hopper-medium__baseline-iql__cccc3333", 7, "hopper-medium", 99.0,
        label="iql", method="iql", components={"baseline": "iql"},
    )  # fmt: skip
    changes = paired_changes(load_records([runs]), "ipd")
    assert changes == {"iql": {"hopper-medium": {0: -10.0, 1: -19.0, 2: -28.0}}}
    md = tmp_path / "p.md"
    result = CliRunner().invoke(main, ["compare", str(runs), "--out", str(md), "--against", "ipd"])
    assert result.exit_code == 0, result.output
    assert "| method | hopper-medium | all |" in md.read_text()
    assert "| iql | -19.0 ± 9.0 (n=3) | -19.0 ± 9.0 (n=3) |" in md.read_text()
    result = CliRunner().invoke(main, ["compare", str(runs), "--out", str(md), "--against", "x"])
    assert result.exit_code == 2 and "no run labelled 'x'" in result.output


def test_every_run_is_listed_seed_by_seed_with_gaps_and_repeats(runs, tmp_path):
    again = tmp_path / "again" / "hopper-medium__baseline-iql__cccc3333"
    shutil.copytree(runs / again.name / "seed_1", again / "seed_1")  # the same run, twice
    md = tmp_path / "e.md"
    args = ["compare", str(runs), str(again.parent), "--out", str(md), "--every-run"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert md.read_text().endswith(
        """Every run, seed by seed:

| dataset | seed | ipd | iql |
|---|---:|---:|---:|
| hopper-medium | 0 | 50.0 | 40.0 |
| hopper-medium | 1 | 60.0 | 41.0 / 41.0 |
| hopper-medium | 2 | 70.0 | 42.0 |
| walker2d-medium | 0 | 80.0 | - |
| walker2d-medium | 1 | 90.0 | - |
| walker2d-medium | 2 | 100.0 | - |
"""
    )
    plain = ["compare", str(runs), "--out", str(tmp_path / "plain.md")]
    assert "Every run" not in CliRunner().invoke(main, plain).output


def test_labels_name_swapped_components_and_never_pool_different_configs(tmp_path):
    out = tmp_path / "runs"
    greedy = {**DEFAULT_COMPONENTS, "planner": "greedy"}
    assert method_label({"components": greedy}) == "ipd[planner=greedy]"
    assert method_label({"components": dict(DEFAULT_COMPONENTS)}) == "ipd"
    assert method_label({"label": "N_aug=2", "components": {}}) == "N_aug=2"
    options = {"components": greedy, "options": ["policy.alpha=0.5"]}
    assert method_label(options) == "ipd[planner=greedy,policy.alpha=0.5]"
    _fake_run(out, "hopper-medium__qov-pe-gjs-greedy-ipd-dt__11112222", 0, "hopper-medium", 1.0,
              components=greedy)  # fmt: skip
    # two run folders with the default components but different --set options
    _fake_run(out, "hopper-medium__qov-pe-gjs-mpc-ipd-dt__33334444", 0, "hopper-medium", 2.0)
    _fake_run(out, "hopper-medium__qov-pe-gjs-mpc-ipd-dt__55556666", 0, "hopper-medium", 3.0)
    labels = sorted(r.label for r in load_records([out]))
    assert labels == ["ipd#33334444", "ipd#55556666", "ipd[planner=greedy]"]
    cmp = summarise(load_records([out]), reps=10)
    assert "| hopper-medium | 2.0 (n=1) | 3.0 (n=1) | 1.0 (n=1) |" in to_markdown(cmp)
    # one run per dataset: the bootstrap's interval is the IQM itself, so none is printed
    assert not any(m.has_ci for m in cmp.methods)
    assert "| ipd[planner=greedy] | 1.0 | - (1 run per dataset) | 1 |" in to_markdown(cmp)
    assert "Not like for like" not in to_markdown(cmp)  # every method on the one dataset


def test_mixing_normalised_and_raw_scores_is_refused(tmp_path):
    out = tmp_path / "runs"
    _fake_run(out, "a__x__1", 0, "a", 1.0)
    folder = _fake_run(out, "b__x__2", 0, "b", 1.0)
    data = json.loads((folder / "results.json").read_text())
    data["scores"]["policy"]["normalized_mean"] = None
    (folder / "results.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="compare them separately"):
        summarise(load_records([out]))
