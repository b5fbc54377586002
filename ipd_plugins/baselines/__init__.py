"""d3rlpy baselines (IQL, CQL, TD3+BC, ReBRAC, BC, DT) on IPD's data and evaluator.

``configs`` (the registered configs), ``trainer`` (d3rlpy behind resumable, weights-only
plumbing), ``run`` (one seed of ``ipd baseline``).
"""

from ipd_plugins.baselines.configs import (
    BUILTIN_BASELINES,
    D4RL_TARGET_RETURNS,
    BaselineConfig,
    BCBaselineConfig,
    CQLBaselineConfig,
    DTBaselineConfig,
    IQLBaselineConfig,
    ReBRACBaselineConfig,
    TD3PlusBCBaselineConfig,
)
from ipd_plugins.baselines.run import (
    baseline_identity,
    baseline_run_name,
    load_trained_baseline,
    resolve_baseline,
    run_baseline,
)
from ipd_plugins.baselines.trainer import D3rlpyActor, D3rlpyBaseline, DTActor

__all__ = [
    "BUILTIN_BASELINES",
    "D4RL_TARGET_RETURNS",
    "BaselineConfig",
    "BCBaselineConfig",
    "CQLBaselineConfig",
    "DTBaselineConfig",
    "IQLBaselineConfig",
    "TD3PlusBCBaselineConfig",
    "ReBRACBaselineConfig",
    "D3rlpyActor",
    "D3rlpyBaseline",
    "DTActor",
    "baseline_identity",
    "baseline_run_name",
    "load_trained_baseline",
    "resolve_baseline",
    "run_baseline",
]
