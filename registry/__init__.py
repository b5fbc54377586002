"""The ipd plugin system: hookspecs, the registry, component protocols and configs."""

from registry.config import (
    ALL_KINDS,
    KINDS,
    ComponentConfig,
    added_later,
    config_hash,
    identity_dict,
    renamed,
)
from registry.hookspecs import hookimpl, hookspec
from registry.manager import (
    PluginRegistry,
    Registration,
    config_class,
    create,
    get_registry,
    names,
)
from registry.protocols import (
    Actor,
    BuildContext,
    Logger,
    Planner,
    PlanningContext,
    SequencePolicy,
    UncertaintyMetric,
    ValueLearner,
    WorldModel,
    WorldModelStep,
)

__all__ = [
    "ALL_KINDS",
    "KINDS",
    "Actor",
    "BuildContext",
    "ComponentConfig",
    "Logger",
    "PlanningContext",
    "Planner",
    "PluginRegistry",
    "Registration",
    "SequencePolicy",
    "UncertaintyMetric",
    "ValueLearner",
    "WorldModel",
    "WorldModelStep",
    "added_later",
    "config_class",
    "config_hash",
    "create",
    "get_registry",
    "hookimpl",
    "hookspec",
    "identity_dict",
    "names",
    "renamed",
]
