"""The augment-then-distill runner: value -> world model -> augment -> distill -> evaluate.

Every stage writes its artifact into a cache folder keyed by the hash of the dataset and of
every config it depends on (``<out>/cache/<stage>/<key>/``), and marks it complete with
``done.json`` written last. A later run that needs the same artifact reuses it (an ablation that
changes only the planner retrains neither the value function nor the world model); a run that
was interrupted resumes at the first stage without ``done.json``, and a stage that was
interrupted resumes from the periodic checkpoint its component keeps in that folder.

The run folder ``<out>/<name>/seed_<seed>/`` holds the fully resolved ``config.yaml`` (with
package versions, the git commit and the dataset hash; ``ipd run --config`` replays it),
``stages.json`` (which cache folder each stage used), ``results.json`` (scores and the
augmentation report), learning curves as CSV and TensorBoard events (``tb/``).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ipd_plugins.augment import AugmentConfig, augment, calibrate_kappa
from ipd_plugins.data.dataset import TrajectoryDataset
from ipd_plugins.profiles import DEFAULT_DATASET, PROFILES
from ipd_plugins.training import seed_everything
from registry import KINDS, BuildContext, ComponentConfig, config_hash, get_registry
from registry.config import dataclass_from_dict, dataclass_to_dict, identity_dict

__all__ = [
    "RunSettings",
    "RunConfig",
    "resolve_config",
    "load_config_file",
    "Pipeline",
    "DEFAULT_COMPONENTS",
    "context_for",
    "TrainedRun",
    "load_trained",
]

#: Part of the augment stage's cache key: bumped when ``segments.npz`` gains or changes a
#: column, so that older caches are recomputed instead of read without it (2: ``timestep``).
SEGMENTS_FORMAT = 2


def context_for(
    ds: TrajectoryDataset, seed: int = 0, device: str = "cpu", env_id: str | None = None
) -> BuildContext:
    """What a component is built for on ``ds``: its dims, action bounds, env, seed and device."""
    low, high = ds.action_bounds
    return BuildContext(
        obs_dim=ds.obs_dim,
        act_dim=ds.act_dim,
        act_low=tuple(float(x) for x in low),
        act_high=tuple(float(x) for x in high),
        device=device,
        seed=seed,
        env_id=env_id or ds.env_id,
    )


#: The paper's pipeline: what ``ipd run`` uses when no component flag is given.
DEFAULT_COMPONENTS: dict[str, str] = {
    "value": "qov",
    "world_model": "pe",
    "uncertainty": "gjs",
    "planner": "mpc",
    "policy": "ipd-dt",
}


@dataclass
class RunSettings:
    """What a run is about, besides its components."""

    dataset: str = ""  # a Minari id, a .hdf5/.h5/.npz path or an `ipd data make` name
    seed: int = 0  # fixes training, augmentation and evaluation
    profile: str = "quick"  # quick | default | paper (step counts and sizes, see README)
    device: str = "cpu"  # torch device for every component
    threads: int | None = None  # torch CPU threads; None: torch's default (1 on a busy machine!)
    eval_episodes: int = 10  # evaluation episodes of the final policy (last checkpoint)
    eval_every: int = 0  # policy steps between periodic evaluations in the learning curve; 0: off
    eval_qop: bool = True  # also score the value learner's own policy pi_QOP (IQL-style)
    env_id: str | None = None  # override the dataset's gymnasium env id for evaluation
    clip_actions: bool = False  # clip dataset actions into the action space instead of failing
    out_dir: str = "runs"  # where run folders and the stage cache live
    name: str | None = None  # run folder name; default: dataset + components + config hash

    def identity_dict(self) -> dict[str, Any]:
        """The settings a run-folder hash covers: all but the seed and where the run is written
        (:func:`~registry.config.identity_dict`)."""
        ident = identity_dict(self)
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
        for kind in KINDS:
            out[kind] = self.configs[kind].to_dict()
        out["augment"] = dataclass_to_dict(self.augment)
        return out

    @property
    def run_dir(self) -> Path:
        return Path(self.run.out_dir) / self.run_name / f"seed_{self.run.seed}"

    @property
    def run_name(self) -> str:
        if self.run.name:
            return self.run.name
        slug = self.run.dataset.replace("/", "_").replace(".", "_").strip("_") or "dataset"
        comps = "-".join(self.components[k] for k in KINDS)
        return f"{slug}__{comps}__{config_hash(self.identity_dict())[:8]}"

    def identity_dict(self) -> dict[str, Any]:
        """What the run-folder hash covers: :meth:`to_dict` through
        :func:`~registry.config.identity_dict`, without the seed and where the run is written."""
        out: dict[str, Any] = {
            "run": self.run.identity_dict(),
            "components": dict(self.components),
        }
        for kind in KINDS:
            out[kind] = identity_dict(self.configs[kind])
        out["augment"] = identity_dict(self.augment)
        return out


# -- config resolution --------------------------------------------------------------------
def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a run config (YAML or TOML; a run folder's ``config.yaml`` replays that run)."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.yaml"
    if not path.exists():
        raise FileNotFoundError(f"no config file at {path}")
    text = path.read_text()
    if path.suffix == ".toml":
        import tomllib

        data = tomllib.loads(text)
    elif path.suffix in (".yaml", ".yml"):
        data = yaml.safe_load(text) or {}
    else:
        raise ValueError(f"{path}: config files must end in .yaml, .yml or .toml")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    data.pop("meta", None)  # provenance written by a previous run; not an input
    return data


def parse_overrides(pairs: list[str] | tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """``["planner.n_mpc=8", "run.seed=1"]`` -> ``{"planner": {"n_mpc": "8"}, "run": {...}}``."""
    out: dict[str, dict[str, Any]] = {}
    sections = (*KINDS, "run", "augment")
    for pair in pairs:
        key, sep, value = pair.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise ValueError(f"--set expects SECTION.KEY=VALUE, got {pair!r}")
        if section not in sections:
            raise ValueError(
                f"--set {pair!r}: unknown section '{section}'; sections: {', '.join(sections)}"
            )
        out.setdefault(section, {})[name] = value.strip()
    return out


def resolve_config(
    file: dict[str, Any] | None = None,
    components: dict[str, str | None] | None = None,
    run: dict[str, Any] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> RunConfig:
    """Paper defaults < profile < config file < command-line flags < ``--set`` overrides."""
    file, overrides = dict(file or {}), dict(overrides or {})
    unknown = set(file) - {*KINDS, "run", "augment", "components"}
    if unknown:
        raise ValueError(f"config file has unknown section(s): {', '.join(sorted(unknown))}")
    run_values = {**file.get("run", {}), **{k: v for k, v in (run or {}).items() if v is not None}}
    run_values.update(overrides.get("run", {}))
    profile_name = str(run_values.get("profile", RunSettings.profile))
    if profile_name not in PROFILES:
        raise ValueError(f"unknown profile '{profile_name}'; profiles: {', '.join(PROFILES)}")
    profile = PROFILES[profile_name]
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
    for kind in KINDS:
        cls = reg.config_class(kind, names[kind])
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in profile.get(kind, {}).items() if k in fields}
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
    return RunConfig(settings, names, configs, aug)


# -- provenance -----------------------------------------------------------------------------
def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("ipd", "torch", "numpy", "d3rlpy", "minari", "gymnasium", "mujoco", "pluggy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _machine() -> str:
    """The CPU model and core count: float kernels, so made datasets and runs, differ by CPU."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def run_meta(data_hash: str, replay: str) -> dict[str, Any]:
    """The provenance a run folder's ``config.yaml`` carries under ``meta`` (not an input)."""
    return {
        "dataset_hash": data_hash,
        "versions": _versions(),
        "machine": _machine(),
        "git_commit": _git_commit(),
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
        "replay": replay,
    }


