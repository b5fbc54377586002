"""``ipd sweep``: a grid of runs (datasets x methods x options x seeds) on Ray, each shared stage
computed once.

A *spec* (YAML or TOML; :func:`load_spec`) lists the grid::

    name: planner-grid          # the sweep's name (default: the spec file's stem)
    out: runs/grid              # run folders + the stage cache: a folder every worker sees
    record: results/grid_runs   # optional: each finished trial's config.yaml + results.json
    profile: default            # run.profile of every trial
    run: {threads: 1}           # RunSettings of every trial (default threads: num_cpus)
    resources: {num_cpus: 1, num_gpus: 0}    # per trial (a method may set its own)
    retries: 3                  # times a trial whose worker died is run again
    datasets: [hopper-medium, {dataset: data.hdf5, env_id: Hopper-v5}]
    seeds: [0, 1, 2]
    methods:                    # label -> method; the label is the `ipd compare` row
      ipd: {}                                           # the paper's components
      greedy: {components: {planner: greedy}}
      mpc: {set: [planner.n_mpc=8], grid: {augment.n_aug: [0.5, 1, 2]}}   # 3 trials per cell
      iql: {baseline: iql, set: {baseline.n_steps: 10000}}

Every (dataset, seed, method, grid point) is a *trial*: an ordinary ``ipd run`` or
``ipd baseline`` seed folder, resolved and checked when the spec is read (a trial whose options
are bad is reported and the others run). A trial whose folder already has ``results.json``
(under ``out``, or ``record``, or in a folder of another hash whose config replays to the same
run) is done: running a spec again runs only what is missing.

Scheduling (:func:`run_sweep`): one Ray task per dataset loads (or makes) it and gives its
content hash; from it the stage-cache keys of every trial
(:func:`~ipd_plugins.pipeline.stage_keys`). A value function, world model or augmentation that
several pending trials share gets a task of its own; those trials depend on that task (Ray holds
them, no worker waits) and reuse its artifact, so a planner ablation over 3 seeds trains 3 value
functions. The stage cache's locks (:mod:`ipd_plugins.stages`) still guarantee that no two
processes write one stage, whatever runs beside the sweep. A task whose worker dies is run again
(``retries``) and resumes from its stage's checkpoints; a task that raises is not retried: its
trial is reported failed with the error, and the trials that do not need it go on. Ctrl-C
cancels every task (finished stages stay cached; the same command resumes).

The cache holds locks, so ``out`` must be on a filesystem every worker sees with working
``flock`` (a local disk for one machine; NFSv4, CephFS, Lustre mounted with flock, ... at the
same path on every node of a cluster), as must the datasets (``MINARI_DATASETS_PATH`` or the
files): a worker whose dataset differs from the one the sweep planned with fails saying so.

The executor ``serial`` runs the same trials one after another in this process, without Ray
(``ipd ablate`` uses it, as does ``ipd sweep --serial``).
"""

from __future__ import annotations

import dataclasses
import glob
import itertools
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "SPEC_KEYS",
    "METHOD_KEYS",
    "MethodSpec",
    "SweepSpec",
    "Trial",
    "TrialOutcome",
    "SweepResult",
    "load_spec",
    "parse_spec",
    "expand",
    "find_finished",
    "describe",
    "run_trial",
    "finish_trial",
    "run_trials",
    "dry_run",
    "run_sweep",
]

Echo = Callable[[str], None]

#: The keys of a spec and what each holds.
SPEC_KEYS = {
    "name": "the sweep's name (default: the spec file's stem)",
    "out": "run folders and the stage cache (default runs); every worker must see it",
    "record": "a folder that gets each finished trial's config.yaml and results.json",
    "profile": "run.profile of every trial",
    "run": "RunSettings of every trial (threads default to resources.num_cpus)",
    "resources": "num_cpus, num_gpus of each trial (default 1, 0)",
    "retries": "times a trial whose worker died is run again (default 3)",
    "datasets": "dataset sources, or mappings of RunSettings with a 'dataset' key",
    "seeds": "seeds (default [0])",
    "methods": "label -> method (baseline, components, set, grid, resources)",
}
#: The keys of one method.
METHOD_KEYS = {
    "baseline": "a baseline name (`ipd plugins baseline`); without it the method is IPD",
    "components": "IPD only: kind -> component name (the paper's for the kinds not given)",
    "set": "SECTION.KEY=VALUE options: a list of strings or a mapping",
    "grid": "SECTION.KEY (or components.KIND) -> a list of values: one trial per combination",
    "resources": "num_cpus, num_gpus of this method's trials",
}
STAGE_ORDER = ("value", "world_model", "augment", "policy", "baseline")
#: Stages that get a task of their own when pending trials share them (a shared policy or
#: baseline would be the same run twice: the stage lock makes the second one wait and reuse).
SHARED_STAGES = ("value", "world_model", "augment")


# -- the spec ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class MethodSpec:
    """One method of a spec: IPD (component names, options) or a baseline, and a grid."""

    label: str
    baseline: str | None = None
    components: dict[str, str] = field(default_factory=dict)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # section -> key -> value
    grid: dict[str, list[Any]] = field(default_factory=dict)  # SECTION.KEY -> values
    num_cpus: float | None = None
    num_gpus: float | None = None


@dataclass(frozen=True)
class SweepSpec:
    """A parsed spec (see the module docstring); every key checked, trials not yet resolved."""

    name: str
    out: str
    datasets: list[dict[str, Any]]  # RunSettings values, each with "dataset"
    seeds: list[int]
    methods: list[MethodSpec]
    run: dict[str, Any] = field(default_factory=dict)
    profile: str | None = None
    record: str | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    retries: int = 3
    source: str = "<spec>"


def load_spec(path: str | Path) -> SweepSpec:
    """Read a spec file (``.yaml``/``.yml``/``.toml``; plain data only) and check it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no sweep spec at {path}")
    data = _read_plain(path)
    return parse_spec(data, source=str(path), default_name=path.stem)


def _read_plain(path: Path) -> dict[str, Any]:
    """The spec's mapping, read like a run config (safe YAML, TOML) but with list values."""
    if path.suffix == ".toml":
        import tomllib

        try:
            return tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"{path} is not valid TOML: {err}") from None
    if path.suffix not in (".yaml", ".yml"):
        raise ValueError(f"{path}: a sweep spec must end in .yaml, .yml or .toml")
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        what = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(
            f"{path} is not valid YAML (plain values only): {what}"
            + (f" ({where})" if where else "")
        ) from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a sweep spec is a mapping, got {type(data).__name__}")
    return data


