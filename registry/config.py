"""Component configs: one dataclass per plugin, with the paper's defaults (d3rlpy style).

A config is a plain dataclass whose fields are the plugin's hyperparameters. It knows its
component ``kind`` and registry ``name``, serialises to and from plain dicts (so a run can be
written down as TOML/YAML and replayed), and ``create()``\\ s the component.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from abc import ABC, abstractmethod
from typing import Any, ClassVar, TypeVar

from registry.protocols import BuildContext

__all__ = [
    "ComponentConfig",
    "added_later",
    "renamed",
    "moved",
    "acting_only",
    "acting_only_fields",
    "config_hash",
    "identity_dict",
    "KINDS",
    "ALL_KINDS",
    "coerce_value",
    "dataclass_from_dict",
    "dataclass_to_dict",
]

T = TypeVar("T")

#: The component kinds of IPD's pipeline, in pipeline order.
KINDS: tuple[str, ...] = ("value", "world_model", "uncertainty", "planner", "policy")

#: Every registered kind: the pipeline's, the adapters that adapt a trained actor while it
#: acts (evaluation only: no stage, no cache key), then the baselines ``ipd baseline`` runs.
ALL_KINDS: tuple[str, ...] = (*KINDS, "adapter", "baseline")


@dataclasses.dataclass
class ComponentConfig(ABC):
    """Base of every plugin config.

    Subclasses are ``@dataclass`` es that set the class variables ``kind`` (one of
    :data:`ALL_KINDS`) and ``name`` (the registry key used in the CLI and in run files), and
    implement :meth:`create`.
    """

    kind: ClassVar[str]
    name: ClassVar[str]
    #: fields that change only how the trained component acts, not what it learns: ``ipd
    #: eval RUN --set <kind>.<field>=...`` may change them on a finished run. A field that is
    #: not read while training at all is declared with :func:`acting_only` instead (an acting
    #: option that also stays out of the stage-cache key)
    acting_options: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def create(self, ctx: BuildContext) -> Any:
        """Build the component for the spaces and device described by ``ctx``."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field when a value is out of its range.

        Called when the config is made (so when a run config is resolved, before any stage
        trains) and again before the component is built. Override it; the default accepts
        everything.
        """
        return None

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The fields as plain Python values (JSON/TOML friendly)."""
        return dataclass_to_dict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None = None) -> ComponentConfig:
        """Build a config from ``values``; unknown keys fail with the list of valid ones."""
        config = dataclass_from_dict(cls, values, f"{cls.kind} '{cls.name}'")
        config.validate()
        return config

    def replace(self, **changes: Any) -> ComponentConfig:
        """A copy with ``changes`` applied (validated like :meth:`from_dict`)."""
        merged = self.to_dict()
        merged.update(changes)
        return type(self).from_dict(merged)


def dataclass_from_dict(cls: type[T], values: dict[str, Any] | None, label: str) -> T:
    """Build dataclass ``cls`` from plain ``values`` (strings from the CLI are coerced).

    Unknown keys fail with the list of valid ones; ``label`` names the thing in messages.
    """
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for f in fields.values():  # old names of renamed fields (see `renamed`)
        old = f.metadata.get(WAS)
        if old is not None and old in values:
            if f.name in values:
                raise ValueError(f"{label}: give {f.name} or its old name {old}, not both")
            values[f.name] = values.pop(old)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(
            f"{label} has no option(s) {', '.join(unknown)}; "
            f"valid options: {', '.join(sorted(fields)) or '(none)'}"
        )
    hints = typing.get_type_hints(cls)
    prefix = label.split()[0]
    return cls(**{k: coerce_value(v, hints[k], f"{prefix}.{k}") for k, v in values.items()})


def dataclass_to_dict(obj: Any) -> dict[str, Any]:
    """The fields of a dataclass instance as plain values."""
    return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


#: dataclass-field metadata key of :func:`added_later`: the field's old-behaviour value
BEFORE = "ipd_value_before_the_field_existed"
_SAME = object()


def added_later(default: Any, *, before: Any = _SAME) -> Any:
    """Declare a config field added after runs were recorded (a ``dataclasses.field``).

    ``before`` (default: ``default``) is the value that does what runs recorded before the field
    existed did. At that value the field is left out of :func:`identity_dict`, so of
    :func:`config_hash`, run-folder names and stage-cache keys: adding an option renames no run
    folder and retrains no cached stage. A new field whose *default* changes behaviour gets
    ``before=<the old behaviour>``, so runs at the new default get new names::

        depth: int = added_later(3)  # a new option; depth 3 is what every earlier run did
        mode: str = added_later("mpc", before="greedy")  # a new default that changes behaviour
    """
    return dataclasses.field(
        default=default, metadata={BEFORE: default if before is _SAME else before}
    )


#: dataclass-field metadata key of :func:`renamed`: the field's old name
WAS = "ipd_old_name"