def _git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if out.returncode != 0:
        return "unknown"
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=_jsonable) + "\n")


def _jsonable(x: Any) -> Any:
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


# -- logging --------------------------------------------------------------------------------
class CurveLogger:
    """Training curves of one stage: ``log.csv`` in the stage folder + TensorBoard scalars."""

    def __init__(self, stage: str, stage_dir: Path, tb_dir: Path | None):
        self.stage = stage
        self.path = stage_dir / "log.csv"
        self.writer = None
        if tb_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(tb_dir / stage))

    def __call__(self, step: int, values: dict[str, float]) -> None:
        new = not self.path.exists()
        with self.path.open("a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["step", "key", "value", "time"])
            now = time.time()
            for k, v in values.items():
                w.writerow([step, k, float(v), now])
                if self.writer is not None:
                    self.writer.add_scalar(f"{self.stage}/{k}", float(v), step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# -- data -----------------------------------------------------------------------------------
def resolve_dataset(
    source: str, clip_actions: bool = False, echo: Callable[[str], None] = print
) -> TrajectoryDataset:
    """Load ``source``; an `ipd data make` name (or its Minari id) that is not made yet is made."""
    from ipd_plugins.data import make as catalogue
    from ipd_plugins.data.minari_io import minari_local_ids
    from ipd_plugins.data.sources import load_dataset

    if not (source.endswith((".hdf5", ".h5", ".npz")) or Path(source).exists()):
        by_id = {spec.dataset_id: n for n, spec in catalogue.CATALOGUE.items()}
        name = source if source in catalogue.CATALOGUE else by_id.get(source)
        if name is not None:
            dataset_id = catalogue.dataset_id(name)
            if dataset_id not in minari_local_ids():
                echo(f"[data] {dataset_id} is not in the local Minari store: making it")
                catalogue.make_dataset(name)
            source = dataset_id
    return load_dataset(source, clip_actions=clip_actions)


# -- the pipeline ---------------------------------------------------------------------------
class Pipeline:
    """Runs (or resumes) every stage of one seed of a :class:`RunConfig`."""

    def __init__(self, cfg: RunConfig, echo: Callable[[str], None] = print, progress: bool = True):
        self.cfg = cfg
        self.echo = echo
        self.progress = progress
        self.out = Path(cfg.run.out_dir)
        self.run_dir = cfg.run_dir
        self.stages: dict[str, dict[str, Any]] = {}

    # stage plumbing
    def _stage(self, stage: str, key: str, build: Callable[[Path], dict[str, Any]]) -> Path:
        folder = (self.out / "cache" / stage / key).resolve()
        done = folder / "done.json"
        if done.exists():
            info = json.loads(done.read_text())
            self.echo(f"[{stage}] reusing {folder} (trained {info.get('finished', '?')})")
            self.stages[stage] = {"key": key, "path": str(folder), "reused": True, **info}
            return folder
        resumed = folder.exists() and any(folder.iterdir())
        folder.mkdir(parents=True, exist_ok=True)
        self.echo(f"[{stage}] {'resuming' if resumed else 'running'} -> {folder}")
        t0 = time.perf_counter()
        metrics = build(folder)
        info = {
            "seconds": time.perf_counter() - t0,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
            "metrics": metrics,
        }
        write_json(done, info)
        self.stages[stage] = {"key": key, "path": str(folder), "reused": False, **info}
        return folder

    def _logger(self, stage: str, folder: Path) -> CurveLogger:
        return CurveLogger(stage, folder, self.run_dir / "tb")

    # the run
    def load_dataset(self) -> TrajectoryDataset:
        return resolve_dataset(
            self.cfg.run.dataset, clip_actions=self.cfg.run.clip_actions, echo=self.echo
        )

    def build_context(self, ds: TrajectoryDataset) -> BuildContext:
        run = self.cfg.run
        return context_for(ds, seed=run.seed, device=run.device, env_id=run.env_id)

    def write_config(self, ds: TrajectoryDataset) -> None:
        data = self.cfg.to_dict()
        data["meta"] = run_meta(
            ds.content_hash(), f"ipd run --config {self.run_dir / 'config.yaml'}"
        )
        atomic_write_text(self.run_dir / "config.yaml", yaml.safe_dump(data, sort_keys=False))

    def run(self) -> dict[str, Any]:
        cfg, seed = self.cfg, self.cfg.run.seed
        t_start = time.perf_counter()
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        ds = self.load_dataset()
        ctx = self.build_context(ds)
        if ctx.env_id is None:
            raise ValueError(
                f"dataset '{ds.name}' does not name its environment; pass --set run.env_id=ENV_ID"
            )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.write_config(ds)
        self.echo(f"run folder: {self.run_dir}")
        data_hash = ds.content_hash()
        reg = get_registry()

        def make(kind: str) -> Any:
            return reg.create(kind, cfg.components[kind], cfg.configs[kind], ctx)

        # 1. value
        value = make("value")
        value_key = config_hash("value", data_hash, cfg.configs["value"], seed)

        def fit_value(folder: Path) -> dict[str, Any]:
            seed_everything(seed)
            log = self._logger("value", folder)
            try:
                metrics = value.fit(ds, work_dir=folder, log=log)
            finally:
                log.close()
            value.save(folder / "weights.pt")
            return dict(metrics or {})

        folder = self._stage("value", value_key, fit_value)
        if self.stages["value"]["reused"]:
            value.load(folder / "weights.pt")

        # 2. world model
        world_model = make("world_model")
        wm_key = config_hash("world_model", data_hash, cfg.configs["world_model"], ctx.env_id, seed)

        def fit_world_model(folder: Path) -> dict[str, Any]:
            seed_everything(seed + 1)
            log = self._logger("world_model", folder)
            try:
                metrics = world_model.fit(ds, work_dir=folder, log=log)
            finally:
                log.close()
            world_model.save(folder / "weights.pt")
            return dict(metrics or {})

        folder = self._stage("world_model", wm_key, fit_world_model)
        if self.stages["world_model"]["reused"]:
            world_model.load(folder / "weights.pt")

        # 3-4. uncertainty threshold and augmentation
        uncertainty, planner = make("uncertainty"), make("planner")
        aug_key = config_hash(
            "augment",
            value_key,
            wm_key,
            cfg.configs["uncertainty"],
            cfg.configs["planner"],
            cfg.augment,
            seed,
            SEGMENTS_FORMAT,
        )

        def run_augment(folder: Path) -> dict[str, Any]:
            seed_everything(seed + 2)
            kappa, u_stats = calibrate_kappa(
                ds,
                world_model,
                uncertainty,
                cfg.augment.calibration_pairs,
                seed=seed,
                device=ctx.device,
            )
            self.echo(f"[augment] reliable set U < kappa = {kappa:.4g} ({u_stats})")
            result = augment(
                ds,
                value,
                world_model,
                uncertainty,
                planner,
                kappa,
                cfg.augment,
                seed=seed,
                device=ctx.device,
                progress=self.progress,
            )
            if result.segments is not None:
                from ipd_plugins.data.npz_io import save_npz

                save_npz(result.segments, folder / "segments.npz")
            report = {**result.report, "uncertainty": u_stats}
            write_json(folder / "report.json", report)
            return report

        folder = self._stage("augment", aug_key, run_augment)
        aug_report = json.loads((folder / "report.json").read_text())
        train_ds = ds
        if (folder / "segments.npz").exists():
            from ipd_plugins.data.npz_io import load_npz

            train_ds = TrajectoryDataset.concatenate([ds, load_npz(folder / "segments.npz")])
        self.echo(
            f"[augment] {aug_report.get('selected', 0)} states selected, "
            f"{aug_report.get('imagined_steps_kept', 0)} imagined steps kept "
            f"({aug_report.get('cut_by_uncertainty', 0)} cut by uncertainty, "
            f"{aug_report.get('ended_by_termination', 0)} ended by termination)"
        )

        # 5. distill
        policy = make("policy")
        policy_key = config_hash("policy", aug_key, value_key, cfg.configs["policy"], seed)

        def fit_policy(folder: Path) -> dict[str, Any]:
            seed_everything(seed + 3)
            log = self._logger("policy", folder)

            def log_with_eval(step: int, values: dict[str, float]) -> None:
                log(step, values)
                every = cfg.run.eval_every
                if every and step > 0 and step % every == 0:
                    res = self.evaluate_actor(policy.actor(value), ds, ctx, episodes=3)
                    log(step, {"eval_normalized": res.normalized_mean or res.mean_return})

            try:
                metrics = policy.fit(train_ds, value, work_dir=folder, log=log_with_eval)
            finally:
                log.close()
            policy.save(folder / "weights.pt")
            return dict(metrics or {})

        folder = self._stage("policy", policy_key, fit_policy)
        if self.stages["policy"]["reused"]:
            policy.load(folder / "weights.pt")
        write_json(self.run_dir / "stages.json", self.stages)

        # 6-7. evaluate the last checkpoint
        scores = self.evaluate_all(policy, value, ds, ctx)
        results = {
            "dataset": {"source": cfg.run.dataset, "hash": data_hash, **ds.summary()},
            "components": cfg.components,
            "seed": seed,
            "scores": scores,
            "augment": aug_report,
            "stage_seconds": {k: v.get("seconds") for k, v in self.stages.items()},
            "stage_reused": {k: v["reused"] for k, v in self.stages.items()},
            "wall_seconds": time.perf_counter() - t_start,
        }
        write_json(self.run_dir / "results.json", results)
        return results

    def evaluate_actor(
        self, actor: Any, ds: TrajectoryDataset, ctx: BuildContext, episodes: int
    ) -> Any:
        from ipd_plugins.evaluate import evaluate

        refs = None
        if ds.ref_min_score is not None and ds.ref_max_score is not None:
            refs = (ds.ref_min_score, ds.ref_max_score)
        assert ctx.env_id is not None
        return evaluate(
            actor, ctx.env_id, n_episodes=episodes, seed=100_000 + ctx.seed, ref_scores=refs
        )

    def evaluate_all(
        self, policy: Any, value: Any, ds: TrajectoryDataset, ctx: BuildContext
    ) -> dict[str, Any]:
        from ipd_plugins.evaluate import CallableActor

        n = self.cfg.run.eval_episodes
        self.echo(f"[evaluate] {n} episodes of {ctx.env_id}")
        scores = {"policy": self.evaluate_actor(policy.actor(value), ds, ctx, n).to_dict()}
        if self.cfg.run.eval_qop:
            qop = CallableActor(lambda obs: value.act(obs, deterministic=True))
            scores["qop"] = self.evaluate_actor(qop, ds, ctx, n).to_dict()
        write_json(self.run_dir / "eval.json", scores)
        return scores


def load_run(run_dir: str | Path) -> tuple[RunConfig, dict[str, Any]]:
    """The config and stage record of a finished run folder."""
    run_dir = Path(run_dir)
    cfg = resolve_config(file=load_config_file(run_dir / "config.yaml"))
    stages_path = run_dir / "stages.json"
    if not stages_path.exists():
        raise FileNotFoundError(f"{run_dir} has no stages.json: the run did not finish training")
    return cfg, json.loads(stages_path.read_text())


@dataclass
class TrainedRun:
    """A finished run folder reloaded: its pipeline (for evaluation), data and components."""

    pipeline: Pipeline
    stages: dict[str, Any]
    dataset: TrajectoryDataset
    ctx: BuildContext
    components: dict[str, Any]  # kind -> the trained component, weights loaded


def load_trained(
    run_dir: str | Path,
    kinds: tuple[str, ...] = ("value", "policy"),
    echo: Callable[[str], None] = print,
) -> TrainedRun:
    """Rebuild the ``kinds`` components of a finished run and load their trained weights."""
    cfg, stages = load_run(run_dir)
    cfg.run.out_dir = str(Path(run_dir).resolve().parents[1])  # so that run_dir is this folder
    pipe = Pipeline(cfg, echo=echo, progress=False)
    ds = pipe.load_dataset()
    ctx = pipe.build_context(ds)
    reg = get_registry()
    components = {}
    for kind in kinds:
        component = reg.create(kind, cfg.components[kind], cfg.configs[kind], ctx)
        component.load(Path(stages[kind]["path"]) / "weights.pt")
        components[kind] = component
    return TrainedRun(pipe, stages, ds, ctx, components)