def _number(value: Any, what: str, minimum: float, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} must be a number, got {value!r}")
    if value < minimum or (strict and value == minimum):
        raise ValueError(f"{what} must be {'>' if strict else '>='} {minimum:g}, got {value!r}")
    return float(value)


def _resources(value: Any, where: str) -> tuple[float | None, float | None]:
    if value is None:
        return None, None
    if not isinstance(value, dict) or set(value) - {"num_cpus", "num_gpus"}:
        raise ValueError(f"{where}: resources takes num_cpus and num_gpus, got {value!r}")
    cpus = value.get("num_cpus")
    gpus = value.get("num_gpus")
    return (
        None if cpus is None else _number(cpus, f"{where}: num_cpus", 0, strict=True),
        None if gpus is None else _number(gpus, f"{where}: num_gpus", 0),
    )


def _options(value: Any, sections: Sequence[str], where: str) -> dict[str, dict[str, Any]]:
    """``set``: ``["planner.n_mpc=8"]`` or ``{"planner.n_mpc": 8}`` -> section -> key -> value."""
    from ipd_plugins.run_config import parse_overrides

    if value is None:
        return {}
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list):
        try:
            return parse_overrides([str(v) for v in value], tuple(sections))
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a list of SECTION.KEY=VALUE or a mapping")
    out: dict[str, dict[str, Any]] = {}
    for key, v in value.items():
        section, _, name = _split_key(key, sections, where)
        out.setdefault(section, {})[name] = v
    return out


def _split_key(key: Any, sections: Sequence[str], where: str) -> tuple[str, str, str]:
    section, dot, name = str(key).partition(".")
    if not dot or not name:
        raise ValueError(f"{where}: expected SECTION.KEY, got {key!r}")
    if section not in sections:
        raise ValueError(
            f"{where}: unknown section '{section}' in {key!r}; sections: {', '.join(sections)}"
        )
    return section, dot, name


def _method(label: str, body: Any, where: str) -> MethodSpec:
    from ipd_plugins.baselines.run import SECTIONS as BASELINE_SECTIONS
    from ipd_plugins.run_config import SECTIONS
    from registry import KINDS, get_registry

    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise ValueError(f"{where}: a method is a mapping of {', '.join(METHOD_KEYS)}")
    unknown = set(body) - set(METHOD_KEYS)
    if unknown:
        raise ValueError(
            f"{where}: unknown key(s) {', '.join(sorted(unknown))}; a method takes "
            + "; ".join(f"{k} ({v})" for k, v in METHOD_KEYS.items())
        )
    baseline = body.get("baseline")
    if baseline is not None:
        names = get_registry().names("baseline")
        if baseline not in names:
            raise ValueError(f"{where}: unknown baseline '{baseline}'; baselines: {names}")
        if body.get("components"):
            raise ValueError(f"{where}: a baseline takes no components")
    sections = BASELINE_SECTIONS if baseline else SECTIONS
    components = body.get("components") or {}
    if not isinstance(components, dict) or set(components) - set(KINDS):
        raise ValueError(f"{where}: components maps kinds ({', '.join(KINDS)}) to names")
    grid_in = body.get("grid") or {}
    if not isinstance(grid_in, dict):
        raise ValueError(f"{where}: grid maps SECTION.KEY to a list of values")
    grid: dict[str, list[Any]] = {}
    for key, values in grid_in.items():
        allowed = (*sections, "components") if not baseline else sections
        section, _, name = _split_key(key, allowed, f"{where}: grid")
        if section == "components" and name not in KINDS:
            raise ValueError(f"{where}: grid key {key!r}: components.KIND with KIND in {KINDS}")
        if not isinstance(values, list) or not values:
            raise ValueError(f"{where}: grid {key!r} needs a non-empty list, got {values!r}")
        grid[str(key)] = values
    cpus, gpus = _resources(body.get("resources"), where)
    return MethodSpec(
        label=str(label),
        baseline=baseline,
        components={str(k): str(v) for k, v in components.items()},
        overrides=_options(body.get("set"), sections, f"{where}: set"),
        grid=grid,
        num_cpus=cpus,
        num_gpus=gpus,
    )


def parse_spec(
    data: dict[str, Any], source: str = "<spec>", default_name: str = "sweep"
) -> SweepSpec:
    """Check a spec's mapping (the keys of :data:`SPEC_KEYS`) and return it as a
    :class:`SweepSpec`; every error names the key."""
    unknown = set(data) - set(SPEC_KEYS)
    if unknown:
        raise ValueError(
            f"{source}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; a spec takes "
            + ", ".join(SPEC_KEYS)
        )
    datasets_in = data.get("datasets")
    if isinstance(datasets_in, (str, dict)):
        datasets_in = [datasets_in]
    if not isinstance(datasets_in, list) or not datasets_in:
        raise ValueError(f"{source}: datasets must list at least one dataset")
    datasets = []
    for d in datasets_in:
        entry = {"dataset": d} if isinstance(d, str) else d
        if not isinstance(entry, dict) or not entry.get("dataset"):
            raise ValueError(
                f"{source}: a dataset is a source string or a mapping with 'dataset', got {d!r}"
            )
        datasets.append(dict(entry))
    seeds = data.get("seeds", [0])
    seeds = [seeds] if isinstance(seeds, int) else seeds
    if (
        not isinstance(seeds, list)
        or not seeds
        or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds)
    ):
        raise ValueError(f"{source}: seeds must be a list of integers >= 0, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"{source}: seeds has a seed twice: {seeds}")
    methods_in = data.get("methods")
    if not isinstance(methods_in, dict) or not methods_in:
        raise ValueError(f"{source}: methods must map labels to methods, e.g. 'ipd: {{}}'")
    methods = [_method(k, v, f"{source}: methods.{k}") for k, v in methods_in.items()]
    run = data.get("run") or {}
    if not isinstance(run, dict):
        raise ValueError(f"{source}: run is a mapping of RunSettings values")
    fixed = {"dataset", "seed", "out_dir"} & set(run)
    if fixed:
        raise ValueError(f"{source}: run.{sorted(fixed)[0]} comes from the spec's own keys")
    cpus, gpus = _resources(data.get("resources"), f"{source}: resources")
    retries = data.get("retries", 3)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"{source}: retries must be an integer >= 0, got {retries!r}")
    out = data.get("out", "runs")
    if not isinstance(out, str) or not out:
        raise ValueError(f"{source}: out must name a folder")
    record = data.get("record")
    if record is not None and (not isinstance(record, str) or not record):
        raise ValueError(f"{source}: record must name a folder")
    name = str(data.get("name") or default_name)
    if not name or "/" in name:
        raise ValueError(f"{source}: name must be a plain name, got {name!r}")
    profile = data.get("profile")
    return SweepSpec(
        name=name,
        out=out,
        datasets=datasets,
        seeds=list(seeds),
        methods=methods,
        run=dict(run),
        profile=None if profile is None else str(profile),
        record=record,
        num_cpus=1.0 if cpus is None else cpus,
        num_gpus=0.0 if gpus is None else gpus,
        retries=retries,
        source=source,
    )


