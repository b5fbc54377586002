"""``gjs``: geometric Jensen-Shannon disagreement of the ensemble (paper sec. 3.2, eq. 8-12).

Paper: "IPD: Boosting Sequential Policy with Imaginary Planning Distillation in Offline
Reinforcement Learning", eq. 8-11; the GJS divergence is from Nielsen (2019), "On the
Jensen-Shannon symmetrization of distances relying on abstract means", as used for model
ensembles by Frauenknecht et al. (2024), "Trust the Model Where It Trusts Itself".
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from ipd_plugins.uncertainty.base import ThresholdMetric, UncertaintyConfig, check_members
from registry.hookspecs import hookimpl
from registry.protocols import BuildContext

__all__ = [
    "GJSConfig",
    "GJSUncertainty",
    "kl_diag_gaussians",
    "geometric_mean_gaussian",
    "gjs_divergence",
    "pairwise_gjs",
]


@dataclasses.dataclass
class GJSConfig(UncertaintyConfig):
    r"""Mean pairwise geometric Jensen-Shannon divergence between the members (eq. 8-11).

    .. math::

        U(s,a) = \frac{1}{E(E-1)} \sum_{1 \le i < j \le E} J_{GJS}(N_i \| N_j)

        J_{GJS}(N_i \| N_j) = \tfrac12 [KL(N_i \| N_{ij}) + KL(N_j \| N_{ij})]

        \Sigma_{ij} = (\tfrac12 \Sigma_i^{-1} + \tfrac12 \Sigma_j^{-1})^{-1},\quad
        \mu_{ij} = \Sigma_{ij} (\tfrac12 \Sigma_i^{-1}\mu_i + \tfrac12 \Sigma_j^{-1}\mu_j)

    with :math:`N_e = N(\mu_e, \Sigma_e)` member e's diagonal Gaussian over the next state and
    :math:`N_{ij}` their normalised geometric mean. The normalisation :math:`1/(E(E-1))` over the
    :math:`E(E-1)/2` unordered pairs is implemented as written in eq. 8 (so U is half the mean
    over pairs; the factor is a constant and only rescales kappa). The KL divergence is invariant
    under invertible maps of the state, so U is the same in raw and in normalised units.
    The reliable set is ``U < kappa`` (eq. 12).

    Args:
        percentile: kappa = this percentile of U over the dataset's own (s, a) pairs.
        kappa: fixed kappa, overriding ``percentile``.
        min_var: floor on the member variances before inverting them (numerical safety).
    """

    name: ClassVar[str] = "gjs"

    # variances below this are raised to it before taking 1/var; lower only if the world
    # model really predicts variances this small (raw units)
    min_var: float = 1e-12

    def create(self, ctx: BuildContext) -> GJSUncertainty:
        return GJSUncertainty(self)


def kl_diag_gaussians(
    mean_p: torch.Tensor, var_p: torch.Tensor, mean_q: torch.Tensor, var_q: torch.Tensor
) -> torch.Tensor:
    """KL(N(mean_p, diag var_p) || N(mean_q, diag var_q)), summed over the last axis.

    (..., O) x 4 -> (...): 0.5 * sum(var_p/var_q + (mean_q - mean_p)^2/var_q - 1 + log var_q/var_p)
    (the KL terms of eq. 9).
    """
    return 0.5 * (
        var_p / var_q + (mean_q - mean_p).square() / var_q - 1.0 + torch.log(var_q / var_p)
    ).sum(-1)


def geometric_mean_gaussian(
    mean_i: torch.Tensor, var_i: torch.Tensor, mean_j: torch.Tensor, var_j: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """N_ij of eq. 10-11 for diagonal Gaussians: (mean_ij, var_ij), each (..., O).

    var_ij = (0.5/var_i + 0.5/var_j)^-1;  mean_ij = var_ij * (0.5 mean_i/var_i + 0.5 mean_j/var_j).
    """
    prec_i, prec_j = 1.0 / var_i, 1.0 / var_j
    var_ij = 1.0 / (0.5 * prec_i + 0.5 * prec_j)
    mean_ij = var_ij * (0.5 * prec_i * mean_i + 0.5 * prec_j * mean_j)
    return mean_ij, var_ij


def gjs_divergence(
    mean_i: torch.Tensor, var_i: torch.Tensor, mean_j: torch.Tensor, var_j: torch.Tensor
) -> torch.Tensor:
    """J_GJS(N_i || N_j) of eq. 9 in closed form, (..., O) x 4 -> (...)."""
    mean_ij, var_ij = geometric_mean_gaussian(mean_i, var_i, mean_j, var_j)
    return 0.5 * (
        kl_diag_gaussians(mean_i, var_i, mean_ij, var_ij)
        + kl_diag_gaussians(mean_j, var_j, mean_ij, var_ij)
    )


def pairwise_gjs(
    member_mean: torch.Tensor, member_var: torch.Tensor, min_var: float = 1e-12
) -> torch.Tensor:
    """U(s,a) of eq. 8: (E,B,O), (E,B,O) -> (B,), all pairs i<j at once.

    U = 1/(E(E-1)) * sum_{i<j} J_GJS(N_i || N_j); 0 for a single member.
    """
    check_members(member_mean, member_var)
    E = member_mean.shape[0]
    if E < 2:
        return member_mean.new_zeros(member_mean.shape[1])
    mean = member_mean.float()
    var = member_var.float().clamp_min(min_var)
    i, j = torch.triu_indices(E, E, offset=1, device=mean.device)  # (P,), P = E(E-1)/2
    div = gjs_divergence(mean[i], var[i], mean[j], var[j])  # (P,B)
    return div.sum(0) / (E * (E - 1))


class GJSUncertainty(ThresholdMetric):
    """Callable metric: (E,B,O) member means and variances -> (B,) U (eq. 8)."""

    config: GJSConfig

    def __call__(self, member_mean: torch.Tensor, member_var: torch.Tensor) -> torch.Tensor:
        return pairwise_gjs(member_mean, member_var, self.config.min_var)


@hookimpl
def ipd_register_uncertainty() -> list[type[UncertaintyConfig]]:
    return [GJSConfig]
