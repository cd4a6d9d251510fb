"""Distances between samples and distributions, to judge what a sampler produces.

Sample-based: sliced Wasserstein distance (with its noise floor at a given sample size), the
kernel MMD, and the weight error on a Gaussian mixture. Exact: Wasserstein-2 and KL divergence
between two Gaussians, the references against which the sample-based numbers are read. For
images (on classifier features or pixels): the Frechet distance, k-nearest-neighbour precision
and recall, and nearest-neighbour distances (the memorisation check).

Results are float64 tensors: 0-d for every distance and score.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from diffusion_core._validation import MAX_LEVEL, check_float, check_number, check_positive_int
from diffusion_core.analytic import GaussianMixture

__all__ = [
    "assert_within",
    "frechet_distance",
    "gaussian_kl",
    "gaussian_w2",
    "knn_precision_recall",
    "mixture_weight_tv",
    "mean_and_standard_error",
    "mmd_rbf",
    "nearest_neighbour_distances",
    "rms_distance",
    "sliced_wasserstein",
    "sliced_wasserstein_floor",
]

_DEFAULT_SEED = 0


# ---------------------------------------------------------------------------- sample checks


def _check_samples(name: str, x, min_n: int = 2) -> torch.Tensor:
    """A finite floating (n, d) tensor with n >= min_n and |x| <= MAX_LEVEL, as float64."""
    x = check_float(name, x)
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (n, d), got {tuple(x.shape)}")
    if x.shape[0] < min_n:
        raise ValueError(f"{name} must hold at least {min_n} samples, got {x.shape[0]}")
    if x.numel() and float(x.abs().max()) > MAX_LEVEL:
        raise ValueError(
            f"{name} must have coordinates of size at most {MAX_LEVEL:g} (squared distances "
            f"would overflow), got {float(x.abs().max()):g}"
        )
    return x.to(torch.float64)


def _check_pair(x, y, names=("x", "y")) -> tuple[torch.Tensor, torch.Tensor]:
    x = _check_samples(names[0], x)
    y = _check_samples(names[1], y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"{names[1]} must have the dimension of {names[0]} ({x.shape[1]}), got {y.shape[1]}"
        )
    return x, y.to(x.device)


def rms_distance(x, y) -> torch.Tensor:
    """Root-mean-square distance between paired samples, (mean_i |x_i - y_i|^2)^(1/2) (float64).

    Row i of ``x`` is compared with row i of ``y`` (same shape (n, d), n >= 1): a pathwise
    error, such as the distance of a sampler's outputs to the exact probability-flow solutions
    from the same starting noise (:func:`diffusion_core.samplers.flow_endpoint`). Unlike the
    distances between distributions above it has no sampling noise of its own.
    """
    x, y = _check_samples("x", x, min_n=1), _check_samples("y", y, min_n=1)
    if x.shape != y.shape:
        raise ValueError(
            f"y must pair row by row with x, shape {tuple(x.shape)}, got {tuple(y.shape)}"
        )
    return (x - y.to(x.device)).square().sum(dim=1).mean().sqrt()


def _default_generator(generator) -> torch.Generator:
    if generator is None:
        return torch.Generator().manual_seed(_DEFAULT_SEED)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    return generator


# ------------------------------------------------------------------------ sliced Wasserstein


def _w2_squared_1d(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """W2^2 between empirical 1-D distributions, column by column; xs (n, P), ys (m, P) sorted.

    In 1-D, W2^2 = int_0^1 (F^{-1}(u) - G^{-1}(u))^2 du (the monotone coupling). For n = m the
    quantile functions step at the same points and this is mean_i (xs_i - ys_i)^2. For n != m
    both are step functions with steps at {i/n} and {j/m}; on each interval of the merged grid
    both are constant, so the integral is a finite weighted sum and is computed exactly.
    """
    n, m = xs.shape[0], ys.shape[0]
    if n == m:
        return ((xs - ys) ** 2).mean(dim=0)
    steps = (
        torch.cat(
            [
                torch.arange(1, n + 1, dtype=torch.float64, device=xs.device) / n,
                torch.arange(1, m + 1, dtype=torch.float64, device=xs.device) / m,
            ]
        )
        .sort()
        .values
    )
    lower = torch.cat([steps.new_zeros(1), steps[:-1]])
    widths = steps - lower
    midpoints = 0.5 * (lower + steps)
    ix = (midpoints * n).floor().long().clamp(max=n - 1)
    iy = (midpoints * m).floor().long().clamp(max=m - 1)
    return (widths[:, None] * (xs[ix] - ys[iy]) ** 2).sum(dim=0)


def sliced_wasserstein(x, y, n_projections: int = 256, generator=None) -> torch.Tensor:
    """Sliced Wasserstein-2 distance between the samples x (n, d) and y (m, d).

    SW2(x, y) = ( E_theta [ W2^2(theta^T x, theta^T y) ] )^(1/2), theta uniform on the unit
    sphere (Rabin et al. 2011; Bonneel et al. 2015), estimated with ``n_projections`` random
    directions drawn from ``generator`` (a fixed-seed one if None, so the result is
    deterministic). Each 1-D W2 is exact between the two empirical distributions, see
    :func:`_w2_squared_1d`; n and m may differ.
    """
    x, y = _check_pair(x, y)
    n_projections = check_positive_int("n_projections", n_projections)
    generator = _default_generator(generator)
    directions = torch.randn(
        x.shape[1], n_projections, generator=generator, dtype=torch.float64, device=generator.device
    )
    directions = (directions / directions.norm(dim=0, keepdim=True)).to(x.device)
    xs = (x @ directions).sort(dim=0).values
    ys = (y @ directions).sort(dim=0).values
    return _w2_squared_1d(xs, ys).mean().sqrt()


def sliced_wasserstein_floor(
    sample_fn: Callable[[int, torch.Generator], torch.Tensor],
    n: int,
    n_projections: int = 256,
    generator=None,
    repeats: int = 5,
) -> torch.Tensor:
    """The noise floor of :func:`sliced_wasserstein` at sample size n.

    Mean SW2 between two independent exact samples of size n, over ``repeats`` pairs, where
    ``sample_fn(n, generator)`` returns (n, d) draws from the reference distribution. Even a
    perfect sampler sits at this value (it shrinks roughly like n^(-1/2)), so a sampler whose SW2
    to the data is within about the floor cannot be told apart from exact at that sample size.
    """
    if not callable(sample_fn):
        raise TypeError(f"sample_fn must be callable, got {type(sample_fn).__name__}")
    n = check_positive_int("n", n, minimum=2)
    repeats = check_positive_int("repeats", repeats)
    generator = _default_generator(generator)
    distances = []
    for _ in range(repeats):
        x = _check_draw(sample_fn(n, generator), n)
        y = _check_draw(sample_fn(n, generator), n)
        distances.append(sliced_wasserstein(x, y, n_projections, generator))
    return torch.stack(distances).mean()


def _check_draw(x, n: int) -> torch.Tensor:
    x = _check_samples("sample_fn", x)
    if x.shape[0] != n:
        raise ValueError(
            f"sample_fn(n, generator) must return shape ({n}, d), got {tuple(x.shape)}"
        )
    return x


# ----------------------------------------------------------------------------------- MMD


def mmd_rbf(x, y, bandwidth=None) -> torch.Tensor:
    """Unbiased estimate of the squared MMD with the Gaussian kernel k(a, b) = exp(-|a-b|^2/(2h^2)).

    MMD_u^2 = 1/(n(n-1)) sum_{i != j} k(x_i, x_j) + 1/(m(m-1)) sum_{i != j} k(y_i, y_j)
              - 2/(n m) sum_{i, j} k(x_i, y_j)                       (Gretton et al. 2012, Lemma 6)

    Its expectation is exactly the squared MMD, so it can be slightly negative when the two
    distributions agree. ``bandwidth`` h > 0; None takes the median heuristic: h is the median
    distance between distinct points of the pooled sample, as in the experiments of Gretton et
    al. (2012).
    Memory and time grow like (n + m)^2.
    """
    x, y = _check_pair(x, y)
    n, m = x.shape[0], y.shape[0]
    d_xx = torch.cdist(x, x) ** 2
    d_yy = torch.cdist(y, y) ** 2
    d_xy = torch.cdist(x, y) ** 2
    if bandwidth is None:
        pooled = torch.cat(
            [
                d_xx[torch.triu_indices(n, n, 1, device=x.device).unbind()],
                d_yy[torch.triu_indices(m, m, 1, device=x.device).unbind()],
                d_xy.flatten(),
            ]
        )
        h2 = float(pooled.median())
        if h2 <= 0:
            raise ValueError("bandwidth: the median heuristic gives 0 (most points coincide)")
    else:
        if isinstance(bandwidth, bool) or not isinstance(bandwidth, int | float):
            raise TypeError(f"bandwidth must be a number or None, got {type(bandwidth).__name__}")
        if not (math.isfinite(bandwidth) and 1 / MAX_LEVEL <= bandwidth <= MAX_LEVEL):
            raise ValueError(
                f"bandwidth must lie in [{1 / MAX_LEVEL:g}, {MAX_LEVEL:g}] (its square must be a "
                f"normal float64), got {bandwidth}"
            )
        h2 = float(bandwidth) ** 2
    k_xx = torch.exp(-d_xx / (2 * h2))
    k_yy = torch.exp(-d_yy / (2 * h2))
    k_xy = torch.exp(-d_xy / (2 * h2))
    # The diagonal terms k(x_i, x_i) = 1 are left out of the within-sample sums.
    term_xx = (k_xx.sum() - n) / (n * (n - 1))
    term_yy = (k_yy.sum() - m) / (m * (m - 1))
    return term_xx + term_yy - 2 * k_xy.mean()


# ---------------------------------------------------------------------- mixture weights


def mixture_weight_tv(x, mixture: GaussianMixture) -> torch.Tensor:
    """Total variation between the component frequencies of x (n, d) and the mixture weights.

    Each sample is assigned to its most probable component, argmax_k P(k | x0 = x) (scale 1,
    std 0), and TV = (1/2) sum_k |count_k / n - w_k|. It measures whether a sampler puts the
    right mass on each mode; it reads true only when the components barely overlap.
    """
    if not isinstance(mixture, GaussianMixture):
        raise TypeError(f"mixture must be a GaussianMixture, got {type(mixture).__name__}")
    x = _check_samples("x", x, min_n=1)
    if x.shape[1] != mixture.dim:
        raise ValueError(f"x must have shape (n, {mixture.dim}), got {tuple(x.shape)}")
    labels = mixture.responsibilities(x, 1.0, 0.0).argmax(dim=1)
    counts = torch.bincount(labels, minlength=mixture.n_components).to(torch.float64)
    weights = mixture.weights.to(x.device)
    return 0.5 * (counts / x.shape[0] - weights).abs().sum()


# -------------------------------------------------------------------- exact for Gaussians


def _check_gaussian(index: int, mean, cov, dim: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """mean (d,) and symmetric cov (d, d), float64; d must equal ``dim`` when given."""
    mean_name, cov_name = f"mean{index}", f"cov{index}"
    mean = check_float(mean_name, mean).to(torch.float64)
    cov = check_float(cov_name, cov).to(torch.float64)
    for name, value in ((mean_name, mean), (cov_name, cov)):
        if value.numel() and float(value.abs().max()) > MAX_LEVEL:
            raise ValueError(f"{name} must have entries of size at most {MAX_LEVEL:g}")
    if mean.ndim != 1 or mean.shape[0] < 1:
        raise ValueError(f"{mean_name} must have shape (d,), got {tuple(mean.shape)}")
    d = mean.shape[0]
    if dim is not None and d != dim:
        raise ValueError(
            f"{mean_name} must have shape ({dim},) like mean1, got {tuple(mean.shape)}"
        )
    if cov.shape != (d, d):
        raise ValueError(
            f"{cov_name} must have shape ({d}, {d}) to match {mean_name}, got {tuple(cov.shape)}"
        )
    asymmetry = float((cov - cov.mT).abs().max())
    if asymmetry > 1e-6 * max(1.0, float(cov.abs().max())):
        raise ValueError(f"{cov_name} must be symmetric, max |C - C^T| = {asymmetry:.3g}")
    return mean, 0.5 * (cov + cov.mT)


def _psd_sqrt(name: str, cov: torch.Tensor) -> torch.Tensor:
    """Symmetric square root U diag(lam)^(1/2) U^T; round-off negatives of lam are set to 0."""
    eigvals, eigvecs = torch.linalg.eigh(cov)
    tolerance = 1e-10 * max(1.0, float(eigvals.abs().max()))
    if float(eigvals.min()) < -tolerance:
        raise ValueError(
            f"{name} must be positive semi-definite, smallest eigenvalue {float(eigvals.min()):.3g}"
        )
    return (eigvecs * eigvals.clamp(min=0).sqrt()) @ eigvecs.mT


def gaussian_w2(mean1, cov1, mean2, cov2) -> torch.Tensor:
    """Wasserstein-2 distance between N(mean1, cov1) and N(mean2, cov2); covariances PSD.

    W2^2 = |m1 - m2|^2 + tr(S1 + S2 - 2 (S1^(1/2) S2 S1^(1/2))^(1/2))
    (Dowson & Landau 1982; Givens & Shortt 1984), with symmetric square roots from eigh.
    """
    mean1, cov1 = _check_gaussian(1, mean1, cov1, None)
    mean2, cov2 = _check_gaussian(2, mean2, cov2, mean1.shape[0])
    cov2 = cov2.to(cov1.device)
    root1 = _psd_sqrt("cov1", cov1)
    _psd_sqrt("cov2", cov2)  # only to check that cov2 is positive semi-definite
    cross = _psd_sqrt("cov1^(1/2) cov2 cov1^(1/2)", root1 @ cov2 @ root1)
    bures = torch.trace(cov1 + cov2 - 2 * cross)
    squared = ((mean1 - mean2.to(mean1.device)) ** 2).sum() + bures
    return squared.clamp(min=0).sqrt()


def gaussian_kl(mean1, cov1, mean2, cov2) -> torch.Tensor:
    """KL(N(mean1, cov1) || N(mean2, cov2)); covariances positive definite.

    KL = (1/2) [tr(S2^{-1} S1) + (m2 - m1)^T S2^{-1} (m2 - m1) - d + log det S2 - log det S1]
    (Kullback 1959; derived e.g. in Bishop 2006, exercise 2.13).
    """
    mean1, cov1 = _check_gaussian(1, mean1, cov1, None)
    mean2, cov2 = _check_gaussian(2, mean2, cov2, mean1.shape[0])
    cov2, mean2 = cov2.to(cov1.device), mean2.to(mean1.device)
    chol1 = _cholesky("cov1", cov1)
    chol2 = _cholesky("cov2", cov2)
    diff = (mean2 - mean1)[:, None]
    trace = torch.cholesky_solve(cov1, chol2).diagonal().sum()
    mahalanobis = (diff * torch.cholesky_solve(diff, chol2)).sum()
    log_det1 = 2 * chol1.diagonal().log().sum()
    log_det2 = 2 * chol2.diagonal().log().sum()
    return 0.5 * (trace + mahalanobis - mean1.shape[0] + log_det2 - log_det1)


def _cholesky(name: str, cov: torch.Tensor) -> torch.Tensor:
    chol, info = torch.linalg.cholesky_ex(cov)
    if int(info) != 0:
        raise ValueError(f"{name} must be positive definite")
    return chol


# ------------------------------------------------------------------------ image-quality scores
#
# These compare two samples of feature vectors (or flattened images), one row per sample. For
# images, the features are those of a classifier (see diffusion_core.images), as FID uses the
# Inception network's.


def frechet_distance(x, y) -> torch.Tensor:
    """Frechet distance between the Gaussians fitted to the samples x (n, d) and y (m, d).

    FD = |m_x - m_y|^2 + tr(S_x + S_y - 2 (S_x^(1/2) S_y S_x^(1/2))^(1/2)), with the sample
    means m and unbiased covariances S: the squared Wasserstein-2 distance between
    N(m_x, S_x) and N(m_y, S_y) (Dowson & Landau 1982; :func:`gaussian_w2`), which is FID when
    the features are the Inception network's (Heusel et al. 2017). A finite-sample estimate: it
    is biased upwards (the covariances are noisy), so it is read against the same quantity
    between two real samples of the same sizes, never against zero.
    """
    x, y = _check_pair(x, y)
    return (
        gaussian_w2(
            x.mean(0),
            torch.cov(x.T).reshape(x.shape[1], -1),
            y.mean(0),
            torch.cov(y.T).reshape(y.shape[1], -1),
        )
        ** 2
    )


def _distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (n, m), computed from differences (no |a|^2 + |b|^2 - 2ab round-off)."""
    return torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist")


