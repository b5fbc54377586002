"""``none``: the default adapter: every actor acts with its trained weights, unchanged."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from registry.config import ComponentConfig
from registry.hookspecs import hookimpl
from registry.protocols import Actor, AdaptationContext, BuildContext

__all__ = ["NoAdapterConfig", "NoAdapter", "ipd_register_adapter"]


@dataclasses.dataclass
class NoAdapterConfig(ComponentConfig):
    """No inference-time adaptation: the actor acts with its trained weights (the default).

    Runs and evaluations without ``--adapter`` use it; it changes no run name or cache key.
    """

    kind: ClassVar[str] = "adapter"
    name: ClassVar[str] = "none"

    def create(self, ctx: BuildContext) -> NoAdapter:
        return NoAdapter()


class NoAdapter:
    """Implements :class:`registry.protocols.Adapter` by returning the actor itself."""

    uses_models = False

    def wrap(self, actor: Actor, models: AdaptationContext) -> Actor:
        return actor


@hookimpl
def ipd_register_adapter() -> list[type[ComponentConfig]]:
    return [NoAdapterConfig]
