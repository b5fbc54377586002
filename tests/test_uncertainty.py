"""Uncertainty metrics (paper eq. 8-12): GJS maths against independent computations."""

from __future__ import annotations

import importlib
import itertools
import math

import pytest
import torch
from torch.distributions import Normal

from ipd_plugins.uncertainty.alternatives import (
    AleatoricConfig,
    DisagreementConfig,
    NoUncertaintyConfig,
    max_aleatoric_std,
    mean_disagreement,
)
from ipd_plugins.uncertainty.gjs import (
    GJSConfig,
    geometric_mean_gaussian,
    gjs_divergence,
    kl_diag_gaussians,
    pairwise_gjs,
)
from ipd_plugins.uncertainty.reliable import percentile_kappa
from registry.manager import PluginRegistry
from registry.protocols import BuildContext, UncertaintyMetric

CTX = BuildContext(obs_dim=3, act_dim=1, act_low=(-1.0,), act_high=(1.0,))


def _mc_gjs(mi, vi, mj, vj, n=400_000, seed=0):
    """Monte-Carlo J_GJS (eq. 9): sample-based KL(N_i || N_ij) and KL(N_j || N_ij)."""
    g = torch.Generator().manual_seed(seed)
    mij, vij = geometric_mean_gaussian(mi, vi, mj, vj)
    nij = Normal(mij, vij.sqrt())

    def kl(m, v):
        p = Normal(m, v.sqrt())
        x = m + v.sqrt() * torch.randn((n, *m.shape), generator=g, dtype=m.dtype)
        return (p.log_prob(x) - nij.log_prob(x)).sum(-1).mean(0)

    return 0.5 * (kl(mi, vi) + kl(mj, vj))


def test_geometric_mean_gaussian_is_the_normalised_geometric_mean_density():
    # eq. 10-11 against a numerically normalised sqrt(p_i p_j) on a grid (1-d)
    mi, vi, mj, vj = (torch.tensor([v], dtype=torch.float64) for v in (0.3, 0.5, -1.2, 2.0))
    x = torch.linspace(-15, 15, 200_001, dtype=torch.float64)
    dens = (0.5 * (Normal(mi, vi.sqrt()).log_prob(x) + Normal(mj, vj.sqrt()).log_prob(x))).exp()
    dx = x[1] - x[0]
    dens = dens / (dens.sum() * dx)
    mean = (x * dens).sum() * dx
    var = ((x - mean) ** 2 * dens).sum() * dx
    mij, vij = geometric_mean_gaussian(mi, vi, mj, vj)
    assert float(mij) == pytest.approx(float(mean), abs=1e-6)
    assert float(vij) == pytest.approx(float(var), rel=1e-5)


