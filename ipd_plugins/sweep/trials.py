"""One trial of a sweep: its stage keys, running it, its outcome, and the progress counter."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ipd_plugins.sweep.spec import Echo, Trial, find_finished


# -- stages ------------------------------------------------------------------------------------
def _stage_keys(trial: Trial, data_hash: str, env_id: str | None) -> dict[str, str]:
    """The stage-cache keys of a trial on data of hash ``data_hash``."""
    resolved = trial.resolve()
    if trial.method == "ipd":
        from ipd_plugins.pipeline import stage_keys

        return stage_keys(resolved, data_hash, env_id)
    from ipd_plugins.baselines.run import baseline_key
    from ipd_plugins.run_config import curve_key

    settings, bconf = resolved  # a sweep's baselines act without an adapter
    curve = curve_key(settings)
    return {"baseline": baseline_key(bconf, data_hash, env_id, settings.seed, curve)}


def _shared(keys: dict[int, dict[str, str]]) -> dict[tuple[str, str], list[int]]:
    """(stage, key) -> the trials that need it, for every stage needed by two or more."""
    users: dict[tuple[str, str], list[int]] = {}
    for index, by_stage in keys.items():
        for stage, key in by_stage.items():
            users.setdefault((stage, key), []).append(index)
    return {k: v for k, v in users.items() if len(v) > 1}


# -- outcomes ----------------------------------------------------------------------------------
@dataclass
class TrialOutcome:
    """What became of a trial: ``done`` (before this sweep, or by another process meanwhile),
    ``finished`` (now), ``failed``, ``invalid``, ``cancelled`` or ``not run`` (``--collect``)."""

    trial: Trial
    status: str
    results: str | None = None  # its results.json
    error: str | None = None
    node: str | None = None  # the Ray node that ran it
    seconds: float | None = None
    against_record: str | None = None  # a result other than the record's: the same scores?
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
            "against_record": self.against_record,
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


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


#: how :func:`finish_trial`'s note on a result other than the record's begins when the scores
#: are the record's
REPRODUCES = "reproduces the record's scores"


def finish_trial(trial: Trial, results: Path, record: str | None = None) -> str | None:
    """After a trial: its label in ``results.json`` (for ``ipd compare``) and, with ``record``,
    a copy of its ``config.yaml`` and ``results.json`` there.

    A record that already holds another result of this run (the run was trained again, e.g. by
    ``ipd sweep --reproduce`` after its folder was lost) keeps it: the first result of a run
    stands. Returns what was found then: whether the scores are the record's, or how they differ.
    """
    from ipd_plugins.files import atomic_write_text, write_json

    data = json.loads(results.read_text())
    if data.get("label") != trial.label:
        data["label"] = trial.label
        write_json(results, data)
    if not record:
        return None
    folder = results.parent
    dest = Path(record) / Path(trial.run_dir).relative_to(trial.out_dir)
    kept = find_finished(trial, record, in_out=False)  # its folder, or one of an older hash
    if kept is not None:
        recorded = json.loads(kept.read_text())
        if {**recorded, "label": 0} != {**data, "label": 0}:  # another result: the record stands
            change = score_change(recorded, data)
            if recorded.get("scores") != data.get("scores"):
                return f"differs from the record, which is kept ({kept}): {change}"
            return f"{REPRODUCES} ({change})"
        if kept.parent != dest:  # this result, recorded under an older hash
            return None
    for name in ("config.yaml", "results.json"):
        src, copy = folder / name, dest / name
        if src.exists() and (not copy.exists() or copy.read_text() != src.read_text()):
            atomic_write_text(copy, src.read_text())
    return None


def score_change(before: dict[str, Any], after: dict[str, Any]) -> str:
    """Each actor's score in two ``results.json``: ``policy 16.77`` when its evaluation is the
    same, else ``policy 16.77 -> 17.10`` (normalised x100 where the environment has reference
    scores)."""

    def means(data: dict[str, Any]) -> dict[str, float | None]:
        return {
            actor: s.get("normalized_mean", s.get("mean_return"))
            for actor, s in (data.get("scores") or {}).items()
        }

    def text(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    old, new = means(before), means(after)
    parts = []
    for actor in [*old, *(a for a in new if a not in old)]:
        a, b = old.get(actor), new.get(actor)
        same = (before.get("scores") or {}).get(actor) == (after.get("scores") or {}).get(actor)
        parts.append(f"{actor} {text(a)}" if same else f"{actor} {text(a)} -> {text(b)}")
    return ", ".join(parts)


#: A trial's claim on its run folder, held while a process runs the trial (a serial sweep or a
#: Ray task): a second sweep on the same ``out`` does not run it again.
CLAIM = ".trial.lock"


def _also(note: str | None) -> str:
    """``"; note"``, or nothing: a note appended to a trial's line."""
    return f"; {note}" if note else ""


def claim_path(trial: Trial) -> Path:
    """The lock file of ``trial``'s claim (:data:`CLAIM`)."""
    return Path(trial.run_dir) / CLAIM


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
