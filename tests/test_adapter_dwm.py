"""Adapters (issue 24): DWM-MPC adapts a trained actor's weights through the world model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from tiny import TINY_IPD

from ipd_plugins.adapters.dwm import DWMConfig
from ipd_plugins.adapters.dwm_impl import (
    anchor_penalty,
    clip_per_env,
    per_env_norm,
    rollout_objective,
)
from ipd_plugins.commands import main
from ipd_plugins.data.toy import ToyReachValue, register_toy_reach
from ipd_plugins.evaluate import CallableActor, evaluate
from registry import (
    AdaptableActor,
    AdaptationContext,
    Adapter,
    BuildContext,
    DifferentiableWorldModel,
    WorldModelSample,
    get_registry,
)

REG = get_registry()
CTX1 = BuildContext(obs_dim=1, act_dim=1, act_low=(-1.0,), act_high=(1.0,))
CTX3 = BuildContext(obs_dim=3, act_dim=2, act_low=(-1.0, -2.0), act_high=(1.0, 2.0))


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class ToyReachModel:
    """ToyReach's true dynamics and reward (x' = clip(x + 0.3 a), r = -|x'|) as a
    differentiable world model: a known model, so that only the adaptation is tested."""

    noise_dim = 1

    def rsample_step(self, obs, act, noise):
        nxt = (obs + 0.3 * act).clamp(-5, 5)
        return WorldModelSample(nxt, -nxt[:, 0].abs(), torch.zeros(len(obs), dtype=torch.bool))

    def step(self, obs, act, generator=None):
        raise NotImplementedError

    def fit(self, dataset, work_dir=None, log=None):
        return {}

    def save(self, path):
        pass

    def load(self, path):
        pass


def _poor_qop(ctx=CTX1, push=0.5):
    """pi_QOP of a small `qov` whose action is the constant tanh(push), whatever the state."""
    value = REG.create("value", "qov", {"hidden": 8, "n_layers": 1, "dropout": 0.0}, ctx)
    with torch.no_grad():
        value.nets.actor[-1].weight.zero_()
        value.nets.actor[-1].bias.fill_(push)
    return value


def _dwm(ctx=CTX1, **options):
    return REG.create("adapter", "dwm", options, ctx)


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- the registry and the protocol ---------------------------------------------------------------
def test_hook_ipd_register_adapter():
    assert {"none", "dwm"} <= set(REG.names("adapter"))
    assert isinstance(REG.create("adapter", "none"), Adapter)
    assert isinstance(REG.create("adapter", "dwm"), Adapter)
    actor = CallableActor(lambda obs: obs)
    assert REG.create("adapter", "none").wrap(actor, AdaptationContext(None, None)) is actor
    result = CliRunner().invoke(main, ["plugins"])
    assert "adapter" in result.output and "dwm" in result.output


def test_dwm_options_are_checked_with_sentences():
    for bad, match in [
        ({"horizon": 0}, "horizon must be >= 1"),
        ({"lr": 0.0}, "lr .* must be > 0"),
        ({"params": "body"}, "params must be one of"),
        ({"gamma": 1.5}, "gamma must be in"),
        ({"grad_clip": -1.0}, "grad_clip must be >= 0"),
    ]:
        with pytest.raises(ValueError, match=match):
            DWMConfig.from_dict(bad)
    result = CliRunner().invoke(main, ["plugins", "adapter", "dwm"])
    assert result.exit_code == 0 and "--set adapter.OPTION=VALUE" in result.output
    assert "particles" in result.output and "skip_worse" in result.output


def test_actors_that_cannot_adapt_fail_with_a_sentence():
    models = AdaptationContext(ToyReachModel(), ToyReachValue().q)
    with pytest.raises(ValueError, match="does not implement registry.protocols.AdaptableActor"):
        _dwm().wrap(CallableActor(lambda obs: obs), models)
    with pytest.raises(ValueError, match="differentiable world model"):
        _dwm().wrap(_poor_qop().actor(), AdaptationContext(None, ToyReachValue().q))
    dt = REG.create("policy", "dt", {"n_layer": 1, "n_embd": 16, "n_head": 2, "context": 3}, CTX1)
    with pytest.raises(ValueError, match="return-to-go"):
        _dwm().wrap(dt.actor(None), models)


# -- the maths -----------------------------------------------------------------------------------
def test_rollout_objective_by_hand():
    """s' = s + a, r(s, a) = s + a, Q(s, a) = 10 s, a = 0.5, gamma 0.5, H = 2, from s = 1:
    r_0 = 1.5, r_1 = 2, Q(s_2) = 20: J = 1.5 + 0.5 * 2 + 0.25 * 20 = 7.5."""

    def policy(s, memory):
        return torch.full_like(s, 0.5), memory

    def step(obs, act, noise):
        nxt = obs + act
        return WorldModelSample(nxt, nxt[:, 0], nxt[:, 0] >= 1.5)

    def q(obs, act):
        return 10 * obs[:, 0]

    obs, noise = torch.tensor([[1.0]]), torch.zeros(2, 1, 3, 1)
    assert rollout_objective(obs, noise, policy, step, q, 0.5).tolist() == [7.5]
    # terminal at s_1 = 1.5: later rewards and the terminal Q are cut
    assert rollout_objective(obs, noise, policy, step, q, 0.5, terminations=True).tolist() == [1.5]


def test_anchor_and_per_env_clipping_by_hand():
    params = {"w": torch.tensor([[1.0, 2.0], [0.0, 0.0]]), "b": torch.tensor([[3.0], [0.0]])}
    anchor = {"w": torch.tensor([1.0, 0.0]), "b": torch.tensor([0.0])}
    assert anchor_penalty(params, anchor).tolist() == [4.0 + 9.0, 1.0]
    grads = [torch.tensor([[3.0, 0.0], [0.3, 0.0]]), torch.tensor([[4.0], [0.4]])]
    assert per_env_norm(grads).tolist() == pytest.approx([5.0, 0.5])
    clipped = clip_per_env(grads, 1.0)
    assert per_env_norm(clipped).tolist() == pytest.approx([1.0, 0.5], abs=1e-5)
    assert torch.allclose(clipped[0][0], torch.tensor([0.6, 0.0]), atol=1e-5)


def test_objective_gradient_matches_finite_differences():
    """d J / d psi by autograd through an H = 2 rollout of the real `pe` (reparameterised member
    + Gaussian sample) and pi_QOP's network equals central differences (float64)."""
    torch.manual_seed(0)
    wm = REG.create("world_model", "pe", {"hidden": 8, "n_hidden": 1}, CTX3)
    wm.modules.double()
    value = REG.create("value", "qov", {"hidden": 8, "n_layers": 1, "dropout": 0.0}, CTX3)
    value.nets.double()

    def q(obs, act):  # a smooth terminal value
        return -(obs.square().sum(1) + 0.5 * (act - 0.3).square().sum(1))

    adapter = _dwm(CTX3, horizon=2, particles=3, gamma=0.9)
    actor = adapter.wrap(value.actor(), AdaptationContext(wm, q, 0.99))
    obs = torch.randn(2, 3, dtype=torch.float64)
    actor.reset(obs)
    noise = torch.randn(2, 2, 3, wm.noise_dim, dtype=torch.float64)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in actor.params.items()}
    J = actor.objective(obs, noise, params)
    grads = dict(zip(params, torch.autograd.grad(J.sum(), list(params.values())), strict=True))
    eps, checked = 1e-6, 0
    gen = torch.Generator().manual_seed(1)
    for name, p in params.items():
        for _ in range(3):
            b = int(torch.randint(2, (1,), generator=gen))
            i = int(torch.randint(p[b].numel(), (1,), generator=gen))
            with torch.no_grad():
                plus = {k: v.clone() for k, v in params.items()}
                minus = {k: v.clone() for k, v in params.items()}
                plus[name][b].view(-1)[i] += eps
                minus[name][b].view(-1)[i] -= eps
                fd = (actor.objective(obs, noise, plus) - actor.objective(obs, noise, minus)) / (
                    2 * eps
                )
            assert fd[1 - b].abs() < 1e-7, "env b's weights moved env 1-b's objective"
            assert float(grads[name][b].reshape(-1)[i]) == pytest.approx(
                float(fd[b]), rel=1e-5, abs=1e-8
            )
            checked += 1
    assert checked == 3 * len(params)