def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(1)
    mp, mq = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    vp, vq = torch.rand(5, 4, generator=g) + 0.1, torch.rand(5, 4, generator=g) + 0.1
    ref = torch.distributions.kl_divergence(Normal(mp, vp.sqrt()), Normal(mq, vq.sqrt())).sum(-1)
    torch.testing.assert_close(kl_diag_gaussians(mp, vp, mq, vq), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_gjs_closed_form_matches_monte_carlo(seed):
    g = torch.Generator().manual_seed(seed)
    mi, mj = torch.randn(3, generator=g, dtype=torch.float64), torch.randn(3, generator=g).double()
    vi = torch.rand(3, generator=g, dtype=torch.float64) * 2 + 0.2
    vj = torch.rand(3, generator=g, dtype=torch.float64) * 2 + 0.2
    closed = float(gjs_divergence(mi, vi, mj, vj))
    mc = float(_mc_gjs(mi, vi, mj, vj, seed=seed))
    assert closed > 0.05
    assert mc == pytest.approx(closed, rel=0.03, abs=3e-3)


def test_zero_for_identical_members_and_symmetric():
    g = torch.Generator().manual_seed(2)
    mean = torch.randn(1, 7, 5, generator=g).expand(3, -1, -1)
    var = (torch.rand(1, 7, 5, generator=g) + 0.05).expand(3, -1, -1)
    assert torch.allclose(pairwise_gjs(mean, var), torch.zeros(7), atol=1e-6)

    mi, mj = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    vi, vj = torch.rand(7, 5, generator=g) + 0.1, torch.rand(7, 5, generator=g) + 0.1
    torch.testing.assert_close(gjs_divergence(mi, vi, mj, vj), gjs_divergence(mj, vj, mi, vi))
    # the ensemble metric does not depend on the order of the members
    m3, v3 = torch.randn(3, 7, 5, generator=g), torch.rand(3, 7, 5, generator=g) + 0.1
    perm = torch.tensor([2, 0, 1])
    torch.testing.assert_close(pairwise_gjs(m3, v3), pairwise_gjs(m3[perm], v3[perm]))


def test_gjs_grows_with_mean_shift_and_variance_ratio():
    shifts = torch.tensor([0.0, 0.1, 0.5, 1.0, 3.0])
    one = torch.ones(5, 2)
    mean = torch.stack([torch.zeros(5, 2), shifts[:, None] * one])  # (E=2,B=5,O=2)
    u = pairwise_gjs(mean, torch.ones(2, 5, 2))
    assert float(u[0]) == pytest.approx(0.0, abs=1e-7)
    assert torch.all(u[1:] > u[:-1])
    # equal variances v: N_ij = N(dmu/2, v), so KL(N_i||N_ij) = dmu^2/(8v) per dim = J_GJS;
    # two dims, v = 1, and U = J / (E(E-1)) = J / 2
    torch.testing.assert_close(u, (2 * shifts**2 / 8) / 2)

    ratios = torch.tensor([1.0, 1.5, 3.0, 10.0])
    var = torch.stack([torch.ones(4, 2), ratios[:, None] * torch.ones(4, 2)])
    u = pairwise_gjs(torch.zeros(2, 4, 2), var)
    assert float(u[0]) == pytest.approx(0.0, abs=1e-7)
    assert torch.all(u[1:] > u[:-1])


def test_pairwise_normalisation_is_one_over_e_times_e_minus_one():
    g = torch.Generator().manual_seed(3)
    E = 4
    mean, var = torch.randn(E, 6, 3, generator=g), torch.rand(E, 6, 3, generator=g) + 0.2
    total = sum(
        gjs_divergence(mean[i], var[i], mean[j], var[j])
        for i, j in itertools.combinations(range(E), 2)
    )
    torch.testing.assert_close(pairwise_gjs(mean, var), total / (E * (E - 1)))
    assert torch.equal(pairwise_gjs(mean[:1], var[:1]), torch.zeros(6))


def test_gjs_is_invariant_to_rescaling_the_state():
    # KL is invariant under invertible maps, so U is the same in raw and normalised units
    g = torch.Generator().manual_seed(4)
    mean, var = torch.randn(3, 6, 3, generator=g), torch.rand(3, 6, 3, generator=g) + 0.2
    scale, shift = torch.tensor([10.0, 0.1, 3.0]), torch.tensor([5.0, -1.0, 0.0])
    torch.testing.assert_close(
        pairwise_gjs(mean * scale + shift, var * scale**2),
        pairwise_gjs(mean, var),
        rtol=1e-4,
        atol=1e-5,
    )


def test_alternatives_on_hand_made_inputs():
    # member means 0 and 2 on dim 0, equal on dim 1 -> population std (1, 0)
    mean = torch.tensor([[[0.0, 5.0], [1.0, 1.0]], [[2.0, 5.0], [1.0, 4.0]]])  # (E=2,B=2,O=2)
    var = torch.tensor([[[1.0, 3.0], [0.25, 0.0]], [[4.0, 0.0], [0.0, 0.0]]])
    torch.testing.assert_close(mean_disagreement(mean, "max"), torch.tensor([1.0, 1.5]))
    torch.testing.assert_close(mean_disagreement(mean, "norm"), torch.tensor([1.0, 1.5]))
    mean3 = torch.tensor([[[0.0, 0.0]], [[2.0, 4.0]]])  # std (1, 2)
    torch.testing.assert_close(mean_disagreement(mean3, "norm"), torch.tensor([math.sqrt(5.0)]))
    # aleatoric: max_e sqrt(sum_d var): row 0 -> max(2, 2) = 2; row 1 -> max(0.5, 0) = 0.5
    torch.testing.assert_close(max_aleatoric_std(var), torch.tensor([2.0, 0.5]))

    dis = DisagreementConfig().create(CTX)
    ale = AleatoricConfig().create(CTX)
    none = NoUncertaintyConfig().create(CTX)
    torch.testing.assert_close(dis(mean, var), torch.tensor([1.0, 1.5]))
    torch.testing.assert_close(ale(mean, var), torch.tensor([2.0, 0.5]))
    assert torch.equal(none(mean, var), torch.zeros(2))
    assert none.calibrate(torch.rand(10)) == math.inf
    for metric in (dis, ale, none, GJSConfig().create(CTX)):
        assert isinstance(metric, UncertaintyMetric)


def test_calibrate_percentile_and_override():
    u = torch.arange(101, dtype=torch.float32)
    assert GJSConfig().create(CTX).calibrate(u) == pytest.approx(99.0)
    assert GJSConfig(percentile=50.0).create(CTX).calibrate(u) == pytest.approx(50.0)
    assert GJSConfig(kappa=0.25).create(CTX).calibrate(u) == 0.25
    assert DisagreementConfig(percentile=90.0).create(CTX).calibrate(u) == pytest.approx(90.0)
    with pytest.raises(ValueError, match="NaN"):
        percentile_kappa(torch.tensor([1.0, float("nan")]), 99.0)
    with pytest.raises(ValueError, match="empty"):
        percentile_kappa(torch.zeros(0), 99.0)
    with pytest.raises(ValueError, match="percentile"):
        GJSConfig(percentile=0.0)


def test_errors_name_the_shapes():
    metric = GJSConfig().create(CTX)
    with pytest.raises(ValueError, match=r"\(E,B,O\)"):
        metric(torch.zeros(3, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="same shape"):
        metric(torch.zeros(3, 4, 2), torch.zeros(3, 4, 3))
    with pytest.raises(ValueError, match="reduce"):
        DisagreementConfig(reduce="mean")


def test_registered_and_configurable_by_dict():
    mods = tuple(
        importlib.import_module(n)
        for n in ("ipd_plugins.uncertainty.gjs", "ipd_plugins.uncertainty.alternatives")
    )
    reg = PluginRegistry(builtins=mods, entry_points=False)
    assert reg.names("uncertainty") == ["aleatoric", "disagreement", "gjs", "none"]
    metric = reg.create("uncertainty", "gjs", {"percentile": "95", "kappa": "none"}, CTX)
    assert metric.config.percentile == 95.0 and metric.config.kappa is None
    from ipd_plugins.builtin import DEFAULT_PLUGINS

    assert {m.__name__ for m in mods} <= set(DEFAULT_PLUGINS)
