"""``pe``: probabilistic-ensemble world model with a separate reward model (paper sec. 3.2).

Paper: "IPD: Boosting Sequential Policy with Imaginary Planning Distillation in Offline
Reinforcement Learning", sec. 3.2 eq. 7 (ensemble of Gaussians), eq. 13-16 (losses) and
table 2 (Sigma_reg = exp(-4.5) I, gamma_0 = 1, T = 1e5, alpha_c = alpha_r = 0.5, lr 3e-4,
400-unit LayerNorm/ReLU MLPs, log-variance in [-10, 0.2]). The per-member Gaussian NLL and the
soft log-variance bounds follow PETS (Chua et al. 2018) and MOPO (Yu et al. 2020); drawing a
random member per row in imagination follows MOPO/MBPO.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ipd_plugins.files import atomic_save, safe_load
from ipd_plugins.nn import EnsembleMLP, Normalizer
from ipd_plugins.training import Checkpointer, TransitionSampler
from ipd_plugins.world_models.losses import (
    ensemble_mean_cov,
    gamma_exp,
    gaussian_nll,
    reparameterised_mean,
    reward_loss,
    soft_bound_logvar,
    transition_consistency_loss,
)
from ipd_plugins.world_models.termination import (
    TerminationClassifier,
    TerminationFn,
    known_termination_rule,
    never_terminates,
    termination_loss,
)
from registry.config import ComponentConfig
from registry.hookspecs import hookimpl
from registry.protocols import BuildContext, Logger, WorldModelSample, WorldModelStep

if TYPE_CHECKING:
    from ipd_plugins.data.dataset import TrajectoryDataset

__all__ = ["PEConfig", "ProbabilisticEnsemble"]

_SAMPLE_MODES = ("member", "member_mean", "ensemble_mean")
_TERMINATION_MODES = ("auto", "rule", "learned", "none")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclasses.dataclass
class PEConfig(ComponentConfig):
    r"""Ensemble of E Gaussian MLPs over the next state plus a reward MLP (eq. 7, 13-16).

    Each member e predicts the standardised delta :math:`(s' - s - m_\Delta)/\sigma_\Delta` as
    :math:`N(\mu_e, \mathrm{diag}\,\sigma^2_e)` from the standardised :math:`(s, a)`. Training
    minimises

    .. math::

        L = \alpha_c L_c + \alpha_r L_r + w_{nll} L_{nll}

        L_c = \|\mu_{PE} - y\|^2 + \|\gamma_{exp}(k)(\Sigma_{PE} - \Sigma_{reg})\|^2,\quad
        \mu_{PE} = \tfrac1E\sum_e \mu_e + \Sigma_{PE}^{1/2}\epsilon,\quad
        \Sigma_{PE} = \tfrac1E\sum_e \Sigma_e \quad\text{(eq. 13-14)}

        \gamma_{exp}(k) = \gamma_0 e^{-k/T}\ \text{(eq. 15)},\qquad
        L_r = |R(s,a) - r|^2\ \text{(eq. 16)}

        L_{nll} = \tfrac1E\sum_e \tfrac12\big[(y-\mu_e)^2/\sigma_e^2 + \log\sigma_e^2\big]

    Why the NLL term: eq. 14 alone fits only the *ensemble mean*, and in expectation
    :math:`E\|\mu_{PE} - y\|^2 = \|\bar\mu - y\|^2 + \mathrm{tr}\,\Sigma_{PE}`, so once the
    regulariser has decayed it drives every variance to its lower bound, leaving no
    per-member variance for the GJS metric (eq. 8-11) and letting members drift as long as their
    average fits. The per-member NLL (as PETS/MOPO train their ensembles) fits each member's mean
    and variance to the data; ``nll_weight = 0`` gives the paper's loss alone. With both terms
    the stationary variance is :math:`v = (\sqrt{1 + 4r^2} - 1)/2` for a squared residual
    :math:`r^2` (normalised units): close to :math:`r^2` when the noise is small compared with
    the spread of the deltas, biased low when it is not.

    All members see the same minibatch (eq. 14 averages them on the same (s, a)); they differ by
    their initialisation. The reward model is a separate ``reward_members``-member network of the
    same shape with its own optimiser (trained "apart", paper sec. 4.4.2); its prediction is the
    mean over its members. Default 1 member: the reward enters only as a point estimate (eq. 16
    is an MSE), so more members cost compute for little. Log-variances are kept in
    ``[min_logvar, max_logvar]`` by PETS' soft bounds (fixed, not learned), in normalised units.
    Early stopping keeps, per member, the weights with the lowest held-out MSE (as MBPO) and
    stops when nothing improved by 1% for ``patience`` evaluations.

    Args:
        n_members: E, ensemble size (paper: 3).
        hidden: units per hidden layer (paper: 400).
        n_hidden: hidden layers per member (Linear-LayerNorm-ReLU blocks).
        reward_members: members of the reward network (its prediction is their mean).
        alpha_c: weight of L_c (eq. 16; paper 0.5).
        alpha_r: weight of L_r (eq. 16; paper 0.5).
        nll_weight: weight of the per-member Gaussian NLL (not in the paper; see above).
        log_sigma_reg: log of the diagonal of Sigma_reg (paper: -4.5).
        gamma_0: initial regulariser weight gamma_0 (eq. 15; paper 1.0).
        decay_T: decay rate T of gamma_exp (eq. 15; paper 1e5).
        min_logvar: lower log-variance bound (paper: -10).
        max_logvar: upper log-variance bound (paper: 0.2).
        lr: Adam learning rate of every network (paper 3e-4).
        n_steps: gradient steps.
        batch_size: minibatch rows.
        holdout_fraction: share of transitions held out for evaluation and early stopping.
        max_holdout_eval: held-out rows scored at each periodic evaluation.
        eval_every: steps between held-out evaluations.
        patience: evaluations without a 1% improvement before stopping (0: never stop early).
        keep_best: end with each member's best held-out weights (else the last ones).
        sample: how ``step`` draws s': "member" (a random member per row, then its Gaussian:
            an exact sample of the mixture eq. 7), "member_mean" (a random member's mean),
            "ensemble_mean" (the average mean, deterministic).
        termination: "auto" (the env's rule when known, else a classifier when the data has
            terminations, else never), "rule", "learned" or "none".
        termination_hidden: width of the termination classifier.
        termination_layers: hidden layers of the termination classifier.
        train_dtype: "float32" or "bfloat16" (autocast) for training.
        step_dtype: "float32" or "bfloat16" (autocast) for ``step``.
        checkpoint_every: steps between resumable checkpoints when ``fit`` gets a work_dir.
    """

    kind: ClassVar[str] = "world_model"
    name: ClassVar[str] = "pe"

    # E: more members -> better epistemic estimate, linearly more compute
    n_members: int = 3
    # units per hidden layer; wider -> more capacity, quadratically more compute
    hidden: int = 400
    # hidden layers per member ("multiple" in the paper; 4 as in the stack notes)
    n_hidden: int = 4
    # reward-network members (prediction = their mean); 1 is cheapest
    reward_members: int = 1
    # weight of the transition-consistency loss L_c (eq. 14)
    alpha_c: float = 0.5
    # weight of the reward loss L_r (eq. 16)
    alpha_r: float = 0.5
    # weight of the per-member Gaussian NLL; 0 -> the paper's loss only (variances collapse)
    nll_weight: float = 1.0
    # Sigma_reg = exp(log_sigma_reg) I, the early-training covariance target (normalised units)
    log_sigma_reg: float = -4.5
    # initial regulariser weight; higher -> covariances held nearer Sigma_reg for longer
    gamma_0: float = 1.0
    # decay rate of the regulariser weight in steps; higher -> slower decay
    decay_T: float = 1e5
    # log-variance bounds (normalised units); widen the lower one for near-deterministic envs
    min_logvar: float = -10.0
    max_logvar: float = 0.2
    # Adam learning rate (all networks)
    lr: float = 3e-4
    # gradient steps; more -> better fit, longer training
    n_steps: int = 100_000
    # minibatch rows
    batch_size: int = 256
    # share of transitions held out; 0 -> no held-out metrics and no early stopping
    holdout_fraction: float = 0.1
    # held-out rows scored at each evaluation (the final metrics use the whole split)
    max_holdout_eval: int = 10_000
    # steps between held-out evaluations; lower -> finer early stopping, more overhead
    eval_every: int = 1000
    # evaluations without improvement before stopping; 0 -> always run n_steps
    patience: int = 10
    # end with each member's best held-out weights (MBPO) rather than the last ones
    keep_best: bool = True
    # next-state draw in step(): "member" | "member_mean" | "ensemble_mean"
    sample: str = "member"
    # termination source: "auto" | "rule" | "learned" | "none"
    termination: str = "auto"
    # termination-classifier width / depth (used when the termination is learned)
    termination_hidden: int = 256
    termination_layers: int = 2
    # autocast dtype for training / for step(); "bfloat16" is faster on CPUs with bf16 support
    train_dtype: str = "float32"
    step_dtype: str = "float32"
    # steps between resumable checkpoints (only with a work_dir)
    checkpoint_every: int = 5000

    def __post_init__(self) -> None:
        positive = ("n_members", "hidden", "reward_members", "n_steps", "batch_size", "eval_every")
        for key in positive:
            if getattr(self, key) < 1:
                raise ValueError(f"pe.{key} must be >= 1, got {getattr(self, key)}")
        if self.n_hidden < 0:
            raise ValueError(f"pe.n_hidden must be >= 0, got {self.n_hidden}")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ValueError(f"pe.holdout_fraction must be in [0, 1), got {self.holdout_fraction}")
        if self.min_logvar >= self.max_logvar:
            raise ValueError(
                f"pe.min_logvar ({self.min_logvar}) must be below pe.max_logvar ({self.max_logvar})"
            )
        if self.sample not in _SAMPLE_MODES:
            raise ValueError(f"pe.sample must be one of {_SAMPLE_MODES}, got {self.sample!r}")
        if self.termination not in _TERMINATION_MODES:
            raise ValueError(
                f"pe.termination must be one of {_TERMINATION_MODES}, got {self.termination!r}"
            )
        for key in ("train_dtype", "step_dtype"):
            if getattr(self, key) not in _DTYPES:
                raise ValueError(
                    f"pe.{key} must be one of {tuple(_DTYPES)}, got {getattr(self, key)!r}"
                )

    def create(self, ctx: BuildContext) -> ProbabilisticEnsemble:
        return ProbabilisticEnsemble(self, ctx)


class _Modules(nn.Module):
    """Every tensor the world model owns (networks and normalisers), for one state_dict."""

    def __init__(self, cfg: PEConfig, obs_dim: int, act_dim: int):
        super().__init__()
        in_dim = obs_dim + act_dim
        self.in_norm = Normalizer(in_dim)  # over [s, a]
        self.delta_norm = Normalizer(obs_dim)  # over s' - s
        self.rew_norm = Normalizer(1)
        # (B, O+A) -> (E, B, 2O): [mean | raw log-variance] of the standardised delta
        self.dynamics = EnsembleMLP(cfg.n_members, in_dim, 2 * obs_dim, cfg.hidden, cfg.n_hidden)
        # (B, O+A) -> (R, B, 1): standardised reward, trained apart (own optimiser)
        self.reward = EnsembleMLP(cfg.reward_members, in_dim, 1, cfg.hidden, cfg.n_hidden)
        self.termination = TerminationClassifier(
            obs_dim, act_dim, cfg.termination_hidden, cfg.termination_layers
        )


class ProbabilisticEnsemble:
    """The ``pe`` world model; implements :class:`registry.protocols.WorldModel`."""

    def __init__(self, config: PEConfig, ctx: BuildContext):
        self.config = config
        self.ctx = ctx
        self.device = torch.device(ctx.device)
        self.obs_dim, self.act_dim = ctx.obs_dim, ctx.act_dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed)
            self.modules = _Modules(config, ctx.obs_dim, ctx.act_dim).to(self.device)
        self.env_id = ctx.env_id
        # run.precision bf16 turns autocast on for training and stepping; the options still can
        bf16 = ctx.precision == "bf16"
        self.train_dtype = "bfloat16" if bf16 else config.train_dtype
        self.step_dtype = "bfloat16" if bf16 else config.step_dtype
        self.termination_mode = "none"
        self._set_termination(self._resolve_termination(ctx.env_id, has_terminations=False))

    # -- termination -------------------------------------------------------------------------
    def _resolve_termination(self, env_id: str | None, has_terminations: bool) -> str:
        mode = self.config.termination
        rule = known_termination_rule(env_id, self.obs_dim)
        if mode == "rule" and rule is None:
            raise ValueError(
                f"pe.termination='rule' but no termination rule is known for env {env_id!r}; "
                "use 'learned', 'none' or 'auto'"
            )
        if mode == "auto":
            return "rule" if rule is not None else ("learned" if has_terminations else "none")
        return mode

    def _set_termination(self, mode: str) -> None:
        self.termination_mode = mode
        rule = known_termination_rule(self.env_id, self.obs_dim) if mode == "rule" else None
        self._rule: TerminationFn | None = rule

    def _done(self, obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        if self.termination_mode == "rule":
            assert self._rule is not None
            return self._rule(next_obs)
        if self.termination_mode == "learned":
            return self.modules.termination.predict(obs, act, next_obs)
        return never_terminates(next_obs)

    # -- forward pieces ----------------------------------------------------------------------
    def _dynamics(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, O+A) standardised -> mean, log-variance (E,B,O) of the standardised delta."""
        out = self.modules.dynamics(x).float()
        mean, raw = out.split(self.obs_dim, dim=-1)
        return mean, soft_bound_logvar(raw, self.config.min_logvar, self.config.max_logvar)

    def _autocast(self, dtype: str) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=_DTYPES[dtype], enabled=dtype != "float32")

    def _check_inputs(self, obs: torch.Tensor, act: torch.Tensor) -> None:
        if obs.dim() != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(f"obs must be (B, {self.obs_dim}), got {tuple(obs.shape)}")
        if act.dim() != 2 or act.shape != (obs.shape[0], self.act_dim):
            raise ValueError(
                f"act must be (B, {self.act_dim}) with B={obs.shape[0]} rows like obs, "
                f"got {tuple(act.shape)}"
            )

    @staticmethod
    def _randn(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device):
        if generator is None:
            return torch.randn(shape, device=device)
        return torch.randn(shape, generator=generator, device=generator.device).to(device)

    # -- WorldModel protocol -----------------------------------------------------------------
    def step(
        self, obs: torch.Tensor, act: torch.Tensor, generator: torch.Generator | None = None
    ) -> WorldModelStep:
        """(B,O), (B,A) -> one imagined transition per row (all in raw units).

        ``member_mean``/``member_var`` (E,B,O) are each member's Gaussian over s' (the delta
        de-standardised and added to s). ``next_obs`` follows ``config.sample``; ``reward`` is
        the reward model's prediction for (s, a); ``done`` comes from the termination rule or
        classifier. Runs under ``torch.inference_mode`` (outputs carry no gradient).
        """
        self._check_inputs(obs, act)
        m = self.modules
        with torch.inference_mode():
            obs = obs.to(self.device, torch.float32)
            act = act.to(self.device, torch.float32)
            B, E = obs.shape[0], self.config.n_members
            with self._autocast(self.step_dtype):
                x = m.in_norm(torch.cat([obs, act], -1))
                mean_n, logvar = self._dynamics(x)  # (E,B,O) each
                rew_n = m.reward(x).float().mean(0)  # (B,1)
            std = m.delta_norm.std
            member_mean = obs + mean_n * std + m.delta_norm.mean  # (E,B,O)
            member_var = logvar.exp() * std.square()  # (E,B,O)
            if self.config.sample == "ensemble_mean":
                next_obs = member_mean.mean(0)
            else:
                if generator is None:
                    k = torch.randint(E, (B,), device=self.device)
                else:
                    k = torch.randint(E, (B,), generator=generator, device=generator.device)
                    k = k.to(self.device)
                rows = torch.arange(B, device=self.device)
                next_obs = member_mean[k, rows]  # (B,O)
                if self.config.sample == "member":
                    noise = self._randn((B, self.obs_dim), generator, self.device)
                    next_obs = next_obs + member_var[k, rows].sqrt() * noise
            reward = m.rew_norm.inverse(rew_n).squeeze(-1)  # (B,)
            with self._autocast(self.step_dtype):
                done = self._done(obs, act, next_obs)
        return WorldModelStep(next_obs, reward, done, member_mean, member_var)

    # -- DifferentiableWorldModel protocol (inference-time adaptation, the `dwm` adapter) ------
    @property
    def noise_dim(self) -> int:
        """D of :meth:`rsample_step`: one number for the member, O for the Gaussian draw."""
        return self.obs_dim + 1

    def rsample_step(
        self, obs: torch.Tensor, act: torch.Tensor, noise: torch.Tensor
    ) -> WorldModelSample:
        """(B,O), (B,A), (B,1+O) standard normals -> s', r differentiable in (obs, act).

        :meth:`step`'s draw written as a function of fixed noise (the reparameterisation):
        member ``k = floor(Phi(noise[:, 0]) E)`` (uniform over the E members), then
        ``s' = s + (mu_k + sigma_k noise[:, 1:]) std_delta + mean_delta`` for ``sample="member"``
        (``mu_k`` alone for "member_mean", the members' average for "ensemble_mean"); ``r`` is
        the reward model's prediction for (s, a). The member choice is piecewise constant (no
        gradient), the rest is differentiable. Runs in the inputs' dtype, without autocast
        (``step_dtype`` does not apply) and outside ``inference_mode``; ``done`` carries no
        gradient. The weights are only read: gradients to them are never taken here.
        """
        self._check_inputs(obs, act)
        if noise.shape != (obs.shape[0], self.noise_dim):
            raise ValueError(
                f"pe.rsample_step: noise must be (B, {self.noise_dim}) = (B, 1 + obs_dim) for "
                f"B={obs.shape[0]}, got {tuple(noise.shape)}"
            )
        m, cfg = self.modules, self.config
        x = m.in_norm(torch.cat([obs, act], -1))  # (B, O+A) standardised
        if cfg.sample == "ensemble_mean":
            delta_n = m.dynamics(x)[..., : self.obs_dim].mean(0)  # (B,O)
        else:
            E = cfg.n_members
            k = (torch.special.ndtr(noise[:, 0].detach()) * E).long().clamp_(0, E - 1)  # (B,)
            delta_n, raw = self._member_forward(x, k).split(self.obs_dim, dim=-1)  # (B,O) each
            if cfg.sample == "member":
                logvar = soft_bound_logvar(raw, cfg.min_logvar, cfg.max_logvar)
                delta_n = delta_n + (0.5 * logvar).exp() * noise[:, 1:]
        next_obs = obs + delta_n * m.delta_norm.std + m.delta_norm.mean  # (B,O) raw units
        reward = m.rew_norm.inverse(m.reward(x).mean(0)).squeeze(-1)  # (B,)
        with torch.no_grad():
            done = self._done(obs.detach(), act.detach(), next_obs.detach())
        return WorldModelSample(next_obs, reward, done)

    def _member_forward(self, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """(B, O+A) standardised inputs, (B,) a member per row -> (B, 2O) that member's output.

        Each row goes through its own member only (not all E): rows are grouped by member into
        an (E, C, O+A) grid, C the largest group, zero-padded (LayerNorm is per row, so padding
        changes no other row), and gathered back. A third of the all-members cost at E = 3.
        """
        B, E = x.shape[0], self.config.n_members
        counts = torch.bincount(k, minlength=E)  # (E,)
        order = torch.argsort(k, stable=True)  # rows grouped by member
        first = torch.cumsum(counts, 0) - counts  # (E,) each group's first place in `order`
        slot = torch.empty_like(k)
        slot[order] = torch.arange(B, device=x.device) - first[k[order]]  # place in its group
        grid = x.new_zeros(E, int(counts.max()), x.shape[1])
        grid = torch.index_put(grid, (k, slot), x)  # out of place: gradients reach x
        return self.modules.dynamics(grid)[k, slot]  # (E, C, 2O) -> (B, 2O)

    def fit(
        self, dataset: TrajectoryDataset, work_dir: Path | None = None, log: Logger | None = None
    ) -> dict[str, float]:
        """Train on ``dataset`` (eq. 13-16 + NLL); returns held-out metrics in raw units.

        Metrics: ``holdout_obs_mse`` (ensemble-mean next state vs the true one, mean over dims),
        ``holdout_obs_mse_norm`` (the same on standardised deltas), ``holdout_reward_mse``,
        ``holdout_nll``, ``holdout_var_ratio`` (mean predicted variance / mean squared member
        residual: 1 when calibrated), and with a learned termination ``termination_accuracy``
        and ``termination_base_rate`` (accuracy of always predicting the majority class).
        """
        cfg, m, dev = self.config, self.modules, self.device
        if dataset.obs_dim != self.obs_dim or dataset.act_dim != self.act_dim:
            raise ValueError(
                f"world model built for obs_dim={self.obs_dim}, act_dim={self.act_dim}; the "
                f"dataset has obs_dim={dataset.obs_dim}, act_dim={dataset.act_dim}"
            )
        if self.env_id is None:
            self.env_id = dataset.env_id
        self._set_termination(
            self._resolve_termination(self.env_id, bool(np.any(dataset.terminations)))
        )
        learn_term = self.termination_mode == "learned"

        # -- split and normalise (deterministic in the seed, so a resumed run matches) ------------
        n = dataset.n_steps
        perm = np.random.default_rng(self.ctx.seed).permutation(n)
        n_hold = int(round(cfg.holdout_fraction * n)) if n >= 10 else 0
        hold_idx, train_idx = perm[:n_hold], perm[n_hold:]

        def part(idx: np.ndarray) -> SimpleNamespace:
            return SimpleNamespace(
                observations=dataset.observations[idx],
                actions=dataset.actions[idx],
                rewards=dataset.rewards[idx],
                next_observations=dataset.next_observations[idx],
                terminations=dataset.terminations[idx],
            )

        train, hold = part(train_idx), part(hold_idx)
        m.in_norm.fit(np.concatenate([train.observations, train.actions], 1))
        m.delta_norm.fit(train.next_observations - train.observations)
        m.rew_norm.fit(train.rewards[:, None])
        m.termination.norm.fit(
            np.concatenate([train.observations, train.actions, train.next_observations], 1)
        )
        gen = torch.Generator().manual_seed(self.ctx.seed)
        sampler = TransitionSampler(train, device=str(dev), generator=gen)
        hold_t = TransitionSampler(hold, device=str(dev)) if n_hold else None

        # -- optimisers and resumable state --------------------------------------------------------
        opt_dyn = torch.optim.Adam(m.dynamics.parameters(), lr=cfg.lr, foreach=True)
        opt_rew = torch.optim.Adam(m.reward.parameters(), lr=cfg.lr, foreach=True)
        opt_term = torch.optim.Adam(m.termination.net.parameters(), lr=cfg.lr, foreach=True)
        objects = {"model": m, "opt_dyn": opt_dyn, "opt_rew": opt_rew, "opt_term": opt_term}
        extra: dict[str, Any] = {
            "best_dyn": _clone(m.dynamics.state_dict()),
            "best_dyn_score": torch.full((cfg.n_members,), math.inf),
            "best_rew": _clone(m.reward.state_dict()),
            "best_rew_score": math.inf,
            "bad_evals": 0,
            "stopped": False,
            "gen_state": gen.get_state(),
        }
        ckpt = Checkpointer(work_dir, cfg.checkpoint_every, name="pe_train_state")
        start = ckpt.restore(objects, extra)
        gen.set_state(extra["gen_state"])
        sigma_reg = math.exp(cfg.log_sigma_reg)
        t0 = time.perf_counter()
        step = start

        def save(step: int, force: bool = False) -> None:
            if force or step % ckpt.every == 0:
                extra["gen_state"] = gen.get_state()
                ckpt.maybe_save(step, objects, extra, force=force)

        bar = tqdm(
            range(start, cfg.n_steps), desc="pe", disable=None, initial=start, total=cfg.n_steps
        )
        for step in bar if not extra["stopped"] else ():
            batch = sampler.sample(cfg.batch_size)
            with self._autocast(self.train_dtype):
                x = m.in_norm(torch.cat([batch["obs"], batch["act"]], -1))
                y = m.delta_norm(batch["next_obs"] - batch["obs"])
                mean, logvar = self._dynamics(x)
                mean_pe, cov_pe = ensemble_mean_cov(mean, logvar.exp())  # eq. 13
                eps = self._randn(tuple(mean_pe.shape), gen, dev)
                mu_pe = reparameterised_mean(mean_pe, cov_pe, eps)
                weight = gamma_exp(step, cfg.gamma_0, cfg.decay_T)  # eq. 15
                loss_c = transition_consistency_loss(mu_pe, y, cov_pe, sigma_reg, weight)
                loss_nll = gaussian_nll(mean, logvar, y)
                r_pred = m.reward(x).float().squeeze(-1)  # (R,B)
                loss_r = reward_loss(r_pred, m.rew_norm(batch["rew"][:, None]).squeeze(-1))
                loss = cfg.alpha_c * loss_c + cfg.alpha_r * loss_r + cfg.nll_weight * loss_nll
                if learn_term:
                    logits = m.termination(batch["obs"], batch["act"], batch["next_obs"])
                    loss = loss + termination_loss(logits.float(), batch["done"])
            for opt in (opt_dyn, opt_rew, opt_term):
                opt.zero_grad(set_to_none=True)
            loss.backward()
            opt_dyn.step()
            opt_rew.step()
            if learn_term:
                opt_term.step()

            done_steps = step + 1
            if hold_t is not None and (done_steps % cfg.eval_every == 0):
                ev = self._evaluate(hold_t, cfg.max_holdout_eval, learn_term)
                improved = self._track_best(ev, extra)
                extra["bad_evals"] = 0 if improved else extra["bad_evals"] + 1
                if log is not None:
                    log(
                        done_steps,
                        {
                            "loss": loss.item(),
                            "loss_c": loss_c.item(),
                            "loss_r": loss_r.item(),
                            "loss_nll": loss_nll.item(),
                            "gamma_exp": weight,
                            **{f"holdout_{k}": v for k, v in ev.items() if k != "member_mse"},
                        },
                    )
                bar.set_postfix(mse=f"{ev['obs_mse_norm']:.4f}", r=f"{ev['reward_mse']:.4f}")
                if cfg.patience > 0 and extra["bad_evals"] >= cfg.patience:
                    extra["stopped"] = True
                    save(done_steps, force=True)
                    step = done_steps
                    break
            save(done_steps)
            step = done_steps
        bar.close()

        if cfg.keep_best and hold_t is not None:
            if math.isfinite(float(extra["best_dyn_score"].max())):
                m.dynamics.load_state_dict(extra["best_dyn"])
            if math.isfinite(float(extra["best_rew_score"])):
                m.reward.load_state_dict(extra["best_rew"])
        save(step, force=True)

        final = self._evaluate(hold_t if hold_t is not None else sampler, None, learn_term)
        metrics = {f"holdout_{k}": v for k, v in final.items() if k != "member_mse"}
        metrics.update(
            steps=float(step),
            stopped_early=float(bool(extra["stopped"]) and step < cfg.n_steps),
            holdout_rows=float(n_hold),
            train_seconds=time.perf_counter() - t0,
        )
        if learn_term:
            metrics["termination_accuracy"] = metrics.pop("holdout_term_accuracy")
            metrics["termination_base_rate"] = metrics.pop("holdout_term_base_rate")
        return metrics

    # -- evaluation ----------------------------------------------------------------------------
    def _evaluate(
        self, data: TransitionSampler, max_rows: int | None, learn_term: bool
    ) -> dict[str, Any]:
        """Scores on ``data`` (the held-out split), chunked; raw units unless ``_norm``."""
        m = self.modules
        rows = data.size if max_rows is None else min(max_rows, data.size)
        sums: dict[str, Any] = {}

        def add(key: str, value: torch.Tensor) -> None:
            sums[key] = sums.get(key, 0.0) + value.double()

        with torch.inference_mode():
            for start in range(0, rows, 8192):
                sl = slice(start, min(rows, start + 8192))
                obs, act, nxt = data.obs[sl], data.act[sl], data.next_obs[sl]
                x = m.in_norm(torch.cat([obs, act], -1))
                y = m.delta_norm(nxt - obs)
                mean, logvar = self._dynamics(x)
                res2 = (mean - y).square()  # (E,b,O)
                add("member_mse", res2.mean(-1).sum(1))  # (E,)
                add("obs_mse_norm", (mean.mean(0) - y).square().mean(-1).sum())
                raw = obs + mean.mean(0) * m.delta_norm.std + m.delta_norm.mean
                add("obs_mse", (raw - nxt).square().mean(-1).sum())
                add("nll", (0.5 * (res2 * torch.exp(-logvar) + logvar)).sum(-1).mean(0).sum())
                add("var_sum", logvar.exp().mean((0, 2)).sum())
                add("res2_sum", res2.mean((0, 2)).sum())
                r_pred = m.rew_norm.inverse(m.reward(x).float().mean(0)).squeeze(-1)
                add("reward_mse", (r_pred - data.rew[sl]).square().sum())
                if learn_term:
                    pred = m.termination.predict(obs, act, nxt)
                    add("term_correct", (pred == data.done[sl].bool()).sum())
                    add("term_pos", data.done[sl].sum())
        out: dict[str, Any] = {"member_mse": (sums["member_mse"] / rows).float().cpu()}
        for key in ("obs_mse_norm", "obs_mse", "nll", "reward_mse"):
            out[key] = float(sums[key] / rows)
        out["var_ratio"] = float(sums["var_sum"] / sums["res2_sum"].clamp_min(1e-30))
        if learn_term:
            out["term_accuracy"] = float(sums["term_correct"] / rows)
            pos = float(sums["term_pos"] / rows)
            out["term_base_rate"] = max(pos, 1.0 - pos)
        return out

    def _track_best(self, ev: dict[str, Any], extra: dict[str, Any]) -> bool:
        """Keep each member's best weights (held-out MSE, 1% margin); True if any improved."""
        scores, best = ev["member_mse"], extra["best_dyn_score"]
        better = scores < best * 0.99
        if bool(better.any()):
            state = self.modules.dynamics.state_dict()
            for key, value in state.items():  # every parameter has the member axis first
                extra["best_dyn"][key][better] = value.detach()[better].cpu()
            extra["best_dyn_score"] = torch.where(better, scores, best)
        rew_better = ev["reward_mse"] < extra["best_rew_score"] * 0.99
        if rew_better:
            extra["best_rew"] = _clone(self.modules.reward.state_dict())
            extra["best_rew_score"] = ev["reward_mse"]
        return bool(better.any()) or rew_better

    # -- persistence ---------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Write the weights, normalisers and termination choice (no pickles)."""
        atomic_save(
            {
                "model": self.modules.state_dict(),
                "termination_mode": self.termination_mode,
                "env_id": self.env_id or "",
            },
            path,
        )

    def load(self, path: Path) -> None:
        """Read a file written by :meth:`save` (weights-only)."""
        state = safe_load(path)
        try:
            self.modules.load_state_dict(state["model"])
        except RuntimeError as err:
            raise ValueError(
                f"{path} does not fit this world model (obs_dim={self.obs_dim}, "
                f"act_dim={self.act_dim}, config {self.config.to_dict()}): {err}"
            ) from err
        self.env_id = state.get("env_id") or self.env_id
        self._set_termination(state["termination_mode"])


def _clone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in state.items()}


@hookimpl
def ipd_register_world_model() -> list[type[ComponentConfig]]:
    return [PEConfig]