# -- acting --------------------------------------------------------------------------------------
def test_adaptation_raises_the_return_on_a_known_task():
    """ToyReach (move x to 0) with its true model and Q: a pi_QOP that always pushes right
    scores about -25; adapted through the model while it acts it comes near the optimum."""
    env = register_toy_reach()
    value = _poor_qop()
    plain = evaluate(value.actor(), env, n_episodes=4, seed=0)
    models = AdaptationContext(ToyReachModel(), ToyReachValue().q, 0.99)
    for which in ("all", "head"):
        actor = _dwm(particles=4, horizon=3, lr=0.05, params=which).wrap(value.actor(), models)
        adapted = evaluate(actor, env, n_episodes=4, seed=0)
        assert adapted.mean_return > plain.mean_return + 15, (which, adapted, plain)
        assert adapted.mean_return > -4.0  # optimal: about -1.2
        assert actor.report()["adapt_steps"] == 20  # one SGD step per env step


def test_reset_restores_the_pretrained_weights_and_models_stay_unchanged():
    torch.manual_seed(0)
    wm = REG.create("world_model", "pe", {"hidden": 16, "n_hidden": 1}, CTX3)
    value = REG.create("value", "qov", {"hidden": 16, "n_layers": 1}, CTX3)
    actor_net = value.nets.actor
    before = {"wm": _state(wm.modules), "value": _state(value.nets)}
    models = AdaptationContext(wm, value.q, value.gamma)
    actor = _dwm(CTX3, particles=5, lr=1e-2, inner_steps=2, skip_worse=True).wrap(
        value.actor(), models
    )
    pretrained = {k: v.detach().clone() for k, v in actor_net.named_parameters()}
    obs = torch.randn(3, 3)
    for _episode in range(2):
        actor.reset(obs)
        for k, v in actor.params.items():  # every env starts from the pretrained weights exactly
            assert all(torch.equal(v[b], pretrained[k]) for b in range(3)), k
        for _ in range(4):
            obs = obs + 0.1 * actor.act(obs).sum(1, keepdim=True)
        moved = [
            not torch.equal(v[b], pretrained[k]) for k, v in actor.params.items() for b in range(3)
        ]
        assert any(moved), "no weight was adapted"

    # the noise comes from the seeds: the same seeds act the same, another seed differently
    def actions(seed: int, run_seed: int = 0) -> torch.Tensor:
        models = AdaptationContext(wm, value.q, value.gamma, run_seed)
        adapted = _dwm(CTX3, particles=5, lr=1e-2, seed=seed).wrap(value.actor(), models)
        adapted.reset(obs)
        return torch.stack([adapted.act(obs) for _ in range(3)])

    assert torch.equal(actions(0), actions(0))
    assert not torch.equal(actions(0), actions(1)) and not torch.equal(actions(0), actions(0, 1))
    # the world model, Q, V and the actor's own weights are unchanged, and got no gradient
    assert _same(_state(wm.modules), before["wm"]) and _same(_state(value.nets), before["value"])
    assert all(p.grad is None for p in [*wm.modules.parameters(), *value.nets.parameters()])


