"""A run's configuration: paper defaults < profile < config file < flags < ``--set``.

:func:`resolve_config` builds a :class:`RunConfig` and validates every option of every section
(run settings, each component's config, the augmentation) before anything trains: a bad value
fails here, naming the field and what it accepts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ipd_plugins.augment import AugmentConfig
from ipd_plugins.hardware import PRECISIONS, resolve_device
from ipd_plugins.profiles import DEFAULT_DATASET, PROFILES
from registry import KINDS, ComponentConfig, config_hash, get_registry
from registry.config import (
    BEFORE,
    HASHED_WITH,
    WAS,
    acting_only_fields,
    added_later,
    dataclass_from_dict,
    dataclass_to_dict,
    identity_dict,
)

__all__ = [
    "DEFAULT_COMPONENTS",
    "RUN_KINDS",
    "SECTIONS",
    "RunSettings",
    "RunConfig",
    "load_config_file",
    "parse_overrides",
    "resolve_config",
    "changed_options",
    "MOVED_OPTIONS",
    "check_eval_every",
    "curve_key",
]

#: The paper's pipeline: what ``ipd run`` uses when no component flag is given.
DEFAULT_COMPONENTS: dict[str, str] = {
    "value": "qov",
    "world_model": "pe",
    "uncertainty": "gjs",
    "planner": "mpc",
    "policy": "ipd-dt",
    "adapter": "none",
}

#: The component kinds of an ``ipd run``: the pipeline's stages, then the adapter, which acts
#: at evaluation only (no stage, no cache key). At ``none`` (every run before adapters existed)
#: the adapter is left out of the run's name and hash, so those stay what they were.
RUN_KINDS: tuple[str, ...] = (*KINDS, "adapter")

#: Config-file / ``--set`` sections of an ``ipd run``.
SECTIONS: tuple[str, ...] = ("run", *RUN_KINDS, "augment")

#: Options that moved to another section; the old place is still read (saved configs replay).
MOVED_OPTIONS: dict[tuple[str, str], tuple[str, str]] = {
    ("augment", "calibration_pairs"): ("uncertainty", "calibration_pairs"),
}


@dataclass
class RunSettings:
    """What a run is about, besides its components."""

    dataset: str = ""  # a Minari id, a .hdf5/.h5/.npz path or an `ipd data make` name
    seed: int = 0  # fixes training, augmentation and evaluation
    profile: str = "quick"  # quick | default | paper (step counts and sizes, see README)
    # torch device for every component; auto: a CUDA GPU when torch sees one, else the CPU
    device: str = "auto"
    threads: int | None = None  # torch CPU threads; None: the usable cores not already busy
    # auto: bf16 autocast where the chip computes bf16 natively (AVX-512 BF16, AMX, CUDA), else
    # fp32; every trainable component follows it (hardware.py, benchmarks/results/precision.md)
    precision: str = added_later("auto", before="fp32")
    eval_episodes: int = 10  # evaluation episodes of the final policy (last checkpoint)
    # steps between curve points: the policy (a baseline) scored as the final evaluation scores
    # the last checkpoint, into its log.csv and results.json's `curve`; a multiple of the
    # stage's log_every; 0: off. A point at step k equals a k-step run's score for policies
    # whose schedule does not depend on n_steps (ipd-dt, DT); for others (gtp's curriculum,
    # IQL's cosine schedule) it is a learning curve (ipd_plugins/curve.py)
    eval_every: int = 0
    eval_qop: bool = True  # also score the value learner's own policy pi_QOP (IQL-style)
    env_id: str | None = None  # the gymnasium env of the data (overrides the file's; --env)
    clip_actions: bool = False  # clip dataset actions into the action space instead of failing
    # steps per episode of a D4RL HDF5 file without 'timeouts'/'terminals' (--episode-length)
    episode_length: int | None = added_later(None)
    out_dir: str = "runs"  # where run folders and the stage cache live
    name: str | None = None  # run folder name; default: dataset + components + config hash

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(
                f"run.profile: unknown profile '{self.profile}'; profiles: {', '.join(PROFILES)}"
            )
        if self.seed < 0:
            raise ValueError(f"run.seed must be >= 0, got {self.seed}")
        if self.eval_episodes < 1:
            raise ValueError(f"run.eval_episodes must be >= 1, got {self.eval_episodes}")
        if self.eval_every < 0:
            raise ValueError(f"run.eval_every must be >= 0 (0: off), got {self.eval_every}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(
                f"run.threads must be >= 1 (or none: torch's default), got {self.threads}"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"run.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )
        if self.episode_length is not None and self.episode_length < 1:
            raise ValueError(f"run.episode_length must be >= 1, got {self.episode_length}")
        if not self.out_dir:
            raise ValueError("run.out_dir must name a folder")

    def identity_dict(self) -> dict[str, Any]:
        """The settings a run-folder hash covers: all but the seed and where the run is written
        (:func:`~registry.config.identity_dict`)."""
        ident = identity_dict(self)
        ident["device"] = resolve_device(self.device)  # what ran: "auto" names cpu or cuda
        return {k: v for k, v in ident.items() if k not in ("seed", "out_dir", "name")}


@dataclass
class RunConfig:
    """A fully resolved run: settings, component names, their configs and the augmentation."""

    run: RunSettings
    components: dict[str, str]
    configs: dict[str, ComponentConfig]
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "run": dataclass_to_dict(self.run),
            "components": dict(self.components),
        }
        for kind in RUN_KINDS:
            out[kind] = self.configs[kind].to_dict()
        out["augment"] = dataclass_to_dict(self.augment)
        return out

    @property
    def adapting(self) -> bool:
        """An adapter other than the default ``none`` acts at evaluation."""
        return self.components.get("adapter", "none") != DEFAULT_COMPONENTS["adapter"]

    @property
    def run_dir(self) -> Path:
        return Path(self.run.out_dir) / self.run_name / f"seed_{self.run.seed}"

    @property
    def run_name(self) -> str:
        if self.run.name:
            return self.run.name
        slug = self.run.dataset.replace("/", "_").replace(".", "_").strip("_") or "dataset"
        kinds = RUN_KINDS if self.adapting else KINDS  # `none`: the name of an older run
        comps = "-".join(self.components[k] for k in kinds)
        return f"{slug}__{comps}__{config_hash(self.identity_dict())[:8]}"

    def hashed_sections(self) -> dict[str, dict[str, Any]]:
        """Each section's :func:`~registry.config.identity_dict`, a field declared with
        :func:`~registry.config.moved` hashed with the section it came from."""
        out: dict[str, dict[str, Any]] = {k: identity_dict(self.configs[k]) for k in KINDS}
        if self.adapting:
            out["adapter"] = identity_dict(self.configs["adapter"])
        out["augment"] = identity_dict(self.augment)
        for kind in KINDS:
            config = self.configs[kind]
            for f in dataclasses.fields(config):
                if HASHED_WITH in f.metadata:
                    out[f.metadata[HASHED_WITH]][f.name] = getattr(config, f.name)
        return out

    def hash_part(self, section: str, *, acting: bool = False) -> dict[str, Any]:
        """``section`` as :func:`~registry.config.config_hash` has always seen it (cache keys).

        Without the fields read only when acting (:func:`~registry.config.acting_only`) unless
        ``acting``: for a stage that also acts while it trains (a curve)."""
        ident = self.hashed_sections()[section]
        if section == "augment":
            return {"type": type(self.augment).__name__, "config": ident}
        config = self.configs[section]
        if not acting:  # the names identity_dict hashes them under (a renamed field: its old)
            hashed = {f.name: f.metadata.get(WAS, f.name) for f in dataclasses.fields(config)}
            skip = {hashed[name] for name in acting_only_fields(config)}
            ident = {k: v for k, v in ident.items() if k not in skip}
        return {"kind": config.kind, "name": config.name, "config": ident}

    def identity_dict(self) -> dict[str, Any]:
        """What the run-folder hash covers: every section's identity, without the seed and
        where the run is written."""
        components = dict(self.components)
        if not self.adapting:
            components.pop("adapter", None)  # as runs recorded before adapters existed
        out: dict[str, Any] = {"run": self.run.identity_dict(), "components": components}
        out.update(self.hashed_sections())
        return out


def check_eval_every(eval_every: int, log_every: int | None, where: str) -> None:
    """A curve point is scored when the stage logs (every ``log_every`` steps), so
    ``run.eval_every`` must be a multiple of ``log_every`` (``where``: "policy.log_every")."""
    if eval_every and log_every and eval_every % log_every:
        raise ValueError(
            f"run.eval_every={eval_every} must be a multiple of {where}={log_every}: the "
            f"curve is scored when the stage logs, every {log_every} steps"
        )


def curve_key(settings: RunSettings, adapter: dict[str, Any] | None = None) -> tuple[Any, ...]:
    """What a policy's (a baseline's) stage key adds when it scores a curve: the points are in
    its ``log.csv``, so a stage trained without them (or with other ones) is not reused.
    ``adapter``: the adapter the points act through. Empty without a curve (keys unchanged)."""
    if not settings.eval_every:
        return ()
    return ("curve", settings.eval_every, settings.eval_episodes, adapter or {})


# -- reading configs ---------------------------------------------------------------------------
def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a run config (YAML or TOML; a run folder or its ``config.yaml`` replays that run).

    Only plain data is read (``yaml.safe_load``: a ``!!python`` tag is refused, never run).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "config.yaml"
    if not path.exists():
        raise FileNotFoundError(f"no config file at {path}")
    text = path.read_text()
    if path.suffix == ".toml":
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"{path} is not valid TOML: {err}") from None
    elif path.suffix in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            what = getattr(err, "problem", None) or str(err).splitlines()[0]
            if isinstance(err, yaml.constructor.ConstructorError):
                raise ValueError(
                    f"{path}{where}: refusing a YAML tag that would build a Python object "
                    f"({what}); config files hold plain values only"
                ) from None
            raise ValueError(f"{path} is not valid YAML{where}: {what}") from None
    else:
        raise ValueError(f"{path}: config files must end in .yaml, .yml or .toml")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    recorded = data.pop("meta", None) is not None  # provenance of a previous run; not an input
    for section, values in data.items():
        if not isinstance(values, dict):
            raise ValueError(
                f"{path}: section '{section}' must be a mapping of options, "
                f"got {type(values).__name__} ({values!r})"
            )
    return pin_options_added_later(data) if recorded else data


def pin_options_added_later(data: dict[str, Any]) -> dict[str, Any]:
    """A recorded run config (``config.yaml`` of a run folder) replays the run it records.

    It holds every option that existed when it was written; an option added since is absent,
    and without this its profile's value would apply (e.g. the ``default`` profile's
    ``augment.max_share``), so the replay would not be the run. Each absent option that
    :func:`~registry.config.added_later` marks is set to its value from before it existed.
    """
    reg = get_registry()
    names = {**DEFAULT_COMPONENTS, **data.get("components", {})}
    classes: dict[str, Any] = {"run": RunSettings, "augment": AugmentConfig}
    classes.update({kind: reg.config_class(kind, names[kind]) for kind in RUN_KINDS})
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for section, values in out.items():
        cls = classes.get(section)
        if cls is None or not isinstance(values, dict):
            continue
        for f in dataclasses.fields(cls):
            if f.name not in values and BEFORE in f.metadata:
                values[f.name] = f.metadata[BEFORE]
    return out


def parse_overrides(
    pairs: list[str] | tuple[str, ...], sections: tuple[str, ...] = SECTIONS
) -> dict[str, dict[str, Any]]:
    """``["planner.n_mpc=8", "run.seed=1"]`` -> ``{"planner": {"n_mpc": "8"}, "run": {...}}``."""
    out: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise ValueError(f"--set expects SECTION.KEY=VALUE, got {pair!r}")
        if section not in sections:
            raise ValueError(
                f"--set {pair!r}: unknown section '{section}'; sections: {', '.join(sections)}"
            )
        out.setdefault(section, {})[name.strip()] = value.strip()
    return out


def _move_options(values: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Read options from the places :data:`MOVED_OPTIONS` says they used to be."""
    values = {k: dict(v) for k, v in values.items()}
    for (old_section, old), (new_section, new) in MOVED_OPTIONS.items():
        if old in values.get(old_section, {}):
            values.setdefault(new_section, {}).setdefault(new, values[old_section].pop(old))
    return values


