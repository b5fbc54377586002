"""Threads that fit the machine: a run takes the cores that other runs and other work leave."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from ipd_plugins import hardware


@pytest.fixture
def claims(tmp_path, monkeypatch):
    """An empty claims folder, a 2-core affinity and an idle machine; restores torch's threads."""
    folder = tmp_path / "claims"
    monkeypatch.setenv(hardware.CLAIMS_ENV, str(folder))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    before = torch.get_num_threads()
    yield folder
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    "cores, load, others, mine, expected",
    [
        (2, 0.0, 0, 0, 2),  # idle machine: every core
        (2, 0.3, 0, 0, 2),
        (2, 1.2, 0, 0, 1),  # one busy core of other work
        (2, 7.0, 0, 0, 1),  # never fewer than one
        (8, 3.0, 0, 0, 5),
        (2, 0.0, 1, 0, 1),  # a run started a moment ago: the load has not seen it yet
        (2, 1.0, 1, 0, 1),  # a run that has been going: its load is its claim, not counted twice
        (4, 2.0, 1, 1, 3),  # --seeds: this process's own earlier claim is not other work
        (2, 0.0, 3, 0, 1),
    ],
)
def test_thread_rule(cores, load, others, mine, expected):
    assert hardware.thread_rule(cores, load, others, mine) == expected


def test_set_threads_claims_and_the_next_run_sees_the_claim(claims):
    assert hardware.set_threads(None) == 2 and torch.get_num_threads() == 2
    assert json.loads((claims / f"{os.getpid()}.json").read_text()) == {"threads": 2}
    # a second process started now, on the same idle machine, gets what is left: nothing -> 1
    code = "from ipd_plugins import hardware; print(hardware.set_threads(None))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"
    # its claim went away with it; this process re-claiming keeps its own two cores
    assert [p.name for p in claims.glob("*.json")] == [f"{os.getpid()}.json"]
    assert hardware.set_threads(None) == 2


def test_claims_of_exited_or_broken_processes_are_dropped(claims):
    claims.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (claims / f"{dead.pid}.json").write_text(json.dumps({"threads": 2}))
    (claims / "123abc.json").write_text("{")
    assert hardware.auto_threads() == 2
    assert list(claims.glob("*.json")) == []


def test_a_live_claim_holds_its_cores(claims):
    claims.mkdir()
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as other:
        try:
            (claims / f"{other.pid}.json").write_text(json.dumps({"threads": 1}))
            assert hardware.auto_threads() == 1
            assert hardware.set_threads(None) == 1
        finally:
            other.kill()


def test_a_job_that_just_ended_does_not_cost_a_core(claims, monkeypatch):
    # the 1-minute load average still shows a job that ended seconds ago; the cores are idle
    monkeypatch.setattr(os, "getloadavg", lambda: (1.6, 1.2, 0.8))
    monkeypatch.setattr(hardware, "_busy_cores", lambda window=0.2: 0.05)
    assert hardware.auto_threads() == 2
    monkeypatch.setattr(hardware, "_busy_cores", lambda window=0.2: 1.0)  # it is still running
    assert hardware.auto_threads() == 1
    monkeypatch.setattr(hardware, "_busy_cores", lambda window=0.2: None)  # no /proc/stat
    assert hardware.auto_threads() == 1


def test_busy_cores_sees_a_spinning_process():
    if hardware._busy_cores(0.05) is None:
        pytest.skip("no /proc/stat")
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert hardware._busy_cores(0.5) >= 0.6
    finally:
        spin.kill()


def test_an_explicit_number_wins_over_the_rule_and_is_claimed(claims):
    assert hardware.set_threads(1) == 1 and torch.get_num_threads() == 1
    assert json.loads((claims / f"{os.getpid()}.json").read_text()) == {"threads": 1}
    assert hardware.auto_threads() == 2  # the rule for this process: its own claim is not load


def test_device_auto_is_cuda_only_when_torch_sees_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert hardware.resolve_device("auto") == "cpu"
    assert hardware.resolve_device("cuda:1") == "cuda:1"  # explicit devices are left alone
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert hardware.resolve_device("auto") == "cuda"


def test_run_folder_names_record_the_device_that_ran(monkeypatch):
    from ipd_plugins.run_config import resolve_config

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    auto, cpu = resolve_config(), resolve_config(run={"device": "cpu"})
    assert auto.run.device == "auto" and auto.run_name == cpu.run_name


@pytest.mark.parametrize(
    "flags, device, expected",
    [({"avx512_bf16"}, "cpu", "bf16"), ({"amx_bf16"}, "cpu", "bf16"), ({"avx512f"}, "cpu", "fp32")],
)
def test_precision_auto_follows_the_cpu_flags(monkeypatch, flags, device, expected):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: set(flags))
    monkeypatch.setattr(hardware, "bf16_pays", lambda: True)
    assert hardware.resolve_precision("auto", device) == expected
    assert hardware.resolve_precision("fp32", device) == "fp32"
    assert hardware.resolve_precision("bf16", device) == "bf16"
    with pytest.raises(ValueError, match="precision must be one of"):
        hardware.resolve_precision("half", device)


def test_bf16_is_used_only_where_it_measured_faster_and_the_verdict_is_remembered(
    monkeypatch, tmp_path
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx512_bf16"})
    calls = []
    monkeypatch.setattr(hardware, "_matmul_speedup", lambda: calls.append(1) or 0.75)
    assert hardware.resolve_precision("auto") == "fp32"  # flags, but slower: the Xeon case
    assert hardware.resolve_precision("auto") == "fp32" and len(calls) == 1  # measured once
    saved = json.loads((tmp_path / "ipd" / "bf16.json").read_text())
    assert [v["bf16"] for v in saved.values()] == [False]
    monkeypatch.setattr(hardware, "cpu_model", lambda: "another CPU")
    monkeypatch.setattr(hardware, "_matmul_speedup", lambda: 3.0)
    assert hardware.resolve_precision("auto") == "bf16"


def test_the_matmul_speedup_is_a_positive_ratio():
    assert hardware._matmul_speedup(n=64, reps=2) > 0
