"""``ipd baseline``'s run: one seed of a baseline on IPD's data, stage cache and evaluator.

The baseline trains on the very :class:`~ipd_plugins.data.dataset.TrajectoryDataset` ``ipd run``
uses (checked by the same :func:`~ipd_plugins.pipeline.prepare`), in one stage of the same cache
(``<out>/cache/baseline/<key>/``, keyed by the dataset hash, the config, the env and the seed),
and is scored by the same :func:`~ipd_plugins.evaluate.score` (same episodes, same
normalisation, last checkpoint). The run folder ``<out>/<name>/seed_<k>/`` has the same files as
an IPD run's, so ``ipd compare`` reads both.

With ``--adapter NAME`` (e.g. ``dwm``, DWM-MPC) the baseline's actor is adapted while it acts:
the Q is the baseline's own critic, and the world model is the ``pe`` (section ``world_model``)
that ``ipd run`` trains on the same dataset, profile and seed: the same stage of the same
cache, trained here if no run has trained it yet and reused if one has.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ipd_plugins.baselines.configs import BaselineConfig
from ipd_plugins.baselines.trainer import D3rlpyBaseline
from ipd_plugins.curve import stage_curve, with_curve
from ipd_plugins.evaluate import score
from ipd_plugins.files import atomic_write_text, write_json
from ipd_plugins.hardware import set_threads
from ipd_plugins.pipeline import (
    Prepared,
    adapt_actors,
    fit_world_model,
    prepare_run,
    stage_keys,
)
from ipd_plugins.provenance import run_meta
from ipd_plugins.run_config import (
    DEFAULT_COMPONENTS,
    RunConfig,
    RunSettings,
    check_eval_every,
    curve_key,
    resolve_config,
)
from ipd_plugins.stages import StageCache, wall_seconds
from registry import AdaptationContext, get_registry
from registry.config import config_hash, dataclass_from_dict, dataclass_to_dict, identity_dict

__all__ = [
    "SECTIONS",
    "resolve_baseline",
    "baseline_identity",
    "baseline_run_name",
    "baseline_key",
    "resolve_settings",
    "resolve_adaptation",
    "adapt_baseline_actor",
    "baseline_world_model",
    "run_baseline",
    "TrainedBaseline",
    "load_trained_baseline",
]

#: Config-file / ``--set`` sections of an ``ipd baseline`` run (``adapter`` and ``world_model``
#: configure ``--adapter``).
SECTIONS = ("run", "baseline", "adapter", "world_model")


def resolve_baseline(
    algo: str,
    profile: str,
    file: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
    dataset: str | None = None,
) -> BaselineConfig:
    """Its defaults < the profile's ``baseline`` section (shared keys, then its ``algo``
    sub-section) < its settings for ``dataset`` (``dataset_defaults``, e.g. ReBRAC's betas)
    < a config file's ``baseline`` section < ``--set baseline.KEY=VALUE``."""
    from ipd_plugins.profiles import PROFILES

    names = get_registry().names("baseline")
    if algo not in names:
        raise ValueError(f"unknown baseline '{algo}'; baselines: {', '.join(names)}")
    if profile not in PROFILES:
        raise ValueError(f"unknown profile '{profile}'; profiles: {', '.join(PROFILES)}")
    cls = get_registry().config_class("baseline", algo)
    fields = {f.name for f in dataclasses.fields(cls)}
    section = PROFILES[profile].get("baseline", {})
    values = {k: v for k, v in section.items() if k in fields and not isinstance(v, dict)}
    values.update({k: v for k, v in section.get(algo, {}).items() if k in fields})
    if dataset is not None:
        values.update(cls.dataset_defaults(dataset))
    values.update(file or {})
    values.update(overrides or {})
    config = dataclass_from_dict(cls, values, f"baseline '{algo}'")
    config.validate()
    return config


def _slug(source: str) -> str:
    return source.replace("/", "_").replace(".", "_").strip("_") or "dataset"


def baseline_identity(
    settings: RunSettings, config: BaselineConfig, adaptation: RunConfig | None = None
) -> dict[str, Any]:
    """What a baseline's run-folder hash covers (cf. ``RunConfig.identity_dict``); an adapter
    (``adaptation``, see :func:`resolve_adaptation`) adds itself and its world model."""
    out: dict[str, Any] = {
        "baseline": {"algo": config.name, **identity_dict(config)},
        "run": settings.identity_dict(),
    }
    if adaptation is not None:
        out["adapter"] = adapter_identity(adaptation)
        out["world_model"] = adaptation.hash_part("world_model")
    return out


def adapter_identity(adaptation: RunConfig | None) -> dict[str, Any] | None:
    """The adapter's name and options as run-folder hashes and stage keys see them."""
    if adaptation is None:
        return None
    return {
        "name": adaptation.components["adapter"],
        **identity_dict(adaptation.configs["adapter"]),
    }


def baseline_method(config: BaselineConfig, adaptation: RunConfig | None = None) -> str:
    """``<algo>``, or ``<algo>+<adapter>`` when an adapter acts (``rebrac+dwm``)."""
    if adaptation is None:
        return config.name
    return f"{config.name}+{adaptation.components['adapter']}"


def baseline_run_name(
    settings: RunSettings, config: BaselineConfig, adaptation: RunConfig | None = None
) -> str:
    """``<dataset>__baseline-<method>__<hash of the configs and run settings except seed>``."""
    if settings.name:
        return settings.name
    body = baseline_identity(settings, config, adaptation)
    method = baseline_method(config, adaptation)
    return f"{_slug(settings.dataset)}__baseline-{method}__{config_hash(body)[:8]}"


def baseline_key(
    config: BaselineConfig,
    data_hash: str,
    env_id: str | None,
    seed: int,
    curve: tuple[Any, ...] = (),
) -> str:
    """The stage-cache key of a baseline's trained weights (``curve``: see
    :func:`~ipd_plugins.run_config.curve_key`)."""
    body = (config.name, data_hash, identity_dict(config), env_id, seed, *curve)
    return config_hash("baseline", *body)


def resolve_settings(
    algo: str, run: dict[str, Any] | None, overrides: dict[str, dict[str, Any]], file: dict
) -> tuple[RunSettings, BaselineConfig]:
    """The run settings and the baseline's config of one seed, every value checked."""
    unknown = (set(overrides) | set(file)) - set(SECTIONS)
    if unknown:
        raise ValueError(
            f"ipd baseline takes the sections {', '.join(SECTIONS)}; got "
            + ", ".join(sorted(unknown))
        )
    run_values = {**file.get("run", {}), **{k: v for k, v in (run or {}).items() if v is not None}}
    run_values.update(overrides.get("run", {}))
    file_baseline = dict(file.get("baseline", {}))
    file_algo = file_baseline.pop("algo", algo)
    if file_algo != algo:
        raise ValueError(f"the config file is for baseline '{file_algo}', not '{algo}'")
    # the run settings, profile defaults included (eval_every is checked against the baseline's
    # log_every, not the policy's)
    settings = resolve_config(run=run_values, check_curve=False).run
    bconf = resolve_baseline(
        algo, settings.profile, file_baseline, overrides.get("baseline"), settings.dataset
    )
    check_eval_every(settings.eval_every, bconf.log_every, "baseline.log_every")
    return settings, bconf


def resolve_adaptation(
    settings: RunSettings,
    overrides: dict[str, dict[str, Any]],
    file: dict[str, Any],
    adapter: str | None = None,
) -> RunConfig | None:
    """The adapter of a baseline run and the world model it uses, as the
    :class:`~ipd_plugins.run_config.RunConfig` ``ipd run`` would resolve for the same settings
    (so the world model's config and stage key are an IPD run's); None without an adapter.

    ``adapter``: ``--adapter``, else ``adapter.name`` (``--set``, else the config file), else
    ``none``; the ``adapter`` and ``world_model`` sections: file < ``--set``.
    """
    values = {**file.get("adapter", {}), **overrides.get("adapter", {})}
    name = adapter or values.pop("name", None) or DEFAULT_COMPONENTS["adapter"]
    values.pop("name", None)
    if name == DEFAULT_COMPONENTS["adapter"] and not values:
        return None
    world_model = {**file.get("world_model", {}), **overrides.get("world_model", {})}
    cfg = resolve_config(
        components={"adapter": name},
        run=dataclass_to_dict(settings),
        overrides={"adapter": values, "world_model": world_model},
        check_curve=False,
    )
    return cfg if cfg.adapting else None


def _quiet(message: str) -> None:
    """An ``echo`` that says nothing (curve points)."""


def _adapter_and_q(adaptation: RunConfig, p: Prepared, baseline: D3rlpyBaseline) -> tuple[Any, Any]:
    """The run's adapter and, when it uses models, the baseline's critic (fails without one)."""
    adapter = get_registry().create(
        "adapter", adaptation.components["adapter"], adaptation.configs["adapter"], p.ctx
    )
    if not adapter.uses_models:
        return adapter, None
    q = baseline.q_function()
    if q is None:
        raise ValueError(
            f"baseline '{baseline.config.name}' has no critic: adapter "
            f"'{adaptation.components['adapter']}' needs its Q for the terminal value "
            "(rebrac, td3+bc, iql and cql have one)"
        )
    return adapter, q


def baseline_world_model(
    adaptation: RunConfig, p: Prepared, cache: StageCache, baseline: D3rlpyBaseline
) -> Any:
    """The world model the run's adapter uses (trained in ``cache`` or reused); None when it
    uses none. Fails first if the adapter needs a critic the baseline does not have."""
    adapter, _ = _adapter_and_q(adaptation, p, baseline)
    if not adapter.uses_models:
        return None
    key = stage_keys(adaptation, p.data_hash, p.ctx.env_id)["world_model"]
    return fit_world_model(cache, adaptation, p, key)


def adapt_baseline_actor(
    adaptation: RunConfig,
    p: Prepared,
    cache: StageCache,
    baseline: D3rlpyBaseline,
    actor: Any,
    echo: Callable[[str], None] = print,
    world_model: Any = None,
) -> Any:
    """``actor`` wrapped by the run's adapter, with the baseline's critic as Q and, when the
    adapter uses models, the dataset's world model (``world_model``, else trained in ``cache``
    or reused)."""
    adapter, q = _adapter_and_q(adaptation, p, baseline)
    if not adapter.uses_models:
        world_model = None
    elif world_model is None:
        world_model = baseline_world_model(adaptation, p, cache, baseline)
    models = AdaptationContext(world_model, q, baseline.gamma, adaptation.run.seed)
    return adapt_actors(adapter, {"policy": actor}, models, echo)["policy"]


def run_baseline(
    algo: str,
    run: dict[str, Any] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    file: dict[str, Any] | None = None,
    echo: Callable[[str], None] = print,
    adapter: str | None = None,
) -> dict[str, Any]:
    """Train (or resume / reuse) and evaluate one seed of a baseline; returns ``results.json``.

    ``run`` holds :class:`~ipd_plugins.run_config.RunSettings` values (``None`` = default);
    ``overrides`` the parsed ``--set`` options (sections :data:`SECTIONS`); ``file`` a config
    file (the same sections; a baseline run's ``config.yaml`` replays it); ``adapter`` the
    adapter that acts with the baseline's actor (``--adapter``).
    """
    t_start = time.perf_counter()
    overrides, file = dict(overrides or {}), dict(file or {})
    settings, bconf = resolve_settings(algo, run, overrides, file)
    adaptation = resolve_adaptation(settings, overrides, file, adapter)
    name = baseline_run_name(settings, bconf, adaptation)
    run_dir = Path(settings.out_dir) / name / f"seed_{settings.seed}"
    replay = (run_dir / "results.json").exists()  # of a finished run: its own time only
    threads = set_threads(settings.threads)
    p = prepare_run(settings, echo)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_out = {
        "run": dataclass_to_dict(settings),
        "baseline": {"algo": algo, **bconf.to_dict()},
    }
    if adaptation is not None:
        config_out["adapter"] = {
            "name": adaptation.components["adapter"],
            **adaptation.configs["adapter"].to_dict(),
        }
        config_out["world_model"] = adaptation.configs["world_model"].to_dict()
    config_out["meta"] = run_meta(
        p.data_hash, f"ipd baseline {algo} --config {run_dir / 'config.yaml'}"
    )
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config_out, sort_keys=False))
    echo(f"run folder: {run_dir}")

    baseline = D3rlpyBaseline(bconf, p.ctx, p.dataset)
    cache = StageCache(settings.out_dir, echo, tb_dir=run_dir / "tb", run_dir=run_dir)
    curve = curve_key(settings, adapter_identity(adaptation))
    key = baseline_key(bconf, p.data_hash, p.ctx.env_id, settings.seed, curve)
    n = settings.eval_episodes
    assert p.ctx.env_id is not None
    world_model, made = None, {}
    if adaptation is not None and settings.eval_every:
        # the curve's actors are adapted too: the world model they use (and the check that
        # the baseline has a critic) comes first
        world_model = baseline_world_model(adaptation, p, cache, baseline)
        made = dict(cache.records)

    def evaluate() -> Any:  # a curve point: the final evaluation of the current weights
        actor = baseline.actor()
        if adaptation is not None:
            actor = adapt_baseline_actor(adaptation, p, cache, baseline, actor, _quiet, world_model)
        return score(actor, p.ctx.env_id, n, settings.seed, p.dataset)

    def fit(folder: Path, log: Any) -> dict[str, float]:
        logged = with_curve(log, settings.eval_every, evaluate, baseline)
        return baseline.fit(p.dataset, work_dir=folder, log=logged)

    echo(f"[baseline] {algo}, {bconf.n_steps} steps")
    record = cache.fit("baseline", key, baseline, fit, settings.seed, code=(type(bconf),))
    cache.records = {"train": record, **made}
    actor = baseline.actor()
    if adaptation is not None:  # may train (or reuse) the dataset's world model
        actor = adapt_baseline_actor(adaptation, p, cache, baseline, actor, echo, world_model)
    cache.write(run_dir / "stages.json")

    echo(f"[evaluate] {n} episodes of {p.ctx.env_id}")
    scores = {"policy": score(actor, p.ctx.env_id, n, settings.seed, p.dataset).to_dict()}
    report = getattr(actor, "report", None)  # what the adapter did
    if report is not None:
        scores["policy"]["adaptation"] = report()
    write_json(run_dir / "eval.json", scores)
    method = baseline_method(bconf, adaptation)
    components = {"baseline": algo}
    if adaptation is not None:
        components["adapter"] = adaptation.components["adapter"]
    results = {
        "dataset": {"source": settings.dataset, "hash": p.data_hash, **p.dataset.summary()},
        "method": method,
        "label": method,
        "components": components,
        "seed": settings.seed,
        "scores": scores,
        "target_return": baseline.target_return,
        "train": record.metrics,
        "stage_seconds": {"train": record.seconds},
        "stage_reused": {"train": record.reused},
        "wall_seconds": wall_seconds(t_start, cache, replay),
        "threads": threads,
    }
    if settings.eval_every:
        every = settings.eval_every
        results["curve"] = stage_curve(record.path, every, bconf.n_steps, n, echo, "baseline")
    write_json(run_dir / "results.json", results)
    return results


