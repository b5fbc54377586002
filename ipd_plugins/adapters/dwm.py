"""``dwm``: DWM-MPC, inference-time policy optimisation through the differentiable world model.

Paper: Deb, Wright and Banerjee, "Model Predictive Control with Differentiable World Models
for Offline Reinforcement Learning", arXiv 2603.22430 (v2: "Inference Time Policy Optimization
for Offline RL with Differentiable World Models"), Algorithm 1; what was and was not found of it
is in ``papers/dwm-mpc-method-notes.md``. The maths is in :mod:`ipd_plugins.adapters.dwm_impl`.

At every real step, before acting: draw M noise sequences of H transitions, roll the policy
through the world model from the real state (all B environments x M particles in one batch),
score each rollout by its model rewards plus the terminal Q, and take E steps of plain SGD
ascent on the policy's weights; then act with the updated weights. The weights persist for the
rest of the episode and go back to the pretrained ones at the next episode start. The world
model and Q are only read (gradients are taken w.r.t. the policy's weights alone).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch

from ipd_plugins.adapters.dwm_impl import (
    anchor_penalty,
    clip_per_env,
    per_env_norm,
    rollout_objective,
)
from registry.config import ComponentConfig
from registry.hookspecs import hookimpl
from registry.protocols import (
    Actor,
    AdaptableActor,
    AdaptationContext,
    BuildContext,
    DifferentiableWorldModel,
)

__all__ = ["DWMConfig", "DWMAdapter", "DWMActor", "ipd_register_adapter"]

_WHICH = ("all", "head")


@dataclasses.dataclass
class DWMConfig(ComponentConfig):
    r"""DWM-MPC: SGD on the actor's weights through imagined rollouts before every action.

    arXiv 2603.22430, Algorithm 1.

    At real state :math:`s_t`, with M noise sequences :math:`\epsilon^{(m)}` fixed for the E
    inner steps:

    .. math::

        \tilde s_0 = s_t, \tilde a_j = \pi_\psi(\tilde s_j),
        \tilde s_{j+1} = f(\tilde s_j, \tilde a_j, \epsilon_j)   (j < H)

        \hat J(\psi) = 1/M \sum_m [ \sum_{j<H} \gamma^j \hat r(\tilde s_j, \tilde a_j)
            + \gamma^H \min Q(\tilde s_H, \pi_\psi(\tilde s_H)) ] - \lambda ||\psi - \psi_0||^2

        \psi \leftarrow \psi + \alpha \nabla_\psi \hat J   (E steps of plain SGD)

    then act with :math:`\pi_\psi(s_t)`. :math:`\psi` persists within the episode and is reset
    to the pretrained :math:`\psi_0` at every episode start; each of the B parallel episodes
    adapts its own copy. f is the world model's reparameterised sample (``pe``: a member, then
    its Gaussian), :math:`\hat r` its reward model, Q the run's value learner (a baseline's own
    critic for ``ipd baseline``). The L2 anchor (:math:`\lambda`), gradient clipping, skipping
    a step that does not raise :math:`\hat J`, and cutting rollouts at predicted terminations
    are not in the paper (off by default).

    Args:
        horizon: H, imagined steps per rollout (paper: 5).
        particles: M, rollouts per real step (paper v1 summary: 10; v2 reading: 4096).
        inner_steps: E, SGD steps per real step (paper: 1 in v2, 5 in a v1 summary).
        lr: :math:`\alpha`, the SGD step size (v2 reading: 5e-5 default, grid 5e-7..5e-4).
        gamma: :math:`\gamma` of the objective; None: the discount the Q was trained with.
        params: which weights adapt: "all" (the whole policy network, the paper) or "head"
            (its output layer).
        context: a sequence actor's window in imagination: its last ``context`` steps (0: the
            actor's own context).
        anchor: :math:`\lambda` of the L2 anchor to the pretrained weights (0: off).
        grad_clip: per-episode gradient-norm clip (0: off).
        skip_worse: undo a step after which :math:`\hat J` (same noise) did not increase.
        terminations: a rollout stops earning at the first predicted termination.
        seed: added to the run's seed to seed the noise.
    """

    kind: ClassVar[str] = "adapter"
    name: ClassVar[str] = "dwm"

    # H: imagined steps per rollout; longer sees further, costs linearly more, compounds
    # model error (paper: 5)
    horizon: int = 5
    # M: noise sequences (rollouts) per real step; more -> a smoother gradient estimate,
    # linearly more compute (the paper's v2 uses 4096 on a GPU; 32 is the CPU proposal)
    particles: int = 32
    # E: SGD steps per real step with the same noise (paper v2: 1)
    inner_steps: int = 1
    # alpha: SGD step size on the policy weights; larger adapts faster and risks leaving the
    # data (v2 reading: 5e-5, per-task grid 5e-7..5e-4)
    lr: float = 5e-5
    # discount of the objective; None: the Q's own (value.gamma, a baseline's gamma)
    gamma: float | None = None
    # which weights adapt: "all" (the paper) or "head" (the output layer: cheaper, tamer)
    params: str = "all"
    # a sequence actor's imagined window: its last `context` steps; 0 -> its own context K
    # (exact; cost grows with it: each imagined step runs the transformer on the window)
    context: int = 0
    # lambda of lambda * ||psi - psi_0||^2 subtracted from the objective; 0 -> off (paper)
    anchor: float = 0.0
    # clip each episode's gradient to this L2 norm; 0 -> off (paper)
    grad_clip: float = 0.0
    # undo a step whose objective, re-evaluated on the same noise, did not increase (one more
    # imagined pass per step); off in the paper
    skip_worse: bool = False
    # cut a rollout's rewards and terminal Q at the first predicted termination (off: the
    # paper's objective)
    terminations: bool = False
    # noise seed, added to the run's seed
    seed: int = 0

    def validate(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(f"adapter 'dwm': {what}")

        for key in ("horizon", "particles", "inner_steps"):
            need(getattr(self, key) >= 1, f"{key} must be >= 1, got {getattr(self, key)}")
        need(self.lr > 0, f"lr (the SGD step size) must be > 0, got {self.lr}")
        need(
            self.gamma is None or 0.0 <= self.gamma <= 1.0,
            f"gamma must be in [0, 1] or none (the Q's own), got {self.gamma}",
        )
        need(self.params in _WHICH, f"params must be one of {_WHICH}, got {self.params!r}")
        need(self.context >= 0, f"context must be >= 0 (0: the actor's own), got {self.context}")
        need(self.anchor >= 0, f"anchor must be >= 0 (0: off), got {self.anchor}")
        need(self.grad_clip >= 0, f"grad_clip must be >= 0 (0: off), got {self.grad_clip}")
        need(self.seed >= 0, f"seed must be >= 0, got {self.seed}")

    def create(self, ctx: BuildContext) -> DWMAdapter:
        return DWMAdapter(self, ctx)


class DWMAdapter:
    """Implements :class:`registry.protocols.Adapter`: wraps an actor in a :class:`DWMActor`."""

    uses_models = True

    def __init__(self, config: DWMConfig, ctx: BuildContext):
        config.validate()
        self.config, self.ctx = config, ctx

    def wrap(self, actor: Actor, models: AdaptationContext) -> DWMActor:
        name = type(actor).__name__
        if not isinstance(actor, AdaptableActor):
            raise ValueError(
                f"adapter 'dwm' cannot adapt a {name}: it does not implement "
                "registry.protocols.AdaptableActor (adapt_parameters, imagine_start, "
                "differentiable_act, act_with). Adaptable: pi_QOP of value 'qov', the 'ipd-dt' "
                "and 'gtp' policies and d3rlpy's MLP baselines; for another value learner's "
                "pi_QOP set run.eval_qop=false"
            )
        wm = models.world_model
        if wm is None or not isinstance(wm, DifferentiableWorldModel):
            what = "no world model" if wm is None else f"a {type(wm).__name__}"
            raise ValueError(
                f"adapter 'dwm' needs a differentiable world model (rsample_step, noise_dim; "
                f"e.g. 'pe'), got {what}"
            )
        if models.q is None:
            raise ValueError(f"adapter 'dwm' needs a Q function for the terminal value of {name}")
        return DWMActor(actor, wm, models.q, self.config, models.gamma, models.seed)


class DWMActor:
    """An :class:`~registry.protocols.Actor` that adapts its policy's weights while it acts.

    ``reset`` gives each of the B environments an exact copy of the pretrained weights;
    ``act`` runs ``inner_steps`` SGD steps per environment on the imagined objective, then acts
    with the updated weights. :meth:`report` summarises the adaptation so far.
    """

    def __init__(
        self,
        actor: AdaptableActor,
        world_model: DifferentiableWorldModel,
        q: Any,
        config: DWMConfig,
        gamma: float,
        seed: int,
    ):
        self.actor, self.world_model, self.q, self.config = actor, world_model, q, config
        self.gamma = float(config.gamma if config.gamma is not None else gamma)
        live = actor.adapt_parameters(config.params)
        if not live:
            raise ValueError(f"{type(actor).__name__} has no weights to adapt ({config.params})")
        #: psi_0: the pretrained weights, copied once (the actor's own are never written)
        self.pretrained = {k: v.detach().clone() for k, v in live.items()}
        ref = next(iter(self.pretrained.values()))
        self.device, self.dtype = ref.device, ref.dtype
        self.generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + config.seed)
        self.params: dict[str, torch.Tensor] = {}
        self.optimizer: torch.optim.SGD | None = None
        self.totals = {"steps": 0, "skipped": 0, "objective": 0.0, "grad_norm": 0.0}

    # -- Actor ---------------------------------------------------------------------------------
    def reset(self, obs: torch.Tensor) -> None:
        """New episodes: every env's weights become an exact copy of the pretrained ones."""
        B = int(obs.shape[0])
        self.params = {
            k: v.unsqueeze(0).repeat(B, *([1] * v.dim())).requires_grad_(True)
            for k, v in self.pretrained.items()
        }
        # plain SGD (no momentum, no state): psi <- psi + lr * grad J  (maximize=True)
        self.optimizer = torch.optim.SGD(
            list(self.params.values()), lr=self.config.lr, maximize=True
        )
        self.actor.reset(obs)

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        obs = torch.as_tensor(obs).to(self.device, self.dtype)
        B = obs.shape[0]
        if not self.params or next(iter(self.params.values())).shape[0] != B:
            raise RuntimeError(f"call reset() with the first observations of all {B} envs")
        cfg = self.config
        shape = (cfg.horizon, B, cfg.particles, self.world_model.noise_dim)
        noise = torch.randn(shape, generator=self.generator).to(self.device, self.dtype)
        for _ in range(cfg.inner_steps):
            self.adapt(obs, noise)
        with torch.no_grad():
            return self.actor.act_with(obs, self.params)

    def observe(self, reward: torch.Tensor) -> None:
        self.actor.observe(reward)

    # -- adaptation ----------------------------------------------------------------------------
    def objective(
        self, obs: torch.Tensor, noise: torch.Tensor, params: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """(B,) J of every env at ``params`` (with the anchor term when it is on)."""
        cfg = self.config
        memory = self.actor.imagine_start(cfg.particles, cfg.context)

        def policy(s: torch.Tensor, mem: Any) -> tuple[torch.Tensor, Any]:
            return self.actor.differentiable_act(s, params, mem)

        J = rollout_objective(
            obs,
            noise,
            policy,
            self.world_model.rsample_step,
            self.q,
            self.gamma,
            memory=memory,
            terminations=cfg.terminations,
        )
        if cfg.anchor > 0:
            J = J - cfg.anchor * anchor_penalty(params, self.pretrained)
        return J

    def adapt(self, obs: torch.Tensor, noise: torch.Tensor) -> None:
        """One SGD ascent step of every env's weights on J (same noise for all inner steps)."""
        cfg, params = self.config, list(self.params.values())
        assert self.optimizer is not None
        J = self.objective(obs, noise, self.params)  # (B,)
        # gradients w.r.t. the adapted weights only: the world model's and Q's are not taken
        grads = torch.autograd.grad(J.sum(), params)  # env b's J depends on its weights only
        norm = per_env_norm(grads)
        if cfg.grad_clip > 0:
            grads = clip_per_env(grads, cfg.grad_clip)
        before = [p.detach().clone() for p in params] if cfg.skip_worse else None
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.totals["steps"] += 1
        self.totals["objective"] += float(J.detach().mean())
        self.totals["grad_norm"] += float(norm.mean())
        if before is not None:
            with torch.no_grad():
                worse = self.objective(obs, noise, self.params) <= J.detach()  # (B,)
                for p, old in zip(params, before, strict=True):
                    p.copy_(torch.where(worse.reshape(-1, *([1] * (p.dim() - 1))), old, p))
            self.totals["skipped"] += int(worse.sum()) / max(1, worse.numel())

    def report(self) -> dict[str, float]:
        """Adaptation so far: SGD steps, mean objective and gradient norm per step, the share
        of env-steps undone by ``skip_worse``."""
        n = max(1, self.totals["steps"])
        return {
            "adapt_steps": float(self.totals["steps"]),
            "objective_mean": self.totals["objective"] / n,
            "grad_norm_mean": self.totals["grad_norm"] / n,
            "skipped_share": self.totals["skipped"] / n,
        }


@hookimpl
def ipd_register_adapter() -> list[type[ComponentConfig]]:
    return [DWMConfig]
