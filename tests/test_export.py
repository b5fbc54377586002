"""`ipd export`: TorchScript and ONNX graphs that act as the trained actors, and the onnxruntime
example that keeps the context window itself (issue 25)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from tiny import TINY_IPD

from ipd_plugins.commands import main
from ipd_plugins.export import policy_graph, qop_graph, read_metadata, save_graph
from registry import manager
from registry.protocols import BuildContext

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "deploy_onnx.py"
TOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _ipd(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def _train(out: Path, dataset: str, *extra: str) -> Path:
    """A finished tiny `ipd run` (``extra`` options after, so overriding, TINY_IPD's)."""
    before = {p.name for p in out.iterdir()} if out.exists() else set()
    args = ["run", "--dataset", dataset, "--out", str(out), "--quiet"]
    for item in TINY_IPD:
        args += ["--set", item]
    _ipd(*args, *extra)
    (new,) = [p for p in out.iterdir() if p.name not in before | {"cache"}]
    return new / "seed_0"


@pytest.fixture(scope="module")
def runs(store, tmp_path_factory):
    """Tiny pendulum runs of ipd-dt and dt (the second reuses the first's stages)."""
    out = tmp_path_factory.mktemp("runs")
    return {"ipd-dt": _train(out, "pendulum-medium-replay"),
            "dt": _train(out, "pendulum-medium-replay", "--policy", "dt")}  # fmt: skip


def _export(run_dir: Path, fmt: str, out: Path, *extra: str) -> Path:
    _ipd("export", str(run_dir), "--format", fmt, "--out", str(out), *extra)
    return out


def _graphs(tmp_path: Path, module, inputs) -> list:
    """The module exported both ways: [(name, fn(**inputs) -> (B,A) numpy)]."""
    meta = {"inputs": list(inputs)}
    save_graph(module, inputs, "action", "torchscript", tmp_path / "g.pt", meta)
    save_graph(module, inputs, "action", "onnx", tmp_path / "g.onnx", meta)
    scripted = torch.jit.load(str(tmp_path / "g.pt"))
    session = ort.InferenceSession(str(tmp_path / "g.onnx"), providers=["CPUExecutionProvider"])

    def run_ts(**x):
        with torch.no_grad():
            return scripted(*(torch.as_tensor(v) for v in x.values())).numpy()

    kept = [i.name for i in session.get_inputs()]  # an unused input is left out of the file
    assert kept == read_metadata(tmp_path / "g.onnx")["inputs"]

    def run_onnx(**x):
        return session.run(None, {k: np.asarray(x[k]) for k in kept})[0]

    return [("torchscript", run_ts), ("onnx", run_onnx)]


# -- the window graph against the original, every window length ------------------------------
def _random_window(rng, B, K, n, O, A, policy):
    """n real steps, right-aligned after K - n padded ones (zeros, mask False)."""
    states = np.zeros((B, K, O), np.float32)
    actions = np.zeros((B, K, A), np.float32)
    timesteps = np.zeros((B, K), np.int64)
    mask = np.zeros((B, K), bool)
    states[:, K - n :] = rng.normal(size=(B, n, O)) * 2
    actions[:, K - n : K - 1] = rng.uniform(-1, 1, size=(B, n - 1, A))  # newest slot: zero
    start = rng.integers(0, 300, size=(B, 1))
    timesteps[:, K - n :] = start + np.arange(n)
    mask[:, K - n :] = True
    window = {"states": states, "actions": actions}
    if policy == "dt":
        rtg = np.zeros((B, K), np.float32)
        rtg[:, K - n :] = rng.normal(size=(B, n)) * 500
        window["returns_to_go"] = rtg
    window.update(timesteps=timesteps, mask=mask)
    return window


def _original(policy, value, window) -> np.ndarray:
    """What acting computes for a window: the PolicyNet on (V(s) or RTG - shift) / scale."""
    t = {k: torch.as_tensor(v) for k, v in window.items()}
    B, K, O = t["states"].shape
    if "returns_to_go" in t:
        raw = t["returns_to_go"]
    else:
        raw = value.v(t["states"].reshape(B * K, O)).reshape(B, K)
        raw = raw + policy.cfg.token_shift * policy.net.cond_scale  # acting asks for more
    net = policy.net.eval()
    cond = (raw - net.cond_shift) / net.cond_scale * t["mask"]
    with torch.no_grad():
        return net(t["states"], t["actions"], cond, t["mask"], t["timesteps"])[:, -1].numpy()


def _check_windows(tmp_path, policy, value, ctx, seed=0):
    """Exported == original within TOL on random windows of every length 1..K, and on the
    windows a SequenceActor builds while acting (its own actions, K + 2 steps)."""
    graph = policy_graph(policy, value)
    graphs = _graphs(tmp_path, graph.module, graph.inputs)
    K, O, A, B = policy.cfg.context, ctx.obs_dim, ctx.act_dim, 3
    rng = np.random.default_rng(seed)
    for n in range(1, K + 1):
        window = _random_window(rng, B, K, n, O, A, policy.cfg.name)
        want = _original(policy, value, window)
        for name, fn in graphs:
            np.testing.assert_allclose(fn(**window), want, atol=TOL, err_msg=f"{name}, n={n}")

    actor = policy.actor(value)  # the evaluator's actor: rolls its own window
    obs = torch.as_tensor(rng.normal(size=(B, O)), dtype=torch.float32)
    actor.reset(obs)
    for n in range(1, K + 3):
        action = actor.act(obs).numpy()
        window = {"states": actor.obs, "actions": actor.act_buf.clone()}
        window["actions"][:, -1] = 0.0  # the graph gets the newest action slot empty
        if policy.cfg.name == "dt":  # the raw return-to-go behind each token
            window["returns_to_go"] = actor.cond * policy.net.cond_scale + policy.net.cond_shift
        window.update(timesteps=actor.time, mask=actor.mask)
        window = {k: v.numpy() for k, v in window.items()}
        for name, fn in graphs:
            np.testing.assert_allclose(fn(**window), action, atol=TOL, err_msg=f"{name}, {n}")
        actor.observe(torch.as_tensor(rng.normal(size=B), dtype=torch.float32))
        obs = torch.as_tensor(rng.normal(size=(B, O)), dtype=torch.float32)


CTX = BuildContext(obs_dim=3, act_dim=2, act_low=(-1.0, -2.0), act_high=(1.0, 0.5), seed=0)


@pytest.mark.parametrize(
    "name, layout, position, extra",
    [("ipd-dt", "vsa", "timestep", {}), ("ipd-dt", "sa", "window", {}),
     ("ipd-dt", "s", "timestep", {}), ("ipd-dt", "vsa", "timestep", {"token_shift": 2.0}),
     ("dt", "vsa", "window", {})],
)  # fmt: skip
def test_window_graph_matches_the_policy_on_every_window_length(
    tmp_path, name, layout, position, extra
):
    torch.manual_seed(0)
    value = manager.create("value", "qov", {"hidden": 16}, CTX)
    net_cfg = {"context": 4, "n_layer": 2, "n_embd": 16, "n_head": 2, "max_timestep": 400}
    policy = manager.create(
        "policy", name, {**net_cfg, "token_layout": layout, "position": position, **extra}, CTX
    )
    with torch.no_grad():  # trained-looking statistics, so that the scalings are exercised
        policy.net.obs_norm.mean.uniform_(-1, 1)
        policy.net.obs_norm.std.uniform_(0.5, 2)
        policy.net.cond_shift.fill_(3.0)
        policy.net.cond_scale.fill_(7.0 if name == "ipd-dt" else 1000.0)
    _check_windows(tmp_path, policy, value, CTX)


def test_exported_run_matches_the_trained_policy(runs, tmp_path):
    from ipd_plugins.data.runs import load_trained

    for name, run_dir in runs.items():
        trained = load_trained(run_dir, echo=lambda m: None)
        value, policy = trained.components["value"], trained.components["policy"]
        assert policy.cfg.name == name
        _check_windows(tmp_path, policy, value, trained.ctx, seed=1)


# -- the onnxruntime example against `ipd eval` ----------------------------------------------
def _deploy(model: Path, episodes: int) -> dict:
    """examples/deploy_onnx.py in a fresh interpreter where importing torch fails."""
    code = (
        "import runpy, sys; sys.modules['torch'] = None; "
        f"sys.argv = ['deploy_onnx.py', {str(model)!r}, '--episodes', '{episodes}']; "
        f"runpy.run_path({str(EXAMPLE)!r}, run_name='__main__')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _eval_returns(run_dir: Path, episodes: int) -> dict:
    _ipd("eval", str(run_dir), "--episodes", str(episodes))
    return json.loads((run_dir / "eval.json").read_text())


@pytest.mark.parametrize("name", ["ipd-dt", "dt"])
def test_onnx_example_earns_the_return_of_ipd_eval(runs, tmp_path, name):
    model = _export(runs[name], "onnx", tmp_path / "policy.onnx")
    meta = read_metadata(model)
    assert meta["env_id"] == "Pendulum-v1" and meta["eval_seed"] == 100_000
    # a run on few episodes embeds window positions (policy.few_episodes): no timesteps input
    stages = json.loads((runs[name] / "stages.json").read_text())
    few = stages["policy"]["metrics"]["few_episodes_mode"] == 1.0
    assert meta["inputs"][-1] == "mask" and ("timesteps" in meta["inputs"]) is not few
    assert ("returns_to_go" in meta["inputs"]) == (name == "dt")
    deployed = _deploy(model, episodes=2)
    evaluated = _eval_returns(runs[name], episodes=2)["policy"]
    assert deployed["lengths"] == evaluated["lengths"]
    np.testing.assert_allclose(deployed["returns"], evaluated["returns"], rtol=1e-4)


def test_qop_exports_as_a_state_graph(runs, tmp_path):
    from ipd_plugins.data.runs import load_trained

    value = load_trained(runs["ipd-dt"], kinds=("value",), echo=lambda m: None).components["value"]
    obs = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)
    want = value.act(torch.as_tensor(obs), deterministic=True).numpy()
    for fmt in ("torchscript", "onnx"):
        path = _export(runs["ipd-dt"], fmt, tmp_path / f"qop.{fmt}", "--actor", "qop")
        meta = read_metadata(path)
        assert (meta["actor"], meta["graph"], meta["inputs"]) == ("qop", "state", ["obs"])
        if fmt == "onnx":
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            got = session.run(None, {"obs": obs})[0]
        else:
            got = torch.jit.load(str(path))(torch.as_tensor(obs)).detach().numpy()
        np.testing.assert_allclose(got, want, atol=TOL)
    graph = qop_graph(value, 3)  # the library call, as the command makes it
    assert list(graph.inputs) == ["obs"]
    deployed = _deploy(tmp_path / "qop.onnx", episodes=1)
    evaluated = json.loads((runs["ipd-dt"] / "eval.json").read_text())["qop"]
    np.testing.assert_allclose(deployed["returns"][0], evaluated["returns"][0], rtol=1e-4)


# -- errors ----------------------------------------------------------------------------------
def _error(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code != 0
    return result.output


def test_a_run_without_a_finished_policy_gets_a_clear_error(runs, tmp_path):
    unfinished = tmp_path / "unfinished" / "seed_0"
    shutil.copytree(runs["ipd-dt"], unfinished)
    (unfinished / "stages.json").unlink()  # what a run interrupted before distillation has
    out = _error("export", str(unfinished), "--format", "onnx", "--out", str(tmp_path / "p.onnx"))
    assert "Error:" in out and "has no finished policy to export" in out
    assert "ipd run --config" in out and "Traceback" not in out
    assert not (tmp_path / "p.onnx").exists()

    stages = json.loads((runs["ipd-dt"] / "stages.json").read_text())
    del stages["policy"]
    (unfinished / "stages.json").write_text(json.dumps(stages))
    out = _error("export", str(unfinished), "--format", "torchscript", "--out", "p.pt")
    assert "has no finished policy to export" in out and "no 'policy' stage" in out

    out = _error("export", str(tmp_path), "--format", "onnx", "--out", "p.onnx")
    assert "not an `ipd run` or `ipd baseline` seed folder" in out
    out = _error("export", str(runs["dt"]), "--format", "tflite", "--out", "p")
    assert "tflite" in out


# -- baselines: d3rlpy's save_policy -----------------------------------------------------------
def test_a_baseline_exports_through_d3rlpy(store, tmp_path):
    from ipd_plugins.baselines.run import load_trained_baseline

    out = tmp_path / "runs"
    _ipd("baseline", "bc", "--dataset", "pendulum-medium-replay", "--out", str(out),
         "--set", "baseline.n_steps=30", "--set", "run.eval_episodes=1",
         "--set", "run.threads=1")  # fmt: skip
    (run_dir,) = [p / "seed_0" for p in out.iterdir() if p.name != "cache"]
    model = _export(run_dir, "onnx", tmp_path / "bc.onnx")
    meta = read_metadata(model)
    assert (meta["actor"], meta["component"], meta["inputs"]) == ("baseline", "bc", ["input_0"])
    obs = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    want = load_trained_baseline(run_dir).baseline.algo.predict(obs)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"input_0": obs})[0], want, atol=TOL)
    out = _error("export", str(run_dir), "--format", "onnx", "--out", "q.onnx", "--actor", "qop")
    assert "baseline run" in out


