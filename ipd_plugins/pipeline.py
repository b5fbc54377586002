"""IPD's pipeline, Algorithm 1: value -> world model -> augment -> distill -> evaluate.

:func:`run_pipeline` runs one seed of a resolved :class:`~ipd_plugins.run_config.RunConfig`.
:func:`prepare` makes every check that can fail before anything trains (dataset, environment,
device, output folder); then each stage is one function, one call of the stage cache
(:mod:`ipd_plugins.stages`), keyed by :func:`stage_keys`. Components are built from the registry
and used only through their protocols (:mod:`registry.protocols`).

The run folder ``<out>/<name>/seed_<seed>/`` gets ``config.yaml`` (the resolved config and its
provenance; ``ipd run --config`` replays it), ``stages.json``, ``results.json``, ``eval.json``
and TensorBoard events (``tb/``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from ipd_plugins.augment import augment
from ipd_plugins.curve import stage_curve, with_curve
from ipd_plugins.data.dataset import TrajectoryDataset
from ipd_plugins.evaluate import CallableActor, score
from ipd_plugins.files import atomic_write_text, set_aside, write_json
from ipd_plugins.hardware import resolve_device, resolve_precision, set_threads
from ipd_plugins.provenance import run_meta
from ipd_plugins.run_config import RUN_KINDS, RunConfig, RunSettings, changed_options, curve_key
from ipd_plugins.stages import StageCache, wall_seconds
from ipd_plugins.uncertainty.reliable import DEFAULT_CALIBRATION_PAIRS, calibrate_kappa
from registry import KINDS, AdaptationContext, BuildContext, config_hash, get_registry

__all__ = [
    "Prepared",
    "prepare",
    "prepare_run",
    "context_for",
    "stage_keys",
    "fit_value",
    "fit_world_model",
    "imagine",
    "distill",
    "evaluate_actors",
    "score_policy",
    "policy_curve",
    "adapt_actors",
    "run_pipeline",
    "SEGMENTS_FORMAT",
    "STAGES",
    "check_stages",
]

#: The stages of a run, in order (each cached under ``<out>/cache/<stage>/<key>``).
STAGES = ("value", "world_model", "augment", "policy")


def check_stages(names: Collection[str]) -> None:
    """Fail unless every name is one of :data:`STAGES` (``ipd run --retrain``)."""
    bad = sorted(set(names) - set(STAGES))
    if bad:
        raise ValueError(f"--retrain {bad[0]}: no such stage; stages: {', '.join(STAGES)}")


#: Part of the augment stage's cache key: bumped when ``segments.npz`` gains or changes a
#: column, so that older caches are recomputed instead of read without it (2: ``timestep``).
SEGMENTS_FORMAT = 2

Echo = Callable[[str], None]


def context_for(
    ds: TrajectoryDataset,
    seed: int = 0,
    device: str = "cpu",
    env_id: str | None = None,
    precision: str = "fp32",
) -> BuildContext:
    """What a component is built for on ``ds``: its dims, action bounds, env, seed, device and
    precision (``auto`` is resolved here, for ``device``)."""
    low, high = ds.action_bounds
    device = resolve_device(device)
    return BuildContext(
        obs_dim=ds.obs_dim,
        act_dim=ds.act_dim,
        act_low=tuple(float(x) for x in low),
        act_high=tuple(float(x) for x in high),
        device=device,
        seed=seed,
        env_id=env_id or ds.env_id,
        precision=resolve_precision(precision, device),
        dataset_episodes=int(ds.n_episodes),
    )


@dataclass
class Prepared:
    """What every stage needs: the checked dataset, the build context and the data's hash."""

    dataset: TrajectoryDataset
    ctx: BuildContext
    data_hash: str


def check_device(device: str) -> None:
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"run.device: {device!r} is not a torch device ({err})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"run.device is {device!r} but torch sees no CUDA GPU (torch {torch.__version__}, "
            "a CPU build?); use --device cpu"
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"run.device is {device!r} but MPS is not available; use --device cpu")


def check_out_dir(out_dir: str | Path) -> None:
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".ipd-write-test-{time.time_ns()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"--out {out}: cannot write there ({err.strerror or err})") from None


