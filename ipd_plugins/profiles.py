"""Run profiles: step counts and sizes for a demo, a CPU run and the paper's GPU run.

A profile is a set of overrides applied over the paper's defaults (each component config's
own defaults) before the user's ``--config`` file and ``--set`` options. An override is applied
only to components whose config has that field, so a third-party component without, say,
``n_steps`` simply keeps its own defaults. A sub-section named after a component (``policy:
gtp: {...}``) applies to that component only, over the section's shared keys.

The ``baseline`` section configures ``ipd baseline`` (:mod:`ipd_plugins.baselines`): its plain
keys apply to every baseline, its ``<algo>`` sub-sections to one. Budgets are matched to IPD's
in the same profile: the MLP baselines (``iql``, ``cql``, ``td3+bc``, ``bc``) get the value
learner's gradient steps and width (``value.n_steps``, ``value.hidden``; the value stage is the
part of IPD that is an offline-RL learner of the same shape), ``dt`` gets the IPD policy's steps,
transformer size, batch and warm-up (``policy.*``). Minibatch sizes stay d3rlpy's (256; BC 100).
"""

from __future__ import annotations

from typing import Any

__all__ = ["PROFILES", "DEFAULT_DATASET"]

#: The dataset each profile runs on when ``--dataset`` is not given (made if missing).
DEFAULT_DATASET: dict[str, str] = {
    "quick": "pendulum-medium",
    "default": "hopper-medium",
    "paper": "hopper-medium",
}

#: `gtp` at a CPU budget (a policy's own sub-section overrides the shared policy keys): the
#: paper's batch, its cheap K = 2 sampler, and a faster teacher EMA with EDM-weighted flow loss.
#: Chosen on pendulum-medium, 4k steps, one seed (benchmarks/results/gtp_speed.md): paper
#: settings -5 (K 2) / 11 (K 5), ema_rate 0.05 39 / 60, plus flow_weighting edm 57 / 60. The own
#: critic's target rate stays the paper's 0.005: 0.02 calibrates Q within 20k steps but IPD+GTP
#: collapsed with it on hopper-medium seed 0 (2.3 against 30.6; gtp_scores.md, tuning section).
_GTP_CPU: dict[str, Any] = {
    "batch_size": 256,
    "sample_steps": 2,
    "ema_rate": 0.05,
    "flow_weighting": "edm",
}

PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    # A demo of every stage in a few minutes on 2 CPU cores: small networks, few steps.
    "quick": {
        "run": {"eval_episodes": 5},
        "value": {"n_steps": 3_000, "hidden": 128},
        "world_model": {"n_steps": 2_000, "hidden": 128, "n_hidden": 2},
        "uncertainty": {"calibration_pairs": 5_000},
        "augment": {"n_aug": 1.0, "max_share": 0.1},
        "policy": {
            "few_episodes": 50,
            "n_steps": 1_500,
            "n_layer": 2,
            "n_embd": 64,
            "n_head": 2,
            "batch_size": 32,
            "warmup_steps": 150,
            "gtp": _GTP_CPU | {"n_steps": 3_000, "hidden": 128},
        },
        "baseline": {
            "n_steps": 3_000,
            "hidden": 128,
            "dt": {
                "n_steps": 1_500,
                "n_layer": 2,
                "n_embd": 64,
                "n_head": 2,
                "batch_size": 32,
                "warmup_steps": 150,
            },
        },
    },
    # hopper-medium with a real result in about 30 minutes on 2 CPU cores.
    "default": {
        "run": {"eval_episodes": 10},
        # beta 1 (paper: 3): at 30k steps the greedier AWR policy has not converged; pi_QOP on
        # hopper-medium scored 33.2 (beta 3), 47.2 (beta 1), 52.3 (beta 0 = BC), see
        # benchmarks/results/qop_beta.md. pi_QOP proposes MPC's candidates and drives the
        # identification rollouts, so its quality matters for the augmentation.
        # tau_target 0.02 (paper: 0.005, tuned for 1M steps): with 0.005, V after 30k steps sits
        # 16-19% below the returns the data collected (V-G -39 on hopper-medium) and needs
        # 120k steps to reach them; with 0.02 it is at -2.0 after 30k and +1.0 after 60k
        # (0.05: -2.5, +0.3), benchmarks/results/value_calibration.md.
        "value": {"n_steps": 30_000, "beta": 1.0, "tau_target": 0.02},
        "world_model": {"n_steps": 10_000, "hidden": 200, "n_hidden": 3},
        # max_share 0.1: the segments' share of hopper-medium's runs in the score table (9%),
        # now also on small datasets, where eq. 21 alone made it 64% and cost ipd-dt 25 points
        # on 5 hopper episodes (benchmarks/results/small_data.md). Uncapped on the tuning seeds
        # 0-2 (`no cap`, benchmarks/results/variants.md): -4.2 over 6 pairs, +5.4 on
        # halfcheetah-medium-replay and -13.7 on hopper-medium-replay (below on every seed).
        "augment": {"n_aug": 1.0, "max_episodes": 100, "max_share": 0.1},
        # The policy is eq. 26's ipd-dt (V(s) tokens, MSE + alpha Q term), kept over the variants
        # tried on the tuning seeds 0-2 of hopper-medium, hopper-medium-replay and
        # halfcheetah-medium-replay (issue 26, benchmarks/results/variants.md): paired with it
        # seed by seed, AWR-weighted imitation (awr_beta 1) -4.4 over 7 pairs (-11.6 on
        # hopper-medium-replay), the data alone (augment.n_aug 0) -1.5 over 7, alpha 0 -3.3 over
        # 3, return tokens +1.6 +- 6.1 over 5, window positions -22.7 (1); none is ahead by more
        # than the seeds' spread. More policy steps do not close the gap to `dt` either
        # (2k-20k, benchmarks/results/budget_study.md). Eq. 26 exactly: --set
        # augment.max_share=none --set policy.few_episodes=0 (table_v2.yaml's `ipd eq26`).
        "policy": {
            # below 50 episodes: window positions and no Q term (small_data.md; issue 27)
            "few_episodes": 50,
            # 8k steps (was 5k): bf16 autocast trains the policy 2.0x faster on a chip with
            # native bf16 (6.8 steps/s on one EPYC thread, precision.md), which pays for 8k
            # steps within the 30 minutes even on one thread; warm-up stays 10%
            "n_steps": 8_000,
            "n_layer": 3,
            "n_embd": 128,
            "n_head": 4,
            "batch_size": 64,
            "warmup_steps": 800,
            # 20k steps of GTP (K = 2, own critic) take about as long as 8k of ipd-dt
            "gtp": _GTP_CPU | {"n_steps": 20_000},
        },
        "baseline": {
            "n_steps": 30_000,
            "hidden": 256,
            "dt": {
                "n_steps": 8_000,
                "n_layer": 3,
                "n_embd": 128,
                "n_head": 4,
                "batch_size": 64,
                "warmup_steps": 800,
            },
        },
    },
    # The paper's step counts and sizes (table 2-4): GPU work.
    "paper": {
        "run": {"eval_episodes": 10},
        "value": {"n_steps": 1_000_000},
        "world_model": {"n_steps": 100_000},
        "augment": {"n_aug": 1.0},
        "policy": {"n_steps": 100_000},
        "baseline": {
            "n_steps": 1_000_000,
            "hidden": 256,
            "dt": {
                "n_steps": 100_000,
                "n_layer": 4,
                "n_embd": 256,
                "n_head": 4,
                "batch_size": 64,
                "warmup_steps": 1000,
            },
        },
    },
}
