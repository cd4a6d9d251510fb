"""Tests for :mod:`diffusion_core.likelihood`: the log-likelihood through the flow's ODE.

The exact velocity field of the 2-D mixture carries the data law to N(0, I), so its ODE
log-likelihood must equal the closed-form log-density of the mixture; with Hutchinson's
estimate of the divergence it must do so on average, within k = 4 standard errors.
"""

import math

import pytest
import torch

from diffusion_core import flow
from diffusion_core._validation import MAX_LEVEL
from diffusion_core.analytic import default_mixture_2d, gaussian
from diffusion_core.likelihood import (
    bits_per_dim,
    dequantize,
    divergence,
    hutchinson_divergence,
    log_likelihood,
    rademacher,
)
from diffusion_core.metrics import assert_within, mean_and_standard_error
from diffusion_core.schedules import VPSDE, RectifiedFlow

F64 = torch.float64
RF = RectifiedFlow()


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def mixture():
    return default_mixture_2d()


def test_divergence_is_the_trace_of_the_jacobian():
    a = torch.tensor([[0.3, -1.2, 0.5], [2.0, -0.7, 0.1], [0.4, 0.9, 1.5]], dtype=F64)

    def field(x, t):
        return x @ a.T * t + torch.sin(x)

    x = torch.randn(7, 3, generator=gen(0), dtype=F64)
    expected = 0.5 * torch.trace(a) + torch.cos(x).sum(1)
    torch.testing.assert_close(divergence(field, x, 0.5), expected, rtol=1e-12, atol=1e-12)


def test_hutchinson_estimator_is_unbiased_with_the_predicted_variance(mixture):
    # At one point, many Rademacher probes: the mean is the exact divergence within 4 standard
    # errors. In 2-D each estimate is J_11 + J_22 + z_1 z_2 (J_12 + J_21), the divergence plus
    # or minus |J_12 + J_21|: the variance 2 (||J_s||_F^2 - sum_i J_ii^2) = (J_12 + J_21)^2.
    field = flow.exact_velocity(mixture, RF)
    x = torch.tensor([[0.4, 0.6]], dtype=F64)
    n, g = 400, gen(1)
    exact = float(divergence(field, x, 0.3))
    draws = torch.cat(
        [hutchinson_divergence(field, x, 0.3, rademacher(x.shape, g)) for _ in range(n)]
    )
    mean, se = mean_and_standard_error(draws)
    assert_within(mean, exact, se, what="Hutchinson mean")
    jacobian = torch.autograd.functional.jacobian(lambda y: field(y[None], 0.3)[0], x[0])
    spread = abs(float(jacobian[0, 1] + jacobian[1, 0]))
    torch.testing.assert_close((draws - exact).abs(), torch.full_like(draws, spread))
    gaussian_draws = torch.cat(
        [
            hutchinson_divergence(field, x, 0.3, torch.randn(x.shape, generator=g, dtype=F64))
            for _ in range(n)
        ]
    )
    # a Gaussian probe has the larger variance 2 ||J_s||_F^2 (the diagonal's share kept)
    sym = (jacobian + jacobian.T) / 2
    mean, se = mean_and_standard_error((gaussian_draws - exact) ** 2)
    assert_within(mean, 2 * float(sym.square().sum()), se, what="Gaussian-probe variance")


def test_ode_log_likelihood_of_the_exact_mixture_model_is_its_log_density(mixture):
    x = mixture.sample(100, gen(2))
    field = flow.exact_velocity(mixture, RF)
    ll = log_likelihood(field, x, RF, steps=32)
    # RK4's error: 3.5e-4 at most at 32 steps, 1.6e-5 at 64 (measured)
    torch.testing.assert_close(ll, mixture.log_prob(x), rtol=0, atol=2e-3)


def test_ode_log_likelihood_with_hutchinson_matches_within_standard_errors(mixture):
    x = mixture.sample(200, gen(3))
    field = flow.exact_velocity(mixture, RF)
    probe = rademacher(x.shape, gen(4))
    gap, se = mean_and_standard_error(
        log_likelihood(field, x, RF, steps=24, probe=probe) - mixture.log_prob(x)
    )
    assert_within(gap, 0.0, se, what="mean Hutchinson log-likelihood error")


def test_ode_log_likelihood_of_a_gaussian_flow_in_five_dimensions():
    # A correlated Gaussian: the flow is linear, exact in closed form.
    g = gen(5)
    root = torch.randn(5, 5, generator=g, dtype=F64) / 3
    data = gaussian(torch.linspace(-1, 1, 5, dtype=F64), root @ root.T + 0.2 * torch.eye(5))
    x = data.sample(20, g)
    ll = log_likelihood(flow.exact_velocity(data, RF), x, RF, steps=16)
    torch.testing.assert_close(ll, data.log_prob(x), rtol=0, atol=1e-4)