def prepare(
    source: str,
    *,
    env_id: str | None = None,
    clip_actions: bool = False,
    episode_length: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    precision: str = "fp32",
    out_dir: str | Path = "runs",
    echo: Echo = print,
) -> Prepared:
    """Every check that can fail before training: device, output folder, dataset, environment.

    The dataset is loaded (made first if it is an `ipd data make` name not made yet) and checked
    against the environment's observation and action spaces; the environment must build.
    """
    from ipd_plugins.data.envs import check_environment
    from ipd_plugins.data.sources import resolve_dataset

    device = resolve_device(device)
    check_device(device)
    check_out_dir(out_dir)
    ds = resolve_dataset(
        source,
        env_id=env_id,
        clip_actions=clip_actions,
        episode_length=episode_length,
        echo=echo,
    )
    ctx = context_for(ds, seed=seed, device=device, env_id=env_id, precision=precision)
    if ctx.env_id is None:
        raise ValueError(
            f"dataset '{ds.name}' does not name its environment: pass --env ENV_ID "
            "(e.g. --env Hopper-v5)"
        )
    check_environment(ctx.env_id)
    return Prepared(ds, ctx, ds.content_hash())


def prepare_run(run: RunSettings, echo: Echo = print) -> Prepared:
    """:func:`prepare` for the dataset, environment, device and folder of ``run``."""
    return prepare(
        run.dataset,
        env_id=run.env_id,
        clip_actions=run.clip_actions,
        episode_length=run.episode_length,
        seed=run.seed,
        device=run.device,
        precision=run.precision,
        out_dir=run.out_dir,
        echo=echo,
    )


def stage_keys(cfg: RunConfig, data_hash: str, env_id: str | None) -> dict[str, str]:
    """The stage-cache key of each stage: the hash of the data and every config it depends on.

    Runs that share a key share that stage's artifact (e.g. a planner ablation shares the value
    and world-model keys). The precision the trainable stages use on this machine is part of
    their keys when it is bf16 (fp32 keys are those of the runs from before the option), and so
    is the curve the policy stage scores with ``run.eval_every`` (:func:`curve_key`). A policy
    field read only when acting (e.g. ``dt``'s ``target_return``) is in the policy key only
    with a curve: runs that differ only in it share one trained policy.
    """
    seed, bf16 = cfg.run.seed, _bf16(cfg)
    value = config_hash("value", data_hash, cfg.hash_part("value"), seed, *bf16)
    world_model = config_hash(
        "world_model", data_hash, cfg.hash_part("world_model"), env_id, seed, *bf16
    )
    aug = config_hash(
        "augment",
        value,
        world_model,
        cfg.hash_part("uncertainty"),
        cfg.hash_part("planner"),
        cfg.hash_part("augment"),
        seed,
        SEGMENTS_FORMAT,
    )
    policy_part, tail = _policy_hash_parts(cfg)
    policy = config_hash("policy", aug, value, policy_part, *tail)
    return {"value": value, "world_model": world_model, "augment": aug, "policy": policy}


def _bf16(cfg: RunConfig) -> tuple[str, ...]:
    return ("bf16",) if resolve_precision(cfg.run.precision, cfg.run.device) == "bf16" else ()


def _policy_hash_parts(cfg: RunConfig) -> tuple[dict[str, Any], tuple[Any, ...]]:
    """The policy section as its key hashes it, and what follows it in the key: the seed, the
    precision and the curve (:func:`curve_key`; with one, the acting fields count too)."""
    adapter = cfg.hash_part("adapter") if cfg.adapting else None
    curve = curve_key(cfg.run, adapter)  # () without run.eval_every
    part = cfg.hash_part("policy", acting=bool(curve))
    return part, (cfg.run.seed, *_bf16(cfg), *curve)


def policy_content(
    cfg: RunConfig, keys: dict[str, str], train_ds: TrajectoryDataset, policy: Any
) -> str:
    """What the policy stage consumes, by value: its training data (the dataset and the kept
    imagined steps), the value function and world model it is handed, and its config as it
    takes effect (``few_episodes`` only as whether the few-episodes mode is on).

    Runs whose policy keys differ only by options that change none of these share one trained
    policy (:meth:`StageCache.run`'s ``content``): e.g. ``augment.max_share`` where the cap
    does not bind and ``policy.few_episodes`` on a large dataset, table_v2.yaml's `ipd` and
    `ipd eq26` on hopper-medium."""
    part, tail = _policy_hash_parts(cfg)
    if hasattr(policy, "few"):
        part = {**part, "config": {**part["config"], "few_episodes": bool(policy.few)}}
    data = train_ds.content_hash()
    return config_hash("policy-content", data, keys["value"], keys["world_model"], part, *tail)