def resolve_config(
    file: dict[str, Any] | None = None,
    components: dict[str, str | None] | None = None,
    run: dict[str, Any] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    check_curve: bool = True,
) -> RunConfig:
    """Paper defaults < profile < config file < command-line flags < ``--set`` overrides.

    Every value is checked here (types, ranges, component names), before any stage trains;
    ``check_curve``: also ``run.eval_every`` against ``policy.log_every`` (False: the run
    settings serve a baseline, which checks them against its own ``log_every``).
    """
    file = _move_options(dict(file or {}))
    overrides = _move_options(dict(overrides or {}))
    unknown = set(file) - {*SECTIONS, "components"}
    if unknown:
        raise ValueError(
            f"config file has unknown section(s) {', '.join(sorted(unknown))}; "
            f"sections: components, {', '.join(SECTIONS)}"
        )
    run_values = {**file.get("run", {}), **{k: v for k, v in (run or {}).items() if v is not None}}
    run_values.update(overrides.get("run", {}))
    profile_name = str(run_values.get("profile", RunSettings.profile))
    if profile_name not in PROFILES:
        raise ValueError(f"unknown profile '{profile_name}'; profiles: {', '.join(PROFILES)}")
    profile = _move_options(PROFILES[profile_name])
    settings = dataclass_from_dict(
        RunSettings, {**profile.get("run", {}), **run_values}, "run settings"
    )
    if not settings.dataset:
        settings.dataset = DEFAULT_DATASET[profile_name]

    names = dict(DEFAULT_COMPONENTS)
    names.update(file.get("components", {}))
    names.update({k: v for k, v in (components or {}).items() if v})
    reg = get_registry()
    configs: dict[str, ComponentConfig] = {}
    for kind in RUN_KINDS:
        cls = reg.config_class(kind, names[kind])
        fields = {f.name for f in dataclasses.fields(cls)}
        section = profile.get(kind, {})
        values = {k: v for k, v in section.items() if k in fields}
        # a sub-section named after the component (e.g. policy.gtp) overrides the shared keys
        values.update(section.get(names[kind], {}))
        # a file's section configures the component the file names; a flag that swaps the
        # component (e.g. --planner greedy over a replayed mpc run) starts from its defaults
        if file.get("components", {}).get(kind, DEFAULT_COMPONENTS[kind]) == names[kind]:
            values.update(file.get(kind, {}))
        values.update(overrides.get(kind, {}))
        configs[kind] = cls.from_dict(values)
    aug_values = {
        **profile.get("augment", {}),
        **file.get("augment", {}),
        **overrides.get("augment", {}),
    }
    aug = dataclass_from_dict(AugmentConfig, aug_values, "augment settings")
    if check_curve:
        log_every = getattr(configs["policy"], "log_every", None)
        check_eval_every(settings.eval_every, log_every, "policy.log_every")
    return RunConfig(settings, names, configs, aug)


def changed_options(cfg: RunConfig) -> list[str]:
    """``SECTION.KEY=VALUE`` for every component and augmentation option that differs from
    what the profile gives these components: how a ``--set`` variant is labelled in tables."""
    base = resolve_config(components=cfg.components, run={"profile": cfg.run.profile})
    mine, theirs = cfg.hashed_sections(), base.hashed_sections()
    values = cfg.to_dict()  # the label shows the value, also where the hash omits it
    out = []
    for section in (*RUN_KINDS, "augment"):
        a, b = mine.get(section, {}), theirs.get(section, {})
        out += [
            f"{section}.{k}={values[section].get(k, a.get(k))}"
            for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)
        ]
    return out