# -- trials ------------------------------------------------------------------------------------
@dataclass
class Trial:
    """One run of the grid: what a worker replays (``config``) and where it writes.

    ``config`` is the fully resolved config (the ``config.yaml`` an ``ipd run`` or
    ``ipd baseline`` writes, without ``meta``); ``error`` is why the trial could not be
    resolved (it is then reported, never run).
    """

    index: int  # 1-based, in spec order
    label: str  # the method label (results.json "label", a row of `ipd compare`)
    method: str  # "ipd" or a baseline name
    dataset: str
    seed: int
    config: dict[str, Any] = field(default_factory=dict)
    run_dir: str = ""
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    error: str | None = None

    @property
    def title(self) -> str:
        return f"{self.label}, {self.dataset}, seed {self.seed}"

    @property
    def out_dir(self) -> str:
        return str(self.config["run"]["out_dir"])

    def resolve(self) -> Any:
        """The ``RunConfig`` (IPD) or ``(RunSettings, BaselineConfig)`` (a baseline)."""
        if self.method == "ipd":
            from ipd_plugins.run_config import resolve_config

            return resolve_config(file=self.config)
        from ipd_plugins.baselines.run import resolve_settings

        return resolve_settings(self.method, None, {}, self.config)

    def settings(self) -> Any:
        """The trial's :class:`~ipd_plugins.run_config.RunSettings`."""
        resolved = self.resolve()
        return resolved.run if self.method == "ipd" else resolved[0]

    def identity(self) -> dict[str, Any]:
        """What the run-folder hash covers (equal identities: the same run)."""
        resolved = self.resolve()
        if self.method == "ipd":
            return resolved.identity_dict()
        from ipd_plugins.baselines.run import baseline_identity

        return baseline_identity(*resolved)

    def data_identity(self) -> tuple[Any, ...]:
        """What decides the dataset a trial reads (trials with equal ones read the same)."""
        run = self.config["run"]
        return (
            run["dataset"],
            run.get("env_id"),
            run.get("clip_actions"),
            run.get("episode_length"),
        )

    @classmethod
    def from_run_config(cls, cfg: Any, label: str, index: int = 1) -> Trial:
        """An ``ipd run`` already resolved (e.g. a cell of ``ipd ablate``) as a trial."""
        threads = cfg.run.threads or 1
        return cls(
            index=index,
            label=label,
            method="ipd",
            dataset=cfg.run.dataset,
            seed=cfg.run.seed,
            config=cfg.to_dict(),
            run_dir=str(cfg.run_dir),
            num_cpus=float(threads),
        )


def _grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*grid.values())]


def _trial(
    spec: SweepSpec, m: MethodSpec, point: dict[str, Any], entry: dict[str, Any], seed: int, i: int
) -> Trial:
    cpus = m.num_cpus if m.num_cpus is not None else spec.num_cpus
    gpus = m.num_gpus if m.num_gpus is not None else spec.num_gpus
    label = m.label
    if point:
        shown = [f"{k.removeprefix('components.')}={v}" for k, v in point.items()]
        label = f"{m.label}[{','.join(shown)}]"
    run = {**spec.run, **entry, "seed": seed, "out_dir": spec.out}
    if spec.profile is not None:
        run["profile"] = spec.profile
    run.setdefault("threads", max(1, round(cpus)))
    trial = Trial(i, label, m.baseline or "ipd", str(entry["dataset"]), seed, {}, "", cpus, gpus)
    overrides = {k: dict(v) for k, v in m.overrides.items()}
    components = dict(m.components)
    for key, value in point.items():
        section, _, name = key.partition(".")
        if section == "components":
            components[name] = str(value)
        else:
            overrides.setdefault(section, {})[name] = value
    try:
        if m.baseline is None:
            from ipd_plugins.run_config import resolve_config

            cfg = resolve_config(components=components, run=run, overrides=overrides)
            trial.config, trial.run_dir = cfg.to_dict(), str(cfg.run_dir)
        else:
            from ipd_plugins.baselines.run import baseline_run_name, resolve_settings
            from registry.config import dataclass_to_dict

            settings, bconf = resolve_settings(m.baseline, run, overrides, {})
            trial.config = {
                "run": dataclass_to_dict(settings),
                "baseline": {"algo": m.baseline, **bconf.to_dict()},
            }
            name = baseline_run_name(settings, bconf)
            trial.run_dir = str(Path(settings.out_dir) / name / f"seed_{settings.seed}")
    except (ValueError, KeyError, TypeError) as err:
        trial.error = _first_line(err)
    return trial


