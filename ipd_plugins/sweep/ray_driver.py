"""The sweep on Ray: tasks that run in worker processes, and the driver that schedules them."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ipd_plugins.stages import stage_lock
from ipd_plugins.sweep.spec import SHARED_STAGES, STAGE_ORDER, Echo, Trial, _first_line
from ipd_plugins.sweep.trials import (
    TrialOutcome,
    _also,
    _duration,
    _Progress,
    _shared,
    _stage_keys,
    claim_path,
    finish_trial,
    run_trial,
)


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
    """Run one trial (its shared stages, ``deps``, are made: it reuses them), under its claim
    (:func:`~ipd_plugins.sweep.trials.claim_path`): if another sweep on the same ``out`` is
    running it, wait, and if that one finished it, return its results without running it."""
    echo, node = _enter(ctx, monitor)
    t0 = time.perf_counter()
    path = Path(trial.run_dir) / "results.json"
    waiting = "another process is running this trial; waiting for it"
    with stage_lock(claim_path(trial), on_wait=lambda: echo(waiting)):
        by_other = path.is_file()  # finished since the sweep was planned
        results = json.loads(path.read_text()) if by_other else run_trial(trial, echo=echo)
        against_record = finish_trial(trial, path, ctx.get("record"))
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
        "against_record": against_record,
        "by_other": by_other,
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
            # Ray runs workers at niceness 15; the trials are the sweep's work, and beside
            # any other job on the machine (a test run, a second sweep) they would starve
            _system_config={"worker_niceness": 0},
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
        also = _also(value.get("against_record"))
        if value.get("by_other"):  # another sweep on this out ran it (its claim was waited for)
            self.outcomes[t.index] = TrialOutcome(
                t, "done", results=value["results"], against_record=value.get("against_record")
            )
            self.echo(f"{self.prefix} {t.title}: finished by another process ({t.run_dir})" + also)
            return True
        self.counter.finished_now += 1
        self.outcomes[t.index] = TrialOutcome(
            t,
            "finished",
            results=value["results"],
            node=value["node"],
            seconds=value["seconds"],
            error=value.get("note"),
            against_record=value.get("against_record"),
        )
        score = value.get("score")
        self.echo(
            f"{self.prefix} {t.title}: finished, score "
            + ("-" if score is None else f"{score:.1f}")
            + f" ({_duration(value['seconds'])}, node {value['node'][:8]})"
            + also
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
