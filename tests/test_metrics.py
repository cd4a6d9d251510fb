"""Tests of diffusion_core.metrics: exact values where they exist, Monte Carlo otherwise.

Monte Carlo tolerances are 5 standard errors (SE) unless a comment derives another bound; with
fixed seeds the tests are deterministic.
"""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from diffusion_core.analytic import GaussianMixture, default_mixture_2d, gaussian
from diffusion_core.metrics import (
    assert_within,
    gaussian_kl,
    gaussian_w2,
    mean_and_standard_error,
    mixture_weight_tv,
    mmd_rbf,
    rms_distance,
    sliced_wasserstein,
    sliced_wasserstein_floor,
)

N_SE = 5.0
F64 = torch.float64


def make_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=make_generator(seed), dtype=F64)


def random_spd(dim: int, seed: int) -> torch.Tensor:
    a = randn(dim, dim, seed=seed)
    return a @ a.T / dim + 0.2 * torch.eye(dim, dtype=F64)


# ------------------------------------------------------------------------ sliced Wasserstein


def test_rms_distance_pairs_rows():
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([[3.0, 4.0], [1.0, 1.0]], dtype=torch.float64)
    assert math.isclose(rms_distance(x, y).item(), math.sqrt((25 + 0) / 2), rel_tol=1e-15)
    # Rows are paired, not matched: the same set in another order is at distance 2^(1/2).
    assert math.isclose(rms_distance(x, x.flip(0)).item(), math.sqrt(2), rel_tol=1e-15)
    assert rms_distance(x[:1].float(), y[:1]).dtype == torch.float64
    with pytest.raises(ValueError, match=r"pair row by row with x, shape \(2, 2\)"):
        rms_distance(x, y[:1])
    with pytest.raises(ValueError, match=r"must have shape \(n, d\)"):
        rms_distance(x[0], y[0])


def test_sliced_wasserstein_exact_cases():
    x = randn(300, 3, seed=0)
    assert float(sliced_wasserstein(x, x)) == 0.0
    assert sliced_wasserstein(x, x).dtype == F64 and sliced_wasserstein(x, x).ndim == 0
    # In 1-D every direction is +-1, so SW2 is W2, which for a translation is the shift.
    line = randn(500, 1, seed=1)
    assert float(sliced_wasserstein(line, line + 2.5)) == pytest.approx(2.5, rel=1e-12)
    # Unequal sizes: repeating every point three times leaves the distribution unchanged.
    assert float(sliced_wasserstein(line, line.repeat(3, 1) - 0.75)) == pytest.approx(0.75, 1e-12)
    # By hand: quantiles of {0, 1} and {0, 1, 2} differ by 1 on [1/3, 1/2) and on [2/3, 1),
    # so W2^2 = 1/6 + 1/3 = 1/2.
    two = torch.tensor([[1.0], [0.0]], dtype=F64)
    three = torch.tensor([[2.0], [0.0], [1.0]], dtype=F64)
    assert float(sliced_wasserstein(two, three)) == pytest.approx(math.sqrt(0.5), rel=1e-12)
    assert float(sliced_wasserstein(three, two)) == pytest.approx(math.sqrt(0.5), rel=1e-12)


def test_sliced_wasserstein_is_deterministic_by_default():
    x, y = randn(100, 2, seed=2), randn(80, 2, seed=3)
    assert float(sliced_wasserstein(x, y)) == float(sliced_wasserstein(x, y))
    a = sliced_wasserstein(x, y, generator=make_generator(5))
    b = sliced_wasserstein(x, y, generator=make_generator(5))
    assert float(a) == float(b)


