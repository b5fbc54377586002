"""``ipd-dt``: the distilled sequence policy of Imaginary Planning Distillation (paper sec. 3.4).

A causal transformer over (V(s_t), s_t, a_t) tokens trained on the real plus imagined data with
eq. 26, and conditioned on the learned V(s_t) at every step of acting: no hand-set return-to-go.
Paper: "IPD: Boosting Sequential Policy with Imaginary Planning Distillation in Offline
Reinforcement Learning", eq. 26 and table 4.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from ipd_plugins.policies.base import SequenceActor, SequencePolicyBase, SequencePolicyConfig
from ipd_plugins.policies.sequence_data import discounted_returns_to_go
from ipd_plugins.returns import reward_factor
from ipd_plugins.value.losses import awr_weights
from registry.config import acting_only, added_later
from registry.hookspecs import hookimpl
from registry.protocols import Actor, BuildContext, ValueLearner

if TYPE_CHECKING:
    from ipd_plugins.data.dataset import TrajectoryDataset

__all__ = [
    "IpdDtConfig",
    "IpdDtPolicy",
    "ipd_loss",
    "advantage_weights",
    "dataset_values",
    "ipd_register_policy",
]


@dataclasses.dataclass
class IpdDtConfig(SequencePolicyConfig):
    r"""The IPD sequence policy (paper sec. 3.4, eq. 26, table 4).

    .. math::

        \mathcal{L}_{IPD}(\eta) = \mathbb{E}_{(s_t,a_t) \sim D_{aug}} \big[
            (a_t - \pi_\eta(\{s,a\}_{t-K:t-1}, V_\psi(s_t), s_t))^2
            - \lambda \, Q_\theta(s_t, \pi_\eta(\{s,a\}_{t-K:t-1}, V_\psi(s_t), s_t)) \big],
        \qquad \lambda = \alpha / \mathrm{mean}|Q| \ (\text{detached})

    The Q term's weight is normalised by the batch's mean |Q| as TD3+BC and QT do, so ``alpha``
    does not depend on the reward scale. Both terms are applied at every valid step of each
    K-step window (step t of the window sees the steps before it, as in DT training). The
    conditioning token is (V(s_t) - mean V) / std V over the dataset; the shift and scale are
    saved with the weights and reused at acting time.

    ``train_token="return"`` is a variant, not eq. 26: the training token is the discounted
    return-to-go of the logged (or imagined) rewards, :math:`G_t = r_t + \gamma G_{t+1}`,
    bootstrapped with V(s') where an episode or segment is cut short; acting still feeds
    V(s_t). The policy then learns what the data did when it went on to earn G_t, and V(s_t) --
    an upper expectile of that return -- asks for a better-than-average continuation, as
    Reinformer's predicted maximal return does, without a hand-set target.

    ``awr_beta > 0`` is another variant, not eq. 26: each step's squared error is weighted by
    :math:`w_t = \min(e^{\beta c (Q(s_t,a_t) - V(s_t))}, w_{max})`, divided by the batch mean
    of w (so the MSE term keeps its size next to the Q term), with c IQL's reward factor
    ``1000 / (max - min episode return)`` -- the AWR weights of the value stage's pi_QOP (eq. 5),
    on the sequence policy's imitation. It imitates the logged actions that beat V and
    down-weights the rest, where plain MSE averages good and bad gaits
    (benchmarks/results/replay_datasets.md).

    Args:
        alpha (float): :math:`\alpha`, weight of the Q-value regularisation term (0: plain BC
            on V-conditioned windows).
        train_token (str): "value" (eq. 26: V(s_t)) or "return" (discounted return-to-go).
        gamma (float): discount of the "return" tokens (the value learner's: 0.99).
        awr_beta (float): inverse temperature of the advantage weights on the MSE term (0:
            unweighted, eq. 26; the paper's AWR beta is 3).
        awr_max_weight (float): clip of those weights before they are normalised.
        token_shift (float): acting only: the token is V(s_t) + token_shift * std of the
            training tokens (0: eq. 26).
        (network/optimiser fields: see :class:`~ipd_plugins.policies.base.SequencePolicyConfig`)
    """

    kind: ClassVar[str] = "policy"
    name: ClassVar[str] = "ipd-dt"

    # alpha of eq. 26 (times 1/mean|Q|): higher pushes actions up Q, lower stays closer to the
    # data; 1.0 keeps both terms of comparable size (TD3+BC uses 2.5 with the same scaling)
    alpha: float = 1.0
    # training token: "value" (eq. 26, V(s_t)) or "return" (the discounted return-to-go of the
    # data, in V's units). Acting always feeds V(s_t). Why it exists: with "value" tokens the
    # policy imitates the data's average (benchmarks/results/v_token_probe.md); hopper-medium,
    # default profile, one seed: "return" 54.1, "value" 45.7 (default_hopper.md)
    train_token: str = added_later("value")
    # discount of the "return" tokens; match the value learner's gamma
    gamma: float = added_later(0.99)
    # advantage-weighted imitation: 0 -> eq. 26's plain MSE; 3 -> the paper's AWR beta. Why it
    # exists: plain MSE imitates the data's poor gaits too; hopper-medium-replay, default
    # profile, seeds 0/1: 34.2/22.4 at 3 against 17.8/16.4 at 0 (replay_datasets.md)
    awr_beta: float = added_later(0.0)
    # clip of exp(awr_beta * c * advantage), as pi_QOP's max_weight
    awr_max_weight: float = added_later(100.0)
    # acting asks for V(s_t) + token_shift x the spread (std) of the training tokens: 0 -> eq.
    # 26. Read only when acting, so `ipd eval RUN --set policy.token_shift=2` re-scores a
    # finished run without retraining. Why it exists: paper fig. 3's question (does asking for
    # more help?) for IPD; no shift has helped on seeds it was not chosen on (v_token_probe.md)
    token_shift: float = acting_only(0.0, new=True)
    # V(s) is computed for the dataset in chunks of this many states
    value_batch_size: int = 4096

    def validate(self) -> None:
        super().validate()
        if self.alpha < 0:
            raise ValueError(f"policy 'ipd-dt': alpha must be >= 0, got {self.alpha}")
        if self.train_token not in ("value", "return"):
            raise ValueError(
                f"policy 'ipd-dt': train_token must be 'value' or 'return', got "
                f"{self.train_token!r}"
            )
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"policy 'ipd-dt': gamma must be in (0, 1], got {self.gamma}")
        if self.awr_beta < 0:
            raise ValueError(f"policy 'ipd-dt': awr_beta must be >= 0, got {self.awr_beta}")
        if self.awr_max_weight <= 0:
            raise ValueError(
                f"policy 'ipd-dt': awr_max_weight must be > 0, got {self.awr_max_weight}"
            )

    def create(self, ctx: BuildContext) -> IpdDtPolicy:
        return IpdDtPolicy(self, ctx)


def ipd_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    q: torch.Tensor | None,
    alpha: float,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 26 on the valid steps: MSE(a, pi) - alpha / mean|Q|.detach() * mean Q(s, pi).

    ``pred`` (n,A) policy actions, ``target`` (n,A) dataset actions, ``q`` (n,) Q(s, pred) (or
    None when ``alpha`` is 0), ``weights`` (n,) optional per-step weights of the squared error
    (the MSE becomes sum(w * err) / sum(w)). Returns the loss and its parts as detached 0-d
    tensors (read them only when logging: each read is a host synchronisation on a GPU).
    """
    assert pred.shape == target.shape, f"pred {tuple(pred.shape)} != target {tuple(target.shape)}"
    if weights is None:
        mse = ((pred - target) ** 2).mean()
    else:
        assert weights.shape == pred.shape[:1], f"weights must be ({pred.shape[0]},)"
        w = weights.detach()
        mse = (w * ((pred - target) ** 2).mean(-1)).sum() / w.sum().clamp_min(1e-12)
    if q is None or alpha == 0.0:
        return mse, {"loss": mse.detach(), "mse": mse.detach()}
    assert q.shape == pred.shape[:1], f"q must be ({pred.shape[0]},), got {tuple(q.shape)}"
    lmbda = alpha / q.abs().mean().detach().clamp_min(1e-6)
    loss = mse - lmbda * q.mean()
    return loss, {"loss": loss.detach(), "mse": mse.detach(), "q": q.detach().mean()}


@torch.no_grad()
def advantage_weights(
    value: ValueLearner,
    obs: torch.Tensor,
    act: torch.Tensor,
    beta: float,
    factor: float,
    max_weight: float,
) -> torch.Tensor:
    """(n,O), (n,A) -> (n,) ``min(exp(beta * c * (Q(s,a) - V(s))), max_weight)`` / its mean.

    The logged action's advantage under the value learner in IQL's normalised reward units
    (``c = factor``, from :func:`~ipd_plugins.returns.reward_factor`), turned into pi_QOP's
    clipped AWR weights (eq. 5) and divided by the batch mean so that they only re-weight steps.
    """
    adv = (value.q(obs, act) - value.v(obs)) * factor
    w = awr_weights(adv, beta, max_weight)
    return w / w.mean().clamp_min(1e-12)


@torch.inference_mode()
def dataset_values(value: ValueLearner, obs: np.ndarray, device: str, chunk: int) -> np.ndarray:
    """(N,O) -> (N,) V(s) for every dataset state, in chunks, without autograd."""
    out = []
    for i in range(0, obs.shape[0], chunk):
        x = torch.as_tensor(obs[i : i + chunk], dtype=torch.float32, device=device)
        v = value.v(x)
        assert v.shape == (x.shape[0],), f"value.v must return (B,), got {tuple(v.shape)}"
        out.append(v.float().cpu().numpy())
    return np.concatenate(out)


class IpdDtPolicy(SequencePolicyBase):
    """Implements :class:`registry.protocols.SequencePolicy` with V(s_t) conditioning."""

    cfg: IpdDtConfig

    @property
    def alpha(self) -> float:
        """Eq. 26's alpha; 0 when trained on few episodes (``few_episodes``)."""
        return 0.0 if self.few else self.cfg.alpha

    def few_episodes_changes(self) -> list[str]:
        return [*super().few_episodes_changes(), "no Q term"]

    def raw_conditioning(
        self, dataset: TrajectoryDataset, value: ValueLearner | None
    ) -> np.ndarray:
        if value is None:
            raise ValueError("policy 'ipd-dt' needs a value learner for its V(s) tokens; got None")
        cfg = self.cfg
        if cfg.train_token == "value":
            return dataset_values(value, dataset.observations, self.device, cfg.value_batch_size)
        # "return": G_t of the data, bootstrapped with V(s') after an episode's last step
        # unless it terminated
        last = dataset.episode_starts + dataset.episode_lengths - 1
        v_after = dataset_values(
            value, dataset.next_observations[last], self.device, cfg.value_batch_size
        )
        tail = np.where(dataset.terminations[last], 0.0, v_after)
        return discounted_returns_to_go(dataset.rewards, dataset.episode_lengths, cfg.gamma, tail)

    def conditioning_stats(self, raw: np.ndarray) -> tuple[float, float]:
        return float(raw.mean()), float(max(raw.std(), 1e-6))

    def start_training(self, dataset, value):
        # the advantage weights' reward units: IQL's factor over the original episodes
        self.reward_factor = reward_factor(dataset) if self.cfg.awr_beta > 0 else 1.0
        return super().start_training(dataset, value)

    def loss(self, pred, batch, value):
        mask = batch["mask"]  # (B, T): only real steps count
        pred_v, target_v = pred[mask], batch["act"][mask]  # (n, A)
        q = None
        if self.alpha > 0:
            q = value.q(batch["obs"][mask], pred_v)  # (n,), raw observations
            if not q.requires_grad:
                raise RuntimeError(
                    "value.q returned a tensor without a gradient path to the action; eq. 26 "
                    "needs dQ/da (does q() run under no_grad/inference_mode?)"
                )
        weights = None
        if self.cfg.awr_beta > 0:
            weights = advantage_weights(
                value, batch["obs"][mask], target_v, self.cfg.awr_beta,
                self.reward_factor, self.cfg.awr_max_weight,
            )  # fmt: skip
        return ipd_loss(pred_v, target_v, q, self.alpha, weights)

    def fit(self, dataset, value, work_dir=None, log=None):
        if value is None:
            raise ValueError("policy 'ipd-dt' needs a value learner (V tokens, Q term); got None")
        return super().fit(dataset, value, work_dir, log)

    def token_offset(self, shift: float | None = None) -> float:
        """What acting adds to V(s_t): ``shift`` (default ``token_shift``) std of the training
        tokens, in V's units."""
        k = self.cfg.token_shift if shift is None else shift
        return k * float(self.net.cond_scale)

    def actor(self, value: ValueLearner | None) -> Actor:
        """An actor whose conditioning token at every step is V(s_t) of the current obs (plus
        :meth:`token_offset`)."""
        if value is None:
            raise ValueError("policy 'ipd-dt' acts with V(s_t) tokens and needs the value learner")
        shift = self.token_offset()

        def conditioning(obs: torch.Tensor) -> torch.Tensor:
            return value.v(obs) + shift

        return SequenceActor(
            self.net,
            conditioning,
            device=self.device,
            autocast_bf16=self.cfg.autocast_bf16,
            state_conditioning=True,  # V(s): imagined steps can be conditioned (adaptable)
        )


@hookimpl
def ipd_register_policy():
    return [IpdDtConfig]