def expand(spec: SweepSpec) -> list[Trial]:
    """Every trial of the spec, dataset-major, then seed, then method (one dataset's cache is
    warm while its trials run), each resolved and checked; two trials with one run folder fail.
    """
    trials: list[Trial] = []
    for entry in spec.datasets:
        for seed in spec.seeds:
            for m in spec.methods:
                for point in _grid_points(m.grid):
                    trials.append(_trial(spec, m, point, entry, seed, len(trials) + 1))
    owners: dict[str, Trial] = {}
    for t in trials:
        if t.error is None and t.run_dir in owners:
            raise ValueError(
                f"{spec.source}: trials '{owners[t.run_dir].title}' and '{t.title}' are the same "
                f"run ({t.run_dir}); give them different options"
            )
        owners[t.run_dir] = t
    return trials


def find_finished(trial: Trial, record: str | None = None) -> Path | None:
    """The ``results.json`` of a finished run equal to ``trial``: its own folder under ``out``
    or ``record``, or a folder of another hash (written before a config field was added)
    whose ``config.yaml`` replays to the same run."""
    from ipd_plugins.run_config import load_config_file

    out = Path(trial.out_dir)
    rel = Path(trial.run_dir).relative_to(out)
    bases = [out] + ([Path(record)] if record else [])
    for base in bases:
        if (base / rel / "results.json").is_file():
            return base / rel / "results.json"
    stem = rel.parent.name.rsplit("__", 1)[0]
    if stem == rel.parent.name:
        return None
    identity = None
    for base in bases:
        pattern = str(base / f"{glob.escape(stem)}__*" / rel.name / "results.json")
        for cand in sorted(glob.glob(pattern)):
            try:
                other = dataclasses.replace(trial, config=load_config_file(Path(cand).parent))
                other.config.pop("meta", None)
                identity = identity if identity is not None else trial.identity()
                if other.identity() == identity:
                    return Path(cand)
            except (ValueError, KeyError, TypeError, FileNotFoundError):
                continue
    return None


# -- stages ------------------------------------------------------------------------------------
def _stage_keys(trial: Trial, data_hash: str, env_id: str | None) -> dict[str, str]:
    """The stage-cache keys of a trial on data of hash ``data_hash``."""
    resolved = trial.resolve()
    if trial.method == "ipd":
        from ipd_plugins.pipeline import stage_keys

        return stage_keys(resolved, data_hash, env_id)
    from ipd_plugins.baselines.run import baseline_key

    settings, bconf = resolved
    return {"baseline": baseline_key(bconf, data_hash, env_id, settings.seed)}


def _shared(keys: dict[int, dict[str, str]]) -> dict[tuple[str, str], list[int]]:
    """(stage, key) -> the trials that need it, for every stage needed by two or more."""
    users: dict[tuple[str, str], list[int]] = {}
    for index, by_stage in keys.items():
        for stage, key in by_stage.items():
            users.setdefault((stage, key), []).append(index)
    return {k: v for k, v in users.items() if len(v) > 1}


def describe(
    trials: Sequence[Trial], finished: dict[int, Path | None], spec: SweepSpec | None = None
) -> str:
    """The dry run: every trial with its status, then the stages the trials share.

    A dry run loads no data: keys are computed with the dataset's name in place of its content
    hash, which groups the trials exactly as the real keys do.
    """
    from registry.config import config_hash

    lines = []
    if spec is not None:
        lines.append(
            f"sweep '{spec.name}' ({spec.source}): {len(trials)} trials, out {spec.out}"
            + (f", record {spec.record}" if spec.record else "")
            + f", {spec.num_cpus:g} CPU / {spec.num_gpus:g} GPU per trial"
        )
    width = max((len(t.label) for t in trials), default=6)
    dwidth = max((len(t.dataset) for t in trials), default=7)
    lines.append(
        f"{'#':>4}  {'status':<8} {'method':<{width}}  {'dataset':<{dwidth}}  seed  folder"
    )
    keys: dict[int, dict[str, str]] = {}
    for t in trials:
        done = finished.get(t.index)
        if t.error is not None:
            status, where = "invalid", t.error
        elif done is not None:
            status, where = "done", str(Path(done).parent)
        else:
            status, where = "to run", t.run_dir
        if t.error is None:
            data_id = config_hash("data", *t.data_identity())
            keys[t.index] = _stage_keys(t, data_id, t.config["run"].get("env_id"))
        lines.append(
            f"{t.index:>4}  {status:<8} {t.label:<{width}}  {t.dataset:<{dwidth}}  {t.seed:>4}  "
            + where
        )
    pending = {i: k for i, k in keys.items() if finished.get(i) is None}
    counts = {s: len({k[s] for k in keys.values() if s in k}) for s in STAGE_ORDER}
    todo = {s: len({k[s] for k in pending.values() if s in k}) for s in STAGE_ORDER}
    n_done = sum(1 for t in trials if t.error is None and finished.get(t.index) is not None)
    n_bad = sum(1 for t in trials if t.error is not None)
    lines += [
        "",
        f"{len(trials)} trials: {n_done} done, {len(trials) - n_done - n_bad} to run, "
        f"{n_bad} invalid.",
        f"stages: {sum(counts.values())} ("
        + ", ".join(f"{s} {n}" for s, n in counts.items() if n)
        + f"); to make: {sum(todo.values())}"
        + (" (" + ", ".join(f"{s} {n}" for s, n in todo.items() if n) + ")" if pending else ""),
    ]
    shared = _shared(keys)
    if not shared:
        lines.append("shared by several trials: none (every trial trains its own stages)")
    else:
        lines.append(
            "shared by several trials (made once; the trials that still need it wait for it):"
        )
        for (stage, _key), users in sorted(
            shared.items(), key=lambda kv: (kv[1][0], STAGE_ORDER.index(kv[0][0]))
        ):
            waiting = [i for i in users if i in pending]
            lines.append(
                f"  {stage:<11} trials {', '.join(map(str, users))}"
                + (
                    f" ({len(waiting)} still to run)"
                    if waiting and len(waiting) < len(users)
                    else ""
                )
            )
    lines.append(
        "(a dry run loads no data: stages are grouped by dataset name and configs; "
        "the cache is not looked at)"
    )
    return "\n".join(lines)