def gaussian_sw2_2d(mean1, cov1, mean2, cov2, n_angles: int = 20_000):
    """Exact SW2 of two 2-D Gaussians by quadrature over the direction, and the spread of
    f(theta) = W2^2 of the projections = (theta.(m1 - m2))^2 + (s1(theta) - s2(theta))^2."""
    angles = torch.arange(n_angles, dtype=F64) * math.pi / n_angles  # f(theta + pi) = f(theta)
    theta = torch.stack([angles.cos(), angles.sin()], dim=1)
    s1 = ((theta @ cov1) * theta).sum(1).sqrt()
    s2 = ((theta @ cov2) * theta).sum(1).sqrt()
    f = (theta @ (mean1 - mean2)) ** 2 + (s1 - s2) ** 2
    return float(f.mean().sqrt()), float(f.std())


def sliced_error_and_bound(mean1, cov1, mean2, cov2, n: int, n_projections: int):
    """|SW2(x, y) - SW2(P, Q)| for n-samples x ~ P = N(mean1, cov1), y ~ Q = N(mean2, cov2),
    and a bound on it.

    For a fixed set of directions SW2 is a metric, so |SW2(x, y) - SW2(P, Q)| <=
    SW2(x, P) + SW2(y, Q); each term is about floor / sqrt(2) (the floor compares two samples),
    so the sum of the floors of P and Q bounds the sampling error with a margin of sqrt(2). The
    random directions add an error of SE = sd(f) / sqrt(n_projections) on SW2^2, that is
    SE / (2 SW2) on SW2, of which N_SE standard errors are allowed.
    """
    p, q = gaussian(mean1, cov1), gaussian(mean2, cov2)
    exact, spread = gaussian_sw2_2d(mean1, cov1, mean2, cov2)
    g = make_generator(n)
    estimate = sliced_wasserstein(p.sample(n, g), q.sample(n, g), n_projections, g)
    floors = sliced_wasserstein_floor(p.sample, n, generator=g, repeats=2)
    floors = floors + sliced_wasserstein_floor(q.sample, n, generator=g, repeats=2)
    direction_se = spread / math.sqrt(n_projections) / (2 * exact)
    return abs(float(estimate) - exact), float(floors) + N_SE * direction_se


def test_sliced_wasserstein_approaches_gaussian_value():
    """Between samples of two Gaussians, SW2 tends to the SW2 of the Gaussians as n grows."""
    # N(0, I) against N(0, 2.25 I): every projection has W2 = 1.5 - 1, so SW2 = 0.5 exactly
    # and the directions add no error: the error is bounded by the floors, which shrink.
    zero, eye = torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64)
    error_small, bound_small = sliced_error_and_bound(zero, eye, zero, 2.25 * eye, 250, 256)
    error_large, bound_large = sliced_error_and_bound(zero, eye, zero, 2.25 * eye, 4000, 256)
    assert error_small <= bound_small and error_large <= bound_large
    assert bound_large < bound_small / 2.5 and bound_large < 0.25 * 0.5
    # Different means and correlated covariances: SW2 ~ 0.92 by quadrature.
    mean2 = torch.tensor([1.0, -0.5], dtype=F64)
    cov1 = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=F64)
    cov2 = torch.tensor([[0.4, -0.2], [-0.2, 2.0]], dtype=F64)
    error, bound = sliced_error_and_bound(zero, cov1, mean2, cov2, 1000, 1000)
    assert error <= bound


def test_floor_shrinks_like_inverse_sqrt_n():
    """The floor at n = 4000 is 2.5 to 6 times smaller than at n = 250.

    In 1-D, E[W2^2] between two n-samples is (2/n) int u(1-u) Q'(u)^2 du (Q the quantile
    function) up to a log log n factor for Gaussian tails, so the floor ratio for 16 times more
    samples is sqrt(16) = 4 (3.6 with that factor). Over 30 seeds the ratio, with 5 repeats each,
    had mean 3.8 and standard deviation 0.44: the range [2.5, 6] is 3 standard deviations below
    and 5 above, and excludes a floor that does not shrink (1) or shrinks like 1/n (16).
    """

    def standard_normal(n, generator):
        return torch.randn(n, 2, generator=generator, dtype=F64)

    small = sliced_wasserstein_floor(standard_normal, 250, generator=make_generator(0))
    large = sliced_wasserstein_floor(standard_normal, 4000, generator=make_generator(1))
    assert 2.5 < float(small / large) < 6.0


