"""`qov`: the quasi-optimal value learner of IPD (paper sec. 3.1, eq. 1-6; sec. 4.4.1; table 2).

IQL (Kostrikov et al. 2021, https://arxiv.org/abs/2110.06169) with the paper's one change: V is
fitted with a Huber-expectile loss whose threshold is the 96th percentile of recently seen
``|e_V|``. Compare with ikostrikov/implicit_q_learning (the reference implementation) and CORL's
``algorithms/offline/iql.py``; the maths is in :mod:`ipd_plugins.value.losses`.

One gradient step on a batch (s, a, r, s', terminated) of the dataset::

    Q_hat(s,a) = min_e Q_target_e(s,a)                          (target pair, no gradient)
    e_V        = Q_hat(s,a) - V(s);  delta = 96th pct of the recent |e_V| window
    L_V        = mean L_2^{tau,Huber}(e_V)                        eq. 1-3
    L_Q        = mean_e (r + gamma (1 - terminated) V(s') - Q_e(s,a))^2   eq. 4
    L_pi       = -mean min(exp(beta e_V), 100) log pi(a|s)        eq. 5 (clipped weights)
    theta_hat <- (1 - 0.005) theta_hat + 0.005 theta                 soft target update

All three losses are computed from the same pre-update networks (as CORL's IQL, which computes
V(s') and the advantages before updating V) and touch disjoint parameters, so one backward pass
of ``L_V + L_Q + L_pi`` and one fused Adam step give exactly the three separate updates.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ipd_plugins.files import atomic_save, load_component, load_state_checked
from ipd_plugins.nn import EnsembleMLP, Normalizer, mixed_forward, mlp, per_env_call
from ipd_plugins.returns import reward_factor
from ipd_plugins.training import Checkpointer, TransitionSampler
from ipd_plugins.value.losses import (
    PercentileWindow,
    awr_loss,
    awr_weights,
    gaussian_log_prob,
    q_loss,
    soft_update,
    value_loss,
)
from registry import hookimpl
from registry.config import ComponentConfig
from registry.protocols import BuildContext, Logger

if TYPE_CHECKING:
    from ipd_plugins.data.dataset import TrajectoryDataset

__all__ = ["QOVConfig", "QOVLearner", "QOPActor", "bernoulli_drop_mask", "ipd_register_value"]

_FORMAT = "ipd.value.qov/1"
_STATS = (
    "v_loss",
    "q_loss",
    "actor_loss",
    "huber_delta",
    "adv_mean",
    "awr_weight_mean",
    "v_mean",
    "q_mean",
)


@dataclass
class QOVConfig(ComponentConfig):
    r"""Quasi-optimal value learner: double Q, Huber-expectile V, AWR policy (paper sec. 3.1).

    .. math::

        L_V(\psi) = E_D[\,|\tau - 1(e_V < 0)|\,\mathrm{Huber}_\delta(e_V)\,],
            \quad e_V = \min_{e} Q_{\hat\theta_e}(s,a) - V_\psi(s)      (eq. 1-3)

        L_Q(\theta) = E_D[(r + \gamma (1 - d) V_\psi(s') - Q_\theta(s,a))^2]     (eq. 4)

        L_\pi(\omega) = -E_D[\min(e^{\beta e_V}, w_{max}) \log \pi_\omega(a|s)]     (eq. 5)

    with ``delta`` the ``huber_percentile``-quantile of the last ``huber_window`` values of
    ``|e_V|``. The policy is a Gaussian over actions rescaled to [-1, 1], mean ``tanh(f(s))``
    (a tanh on the *mean*, not a squashed distribution: ikostrikov's ``NormalTanhPolicy`` with
    ``tanh_squash_distribution=False``, CORL's and d3rlpy's IQL) and a state-independent
    log-std clipped to [log_std_min, log_std_max]; samples are clipped to the bounds.

    Dropout (table 2: 0.01) sits after each hidden ReLU of the *actor* only, where the IQL
    reference code puts its ``dropout_rate``; the Q and V nets have none. The cosine schedule
    applies to the actor's learning rate only (sec. 4.4.1 "for the actor network").

    Args:
        tau: expectile :math:`\tau` of eq. 2 (table 2: 0.7).
        beta: AWR inverse temperature :math:`\beta` of eq. 5 (table 2: 3).
        huber_percentile: :math:`\delta` (table 2: 0.96): the Huber threshold is this quantile
            of the recent ``|e_V|``.
        huber_window: how many recent ``|e_V|`` values the percentile is taken over.
        gamma: discount :math:`\gamma` (table 2: 0.99).
        tau_target: soft target-update rate (sec. 4.4.1: 0.005).
        max_weight: clip of the AWR weights :math:`w_{max}` (IQL's 100; not in the paper).
        dropout: actor dropout (table 2: 0.01).
        hidden, n_layers: width and depth of the Q, V and actor MLPs (sec. 4.4.1: 2 x 256).
        lr, actor_lr: Adam learning rates (3e-4); ``actor_lr`` decays by a cosine over
            ``n_steps`` when ``cosine_actor_lr``.
        log_std_min, log_std_max: bounds of the policy's log-std.
        batch_size, n_steps: minibatch size and gradient steps (the runner overrides n_steps).
        normalize_obs: standardise observations with the dataset's mean/std (saved with the
            weights; callers always pass raw observations).
        reward_scale, normalize_rewards: rewards are multiplied by ``reward_scale`` and, when
            ``normalize_rewards``, by IQL's locomotion factor ``1000 / (max - min episode
            return)``. Q and V are *reported* in the dataset's own reward units either way.
        checkpoint_every, log_every: steps between resumable checkpoints / ``log`` calls.
    """

    kind: ClassVar[str] = "value"
    name: ClassVar[str] = "qov"

    # expectile of V over Q: 0.5 = mean (SARSA-like value of the behaviour policy), -> 1 = max
    # over in-support actions (more optimistic, less stable). Paper: 0.7.
    tau: float = 0.7
    # AWR inverse temperature: 0 -> behaviour cloning, larger -> greedier w.r.t. Q. Paper: 3.
    beta: float = 3.0
    # Huber threshold = this quantile of recent |e_V|; lower -> more errors in the linear
    # (outlier-robust) region, 1.0 -> the largest recent error (almost plain expectile).
    huber_percentile: float = 0.96
    # number of most recent |e_V| values the percentile is taken over (about 40 batches);
    # larger -> smoother, slower-moving threshold.
    huber_window: int = 10_000
    # discount; larger -> longer horizon, larger and slower-to-learn values.
    gamma: float = 0.99
    # Polyak rate of the target Q pair; larger -> faster but less stable targets.
    tau_target: float = 0.005
    # clip of exp(beta * advantage); lower -> closer to behaviour cloning on outliers.
    max_weight: float = 100.0
    # dropout after each hidden layer of the actor (0 disables); more -> more regularised actor.
    dropout: float = 0.01
    # hidden width of every MLP (Q, V, actor); smaller is faster, less expressive.
    hidden: int = 256
    # number of hidden layers of every MLP.
    n_layers: int = 2
    # Adam learning rate of Q and V.
    lr: float = 3e-4
    # initial Adam learning rate of the actor.
    actor_lr: float = 3e-4
    # cosine-anneal the actor's learning rate to 0 over n_steps (paper); off -> constant.
    cosine_actor_lr: bool = True
    # bounds of the policy's state-independent log-std.
    log_std_min: float = -5.0
    log_std_max: float = 2.0
    # minibatch size; larger -> smoother gradients, slower steps.
    batch_size: int = 256
    # gradient steps (paper-scale default; the runner sets it per profile).
    n_steps: int = 1_000_000
    # standardise observations with the dataset's statistics (recommended on).
    normalize_obs: bool = True
    # constant factor on rewards before training (reported values are unscaled back).
    reward_scale: float = 1.0
    # IQL's reward normalisation: rewards *= 1000 / (max - min episode return). beta=3 is tuned
    # for it (IQL, d3rlpy's IQL baseline); off, the advantages are in raw reward units and the
    # AWR weights saturate (hopper-medium, 30k steps: pi_QOP 2.3 off vs 33.2 on, normalised).
    normalize_rewards: bool = True
    # steps between resumable checkpoints in work_dir; smaller -> less lost work, more I/O.
    checkpoint_every: int = 5_000
    # steps between log(step, metrics) calls (and the averaging window of the metrics).
    log_every: int = 1_000

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(f"value 'qov': {what}")

        need(0.0 < self.tau < 1.0, f"tau (the expectile) must be in (0, 1), got {self.tau}")
        need(self.beta >= 0.0, f"beta (AWR inverse temperature) must be >= 0, got {self.beta}")
        need(
            0.0 < self.huber_percentile <= 1.0,
            f"huber_percentile must be a fraction in (0, 1] (0.96 = 96th percentile), "
            f"got {self.huber_percentile}",
        )
        need(self.huber_window >= 1, f"huber_window must be >= 1, got {self.huber_window}")
        need(0.0 <= self.gamma < 1.0, f"gamma must be in [0, 1), got {self.gamma}")
        need(0.0 < self.tau_target <= 1.0, f"tau_target must be in (0, 1], got {self.tau_target}")
        need(self.max_weight > 0.0, f"max_weight must be > 0, got {self.max_weight}")
        need(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        need(self.hidden >= 1, f"hidden (MLP width) must be >= 1, got {self.hidden}")
        need(self.n_layers >= 1, f"n_layers must be >= 1, got {self.n_layers}")
        need(
            self.lr > 0.0 and self.actor_lr > 0.0,
            f"learning rates must be > 0, got lr={self.lr}, actor_lr={self.actor_lr}",
        )
        need(
            self.log_std_min < self.log_std_max,
            f"log_std_min ({self.log_std_min}) must be below log_std_max ({self.log_std_max})",
        )
        need(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        need(self.n_steps >= 1, f"n_steps must be >= 1, got {self.n_steps}")
        need(self.reward_scale > 0.0, f"reward_scale must be > 0, got {self.reward_scale}")
        need(
            self.checkpoint_every >= 1,
            f"checkpoint_every must be >= 1, got {self.checkpoint_every}",
        )
        need(self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}")

    def create(self, ctx: BuildContext) -> QOVLearner:
        return QOVLearner(self, ctx)


def bernoulli_drop_mask(
    shape: tuple[int, ...], p: float, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """A dropout mask: each entry independently 0 with probability ``p``, else ``1 / (1 - p)``.

    Exactly the distribution of ``nn.Dropout``'s mask, drawn as a Bernoulli process through its
    geometric gaps (``gap = floor(log U / log(1 - p)) + 1``) so that it costs about ``n p``
    random numbers instead of ``n``: at p = 0.01 on a (256, 256) activation this is ~6x faster
    than ``bernoulli_`` on CPU, where the dropout mask was 13% of a qov step. Uses the global
    torch RNG (seeded and forked by :meth:`QOVLearner.fit`).
    """
    n = math.prod(shape)
    if p <= 0.0:
        return torch.ones(shape, device=device)
    if p >= 1.0:
        raise ValueError(f"dropout probability must be < 1, got {p}")
    log1mp = math.log1p(-p)
    chunk = int(n * p + 4.0 * math.sqrt(n * p) + 16)  # enough gaps to pass n almost always
    last, parts = -1, []
    while last < n:
        u = torch.rand(chunk, device=device).clamp_min_(1e-30)
        pos = torch.cumsum(torch.floor(torch.log(u) / log1mp).long() + 1, 0) + last
        parts.append(pos)
        last = int(pos[-1])
    pos = torch.cat(parts) if len(parts) > 1 else parts[0]
    mask = torch.full((n,), 1.0 / (1.0 - p), device=device)
    mask[pos[pos < n]] = 0.0
    return mask.view(shape)


class _Dropout(nn.Module):
    """``nn.Dropout`` with the mask from :func:`bernoulli_drop_mask` (same distribution)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p <= 0.0:
            return x
        return x * bernoulli_drop_mask(tuple(x.shape), self.p, x.device)


def _actor_mlp(in_dim: int, out_dim: int, hidden: int, n_layers: int, p: float) -> nn.Sequential:
    """n_layers x (Linear -> ReLU -> Dropout(p)) -> Linear (``ipd_plugins.nn.mlp``'s layout)."""
    layers: list[nn.Module] = []
    d = in_dim
    for _ in range(n_layers):
        layers += [nn.Linear(d, hidden), nn.ReLU()]
        if p > 0:
            layers.append(_Dropout(p))
        d = hidden
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


class _Nets(nn.Module):
    """Everything ``save`` writes: the networks, the observation normaliser and the scalings."""

    def __init__(self, cfg: QOVConfig, ctx: BuildContext):
        super().__init__()
        O, A = ctx.obs_dim, ctx.act_dim
        self.obs_norm = Normalizer(O)
        # the double-Q pair as ONE batched ensemble (E=2): one matmul per layer for both
        self.q = EnsembleMLP(
            2, O + A, 1, hidden=cfg.hidden, n_hidden=cfg.n_layers, layer_norm=False
        )
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)
        self.v = mlp(O, 1, hidden=cfg.hidden, n_hidden=cfg.n_layers)
        self.actor = _actor_mlp(O, A, cfg.hidden, cfg.n_layers, cfg.dropout)
        self.log_std = nn.Parameter(torch.zeros(A))  # state-independent
        low = torch.as_tensor(ctx.act_low, dtype=torch.float32)
        high = torch.as_tensor(ctx.act_high, dtype=torch.float32)
        self.register_buffer("act_center", (high + low) / 2)
        self.register_buffer("act_half", (high - low) / 2)
        self.register_buffer("reward_scale", torch.ones(()))  # training rewards = r * this


class QOVLearner:
    """The `qov` value learner (implements :class:`registry.protocols.ValueLearner`).

    Public methods take raw observations/actions in the environment's units; Q and V are in the
    dataset's reward units. ``q`` is the min of the *target* pair (the Q that trained V and the
    policy: smoother than the online pair) and is differentiable w.r.t. ``act`` (for the
    distilled policy's Q guidance, eq. 26) while no gradient ever reaches the Q weights.
    """

    def __init__(self, config: QOVConfig, ctx: BuildContext):
        low, high = np.asarray(ctx.act_low, float), np.asarray(ctx.act_high, float)
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(high > low)):
            raise ValueError(
                f"value 'qov' needs finite action bounds with high > low (the policy's mean is "
                f"tanh-rescaled into them); got act_low={ctx.act_low}, act_high={ctx.act_high}"
            )
        self.config = config
        self.ctx = ctx
        self.gamma = float(config.gamma)
        self.device = torch.device(ctx.device)
        with torch.random.fork_rng(devices=[]):  # seeded init without touching global RNG
            torch.manual_seed(ctx.seed)
            self.nets = _Nets(config, ctx).to(self.device)
        self.nets.eval()
        self.step = 0  # gradient steps done so far (restored on resume)

    # -- the protocol: queries -------------------------------------------------------------
    def _check(self, name: str, x: torch.Tensor, dim: int, what: str) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != dim:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"qov.{name}: {what} must be a (B,{dim}) tensor, got {shape}")
        return x.to(self.device, torch.float32)

    def _q_norm(self, obs_n: torch.Tensor, act_u: torch.Tensor, target: bool) -> torch.Tensor:
        """(B,O) normalised obs, (B,A) actions in [-1,1] -> (E,B) Q in training reward units."""
        x = torch.cat([obs_n, act_u], -1)
        net = self.nets.q_target if target else self.nets.q
        return net(x.expand(2, -1, -1)).squeeze(-1)  # (E,B,1) -> (E,B)

    def q(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """(B,O), (B,A) -> (B,): min over the target Q pair, in the dataset's reward units."""
        obs = self._check("q", obs, self.ctx.obs_dim, "obs")
        act = self._check("q", act, self.ctx.act_dim, "act")
        if obs.shape[0] != act.shape[0]:
            raise ValueError(f"qov.q: obs has {obs.shape[0]} rows but act has {act.shape[0]}")
        n = self.nets
        act_u = (act - n.act_center) / n.act_half
        return self._q_norm(n.obs_norm(obs), act_u, target=True).min(0).values / n.reward_scale

    @torch.no_grad()
    def v(self, obs: torch.Tensor) -> torch.Tensor:
        """(B,O) -> (B,): V(s), in the dataset's reward units."""
        obs = self._check("v", obs, self.ctx.obs_dim, "obs")
        n = self.nets
        return n.v(n.obs_norm(obs)).squeeze(-1) / n.reward_scale

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """(B,O) -> (B,A): the policy's mean (or a sample clipped to the bounds)."""
        obs = self._check("act", obs, self.ctx.obs_dim, "obs")
        n = self.nets
        was_training = n.actor.training
        n.actor.eval()
        mean = torch.tanh(n.actor(n.obs_norm(obs)))  # (B,A) in [-1,1]
        n.actor.train(was_training)
        if not deterministic:
            std = n.log_std.clamp(self.config.log_std_min, self.config.log_std_max).exp()
            mean = (mean + std * torch.randn_like(mean)).clamp(-1.0, 1.0)
        return n.act_center + n.act_half * mean

    def actor(self) -> QOPActor:
        """pi_QOP's mean as an evaluation :class:`~registry.protocols.Actor` (adaptable)."""
        return QOPActor(self)

    # -- the protocol: persistence ---------------------------------------------------------
    def save(self, path: Path) -> None:
        """Weights, normaliser, scalings and the config, weights-only (``atomic_save``)."""
        atomic_save(
            {
                "format": _FORMAT,
                "obs_dim": self.ctx.obs_dim,
                "act_dim": self.ctx.act_dim,
                "step": self.step,
                "config": self.config.to_dict(),
                "state": self.nets.state_dict(),
            },
            path,
        )

    def load(self, path: Path) -> None:
        blob = load_component(path, _FORMAT, "qov", (self.ctx.obs_dim, self.ctx.act_dim))
        sizes = {"hidden": self.config.hidden, "n_layers": self.config.n_layers}
        load_state_checked(self.nets, blob, path, "qov", sizes)
        self.step = int(blob.get("step", 0))
        self.nets.eval()

    # -- training ------------------------------------------------------------------------
    def _losses(
        self,
        obs: torch.Tensor,
        act: torch.Tensor,
        rew: torch.Tensor,
        next_obs: torch.Tensor,
        not_done: torch.Tensor,
        delta_fn: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch -> (total loss, detached (len(_STATS),) statistics). Inputs pre-normalised."""
        cfg, n = self.config, self.nets

        def fwd(net: nn.Module, inp: torch.Tensor) -> torch.Tensor:  # bf16 hidden layers
            return mixed_forward(net, inp, self.ctx.precision)

        x = torch.cat([obs, act], -1).expand(2, -1, -1)  # (E,B,O+A), shared by both members
        with torch.no_grad():
            q_hat = fwd(n.q_target, x).squeeze(-1).min(0).values  # (B,) min of the target pair
            next_v = fwd(n.v, next_obs).squeeze(-1)  # (B,)
        v = fwd(n.v, obs).squeeze(-1)  # (B,)
        e_v = q_hat - v.detach()  # (B,) the value error, also the AWR advantage
        delta = delta_fn(e_v.abs())
        l_v = value_loss(q_hat, v, cfg.tau, delta)  # eq. 1-3
        q_pred = fwd(n.q, x).squeeze(-1)  # (E,B)
        l_q = q_loss(q_pred, rew, not_done, next_v, cfg.gamma)  # eq. 4
        w = awr_weights(e_v, cfg.beta, cfg.max_weight)  # eq. 5 weights (clipped)
        mean = torch.tanh(fwd(n.actor, obs))  # (B,A)
        log_std = n.log_std.clamp(cfg.log_std_min, cfg.log_std_max).expand_as(mean)
        l_pi = awr_loss(gaussian_log_prob(act, mean, log_std), w)  # eq. 5
        stats = torch.stack([l_v, l_q, l_pi, delta, e_v.mean(), w.mean(), v.mean(), q_hat.mean()])
        return l_v + l_q + l_pi, stats.detach()

    def fit(
        self, dataset: TrajectoryDataset, work_dir: Path | None = None, log: Logger | None = None
    ) -> dict[str, float]:
        """Train for ``config.n_steps`` gradient steps; resumes from ``work_dir`` if it holds a
        checkpoint. Returns the metrics averaged over the last ``log_every`` steps.

        Every random draw (minibatches, dropout) comes from ``ctx.seed`` (the global torch RNG is
        forked, so the caller's is left alone), so a fit is reproducible and an interrupted fit
        resumed from its checkpoint ends with the same weights as an uninterrupted one. Without
        ``work_dir`` a second call trains ``n_steps`` more from the current weights with a fresh
        optimiser.
        """
        forked = [] if self.device.type == "cpu" else [self.device]
        with torch.random.fork_rng(devices=forked):
            torch.manual_seed(self.ctx.seed)
            return self._fit(dataset, work_dir, log)

    def _fit(
        self, dataset: TrajectoryDataset, work_dir: Path | None, log: Logger | None
    ) -> dict[str, float]:
        cfg, n, dev = self.config, self.nets, self.device
        if (dataset.obs_dim, dataset.act_dim) != (self.ctx.obs_dim, self.ctx.act_dim):
            raise ValueError(
                f"qov.fit: dataset has obs_dim={dataset.obs_dim}, act_dim={dataset.act_dim}; the "
                f"learner was built for {self.ctx.obs_dim}, {self.ctx.act_dim}"
            )
        if cfg.normalize_obs:
            n.obs_norm.fit(dataset.observations)
        n.reward_scale.fill_(reward_factor(dataset, cfg.reward_scale, cfg.normalize_rewards))

        gen = torch.Generator().manual_seed(self.ctx.seed)
        sampler = TransitionSampler(dataset, device=str(dev), generator=gen)
        with torch.no_grad():  # pre-normalise once: no per-step preprocessing
            sampler.obs = n.obs_norm(sampler.obs)
            sampler.next_obs = n.obs_norm(sampler.next_obs)
            sampler.act = (sampler.act - n.act_center) / n.act_half
            sampler.rew = sampler.rew * n.reward_scale
            sampler.done = 1.0 - sampler.done  # now "not done": 1 - terminated

        critic = list(n.q.parameters()) + list(n.v.parameters())
        actor = list(n.actor.parameters()) + [n.log_std]
        optim = _adam(
            [{"params": critic, "lr": cfg.lr}, {"params": actor, "lr": cfg.actor_lr}], dev
        )
        total = max(1, cfg.n_steps)
        actor_sched = (
            (lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, total) / total)))
            if cfg.cosine_actor_lr
            else (lambda s: 1.0)
        )
        sched = torch.optim.lr_scheduler.LambdaLR(optim, [lambda s: 1.0, actor_sched])
        window = PercentileWindow(cfg.huber_window, cfg.huber_percentile, device=dev)

        ckpt = Checkpointer(work_dir, every=cfg.checkpoint_every, name="qov_train_state")
        objects = {"nets": n, "optim": optim, "sched": sched, "window": window}
        extra: dict[str, Any] = {}
        start = ckpt.restore(objects, extra)
        if "generator" in extra:
            gen.set_state(extra["generator"])
        self.step = start

        def delta_fn(abs_e: torch.Tensor) -> torch.Tensor:
            window.push(abs_e)
            return window.threshold()

        stats_names = list(_STATS)
        acc = torch.zeros(len(stats_names), device=dev)
        acc_n = 0
        last: dict[str, float] = {}
        n.train()
        n.q_target.eval()
        q_params, qt_params = list(n.q.parameters()), list(n.q_target.parameters())
        t0 = time.perf_counter()
        bar = tqdm(
            total=cfg.n_steps,
            initial=min(start, cfg.n_steps),
            desc="qov",
            disable=None,
            leave=False,
        )
        try:
            for step in range(start + 1, cfg.n_steps + 1):
                b = sampler.sample(cfg.batch_size)
                loss, stats = self._losses(
                    b["obs"], b["act"], b["rew"], b["next_obs"], b["done"], delta_fn
                )
                optim.zero_grad(set_to_none=True)
                loss.backward()
                optim.step()
                sched.step()
                soft_update(qt_params, q_params, cfg.tau_target)
                acc += stats
                acc_n += 1
                self.step = step
                if step % cfg.log_every == 0 or step == cfg.n_steps:
                    last = dict(zip(stats_names, (acc / acc_n).tolist(), strict=True))
                    last["actor_lr"] = float(optim.param_groups[1]["lr"])
                    acc.zero_()
                    acc_n = 0
                    if not all(math.isfinite(v) for v in last.values()):
                        raise FloatingPointError(f"qov: non-finite losses at step {step}: {last}")
                    if log is not None:
                        log(step, dict(last))
                    bar.set_postfix(v=last["v_mean"], q_loss=last["q_loss"], refresh=False)
                bar.update(1)
                if step % cfg.checkpoint_every == 0 or step == cfg.n_steps:
                    ckpt.maybe_save(step, objects, {"generator": gen.get_state()}, force=True)
        finally:
            bar.close()
            n.eval()
        elapsed = time.perf_counter() - t0
        trained = max(0, cfg.n_steps - start)
        if acc_n:
            last = dict(zip(stats_names, (acc / acc_n).tolist(), strict=True))
        metrics = dict(last)
        metrics.update(
            steps=float(self.step),
            steps_trained=float(trained),
            steps_per_sec=trained / elapsed if trained and elapsed > 0 else 0.0,
            reward_scale=float(n.reward_scale),
        )
        return metrics


class QOPActor:
    """pi_QOP's deterministic action (its mean) in B environments; memoryless.

    Implements :class:`registry.protocols.AdaptableActor` for inference-time adaptation: the
    adapted weights are the actor MLP's ("all") or its output layer's ("head"); the
    observation normaliser, the tanh and the rescaling to the bounds stay as trained.
    """

    def __init__(self, learner: QOVLearner):
        self.learner = learner

    def reset(self, obs: torch.Tensor) -> None:
        pass

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        return self.learner.act(torch.as_tensor(obs, dtype=torch.float32), deterministic=True)

    def observe(self, reward: torch.Tensor) -> None:
        pass

    # -- AdaptableActor ----------------------------------------------------------------------
    def adapt_parameters(self, which: str) -> dict[str, torch.Tensor]:
        actor = self.learner.nets.actor  # n_layers x (Linear, ReLU[, Dropout]), Linear
        params = dict(actor.named_parameters())
        if which == "all":
            return params
        if which == "head":
            last = str(len(actor) - 1)  # the output Linear
            return {k: v for k, v in params.items() if k.split(".")[0] == last}
        raise ValueError(f"pi_QOP: which must be 'all' or 'head', got {which!r}")

    def imagine_start(self, n: int, context: int = 0) -> None:
        return None

    def differentiable_act(
        self, obs: torch.Tensor, params: dict[str, torch.Tensor], memory: Any
    ) -> tuple[torch.Tensor, None]:
        """(B,N,O), params (B,...) -> (B,N,A) ``center + half tanh(f_psi(norm(s)))``."""
        n = self.learner.nets
        if n.actor.training:
            raise RuntimeError("pi_QOP adapts in eval mode (no dropout); call nets.eval()")
        mean = torch.tanh(per_env_call(n.actor, params, n.obs_norm(obs)))  # (B,N,A) in [-1,1]
        return n.act_center + n.act_half * mean, None

    def act_with(self, obs: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        obs = torch.as_tensor(obs).to(self.learner.device)
        return self.differentiable_act(obs[:, None], params, None)[0][:, 0]


def _adam(groups: list[dict[str, Any]], device: torch.device) -> torch.optim.Adam:
    """Adam with the fused kernel where torch has one for ``device`` (CPU, CUDA), else foreach."""
    try:
        return torch.optim.Adam(groups, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(groups, foreach=True)


@hookimpl
def ipd_register_value() -> list[type[ComponentConfig]]:
    return [QOVConfig]
