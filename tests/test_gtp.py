"""``gtp`` (Generative Trajectory Policies): the maths by hand, bimodal imitation, advantage
weights, persistence and resume, the CLI docs, and the pipeline with and without augmentation."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from tiny import TINY_IPD

from ipd_plugins.commands import main
from ipd_plugins.commands.eval import check_acting_options
from ipd_plugins.data.dataset import TrajectoryDataset
from ipd_plugins.policies.gtp import GtpConfig, SolutionMapNet
from ipd_plugins.policies.gtp_impl import (
    actor_losses,
    advantage_weights,
    curriculum_intervals,
    edm_loss_weight,
    edm_scalings,
    euler_actions,
    karras_grid,
    sample_actions,
    sample_times,
    sampling_times,
    solution_map,
)
from registry import Policy, get_registry, manager
from registry.protocols import Actor, BuildContext


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny nets: one thread is faster than two and suffers less from a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


CTX = BuildContext(obs_dim=1, act_dim=1, act_low=(-1.0,), act_high=(1.0,), seed=0)
TINY = {"hidden": 16, "n_layers": 2, "batch_size": 16, "n_steps": 20, "sample_steps": 2}


def make(ctx: BuildContext = CTX, **overrides):
    return manager.create("policy", "gtp", {**TINY, **overrides}, ctx)


def bimodal(n: int = 512, seed: int = 0) -> TrajectoryDataset:
    """One-step episodes: s ~ U(-1, 1), a = +0.8 or -0.8 at random whatever s, reward a."""
    rng = np.random.default_rng(seed)
    obs = rng.uniform(-1, 1, size=(n, 1)).astype(np.float32)
    act = np.where(rng.random(n) < 0.5, 0.8, -0.8).astype(np.float32)[:, None]
    arrays = {
        "observations": obs,
        "next_observations": obs.copy(),
        "actions": act,
        "rewards": act[:, 0].copy(),
        "terminations": np.ones(n, bool),
        "truncations": np.zeros(n, bool),
    }
    bound = np.array([1.0], np.float32)
    return TrajectoryDataset.from_arrays(
        arrays, np.ones(n, np.int64), action_low=-bound, action_high=bound
    )


class PositiveIsBetter:
    """A fake value learner: Q(s, a) = a, V(s) = 0, so A(s, a) = a favours the +0.8 mode."""

    gamma = 0.99

    def q(self, obs, act):
        return act[:, 0]

    def v(self, obs):
        return torch.zeros(obs.shape[0])


def act_on_grid(policy, n: int = 400) -> torch.Tensor:
    """(n,) actions of the policy's actor at n states spread over [-1, 1]."""
    actor = policy.actor(None)
    obs = torch.linspace(-1, 1, n)[:, None]
    actor.reset(obs)
    return actor.act(obs)[:, 0]


def near(a: torch.Tensor, mode: float, width: float = 0.25) -> float:
    return float(((a - mode).abs() < width).float().mean())


# -- the maths by hand ------------------------------------------------------------------------
def test_solution_map_boundaries_are_the_identity_and_the_network_output():
    """tau = t: Phi is a_t, and its slope in tau there is the instantaneous map's velocity
    (a_t - phi_inst) / t; tau = 0: Phi is the network's output phi(s, a_t, t, 0)."""
    torch.manual_seed(0)
    net = SolutionMapNet(3, 2, hidden=16, n_layers=2, sigma_data=0.5).double()
    obs, a_t = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    t = torch.tensor([0.01, 0.3, 1.0, 7.0, 80.0], dtype=torch.float64)
    zero = torch.zeros_like(t)

    def Phi(tau):
        return solution_map(net(obs, a_t, t, tau), a_t, t, tau)

    assert torch.equal(Phi(t), a_t)
    torch.testing.assert_close(Phi(zero), net(obs, a_t, t, zero), rtol=0, atol=0)
    h = 1e-6 * t
    slope = (Phi(t) - Phi(t - h)) / h.unsqueeze(-1)
    velocity = (a_t - net(obs, a_t, t, t)) / t.unsqueeze(-1)
    torch.testing.assert_close(slope, velocity, rtol=1e-4, atol=1e-6)


