"""The hooks a plugin implements: one ``ipd_register_<kind>`` per component kind.

Each hook is called once when the registry is built and returns a list of config classes
(subclasses of :class:`registry.config.ComponentConfig`); each class's ``name`` is the key users
type (``ipd run --planner NAME``). A plugin implements only the hooks of the kinds it provides::

    from registry import hookimpl

    @hookimpl
    def ipd_register_planner():
        return [RandomPlannerConfig]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from registry.config import ComponentConfig

__all__ = ["hookspec", "hookimpl", "PROJECT"]

PROJECT = "ipd"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def ipd_register_value() -> list[type[ComponentConfig]]:
    """Called when the registry is built; returns value-learner config classes.

    A value learner implements :class:`registry.protocols.ValueLearner`.
    """


@hookspec
def ipd_register_world_model() -> list[type[ComponentConfig]]:
    """Called when the registry is built; returns world-model config classes.

    A world model implements :class:`registry.protocols.WorldModel`.
    """


@hookspec
def ipd_register_uncertainty() -> list[type[ComponentConfig]]:
    """Called when the registry is built; returns uncertainty-metric config classes.

    An uncertainty metric implements :class:`registry.protocols.UncertaintyMetric`.
    """


@hookspec
def ipd_register_planner() -> list[type[ComponentConfig]]:
    """Called when the registry is built; returns planner config classes.

    A planner implements :class:`registry.protocols.Planner`.
    """


@hookspec
def ipd_register_policy() -> list[type[ComponentConfig]]:
    """Called when the registry is built; returns policy config classes.

    A policy (with a context window or without) implements :class:`registry.protocols.Policy`.
    """


@hookspec
def ipd_register_adapter() -> list[type[ComponentConfig]]:
    """Called when the registry is built; returns adapter config classes (``--adapter NAME``).

    An adapter implements :class:`registry.protocols.Adapter`: it wraps a trained actor for
    evaluation and adapts the actor's weights while it acts (DWM-MPC); ``none`` is the default.
    """


@hookspec
def ipd_register_baseline() -> list[type[ComponentConfig]]:
    """Called when the registry is built; returns baseline config classes (``ipd baseline``).

    A baseline config's ``create(ctx)`` returns a trainer with ``fit(dataset, work_dir, log)``,
    ``actor()``, ``save(path)`` and ``load(path)`` (``ipd``'s d3rlpy trainer is an example).
    """
