"""The maths of Generative Trajectory Policies (``gtp``), as pure functions of tensors and floats.

Feng, Tang, Wang, Chen, "Offline Reinforcement Learning with Generative Trajectory Policies",
arXiv 2510.11499 (ICML 2026); equation numbers are the arXiv v1's. No networks or optimisers
here: ``phi`` below is any callable ``phi(obs (B,O), a_t (B,A), t (B,), tau (B,)) -> (B,A)``;
:mod:`ipd_plugins.policies.gtp` connects the networks, the optimisers and the batches to these
functions, and ``tests/test_gtp.py`` checks them against hand-computed numbers.

Noise is variance-exploding: ``a_t = a + t z``, ``z ~ N(0, I)``, ``t in [t_min, T]``. Actions
are in the policy's unit box [-1, 1]^A (the environment's bounds rescaled).

Where the paper leaves a choice open (its appendix C.1 was not available), the functions
follow the PROPOSALs of ``gtp-method-notes.md``; each says so.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = [
    "Phi",
    "solution_map",
    "edm_scalings",
    "edm_loss_weight",
    "time_features",
    "karras_grid",
    "curriculum_intervals",
    "sample_times",
    "sampling_times",
    "sample_actions",
    "euler_actions",
    "advantage_weights",
    "consistency_loss",
    "flow_loss",
    "actor_losses",
]

#: ``phi(obs (B,O), a_t (B,A), t (B,), tau (B,)) -> (B,A)``: the network of eq. 3-5.
Phi = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


# -- the solution map (eq. 3-5) ---------------------------------------------------------------
def solution_map(
    phi: torch.Tensor, a_t: torch.Tensor, t: torch.Tensor, tau: torch.Tensor
) -> torch.Tensor:
    """Eq. 3-5: ``Phi(s, a_t, t, tau) = (1 - tau/t) phi(s, a_t, t, tau) + (tau/t) a_t``.

    ``phi`` (B,A) the network's output at (s, a_t, t, tau), ``a_t`` (B,A), ``t`` and ``tau`` (B,)
    with ``0 <= tau <= t``, ``t > 0``. At ``tau = t`` it is ``a_t`` (the map from t to t), and
    its slope in tau there is ``(a_t - phi_inst) / t``, the probability-flow velocity of the
    instantaneous map ``phi_inst = phi(s, a_t, t, t)``; at ``tau = 0`` it is ``phi`` itself.
    """
    assert phi.shape == a_t.shape, f"phi {tuple(phi.shape)} != a_t {tuple(a_t.shape)}"
    assert t.shape == tau.shape == a_t.shape[:1], (
        f"t and tau must be ({a_t.shape[0]},), got {tuple(t.shape)} and {tuple(tau.shape)}"
    )
    ratio = (tau / t).unsqueeze(-1)  # (B,1)
    return (1.0 - ratio) * phi + ratio * a_t


def edm_scalings(
    t: torch.Tensor, sigma_data: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """EDM preconditioning (Karras et al. 2022) of the denoiser at noise level t: (B,) ->
    ``c_skip = s^2 / (t^2 + s^2)``, ``c_out = t s / sqrt(t^2 + s^2)``, ``c_in = 1 / sqrt(t^2 +
    s^2)`` with ``s = sigma_data``; ``phi = c_skip a_t + c_out F(c_in a_t, ...)``. PROPOSAL
    (sigma_data = 0.5, as Ding & Jin's consistency policy)."""
    var = t * t + sigma_data**2
    return sigma_data**2 / var, t * sigma_data / var.sqrt(), 1.0 / var.sqrt()


def edm_loss_weight(t: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """EDM's loss weight ``lambda(t) = 1 / c_out(t)^2 = (t^2 + s^2) / (t s)^2``: (B,) -> (B,).

    On the denoiser's squared error it makes the regression target of the network F unit-scale
    at every t, so small-t errors (the sharp details of the action distribution) count as much
    as large-t ones. Not in the paper's eq. 18 (``flow_weighting="edm"`` turns it on)."""
    return (t * t + sigma_data**2) / (t * sigma_data) ** 2


def time_features(x: torch.Tensor, n_freqs: int) -> torch.Tensor:
    """(B,) -> (B, 1 + 2 n_freqs): ``[x, sin(2^k x), cos(2^k x)]`` for k < n_freqs (a Fourier
    embedding of a scalar time input, so the MLP can resolve small differences in it)."""
    freqs = 2.0 ** torch.arange(n_freqs, dtype=x.dtype, device=x.device)  # (F,)
    angles = x.unsqueeze(-1) * freqs  # (B,F)
    return torch.cat([x.unsqueeze(-1), angles.sin(), angles.cos()], dim=-1)


# -- time grids: training curriculum and acting schedule --------------------------------------
def karras_grid(n_intervals: int, t_min: float, t_max: float, rho: float) -> torch.Tensor:
    """The ``n_intervals + 1`` noise levels of Karras et al.'s grid, ascending from ``t_min`` to
    ``t_max``: ``t_i = (t_min^(1/rho) + i/N (t_max^(1/rho) - t_min^(1/rho)))^rho``. PROPOSAL
    (T = 80, t_min = 0.002, rho = 7 as Ding & Jin's code)."""
    if n_intervals < 1 or not 0.0 < t_min < t_max:
        raise ValueError(
            f"karras_grid needs n_intervals >= 1 and 0 < t_min < t_max, got {n_intervals}, "
            f"{t_min}, {t_max}"
        )
    i = torch.arange(n_intervals + 1, dtype=torch.float64) / n_intervals
    lo, hi = t_min ** (1.0 / rho), t_max ** (1.0 / rho)
    grid = (lo + i * (hi - lo)) ** rho
    grid[0], grid[-1] = t_min, t_max  # exact ends despite the powers
    return grid.float()


def curriculum_intervals(
    step: int, n_steps: int, start: int = 10, maximum: int = 1280, stages: int = 8
) -> int:
    """The discretisation curriculum (App. C.2, eq. 76): intervals of the training grid at
    gradient step ``step`` (0-based), doubling from ``start`` to ``maximum``.

    ``N(k) = min(start 2^floor(k / K'), maximum)`` intervals (``N(k) + 1`` grid points) with
    ``K' = max(1, floor(n_steps / stages))``. PROPOSAL (iCT style: the paper gives 10 -> 1280,
    not the stage length); with the defaults the grid reaches 1280 in the last eighth.
    """
    stage_len = max(1, n_steps // stages)
    doublings = min(step // stage_len, 62)  # no int overflow far past the schedule
    return int(min(start * 2**doublings, maximum))


def sample_times(
    grid: torch.Tensor, batch: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(t, u, tau), each (B,), with ``t > u >= tau >= 0`` on the training grid (N + 1 points).

    A grid index ``j`` uniform in 1..N gives ``t = t_j`` and the adjacent ``u = t_{j-1}``; tau
    is uniform over the grid points up to u and 0: {0, t_0, ..., t_{j-1}}. PROPOSAL (the
    paper's App. C.1 was not available).
    """
    n = grid.shape[0] - 1
    j = torch.randint(1, n + 1, (batch,), generator=generator)  # (B,) in 1..N
    # i uniform in 0..j: tau = 0 for i = 0, else t_{i-1}
    i = (torch.rand(batch, generator=generator) * (j + 1).float()).long().clamp_max(j)
    grid_cpu = grid.cpu()
    t, u = grid_cpu[j], grid_cpu[j - 1]
    tau = torch.where(i == 0, torch.zeros(()), grid_cpu[(i - 1).clamp_min(0)])
    return t.to(grid.device), u.to(grid.device), tau.to(grid.device)


def sampling_times(k: int, t_min: float, t_max: float, rho: float) -> torch.Tensor:
    """Eq. 15's schedule ``T = t_0 > t_1 > ... > t_K = 0``: (K + 1,), descending.

    The Karras grid of K + 1 levels from T down to t_min, with its last level replaced by 0,
    so that every one of the K steps moves a real distance (K = 1: T -> 0; K = 2 with the
    defaults: 80 -> 2.5 -> 0). PROPOSAL.
    """
    if k < 1:
        raise ValueError(f"sampling needs at least one step, got K={k}")
    times = karras_grid(k, t_min, t_max, rho).flip(0)
    times[-1] = 0.0
    return times


def sample_actions(
    phi: Phi, obs: torch.Tensor, times: torch.Tensor, noise: torch.Tensor, clip: float = 1.0
) -> torch.Tensor:
    """Eq. 15, K-step deterministic sampling: ``a_{t_0} = T z``, then
    ``a_{t_{i+1}} = Phi(s, a_{t_i}, t_i, t_{i+1})``; the result is clipped to ``[-clip, clip]``.

    ``obs`` (B,O), ``times`` (K+1,) from :func:`sampling_times`, ``noise`` (B,A) standard normal.
    Differentiable (through ``phi``); callers that only act wrap it in ``torch.no_grad``.
    """
    assert noise.shape[0] == obs.shape[0], f"noise must have {obs.shape[0]} rows"
    B = obs.shape[0]
    a = noise * times[0]
    for i in range(times.shape[0] - 1):
        t = times[i].expand(B)
        tau = times[i + 1].expand(B)
        a = solution_map(phi(obs, a, t, tau), a, t, tau)
    return a.clamp(-clip, clip)


def euler_actions(
    phi: Phi, obs: torch.Tensor, times: torch.Tensor, noise: torch.Tensor, clip: float = 1.0
) -> torch.Tensor:
    """The instantaneous map alone as a diffusion sampler (a diagnostic, not the paper's
    acting): Euler steps of the probability-flow ODE ``da/dt = (a - phi_inst(s, a, t)) / t``
    along ``times``, i.e. ``a <- Phi(s, a, t_i, t_{i+1})`` with ``phi`` evaluated at
    ``tau = t_i`` (eq. 3-5's map with the denoiser in place of the network's long jump).

    Where :func:`sample_actions` relies on the consistency-trained solution map, this uses only
    what the flow loss (eq. 18) trains, so comparing the two on one policy says which part of a
    short run lags. Same shapes as :func:`sample_actions`.
    """
    assert noise.shape[0] == obs.shape[0], f"noise must have {obs.shape[0]} rows"
    B = obs.shape[0]
    a = noise * times[0]
    for i in range(times.shape[0] - 1):
        t = times[i].expand(B)
        a = solution_map(phi(obs, a, t, t), a, t, times[i + 1].expand(B))
    return a.clamp(-clip, clip)


# -- advantage weights (Thm. 2, eq. 14) -------------------------------------------------------
def advantage_weights(
    adv: torch.Tensor, eta: float, eps: float = 1e-6, max_weight: float = 100.0
) -> torch.Tensor:
    """Eq. 14: ``w = exp(eta max(0, A) / (std(A) + eps))``, capped at ``max_weight``: (B,) -> (B,).

    ``std`` is the minibatch's population std (correction 0; PROPOSAL), detached, as are the
    weights. ``eta = 0`` gives all-ones weights (GTP-BC). The cap is a PROPOSAL (IQL's 100).
    """
    adv = adv.detach().float()
    if eta == 0.0:
        return torch.ones_like(adv)
    scale = adv.std(correction=0) + eps if adv.numel() > 1 else torch.ones(()) + eps
    return torch.exp(eta * adv.clamp_min(0.0) / scale).clamp(max=max_weight)


# -- the actor's losses (eq. 17-19, Thm. 1) ---------------------------------------------------
def consistency_loss(student: torch.Tensor, teacher: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Eq. 17: ``mean_B w ||student - sg(teacher)||^2`` (squared norm summed over A)."""
    assert student.shape == teacher.shape, f"{tuple(student.shape)} != {tuple(teacher.shape)}"
    assert w.shape == student.shape[:1], f"w must be ({student.shape[0]},), got {tuple(w.shape)}"
    return (w.detach() * (student - teacher.detach()).pow(2).sum(-1)).mean()


def flow_loss(phi_inst: torch.Tensor, a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Eq. 18: ``mean_B w ||a - phi_inst(s, a_t, t)||^2``, the instantaneous map as a denoiser."""
    assert phi_inst.shape == a.shape, f"{tuple(phi_inst.shape)} != {tuple(a.shape)}"
    assert w.shape == a.shape[:1], f"w must be ({a.shape[0]},), got {tuple(w.shape)}"
    return (w.detach() * (a - phi_inst).pow(2).sum(-1)).mean()


def actor_losses(
    student: Phi,
    teacher: Phi,
    obs: torch.Tensor,
    a: torch.Tensor,
    z: torch.Tensor,
    t: torch.Tensor,
    u: torch.Tensor,
    tau: torch.Tensor,
    w: torch.Tensor,
    lambda_flow: float,
    flow_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Eq. 17-19 with the score approximation (Thm. 1, Remark 1): no ODE solver.

    ``a_t = a + t z``; the teacher's intermediate point is ``a~_u = a + u z`` (the same z: the
    approximate velocity ``(a_t - a) / t`` carried from t to u), so::

        L_cons = mean w ||Phi_theta(s, a_t, t, tau) - sg(Phi_theta-(s, a~_u, u, tau))||^2
        L_flow = mean w ||a - phi_theta(s, a_t, t, t)||^2
        L      = L_cons + lambda_flow L_flow

    ``student`` is phi_theta, ``teacher`` phi_theta- (the EMA actor, called without gradient);
    ``obs`` (B,O), ``a``, ``z`` (B,A), ``t``, ``u``, ``tau``, ``w`` (B,); ``flow_weight`` (B,),
    optional, multiplies w in L_flow only (e.g. :func:`edm_loss_weight`). The student's two
    evaluations (at tau and at t) are one batched call. Returns the loss and its parts
    (detached 0-d tensors).
    """
    B = a.shape[0]
    a_t = a + t.unsqueeze(-1) * z
    a_u = a + u.unsqueeze(-1) * z
    both = student(
        torch.cat([obs, obs]), torch.cat([a_t, a_t]), torch.cat([t, t]), torch.cat([tau, t])
    )  # (2B,A): phi(s, a_t, t, tau) then phi(s, a_t, t, t)
    phi_tau, phi_inst = both[:B], both[B:]
    with torch.no_grad():
        target = solution_map(teacher(obs, a_u, u, tau), a_u, u, tau)
    cons = consistency_loss(solution_map(phi_tau, a_t, t, tau), target, w)
    flow = flow_loss(phi_inst, a, w if flow_weight is None else w * flow_weight)
    loss = cons + lambda_flow * flow
    return loss, {"loss": loss.detach(), "cons": cons.detach(), "flow": flow.detach()}