def nearest_neighbour_distances(x, reference, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances from each row of x (n, d) to its k nearest rows of ``reference`` (m, d).

    Returns (distances, indices), both (n, k), nearest first. Used to check memorisation: a
    generator that copies its training set has generated samples much nearer to their nearest
    training image than held-out real images are (Somepalli et al. 2023; Carlini et al. 2023).
    """
    x = _check_samples("x", x, min_n=1)
    reference = _check_samples("reference", reference, min_n=1)
    if x.shape[1] != reference.shape[1]:
        raise ValueError(
            f"reference must have the dimension of x ({x.shape[1]}), got {reference.shape[1]}"
        )
    k = check_positive_int("k", k, maximum=reference.shape[0])
    nearest = _distances(x, reference.to(x.device)).topk(k, dim=1, largest=False)
    return nearest.values, nearest.indices


def knn_precision_recall(real, fake, k: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Improved precision and recall of Kynkaanniemi et al. (2019), Eq. 1-2.

    The real sample (n, d) spans a manifold: the union of balls around each real point, of
    radius its distance to its k-th nearest other real point. Precision is the fraction of
    fake (m, d) points inside the real manifold (are the samples realistic?); recall is the
    fraction of real points inside the fake manifold, built the same way from the fake sample
    (is all of the data covered?). Both are 1 for identical samples and fall towards 0 as
    the two separate. The paper uses k = 3.
    """
    real, fake = _check_pair(real, fake, ("real", "fake"))
    k = check_positive_int("k", k)
    if k >= min(real.shape[0], fake.shape[0]):
        raise ValueError(f"k must be smaller than both sample sizes, got k = {k}")
    real_radii = _distances(real, real).kthvalue(k + 1, dim=1).values  # +1: the point itself
    fake_radii = _distances(fake, fake).kthvalue(k + 1, dim=1).values
    cross = _distances(fake, real)  # (m, n)
    precision = (cross <= real_radii[None, :]).any(dim=1).double().mean()
    recall = (cross <= fake_radii[:, None]).any(dim=0).double().mean()
    return precision, recall


# ------------------------------------------------------------------- Monte Carlo statistics


def mean_and_standard_error(values) -> tuple[float, float]:
    """The mean of independent draws and its standard error s / sqrt(n), s the sample standard
    deviation (n - 1 in its denominator): a Monte Carlo estimate with its uncertainty."""
    values = check_float("values", torch.as_tensor(values, dtype=torch.float64)).reshape(-1)
    if values.numel() < 2:
        raise ValueError(f"values must hold at least 2 draws, got {values.numel()}")
    return float(values.mean()), float(values.std() / math.sqrt(values.numel()))


def assert_within(estimate, expected, standard_error, k: float = 4.0, what: str = "estimate"):
    """Assert that a Monte Carlo ``estimate`` lies within ``k`` standard errors of ``expected``.

    The tolerance is statistical, not fitted to a run: for a Gaussian estimator a correct
    estimate fails at k = 4 with probability 6e-5 (k = 3: 3e-3). Raises ``AssertionError``
    saying how many standard errors away the estimate is; returns that number otherwise.
    """
    estimate, expected = check_number("estimate", estimate), check_number("expected", expected)
    standard_error = check_number("standard_error", standard_error, 0.0, low_open=True)
    k = check_number("k", k, 0.0, low_open=True)
    distance = abs(estimate - expected) / standard_error
    if distance > k:
        raise AssertionError(
            f"{what} = {estimate:.6g} is {distance:.2f} standard errors ({standard_error:.3g}) "
            f"from {expected:.6g}; allowed: {k:g}"
        )
    return distance