def test_pe_rsample_step_is_steps_sample_with_gradients():
    torch.manual_seed(0)
    obs, act = torch.randn(6, 3), torch.rand(6, 2)
    wm = REG.create("world_model", "pe", {"hidden": 16, "n_hidden": 1}, CTX3)
    assert isinstance(wm, DifferentiableWorldModel) and wm.noise_dim == 4
    member = wm.step(obs, act)
    noise = torch.randn(6, 4)
    noise[:, 1:] = 0.0  # no Gaussian draw: each row is exactly one member's mean
    obs_g, act_g = obs.clone().requires_grad_(True), act.clone().requires_grad_(True)
    out = wm.rsample_step(obs_g, act_g, noise)
    k = (torch.special.ndtr(noise[:, 0]) * 3).long()  # the member each row drew
    assert torch.allclose(out.next_obs.detach(), member.member_mean[k, torch.arange(6)], atol=1e-5)
    assert len(set(k.tolist())) > 1  # rows of several members, grouped and gathered back
    assert torch.allclose(out.reward.detach(), member.reward, atol=1e-6)
    (out.next_obs.sum() + out.reward.sum()).backward()
    assert obs_g.grad.abs().sum() > 0 and act_g.grad.abs().sum() > 0
    mean = REG.create(
        "world_model", "pe", {"hidden": 16, "n_hidden": 1, "sample": "ensemble_mean"}, CTX3
    )
    assert torch.allclose(
        mean.rsample_step(obs, act, noise).next_obs, mean.step(obs, act).next_obs, atol=1e-6
    )
    with pytest.raises(ValueError, match="noise must be"):
        wm.rsample_step(obs, act, torch.zeros(6, 3))


