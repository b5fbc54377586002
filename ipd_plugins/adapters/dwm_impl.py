"""The maths of DWM-MPC: the batched imagined-rollout objective and the per-env SGD helpers.

Paper: Deb, Wright and Banerjee, "Model Predictive Control with Differentiable World Models
for Offline Reinforcement Learning" (arXiv 2603.22430; v2: "Inference Time Policy Optimization
for Offline RL with Differentiable World Models"), Algorithm 1 as read in
``papers/dwm-mpc-method-notes.md``. At a real state s_t, with M noise sequences held fixed::

    s~_0 = s_t,   a~_j = pi_psi(s~_j),   s~_{j+1} = f(s~_j, a~_j, eps_j)          j = 0..H-1
    L(psi; eps) = sum_{j<H} gamma^j r(s~_j, a~_j) + gamma^H Q(s~_H, pi_psi(s~_H))
    J(psi)      = 1/M sum_m L(psi; eps^(m))

Everything here is batched over B environments (each with its own weights psi_b) and M
particles: the world model and Q see B*M rows at once. Shape letters: ``B`` environments,
``M`` particles, ``H`` horizon, ``O``/``A`` observation/action dims, ``D`` noise numbers per
transition.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from registry.protocols import WorldModelSample

__all__ = [
    "PolicyFn",
    "StepFn",
    "QFn",
    "rollout_objective",
    "anchor_penalty",
    "per_env_norm",
    "clip_per_env",
]

#: ``policy(obs (B,M,O), memory) -> (actions (B,M,A), memory)`` with the weights being adapted
PolicyFn = Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]]
#: ``step(obs (R,O), act (R,A), noise (R,D)) -> WorldModelSample`` (a reparameterised sample)
StepFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], WorldModelSample]
#: ``q(obs (R,O), act (R,A)) -> (R,)``, the (min over a pair) action value
QFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def rollout_objective(
    obs: torch.Tensor,
    noise: torch.Tensor,
    policy: PolicyFn,
    step: StepFn,
    q: QFn,
    gamma: float,
    memory: Any = None,
    terminations: bool = False,
) -> torch.Tensor:
    """(B,O) real states, (H,B,M,D) fixed noise -> (B,) the objective J of each env.

    ``J_b = 1/M sum_m [sum_{j<H} gamma^j r~_j + gamma^H Q(s~_H, pi(s~_H))]`` (Algorithm 1's
    objective, the H-step model return plus the discounted terminal value). With
    ``terminations`` (not in the paper) a particle stops earning at the first imagined step the
    world model marks terminal: later rewards and the terminal Q are masked (a terminal state
    has no future; its Q was never trained). Differentiable w.r.t. whatever ``policy`` closes
    over; ``memory`` is the policy's memory at s_t (``AdaptableActor.imagine_start``).
    """
    H, B, M, D = noise.shape
    assert obs.dim() == 2 and obs.shape[0] == B, (
        f"obs must be (B,O) with B={B} (the noise's second axis), got {tuple(obs.shape)}"
    )
    O = obs.shape[1]
    s = obs[:, None, :].expand(B, M, O)  # (B,M,O): every particle starts at the real state
    total = obs.new_zeros(B, M)
    alive = obs.new_ones(B, M)
    for j in range(H):
        a, memory = policy(s, memory)  # (B,M,A)
        assert a.shape[:2] == (B, M), f"policy must return (B,M,A)=({B},{M},A), got {a.shape}"
        out = step(s.reshape(B * M, O), a.reshape(B * M, -1), noise[j].reshape(B * M, D))
        total = total + gamma**j * alive * out.reward.reshape(B, M)
        if terminations:
            alive = alive * (~out.done.reshape(B, M)).to(alive.dtype)
        s = out.next_obs.reshape(B, M, O)
    a, _ = policy(s, memory)  # pi(s~_H)
    q_h = q(s.reshape(B * M, O), a.reshape(B * M, -1)).reshape(B, M)
    total = total + gamma**H * alive * q_h
    return total.mean(1)


def anchor_penalty(
    params: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor]
) -> torch.Tensor:
    """(B,) ``||psi_b - psi_0||^2`` summed over the adapted tensors (params (B,...), anchor
    (...) the pretrained weights)."""
    return sum((p - anchor[k]).flatten(1).square().sum(1) for k, p in params.items())  # type: ignore[return-value]


def per_env_norm(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """(B,) the L2 norm of each env's gradient over all its tensors (each (B,...))."""
    norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads])  # (T,B)
    return torch.linalg.vector_norm(norms, dim=0)


def clip_per_env(grads: Sequence[torch.Tensor], max_norm: float) -> list[torch.Tensor]:
    """Each env's gradient scaled to norm at most ``max_norm`` (``clip_grad_norm_`` per env)."""
    norm = per_env_norm(grads)
    scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)  # (B,)
    return [g * scale.reshape(-1, *([1] * (g.dim() - 1))) for g in grads]
