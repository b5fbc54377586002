"""The stage cache: every trained artifact once, keyed by what it depends on.

A stage (the value function, the world model, the augmentation, the policy, a baseline) writes
into ``<out>/cache/<stage>/<key>/``, where ``key`` hashes the dataset and every config the
artifact depends on, and marks the folder complete with ``done.json``, written last with a
SHA-256 of each artifact. So:

- a later run that needs the same artifact reuses it (an ablation that changes only the planner
  retrains neither the value function nor the world model);
- an interrupted stage resumes from the periodic checkpoint its component keeps in the folder
  (``*train_state.pt``, deleted once ``done.json`` is written: a finished stage is reused);
- two runs that need one stage at once do not both train it: the second waits on the stage's
  lock file (``<key>/.lock``), then reuses what the first made;
- a cached artifact that no longer matches its checksum, or fails to load, is set aside as
  ``<file>.corrupt`` and its stage retrains, saying so;
- ``done.json`` records a digest of the source of the modules that define the stage's
  component (``code``: its classes and their bases and the helpers of their package,
  :func:`source_digests`); a stage reused after one of them changed says so, since the key
  hashes configs, not code (``retrain`` below, or deleting the folder, retrains it);
- ``done.json`` also records a digest of the artifacts of the stages it was made from
  (``inputs``: the augmentation's value function and world model, the policy's augmentation
  and value function); a stage whose inputs were made again since (``ipd run --retrain
  value``, or its folder deleted) to other artifacts is stale: it is set aside as
  ``<file>.stale`` and retrains;
- a stage named in ``retrain`` is trained again even when cached (its folder's files set aside
  as ``<file>.replaced``);
- a stage may also name what it really consumes (``content``: e.g. the policy's training data
  by value and its effective config), recorded in ``<out>/cache/by_content/<stage>/``: a run
  whose key differs only by options that did not change that (a cap that did not bind) reuses
  the folder made under the other key.

Training curves go to the stage folder's ``log.csv`` and to TensorBoard; when stderr is not a
terminal (output to a file, a CI log), a progress line is printed every ``progress_seconds``.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import inspect
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ipd_plugins.files import is_set_aside, set_aside, write_json
from ipd_plugins.training import checkpoint_seconds, seed_everything
from registry.protocols import Logger

try:  # POSIX advisory locks; without them (Windows) concurrent runs are not coordinated
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "StageCache",
    "StageRecord",
    "CurveLogger",
    "file_sha256",
    "stage_lock",
    "wall_seconds",
]

#: Exceptions that mean "this cached artifact cannot be used" when a component loads it.
LOAD_ERRORS = (ValueError, RuntimeError, KeyError, EOFError, OSError)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def stage_lock(
    path: Path, on_wait: Callable[[], None] | None = None, wait: bool = True
) -> Iterator[bool]:
    """Hold an exclusive lock on ``path`` (created if missing); ``on_wait`` if we must wait.
    ``wait=False``: do not wait for a lock another process holds; yields whether it got it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        if fcntl is None:
            yield True
            return
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                yield False
                return
            if on_wait is not None:
                on_wait()
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class CurveLogger:
    """Training curves of one stage: ``log.csv`` in the stage folder + TensorBoard scalars.

    With ``echo`` and ``progress_seconds`` set, also prints ``[stage] step N: key=value ...`` at
    most every ``progress_seconds`` (for logs that are not terminals, where bars are off).
    """

    def __init__(
        self,
        stage: str,
        stage_dir: Path,
        tb_dir: Path | None,
        echo: Callable[[str], None] | None = None,
        progress_seconds: float | None = None,
    ):
        self.stage = stage
        self.path = stage_dir / "log.csv"
        self.echo, self.progress_seconds = echo, progress_seconds
        self._last_echo = time.monotonic()
        self.writer = None
        if tb_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(tb_dir / stage))

    def __call__(self, step: int, values: dict[str, float]) -> None:
        new = not self.path.exists()
        now = time.time()
        with self.path.open("a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["step", "key", "value", "time"])
            for k, v in values.items():
                w.writerow([step, k, float(v), now])
                if self.writer is not None:
                    self.writer.add_scalar(f"{self.stage}/{k}", float(v), step)
        if self.echo is not None and self.progress_seconds is not None:
            if time.monotonic() - self._last_echo >= self.progress_seconds:
                self._last_echo = time.monotonic()
                shown = " ".join(f"{k}={float(v):.4g}" for k, v in list(values.items())[:6])
                self.echo(f"[{self.stage}] step {step}: {shown}")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@dataclass
class StageRecord:
    """What ``stages.json`` says of one stage: its cache folder and how it got there."""

    key: str
    path: str
    reused: bool
    seconds: float | None = None  # training time, over all the processes that made it
    resumed_seconds: float = 0.0  # of ``seconds``, those of earlier (killed) processes
    run: str | None = None  # the run folder that made it
    finished: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)  # file name -> sha256
    code: dict[str, str] = field(default_factory=dict)  # module -> source digest (trained by)
    inputs: dict[str, str] = field(default_factory=dict)  # stage -> digest of its artifacts
    loaded: Any = field(default=None, repr=False, compare=False)  # what `load` returned on reuse

    def to_dict(self) -> dict[str, Any]:
        """The record as ``stages.json`` has it (``loaded`` is not a record)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "loaded"}


class StageCache:
    """Runs or reuses stages under ``<out>/cache``; :attr:`records` is the run's ``stages.json``.

    Args:
        out_dir: the folder holding ``cache/`` (``--out``).
        echo: where one-line messages go.
        tb_dir: TensorBoard folder of the run (None: no TensorBoard).
        progress_seconds: seconds between progress lines; None picks 60 when stderr is not a
            terminal, else off (bars show progress there).
        retrain: the stages to train again even when cached (``ipd run --retrain``).
        run_dir: the run folder the stages are made for (recorded in ``done.json`` as ``run``,
            so that a resumed run can count the time of the stages it made before it was killed;
            :meth:`earlier_seconds`).
    """

    def __init__(
        self,
        out_dir: str | Path,
        echo: Callable[[str], None] = print,
        tb_dir: Path | None = None,
        progress_seconds: float | None = None,
        run_dir: Path | None = None,
        retrain: Iterable[str] = (),
    ):
        self.root = Path(out_dir) / "cache"
        self.echo, self.tb_dir = echo, tb_dir
        self.run_dir = str(Path(run_dir).resolve()) if run_dir is not None else None
        if progress_seconds is None and not sys.stderr.isatty():
            progress_seconds = 60.0
        self.progress_seconds = progress_seconds
        self.records: dict[str, StageRecord] = {}
        self.retrain = frozenset(retrain)

    def folder(self, stage: str, key: str) -> Path:
        return (self.root / stage / key).resolve()

    def logger(self, stage: str, folder: Path) -> CurveLogger:
        return CurveLogger(stage, folder, self.tb_dir, self.echo, self.progress_seconds)

    def run(
        self,
        stage: str,
        key: str,
        train: Callable[[Path], dict[str, Any] | None],
        load: Callable[[Path], Any],
        content: Callable[[], str] | None = None,
        code: Iterable[Any] = (),
        inputs: Iterable[str] = (),
    ) -> StageRecord:
        """Reuse the stage's artifact (``load(folder)``) or make it (``train(folder)``).

        ``train`` writes the artifact files into ``folder`` and returns metrics; ``load`` reads
        them back (called only on reuse; what it returns is the record's ``loaded``). Every
        file ``train`` leaves in the folder is checksummed in ``done.json``. ``content``:
        returns a hash of what the stage consumes, called only when ``key`` has no finished
        folder; when another key with the same content has one, that folder is reused.
        ``code``: the classes, functions or modules that make the artifact
        (:func:`source_digests`); reusing it after their source changed prints a note.
        ``inputs``: the stages (run earlier with this cache) whose artifacts it is made from;
        a folder made from other artifacts of theirs than this run's is stale and retrains
        (not one reused by ``content``, which hashes what the stage consumes by value).
        """
        folder = self.folder(stage, key)
        record, digest, source = None, None, source_digests(code)
        made_from = {s: _digest(self.records[s].artifacts) for s in inputs if s in self.records}
        if (
            content is not None
            and stage not in self.retrain
            and not (folder / "done.json").exists()
        ):
            digest = content()
            record = self._same_content(stage, digest, load, source)
        if record is None:
            record = self._locked(stage, key, folder, train, load, source, made_from)
            if digest is not None:
                write_json(self._content_file(stage, digest), {"key": record.key})
        self.records[stage] = record
        return record

    def fit(
        self,
        stage: str,
        key: str,
        component: Any,
        fit: Callable[[Path, Logger], dict[str, float] | None],
        seed: int,
        content: Callable[[], str] | None = None,
        code: Iterable[Any] = (),
        inputs: Iterable[str] = (),
    ) -> StageRecord:
        """A trainable component's stage: seed, ``fit(folder, log)``, ``weights.pt``; or reuse
        (``content``, ``inputs``: as in :meth:`run`; ``code``: there, and always the
        component's class)."""

        def train(folder: Path) -> dict[str, Any]:
            seed_everything(seed)
            log = self.logger(stage, folder)
            try:
                metrics = fit(folder, log)
            finally:
                log.close()
            component.save(folder / "weights.pt")
            return dict(metrics or {})

        def load(folder: Path) -> Any:
            return component.load(folder / "weights.pt")

        return self.run(stage, key, train, load, content, (type(component), *code), inputs)

    def earlier_seconds(self) -> float:
        """The time earlier processes of this run spent on its stages (0 for a run that was
        never killed): the stages they finished, reused now, and the training they
        checkpointed before the stages resumed now. A run's ``wall_seconds`` adds it to its
        own process's time."""
        seconds = 0.0
        for r in self.records.values():
            if not r.reused:
                seconds += r.resumed_seconds
            elif self.run_dir is not None and r.run == self.run_dir:
                seconds += r.seconds or 0.0
        return seconds

    def write(self, path: Path) -> None:
        """Write :attr:`records` as ``stages.json``."""
        write_json(path, {k: v.to_dict() for k, v in self.records.items()})

    # -- internals ----------------------------------------------------------------------
    def _locked(
        self,
        stage: str,
        key: str,
        folder: Path,
        train: Callable[[Path], dict[str, Any] | None],
        load: Callable[[Path], Any],
        source: dict[str, str],
        made_from: dict[str, str],
    ) -> StageRecord:
        def waiting() -> None:
            self.echo(f"[{stage}] another run is making {folder}; waiting for it")

        with stage_lock(folder / ".lock", on_wait=waiting):
            if stage in self.retrain and (folder / "done.json").exists():
                self.echo(f"[{stage}] --retrain: setting {folder} aside as *.replaced")
                _set_aside(folder, ".replaced")
            record = self._reuse(stage, key, folder, load, source, made_from)
            if record is None:
                record = self._train(stage, key, folder, train, source, made_from)
        return record

    def _content_file(self, stage: str, content: str) -> Path:
        return self.root / "by_content" / stage / f"{content}.json"

    def _same_content(
        self, stage: str, content: str, load: Callable[[Path], Any], source: dict[str, str]
    ) -> StageRecord | None:
        """The finished folder another key made from the same ``content``, reused; else None."""
        path = self._content_file(stage, content)
        try:
            other = str(json.loads(path.read_text())["key"])
        except (OSError, ValueError, KeyError, TypeError):
            return None  # none recorded (or an unreadable record: train under our own key)
        folder = self.folder(stage, other)
        if not other.isalnum() or not (folder / "done.json").exists():
            return None
        self.echo(f"[{stage}] same training data and effective config as {folder}")
        with stage_lock(folder / ".lock"):
            return self._reuse(stage, other, folder, load, source)

    def _reuse(
        self,
        stage: str,
        key: str,
        folder: Path,
        load: Callable[[Path], Any],
        source: dict[str, str],
        made_from: dict[str, str] | None = None,
    ) -> StageRecord | None:
        done = folder / "done.json"
        if not done.exists():
            return None
        try:
            info = json.loads(done.read_text())
            for name, digest in info.get("artifacts", {}).items():
                if file_sha256(folder / name) != digest:
                    raise ValueError(f"{name} does not match the checksum in done.json")
            loaded = load(folder)
        except (*LOAD_ERRORS, json.JSONDecodeError) as err:
            why = str(err).splitlines()[0] if str(err) else type(err).__name__
            self.echo(f"[{stage}] the cached artifact in {folder} is unusable ({why}); retraining")
            _set_aside(folder, ".corrupt")
            return None
        was_from = info.get("inputs") or {}  # none recorded before inputs were
        now = made_from or {}
        stale = [s for s in sorted(now) if s in was_from and was_from[s] != now[s]]
        if stale:
            self.echo(
                f"[{stage}] {folder} was made from another {' and '.join(stale)} than this "
                f"run's (made again since); setting it aside as *.stale and retraining"
            )
            _set_aside(folder, ".stale")
            return None
        self.echo(f"[{stage}] reusing {folder} (trained {info.get('finished', '?')})")
        # the key hashes the configs, not the code: say when the code it was made with changed
        # (not for a record from before digests, or a caller that names no code)
        was = info.get("code") or {}
        changed = [m for m in sorted(was) if was[m] != source.get(m)]
        if was and source and changed:
            self.echo(
                f"[{stage}] note: the source of {', '.join(changed)} changed since this stage "
                f"was trained; it is reused as the old code made it (deleting {folder}, or "
                f"`ipd run ... --retrain {stage}` for a run's stage, retrains it; the stages "
                "made from it follow)"
            )
        return StageRecord(
            key=key,
            path=str(folder),
            reused=True,
            seconds=info.get("seconds"),
            resumed_seconds=float(info.get("resumed_seconds", 0.0)),
            run=info.get("run"),
            finished=info.get("finished"),
            metrics=info.get("metrics", {}),
            artifacts=info.get("artifacts", {}),
            code=was,
            inputs=was_from,
            loaded=loaded,
        )

    def _train(
        self,
        stage: str,
        key: str,
        folder: Path,
        train: Callable[[Path], dict[str, Any] | None],
        source: dict[str, str],
        made_from: dict[str, str],
    ) -> StageRecord:
        resumed = any(not _scratch(p) or _checkpoint(p) for p in folder.iterdir())
        folder.mkdir(parents=True, exist_ok=True)
        self.echo(f"[{stage}] {'resuming' if resumed else 'running'} -> {folder}")
        earlier = checkpoint_seconds(folder)  # 0 without a checkpoint (a fresh stage)
        t0 = time.perf_counter()
        metrics = dict(train(folder) or {})
        artifacts = {
            p.name: file_sha256(p)
            for p in sorted(folder.iterdir())
            if p.is_file() and p.name not in ("done.json", "log.csv") and not _scratch(p)
        }
        record = StageRecord(
            key=key,
            path=str(folder),
            reused=False,
            seconds=earlier + time.perf_counter() - t0,
            resumed_seconds=earlier,
            run=self.run_dir,
            finished=time.strftime("%Y-%m-%d %H:%M:%S"),
            metrics=metrics,
            artifacts=artifacts,
            code=source,
            inputs=made_from,
        )
        info = {k: v for k, v in record.to_dict().items() if k not in ("key", "path", "reused")}
        write_json(folder / "done.json", info)
        for path in folder.iterdir():  # a finished stage is reused, never resumed
            if _checkpoint(path):
                path.unlink(missing_ok=True)
        return record


#: top-level packages whose source is not hashed (:func:`source_digests`): the standard
#: library, the numerical libraries (their versions are in each run's config.yaml) and the
#: plugin system's interfaces (``registry``: protocols and config plumbing, no training code)
_NOT_HASHED = frozenset(sys.stdlib_module_names) | {"torch", "numpy", "registry"}


def source_digests(code: Iterable[Any]) -> dict[str, str]:
    """``{module: sha256 of its source file}`` of the modules that define the classes (and
    every class they derive from), functions and modules in ``code``, and of the modules of
    their own package that those import at module level (helpers such as ``nn.py`` or
    ``value/losses.py``; one level, not what the helpers import), leaving out
    :data:`_NOT_HASHED`. What a stage's ``done.json`` records as ``code``.

    A helper imported only inside a function is not covered: after changing one, retrain the
    stages it feeds (``ipd run --retrain``).
    """

    def module_of(obj: Any) -> str:
        name = obj.__name__ if inspect.ismodule(obj) else getattr(obj, "__module__", None)
        return name if isinstance(name, str) else ""

    own: list[str] = []
    for obj in code:
        own += [module_of(part) for part in (obj.__mro__ if isinstance(obj, type) else (obj,))]
    names = set(own)
    for name in own:  # the helpers of the same package that each imports at module level
        module, package = sys.modules.get(name), name.split(".")[0]
        if module is not None:
            helpers = (module_of(value) for value in vars(module).values())
            names.update(h for h in helpers if h.split(".")[0] == package)
    out: dict[str, str] = {}
    for name in names:
        if not name or name.split(".")[0] in _NOT_HASHED:
            continue
        path = getattr(sys.modules.get(name), "__file__", None)
        if path and path.endswith(".py") and Path(path).is_file():
            out[name] = file_sha256(Path(path))[:16]
    return dict(sorted(out.items()))


def wall_seconds(t_start: float, cache: StageCache, replay: bool) -> float:
    """A run's ``wall_seconds``: this process's time since ``t_start`` (``perf_counter``) plus
    the time earlier processes of the run spent on its stages (:meth:`StageCache.earlier_seconds`:
    non-zero only for a run that was killed and resumed). A ``replay`` of a finished run (its
    ``results.json`` was there) counts only its own time."""
    earlier = 0.0 if replay else cache.earlier_seconds()
    return time.perf_counter() - t_start + earlier


def _checkpoint(path: Path) -> bool:
    """A resume checkpoint (:class:`~ipd_plugins.training.Checkpointer`: ``*train_state.pt``)."""
    return path.name.endswith("train_state.pt")


def _set_aside(folder: Path, suffix: str) -> None:
    """Rename a stage folder's artifacts and ``done.json`` to ``*<suffix>`` (kept, never
    deleted): ``.corrupt`` (unusable), ``.stale`` (made from other inputs) or ``.replaced``
    (retrained on request); earlier copies are kept too (:func:`~ipd_plugins.files.set_aside`)."""
    for path in folder.iterdir():  # not the lock file the caller holds (a dotfile)
        if path.is_file() and not is_set_aside(path.name) and path.name[0] != ".":
            set_aside(path, suffix)


def _digest(artifacts: dict[str, str]) -> str:
    """One digest of a stage's artifacts (``{file: sha256}``) as input of another: what
    ``inputs`` records. Not of its ``report.json``: a report holds timings, which differ
    between two makings of the same artifact."""
    made = {k: v for k, v in artifacts.items() if k != "report.json"}
    return hashlib.sha256(json.dumps(made, sort_keys=True).encode()).hexdigest()[:16]


def _scratch(path: Path) -> bool:
    """Files that are not the artifact: set-aside copies, temporaries, resume checkpoints."""
    name = path.name
    return is_set_aside(name) or name.endswith(".tmp") or name.startswith(".") or _checkpoint(path)
