"""The plugin registry: a small pluggy ``PluginManager`` plus name lookup per kind.

Built-in plugins are registered directly, as tox does: a distribution lists its built-in plugin
modules under the entry-point group ``ipd.builtins`` (the ``ipd`` distribution points it at a
module whose ``DEFAULT_PLUGINS`` is the list), so this package names no other package.
Third-party plugins are found through the setuptools entry-point group ``ipd``. Environment
variables:

- ``IPD_DISABLED_PLUGINS``: comma-separated plugin names (entry-point names or built-in
  module names) not to load.
- ``IPD_TRACE_PLUGINS=1``: print every hook call with its result to stderr.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from functools import cache
from types import ModuleType
from typing import Any

import pluggy

from registry import hookspecs
from registry.config import ALL_KINDS, ComponentConfig
from registry.protocols import BuildContext

__all__ = ["PluginRegistry", "Registration", "get_registry", "create", "names", "config_class"]

#: Entry-point group of the modules that list built-in plugins (``DEFAULT_PLUGINS``).
BUILTINS_GROUP = "ipd.builtins"


@dataclass(frozen=True)
class Registration:
    """One registered component: its kind, name, config class and where it came from."""

    kind: str
    name: str
    config_cls: type[ComponentConfig]
    source: str  # "built-in" or "<distribution> <version>"


class PluginRegistry:
    """Collects the config classes that plugins register, per kind, by name."""

    def __init__(self, builtins: tuple[ModuleType, ...] = (), entry_points: bool = True):
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        disabled = {
            n.strip() for n in os.environ.get("IPD_DISABLED_PLUGINS", "").split(",") if n.strip()
        }
        for module in builtins:
            if module.__name__ not in disabled:
                self.pm.register(module, name=module.__name__)
        if entry_points:
            for name in disabled:
                self.pm.set_blocked(name)
            self.pm.load_setuptools_entrypoints(hookspecs.PROJECT)
        self.pm.check_pending()
        if os.environ.get("IPD_TRACE_PLUGINS"):
            self.pm.trace.root.setwriter(lambda msg: sys.stderr.write(msg))
            self.pm.enable_tracing()
        self._by_kind = self._collect()

    def _source(self, plugin: object) -> str:
        dist = dict(self.pm.list_plugin_distinfo()).get(plugin)
        return f"{dist.project_name} {dist.version}" if dist is not None else "built-in"

    def _collect(self) -> dict[str, dict[str, Registration]]:
        by_kind: dict[str, dict[str, Registration]] = {kind: {} for kind in ALL_KINDS}
        for kind in ALL_KINDS:
            caller = getattr(self.pm.hook, f"ipd_register_{kind}")
            for impl in caller.get_hookimpls():
                source = self._source(impl.plugin)
                plugin_name = self.pm.get_name(impl.plugin)
                for cls in impl.function() or []:
                    self._add(by_kind[kind], kind, cls, source, plugin_name)
        return by_kind

    @staticmethod
    def _add(
        table: dict[str, Registration], kind: str, cls: Any, source: str, plugin_name: str | None
    ) -> None:
        where = f"plugin '{plugin_name}' ({source})"
        if not (isinstance(cls, type) and issubclass(cls, ComponentConfig)):
            raise TypeError(f"{where} registered {cls!r} for '{kind}', not a ComponentConfig class")
        if getattr(cls, "kind", None) != kind:
            raise TypeError(f"{where} registered {cls.__name__} (kind '{cls.kind}') as '{kind}'")
        if cls.name in table:
            other = table[cls.name]
            raise ValueError(
                f"two plugins claim the {kind} name '{cls.name}': "
                f"{other.config_cls.__module__}.{other.config_cls.__name__} ({other.source}) and "
                f"{cls.__module__}.{cls.__name__} ({source})"
            )
        table[cls.name] = Registration(kind, cls.name, cls, source)

    # -- lookup ----------------------------------------------------------------------------
    def _table(self, kind: str) -> dict[str, Registration]:
        if kind not in self._by_kind:
            raise KeyError(f"unknown component kind '{kind}'; kinds: {', '.join(ALL_KINDS)}")
        return self._by_kind[kind]

    def names(self, kind: str) -> list[str]:
        """The registered names of ``kind``, sorted."""
        return sorted(self._table(kind))

    def registrations(self, kind: str) -> list[Registration]:
        return [self._table(kind)[n] for n in self.names(kind)]

    def config_class(self, kind: str, name: str) -> type[ComponentConfig]:
        """The config class registered as ``name``; unknown names list the known ones."""
        table = self._table(kind)
        if name not in table:
            hint = (
                ""
                if table
                else " (none registered: is the ipd package installed? pip install -e .)"
            )
            raise KeyError(
                f"no {kind} named '{name}'; known {kind} names: {', '.join(sorted(table)) or '-'}"
                + hint
            )
        return table[name].config_cls

    def config(
        self, kind: str, name: str, values: dict[str, Any] | ComponentConfig | None = None
    ) -> ComponentConfig:
        """The config of ``name`` with ``values`` applied over the paper's defaults."""
        cls = self.config_class(kind, name)
        if isinstance(values, ComponentConfig):
            if not isinstance(values, cls):
                raise TypeError(f"config {type(values).__name__} is not for {kind} '{name}'")
            values.validate()
            return values
        return cls.from_dict(values)

    def create(
        self,
        kind: str,
        name: str,
        config: dict[str, Any] | ComponentConfig | None = None,
        ctx: BuildContext | None = None,
    ) -> Any:
        """Build the component ``name`` of ``kind`` (``ctx`` defaults to a 1-d toy space)."""
        ctx = ctx or BuildContext(obs_dim=1, act_dim=1, act_low=(-1.0,), act_high=(1.0,))
        return self.config(kind, name, config).create(ctx)


def _builtin_modules() -> tuple[ModuleType, ...]:
    """The plugin modules every ``ipd.builtins`` entry point lists, imported."""
    from importlib.metadata import entry_points

    out = []
    for ep in sorted(entry_points(group=BUILTINS_GROUP), key=lambda e: e.name):
        listing = ep.load()
        out += [importlib.import_module(n) for n in getattr(listing, "DEFAULT_PLUGINS", ())]
    return tuple(out)


@cache
def get_registry() -> PluginRegistry:
    """The process-wide registry: built-ins plus installed entry-point plugins."""
    return PluginRegistry(builtins=_builtin_modules())


def create(kind: str, name: str, config: Any = None, ctx: BuildContext | None = None) -> Any:
    """Build a registered component; see :meth:`PluginRegistry.create`."""
    return get_registry().create(kind, name, config, ctx)


def names(kind: str) -> list[str]:
    """The registered names of ``kind``."""
    return get_registry().names(kind)


def config_class(kind: str, name: str) -> type[ComponentConfig]:
    return get_registry().config_class(kind, name)