def test_actor_losses_match_a_hand_computation_and_only_the_student_learns():
    # phi(s, x, t, tau) = k x + tau: student k = 0.5, teacher k = 0.25
    k_student = torch.tensor(0.5, requires_grad=True)
    k_teacher = torch.tensor(0.25, requires_grad=True)

    def student(obs, x, t, tau):
        return k_student * x + tau.unsqueeze(-1)

    def teacher(obs, x, t, tau):
        return k_teacher * x + tau.unsqueeze(-1)

    obs = torch.zeros(2, 1)
    a, z = torch.tensor([[0.2], [-0.4]]), torch.tensor([[1.0], [0.5]])
    t, u, tau = torch.tensor([2.0, 1.0]), torch.tensor([1.0, 0.5]), torch.tensor([0.5, 0.0])
    w = torch.tensor([1.0, 3.0])
    loss, parts = actor_losses(student, teacher, obs, a, z, t, u, tau, w, lambda_flow=2.0)
    # a_t = a + t z = (2.2, 0.1); a~_u = a + u z = (1.2, -0.15)
    # student Phi: row 0 (tau/t = 1/4): 3/4 (0.5*2.2 + 0.5) + 1/4 * 2.2 = 1.75; row 1: 0.05
    # teacher Phi: row 0 (tau/u = 1/2): 1/2 (0.25*1.2 + 0.5) + 1/2 * 1.2 = 1.0; row 1: -0.0375
    cons = (1 * (1.75 - 1.0) ** 2 + 3 * (0.05 + 0.0375) ** 2) / 2
    # instantaneous map (tau = t): (0.5*2.2 + 2.0, 0.5*0.1 + 1.0) = (3.1, 1.05)
    flow = (1 * (0.2 - 3.1) ** 2 + 3 * (-0.4 - 1.05) ** 2) / 2
    assert float(parts["cons"]) == pytest.approx(cons, rel=1e-6)  # 0.292734375
    assert float(parts["flow"]) == pytest.approx(flow, rel=1e-6)  # 7.35875
    assert float(loss) == pytest.approx(cons + 2.0 * flow, rel=1e-6)
    loss.backward()
    assert k_student.grad is not None and k_student.grad != 0
    assert k_teacher.grad is None  # the teacher is a stop-gradient target
    # flow_weighting="edm": each row's flow error times 1 / c_out(t)^2, the consistency untouched
    lam = edm_loss_weight(t, 0.5)
    _, c_out, _ = edm_scalings(t, 0.5)
    torch.testing.assert_close(lam, 1 / c_out**2)
    assert float(lam[0]) == pytest.approx((4 + 0.25) / (2 * 0.5) ** 2)  # t = 2: 4.25
    _, weighted = actor_losses(student, teacher, obs, a, z, t, u, tau, w, 2.0, lam)
    flow_edm = (1 * 4.25 * (0.2 - 3.1) ** 2 + 3 * float(lam[1]) * (-0.4 - 1.05) ** 2) / 2
    assert float(weighted["flow"]) == pytest.approx(flow_edm, rel=1e-6)
    assert float(weighted["cons"]) == pytest.approx(cons, rel=1e-6)


def test_advantage_weights_by_hand():
    adv = torch.tensor([1.0, -1.0, 2.0, 0.0])
    std = math.sqrt(1.25)  # population std: mean 0.5, squared deviations sum to 5
    expected = [math.exp(1 / std), 1.0, math.exp(2 / std), 1.0]
    torch.testing.assert_close(advantage_weights(adv, 1.0), torch.tensor(expected))
    capped = advantage_weights(adv, 1.0, max_weight=3.0)
    torch.testing.assert_close(capped, torch.tensor([expected[0], 1.0, 3.0, 1.0]))
    assert torch.equal(advantage_weights(adv, 0.0), torch.ones(4))  # eta = 0: GTP-BC
    assert torch.equal(advantage_weights(-adv.abs(), 5.0), torch.ones(4))  # A <= 0: weight 1