def test_bits_per_dim_and_dequantization():
    # A density uniform over the bins has -log2 P = 0 per dimension on a one-bin grid, and
    # d bits for two equally likely levels per dimension.
    assert float(
        bits_per_dim(torch.tensor(-3 * math.log(0.5), dtype=F64), 3, 0.5)
    ) == pytest.approx(0)
    assert float(bits_per_dim(torch.tensor(0.0, dtype=F64), 3, 0.5)) == pytest.approx(1.0)
    levels = torch.arange(10, dtype=F64)[:, None].expand(10, 1000) / 8
    noisy = dequantize(levels, 1 / 8, gen(6))
    assert float((noisy - levels).abs().max()) <= 1 / 16
    assert_within(float((noisy - levels).mean()), 0.0, (1 / 8) / math.sqrt(12 * 10_000))


def test_rademacher_probes_are_signs():
    z = rademacher((1000, 3), gen(7))
    assert set(z.unique().tolist()) == {-1.0, 1.0}
    assert_within(float(z.mean()), 0.0, 1 / math.sqrt(3000))


X = torch.zeros(4, 2, dtype=F64)


def _identity(x, t):
    return x


BAD_CALLS = [
    (divergence, (None, X, 0.5), TypeError, "field"),
    (divergence, (_identity, torch.zeros(4), 0.5), ValueError, "x"),
    (divergence, (lambda x, t: x[:2], X, 0.5), ValueError, "field"),
    (hutchinson_divergence, (_identity, X, 0.5, torch.zeros(3, 2)), ValueError, "probe"),
    (hutchinson_divergence, (_identity, X, 0.5, "z"), TypeError, "probe"),
    (rademacher, ((2, 0), gen(0)), ValueError, "shape"),
    (rademacher, ((2, 2), 3), TypeError, "generator"),
    (log_likelihood, (_identity, X, "rf"), TypeError, "process"),
    (log_likelihood, (_identity, X, RF, 0), ValueError, "steps"),
    (log_likelihood, (_identity, X, RF, 4, torch.zeros(2, 2)), ValueError, "probe"),
    (log_likelihood, (_identity, X, VPSDE()), ValueError, "process"),
    (dequantize, (X, 0.0, gen(0)), ValueError, "bin_width"),
    (dequantize, (X, 0.1, None), TypeError, "generator"),
    (dequantize, ([1.0], 0.1, gen(0)), TypeError, "x"),
    (bits_per_dim, (torch.zeros(2), 0, 0.1), ValueError, "dim"),
    (bits_per_dim, (torch.zeros(2), 2, -1.0), ValueError, "bin_width"),
    (bits_per_dim, (torch.tensor([math.nan]), 2, 0.1), ValueError, "log_likelihood"),
    (bits_per_dim, (None, 2, 0.1), TypeError, "log_likelihood"),
    (bits_per_dim, ("x", 2, 0.1), TypeError, "log_likelihood"),
    # sizes beyond memory, and dtypes a probe cannot have
    (rademacher, ((10**9, 10**9), gen(0)), ValueError, "shape"),
    (rademacher, ((2, 2), gen(0), "float64"), TypeError, "dtype"),
    (rademacher, ((2, 2), gen(0), torch.int64), TypeError, "dtype"),
    # coordinates whose squares overflow: a NaN divergence or log-likelihood before
    (divergence, (_identity, X + 1e200, 0.5), ValueError, "x"),
    (hutchinson_divergence, (_identity, X, 0.5, X + 1e200), ValueError, "probe"),
    (log_likelihood, (_identity, X - 1e200, RF, 4), ValueError, "x"),
    (log_likelihood, (_identity, X, RF, 4, X + 1e200), ValueError, "probe"),
]


def test_huge_but_allowed_coordinates_give_finite_answers(mixture):
    # At the bound on x and on the probe (MAX_LEVEL), the answers are still finite.
    field = flow.exact_velocity(mixture, RF)
    x = rademacher((4, 2), gen(5)) * MAX_LEVEL
    assert torch.isfinite(divergence(field, x, 0.5)).all()
    assert torch.isfinite(log_likelihood(field, x, RF, steps=4)).all()
    probe = rademacher(x.shape, gen(6)) * MAX_LEVEL
    assert torch.isfinite(hutchinson_divergence(field, x / MAX_LEVEL, 0.5, probe)).all()
    assert torch.isfinite(log_likelihood(field, x / MAX_LEVEL, RF, steps=4, probe=probe)).all()


@pytest.mark.parametrize("function, args, error, name", BAD_CALLS)
def test_bad_arguments_are_refused_by_name(function, args, error, name):
    with pytest.raises(error, match=name):
        function(*args)
