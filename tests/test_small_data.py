"""Issue 27 (regression): on a few good episodes the distilled policy reaches plain BC.

The ``default`` profile on 4 episodes of a good ToyReach controller, with step counts cut to
seconds: the policy trains in its few-episodes mode (window positions, no Q term, the
segments capped at 10% of the data) and its return, normalised between a random policy's and
d3rlpy BC's on the same data, must be at least 0.9.
"""

from __future__ import annotations

import json

import numpy as np
import torch

from ipd_plugins.baselines import run_baseline
from ipd_plugins.data.npz_io import save_npz
from ipd_plugins.data.toy import TOY_REACH_ID, toy_reach_dataset
from ipd_plugins.evaluate import CallableActor, evaluate
from ipd_plugins.pipeline import run_pipeline
from ipd_plugins.run_config import parse_overrides, resolve_config

SHORT = [
    "value.n_steps=600",
    "value.hidden=64",
    "world_model.n_steps=400",
    "world_model.hidden=64",
    "world_model.n_hidden=2",
    "policy.n_steps=400",
    "policy.n_layer=1",
    "policy.n_embd=32",
    "policy.n_head=2",
    "policy.context=10",
    "policy.batch_size=16",
    "policy.warmup_steps=50",
    "policy.learning_rate=0.001",
    "run.eval_episodes=20",
    "run.threads=1",
    "run.eval_qop=false",
]


def test_few_good_episodes_the_distilled_policy_reaches_bc(tmp_path):
    data = save_npz(toy_reach_dataset(4, seed=0, gain=2.0), tmp_path / "good.npz")
    run = {"dataset": str(data), "env_id": TOY_REACH_ID, "profile": "default",
           "out_dir": str(tmp_path / "runs")}  # fmt: skip
    cfg = resolve_config(run=run, overrides=parse_overrides(SHORT))
    results = run_pipeline(cfg, echo=lambda m: None, progress=False)
    stages = json.loads((cfg.run_dir / "stages.json").read_text())
    assert stages["policy"]["metrics"]["few_episodes_mode"] == 1.0
    ipd = results["scores"]["policy"]["mean_return"]

    bc_run = {**run, "eval_episodes": 20, "threads": 1}
    bc = run_baseline("bc", run=bc_run, overrides={"baseline": {"n_steps": 600}},
                      echo=lambda m: None)["scores"]["policy"]["mean_return"]  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    rand = evaluate(
        CallableActor(lambda o: torch.rand(o.shape[0], 1, generator=gen) * 2 - 1),
        TOY_REACH_ID,
        n_episodes=20,
        seed=100_000,
    ).mean_return
    assert bc > rand + 10, (bc, rand)  # BC succeeds on this data
    normalised = (ipd - rand) / (bc - rand)
    assert np.isfinite(normalised) and normalised >= 0.9, (ipd, bc, rand)
