"""Tests of diffusion_core.analytic: every closed form against scipy or Monte Carlo.

Monte Carlo tolerances are 5 standard errors (SE), with the SE estimated from the same draws:
a correct implementation then fails with probability below 1e-6 per compared number, and since
the seeds are fixed the tests are deterministic anyway.
"""

import math

import numpy as np
import pytest
import torch
from scipy import special, stats

from diffusion_core.analytic import GaussianMixture, default_mixture_2d, gaussian, ring_mixture

N_SE = 5.0


def make_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_mixture(dim: int, n_components: int, seed: int) -> GaussianMixture:
    """Unequal weights, spread-out means and random full covariances A A^T / d + 0.3 I."""
    g = make_generator(seed)
    weights = torch.softmax(torch.randn(n_components, generator=g, dtype=torch.float64), 0)
    means = 2.0 * torch.randn(n_components, dim, generator=g, dtype=torch.float64)
    a = torch.randn(n_components, dim, dim, generator=g, dtype=torch.float64)
    covs = a @ a.mT / dim + 0.3 * torch.eye(dim, dtype=torch.float64)
    return GaussianMixture(weights, means, covs)


def assert_moments_match(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> None:
    """Sample mean and covariance of x against the exact ones, within N_SE standard errors.

    SE of the mean: sqrt(cov_ii / n). The covariance estimate centred at the exact mean is the
    average of p_ij = (x_i - m_i)(x_j - m_j), an unbiased mean of n i.i.d. terms: its SE is
    std(p_ij) / sqrt(n), with std estimated from the sample (fourth moments included).
    """
    n = x.shape[0]
    mean_se = (cov.diagonal() / n).sqrt()
    assert ((x.mean(0) - mean).abs() <= N_SE * mean_se).all()
    centred = x - mean
    products = centred[:, :, None] * centred[:, None, :]
    cov_se = products.std(dim=0) / math.sqrt(n)
    assert ((products.mean(0) - cov).abs() <= N_SE * cov_se).all()


# ------------------------------------------------------------------------------ construction


def test_properties_and_constructors():
    mixture = random_mixture(dim=3, n_components=4, seed=0)
    assert mixture.dim == 3 and mixture.n_components == 4
    assert mixture.weights.dtype == torch.float64
    expected_mean = sum(w * m for w, m in zip(mixture.weights, mixture.means, strict=True))
    torch.testing.assert_close(mixture.mean, expected_mean)

    iso = GaussianMixture.isotropic([0.25, 0.75], [[0.0, 1.0], [2.0, 0.0]], [0.5, 2.0])
    torch.testing.assert_close(iso.covs[1], 4.0 * torch.eye(2, dtype=torch.float64))

    single = gaussian(torch.tensor([1.0, -1.0]), torch.tensor([[2.0, 0.5], [0.5, 1.0]]))
    assert single.n_components == 1
    torch.testing.assert_close(single.covariance, single.covs[0])

    # Weights within the tolerance are renormalised exactly.
    nearly = GaussianMixture([0.5, 0.5 + 5e-7], [[0.0], [1.0]], [[[1.0]], [[1.0]]])
    assert float(nearly.weights.sum()) == pytest.approx(1.0, abs=1e-15)


def test_ready_made_mixtures():
    ring = ring_mixture(n_components=6, radius=3.0, std=0.2)
    assert ring.dim == 2 and ring.n_components == 6
    torch.testing.assert_close(ring.means.norm(dim=1), torch.full((6,), 3.0, dtype=torch.float64))
    torch.testing.assert_close(ring.mean, torch.zeros(2, dtype=torch.float64), atol=1e-12, rtol=0)

    book = default_mixture_2d()
    assert book.dim == 2 and 3 <= book.n_components <= 4
    assert len(set(book.weights.tolist())) == book.n_components  # unequal weights
    assert float(book.mean.norm()) > 0.5  # visible mean leakage if a sampler centres its output
    assert (book.covs[:, 0, 1] != 0).sum() >= 2  # full, correlated covariances
    assert len({tuple(c.flatten().tolist()) for c in book.covs}) == book.n_components


# --------------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("dim", [1, 2, 5])
def test_samples_match_mean_and_covariance(dim):
    mixture = random_mixture(dim, n_components=3, seed=dim)
    x, labels = mixture.sample_with_labels(100_000, make_generator(1))
    assert x.shape == (100_000, dim) and x.dtype == torch.float64
    assert_moments_match(x, mixture.mean, mixture.covariance)
    # Label frequencies: binomial SE sqrt(w (1 - w) / n).
    freq = torch.bincount(labels, minlength=3).double() / labels.shape[0]
    w = mixture.weights
    assert ((freq - w).abs() <= N_SE * (w * (1 - w) / labels.shape[0]).sqrt()).all()
    # Within component 0 the samples follow N(mu_0, Sigma_0).
    x0 = x[labels == 0]
    assert_moments_match(x0, mixture.means[0], mixture.covs[0])


def test_sampling_is_reproducible():
    mixture = default_mixture_2d()
    torch.testing.assert_close(
        mixture.sample(10, make_generator(7)), mixture.sample(10, make_generator(7))
    )


# --------------------------------------------------------------------------- noised marginal


@pytest.mark.parametrize(("scale", "std"), [(0.8, 0.6), (1.0, 2.0), (0.0, 1.0)])
def test_noised_marginal_matches_simulation(scale, std):
    mixture = random_mixture(dim=2, n_components=3, seed=3)
    g = make_generator(4)
    n = 100_000
    x0 = mixture.sample(n, g)
    xt = scale * x0 + std * torch.randn(n, 2, generator=g, dtype=torch.float64)
    noised = mixture.noised(scale, std)
    assert_moments_match(xt, noised.mean, noised.covariance)
    torch.testing.assert_close(noised.mean, scale * mixture.mean)


def test_noised_log_prob_1d_against_scipy_and_normalised():
    weights, means, stds = [0.2, 0.5, 0.3], [-3.0, 0.5, 4.0], [0.4, 1.0, 0.7]
    mixture = GaussianMixture.isotropic(weights, [[m] for m in means], stds)
    scale, std = 0.6, 0.8
    grid = torch.linspace(-15.0, 15.0, 30_001, dtype=torch.float64)[:, None]
    log_p = mixture.noised(scale, std).log_prob(grid)

    component_stds = [math.sqrt(scale**2 * s**2 + std**2) for s in stds]
    reference = special.logsumexp(
        [
            math.log(w) + stats.norm.logpdf(grid[:, 0].numpy(), scale * m, s)
            for w, m, s in zip(weights, means, component_stds, strict=True)
        ],
        axis=0,
    )
    np.testing.assert_allclose(log_p.numpy(), reference, rtol=1e-12, atol=1e-12)
    # The same density through per-call noise levels.
    torch.testing.assert_close(mixture.log_prob(grid, scale, std), log_p, rtol=1e-12, atol=1e-12)
    # The density integrates to 1 (trapezoid rule, spacing 1e-3: error far below 1e-6).
    assert float(torch.trapezoid(log_p.exp(), grid[:, 0])) == pytest.approx(1.0, abs=1e-6)


# ------------------------------------------------------------------------------- log_prob


@pytest.mark.parametrize("dim", [1, 2, 5])
def test_log_prob_single_gaussian_against_scipy(dim):
    mixture = random_mixture(dim, n_components=1, seed=10 + dim)
    x = mixture.sample(50, make_generator(0)) * 1.5
    reference = stats.multivariate_normal(mixture.means[0].numpy(), mixture.covs[0].numpy()).logpdf(
        x.numpy()
    )
    np.testing.assert_allclose(mixture.log_prob(x).numpy(), np.atleast_1d(reference), rtol=1e-10)


def reference_mixture_log_prob(mixture, x, scale, std):
    """log sum_k w_k N(x; scale mu_k, scale^2 Sigma_k + std^2 I), per component with scipy."""
    eye = np.eye(mixture.dim)
    terms = [
        math.log(w) + stats.multivariate_normal(scale * m, scale**2 * c + std**2 * eye).logpdf(x)
        for w, m, c in zip(
            mixture.weights.tolist(), mixture.means.numpy(), mixture.covs.numpy(), strict=True
        )
    ]
    return special.logsumexp(np.stack([np.atleast_1d(t) for t in terms]), axis=0)


@pytest.mark.parametrize("dim", [1, 2, 5])
def test_log_prob_mixture_against_scipy(dim):
    mixture = random_mixture(dim, n_components=4, seed=20 + dim)
    x = mixture.sample(50, make_generator(0))
    for scale, std in [(1.0, 0.0), (0.7, 0.5), (0.0, 2.0)]:
        expected = reference_mixture_log_prob(mixture, x.numpy(), scale, std)
        np.testing.assert_allclose(mixture.log_prob(x, scale, std).numpy(), expected, rtol=1e-10)


def test_far_points_are_finite():
    """At distance 1e3 every component density underflows; log-sum-exp keeps the result exact."""
    mixture = default_mixture_2d()
    x = 1e3 * torch.tensor([[1.0, 0.0], [-0.6, 0.8], [0.0, -1.0]], dtype=torch.float64)
    log_p = mixture.log_prob(x)
    assert torch.isfinite(log_p).all()
    np.testing.assert_allclose(
        log_p.numpy(), reference_mixture_log_prob(mixture, x.numpy(), 1.0, 0.0), rtol=1e-10
    )
    for method in (mixture.score, mixture.x0_pred, mixture.responsibilities):
        assert torch.isfinite(method(x, 0.5, 0.1)).all()
    torch.testing.assert_close(
        mixture.responsibilities(x, 1.0, 0.0).sum(1), torch.ones(3, dtype=torch.float64)
    )


# --------------------------------------------------------------------- score and denoisers


@pytest.mark.parametrize("dim", [1, 2, 5])
def test_score_equals_autograd_gradient(dim):
    mixture = random_mixture(dim, n_components=3, seed=30 + dim)
    x = mixture.sample(6, make_generator(1)).requires_grad_(True)
    # Per-sample levels, including zero terminal SNR (scale 0) and clean data (std 0).
    scale = torch.tensor([1.0, 0.9, 0.5, 0.1, 0.0, 2.0], dtype=torch.float64)
    std = torch.tensor([0.0, 0.3, 0.8, 1.0, 1.0, 5.0], dtype=torch.float64)
    levels = [(scale, std), (0.7, 0.7), (torch.tensor(1.0), torch.tensor(0.05))]
    for s, sd in levels:
        (grad,) = torch.autograd.grad(mixture.log_prob(x, s, sd).sum(), x)
        torch.testing.assert_close(mixture.score(x, s, sd), grad, rtol=1e-10, atol=1e-12)


def test_per_sample_levels_equal_one_call_per_sample():
    mixture = random_mixture(dim=2, n_components=3, seed=40)
    x = mixture.sample(4, make_generator(2))
    scale = torch.tensor([0.9, 0.5, 0.2, 0.0], dtype=torch.float64)
    std = torch.tensor([0.2, 0.8, 1.0, 1.5], dtype=torch.float64)
    methods = (mixture.log_prob, mixture.responsibilities, mixture.score, mixture.x0_pred)
    for method in methods + (mixture.eps_pred,):
        batched = method(x, scale, std)
        for i in range(4):
            single = method(x[i : i + 1], float(scale[i]), float(std[i]))
            torch.testing.assert_close(batched[i : i + 1], single, rtol=1e-12, atol=1e-12)


def test_responsibilities_are_probabilities():
    mixture = random_mixture(dim=2, n_components=4, seed=41)
    x = mixture.sample(20, make_generator(3))
    r = mixture.responsibilities(x, 0.8, 0.6)
    assert r.shape == (20, 4) and (r >= 0).all()
    torch.testing.assert_close(r.sum(1), torch.ones(20, dtype=torch.float64))
    # At scale 0 the noisy input says nothing about the component: the prior weights remain.
    torch.testing.assert_close(
        mixture.responsibilities(x, 0.0, 1.0), mixture.weights.expand(20, 4), rtol=1e-12, atol=0
    )


@pytest.mark.parametrize(("scale", "std"), [(0.9, 0.45), (0.6, 0.8), (0.25, 0.97)])
def test_x0_pred_matches_importance_sampling(scale, std):
    """E[x0 | x_t = x] by self-normalised importance sampling over prior draws x0_i.

    With weights w_i = N(x; scale x0_i, std^2 I), sum_i w_i x0_i / sum_i w_i estimates the
    posterior mean; its SE per coordinate is about sqrt(posterior variance / ESS), where the
    effective sample size is ESS = (sum w)^2 / sum w^2 (Kong 1992; its O(1/N) bias is negligible
    at this N).
    """
    mixture = default_mixture_2d()
    g = make_generator(5)
    prior = mixture.sample(400_000, g)
    x = mixture.noised(scale, std).sample(4, g)
    log_w = -((x[:, None, :] - scale * prior[None]) ** 2).sum(-1) / (2 * std**2)  # (4, N)
    w = torch.softmax(log_w, dim=1)
    posterior_mean = w @ prior
    posterior_var = (w[:, :, None] * (prior[None] - posterior_mean[:, None]) ** 2).sum(1)
    ess = 1.0 / (w**2).sum(1)
    assert (ess > 1_000).all()
    se = (posterior_var / ess[:, None]).sqrt()
    assert ((mixture.x0_pred(x, scale, std) - posterior_mean).abs() <= N_SE * se).all()


@pytest.mark.parametrize("dim", [1, 2, 5])
def test_tweedie_and_eps_consistency(dim):
    mixture = random_mixture(dim, n_components=3, seed=50 + dim)
    x = mixture.noised(0.6, 0.8).sample(10, make_generator(6))
    scale = torch.linspace(0.05, 1.0, 10, dtype=torch.float64)
    std = torch.linspace(1.0, 0.1, 10, dtype=torch.float64)
    x0_hat = mixture.x0_pred(x, scale, std)
    eps_hat = mixture.eps_pred(x, scale, std)
    score = mixture.score(x, scale, std)
    # Tweedie: E[x0 | x_t] = (x + std^2 score) / scale.
    tweedie = (x + std[:, None] ** 2 * score) / scale[:, None]
    torch.testing.assert_close(x0_hat, tweedie, rtol=1e-9, atol=1e-9)
    # x = scale E[x0 | x_t] + std E[eps | x_t], since x_t itself is known given x_t.
    torch.testing.assert_close(scale[:, None] * x0_hat + std[:, None] * eps_hat, x)


def test_x0_pred_limits():
    mixture = default_mixture_2d()
    x = mixture.sample(5, make_generator(8))
    # Zero terminal SNR: the best guess of x0 is the data mean, whatever x_T is. (The
    # component terms agree only up to rounding of |x|^2 ~ 1e5, hence the tolerance.)
    torch.testing.assert_close(
        mixture.x0_pred(100 * x, 0.0, 1.0), mixture.mean.expand(5, 2), rtol=1e-9, atol=1e-9
    )
    # No noise: x_t = scale x0 determines x0.
    torch.testing.assert_close(mixture.x0_pred(x, 0.5, 0.0), x / 0.5)


# ----------------------------------------------------------------------------- validation


def test_constructor_rejects_bad_arguments():
    w, m, c = [0.5, 0.5], [[0.0, 0.0], [1.0, 1.0]], [np.eye(2).tolist()] * 2
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture([[0.5, 0.5]], m, c)
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture([1.5, -0.5], m, c)
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture([0.5, 0.6], m, c)
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture([float("nan"), 0.5], m, c)
    with pytest.raises(ValueError, match="means"):
        GaussianMixture(w, [[0.0, 0.0]], c)
    with pytest.raises(ValueError, match="means"):
        GaussianMixture(w, [0.0, 1.0], c)
    with pytest.raises(ValueError, match="covs"):
        GaussianMixture(w, m, [np.eye(3).tolist()] * 2)
    with pytest.raises(ValueError, match="covs"):
        GaussianMixture(w, m, [[[1.0, 0.5], [0.0, 1.0]]] * 2)  # not symmetric
    with pytest.raises(ValueError, match="covs"):
        GaussianMixture(w, m, [[[1.0, 2.0], [2.0, 1.0]]] * 2)  # eigenvalue -1
    with pytest.raises(ValueError, match="stds"):
        GaussianMixture.isotropic(w, m, [1.0, 0.0])
    with pytest.raises(ValueError, match="stds"):
        GaussianMixture.isotropic(w, m, [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="cov"):
        gaussian([0.0, 0.0], [[1.0]])
    with pytest.raises(ValueError, match="mean"):
        gaussian([[0.0]], [[1.0]])
    with pytest.raises(ValueError, match="n_components"):
        ring_mixture(n_components=0)


def test_methods_reject_bad_x_and_noise_levels():
    mixture = default_mixture_2d()
    x = mixture.sample(3, make_generator(9))
    with pytest.raises(ValueError, match=r"x must have shape \(n, 2\)"):
        mixture.log_prob(x[:, :1])
    with pytest.raises(ValueError, match="x must have shape"):
        mixture.score(x[0], 1.0, 0.1)
    with pytest.raises(ValueError, match="x"):
        mixture.x0_pred(x * float("nan"), 1.0, 0.1)
    with pytest.raises(TypeError, match="x"):
        mixture.log_prob(x.long())
    with pytest.raises(TypeError, match="x"):
        mixture.log_prob(x.tolist())
    with pytest.raises(ValueError, match="scale"):
        mixture.score(x, -0.1, 1.0)
    with pytest.raises(ValueError, match="std"):
        mixture.score(x, 1.0, torch.tensor([0.1, -0.1, 0.1]))
    with pytest.raises(ValueError, match=r"scale must be .* shape \(3,\)"):
        mixture.x0_pred(x, torch.ones(4), 1.0)
    with pytest.raises(ValueError, match="std"):
        mixture.x0_pred(x, 1.0, torch.ones(3, 1))
    with pytest.raises(ValueError, match="std"):
        mixture.log_prob(x, 1.0, float("inf"))
    with pytest.raises(ValueError, match="scale and std"):
        mixture.log_prob(x, 0.0, 0.0)
    with pytest.raises(ValueError, match="scale and std"):
        mixture.score(x, torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0.1, 0.0, 0.0]))
    with pytest.raises(ValueError, match="std"):
        mixture.eps_pred(x, 1.0, 0.0)
    with pytest.raises(ValueError, match="scale"):
        mixture.noised(torch.ones(2), 1.0)
    with pytest.raises(ValueError, match="std"):
        mixture.noised(1.0, -1.0)
    with pytest.raises(ValueError, match="scale and std"):
        mixture.noised(0.0, 0.0)
    with pytest.raises(ValueError, match="n"):
        mixture.sample(0, make_generator(0))
    with pytest.raises(TypeError, match="generator"):
        mixture.sample(3, 0)