def test_grids_curriculum_and_sampling_schedule():
    grid = karras_grid(10, 0.002, 80.0, 7.0)
    assert grid.shape == (11,) and float(grid[0]) == pytest.approx(0.002)
    assert float(grid[-1]) == 80.0 and bool((grid[1:] > grid[:-1]).all())
    # doubling from 10 every n_steps / 8 steps, capped at 1280
    steps = [0, 99, 100, 200, 600, 700, 799, 10**9]
    assert [curriculum_intervals(k, 800) for k in steps] == [10, 10, 20, 40, 640, 1280, 1280, 1280]
    assert curriculum_intervals(3, 4) == 80  # fewer steps than stages: doubles every step
    assert sampling_times(1, 0.002, 80.0, 7.0).tolist() == [80.0, 0.0]
    mid = ((80 ** (1 / 7) + 0.002 ** (1 / 7)) / 2) ** 7  # about 2.5
    torch.testing.assert_close(sampling_times(2, 0.002, 80.0, 7.0), torch.tensor([80.0, mid, 0]))
    five = sampling_times(5, 0.002, 80.0, 7.0)
    assert five.shape == (6,) and bool((five[1:] < five[:-1]).all()) and float(five[-1]) == 0


def test_sampled_times_are_adjacent_with_tau_from_zero_up_to_u():
    grid = karras_grid(6, 0.002, 80.0, 7.0)
    t, u, tau = sample_times(grid, 4000, torch.Generator().manual_seed(0))
    j = torch.searchsorted(grid, t)
    assert torch.equal(grid[j], t) and bool((j >= 1).all())
    assert torch.equal(u, grid[j - 1])  # the adjacent grid point below t
    assert bool((tau <= u).all()) and bool((tau >= 0).all())
    on_grid = (tau == 0) | torch.isin(tau, grid)
    assert bool(on_grid.all())
    assert 0 < float((tau == 0).float().mean()) < 1 and bool((tau == u).any())


def test_k_step_sampling_follows_the_schedule_and_keeps_an_exact_map_exact():
    """A point mass at c has the exact denoiser phi = c; every K lands on c."""
    calls = []

    def phi(obs, a, t, tau):
        calls.append((float(t[0]), float(tau[0])))
        return torch.full_like(a, 0.3)

    obs, noise = torch.zeros(4, 2), torch.randn(4, 1, generator=torch.Generator().manual_seed(0))
    for k in (1, 2, 5):
        calls.clear()
        times = sampling_times(k, 0.002, 80.0, 7.0)
        out = sample_actions(phi, obs, times, noise)
        torch.testing.assert_close(out, torch.full((4, 1), 0.3))
        assert calls == list(zip(times[:-1].tolist(), times[1:].tolist(), strict=True))
    wild = sample_actions(lambda o, a, t, tau: a * 0 + 7.0, obs, times, noise)
    assert bool((wild == 1.0).all())  # clipped into the unit box


