"""Pure loss functions of the world model (paper sec. 3.2, eq. 13-16), plus the Gaussian NLL.

All tensors are in the model's *normalised* target space (standardised next-state deltas and
rewards). Shapes: ``E`` members, ``B`` batch, ``O`` target dims.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "ensemble_mean_cov",
    "reparameterised_mean",
    "gamma_exp",
    "covariance_regulariser",
    "transition_consistency_loss",
    "reward_loss",
    "gaussian_nll",
    "soft_bound_logvar",
]


def ensemble_mean_cov(
    member_mean: torch.Tensor, member_var: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(E,B,O), (E,B,O) -> (B,O), (B,O): mean_e mu_e and Sigma_PE = mean_e Sigma_e (eq. 13).

    Sigma_PE is the average of the diagonal member covariances, as eq. 13 writes it (not the
    mixture covariance, which would add the spread of the means).
    """
    return member_mean.mean(0), member_var.mean(0)


def reparameterised_mean(
    mean: torch.Tensor, cov: torch.Tensor, eps: torch.Tensor | None = None
) -> torch.Tensor:
    """mu_PE = mean + Sigma_PE^{1/2} * eps, eps ~ N(0, I) (eq. 13, second line); (B,O) each.

    ``eps`` may be passed for reproducibility/tests; otherwise it is drawn with the global RNG.
    """
    if eps is None:
        eps = torch.randn_like(mean)
    return mean + cov.clamp_min(0).sqrt() * eps


def gamma_exp(step: int | float, gamma_0: float = 1.0, decay_T: float = 1e5) -> float:
    """gamma_exp(k) = gamma_0 * exp(-k / T) (eq. 15)."""
    if decay_T <= 0:
        raise ValueError(f"the decay rate T must be > 0, got {decay_T}")
    return float(gamma_0 * math.exp(-float(step) / decay_T))


def covariance_regulariser(cov: torch.Tensor, sigma_reg: float, weight: float) -> torch.Tensor:
    """|| gamma_exp (Sigma_PE - Sigma_reg) ||^2, summed over dims, averaged over B (eq. 14).

    ``cov`` (B,O) is the diagonal of Sigma_PE; ``sigma_reg`` the diagonal of Sigma_reg = s I.
    """
    return (weight * (cov - sigma_reg)).square().sum(-1).mean()


def transition_consistency_loss(
    mu_pe: torch.Tensor,
    target: torch.Tensor,
    cov: torch.Tensor,
    sigma_reg: float,
    weight: float,
) -> torch.Tensor:
    """L_c of eq. 14: mean_B ||mu_PE - s'||^2 + ||gamma_exp (Sigma_PE - Sigma_reg)||^2.

    ``mu_pe`` (B,O) from :func:`reparameterised_mean`, ``target`` (B,O), ``cov`` (B,O).
    """
    mse = (mu_pe - target).square().sum(-1).mean()
    return mse + covariance_regulariser(cov, sigma_reg, weight)


def reward_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_r of eq. 16: mean |R(s,a) - r|^2; (B,) or (E,B) predictions against (B,) targets."""
    return (pred - target).square().mean()


def gaussian_nll(
    member_mean: torch.Tensor, member_logvar: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """Per-member Gaussian negative log-likelihood (PETS/MOPO), without the log(2 pi) constant.

    0.5 * [(y - mu_e)^2 / var_e + log var_e], summed over dims, averaged over E and B.
    (E,B,O), (E,B,O), (B,O) -> scalar. This is what trains each member's variance to match its
    own residuals (eq. 14 alone only fits the ensemble mean).
    """
    inv_var = torch.exp(-member_logvar)
    return 0.5 * ((member_mean - target).square() * inv_var + member_logvar).sum(-1).mean()


def soft_bound_logvar(raw: torch.Tensor, min_logvar: float, max_logvar: float) -> torch.Tensor:
    """Smoothly squash ``raw`` into (min_logvar, max_logvar) as PETS does (fixed bounds).

    max - softplus(max - raw), then min + softplus(. - min): identity well inside the bounds,
    saturating (with a non-zero gradient) near them. The second softplus can overshoot the upper
    bound by at most softplus's error at (max - min), about 4e-5 for [-10, 0.2]; a final clamp
    makes the bounds exact.
    """
    out = max_logvar - F.softplus(max_logvar - raw)
    return (min_logvar + F.softplus(out - min_logvar)).clamp(min_logvar, max_logvar)