def test_the_denoiser_and_score_stay_finite_far_from_every_component():
    # Beyond |x| ~ 1e154 every squared distance overflows; the responsibilities then go, as
    # in the limit, to the component nearest in Mahalanobis distance, and the denoiser and
    # the score are finite.
    mixture = default_mixture_2d()
    x = torch.tensor([[1e155, 3e154], [-1e200, 1e200], [1.0, 2.0]], dtype=torch.float64)
    r = mixture.responsibilities(x, 0.5, 0.8)
    assert bool(torch.isfinite(r).all())
    torch.testing.assert_close(r.sum(dim=1), torch.ones(3, dtype=torch.float64))
    assert r[0].tolist() == [1.0, 0.0, 0.0] and r[1].tolist() == [0.0, 1.0, 0.0]
    nearby = mixture.responsibilities(x[2:], 0.5, 0.8)
    torch.testing.assert_close(r[2:], nearby, rtol=0, atol=0)
    for value in (mixture.x0_pred(x, 0.5, 0.8), mixture.score(x, 0.5, 0.8)):
        assert bool(torch.isfinite(value).all())
    # Far along a direction, the denoiser is the nearest component's linear map.
    nearest = GaussianMixture(torch.ones(1), mixture.means[:1], mixture.covs[:1])
    torch.testing.assert_close(mixture.x0_pred(x[:1], 0.5, 0.8), nearest.x0_pred(x[:1], 0.5, 0.8))
    with pytest.raises(ValueError, match="scale must be at most 1e"):
        mixture.x0_pred(x, 1e200, 0.8)