def renamed(default: Any, *, was: str) -> Any:
    """Declare a config field renamed from ``was`` (a ``dataclasses.field``).

    Config files, ``--set`` and saved run configs may still use the old name (it is read as
    the new one), and :func:`identity_dict` hashes the field under its old name, so the rename
    changes no run-folder name or stage-cache key::

        tau: float = renamed(0.7, was="expectile")
    """
    return dataclasses.field(default=default, metadata={WAS: was})


#: dataclass-field metadata key of :func:`moved`: the section whose hash the field belongs to
HASHED_WITH = "ipd_hashed_with_section"


def moved(default: Any, *, hashed_with: str) -> Any:
    """Declare a config field that moved here from the section ``hashed_with``.

    :func:`identity_dict` leaves it out; the run config hashes it with that section instead
    (``RunConfig.hashed_sections``), so the move changes no run-folder name or cache key::

        calibration_pairs: int = moved(50_000, hashed_with="augment")
    """
    return dataclasses.field(default=default, metadata={HASHED_WITH: hashed_with})


#: dataclass-field metadata key of :func:`acting_only`: the field is not read while training
ACTING_ONLY = "ipd_read_only_when_acting"


def acting_only(default: Any, *, new: bool = False) -> Any:
    """Declare a config field read only when the trained component acts, never while it trains
    (a ``dataclasses.field``), e.g. the return-to-go a Decision Transformer is asked for.

    Such a field is an acting option (``ipd eval RUN --set`` may change it on a finished run,
    as those in ``acting_options``) and it names the run (it is in :func:`identity_dict`, so in
    run-folder names), but ``RunConfig.hash_part`` leaves it out of the stage-cache key: runs
    that differ only in it train once and act differently (paper fig. 3's targets). A stage
    that acts while it trains (a curve, ``run.eval_every``) keeps it in its key. ``new``: the
    field was added after runs were recorded, and at ``default`` it is left out of
    :func:`identity_dict`, as an :func:`added_later` field::

        target_return: float = acting_only(3600.0)
        token_shift: float = acting_only(0.0, new=True)
    """
    metadata: dict[str, Any] = {ACTING_ONLY: True}
    if new:
        metadata[BEFORE] = default
    return dataclasses.field(default=default, metadata=metadata)


def acting_only_fields(obj: Any) -> tuple[str, ...]:
    """The names of the :func:`acting_only` fields of the dataclass (or instance) ``obj``."""
    return tuple(f.name for f in dataclasses.fields(obj) if ACTING_ONLY in f.metadata)


def identity_dict(obj: Any) -> dict[str, Any]:
    """What makes dataclass ``obj`` the config it is: the values that are hashed.

    :func:`dataclass_to_dict` without the :func:`added_later` fields at their old-behaviour
    value, so an old config and today's one at the same behaviour give the same dict; a
    :func:`renamed` field appears under its old name.
    """
    return {
        f.metadata.get(WAS, f.name): _plain(getattr(obj, f.name))
        for f in dataclasses.fields(obj)
        if not (BEFORE in f.metadata and getattr(obj, f.name) == f.metadata[BEFORE])
        and HASHED_WITH not in f.metadata
    }


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def coerce_value(value: Any, hint: Any, label: str) -> Any:
    """Convert ``value`` (possibly a string from ``--set k=v``) to the type ``hint``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce_value(value, arg, label)
            except (TypeError, ValueError):
                continue
        raise ValueError(f"{label}: cannot read {value!r} as {hint}")
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v for v in value.replace("(", "").replace(")", "").split(",") if v.strip()]
        inner = args[0] if args else Any
        items = [coerce_value(v, inner, label) for v in value]
        return tuple(items) if origin is tuple else items
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ValueError(f"{label}: expected true/false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise ValueError(f"{label}: expected an integer, got {value!r}")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                number = float(value)  # accepts "100000" and "1e5"
            except ValueError:
                raise ValueError(f"{label}: expected an integer, got {value!r}") from None
            if not number.is_integer():
                raise ValueError(f"{label}: expected an integer, got {value!r}")
            return int(number)
        if isinstance(value, int):
            return value
        raise ValueError(f"{label}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, bool):
            raise ValueError(f"{label}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{label}: expected a number, got {value!r}") from None
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{label}: expected a string, got {value!r}")
        return value
    return value


def config_hash(*parts: Any) -> str:
    """A short stable hash of configs (via :func:`identity_dict`) and plain values."""

    def norm(p: Any) -> Any:
        if isinstance(p, ComponentConfig):
            return {"kind": p.kind, "name": p.name, "config": identity_dict(p)}
        if dataclasses.is_dataclass(p) and not isinstance(p, type):
            return {"type": type(p).__name__, "config": identity_dict(p)}
        return p

    blob = json.dumps([norm(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