def test_ipd_dt_actor_acts_the_same_with_its_pretrained_weights_and_imagines():
    """`ipd-dt`'s actor with its own weights passed per env acts as `act`; its first imagined
    step at the real state is the real action; imagined windows grow like real ones."""
    torch.manual_seed(0)
    cfg = {"n_layer": 1, "n_embd": 16, "n_head": 2, "context": 4, "dropout": 0.0}
    policy = REG.create("policy", "ipd-dt", cfg, CTX3)
    value = ToyReachValue()
    a, b = policy.actor(value), policy.actor(value)
    assert isinstance(a, AdaptableActor)
    params = a.adapt_parameters("all")
    assert set(a.adapt_parameters("head")) == {"model.head.weight", "model.head.bias"}
    obs = torch.randn(2, 3)
    a.reset(obs), b.reset(obs)
    per_env = {k: v.detach()[None].expand(2, *v.shape) for k, v in params.items()}
    for _ in range(6):  # past the context: the window rolls
        memory = b.imagine_start(3)
        imagined, memory = b.differentiable_act(obs[:, None].expand(2, 3, 3), per_env, memory)
        real = a.act(obs)
        assert torch.allclose(b.act_with(obs, per_env), real, atol=1e-5)
        assert torch.allclose(imagined, real[:, None].expand(2, 3, 2), atol=1e-5)
        assert memory["t"].tolist() == [[int(b.t[0])] * 3] * 2
        obs = obs + 0.1
    # a short imagined window: the last 2 steps
    assert b.imagine_start(5, context=2)["obs"].shape == (2, 5, 2, 3)


def test_d3rlpy_actor_is_adaptable_and_its_critic_differentiable(toy_dataset):
    from ipd_plugins.baselines import D3rlpyBaseline, resolve_baseline

    ctx = BuildContext(obs_dim=3, act_dim=1, act_low=(-2.0,), act_high=(2.0,), env_id="Pendulum-v1")
    config = resolve_baseline("rebrac", "quick", overrides={"hidden": 16})
    baseline = D3rlpyBaseline(config, ctx, toy_dataset)
    actor = baseline.actor()
    assert isinstance(actor, AdaptableActor)
    assert set(actor.adapt_parameters("head")) == {"_fc.weight", "_fc.bias"}
    params = {
        k: v.detach()[None].expand(4, *v.shape) for k, v in actor.adapt_parameters("all").items()
    }
    obs = torch.as_tensor(toy_dataset.observations[:4])
    assert torch.allclose(actor.act_with(obs, params), actor.act(obs), atol=1e-5)
    q = baseline.q_function()
    act = actor.act(obs).requires_grad_(True)
    q(obs, act).sum().backward()
    assert act.grad is not None and act.grad.abs().sum() > 0
    assert baseline.gamma == 0.99
    bc = D3rlpyBaseline(resolve_baseline("bc", "quick", overrides={"hidden": 16}), ctx, toy_dataset)
    assert bc.q_function() is None and isinstance(bc.actor(), AdaptableActor)


# -- the commands --------------------------------------------------------------------------------
def test_adapter_none_keeps_run_names_and_stage_keys():
    from ipd_plugins.pipeline import stage_keys
    from ipd_plugins.run_config import resolve_config

    plain, adapted = resolve_config(), resolve_config(components={"adapter": "dwm"})
    assert "adapter" not in plain.identity_dict()["components"]
    assert "adapter" not in plain.hashed_sections()
    assert plain.run_name.split("__")[1] == "qov-pe-gjs-mpc-ipd-dt"
    assert adapted.run_name.split("__")[1] == "qov-pe-gjs-mpc-ipd-dt-dwm"
    assert plain.run_name.split("__")[2] != adapted.run_name.split("__")[2]
    assert stage_keys(plain, "h", "Pendulum-v1") == stage_keys(adapted, "h", "Pendulum-v1")
    # a config recorded before adapters existed replays with none
    old = {k: v for k, v in plain.to_dict().items() if k != "adapter"}
    old["components"] = {k: v for k, v in old["components"].items() if k != "adapter"}
    assert resolve_config(file=old).components["adapter"] == "none"