def test_euler_sampling_of_the_exact_denoiser_follows_the_gaussian_flow():
    """For a ~ N(m, s^2) the exact denoiser is E[a | a_t] = m + s^2 / (s^2 + t^2) (a_t - m), and
    the probability-flow ODE from a_T = T z ends at m + (T z - m) s / sqrt(s^2 + T^2): many Euler
    steps reach it (error falling as 1/K), one step is the denoiser's single jump to about m."""
    m, s, T = 0.2, 0.3, 80.0

    def phi(obs, a, t, tau):
        r = (s * s / (s * s + t * t)).unsqueeze(-1)
        return m + r * (a - m)

    obs = torch.zeros(256, 1)
    z = torch.randn(256, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = m + (T * z - m) * s / math.sqrt(s * s + T * T)

    def error(k: int) -> float:
        a = euler_actions(phi, obs, sampling_times(k, 0.002, T, 7.0).double(), z, clip=10.0)
        return float((a - exact).abs().max())

    assert error(1600) < 3e-3 and 3.0 < error(400) / error(1600) < 5.0  # Euler: first order
    fine = euler_actions(phi, obs, sampling_times(400, 0.002, T, 7.0).double(), z, clip=10.0)
    one = euler_actions(phi, obs, sampling_times(1, 0.002, T, 7.0).double(), z, clip=10.0)
    torch.testing.assert_close(one, m + s * s / (s * s + T * T) * (T * z - m))
    assert float(one.std()) < 0.01 < 0.25 < float(fine.std())  # one jump collapses to the mean


# -- what the method is for ----------------------------------------------------------------
@pytest.fixture(scope="module")
def bimodal_bc():
    """GTP-BC fitted on the bimodal data; a short run needs a fresher teacher (ema_rate)."""
    policy = make(
        eta=0.0, hidden=64, batch_size=128, n_steps=2000, learning_rate=1e-3,
        ema_rate=0.05, sample_steps=5, log_every=100,
    )  # fmt: skip
    policy.fit(bimodal(), None)
    return policy


def test_gtp_bc_keeps_both_modes_where_a_gaussian_policy_averages_them(bimodal_bc):
    a = act_on_grid(bimodal_bc)
    assert near(a, 0.8) > 0.25 and near(a, -0.8) > 0.25, (near(a, 0.8), near(a, -0.8))
    assert float((a.abs() < 0.2).float().mean()) < 0.2  # the data has nothing there
    # the value stage's Gaussian policy (qov's pi_QOP; beta = 0: Gaussian BC) on the same data
    gauss = manager.create(
        "value", "qov", {"beta": 0.0, "hidden": 32, "n_steps": 600, "log_every": 100}, CTX
    )
    gauss.fit(bimodal())
    mean = gauss.act(torch.linspace(-1, 1, 50)[:, None])[:, 0]
    assert float(mean.abs().max()) < 0.3, mean  # its mode is between the modes, in the gap


def test_the_euler_sampler_acts_from_the_same_weights_and_keeps_both_modes(bimodal_bc):
    """sampler="euler" is an acting option: the denoiser alone, same weights, both modes."""
    euler = bimodal_bc.acting_as(sampler="euler", euler_steps=20)
    with pytest.raises(ValueError, match="not acting options"):
        bimodal_bc.acting_as(hidden=8)
    assert euler.actor(None).sampler is euler_actions
    a = act_on_grid(euler)  # blurrier than the map here (eq. 18 unweighted, 2k steps)
    assert near(a, 0.8) > 0.15 and near(a, -0.8) > 0.15, (near(a, 0.8), near(a, -0.8))
    assert float((a.abs() < 0.2).float().mean()) < 0.3
    assert not torch.equal(a, act_on_grid(bimodal_bc))


def test_advantage_weights_move_the_mass_to_the_better_mode(bimodal_bc):
    base = act_on_grid(bimodal_bc)
    weighted = make(
        eta=2.0, critic="value", hidden=64, batch_size=128, n_steps=2000, learning_rate=1e-3,
        ema_rate=0.05, sample_steps=5, log_every=100,
    )  # fmt: skip
    metrics = weighted.fit(bimodal(), PositiveIsBetter())
    a = act_on_grid(weighted)
    assert metrics["train/w_max"] > 1.0
    assert float((a > 0.4).float().mean()) > 0.6, a  # w(+0.8) = e^2 w(-0.8): ~88% expected
    assert float((a < -0.4).float().mean()) < 0.2
    assert float((a > 0.4).float().mean()) > float((base > 0.4).float().mean()) + 0.2


def test_own_critic_learns_which_mode_pays_and_moves_the_mass_there():
    """critic=own: a double Q by TD (here one-step episodes, reward a), then eq. 14's weights."""
    policy = make(
        eta=2.0, critic="own", hidden=64, batch_size=64, n_steps=800, learning_rate=1e-3,
        ema_rate=0.05, sample_steps=2, log_every=100,
    )  # fmt: skip
    metrics = policy.fit(bimodal(), None)
    assert metrics["train/critic_loss"] < 0.05
    n = policy.nets
    s = n.obs_norm(torch.zeros(2, 1))
    q = n.q_min(s, torch.tensor([[0.8], [-0.8]]))
    assert float(q[0] - q[1]) > 1.0, q  # Q(s, 0.8) = 0.8, Q(s, -0.8) = -0.8
    a = act_on_grid(policy)
    assert float((a > 0.4).float().mean()) > float((a < -0.4).float().mean()) + 0.25


# -- the component contract -------------------------------------------------------------------
def test_protocols_acting_and_bf16_training():
    ctx = dataclasses.replace(CTX, precision="bf16")
    policy = make(ctx, n_steps=3, eta=1.0)
    assert isinstance(policy, Policy) and policy.precision == "bf16"
    metrics = policy.fit(bimodal(64), None)
    assert all(np.isfinite(v) for v in metrics.values()), metrics
    actor = policy.actor(None)
    assert isinstance(actor, Actor)
    obs = torch.zeros(3, 1)
    actor.reset(obs)
    first = actor.act(obs)
    assert first.dtype == torch.float32 and first.shape == (3, 1)
    actor.observe(torch.zeros(3))
    assert not torch.equal(actor.act(obs), first)  # fresh noise every step
    actor.reset(obs)
    assert torch.equal(actor.act(obs), first)  # an evaluation is a function of the seed


def test_config_errors_are_sentences():
    for bad, match in [
        ({"critic": "iql"}, "critic must be 'own' or 'value'"),
        ({"eta": -1.0}, "eta must be >= 0"),
        ({"t_min": 80.0}, "0 < t_min < t_max"),
        ({"sample_steps": 0}, "sample_steps"),
        ({"max_weight": 0.5}, "max_weight must be >= 1"),
        ({"curriculum_start": 2000}, "curriculum_start <= curriculum_max"),
        ({"grad_clip": 0.0}, "grad_clip"),
        ({"flow_weighting": "karras"}, "flow_weighting must be 'none' or 'edm'"),
        ({"critic_target_rate": 0.0}, "critic_target_rate must be in (0, 1]"),
    ]:
        with pytest.raises(ValueError, match=re.escape(match)):
            GtpConfig.from_dict(bad)
    with pytest.raises(ValueError, match="critic=value takes its advantages"):
        make(critic="value").fit(bimodal(64), None)
    with pytest.raises(ValueError, match="finite action bounds"):
        make(dataclasses.replace(CTX, act_low=(-np.inf,)))


def test_save_load_round_trip(tmp_path):
    policy = make(n_steps=5)
    policy.fit(bimodal(64), None)
    policy.save(tmp_path / "gtp.pt")
    fresh = make(n_steps=5)
    fresh.load(tmp_path / "gtp.pt")
    saved, loaded = policy.nets.state_dict(), fresh.nets.state_dict()
    assert saved.keys() == loaded.keys()
    for key in saved:
        torch.testing.assert_close(saved[key], loaded[key])
    obs = torch.tensor([[0.3], [-0.7]])
    a1, a2 = policy.actor(None), fresh.actor(None)
    a1.reset(obs)
    a2.reset(obs)
    for _ in range(3):
        torch.testing.assert_close(a1.act(obs), a2.act(obs))
    with pytest.raises(ValueError, match="does not fit"):
        make(hidden=8).load(tmp_path / "gtp.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a gtp policy checkpoint"):
        make().load(tmp_path / "other.pt")


def test_an_interrupted_fit_resumes_to_the_same_weights(tmp_path):
    """critic=own and eta > 0, so the critic, its target, the teacher, both optimisers and the
    noise generator all have to come back from the checkpoint."""
    cfg = {"eta": 1.0, "critic": "own", "n_steps": 20, "checkpoint_every": 5, "log_every": 5}
    straight = make(**cfg)
    straight.fit(bimodal(64), None)

    def crash_at_12(step, values):
        if step >= 12:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make(**cfg).fit(bimodal(64), None, work_dir=tmp_path, log=crash_at_12)
    assert (tmp_path / "policy_train_state.pt").exists()
    torch.manual_seed(123)  # whatever happened in between must not matter
    logged = []
    resumed = make(**cfg)
    metrics = resumed.fit(bimodal(64), None, work_dir=tmp_path, log=lambda s, d: logged.append(s))
    assert metrics["resumed_at"] == 10 and min(logged) == 15
    expected, got = straight.nets.state_dict(), resumed.nets.state_dict()
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(expected[key], got[key])
    again = make(**cfg).fit(bimodal(64), None, work_dir=tmp_path)
    assert again["resumed_at"] == 20  # finished: a re-run trains nothing


def test_segment_prefixes_are_dropped_but_imagined_steps_kept():
    real = bimodal(10)
    segment = bimodal(6, seed=1)
    segment = dataclasses.replace(
        segment,
        extras={
            "imagined": np.array([False, False, True, True, True, True]),
            "source_index": np.array([3, 3, 3, 3, 4, 4]),
        },
    )
    both = TrajectoryDataset.concatenate([real, segment])
    rows = make().training_rows(both)
    assert rows.tolist() == [True] * 10 + [False, False] + [True] * 4
    assert make(drop_segment_prefix=False).training_rows(both).all()
    metrics = make(n_steps=2).fit(both, None)
    assert metrics["training_rows"] == 14 and metrics["imagined_fraction"] == 0.25


def test_plugins_cli_documents_every_option_in_plain_text():
    out = CliRunner().invoke(main, ["plugins", "policy", "gtp"]).output
    doc, _, options = out.partition("\noptions (")
    for field in dataclasses.fields(GtpConfig):
        assert re.search(rf"^\s+{field.name} \(", doc, re.M), f"{field.name} is not documented"
        assert re.search(rf"^\s+{field.name}\s", options, re.M), field.name
    assert "PROPOSAL" in doc and "``" not in out and ":math:" not in out and "\\" not in out


# -- the pipeline: after IPD's augmentation, and alone -----------------------------------------
TINY_GTP = [s for s in TINY_IPD if not s.startswith("policy.")] + [
    "policy.n_steps=30",
    "policy.hidden=32",
    "policy.batch_size=32",
    "policy.sample_steps=2",
    "policy.checkpoint_every=10",
    "policy.log_every=10",
]


def test_gtp_runs_after_augmentation_and_alone_and_compare_labels_both(store, tmp_path):
    out = tmp_path / "runs"
    base = ["run", "--dataset", "pendulum-medium-replay", "--out", str(out), "--quiet"]
    for item in TINY_GTP:
        base += ["--set", item]
    results = {}
    for label, extra in (("ipd[policy=gtp]", []), ("gtp alone", ["--set", "augment.n_aug=0"])):
        cli = CliRunner().invoke(main, [*base, "--policy", "gtp", *extra], catch_exceptions=False)
        assert cli.exit_code == 0, cli.output
        (path,) = [p for p in out.rglob("results.json") if p not in results.values()]
        results[label] = path
    after = json.loads(results["ipd[policy=gtp]"].read_text())
    alone = json.loads(results["gtp alone"].read_text())
    assert after["components"]["policy"] == alone["components"]["policy"] == "gtp"
    assert after["augment"]["imagined_steps_kept"] > 0
    assert alone["augment"].get("imagined_steps_kept", 0) == 0
    assert alone["stage_reused"]["value"] and not alone["stage_reused"]["policy"]
    for r in (after, alone):
        assert r["scores"]["policy"]["n_episodes"] == 2
        assert r["scores"]["policy"]["normalized_mean"] is not None
    md = tmp_path / "cmp.md"
    cli = CliRunner().invoke(main, ["compare", str(out), "--out", str(md), "--reps", "10"])
    assert cli.exit_code == 0, cli.output
    text = md.read_text()  # the tiny --set options follow the labels
    assert "| ipd[policy=gtp," in text and "| gtp alone[value." in text, text
    assert "augment" not in text.split("| gtp alone[")[1].split("]")[0]
    # an acting option re-scores the finished run without retraining; a training option fails
    run_dir = results["gtp alone"].parent
    before = (run_dir / "eval.json").read_text()
    cli = CliRunner().invoke(
        main, ["eval", str(run_dir), "--actor", "policy", "--set", "policy.sampler=euler",
               "--set", "policy.euler_steps=3"],
    )  # fmt: skip
    assert cli.exit_code == 0, cli.output
    (scores,) = run_dir.glob("eval_none_*.json")
    assert json.loads(scores.read_text())["policy"]["n_episodes"] == 2
    assert (run_dir / "eval.json").read_text() == before
    cli = CliRunner().invoke(main, ["eval", str(run_dir), "--set", "policy.hidden=8"])
    assert cli.exit_code == 2 and "takes sampler, euler_steps, sample_steps" in cli.output
    check_acting_options(GtpConfig(), ["sampler", "euler_steps"])  # acting options pass
    with pytest.raises(ValueError, match="policy 'ipd-dt' takes token_shift; an option that"):
        check_acting_options(get_registry().config_class("policy", "ipd-dt")(), ["sampler"])

    @dataclasses.dataclass
    class FixedConfig:  # a plugin policy with no acting option at all
        name: str = "fixed"
        hidden: int = 8
        acting_options = ()

    with pytest.raises(ValueError, match="policy 'fixed' has none; an option that changes"):
        check_acting_options(FixedConfig(), ["hidden"])


def test_policy_ablation_labels_are_the_hand_run_labels():
    from ipd_plugins.ablations import policy_variants
    from ipd_plugins.compare import method_label
    from ipd_plugins.run_config import DEFAULT_COMPONENTS

    variants = policy_variants("gtp")
    assert [v.label for v in variants] == ["ipd", "ipd[policy=gtp]", "gtp alone"]
    assert variants[2].overrides == {"augment": {"n_aug": 0.0}}
    gtp = {**DEFAULT_COMPONENTS, "policy": "gtp"}
    assert method_label({"components": gtp}) == "ipd[policy=gtp]"
    assert method_label({"components": gtp, "options": ["augment.n_aug=0.0"]}) == "gtp alone"
    planner = {**gtp, "planner": "greedy"}  # never reaches a policy without augmentation
    options = ["augment.n_aug=0.0", "policy.eta=0.0", "value.beta=1.0"]
    assert method_label({"components": planner, "options": options}) == (
        "gtp alone[value.beta=1.0,policy.eta=0.0]"
    )
    assert method_label({"components": dict(DEFAULT_COMPONENTS), "options": options[:1]}) == (
        "ipd-dt alone"
    )
    assert [v.label for v in policy_variants("ipd-dt")] == ["ipd", "ipd-dt alone"]


def test_gtp_actor_is_adaptable_and_its_imagined_actions_differentiable():
    """The dwm adapter's view of gtp: its own weights per env act as `act` (same noise);
    the imagined K-step sample is fixed for a real step and its gradient in the weights
    matches central differences (float64, steps of 1e-3: through K = 5 steps from T = 80 the
    forward pass carries ~1e-9 of round-off, which swamps differences of smaller steps)."""
    from registry import AdaptableActor

    torch.manual_seed(0)
    ctx = BuildContext(obs_dim=3, act_dim=2, act_low=(-1.0, -2.0), act_high=(1.0, 2.0))
    policy = get_registry().create("policy", "gtp", {"hidden": 16, "n_layers": 2}, ctx)
    a, b = policy.actor(), policy.actor()
    assert isinstance(a, AdaptableActor)
    params = a.adapt_parameters("all")
    head = a.adapt_parameters("head")
    assert set(head) == {"f.4.weight", "f.4.bias"} and set(head) < set(params)
    obs = torch.randn(2, 3)
    a.reset(obs), b.reset(obs)
    per_env = {k: v.detach()[None].expand(2, *v.shape) for k, v in params.items()}
    for _ in range(3):
        assert torch.allclose(b.act_with(obs, per_env), a.act(obs), atol=1e-5)
        first, _ = b.differentiable_act(obs[:, None].expand(2, 4, 3), per_env, b.imagine_start(4))
        again, _ = b.differentiable_act(obs[:, None].expand(2, 4, 3), per_env, b.imagine_start(4))
        assert torch.equal(first, again)  # the same noise for every inner step of a real step
        obs = obs + 0.1
    with pytest.raises(ValueError, match="which must be 'all' or 'head'"):
        a.adapt_parameters("some")

    policy.nets.double()
    b.times = b.times.double()
    obs = torch.randn(2, 4, 3, dtype=torch.float64)
    weights = {k: v.detach().double()[None].repeat(2, *[1] * v.dim()).requires_grad_(True)
               for k, v in head.items()}  # fmt: skip

    def objective(w):
        actions, _ = b.differentiable_act(obs, w, b.imagine_start(4))
        return actions.square().sum((1, 2)) + actions[..., 0].sum(1)  # (B,)

    grads = torch.autograd.grad(objective(weights).sum(), list(weights.values()))
    for (name, w), g in zip(weights.items(), grads, strict=True):
        for i in range(0, w[1].numel(), 3):
            with torch.no_grad():
                plus = {k: v.clone() for k, v in weights.items()}
                minus = {k: v.clone() for k, v in weights.items()}
                plus[name][1].view(-1)[i] += 1e-3
                minus[name][1].view(-1)[i] -= 1e-3
                fd = (objective(plus) - objective(minus)) / 2e-3
            assert abs(float(fd[0])) < 1e-8  # env 1's weights do not move env 0's actions
            assert float(g[1].reshape(-1)[i]) == pytest.approx(float(fd[1]), rel=1e-4, abs=1e-7)
