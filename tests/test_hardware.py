"""Threads that fit the machine: a run takes the usable cores that are not already busy."""

from __future__ import annotations

import os

import pytest
import torch

from ipd_plugins import hardware


@pytest.mark.parametrize(
    "cores, load, expected", [(2, 0.0, 2), (2, 0.3, 2), (2, 1.2, 1), (2, 7.0, 1), (8, 3.0, 5)]
)
def test_auto_threads_leaves_busy_cores_alone(monkeypatch, cores, load, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    assert hardware.auto_threads() == expected


def test_set_threads_takes_an_explicit_number_over_the_rule(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(hardware, "auto_threads", lambda: 1)
    try:
        assert hardware.set_threads(None) == 1 and torch.get_num_threads() == 1
        assert hardware.set_threads(2) == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
