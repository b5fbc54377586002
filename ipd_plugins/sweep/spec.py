"""The sweep's spec: what to run (datasets x methods x options x seeds) as a list of trials."""

from __future__ import annotations

import dataclasses
import glob
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ipd_plugins.pipeline import STAGES

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
#: The stages a trial may train, in order: an IPD run's, then a baseline run's one stage.
STAGE_ORDER = (*STAGES, "baseline")
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


def select(
    spec: SweepSpec,
    datasets: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    methods: Sequence[str] | None = None,
) -> SweepSpec:
    """A slice of ``spec``: only these datasets (their ``dataset`` source as written), seeds and
    method labels (``None``: all). The trials keep their run folders, so a slice run first is
    done when the whole spec runs. A name the spec does not have is an error naming the ones
    it has."""

    def pick(wanted: Sequence[Any] | None, have: list[Any], key: Callable[[Any], Any], what: str):
        if wanted is None:
            return have
        names = [key(x) for x in have]
        unknown = [w for w in wanted if w not in names]
        if unknown:
            raise ValueError(
                f"{spec.source}: no {what} {', '.join(map(repr, unknown))}; the spec's {what}s: "
                + ", ".join(map(repr, names))
            )
        return [x for x in have if key(x) in wanted]

    return dataclasses.replace(
        spec,
        datasets=pick(datasets, spec.datasets, lambda d: str(d["dataset"]), "dataset"),
        seeds=pick(seeds, spec.seeds, int, "seed"),
        methods=pick(methods, spec.methods, lambda m: m.label, "method"),
    )


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
    from ipd_plugins.run_config import RUN_KINDS as KINDS  # the pipeline's kinds and adapter
    from ipd_plugins.run_config import SECTIONS
    from registry import get_registry

    if body is None:
        body = {}
    if "," in str(label):  # `--methods A,B` splits on commas: such a label could not be picked
        raise ValueError(f"{where}: a method label may not contain ',' (write 'a + b')")
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


def find_finished(trial: Trial, record: str | None = None, in_out: bool = True) -> Path | None:
    """The ``results.json`` of a finished run equal to ``trial``: its own folder under ``out``
    (unless not ``in_out``) or ``record``, or a folder of another hash (written before a
    config field was added) whose ``config.yaml`` replays to the same run."""
    from ipd_plugins.run_config import load_config_file

    out = Path(trial.out_dir)
    rel = Path(trial.run_dir).relative_to(out)
    bases = ([out] if in_out else []) + ([Path(record)] if record else [])
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


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:500]
