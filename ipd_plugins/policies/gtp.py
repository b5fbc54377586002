"""``gtp``: Generative Trajectory Policies, a policy without a context window.

Feng, Tang, Wang, Chen, "Offline Reinforcement Learning with Generative Trajectory Policies",
https://arxiv.org/abs/2510.11499 (v1; ICML 2026). The authors' code (github.com/wmd3i/gtp) was
not available: this follows the main text, and where its appendix C.1 was missing, the
PROPOSALs of ``gtp-method-notes.md`` (each marked PROPOSAL below and in the config docstring).

The policy learns the solution map of the probability-flow ODE of a variance-exploding
diffusion over actions, ``Phi(s, a_t, t, tau)``: where an action noised to level t ends up at
level tau. Acting runs K steps of it from pure noise (eq. 15). Training, per gradient step
(Algorithm 1)::

    1. critic: TD on a double Q with K-step samples of the EMA actor at s'  (eq. 16; critic=own)
    2. weights: w = exp(eta max(0, A) / (std A + eps)), A = Q(s,a) - V(s)    (eq. 14)
    3. (t, u, tau) on the curriculum's grid, z ~ N(0, I)                      (App. C.2)
    4. actor: L_cons + lambda_flow L_flow against the EMA teacher             (eq. 17-19)
    5. EMA: theta- <- (1 - r) theta- + r theta, and the critic's target likewise

It plugs into IPD's pipeline like ``ipd-dt``: after IPD's augmentation it trains on real +
imagined transitions; ``--set augment.n_aug=0`` runs it alone on the data (``ipd compare``
labels that run ``gtp alone``). The maths is in :mod:`ipd_plugins.policies.gtp_impl`.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ipd_plugins.files import atomic_save, load_component, load_state_checked
from ipd_plugins.nn import EnsembleMLP, Normalizer, mixed_forward, mlp, per_env_call
from ipd_plugins.policies.gtp_impl import (
    Phi,
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
    time_features,
)
from ipd_plugins.training import Checkpointer, TransitionSampler
from ipd_plugins.value.losses import q_loss, soft_update
from registry.config import ComponentConfig, added_later
from registry.hookspecs import hookimpl
from registry.protocols import Actor, BuildContext, Logger, ValueLearner

if TYPE_CHECKING:
    from ipd_plugins.data.dataset import TrajectoryDataset

__all__ = [
    "GtpConfig",
    "GtpPolicy",
    "GtpActor",
    "SolutionMapNet",
    "TrainState",
    "ipd_register_policy",
]

_FORMAT = "ipd.policy.gtp/1"
#: Fourier frequencies of each time input of the network (see ``gtp_impl.time_features``)
TIME_FREQS = 8
CRITICS = ("own", "value")
SAMPLERS = ("map", "euler")
FLOW_WEIGHTINGS = ("none", "edm")


@dataclass
class GtpConfig(ComponentConfig):
    r"""Generative Trajectory Policy (Feng et al., arXiv 2510.11499): a state-only policy.

    After IPD's augmentation: ``ipd run --policy gtp``; alone on the data: ``ipd run --policy
    gtp --set augment.n_aug=0`` (``ipd compare`` labels it ``gtp alone``); all three side by
    side: ``ipd ablate policy --policy gtp``. GTP-BC: ``--set policy.eta=0``.

    Solution map (eq. 3-5) of the noised action :math:`a_t = a + t z`, z ~ N(0, I), with EDM
    preconditioning of phi (PROPOSAL, sigma_data = 0.5):

    .. math::

        \Phi_\theta(s, a_t, t, \tau) = (1 - \tau/t)\, \phi_\theta(s, a_t, t, \tau)
            + (\tau/t)\, a_t

    Actor loss (eq. 17-19) with the score approximation (Thm. 1): the teacher's point is
    :math:`\tilde a_u = a + u z` (same z), so no ODE solver runs:

    .. math::

        L = E[w \|\Phi_\theta(s, a_t, t, \tau) - sg(\Phi_{\theta^-}(s, \tilde a_u, u, \tau))\|^2]
            + \lambda_{Flow} E[w \|a - \phi_\theta(s, a_t, t, t)\|^2]

    Advantage weights (Thm. 2, eq. 14): :math:`w = \exp(\eta \max(0, A) / (\mathrm{std}(A)
    + \epsilon))` with A = Q(s,a) - V(s); eta = 0 is GTP-BC (w = 1, no critic). Acting (eq.
    15): :math:`a_{t_0} = T z`, :math:`a_{t_{i+1}} = \Phi_\theta(s, a_{t_i}, t_i, t_{i+1})`
    for K steps down to 0, then clipped to the action bounds.

    Critic: ``own`` is the paper's (eq. 16): a double Q trained by TD,
    :math:`(r + \gamma (1-d) \min_j Q_{\phi_j^-}(s', \pi_{\theta^-}(s')) - Q_{\phi_j}(s,a))^2`
    with a K-step sample of the EMA actor, and :math:`V(s) = \min_j Q_{\phi_j}(s, \pi_\theta(s))`
    from one K-step sample (PROPOSAL). ``value`` is a documented deviation: A = Q(s,a) - V(s)
    of the pipeline's value stage (IPD's IQL-style learner), no critic training: cheaper,
    and on CPU the critic's K-step targets are most of a step's cost.

    PROPOSALs (the paper's App. C.1 was unavailable; gtp-method-notes.md): T = 80, t_min =
    0.002, rho = 7, sigma_data = 0.5; the curriculum's stage length n_steps / 8; t and u
    adjacent grid points, tau uniform over the grid points up to u and 0; eta = 1,
    lambda_flow = 1, eps = 1e-6, std(A) over the minibatch, w capped at 100; 3 x 256 Mish
    MLPs, Adam 3e-4, gamma 0.99, EMA rate 0.005 (teacher and critic target); sampled actions
    clipped. Not in the paper: ``warmup_steps``, ``grad_clip`` (off by default),
    ``flow_weighting="edm"`` (off by default), the Fourier time embedding, dropping the
    segments' real prefixes.

    Short runs (CPU profiles: thousands of steps, not 2M): the solution map lags the
    denoiser. On pendulum-medium, 4,000 steps, own critic, one seed: K=2 / K=5 scored -5 / 11
    at the paper's values, 39 / 60 with ``ema_rate=0.05``, 57 / 60 adding
    ``flow_weighting=edm`` (benchmarks/results/gtp_speed.md): set both for CPU-sized runs.

    Args:
        critic (str): "own" (eq. 16, the paper) or "value" (the value stage's Q and V).
        eta (float): :math:`\eta` of eq. 14; 0 gives GTP-BC. PROPOSAL 1 (swept 0.5-2).
        adv_eps (float): :math:`\epsilon` of eq. 14.
        max_weight (float): cap on w (PROPOSAL 100).
        lambda_flow (float): :math:`\lambda_{Flow}` of eq. 19 (PROPOSAL 1).
        flow_weighting (str): "none" (eq. 18 as printed) or "edm" (each row's flow loss times
            EDM's :math:`1 / c_{out}(t)^2`; not in the paper).
        sample_steps (int): K of eq. 15 (paper 5; its cheap variant 2).
        sampler (str): how the trained policy acts: "map", K solution-map steps (eq. 15, the
            paper), or "euler", ``euler_steps`` Euler steps of the instantaneous map alone
            (the denoiser as a diffusion sampler; not in the paper: short runs train it ahead
            of the map, benchmarks/results/gtp_scores.md). Training is the same either way.
        euler_steps (int): Euler steps of ``sampler="euler"``.
        t_max (float): T, the largest noise level (PROPOSAL 80).
        t_min (float): the smallest non-zero noise level of the grids (PROPOSAL 0.002).
        rho (float): :math:`\rho` of the Karras grid (PROPOSAL 7).
        sigma_data (float): :math:`\sigma_{data}` of the EDM preconditioning (PROPOSAL 0.5).
        curriculum_start (int): training-grid intervals at the start (App. C.2: 10).
        curriculum_max (int): intervals at the end (App. C.2: 1280).
        curriculum_stages (int): doublings are n_steps / this steps apart (PROPOSAL 8).
        hidden (int): width of the actor and critic MLPs (PROPOSAL 256).
        n_layers (int): hidden layers of each MLP (PROPOSAL 3).
        learning_rate (float): the actor's Adam learning rate (PROPOSAL 3e-4).
        critic_lr (float): the own critic's Adam learning rate (PROPOSAL 3e-4).
        warmup_steps (int): linear learning-rate warm-up of both (not in the paper).
        grad_clip (float | None): actor gradient-norm clip (None: off; not in the paper).
        gamma (float): :math:`\gamma` of the own critic's TD target (PROPOSAL 0.99).
        ema_rate (float): :math:`\tau_e`, the EMA rate of the teacher :math:`\theta^-`
            (PROPOSAL 0.005).
        critic_target_rate (float): :math:`\tau_e` of the own critic's target
            :math:`\phi^-` (PROPOSAL 0.005).
        batch_size (int): transitions per gradient step (paper 256).
        n_steps (int): gradient steps (paper 2M; profiles set it).
        drop_segment_prefix (bool): leave out the real steps that head each imagined segment
            (copies of dataset steps; a sequence policy needs them, a state policy does not).
        checkpoint_every (int): steps between resumable checkpoints (when fit gets a folder).
        log_every (int): steps between ``log`` calls (the metrics are averaged over them).
    """

    kind: ClassVar[str] = "policy"
    name: ClassVar[str] = "gtp"
    acting_options: ClassVar[tuple[str, ...]] = ("sampler", "euler_steps", "sample_steps")

    # "own": the paper's double Q, trained by TD with K-step samples of the EMA actor (most of
    # a CPU step's cost); "value": A from the value stage's Q(s,a) - V(s), no critic training
    # (cheaper; a deviation from the paper). Unused when eta = 0
    critic: str = "own"
    # advantage temperature: 0 -> GTP-BC (plain generative behaviour cloning), larger -> more
    # of the policy's mass on actions with A > 0 (PROPOSAL 1; the paper sweeps it)
    eta: float = 1.0
    # added to std(A) in eq. 14; only matters when every advantage is equal
    adv_eps: float = 1e-6
    # cap on w; lower keeps a few large advantages from owning the batch (PROPOSAL 100)
    max_weight: float = 100.0
    # weight of the flow (denoising) loss next to the consistency loss (PROPOSAL 1)
    lambda_flow: float = 1.0
    # "none": eq. 18 as printed (large noise levels dominate the flow loss); "edm": each row
    # weighted by EDM's 1 / c_out(t)^2, so the denoiser learns the small-t detail as fast as
    # the rest (what short runs need; not in the paper)
    flow_weighting: str = "none"
    # K, solution-map steps per action: more -> closer to the ODE's solution, slower acting and
    # (critic=own) slower training; paper 5, its cheap variant 2
    sample_steps: int = 5
    # how the trained policy acts: "map" = eq. 15 with K = sample_steps (the paper); "euler" =
    # euler_steps Euler steps of the instantaneous map (the denoiser), which a short run trains
    # ahead of the map. Acting only: `ipd eval RUN --set policy.sampler=euler` re-scores a run
    sampler: str = added_later("map")
    # Euler steps of sampler="euler": more -> closer to the ODE's solution, slower acting
    euler_steps: int = added_later(10)
    # T: actions start at T z; must dwarf the action range (PROPOSAL 80)
    t_max: float = 80.0
    # smallest non-zero noise level of the training grid (PROPOSAL 0.002)
    t_min: float = 0.002
    # Karras grid exponent: larger packs more levels near t_min (PROPOSAL 7)
    rho: float = 7.0
    # std the EDM preconditioning assumes of the actions in [-1, 1] (PROPOSAL 0.5)
    sigma_data: float = 0.5
    # training-grid intervals at the start of the curriculum; fewer -> coarser, easier targets
    curriculum_start: int = 10
    # intervals the curriculum doubles up to; more -> finer, less biased consistency targets
    curriculum_max: int = 1280
    # the curriculum doubles every n_steps / curriculum_stages steps (PROPOSAL 8)
    curriculum_stages: int = 8
    # MLP width of the actor and the critic; smaller is faster
    hidden: int = 256
    # hidden layers of each MLP
    n_layers: int = 3
    # actor Adam learning rate
    learning_rate: float = 3e-4
    # own critic's Adam learning rate
    critic_lr: float = 3e-4
    # linear learning-rate warm-up steps (0: none, the paper); profiles set it for policies
    warmup_steps: int = 0
    # clip of the actor's gradient norm; lower is more stable, slower; None: no clip (paper)
    grad_clip: float | None = None
    # discount of the own critic
    gamma: float = 0.99
    # Polyak rate of the EMA teacher theta-: larger follows the student faster (short runs
    # want ~0.05: a teacher 200 steps stale gives stale consistency targets), smaller is
    # smoother (PROPOSAL 0.005)
    ema_rate: float = 0.005
    # Polyak rate of the own critic's target phi-; larger is faster but less stable TD
    critic_target_rate: float = 0.005
    # transitions per gradient step (paper 256)
    batch_size: int = 256
    # gradient steps (paper 2M; the profiles set it)
    n_steps: int = 2_000_000
    # drop the real steps at the head of each imagined segment (copies of dataset steps that a
    # sequence policy needs as context); False trains on exactly the rows ipd-dt sees
    drop_segment_prefix: bool = True
    # periodic resumable checkpoint every this many steps (when fit gets a work_dir)
    checkpoint_every: int = 1000
    # report to `log` every this many steps (metrics averaged over them)
    log_every: int = 100

    def validate(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(f"policy 'gtp': {what}")

        need(self.critic in CRITICS, f"critic must be 'own' or 'value', got {self.critic!r}")
        need(
            self.flow_weighting in FLOW_WEIGHTINGS,
            f"flow_weighting must be 'none' or 'edm', got {self.flow_weighting!r}",
        )
        need(self.eta >= 0, f"eta must be >= 0 (0: GTP-BC), got {self.eta}")
        need(self.adv_eps > 0, f"adv_eps must be > 0, got {self.adv_eps}")
        need(self.max_weight >= 1, f"max_weight must be >= 1 (w >= 1), got {self.max_weight}")
        need(self.lambda_flow >= 0, f"lambda_flow must be >= 0, got {self.lambda_flow}")
        need(self.sample_steps >= 1, f"sample_steps (K) must be >= 1, got {self.sample_steps}")
        need(self.sampler in SAMPLERS, f"sampler must be 'map' or 'euler', got {self.sampler!r}")
        need(self.euler_steps >= 1, f"euler_steps must be >= 1, got {self.euler_steps}")
        need(
            0 < self.t_min < self.t_max,
            f"need 0 < t_min < t_max, got t_min={self.t_min}, t_max={self.t_max}",
        )
        need(self.rho > 0, f"rho must be > 0, got {self.rho}")
        need(self.sigma_data > 0, f"sigma_data must be > 0, got {self.sigma_data}")
        need(
            1 <= self.curriculum_start <= self.curriculum_max,
            f"need 1 <= curriculum_start <= curriculum_max, got {self.curriculum_start} and "
            f"{self.curriculum_max}",
        )
        for key in ("curriculum_stages", "hidden", "n_layers", "batch_size", "n_steps"):
            need(getattr(self, key) >= 1, f"{key} must be >= 1, got {getattr(self, key)}")
        for key in ("checkpoint_every", "log_every"):
            need(getattr(self, key) >= 1, f"{key} must be >= 1, got {getattr(self, key)}")
        need(
            self.learning_rate > 0 and self.critic_lr > 0,
            f"learning rates must be > 0, got learning_rate={self.learning_rate}, "
            f"critic_lr={self.critic_lr}",
        )
        need(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        need(
            self.grad_clip is None or self.grad_clip > 0,
            f"grad_clip must be > 0 or none, got {self.grad_clip}",
        )
        need(0.0 <= self.gamma < 1.0, f"gamma must be in [0, 1), got {self.gamma}")
        for key in ("ema_rate", "critic_target_rate"):
            rate = getattr(self, key)
            need(0.0 < rate <= 1.0, f"{key} must be in (0, 1], got {rate}")

    def create(self, ctx: BuildContext) -> GtpPolicy:
        return GtpPolicy(self, ctx)


# -- networks ---------------------------------------------------------------------------------
class SolutionMapNet(nn.Module):
    """phi_theta(s, a_t, t, tau) of eq. 3-5 with EDM preconditioning (PROPOSAL)::

        phi = c_skip(t) a_t + c_out(t) F([s, c_in(t) a_t, emb(log(t) / 4), emb(tau / t)])

    F is an MLP (Mish); ``s`` is the normalised observation (B,O), ``a_t`` (B,A) in the unit
    box's units, ``t``, ``tau`` (B,) with ``0 <= tau <= t``, ``t > 0``. ``precision`` "bf16"
    runs F's hidden layers under bf16 autocast (its output layer stays fp32).
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: int, n_layers: int, sigma_data: float):
        super().__init__()
        time_dim = 2 * (1 + 2 * TIME_FREQS)
        self.f = mlp(obs_dim + act_dim + time_dim, act_dim, hidden, n_layers, activation=nn.Mish)
        self.sigma_data = float(sigma_data)
        self.obs_dim, self.act_dim = obs_dim, act_dim

    def forward(
        self,
        obs: torch.Tensor,
        a_t: torch.Tensor,
        t: torch.Tensor,
        tau: torch.Tensor,
        precision: str = "fp32",
    ) -> torch.Tensor:
        c_skip, c_out, c_in = (c.unsqueeze(-1) for c in edm_scalings(t, self.sigma_data))
        emb_t = time_features(0.25 * t.log(), TIME_FREQS)  # EDM's c_noise(t) = log(t) / 4
        emb_tau = time_features(tau / t, TIME_FREQS)  # where in [0, t] the map goes
        x = torch.cat([obs, c_in * a_t, emb_t, emb_tau], dim=-1)
        return c_skip * a_t + c_out * mixed_forward(self.f, x, precision).float()


class _Nets(nn.Module):
    """Everything ``save`` writes: actor, EMA actor, double Q and its target, normaliser, bounds."""

    def __init__(self, cfg: GtpConfig, ctx: BuildContext):
        super().__init__()
        O, A = ctx.obs_dim, ctx.act_dim
        self.obs_norm = Normalizer(O)
        self.actor = SolutionMapNet(O, A, cfg.hidden, cfg.n_layers, cfg.sigma_data)
        self.actor_ema = copy.deepcopy(self.actor).requires_grad_(False)  # theta-, the teacher
        # the double Q as ONE batched ensemble (E=2): one matmul per layer for both
        self.q = EnsembleMLP(
            2, O + A, 1, hidden=cfg.hidden, n_hidden=cfg.n_layers, layer_norm=False,
            activation=nn.Mish,
        )  # fmt: skip
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)  # phi-
        low = torch.as_tensor(ctx.act_low, dtype=torch.float32)
        high = torch.as_tensor(ctx.act_high, dtype=torch.float32)
        self.register_buffer("act_center", (high + low) / 2)
        self.register_buffer("act_half", (high - low) / 2)

    def phi(self, net: SolutionMapNet, precision: str = "fp32") -> Phi:
        """``net`` (the actor or its EMA) as the ``phi(obs_n, a_t, t, tau)`` of gtp_impl."""
        return lambda obs, a_t, t, tau: net(obs, a_t, t, tau, precision)

    def q_min(self, obs_n: torch.Tensor, act_u: torch.Tensor, target: bool = False,
              precision: str = "fp32") -> torch.Tensor:  # fmt: skip
        """(B,O) normalised obs, (B,A) unit actions -> (B,) min over the pair (or its target)."""
        return self.q_pair(obs_n, act_u, target, precision).min(0).values

    def q_pair(self, obs_n: torch.Tensor, act_u: torch.Tensor, target: bool = False,
               precision: str = "fp32") -> torch.Tensor:  # fmt: skip
        """(B,O), (B,A) -> (E=2,B): both members' Q in the dataset's reward units."""
        x = torch.cat([obs_n, act_u], -1).expand(2, -1, -1)
        net = self.q_target if target else self.q
        return mixed_forward(net, x, precision).squeeze(-1).float()


# -- the policy -------------------------------------------------------------------------------
class GtpPolicy:
    """Implements :class:`registry.protocols.Policy` (no context window): K-step solution-map
    sampling of an action for each state."""

    def __init__(self, cfg: GtpConfig, ctx: BuildContext):
        cfg.validate()
        low, high = np.asarray(ctx.act_low, float), np.asarray(ctx.act_high, float)
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(high > low)):
            raise ValueError(
                f"policy 'gtp' needs finite action bounds with high > low (its actions live in "
                f"the rescaled unit box); got act_low={ctx.act_low}, act_high={ctx.act_high}"
            )
        self.cfg, self.ctx, self.device = cfg, ctx, torch.device(ctx.device)
        with torch.random.fork_rng(devices=[]):  # a seeded init that leaves the caller's RNG
            torch.manual_seed(ctx.seed)
            self.nets = _Nets(cfg, ctx).to(self.device)
        self.nets.eval()
        #: eq. 15's schedule T = t_0 > ... > t_K = 0
        self.times = sampling_times(cfg.sample_steps, cfg.t_min, cfg.t_max, cfg.rho).to(self.device)
        self._grids: dict[int, torch.Tensor] = {}  # the curriculum's training grids, by size

    @property
    def precision(self) -> str:
        """bf16 autocast for the MLPs' hidden layers while training when ``run.precision``
        resolves to bf16; acting always computes in fp32."""
        return self.ctx.precision

    @property
    def uses_critic(self) -> bool:
        """Eq. 14 needs advantages unless eta = 0 (GTP-BC)."""
        return self.cfg.eta > 0

    @property
    def trains_critic(self) -> bool:
        return self.uses_critic and self.cfg.critic == "own"

    # -- training -------------------------------------------------------------------------
    def fit(
        self,
        dataset: TrajectoryDataset,
        value: ValueLearner | None,
        work_dir: Path | None = None,
        log: Logger | None = None,
    ) -> dict[str, float]:
        """Train for ``cfg.n_steps`` steps (Algorithm 1); resumes from ``work_dir`` if it can.

        Every random draw (minibatches, noise levels, noise) comes from a generator seeded with
        ``ctx.seed`` and saved in the checkpoints, so an interrupted fit resumed from its
        checkpoint ends with the weights of an uninterrupted one. ``value`` is used only with
        ``critic="value"`` (and eta > 0).
        """
        cfg = self.cfg
        if (dataset.obs_dim, dataset.act_dim) != (self.ctx.obs_dim, self.ctx.act_dim):
            raise ValueError(
                f"dataset has obs/act dims ({dataset.obs_dim}, {dataset.act_dim}) but the policy "
                f"was built for ({self.ctx.obs_dim}, {self.ctx.act_dim})"
            )
        if self.uses_critic and cfg.critic == "value" and value is None:
            raise ValueError(
                "policy 'gtp' with critic=value takes its advantages from the value learner; "
                "got None (use critic=own, or eta=0 for GTP-BC)"
            )
        forked = [] if self.device.type == "cpu" else [self.device]
        with torch.random.fork_rng(devices=forked):
            torch.manual_seed(self.ctx.seed)
            return self._fit(dataset, value, work_dir, log)

    def training_rows(self, dataset: TrajectoryDataset) -> np.ndarray:
        """(N,) bool: the dataset steps gtp trains on (all but the segments' real prefixes when
        ``drop_segment_prefix``: rows neither imagined nor original data)."""
        keep = np.ones(dataset.n_steps, bool)
        extras = dataset.extras
        if self.cfg.drop_segment_prefix and "imagined" in extras and "source_index" in extras:
            keep = extras["imagined"].astype(bool) | (extras["source_index"] < 0)
        return keep

    def _sampler(self, dataset: TrajectoryDataset, gen: torch.Generator) -> TransitionSampler:
        """Transitions on the device: raw obs (the value learner's units), unit-box actions,
        rewards and ``not_done`` (1 - terminated) in ``done``."""
        n = self.nets
        sampler = TransitionSampler(dataset, device=str(self.device), generator=gen)
        keep = torch.as_tensor(self.training_rows(dataset), device=self.device)
        sampler.obs, sampler.next_obs = sampler.obs[keep], sampler.next_obs[keep]
        sampler.act = ((sampler.act[keep] - n.act_center) / n.act_half).clamp(-1.0, 1.0)
        sampler.rew, sampler.done = sampler.rew[keep], 1.0 - sampler.done[keep]
        sampler.size = int(keep.sum())
        if sampler.size == 0:
            raise ValueError("policy 'gtp': no training rows left in the dataset")
        return sampler

    def _fit(
        self,
        dataset: TrajectoryDataset,
        value: ValueLearner | None,
        work_dir: Path | None,
        log: Logger | None,
    ) -> dict[str, float]:
        cfg, n = self.cfg, self.nets
        state = self.start_training(dataset)
        ckpt = Checkpointer(work_dir, cfg.checkpoint_every, name="policy_train_state")
        objects = state.objects()
        extra: dict[str, Any] = {}
        start = ckpt.restore(objects, extra)
        if start > 0:
            state.generator.set_state(extra["generator"])

        acc: dict[str, torch.Tensor] = {}
        acc_n, last = 0, {}
        t0 = time.perf_counter()
        bar = tqdm(range(start, cfg.n_steps), desc="policy gtp", disable=None, leave=False)
        try:
            for step in bar:
                info = self.train_step(state, step, value)
                for k, v in info.items():
                    acc[k] = acc[k] + v if k in acc else v.clone()
                acc_n += 1
                done = step + 1
                # the numbers leave the device only here: no host synchronisation between logs
                if done % cfg.log_every == 0 or done == cfg.n_steps:
                    last = {k: float(v) / acc_n for k, v in acc.items()}
                    acc, acc_n = {}, 0
                    if not all(math.isfinite(v) for v in last.values()):
                        raise FloatingPointError(f"gtp: non-finite losses at step {done}: {last}")
                    bar.set_postfix(loss=f"{last['loss']:.4f}", refresh=False)
                    if log is not None:
                        log(done, {**last, "lr": state.actor_sched.get_last_lr()[0]})
                if done % cfg.checkpoint_every == 0:
                    extra["generator"] = state.generator.get_state()
                    ckpt.maybe_save(done, objects, extra)
        finally:
            bar.close()
            n.eval()
        if start < cfg.n_steps:  # the finished state, so that a re-run is a no-op
            extra["generator"] = state.generator.get_state()
            ckpt.maybe_save(cfg.n_steps, objects, extra, force=True)
        elapsed = time.perf_counter() - t0
        trained = cfg.n_steps - start
        metrics = {f"train/{k}": v for k, v in last.items()}
        metrics.update(
            steps=float(cfg.n_steps),
            resumed_at=float(start),
            steps_per_s=trained / elapsed if trained > 0 and elapsed > 0 else float("nan"),
            training_rows=float(state.sampler.size),
        )
        if "imagined" in dataset.extras:
            metrics["imagined_fraction"] = float(np.mean(dataset.extras["imagined"]))
        return metrics

    def start_training(self, dataset: TrajectoryDataset) -> TrainState:
        """Normaliser, transition sampler, optimisers and schedules for :meth:`fit` (the nets
        in training mode)."""
        cfg, n = self.cfg, self.nets
        n.obs_norm.fit(dataset.observations)
        gen = torch.Generator().manual_seed(self.ctx.seed)
        sampler = self._sampler(dataset, gen)
        actor_params, critic_params = list(n.actor.parameters()), list(n.q.parameters())
        actor_opt = torch.optim.Adam(actor_params, lr=cfg.learning_rate)
        critic_opt = torch.optim.Adam(critic_params, lr=cfg.critic_lr)
        warmup = max(1, cfg.warmup_steps)

        def ramp(s: int) -> float:
            return min(1.0, (s + 1) / warmup)

        n.train()
        return TrainState(
            n,
            sampler,
            gen,
            actor_params,
            critic_params,
            actor_opt,
            critic_opt,
            torch.optim.lr_scheduler.LambdaLR(actor_opt, ramp),
            torch.optim.lr_scheduler.LambdaLR(critic_opt, ramp),
        )

    def advantages(
        self,
        batch: dict[str, torch.Tensor],
        obs_n: torch.Tensor,
        value: ValueLearner | None,
        gen: torch.Generator,
    ) -> torch.Tensor:
        """(B,) A(s, a) of the batch's logged actions, without gradient (eq. 14's input).

        ``own``: min_j Q_j(s, a) - min_j Q_j(s, pi_theta(s)), pi_theta a K-step sample
        (PROPOSAL); ``value``: the value learner's Q(s, a) - V(s) in raw units.
        """
        n, act_u = self.nets, batch["act"]
        with torch.no_grad():
            if self.cfg.critic == "own":
                noise = torch.randn(act_u.shape, generator=gen).to(self.device)
                a_pi = sample_actions(n.phi(n.actor, self.precision), obs_n, self.times, noise)
                obs2, act2 = torch.cat([obs_n, obs_n]), torch.cat([act_u, a_pi])
                q = n.q_min(obs2, act2, precision=self.precision)  # (2B,): Q(s,a), Q(s,pi(s))
                return q[: act_u.shape[0]] - q[act_u.shape[0] :]
            assert value is not None
            act = n.act_center + n.act_half * act_u
            adv = value.q(batch["obs"], act) - value.v(batch["obs"])
            assert adv.shape == act.shape[:1], f"value.q - value.v must be (B,), got {adv.shape}"
            return adv.detach().float()

    def train_step(
        self, state: TrainState, step: int, value: ValueLearner | None
    ) -> dict[str, torch.Tensor]:
        """Iteration ``step`` (0-based) of Algorithm 1 on a fresh minibatch; returns detached
        0-d tensors (the losses, the weights' mean and max, the actor's gradient norm)."""
        cfg, n, prec, gen = self.cfg, self.nets, self.precision, state.generator
        B, A = cfg.batch_size, self.ctx.act_dim
        b = state.sampler.sample(B)
        obs_n, next_n, act_u = n.obs_norm(b["obs"]), n.obs_norm(b["next_obs"]), b["act"]
        info: dict[str, torch.Tensor] = {}

        # 1. critic (eq. 16): TD towards min_j Q_target_j(s', a'), a' from the EMA actor
        if self.trains_critic:
            with torch.no_grad():
                noise = torch.randn((B, A), generator=gen).to(self.device)
                a_next = sample_actions(n.phi(n.actor_ema, prec), next_n, self.times, noise)
                next_q = n.q_min(next_n, a_next, target=True, precision=prec)  # (B,)
            q_pred = n.q_pair(obs_n, act_u, precision=prec)  # (E,B)
            l_q = q_loss(q_pred, b["rew"], b["done"], next_q, cfg.gamma)
            state.critic_step(l_q)
            info["critic_loss"] = l_q.detach()
            info["q_mean"] = q_pred.detach().mean()

        # 2. advantage weights (eq. 14); all ones for GTP-BC
        if self.uses_critic:
            adv = self.advantages(b, obs_n, value, gen)
            w = advantage_weights(adv, cfg.eta, cfg.adv_eps, cfg.max_weight).to(self.device)
            info["adv_std"] = adv.std(correction=0)
        else:
            w = torch.ones(B, device=self.device)
        info["w_mean"], info["w_max"] = w.mean(), w.max()

        # 3. noise levels on the curriculum's grid, and the noise
        intervals = curriculum_intervals(
            step, cfg.n_steps, cfg.curriculum_start, cfg.curriculum_max, cfg.curriculum_stages
        )
        grid = self.grid(intervals)
        t, u, tau = sample_times(grid, B, gen)
        z = torch.randn((B, A), generator=gen).to(self.device)
        lam = edm_loss_weight(t, cfg.sigma_data) if cfg.flow_weighting == "edm" else None

        # 4. actor (eq. 17-19) against the EMA teacher
        loss, parts = actor_losses(
            n.phi(n.actor, prec), n.phi(n.actor_ema, prec), obs_n, act_u, z, t, u, tau, w,
            cfg.lambda_flow, lam,
        )  # fmt: skip
        info["grad_norm"] = state.actor_step(loss, cfg.grad_clip)
        info.update(parts)
        info["intervals"] = torch.tensor(float(intervals))

        # 5. EMA of the teacher and of the critic's target
        soft_update(list(n.actor_ema.parameters()), list(n.actor.parameters()), cfg.ema_rate)
        if self.trains_critic:
            rate = cfg.critic_target_rate
            soft_update(list(n.q_target.parameters()), list(n.q.parameters()), rate)
        return info

    def grid(self, intervals: int) -> torch.Tensor:
        """The curriculum's training grid with ``intervals`` intervals (cached per size)."""
        if intervals not in self._grids:
            c = self.cfg
            grid = karras_grid(intervals, c.t_min, c.t_max, c.rho).to(self.device)
            self._grids[intervals] = grid
        return self._grids[intervals]

    # -- acting ---------------------------------------------------------------------------
    def actor(self, value: ValueLearner | None = None) -> Actor:
        """A memoryless :class:`GtpActor` sampling as ``cfg.sampler`` says (``value`` is not
        used: acting needs no critic)."""
        c, seed = self.cfg, self.ctx.seed
        euler = c.sampler == "euler"
        steps = c.euler_steps if euler else c.sample_steps
        times = sampling_times(steps, c.t_min, c.t_max, c.rho).to(self.device)
        sampler = euler_actions if euler else sample_actions
        return GtpActor(self.nets, times, seed, self.device, sampler=sampler)

    def acting_as(self, **options: Any) -> GtpPolicy:
        """This trained policy with other acting options (``GtpConfig.acting_options``, e.g.
        ``sampler="euler"``), sharing its weights; training options are refused."""
        check = set(options) - set(GtpConfig.acting_options)
        if check:
            raise ValueError(f"gtp: {sorted(check)} are not acting options")
        other = copy.copy(self)
        other.cfg = self.cfg.replace(**options)
        return other

    # -- persistence ----------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Every network (actor, EMA teacher, critic pair and target), the normaliser and the
        action bounds, with the config; weights-only (``atomic_save``)."""
        atomic_save(
            {
                "format": _FORMAT,
                "obs_dim": self.ctx.obs_dim,
                "act_dim": self.ctx.act_dim,
                "config": self.cfg.to_dict(),
                "state": self.nets.state_dict(),
            },
            path,
        )

    def load(self, path: Path) -> None:
        blob = load_component(path, _FORMAT, "gtp policy", (self.ctx.obs_dim, self.ctx.act_dim))
        sizes = {"hidden": self.cfg.hidden, "n_layers": self.cfg.n_layers}
        load_state_checked(self.nets, blob, path, "gtp policy", sizes)
        self.nets.to(self.device).eval()


@dataclass
class TrainState:
    """What one fit steps: the nets, the sampler, the generator of every random draw, and the
    actor's and the critic's optimisers and schedules. Each step computes its own gradients
    (``torch.autograd.grad``), so a critic loss never writes into the actor's and vice versa."""

    nets: nn.Module
    sampler: TransitionSampler
    generator: torch.Generator
    actor_params: list[nn.Parameter]
    critic_params: list[nn.Parameter]
    actor_opt: torch.optim.Optimizer
    critic_opt: torch.optim.Optimizer
    actor_sched: torch.optim.lr_scheduler.LRScheduler
    critic_sched: torch.optim.lr_scheduler.LRScheduler

    def objects(self) -> dict[str, Any]:
        """What a checkpoint holds (the generator goes in its ``extra``)."""
        return {
            "nets": self.nets,
            "actor_opt": self.actor_opt,
            "critic_opt": self.critic_opt,
            "actor_sched": self.actor_sched,
            "critic_sched": self.critic_sched,
        }

    def critic_step(self, loss: torch.Tensor) -> None:
        grads = torch.autograd.grad(loss, self.critic_params)
        for p, g in zip(self.critic_params, grads, strict=True):
            p.grad = g
        self.critic_opt.step()
        self.critic_sched.step()

    def actor_step(self, loss: torch.Tensor, clip: float | None) -> torch.Tensor:
        """Step the actor; returns its gradient norm before any clipping (detached)."""
        grads = torch.autograd.grad(loss, self.actor_params)
        for p, g in zip(self.actor_params, grads, strict=True):
            p.grad = g
        norm = nn.utils.clip_grad_norm_(self.actor_params, math.inf if clip is None else clip)
        self.actor_opt.step()
        self.actor_sched.step()
        return norm.detach()