@dataclass
class TrainedBaseline:
    """A finished baseline run folder reloaded: its settings, data and trained model."""

    settings: RunSettings
    prepared: Prepared
    baseline: D3rlpyBaseline
    file: dict[str, Any] = dataclasses.field(default_factory=dict)  # its config.yaml

    @property
    def dataset(self) -> Any:
        return self.prepared.dataset

    @property
    def ctx(self) -> Any:
        return self.prepared.ctx


def load_trained_baseline(run_dir: str | Path) -> TrainedBaseline:
    """Rebuild the baseline of a finished ``ipd baseline`` seed folder with its trained weights
    (the counterpart of :func:`ipd_plugins.data.runs.load_trained` for IPD runs)."""
    from ipd_plugins.data.runs import read_stages
    from ipd_plugins.run_config import load_config_file

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise ValueError(f"{run_dir} is not an `ipd baseline` run folder (no config.yaml)")
    conf = load_config_file(run_dir / "config.yaml")
    if "baseline" not in conf:
        raise ValueError(f"{run_dir} is not an `ipd baseline` run folder (no baseline section)")
    stages = read_stages(run_dir)
    algo = conf["baseline"].get("algo")
    settings, bconf = resolve_settings(algo, None, {}, conf)
    p = prepare_run(settings, lambda m: None)
    baseline = D3rlpyBaseline(bconf, p.ctx, p.dataset)
    baseline.load(Path(stages["train"]["path"]) / "weights.pt")
    return TrainedBaseline(settings, p, baseline, conf)
