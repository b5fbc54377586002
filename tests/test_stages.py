"""The stage cache: make once, reuse, resume, wait for another run, set bad artifacts aside."""

from __future__ import annotations

import importlib
import json
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from ipd_plugins.files import atomic_save, is_set_aside, safe_load, set_aside
from ipd_plugins.stages import CurveLogger, StageCache, _digest, wall_seconds
from ipd_plugins.training import Checkpointer


class Counter:
    """A component whose ``fit`` counts calls and whose weights are one tensor."""

    def __init__(self):
        self.fits, self.w = 0, torch.zeros(3)

    def fit(self, folder: Path, log) -> dict:
        self.fits += 1
        self.w = torch.randn(3)  # seeded by the stage: the same for the same seed
        log(1, {"loss": 0.5})
        return {"loss": 0.5}

    def save(self, path: Path) -> None:
        atomic_save({"w": self.w}, path)

    def load(self, path: Path) -> None:
        self.w = safe_load(path)["w"]


def _cache(tmp_path: Path, lines: list[str]) -> StageCache:
    return StageCache(tmp_path / "out", echo=lines.append, progress_seconds=None)


def test_a_stage_is_made_once_then_reused_with_the_same_weights(tmp_path):
    lines: list[str] = []
    first = Counter()
    rec = _cache(tmp_path, lines).fit("value", "k1", first, first.fit, seed=7)
    assert not rec.reused and first.fits == 1 and rec.metrics == {"loss": 0.5}
    done = json.loads((Path(rec.path) / "done.json").read_text())
    assert set(done["artifacts"]) == {"weights.pt"} and len(done["artifacts"]["weights.pt"]) == 64
    second = Counter()
    again = _cache(tmp_path, lines).fit("value", "k1", second, second.fit, seed=7)
    assert again.reused and second.fits == 0 and torch.equal(second.w, first.w)
    assert any("[value] reusing" in m for m in lines)
    other = Counter()  # another key: trained, and the seed fixes it
    _cache(tmp_path, lines).fit("value", "k2", other, other.fit, seed=7)
    assert other.fits == 1 and torch.equal(other.w, first.w)