def _build(cfg: RunConfig, kind: str, ctx: BuildContext) -> Any:
    return get_registry().create(kind, cfg.components[kind], cfg.configs[kind], ctx)


# -- the stages ------------------------------------------------------------------------------
def _fitted(cache: StageCache, cfg: RunConfig, p: Prepared, kind: str, key: str, seed: int) -> Any:
    """The ``kind`` component trained on the dataset (or its cached weights loaded)."""
    component = _build(cfg, kind, p.ctx)

    def fit(folder: Path, log: Any) -> dict[str, float]:
        return component.fit(p.dataset, work_dir=folder, log=log)

    cache.fit(kind, key, component, fit, seed, code=(type(cfg.configs[kind]),))
    return component


def fit_value(cache: StageCache, cfg: RunConfig, p: Prepared, key: str) -> Any:
    """1. Q, V and pi_QOP (sec. 3.1, eq. 1-5)."""
    return _fitted(cache, cfg, p, "value", key, cfg.run.seed)


def fit_world_model(cache: StageCache, cfg: RunConfig, p: Prepared, key: str) -> Any:
    """2. The ensemble dynamics and reward model (sec. 3.2, eq. 13-16)."""
    return _fitted(cache, cfg, p, "world_model", key, cfg.run.seed + 1)


def imagine(
    cache: StageCache,
    cfg: RunConfig,
    p: Prepared,
    key: str,
    value: Any,
    world_model: Any,
    progress: bool = True,
) -> tuple[TrajectoryDataset, dict[str, Any]]:
    """3-4. kappa (eq. 12), then identification and planned rollouts (eq. 17-25, Alg. 1).

    Returns the policy's training data (the dataset, then the kept segments) and the report.
    """
    from ipd_plugins.data.npz_io import load_npz, save_npz
    from ipd_plugins.training import seed_everything

    seed, device = cfg.run.seed, p.ctx.device
    uncertainty, planner = _build(cfg, "uncertainty", p.ctx), _build(cfg, "planner", p.ctx)
    n_pairs = getattr(cfg.configs["uncertainty"], "calibration_pairs", DEFAULT_CALIBRATION_PAIRS)

    def train(folder: Path) -> dict[str, Any]:
        seed_everything(seed + 2)
        kappa, u_stats = calibrate_kappa(
            p.dataset, world_model, uncertainty, n_pairs, seed=seed, device=device
        )
        cache.echo(f"[augment] reliable set U < kappa = {kappa:.4g} ({u_stats})")
        result = augment(
            p.dataset,
            value,
            world_model,
            uncertainty,
            planner,
            kappa,
            cfg.augment,
            seed=seed,
            device=device,
            progress=progress,
            work_dir=folder,  # resumable: a killed stage goes on from its last checkpoint
        )
        if result.segments is not None:
            save_npz(result.segments, folder / "segments.npz")
        report = {**result.report, "uncertainty": u_stats}
        write_json(folder / "report.json", report)
        return report

    def load(folder: Path) -> TrajectoryDataset | None:
        path = folder / "segments.npz"
        return load_npz(path) if path.exists() else None  # a corrupt file fails: retrains

    kinds = ("planner", "uncertainty")
    code = (augment, type(planner), type(uncertainty), *(type(cfg.configs[k]) for k in kinds))
    record = cache.run("augment", key, train, load, code=code, inputs=("value", "world_model"))
    report = record.metrics
    segments = load(Path(record.path)) if not record.reused else record.loaded
    train_ds = p.dataset
    if segments is not None:
        train_ds = TrajectoryDataset.concatenate([p.dataset, segments])
    cache.echo(
        f"[augment] {report.get('selected', 0)} states selected, "
        f"{report.get('imagined_steps_kept', 0)} imagined steps kept "
        f"({report.get('cut_by_uncertainty', 0)} cut by uncertainty, "
        f"{report.get('ended_by_termination', 0)} ended by termination)"
    )
    return train_ds, report