# -- outcomes ----------------------------------------------------------------------------------
@dataclass
class TrialOutcome:
    """What became of a trial: ``done`` (earlier), ``finished`` (now), ``failed``, ``invalid``
    or ``cancelled``."""

    trial: Trial
    status: str
    results: str | None = None  # its results.json
    error: str | None = None
    node: str | None = None  # the Ray node that ran it
    seconds: float | None = None
    exception: BaseException | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        t = self.trial
        return {
            "index": t.index,
            "label": t.label,
            "method": t.method,
            "dataset": t.dataset,
            "seed": t.seed,
            "run_dir": t.run_dir,
            "status": self.status,
            "results": self.results,
            "error": self.error,
            "node": self.node,
            "seconds": self.seconds,
        }


@dataclass
class SweepResult:
    outcomes: list[TrialOutcome]
    summary: Path | None = None

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def ok(self) -> bool:
        return all(o.status in ("done", "finished") for o in self.outcomes)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:500]


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def finish_trial(trial: Trial, results: Path, record: str | None = None) -> None:
    """After a trial: its label in ``results.json`` (for ``ipd compare``) and, with ``record``,
    a copy of its ``config.yaml`` and ``results.json`` there."""
    from ipd_plugins.files import atomic_write_text, write_json

    data = json.loads(results.read_text())
    if data.get("label") != trial.label:
        data["label"] = trial.label
        write_json(results, data)
    if record:
        folder = results.parent
        dest = Path(record) / Path(trial.run_dir).relative_to(trial.out_dir)
        for name in ("config.yaml", "results.json"):
            src, copy = folder / name, dest / name
            if src.exists() and (not copy.exists() or copy.read_text() != src.read_text()):
                atomic_write_text(copy, src.read_text())


def run_trial(trial: Trial, echo: Echo = print, progress: bool = False) -> dict[str, Any]:
    """Run (resume, reuse) one trial in this process; returns its ``results.json`` content."""
    if trial.method == "ipd":
        from ipd_plugins.pipeline import run_pipeline
        from ipd_plugins.run_config import resolve_config

        return run_pipeline(resolve_config(file=trial.config), echo=echo, progress=progress)
    from ipd_plugins.baselines.run import run_baseline

    return run_baseline(trial.method, file=trial.config, echo=echo)


class _Progress:
    """Counts and the progress line: done / running / failed / queued, elapsed, estimate."""

    def __init__(self, total: int, echo: Echo, prefix: str, every: float):
        self.total, self.echo, self.prefix, self.every = total, echo, prefix, every
        self.t0 = self.last = time.monotonic()
        self.done = self.failed = self.finished_now = 0

    def line(self, running: int, extra: str = "") -> str:
        elapsed = time.monotonic() - self.t0
        queued = self.total - self.done - self.failed - running
        left = self.total - self.done - self.failed
        if self.finished_now and left:
            estimate = f", ~{_duration(left * elapsed / self.finished_now)} left"
        elif left:
            estimate = ", estimate after the first trial"
        else:
            estimate = ""
        return (
            f"{self.prefix} {self.done}/{self.total} done, {running} running, {self.failed} "
            f"failed, {queued} queued{extra} | {_duration(elapsed)} elapsed{estimate}"
        )

    def show(self, running: int, extra: str = "", force: bool = False) -> None:
        if force or time.monotonic() - self.last >= self.every:
            self.last = time.monotonic()
            self.echo(self.line(running, extra))


# -- executors ---------------------------------------------------------------------------------
def run_trials(
    trials: Sequence[Trial],
    *,
    executor: str = "ray",
    record: str | None = None,
    echo: Echo = print,
    progress: bool = False,
    prefix: str = "[sweep]",
    progress_seconds: float = 60.0,
    address: str | None = None,
    num_cpus: int | None = None,
    retries: int = 3,
    logs: str | Path | None = None,
    runtime_env: dict[str, Any] | None = None,
) -> list[TrialOutcome]:
    """Run every trial that is not done yet; returns an outcome per trial, in order.

    ``executor``: ``"ray"`` (a local Ray instance sized to ``num_cpus`` or the machine, or the
    cluster at ``address``; see the module docstring) or ``"serial"`` (in this process, one
    after another, ``progress`` bars allowed). ``logs``: the folder of the Ray tasks' logs
    (default ``<out>/sweeps/logs``). ``runtime_env`` goes to ``ray.init``.
    """
    if executor not in ("ray", "serial"):
        raise ValueError(f"unknown executor '{executor}'; executors: ray, serial")
    outcomes: dict[int, TrialOutcome] = {}
    todo = []
    for t in trials:
        if t.error is not None:
            outcomes[t.index] = TrialOutcome(t, "invalid", error=t.error)
            echo(f"{prefix} {t.title}: invalid: {t.error}")
            continue
        done = find_finished(t, record)
        if done is not None:
            if Path(done).resolve().parent == Path(t.run_dir).resolve():
                finish_trial(t, done, record)
            outcomes[t.index] = TrialOutcome(t, "done", results=str(done))
            echo(f"{prefix} {t.title}: finished earlier ({done.parent})")
            continue
        todo.append(t)
    counter = _Progress(len(trials), echo, prefix, progress_seconds)
    counter.done = sum(1 for o in outcomes.values() if o.status == "done")
    counter.failed = sum(1 for o in outcomes.values() if o.status == "invalid")
    if todo:
        if executor == "serial":
            _run_serial(todo, outcomes, counter, record, echo, progress)
        else:
            _run_ray(
                todo, outcomes, counter, record, echo, address, num_cpus, retries, logs, runtime_env
            )
    return [outcomes[t.index] for t in trials]


def _run_serial(
    todo: list[Trial],
    outcomes: dict[int, TrialOutcome],
    counter: _Progress,
    record: str | None,
    echo: Echo,
    progress: bool,
) -> None:
    prefix = counter.prefix
    for t in todo:
        echo(f"{prefix} {t.title} -> {t.run_dir}")
        t0 = time.perf_counter()
        try:
            run_trial(t, echo=echo, progress=progress)
            results = Path(t.run_dir) / "results.json"
            finish_trial(t, results, record)
        except Exception as err:  # a trial's own failure: reported, the others go on
            counter.failed += 1
            outcomes[t.index] = TrialOutcome(
                t, "failed", error=f"{type(err).__name__}: {_first_line(err)}", exception=err
            )
            echo(f"{prefix} {t.title}: failed: {type(err).__name__}: {_first_line(err)}")
        else:
            counter.done += 1
            counter.finished_now += 1
            seconds = time.perf_counter() - t0
            outcomes[t.index] = TrialOutcome(t, "finished", results=str(results), seconds=seconds)
        counter.show(0, force=True)