# ----------------------------------------------------------------------------------- MMD


def test_mmd_matches_direct_formula():
    x, y = randn(5, 2, seed=10), randn(6, 2, seed=11) + 0.5
    h = 0.9

    def k(a, b):
        return math.exp(-float(((a - b) ** 2).sum()) / (2 * h**2))

    xx = sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / 20
    yy = sum(k(y[i], y[j]) for i in range(6) for j in range(6) if i != j) / 30
    xy = sum(k(x[i], y[j]) for i in range(5) for j in range(6)) / 30
    assert float(mmd_rbf(x, y, bandwidth=h)) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)

    # The median heuristic: 10 + 15 + 30 = 55 distinct pairs, an odd count, so the median is a
    # single pairwise distance.
    pooled = torch.cat([x, y]).numpy()
    i, j = np.triu_indices(11, 1)
    median = float(np.median(np.linalg.norm(pooled[i] - pooled[j], axis=1)))
    assert float(mmd_rbf(x, y)) == pytest.approx(float(mmd_rbf(x, y, bandwidth=median)), 1e-12)


def test_mmd_is_unbiased_under_the_null_and_detects_a_shift():
    """Under P = Q the unbiased estimate has mean 0: the mean of 20 replicates lies within 5 SE
    (SE = sd / sqrt(20)); a shift by one standard deviation gives a value far above the spread of
    the null replicates."""
    n, replicates = 200, 20
    null = torch.stack(
        [mmd_rbf(randn(n, 2, seed=2 * r), randn(n, 2, seed=2 * r + 1)) for r in range(replicates)]
    )
    se = float(null.std()) / math.sqrt(replicates)
    assert abs(float(null.mean())) <= N_SE * se
    shifted = mmd_rbf(randn(n, 2, seed=100), randn(n, 2, seed=101) + torch.tensor([1.0, 0.0]))
    assert float(shifted) > 10 * float(null.std())


# ---------------------------------------------------------------------- mixture weights


def multinomial_tv_tolerance(weights: torch.Tensor, n: int) -> float:
    """TV = (1/2) sum_k |f_k - w_k| with SE(f_k) = sqrt(w_k (1 - w_k) / n): N_SE SEs per term."""
    return 0.5 * N_SE * float((weights * (1 - weights) / n).sqrt().sum())


def test_mixture_weight_tv_of_exact_samples_is_near_zero():
    mixture = default_mixture_2d()
    n = 20_000
    tv = mixture_weight_tv(mixture.sample(n, make_generator(0)), mixture)
    assert tv.ndim == 0 and 0.0 <= float(tv) <= multinomial_tv_tolerance(mixture.weights, n)


def test_mixture_weight_tv_of_reweighted_samples():
    """Samples with weights w' assign to components with frequencies near w', so the TV is
    near (1/2) sum |w' - w| = 0.3, within the multinomial SE of the frequencies (the components
    of the book's mixture overlap little: misassignments are far rarer than that SE)."""
    mixture = default_mixture_2d()
    reweighted = GaussianMixture(torch.tensor([0.2, 0.3, 0.5]), mixture.means, mixture.covs)
    expected = 0.5 * float((reweighted.weights - mixture.weights).abs().sum())
    assert expected == pytest.approx(0.3)
    n = 20_000
    tv = mixture_weight_tv(reweighted.sample(n, make_generator(1)), mixture)
    assert abs(float(tv) - expected) <= multinomial_tv_tolerance(reweighted.weights, n)


# -------------------------------------------------------------------- exact for Gaussians