def distill(
    cache: StageCache,
    cfg: RunConfig,
    p: Prepared,
    keys: dict[str, str],
    train_ds: TrajectoryDataset,
    value: Any,
    echo: Echo = print,
    world_model: Any = None,
) -> Any:
    """5. The policy on real + imagined data (sec. 3.4: ``ipd-dt``, eq. 26; any registered one),
    under ``keys["policy"]``, or reused from a run with the same :func:`policy_content`.

    With ``run.eval_every``, the policy is scored every ``eval_every`` steps as
    :func:`evaluate_actors` scores the final one (``world_model``: for an adapter that uses
    it), without changing its training (:mod:`ipd_plugins.curve`)."""
    policy = _build(cfg, "policy", p.ctx)
    note = getattr(policy, "few_episodes_note", lambda: None)()
    if note:
        echo(f"[policy] {note}")

    def evaluate() -> Any:
        return score_policy(cfg, p, policy, value, world_model)

    def fit(folder: Path, log: Any) -> dict[str, float]:
        logged = with_curve(log, cfg.run.eval_every, evaluate, policy, value)
        return policy.fit(train_ds, value, work_dir=folder, log=logged)

    def content() -> str:  # hashes the training data: only when the key has no folder yet
        return policy_content(cfg, keys, train_ds, policy)

    code = (type(cfg.configs["policy"]),)
    made_from = ("augment", "value")
    cache.fit("policy", keys["policy"], policy, fit, cfg.run.seed + 3, content, code, made_from)
    return policy


def score_policy(
    cfg: RunConfig, p: Prepared, policy: Any, value: Any, world_model: Any = None
) -> Any:
    """The policy's :class:`~ipd_plugins.evaluate.EvalResult` exactly as
    :func:`evaluate_actors` scores it (the run's adapter, episodes and evaluation seeds): a
    curve point. Says nothing."""
    assert p.ctx.env_id is not None
    adapter = _build(cfg, "adapter", p.ctx)
    models = AdaptationContext(world_model, value.q, float(value.gamma), cfg.run.seed)
    actors = adapt_actors(adapter, {"policy": policy.actor(value)}, models, lambda _: None)
    return score(actors["policy"], p.ctx.env_id, cfg.run.eval_episodes, cfg.run.seed, p.dataset)


def adapt_actors(
    adapter: Any, actors: dict[str, Any], models: AdaptationContext, echo: Echo = print
) -> dict[str, Any]:
    """Every actor wrapped by ``adapter`` (:class:`~registry.protocols.Adapter`), all before
    any episode runs, so that an actor it cannot adapt fails at once."""
    if adapter.uses_models and models.world_model is None:
        raise ValueError(f"adapter {type(adapter).__name__} needs the run's world model")
    wrapped = {label: adapter.wrap(actor, models) for label, actor in actors.items()}
    if any(wrapped[k] is not actors[k] for k in actors):
        echo(f"[evaluate] actors adapted while they act ({type(adapter).__name__})")
    return wrapped


def evaluate_actors(
    cfg: RunConfig,
    p: Prepared,
    policy: Any,
    value: Any,
    echo: Echo = print,
    world_model: Any = None,
    out_file: str = "eval.json",
    only: Collection[str] | None = None,
) -> dict[str, Any]:
    """6-7. The last checkpoint acting with V(s_t) at every step, and pi_QOP; normalised.

    The run's adapter (``none`` by default) wraps each actor; an adapter that uses models gets
    ``world_model`` and the value learner's Q. ``only``: the actors to evaluate ("policy",
    "qop"; None: both, pi_QOP when ``run.eval_qop``). Writes ``out_file`` in the run folder.
    """
    n, env_id = cfg.run.eval_episodes, p.ctx.env_id
    assert env_id is not None
    actors = {}
    if only is None or "policy" in only:
        actors["policy"] = policy.actor(value)
    want_qop = cfg.run.eval_qop if only is None else "qop" in only
    if want_qop:
        own = getattr(value, "actor", None)  # pi_QOP as an actor an adapter can adapt (qov's)
        greedy = CallableActor(lambda obs: value.act(obs, deterministic=True))
        actors["qop"] = own() if callable(own) else greedy
    adapter = _build(cfg, "adapter", p.ctx)
    models = AdaptationContext(world_model, value.q, float(value.gamma), cfg.run.seed)
    actors = adapt_actors(adapter, actors, models, echo)
    echo(f"[evaluate] {n} episodes of {env_id}")
    scores = {}
    for label, actor in actors.items():
        scores[label] = score(actor, env_id, n, cfg.run.seed, p.dataset).to_dict()
        report = getattr(actor, "report", None)  # what an adapter did (e.g. DWMActor)
        if report is not None:
            scores[label]["adaptation"] = report()
    write_json(cfg.run_dir / out_file, scores)
    return scores