# -- Ray: the tasks (run in worker processes; module-level so that workers import them) --------
class _Monitor:
    """A Ray actor the tasks tell when they start (and where): the "running" of the progress."""

    def __init__(self) -> None:
        self.started: dict[str, str] = {}

    def start(self, name: str, node: str) -> None:
        self.started[name] = node

    def snapshot(self) -> dict[str, str]:
        return dict(self.started)


def _enter(ctx: dict[str, Any], monitor: Any) -> tuple[Echo, str]:
    """A task's start: the sweep's folder, a log file, the monitor told; returns echo, node."""
    import ray

    cwd = ctx["cwd"]
    if os.path.isdir(cwd):
        os.chdir(cwd)
    elif ctx.get("relative"):
        raise FileNotFoundError(
            f"the sweep's folder {cwd} does not exist on this node: run the sweep from a folder "
            "of the shared filesystem, or give out/record/datasets as absolute paths"
        )
    node = ray.get_runtime_context().get_node_id()
    monitor.start.remote(ctx["name"], node)
    log = Path(ctx["log"])
    log.parent.mkdir(parents=True, exist_ok=True)

    def echo(msg: str) -> None:
        with log.open("a") as f:
            f.write(f"[{time.strftime('%H:%M:%S')}] {msg}\n")

    echo(f"{ctx['name']} on node {node}, pid {os.getpid()}")
    return echo, node


def _data_task(run: dict[str, Any], ctx: dict[str, Any], monitor: Any) -> dict[str, Any]:
    """Load (or make) a dataset; its content hash and environment give the stage keys."""
    from ipd_plugins.pipeline import prepare

    echo, node = _enter(ctx, monitor)
    p = prepare(
        run["dataset"],
        env_id=run.get("env_id"),
        clip_actions=bool(run.get("clip_actions")),
        episode_length=run.get("episode_length"),
        device="cpu",
        out_dir=run["out_dir"],
        echo=echo,
    )
    return {"data_hash": p.data_hash, "env_id": p.ctx.env_id, "node": node}


def _stage_task(
    config: dict[str, Any], stage: str, key: str, ctx: dict[str, Any], monitor: Any, *deps: Any
) -> dict[str, Any]:
    """Make (or reuse) one shared stage of IPD's pipeline; ``deps``: the stages it needs."""
    from ipd_plugins.hardware import set_threads
    from ipd_plugins.pipeline import fit_value, fit_world_model, imagine, prepare_run, stage_keys
    from ipd_plugins.run_config import resolve_config
    from ipd_plugins.stages import StageCache

    echo, node = _enter(ctx, monitor)
    cfg = resolve_config(file=config)
    set_threads(cfg.run.threads)
    p = prepare_run(cfg.run, echo)
    keys = stage_keys(cfg, p.data_hash, p.ctx.env_id)
    if p.data_hash != ctx["data_hash"]:
        raise ValueError(
            f"the dataset {cfg.run.dataset} on node {node} (hash {p.data_hash}) is not the one "
            f"the sweep planned with (hash {ctx['data_hash']}): every worker must read the same "
            "data; put MINARI_DATASETS_PATH (or the dataset files) on the shared filesystem"
        )
    if keys[stage] != key:
        raise ValueError(
            f"node {node} computes another {stage} key than the sweep's driver ({keys[stage]} vs "
            f"{key}): install the same ipd and plugins on every node"
        )
    tb = Path(ctx["tb_dir"]) if ctx.get("tb_dir") else None
    cache = StageCache(cfg.run.out_dir, echo, tb_dir=tb)
    if stage == "value":
        fit_value(cache, cfg, p, key)
    elif stage == "world_model":
        fit_world_model(cache, cfg, p, key)
    else:
        value = fit_value(cache, cfg, p, keys["value"])
        world_model = fit_world_model(cache, cfg, p, keys["world_model"])
        imagine(cache, cfg, p, key, value, world_model, progress=False)
    record = cache.records[stage]
    return {"node": node, "reused": record.reused, "seconds": record.seconds}


def _trial_task(trial: Trial, ctx: dict[str, Any], monitor: Any, *deps: Any) -> dict[str, Any]:
    """Run one trial (its shared stages, ``deps``, are made: it reuses them)."""
    echo, node = _enter(ctx, monitor)
    t0 = time.perf_counter()
    results = run_trial(trial, echo=echo, progress=False)
    path = Path(trial.run_dir) / "results.json"
    finish_trial(trial, path, ctx.get("record"))
    note = None
    seen = results.get("dataset", {}).get("hash")
    if ctx.get("data_hash") and seen != ctx["data_hash"]:
        note = (
            f"read data of hash {seen}, the sweep planned with {ctx['data_hash']}: put the "
            "datasets on the shared filesystem"
        )
        echo(f"note: {note}")
    score = results.get("scores", {}).get("policy", {})
    return {
        "node": node,
        "seconds": time.perf_counter() - t0,
        "results": str(path),
        "score": score.get("normalized_mean", score.get("mean_return")),
        "note": note,
    }


# -- Ray: the driver ---------------------------------------------------------------------------
def _ray_error(err: BaseException) -> str:
    """One line for a failed Ray task: the task's own exception, or why its worker died."""
    import ray.exceptions as rex

    if isinstance(err, rex.RayTaskError):
        cause = getattr(err, "cause", None)
        text = f"{type(cause).__name__}: {_first_line(cause)}" if cause else _first_line(err)
        if "could not be computed" in str(err) and "_stage_task(" in str(err):
            return f"a shared stage it needs failed: {text}"  # Ray's words for a failed input
        return text
    if isinstance(err, rex.TaskCancelledError):
        return "cancelled"
    return f"{type(err).__name__}: {_first_line(err)} (its worker died; retries used up)"