class GtpActor:
    """Acts in B environments at once: one K-step sample (eq. 15; or ``sampler``'s, e.g.
    :func:`~ipd_plugins.policies.gtp_impl.euler_actions`, along ``times``) per state, no memory.

    The initial noise comes from a generator re-seeded with ``seed`` at every :meth:`reset`,
    so an evaluation is a function of the seed; :meth:`observe` keeps nothing.

    Implements :class:`registry.protocols.AdaptableActor` (an adapter such as ``dwm`` may
    change the solution map's weights while it acts): the adapted weights are phi's MLP
    ("all") or its output layer ("head"); the EDM preconditioning, the normaliser and the
    bounds stay as trained. An imagined action is the same K-step sample, differentiable in
    the observation and the weights, from noise that is fixed for the real step (the same for
    every inner step of the adapter, new at the next real step).
    """

    def __init__(
        self,
        nets: _Nets,
        times: torch.Tensor,
        seed: int = 0,
        device: Any = "cpu",
        sampler: Callable[..., torch.Tensor] = sample_actions,
    ):
        self.nets, self.times, self.seed, self.device = nets, times, int(seed), device
        self.sampler = sampler
        self.generator = torch.Generator().manual_seed(self.seed)
        self.steps = 0  # real steps since reset: seeds the imagined rollouts' noise

    def reset(self, obs: torch.Tensor) -> None:
        self.generator = torch.Generator().manual_seed(self.seed)
        self.steps = 0

    def _noise(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator).to(self.device)

    @torch.inference_mode()
    def act(self, obs: torch.Tensor) -> torch.Tensor:
        n = self.nets
        obs = torch.as_tensor(obs, dtype=torch.float32).to(self.device)
        O, A = n.actor.obs_dim, n.actor.act_dim
        assert obs.dim() == 2 and obs.shape[1] == O, f"obs must be (B,{O}), got {tuple(obs.shape)}"
        a_u = self.sampler(n.phi(n.actor), n.obs_norm(obs), self.times, self._noise((len(obs), A)))
        self.steps += 1
        return n.act_center + n.act_half * a_u

    def observe(self, reward: torch.Tensor) -> None:
        pass

    # -- AdaptableActor ----------------------------------------------------------------------
    def adapt_parameters(self, which: str) -> dict[str, torch.Tensor]:
        f = self.nets.actor.f  # n_layers x (Linear, Mish), Linear
        params = {f"f.{k}": v for k, v in f.named_parameters()}
        if which == "all":
            return params
        if which == "head":
            last = str(len(f) - 1)
            return {k: v for k, v in params.items() if k.split(".")[1] == last}
        raise ValueError(f"gtp: which must be 'all' or 'head', got {which!r}")

    def imagine_start(self, n: int, context: int = 0) -> torch.Generator:
        """The noise of this real step's imagined actions (a generator seeded by the step)."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + self.steps)

    def _sample_with(
        self, obs: torch.Tensor, params: dict[str, torch.Tensor], noise: torch.Tensor
    ) -> torch.Tensor:
        """(B,N,O) raw obs, per-env params, (B,N,A) noise -> (B,N,A) actions in the bounds:
        the actor's sampler (eq. 15's by default) on the B*N rows, phi run with each env's
        weights."""
        n = self.nets
        B, N, A = noise.shape

        def phi(o: torch.Tensor, a: torch.Tensor, t: torch.Tensor, tau: torch.Tensor):
            per_env = (o.view(B, N, -1), a.view(B, N, A), t.view(B, N), tau.view(B, N))
            return per_env_call(n.actor, params, *per_env).reshape(B * N, A)

        obs_n = n.obs_norm(obs).reshape(B * N, -1)
        a_u = self.sampler(phi, obs_n, self.times, noise.reshape(B * N, A))
        return n.act_center + n.act_half * a_u.view(B, N, A)

    def differentiable_act(
        self, obs: torch.Tensor, params: dict[str, torch.Tensor], memory: torch.Generator
    ) -> tuple[torch.Tensor, torch.Generator]:
        noise = torch.randn((*obs.shape[:2], self.nets.actor.act_dim), generator=memory)
        return self._sample_with(obs, params, noise.to(obs.device)), memory

    def act_with(self, obs: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        obs = torch.as_tensor(obs, dtype=torch.float32).to(self.device)
        noise = self._noise((len(obs), self.nets.actor.act_dim))
        self.steps += 1
        return self._sample_with(obs[:, None], params, noise[:, None])[:, 0]


@hookimpl
def ipd_register_policy():
    return [GtpConfig]
