"""The sweep's engine: shared stages, outcomes, the serial executor and ``run_sweep``."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ipd_plugins.stages import stage_lock
from ipd_plugins.sweep.spec import (
    STAGE_ORDER,
    Echo,
    SweepSpec,
    Trial,
    _first_line,
    expand,
    find_finished,
)
from ipd_plugins.sweep.trials import (
    SweepResult,
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
    seconds, n_left, unknown = estimate_seconds(trials, finished)
    if n_left and unknown == n_left:
        lines.append("estimate: none (no trial to run has a finished trial of its method)")
    elif n_left:
        lines.append(
            f"estimate: ~{_duration(seconds)} of trial time for the {n_left} to run (each at "
            "the mean wall time of the finished trials of its method on its dataset, else on "
            "any dataset)"
            + (f"; {unknown} with none of their method not counted" if unknown else "")
        )
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


def estimate_seconds(
    trials: Sequence[Trial], finished: dict[int, Path | None]
) -> tuple[float, int, int]:
    """The trial time of the trials not finished yet, at the pace of the finished ones.

    Each costs the mean ``wall_seconds`` of the finished trials of its method (its label, else
    the label's method without a grid's ``[...]``) on its dataset, else on any dataset.
    Returns (seconds, trials to run, those of them with no finished trial of their method,
    which are not counted)."""
    walls: dict[tuple[str, ...], list[float]] = {}
    left = []
    for t in trials:
        if t.error is not None:
            continue
        path = finished.get(t.index)
        if path is None:
            left.append(t)
            continue
        try:
            wall = float(json.loads(Path(path).read_text())["wall_seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a run written before wall times were recorded
        for key in _pace_keys(t):
            walls.setdefault(key, []).append(wall)
    seconds, unknown = 0.0, 0
    for t in left:
        values = next((walls[k] for k in _pace_keys(t) if k in walls), None)
        if values:
            seconds += sum(values) / len(values)
        else:
            unknown += 1
    return seconds, len(left), unknown


def _pace_keys(trial: Trial) -> list[tuple[str, ...]]:
    """The groups of finished trials whose pace ``trial`` takes, the closest first (each
    once: a label without a grid's ``[...]`` is its own method)."""
    method = trial.label.split("[", 1)[0]
    keys = [(trial.label, trial.dataset), (trial.label,), (method, trial.dataset), (method,)]
    return list(dict.fromkeys(keys))


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
    reproduce: bool = False,
) -> list[TrialOutcome]:
    """Run every trial that is not done yet; returns an outcome per trial, in order.

    ``executor``: ``"ray"`` (a local Ray instance sized to ``num_cpus`` or the machine, or the
    cluster at ``address``; see the module docstring) or ``"serial"`` (in this process, one
    after another, ``progress`` bars allowed) or ``"collect"`` (nothing runs: the finished
    trials are labelled and recorded, the others are ``not run``). ``logs``: the folder of the
    Ray tasks' logs (default ``<out>/sweeps/logs``). ``runtime_env`` goes to ``ray.init``.
    ``reproduce``: a trial that ``record`` has but its own folder has not is run again (its
    folder was lost, or to check the record); the record keeps its result and each such trial
    says whether it got the same scores (:func:`~ipd_plugins.sweep.trials.finish_trial`).
    """
    if executor not in ("ray", "serial", "collect"):
        raise ValueError(f"unknown executor '{executor}'; executors: ray, serial, collect")
    outcomes: dict[int, TrialOutcome] = {}
    todo = []
    for t in trials:
        if t.error is not None:
            outcomes[t.index] = TrialOutcome(t, "invalid", error=t.error)
            echo(f"{prefix} {t.title}: invalid: {t.error}")
            continue
        done = find_finished(t, None if reproduce else record)
        if done is not None:
            note = None
            if Path(done).resolve().parent == Path(t.run_dir).resolve():
                note = finish_trial(t, done, record)
            outcomes[t.index] = TrialOutcome(t, "done", results=str(done), against_record=note)
            echo(f"{prefix} {t.title}: finished earlier ({done.parent})" + _also(note))
            continue
        todo.append(t)
    counter = _Progress(len(trials), echo, prefix, progress_seconds)
    counter.done = sum(1 for o in outcomes.values() if o.status == "done")
    counter.failed = sum(1 for o in outcomes.values() if o.status == "invalid")
    if executor == "collect":  # run nothing: the finished ones are labelled and recorded above
        for t in todo:
            outcomes[t.index] = TrialOutcome(t, "not run")
    elif todo:
        if executor == "serial":
            _run_serial(todo, outcomes, counter, record, echo, progress)
        else:
            from ipd_plugins.sweep.ray_driver import _run_ray  # Ray only when asked for

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
    """One trial after another, each under a claim on its run folder
    (:data:`~ipd_plugins.sweep.trials.CLAIM`). A trial another process is running (a second
    ``ipd sweep``, serial or on Ray, on the same ``out``) is put off while a trial nobody runs
    is left, then waited for; if that process finished it, it is not run again (and if that
    process died, it resumes here)."""
    prefix = counter.prefix

    def run_one(t: Trial) -> None:
        results = Path(t.run_dir) / "results.json"
        if results.is_file():  # another process finished it while this one ran others
            note = finish_trial(t, results, record)
            counter.done += 1
            outcomes[t.index] = TrialOutcome(t, "done", results=str(results), against_record=note)
            echo(f"{prefix} {t.title}: finished by another process ({t.run_dir})" + _also(note))
            return
        echo(f"{prefix} {t.title} -> {t.run_dir}")
        t0 = time.perf_counter()
        try:
            run_trial(t, echo=echo, progress=progress)
            note = finish_trial(t, results, record)
        except Exception as err:  # a trial's own failure: reported, the others go on
            counter.failed += 1
            error = f"{type(err).__name__}: {_first_line(err)}"
            outcomes[t.index] = TrialOutcome(t, "failed", error=error, exception=err)
            echo(f"{prefix} {t.title}: failed: {error}")
        else:
            counter.done += 1
            counter.finished_now += 1
            seconds = time.perf_counter() - t0
            outcomes[t.index] = TrialOutcome(
                t, "finished", results=str(results), seconds=seconds, against_record=note
            )
            if note:
                echo(f"{prefix} {t.title}: {note}")

    def claimed(t: Trial, claims: contextlib.ExitStack) -> bool:
        """Claim ``t`` unless another process holds it; the claim lasts as long as ``claims``."""
        return claims.enter_context(stage_lock(claim_path(t), wait=False))

    pending = list(todo)
    while pending:
        with contextlib.ExitStack() as claims:
            free = (t for t in pending if claimed(t, claims))
            t = next(free, None)
            if t is None:  # every trial left is another process's: wait for the first
                t = pending[0]
                echo(f"{prefix} {t.title}: another process is running it; waiting for it")
                claims.enter_context(stage_lock(claim_path(t)))
            pending.remove(t)
            run_one(t)
        counter.show(0, force=True)


# -- the command's engine ----------------------------------------------------------------------
def dry_run(spec: SweepSpec, reproduce: bool = False) -> str:
    """``ipd sweep --dry-run``: every trial, done or not, and the stages they share
    (:func:`describe`); nothing runs, no data is loaded. ``reproduce``: as
    :func:`run_trials`."""
    trials = expand(spec)
    record = None if reproduce else spec.record
    finished = {t.index: find_finished(t, record) for t in trials if t.error is None}
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
    reproduce: bool = False,
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
        reproduce=reproduce,
    )
    result = SweepResult(outcomes, folder / "summary.json")
    statuses = ("done", "finished", "failed", "invalid", "cancelled", "not run")
    counts = {s: result.count(s) for s in statuses}
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