def test_a_stage_reused_after_its_code_changed_says_so(tmp_path, monkeypatch, request):
    """done.json records the source digests of the component's modules and of the helpers of
    its package they import; reuse compares."""
    package = tmp_path / "my_plugin"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helpers.py").write_text("def scale(x):\n    return x\n")
    learner = package / "learner.py"
    learner.write_text("from my_plugin.helpers import scale\n\nclass Learner:\n    rate = 1\n")
    (package / "unused.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    names = ("my_plugin", "my_plugin.helpers", "my_plugin.learner", "my_plugin.unused")
    request.addfinalizer(lambda: [sys.modules.pop(name, None) for name in names])
    module = importlib.import_module("my_plugin.learner")
    importlib.import_module("my_plugin.unused")

    def fit(lines: list[str]):
        c = Counter()
        return _cache(tmp_path, lines).fit("value", "k", c, c.fit, seed=0, code=(module.Learner,))

    made = fit([])
    # the class, its helper, and Counter's module (the tests import no helper of theirs)
    assert set(made.code) == {"my_plugin.learner", "my_plugin.helpers", "test_stages"}
    done = json.loads((Path(made.path) / "done.json").read_text())
    assert done["code"] == made.code
    same: list[str] = []
    assert fit(same).reused and not any("changed" in m for m in same)
    for path, text in ((learner, "rate = 1"), (package / "helpers.py", "return x")):
        path.write_text(path.read_text().replace(text, text + "  # a fix"))
        after: list[str] = []
        record = fit(after)
        assert record.reused and record.code == made.code  # the code that made it
        (note,) = [m for m in after if "changed" in m]
        assert path.stem in note and "test_stages" not in note and made.path in note
        path.write_text(path.read_text().replace("  # a fix", ""))
    # a module the stage was not made with (recorded before helpers were) is no change
    done["code"].pop("my_plugin.helpers")
    (Path(made.path) / "done.json").write_text(json.dumps(done))
    quiet: list[str] = []
    assert fit(quiet).reused and not any("changed" in m for m in quiet)


def test_a_stage_made_from_inputs_made_again_since_is_stale_and_retrains(tmp_path):
    """done.json records a digest of the inputs' artifacts: after the upstream folder is
    deleted and trained again, the same key's downstream folder is set aside and retrains; an
    upstream trained again to the same weights (the same seed) keeps it."""
    import shutil

    lines: list[str] = []

    def pipeline(value_seed: int) -> tuple[Counter, Counter, StageCache]:
        cache, value, policy = _cache(tmp_path, lines), Counter(), Counter()
        cache.fit("value", "v", value, value.fit, seed=value_seed)
        cache.fit("policy", "p", policy, policy.fit, seed=3, inputs=("value", "world_model"))
        return value, policy, cache

    _, first, cache = pipeline(value_seed=1)
    record = cache.records["policy"]
    assert first.fits == 1 and set(record.inputs) == {"value"}  # no world model in this run
    _, again, _ = pipeline(value_seed=1)
    assert again.fits == 0 and torch.equal(again.w, first.w)

    shutil.rmtree(tmp_path / "out" / "cache" / "value" / "v")  # as the code-change note advises
    _, same, _ = pipeline(value_seed=1)  # trained again to the same weights: still the inputs
    assert same.fits == 0 and not any("stale" in m for m in lines)
    shutil.rmtree(tmp_path / "out" / "cache" / "value" / "v")
    _, retrained, _ = pipeline(value_seed=2)  # other weights (new code, say) under the same key
    folder = Path(record.path)
    assert retrained.fits == 1, lines
    assert any(f"[policy] {folder} was made from another value than this run's" in m for m in lines)
    assert (folder / "weights.pt.stale").exists() and (folder / "done.json.stale").exists()
    assert not (folder / "weights.pt.stale.corrupt").exists()
    _, reused, _ = pipeline(value_seed=2)
    assert reused.fits == 0 and torch.equal(reused.w, retrained.w)
    # an augmentation made again has the same segments but a report of other timings
    report = {"segments.npz": "a" * 64}
    assert _digest({**report, "report.json": "1" * 64}) == _digest({**report, "report.json": "2"})
    assert _digest({**report, "report.json": "1"}) != _digest({"segments.npz": "b" * 64})

    # a folder from before inputs were recorded is reused as it is
    done = folder / "done.json"
    done.write_text(json.dumps({k: v for k, v in json.loads(done.read_text()).items()
                                if k != "inputs"}))  # fmt: skip
    shutil.rmtree(tmp_path / "out" / "cache" / "value" / "v")
    _, old, _ = pipeline(value_seed=1)
    assert old.fits == 0


def test_a_key_with_the_same_content_reuses_the_other_keys_folder(tmp_path):
    lines: list[str] = []
    first = Counter()
    made = _cache(tmp_path, lines).fit(
        "policy", "k1", first, first.fit, seed=7, content=lambda: "c1"
    )
    second = Counter()
    shared = _cache(tmp_path, lines).fit(
        "policy", "k2", second, second.fit, seed=8, content=lambda: "c1"
    )
    assert shared.reused and second.fits == 0 and torch.equal(second.w, first.w)
    assert shared.key == "k1" and shared.path == made.path
    assert any("same training data and effective config" in m for m in lines)
    other = Counter()  # other content: its own folder, and its own seed
    own = _cache(tmp_path, lines).fit(
        "policy", "k3", other, other.fit, seed=8, content=lambda: "c2"
    )
    assert not own.reused and other.fits == 1 and not torch.equal(other.w, first.w)
    # a content record that points nowhere (or is damaged) trains under the run's own key
    (tmp_path / "out" / "cache" / "by_content" / "policy" / "c3.json").write_text('{"key": "../x"}')
    fresh = Counter()
    rec = _cache(tmp_path, lines).fit(
        "policy", "k4", fresh, fresh.fit, seed=7, content=lambda: "c3"
    )
    assert not rec.reused and rec.key == "k4" and fresh.fits == 1


def test_set_aside_never_overwrites_an_earlier_copy(tmp_path):
    path = tmp_path / "weights.pt"
    for generation in (b"first", b"second", b"third"):
        path.write_bytes(generation)
        set_aside(path, ".replaced")
    assert not path.exists()
    assert (tmp_path / "weights.pt.replaced").read_bytes() == b"first"  # the original
    assert (tmp_path / "weights.pt.replaced.2").read_bytes() == b"second"
    assert (tmp_path / "weights.pt.replaced.3").read_bytes() == b"third"
    assert is_set_aside("weights.pt.replaced.3") and is_set_aside("done.json.stale")
    assert not is_set_aside("weights.pt") and not is_set_aside("replaced.pt")
    with pytest.raises(ValueError, match="'.old' is not .corrupt, .stale or .replaced"):
        set_aside(tmp_path / "weights.pt.replaced", ".old")


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_corrupted_artifact_is_set_aside_and_its_stage_retrains(tmp_path, damage):
    lines: list[str] = []
    first = Counter()
    rec = _cache(tmp_path, lines).fit("policy", "k", first, first.fit, seed=0)
    weights = Path(rec.path) / "weights.pt"
    data = weights.read_bytes()
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 1]) if damage == "flip" else data[:40])
    second = Counter()
    again = _cache(tmp_path, lines).fit("policy", "k", second, second.fit, seed=0)
    assert not again.reused and second.fits == 1
    assert any("unusable" in m and "retraining" in m for m in lines), lines
    assert (Path(rec.path) / "weights.pt.corrupt").read_bytes() != data  # kept, not deleted
    assert (Path(rec.path) / ".lock").exists()  # the lock stays where other runs look for it
    assert torch.equal(second.w, first.w)