DWM_TINY = ["--set", "adapter.particles=4", "--set", "adapter.horizon=2"]


def test_ipd_eval_adapts_a_finished_run(store, tmp_path):
    out = tmp_path / "runs"
    run_args = ["run", "--dataset", "pendulum-medium-replay", "--out", str(out), "--quiet"]
    for item in TINY_IPD:
        run_args += ["--set", item]
    result = CliRunner().invoke(main, run_args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (run,) = [p for p in out.iterdir() if p.name != "cache"]
    run_dir = run / "seed_0"
    plain = json.loads((run_dir / "eval.json").read_text())
    args = ["eval", str(run_dir), "--adapter", "dwm", "--episodes", "1", *DWM_TINY]
    result = CliRunner().invoke(main, [*args, "--set", "adapter.lr=1e-4"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (written,) = run_dir.glob("eval_dwm_*.json")
    adapted = json.loads(written.read_text())
    assert set(adapted) == {"policy", "qop"}
    for scores in adapted.values():
        assert scores["n_episodes"] == 1 and scores["adaptation"]["adapt_steps"] == 200
    assert json.loads((run_dir / "eval.json").read_text()) == plain  # the run's own scores stay
    # --actor qop: pi_QOP alone, in a file of its own
    result = CliRunner().invoke(main, [*args, "--actor", "qop"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (only_qop,) = set(run_dir.glob("eval_dwm_*.json")) - {written}
    assert set(json.loads(only_qop.read_text())) == {"qop"}
    # `ipd run --adapter dwm`: every stage reused, a run folder of its own
    result = CliRunner().invoke(main, [*run_args, "--adapter", "dwm", *DWM_TINY])
    assert result.exit_code == 0, result.output
    (run_dwm,) = [p for p in out.iterdir() if "-ipd-dt-dwm__" in p.name]
    results = json.loads((run_dwm / "seed_0" / "results.json").read_text())
    assert all(results["stage_reused"].values()) and results["components"]["adapter"] == "dwm"
    assert {"adapter.horizon=2", "adapter.particles=4"} <= set(results["options"])
    assert results["scores"]["qop"]["adaptation"]["adapt_steps"] == 200
    bad = CliRunner().invoke(main, ["eval", str(run_dir), "--set", "value.tau=0.5"])
    assert bad.exit_code == 2 and "unknown section 'value'" in bad.output
    bad = CliRunner().invoke(
        main, ["eval", str(run_dir), "--adapter", "dwm", "--set", "adapter.lr=-1"]
    )
    assert bad.exit_code == 2 and "lr" in bad.output


def test_ipd_baseline_rebrac_with_dwm_and_its_eval(store, tmp_path):
    out = tmp_path / "runs"
    tiny = [
        "baseline.n_steps=20",
        "baseline.hidden=16",
        "baseline.batch_size=64",
        "world_model.n_steps=40",
        "world_model.hidden=16",
        "world_model.n_hidden=1",
        "world_model.eval_every=20",
        "run.eval_episodes=1",
        "run.threads=1",
    ]
    args = ["baseline", "rebrac", "--dataset", "pendulum-medium-replay", "--out", str(out)]
    args += ["--adapter", "dwm", *DWM_TINY]
    for item in tiny:
        args += ["--set", item]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (run,) = [p for p in out.iterdir() if "__baseline-rebrac+dwm__" in p.name]
    results = json.loads((run / "seed_0" / "results.json").read_text())
    assert results["label"] == "rebrac+dwm" and results["components"]["adapter"] == "dwm"
    assert results["scores"]["policy"]["adaptation"]["adapt_steps"] == 200
    stages = json.loads((run / "seed_0" / "stages.json").read_text())
    assert set(stages) == {"train", "world_model"}
    # re-evaluated with another step size: nothing retrains, the world model is reused
    args = ["eval", str(run / "seed_0"), "--set", "adapter.lr=1e-3", "--episodes", "1"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "[world_model] reusing" in result.output
    assert len(list((run / "seed_0").glob("eval_dwm_*.json"))) == 1
    assert np.isfinite(json.loads(result.output.strip().splitlines()[-2])["policy"])


def test_readme_documents_adapters():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "--adapter dwm" in readme and "ipd eval" in readme