def _init_ray(address: str | None, num_cpus: int | None, runtime_env: dict | None) -> bool:
    """Connect to ``address`` or start a local instance; False when Ray was already up."""
    import logging

    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    if runtime_env:
        kwargs["runtime_env"] = runtime_env
    if address:
        ray.init(address=address, **kwargs)
    else:
        from ipd_plugins.hardware import usable_cores

        ray.init(
            address="local",
            num_cpus=num_cpus or usable_cores(),
            include_dashboard=False,
            **kwargs,
        )
    return True


def _check_fits(todo: Sequence[Trial], echo: Echo, local: bool) -> None:
    """A trial that asks for more than any node has would wait forever: say so first."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    for t in todo:
        if not any(r.get("CPU", 0) >= t.num_cpus and r.get("GPU", 0) >= t.num_gpus for r in nodes):
            have = ", ".join(f"{r.get('CPU', 0):g} CPU/{r.get('GPU', 0):g} GPU" for r in nodes)
            msg = (
                f"trial '{t.title}' asks for {t.num_cpus:g} CPU and {t.num_gpus:g} GPU per "
                f"worker; the nodes have {have or 'nothing'}"
            )
            if local:
                raise ValueError(msg + ": lower resources in the spec (or raise --num-cpus)")
            echo(f"warning: {msg}; it waits until such a node joins")
            return


def _run_ray(
    todo: list[Trial],
    outcomes: dict[int, TrialOutcome],
    counter: _Progress,
    record: str | None,
    echo: Echo,
    address: str | None,
    num_cpus: int | None,
    retries: int,
    logs: str | Path | None,
    runtime_env: dict | None,
) -> None:
    try:
        import ray
    except ImportError:  # pragma: no cover - the test and sweep extras bring it
        raise ValueError(
            "ipd sweep needs Ray: pip install -e '.[sweep]' (or --serial to run without it)"
        ) from None

    started_here = _init_ray(address, num_cpus, runtime_env)
    driver = _RayDriver(todo, outcomes, counter, record, echo, retries, logs)
    try:
        _check_fits(todo, echo, local=not address)
        driver.run()
    except KeyboardInterrupt:
        driver.cancel()
        raise
    finally:
        driver.close()
        if started_here:
            ray.shutdown()


class _RayDriver:
    """Submits the data, stage and trial tasks of :func:`_run_ray` and follows them."""

    def __init__(
        self,
        todo: list[Trial],
        outcomes: dict[int, TrialOutcome],
        counter: _Progress,
        record: str | None,
        echo: Echo,
        retries: int,
        logs: str | Path | None,
    ):
        import ray

        self.todo, self.outcomes, self.counter = todo, outcomes, counter
        self.record, self.echo, self.retries, self.prefix = record, echo, retries, counter.prefix
        log_dir = Path(logs) if logs else Path(todo[0].out_dir) / "sweeps" / "logs"
        self.log_dir = log_dir.resolve()
        self.cwd = os.getcwd()
        paths = [t.out_dir for t in todo] + ([record] if record else [])
        self.relative = any(not Path(p).is_absolute() for p in paths)
        self.monitor: Any = None
        self.pending: dict[Any, tuple[str, Any]] = {}
        self.trial_names: set[str] = set()
        self.stage_names: set[str] = set()
        self.ended: set[str] = set()  # tasks whose result came back
        self.data_task = ray.remote(_data_task)
        self.stage_task = ray.remote(_stage_task)
        self.trial_task = ray.remote(_trial_task)

    def ctx(self, name: str, **extra: Any) -> dict[str, Any]:
        safe = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in name)
        return {
            "cwd": self.cwd,
            "relative": self.relative,
            "name": name,
            "log": str(self.log_dir / f"{safe}.log"),
            "record": self.record,
            **extra,
        }

    def run(self) -> None:
        import ray

        self.monitor = ray.remote(num_cpus=0)(_Monitor).remote()
        # 1. one task per dataset: load (or make) it and hash it; its trials follow
        groups: dict[tuple[Any, ...], list[Trial]] = {}
        for t in self.todo:
            groups.setdefault(t.data_identity(), []).append(t)
        for g, members in enumerate(groups.values()):
            first = members[0]
            opts = {"num_cpus": min(1.0, first.num_cpus), "max_retries": self.retries}
            ref = self.data_task.options(**opts).remote(
                first.config["run"], self.ctx(f"data-{g + 1}-{first.dataset}"), self.monitor
            )
            self.pending[ref] = ("data", members)
        n = len(groups)
        self.echo(
            f"{self.prefix} {len(self.todo)} trials to run on {n} dataset{'s' if n > 1 else ''}; "
            f"task logs in {self.log_dir}"
        )
        while self.pending:
            ready, _ = ray.wait(list(self.pending), num_returns=1, timeout=1.0)
            changed = False
            for ref in ready:
                kind, item = self.pending.pop(ref)
                try:
                    value = ray.get(ref)
                except Exception as err:  # the task's own error, or its worker died too often
                    changed |= self.failed(kind, item, err)
                else:
                    changed |= self.succeeded(kind, item, value)
            if changed or time.monotonic() - self.counter.last >= self.counter.every:
                trials, stages = self.running()
                extra = f" (+{stages} shared stage{'s' if stages > 1 else ''})" if stages else ""
                self.counter.show(trials, extra, force=changed)

    def submit(self, members: list[Trial], data: dict[str, Any]) -> None:
        """2. The tasks of the stages ``members`` (one dataset's trials) share, then the trials,
        each depending on the tasks of the stages it needs (Ray holds it until they are made).
        """
        keys = {t.index: _stage_keys(t, data["data_hash"], data["env_id"]) for t in members}
        by_index = {t.index: t for t in members}
        cache = Path(members[0].out_dir) / "cache"
        refs: dict[tuple[str, str], Any] = {}  # (stage, key) -> the task making it
        shared = sorted(_shared(keys).items(), key=lambda kv: STAGE_ORDER.index(kv[0][0]))
        for (stage, key), users in shared:  # value and world model before augment
            if stage not in SHARED_STAGES or (cache / stage / key / "done.json").exists():
                continue  # a policy/baseline stage, or one made earlier: the trials load it
            first = by_index[users[0]]
            upstream = ("value", "world_model") if stage == "augment" else ()
            deps = [
                refs[u, keys[first.index][u]] for u in upstream if (u, keys[first.index][u]) in refs
            ]
            name = f"stage-{stage}-{key[:10]}"
            ctx = self.ctx(
                name, data_hash=data["data_hash"], tb_dir=str(Path(first.run_dir).resolve() / "tb")
            )
            ref = self.stage_task.options(**self.resources(first)).remote(
                first.config, stage, key, ctx, self.monitor, *deps
            )
            refs[stage, key] = ref
            self.pending[ref] = ("stage", (stage, key, users))
            self.stage_names.add(name)
            self.echo(
                f"{self.prefix} {stage} stage {key[:10]}: made once, for trials "
                + ", ".join(map(str, users))
            )
        for t in members:
            deps = [refs[sk] for sk in keys[t.index].items() if sk in refs]
            ctx = self.ctx(_trial_name(t), data_hash=data["data_hash"])
            ref = self.trial_task.options(**self.resources(t)).remote(t, ctx, self.monitor, *deps)
            self.pending[ref] = ("trial", t)
            self.trial_names.add(_trial_name(t))

    def resources(self, t: Trial) -> dict[str, Any]:
        """Ray options of a task run for ``t``: its CPUs and GPUs; retried if its worker dies
        (an exception of its own is not retried: it would fail again)."""
        return {"num_cpus": t.num_cpus, "num_gpus": t.num_gpus, "max_retries": self.retries}

    def succeeded(self, kind: str, item: Any, value: dict[str, Any]) -> bool:
        if kind == "data":
            self.submit(item, value)
            return False
        if kind == "stage":
            stage, key, _users = item
            self.ended.add(f"stage-{stage}-{key[:10]}")
            what = "reused" if value["reused"] else "made"
            self.echo(
                f"{self.prefix} {stage} stage {key[:10]} {what} "
                f"({_duration(value['seconds'] or 0.0)})"
            )
            return False
        t: Trial = item
        self.ended.add(_trial_name(t))
        self.counter.done += 1
        self.counter.finished_now += 1
        self.outcomes[t.index] = TrialOutcome(
            t,
            "finished",
            results=value["results"],
            node=value["node"],
            seconds=value["seconds"],
            error=value.get("note"),
        )
        score = value.get("score")
        self.echo(
            f"{self.prefix} {t.title}: finished, score "
            + ("-" if score is None else f"{score:.1f}")
            + f" ({_duration(value['seconds'])}, node {value['node'][:8]})"
        )
        return True

    def failed(self, kind: str, item: Any, err: BaseException) -> bool:
        why = _ray_error(err)
        if kind == "stage":  # the trials that need it fail with it (reported one by one)
            stage, key, _users = item
            self.ended.add(f"stage-{stage}-{key[:10]}")
            self.echo(f"{self.prefix} {stage} stage {key[:10]} failed: {why}")
            return False
        if kind == "data":
            why = f"its dataset could not be prepared: {why}"
        for t in item if kind == "data" else [item]:  # a dataset's trials were never submitted
            self.ended.add(_trial_name(t))
            self.counter.failed += 1
            self.outcomes[t.index] = TrialOutcome(t, "failed", error=why, exception=err)
            self.echo(f"{self.prefix} {t.title}: failed: {why}")
        return True

    def running(self) -> tuple[int, int]:
        """(trials, shared stages) whose task has started and not come back."""
        import ray

        try:
            started = ray.get(self.monitor.snapshot.remote(), timeout=10)
        except Exception:  # the progress line must never stop the sweep
            return 0, 0
        live = set(started) - self.ended
        return len(live & self.trial_names), len(live & self.stage_names)

    def cancel(self) -> None:
        """Ctrl-C: cancel every task (a running one's worker is killed: its stage lock goes
        with it, its checkpoints stay), mark the trials not finished as cancelled."""
        import ray

        self.echo(f"{self.prefix} interrupted: cancelling {len(self.pending)} task(s)")
        for ref in list(self.pending):
            try:
                ray.cancel(ref, force=True)
            except Exception:  # already finished or gone
                pass
        for t in self.todo:
            self.outcomes.setdefault(t.index, TrialOutcome(t, "cancelled"))

    def close(self) -> None:
        import ray

        if self.monitor is not None:
            try:
                ray.kill(self.monitor)
            except Exception:  # the cluster went away first
                pass


def _trial_name(t: Trial) -> str:
    return f"trial-{t.index:03d}-{t.label}-{t.dataset}-seed{t.seed}"


# -- the command's engine ----------------------------------------------------------------------
def dry_run(spec: SweepSpec) -> str:
    """``ipd sweep --dry-run``: every trial, done or not, and the stages they share
    (:func:`describe`); nothing runs, no data is loaded."""
    trials = expand(spec)
    finished = {t.index: find_finished(t, spec.record) for t in trials if t.error is None}
    return describe(trials, finished, spec)


def run_sweep(
    spec: SweepSpec,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    executor: str = "ray",
    echo: Echo = print,
    progress_seconds: float = 60.0,
    runtime_env: dict[str, Any] | None = None,
) -> SweepResult:
    """Run a spec (the engine of ``ipd sweep``): every trial not done yet
    (:func:`run_trials`; task logs in ``<out>/sweeps/<name>/logs``), then the outcome of each
    in ``<out>/sweeps/<name>/summary.json``."""
    from ipd_plugins.files import write_json

    trials = expand(spec)
    folder = Path(spec.out) / "sweeps" / spec.name
    outcomes = run_trials(
        trials,
        executor=executor,
        record=spec.record,
        echo=echo,
        progress_seconds=progress_seconds,
        address=address,
        num_cpus=num_cpus,
        retries=spec.retries,
        logs=folder / "logs",
        runtime_env=runtime_env,
    )
    result = SweepResult(outcomes, folder / "summary.json")
    counts = {s: result.count(s) for s in ("done", "finished", "failed", "invalid", "cancelled")}
    write_json(
        folder / "summary.json",
        {
            "spec": spec.source,
            "name": spec.name,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
            "counts": counts,
            "trials": [o.to_dict() for o in outcomes],
        },
    )
    return result
