"""Alternative uncertainty metrics for the ablation of paper sec. 3.2's GJS measure.

- ``disagreement``: spread of the member means (epistemic only), as in MOReL / "ensemble
  disagreement" (Kidambi et al. 2020; Pathak et al. 2019).
- ``aleatoric``: the largest member standard-deviation norm, MOPO's penalty
  (Yu et al. 2020, "MOPO: Model-based Offline Policy Optimization", sec. 4.3).
- ``none``: U = 0 everywhere, kappa = +inf: every imagined step counts as reliable.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch

from ipd_plugins.uncertainty.base import ThresholdMetric, UncertaintyConfig, check_members
from registry.hookspecs import hookimpl
from registry.protocols import BuildContext

__all__ = [
    "DisagreementConfig",
    "AleatoricConfig",
    "NoUncertaintyConfig",
    "DisagreementUncertainty",
    "AleatoricUncertainty",
    "NoUncertainty",
    "mean_disagreement",
    "max_aleatoric_std",
]

_REDUCTIONS = ("max", "norm")


@dataclasses.dataclass
class DisagreementConfig(UncertaintyConfig):
    r"""Spread of the member means: the per-dimension std across members, reduced over dims.

    .. math::

        \sigma_d = \sqrt{\tfrac1E \sum_e (\mu_{e,d} - \bar\mu_d)^2},\qquad
        U = \max_d \sigma_d \;(\text{reduce}=\text{max})\quad\text{or}\quad
        U = \|\sigma\|_2 \;(\text{reduce}=\text{norm})

    in raw next-state units (so large-scale dimensions weigh more; unlike GJS this is not
    scale-invariant). Ignores the member variances.

    Args:
        percentile: kappa = this percentile of U over the dataset's own (s, a) pairs.
        kappa: fixed kappa, overriding ``percentile``.
        reduce: ``max`` (the worst dimension) or ``norm`` (Euclidean norm over dimensions).
    """

    name: ClassVar[str] = "disagreement"

    # how to reduce the per-dim spread: "max" flags any single diverging dim; "norm" sums them
    reduce: str = "max"

    def validate(self) -> None:
        super().validate()
        if self.reduce not in _REDUCTIONS:
            raise ValueError(
                f"disagreement.reduce must be one of {_REDUCTIONS}, got {self.reduce!r}"
            )

    def create(self, ctx: BuildContext) -> DisagreementUncertainty:
        return DisagreementUncertainty(self)


@dataclasses.dataclass
class AleatoricConfig(UncertaintyConfig):
    r"""MOPO's penalty: the largest Frobenius norm of a member's predicted std.

    .. math:: U = \max_e \|\Sigma_e^{1/2}\|_F = \max_e \sqrt{\textstyle\sum_d \sigma^2_{e,d}}

    (raw next-state units).

    Args:
        percentile: kappa = this percentile of U over the dataset's own (s, a) pairs.
        kappa: fixed kappa, overriding ``percentile``.
    """

    name: ClassVar[str] = "aleatoric"

    def create(self, ctx: BuildContext) -> AleatoricUncertainty:
        return AleatoricUncertainty(self)


@dataclasses.dataclass
class NoUncertaintyConfig(UncertaintyConfig):
    """No uncertainty: U = 0 for every pair and kappa = +inf (unless ``kappa`` is set).

    The ablation "no reliable-set check": imagined rollouts are never cut by uncertainty.

    Args:
        percentile: unused (kept so every metric takes the same options).
        kappa: unused unless set; then it is returned by ``calibrate`` as given.
    """

    name: ClassVar[str] = "none"

    def create(self, ctx: BuildContext) -> NoUncertainty:
        return NoUncertainty(self)


def mean_disagreement(member_mean: torch.Tensor, reduce: str = "max") -> torch.Tensor:
    """(E,B,O) -> (B,): the population std across members per dim, then max or L2 over dims."""
    if member_mean.dim() != 3:
        raise ValueError(f"member_mean must be (E,B,O), got {tuple(member_mean.shape)}")
    spread = member_mean.float().std(0, unbiased=False)  # (B,O)
    if reduce == "max":
        return spread.amax(-1)
    if reduce == "norm":
        return spread.norm(dim=-1)
    raise ValueError(f"reduce must be one of {_REDUCTIONS}, got {reduce!r}")


def max_aleatoric_std(member_var: torch.Tensor) -> torch.Tensor:
    """(E,B,O) -> (B,): max over members of sqrt(sum_d var_{e,d}) (MOPO)."""
    if member_var.dim() != 3:
        raise ValueError(f"member_var must be (E,B,O), got {tuple(member_var.shape)}")
    return member_var.float().clamp_min(0).sum(-1).sqrt().amax(0)


class DisagreementUncertainty(ThresholdMetric):
    config: DisagreementConfig

    def __call__(self, member_mean: torch.Tensor, member_var: torch.Tensor) -> torch.Tensor:
        check_members(member_mean, member_var)
        return mean_disagreement(member_mean, self.config.reduce)


class AleatoricUncertainty(ThresholdMetric):
    config: AleatoricConfig

    def __call__(self, member_mean: torch.Tensor, member_var: torch.Tensor) -> torch.Tensor:
        check_members(member_mean, member_var)
        return max_aleatoric_std(member_var)


class NoUncertainty(ThresholdMetric):
    config: NoUncertaintyConfig

    def __call__(self, member_mean: torch.Tensor, member_var: torch.Tensor) -> torch.Tensor:
        check_members(member_mean, member_var)
        return member_mean.new_zeros(member_mean.shape[1], dtype=torch.float32)

    def calibrate(self, u_data: torch.Tensor) -> float:
        """+inf (every step reliable), or the ``kappa`` override when one is set."""
        return math.inf if self.config.kappa is None else float(self.config.kappa)


@hookimpl
def ipd_register_uncertainty() -> list[type[UncertaintyConfig]]:
    return [DisagreementConfig, AleatoricConfig, NoUncertaintyConfig]
