"""The built-in plugins, registered directly by the registry (as tox registers its own).

``setup.cfg`` points the entry-point group ``ipd.builtins`` here, so ``registry`` finds this
list without naming this package.
"""

DEFAULT_PLUGINS: tuple[str, ...] = (
    "ipd_plugins.value.qov",
    "ipd_plugins.value.d3rlpy_iql",
    "ipd_plugins.planners.mpc",
    "ipd_plugins.planners.greedy",
    "ipd_plugins.policies.ipd_dt",
    "ipd_plugins.policies.dt",
    "ipd_plugins.policies.gtp",
    "ipd_plugins.world_models.pe",
    "ipd_plugins.uncertainty.gjs",
    "ipd_plugins.uncertainty.alternatives",
    "ipd_plugins.adapters.none",
    "ipd_plugins.adapters.dwm",
    "ipd_plugins.baselines.configs",
)