# -- MuJoCo ---------------------------------------------------------------------------------
def test_hopper_policy_acts_in_mujoco_through_onnxruntime(tmp_path, monkeypatch):
    """A small hopper-medium (3k steps of the shipped behaviour policies), trained long enough
    that pi_QOP hops for hundreds of steps (all 1000 on this machine; the tiny policy ~60),
    where MuJoCo would amplify any difference between the exported graph and torch. Not the
    `default` profile's run: that takes ~30 CPU minutes."""
    pytest.importorskip("mujoco")
    from ipd_plugins.data.make import make_dataset

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    make_dataset("hopper-medium", steps=3_000, seed=0)
    longer = ["value.n_steps=1000", "policy.n_steps=600", "policy.context=10"]
    run_dir = _train(tmp_path / "runs", "hopper-medium", *(f"--set={s}" for s in longer))
    evaluated = json.loads((run_dir / "eval.json").read_text())  # `ipd run`'s evaluation
    for actor in ("policy", "qop"):
        model = _export(run_dir, "onnx", tmp_path / f"{actor}.onnx", "--actor", actor)
        assert read_metadata(model)["env_id"] == "Hopper-v5"
        deployed = _deploy(model, episodes=2)
        assert deployed["lengths"] == evaluated[actor]["lengths"], actor
        np.testing.assert_allclose(deployed["returns"], evaluated[actor]["returns"], rtol=1e-4)