def test_an_unreadable_artifact_without_checksums_retrains(tmp_path):
    """done.json from before checksums: a load failure alone sends the stage back to training."""
    lines: list[str] = []
    first = Counter()
    rec = _cache(tmp_path, lines).fit("value", "k", first, first.fit, seed=0)
    done = Path(rec.path) / "done.json"
    info = json.loads(done.read_text())
    info.pop("artifacts")
    done.write_text(json.dumps(info))
    (Path(rec.path) / "weights.pt").write_bytes(b"not a checkpoint")
    second = Counter()
    assert not _cache(tmp_path, lines).fit("value", "k", second, second.fit, seed=0).reused
    assert second.fits == 1 and any("cannot be read" in m for m in lines)


class Stepper:
    """A component trained for 4 steps of 10 (fake) seconds, checkpointed after each step;
    ``crash_at`` kills the process (raises) after that step's checkpoint."""

    def __init__(self, clock: list[float], crash_at: int | None = None):
        self.clock, self.crash_at, self.w = clock, crash_at, torch.zeros(1)

    def fit(self, folder: Path, log) -> dict:
        ckpt = Checkpointer(folder, every=1, name="policy_train_state")
        holder = torch.nn.Linear(1, 1)
        for step in range(ckpt.restore({"w": holder}), 4):
            self.clock[0] += 10.0
            ckpt.maybe_save(step + 1, {"w": holder})
            if step + 1 == self.crash_at:
                raise RuntimeError("killed")
        return {}

    def save(self, path: Path) -> None:
        atomic_save({"w": self.w}, path)

    def load(self, path: Path) -> None:
        self.w = safe_load(path)["w"]


def test_a_resumed_stage_and_run_count_the_time_of_the_killed_process(tmp_path, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    run_dir, lines = tmp_path / "run", []

    def cache(run: Path | None = run_dir) -> StageCache:
        return StageCache(tmp_path / "out", lines.append, progress_seconds=None, run_dir=run)

    killed = Stepper(clock, crash_at=2)
    with pytest.raises(RuntimeError, match="killed"):  # 2 of 4 steps, checkpointed: 20 s
        cache().fit("policy", "k", killed, killed.fit, seed=0)
    clock[0] += 5.0  # time lost after the checkpoint is not counted
    t_start, second = clock[0], cache()
    stepper = Stepper(clock)
    rec = second.fit("policy", "k", stepper, stepper.fit, seed=0)
    assert not rec.reused and rec.resumed_seconds == 20.0 and rec.seconds == 40.0
    assert rec.run == str(run_dir.resolve())
    done = json.loads((Path(rec.path) / "done.json").read_text())
    assert done["seconds"] == 40.0 and done["resumed_seconds"] == 20.0
    assert set(done["artifacts"]) == {"weights.pt"}  # the resume checkpoint is scratch,
    assert not list(Path(rec.path).glob("*train_state.pt"))  # deleted once the stage is done
    assert second.earlier_seconds() == 20.0
    assert wall_seconds(t_start, second, replay=False) == 40.0  # its own 20 s + the killed 20 s

    # killed after the stage was done: the same run reusing it counts it, another run does not
    for run, earlier in ((run_dir, 40.0), (tmp_path / "other", 0.0)):
        again = cache(run)
        assert again.fit("policy", "k", stepper, stepper.fit, seed=0).reused
        assert again.earlier_seconds() == earlier
        assert wall_seconds(clock[0] - 1.0, again, replay=True) == 1.0  # a replay: its own time


def test_a_second_run_waits_for_the_stage_then_reuses_it(tmp_path):
    lines: list[str] = []
    started, calls = threading.Event(), []

    def slow_train(folder: Path) -> dict:
        calls.append(1)
        started.set()
        time.sleep(0.5)
        (folder / "artifact.txt").write_text("made once")
        return {}

    loaded = []
    cache_a, cache_b = _cache(tmp_path, lines), _cache(tmp_path, lines)
    a = threading.Thread(target=cache_a.run, args=("augment", "k", slow_train, loaded.append))
    a.start()
    started.wait(5)
    rec_b = cache_b.run("augment", "k", slow_train, loaded.append)
    a.join()
    assert len(calls) == 1 and rec_b.reused and len(loaded) == 1
    assert any("another run is making" in m for m in lines)


def test_curve_logger_writes_csv_and_progress_lines(tmp_path):
    lines: list[str] = []
    log = CurveLogger("policy", tmp_path, None, echo=lines.append, progress_seconds=0.0)
    log(10, {"loss": 0.25, "q": 3.0})
    log(20, {"loss": 0.125})
    rows = (tmp_path / "log.csv").read_text().splitlines()
    assert rows[0] == "step,key,value,time" and len(rows) == 4
    assert lines[0].startswith("[policy] step 10: loss=0.25 q=3")
    quiet: list[str] = []
    CurveLogger("value", tmp_path, None, echo=quiet.append, progress_seconds=3600)(1, {"x": 1})
    assert quiet == []