# -- the run ---------------------------------------------------------------------------------
def write_run_config(cfg: RunConfig, data_hash: str) -> None:
    data = cfg.to_dict()
    data["meta"] = run_meta(data_hash, f"ipd run --config {cfg.run_dir / 'config.yaml'}")
    atomic_write_text(cfg.run_dir / "config.yaml", yaml.safe_dump(data, sort_keys=False))


def policy_curve(cfg: RunConfig, cache: StageCache, echo: Echo = print) -> list[dict[str, Any]]:
    """The policy stage's curve points at multiples of ``run.eval_every``
    (:func:`~ipd_plugins.curve.stage_curve`)."""
    record = cache.records.get("policy")
    if not cfg.run.eval_every or record is None:
        return []
    n_steps = getattr(cfg.configs["policy"], "n_steps", None)
    return stage_curve(
        record.path, cfg.run.eval_every, n_steps, cfg.run.eval_episodes, echo, "policy"
    )


def run_pipeline(
    cfg: RunConfig, echo: Echo = print, progress: bool = True, retrain: Collection[str] = ()
) -> dict[str, Any]:
    """Run (or resume, or reuse) every stage of one seed; returns ``results.json``'s content.

    ``retrain``: stages (of :data:`STAGES`) to train again even when cached; the stages made
    from them retrain if their inputs changed (:class:`~ipd_plugins.stages.StageCache`), and
    the run's earlier ``results.json`` is kept as ``results.json.replaced`` (``.replaced.2``,
    ... after later retrainings: :func:`~ipd_plugins.files.set_aside`).
    """
    t_start = time.perf_counter()
    check_stages(retrain)
    results_file = cfg.run_dir / "results.json"
    if retrain and results_file.exists():
        set_aside(results_file, ".replaced")
    replay = results_file.exists()  # of a finished run: its own time only
    threads = set_threads(cfg.run.threads)
    run = cfg.run
    p = prepare_run(run, echo)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    write_run_config(cfg, p.data_hash)
    echo(
        f"run folder: {cfg.run_dir} ({threads} torch thread{'s' if threads > 1 else ''}, "
        f"{p.ctx.precision})"
    )
    keys = stage_keys(cfg, p.data_hash, p.ctx.env_id)
    cache = StageCache(
        run.out_dir, echo, tb_dir=cfg.run_dir / "tb", run_dir=cfg.run_dir, retrain=retrain
    )

    value = fit_value(cache, cfg, p, keys["value"])
    world_model = fit_world_model(cache, cfg, p, keys["world_model"])
    train_ds, aug_report = imagine(
        cache, cfg, p, keys["augment"], value, world_model, progress=progress
    )
    policy = distill(cache, cfg, p, keys, train_ds, value, echo, world_model)
    cache.write(cfg.run_dir / "stages.json")
    scores = evaluate_actors(cfg, p, policy, value, echo, world_model=world_model)
    curve = policy_curve(cfg, cache, echo)

    records = cache.records
    results = {
        "dataset": {"source": run.dataset, "hash": p.data_hash, **p.dataset.summary()},
        "components": {k: cfg.components[k] for k in (RUN_KINDS if cfg.adapting else KINDS)},
        "options": changed_options(cfg),
        "seed": run.seed,
        "scores": scores,
        "augment": aug_report,
        "stage_seconds": {k: r.seconds for k, r in records.items()},
        "stage_reused": {k: r.reused for k, r in records.items()},
        "wall_seconds": wall_seconds(t_start, cache, replay),
        "threads": threads,
        "precision": p.ctx.precision,
    }
    if cfg.run.eval_every:
        results["curve"] = curve
    write_json(cfg.run_dir / "results.json", results)
    return results
