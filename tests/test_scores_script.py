"""benchmarks/scores.py: when a recorded run counts as the run it would start now."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import yaml

from ipd_plugins.runner import resolve_config

_path = Path(__file__).resolve().parents[1] / "benchmarks" / "scores.py"
_spec = importlib.util.spec_from_file_location("ipd_scores_script", _path)
scores = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = scores
_spec.loader.exec_module(scores)


def _current() -> dict:
    run = {"dataset": "hopper-medium", "seed": 0, "profile": "default", "threads": 1}
    return resolve_config(run=run).to_dict()


def test_same_config_other_provenance_counts():
    now = _current()
    old = copy.deepcopy(now)
    old["run"]["out_dir"] = "elsewhere"
    old["meta"] = {"git_commit": "abc", "written": "yesterday"}
    assert scores.same_run(old, now)


def test_field_added_later_at_old_behaviour_counts_but_not_otherwise():
    now = _current()
    old = copy.deepcopy(now)
    for section, key in scores.ADDED_LATER:
        del old[section][key]
    assert scores.same_run(old, now)
    changed = copy.deepcopy(now)
    changed["policy"]["train_token"] = "return"
    assert not scores.same_run(old, changed)


def test_missing_behaviour_changing_field_or_other_value_is_a_different_run():
    now = _current()
    old = copy.deepcopy(now)
    del old["policy"]["position"]  # added with a new default: old runs used "window"
    assert not scores.same_run(old, now)
    old = copy.deepcopy(now)
    old["value"]["tau"] = 0.9
    assert not scores.same_run(old, now)


def test_finished_finds_an_equivalent_record_under_another_name(tmp_path):
    now = _current()
    out, record = tmp_path / "out", tmp_path / "record"
    rd = out / "hopper-medium__qov-pe-gjs-mpc-ipd-dt__aaaaaaaa" / "seed_0"
    assert scores.finished(rd, now, str(out), str(record)) is None
    old = copy.deepcopy(now)
    del old["policy"]["train_token"]
    other = record / "hopper-medium__qov-pe-gjs-mpc-ipd-dt__bbbbbbbb" / "seed_0"
    other.mkdir(parents=True)
    (other / "config.yaml").write_text(yaml.safe_dump(old))
    (other / "results.json").write_text("{}")
    assert scores.finished(rd, now, str(out), str(record)) == other / "results.json"
    seed1 = rd.parent / "seed_1"
    assert scores.finished(seed1, now, str(out), str(record)) is None