def test_gaussian_w2_and_kl_one_dimensional_closed_forms():
    m1, s1, m2, s2 = 0.3, 1.5, -1.2, 0.7
    args = (
        torch.tensor([m1], dtype=F64),
        torch.tensor([[s1**2]], dtype=F64),
        torch.tensor([m2], dtype=F64),
        torch.tensor([[s2**2]], dtype=F64),
    )
    w2 = math.sqrt((m1 - m2) ** 2 + (s1 - s2) ** 2)
    kl = math.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5
    assert float(gaussian_w2(*args)) == pytest.approx(w2, rel=1e-12)
    assert float(gaussian_kl(*args)) == pytest.approx(kl, rel=1e-12)
    assert gaussian_w2(*args).dtype == F64 and gaussian_kl(*args).ndim == 0


@pytest.mark.parametrize("dim", [2, 5])
def test_gaussian_w2_properties(dim):
    mean1, cov1 = randn(dim, seed=20), random_spd(dim, seed=21)
    mean2, cov2 = randn(dim, seed=22), random_spd(dim, seed=23)
    w2 = float(gaussian_w2(mean1, cov1, mean2, cov2))
    assert w2 == pytest.approx(float(gaussian_w2(mean2, cov2, mean1, cov1)), rel=1e-9)
    assert float(gaussian_w2(mean1, cov1, mean1, cov1)) == pytest.approx(0.0, abs=1e-6)
    assert float(gaussian_kl(mean1, cov1, mean1, cov1)) == pytest.approx(0.0, abs=1e-12)
    # Commuting (here diagonal) covariances: W2^2 = |m1 - m2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2,
    # and a singular (PSD) covariance is allowed.
    a, b = torch.rand(dim, dtype=F64, generator=make_generator(24)), torch.ones(dim, dtype=F64)
    a[0] = 0.0
    expected = ((mean1 - mean2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum()
    diag_w2 = gaussian_w2(mean1, torch.diag(a), mean2, torch.diag(b))
    assert float(diag_w2) == pytest.approx(math.sqrt(float(expected)), rel=1e-10)
    # Triangle inequality through a third Gaussian.
    mean3, cov3 = randn(dim, seed=25), random_spd(dim, seed=26)
    via = gaussian_w2(mean1, cov1, mean3, cov3) + gaussian_w2(mean3, cov3, mean2, cov2)
    assert w2 <= float(via) + 1e-12


@pytest.mark.parametrize("dim", [1, 3])
def test_gaussian_kl_against_monte_carlo(dim):
    """KL(N1 || N2) = E_{x ~ N1}[log p1(x) - log p2(x)]; SE = sd / sqrt(n) of the log ratio."""
    mean1, cov1 = randn(dim, seed=30), random_spd(dim, seed=31)
    mean2, cov2 = randn(dim, seed=32), random_spd(dim, seed=33)
    x = gaussian(mean1, cov1).sample(100_000, make_generator(34)).numpy()
    log_ratio = stats.multivariate_normal(mean1.numpy(), cov1.numpy()).logpdf(x) - (
        stats.multivariate_normal(mean2.numpy(), cov2.numpy()).logpdf(x)
    )
    se = log_ratio.std() / math.sqrt(len(log_ratio))
    assert abs(float(gaussian_kl(mean1, cov1, mean2, cov2)) - log_ratio.mean()) <= N_SE * se


# ----------------------------------------------------------------------------- validation


def test_sample_metrics_reject_bad_input():
    x, y = randn(10, 2, seed=40), randn(12, 2, seed=41)
    with pytest.raises(TypeError, match="x"):
        sliced_wasserstein(x.numpy(), y)
    with pytest.raises(TypeError, match="y"):
        mmd_rbf(x, y.long())
    with pytest.raises(ValueError, match="x"):
        sliced_wasserstein(x[:, 0], y)
    with pytest.raises(ValueError, match="y"):
        sliced_wasserstein(x, y[:, :1])
    with pytest.raises(ValueError, match="y"):
        mmd_rbf(x, y * float("nan"))
    with pytest.raises(ValueError, match="x"):
        mmd_rbf(x[:1], y)
    with pytest.raises(ValueError, match="n_projections"):
        sliced_wasserstein(x, y, n_projections=0)
    with pytest.raises(TypeError, match="generator"):
        sliced_wasserstein(x, y, generator=0)
    with pytest.raises(ValueError, match="bandwidth"):
        mmd_rbf(x, y, bandwidth=-1.0)
    with pytest.raises(ValueError, match="bandwidth"):
        mmd_rbf(torch.zeros(4, 2, dtype=F64), torch.zeros(3, 2, dtype=F64))


def test_floor_and_weight_tv_reject_bad_input():
    mixture = default_mixture_2d()
    with pytest.raises(ValueError, match="n"):
        sliced_wasserstein_floor(mixture.sample, 1)
    with pytest.raises(ValueError, match="repeats"):
        sliced_wasserstein_floor(mixture.sample, 10, repeats=0)
    with pytest.raises(TypeError, match="sample_fn"):
        sliced_wasserstein_floor(None, 10)
    with pytest.raises(ValueError, match="sample_fn"):
        sliced_wasserstein_floor(lambda n, g: mixture.sample(n + 1, g), 10)
    with pytest.raises(TypeError, match="mixture"):
        mixture_weight_tv(randn(10, 2, seed=0), "mixture")
    with pytest.raises(ValueError, match="x"):
        mixture_weight_tv(randn(10, 3, seed=0), mixture)


def test_gaussian_metrics_reject_bad_input():
    mean, cov = torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64)
    with pytest.raises(TypeError, match="mean1"):
        gaussian_w2([0.0, 0.0], cov, mean, cov)
    with pytest.raises(ValueError, match="mean1"):
        gaussian_w2(torch.zeros(2, 1, dtype=F64), cov, mean, cov)
    with pytest.raises(ValueError, match="cov1"):
        gaussian_kl(mean, torch.eye(3, dtype=F64), mean, cov)
    with pytest.raises(ValueError, match="mean2"):
        gaussian_kl(mean, cov, torch.zeros(3, dtype=F64), cov)
    with pytest.raises(ValueError, match="cov2"):
        gaussian_w2(mean, cov, mean, torch.tensor([[1.0, 0.5], [0.0, 1.0]], dtype=F64))
    with pytest.raises(ValueError, match="cov2"):
        gaussian_w2(mean, cov, mean, -cov)
    with pytest.raises(ValueError, match="cov2"):
        gaussian_kl(mean, cov, mean, torch.diag(torch.tensor([1.0, 0.0], dtype=F64)))
    with pytest.raises(ValueError, match="cov1"):
        gaussian_kl(mean, cov * float("inf"), mean, cov)


def test_mean_and_standard_error_and_assert_within():
    values = torch.tensor([1.0, 2.0, 3.0, 4.0])
    mean, se = mean_and_standard_error(values)
    assert mean == 2.5 and se == pytest.approx(math.sqrt(5 / 3) / 2, rel=1e-15)
    assert assert_within(2.6, 2.5, 0.05) == pytest.approx(2.0)
    with pytest.raises(AssertionError, match=r"variance = 2.9 is 8.00 standard errors"):
        assert_within(2.9, 2.5, 0.05, what="variance")
    with pytest.raises(ValueError, match=r"standard_error must be a finite number in \(0, inf\]"):
        assert_within(2.9, 2.5, 0.0)
    with pytest.raises(ValueError, match="values must hold at least 2 draws"):
        mean_and_standard_error([1.0])
    # At k = 4 a correct estimate of a Gaussian mean almost never fails: 2000 replicates.
    draws = torch.randn(2000, 50, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    failures = 0
    for row in draws:
        m, s = mean_and_standard_error(row)
        try:
            assert_within(m, 0.0, s)
        except AssertionError:
            failures += 1
    assert failures <= 3  # expected 2000 * P(|t_49| > 4) = 0.4
