"""Exact reference models: Gaussian mixtures whose noised marginals are known in closed form.

A diffusion model learns the score of the noised data distribution. For Gaussian-mixture data
that score, the optimal denoiser and the log-density are available exactly at every noise level,
which turns every claim of the theory into something a test or a notebook can check.

Convention (used across the library): a noised variable is

    x_t = scale * x0 + std * eps,    eps ~ N(0, I),

with ``scale = sqrt(alpha_bar_t)``, ``std = sqrt(1 - alpha_bar_t)`` for the variance-preserving
DDPM chain and ``scale = 1``, ``std = sigma`` for the variance-exploding (EDM) process.

If x0 follows the mixture sum_k w_k N(mu_k, Sigma_k), then x_t follows the mixture

    p_t(x) = sum_k w_k N(x; scale mu_k, scale^2 Sigma_k + std^2 I)                          (1)

(an affine map of a Gaussian plus independent Gaussian noise is Gaussian). Each covariance is
eigendecomposed once, Sigma_k = U_k diag(lam_k) U_k^T, so that

    scale^2 Sigma_k + std^2 I = U_k diag(scale^2 lam_k + std^2) U_k^T                       (2)

and a different noise level for every sample of a batch costs no new factorisation.

All computations run in float64; results are float64 on the device of the input.
"""

from __future__ import annotations

import math

import torch

from diffusion_core._validation import (
    MAX_LEVEL,
    as_tensor,
    check_finite,
    check_float,
    check_number,
    check_positive_int,
)

__all__ = [
    "GaussianMixture",
    "default_mixture_2d",
    "gaussian",
    "mixture_velocity",
    "ring_mixture",
]

_WEIGHT_SUM_TOL = 1e-6
_SYMMETRY_RTOL = 1e-6
MAX_COMPONENTS = 10_000


class GaussianMixture:
    """The distribution sum_k w_k N(mu_k, Sigma_k) in R^d, with its noised versions in closed form.

    Args:
        weights: (K,) positive mixture weights that sum to 1 (within 1e-6; renormalised).
        means: (K, d) component means.
        covs: (K, d, d) symmetric positive-definite component covariances.

    Attributes ``weights``, ``means``, ``covs`` hold float64 copies on the CPU.
    """

    def __init__(self, weights, means, covs):
        weights = check_finite("weights", as_tensor("weights", weights, torch.float64))
        means = check_finite("means", as_tensor("means", means, torch.float64))
        covs = check_finite("covs", as_tensor("covs", covs, torch.float64))
        weights, means, covs = weights.cpu(), means.cpu(), covs.cpu()

        if weights.ndim != 1 or weights.shape[0] < 1:
            raise ValueError(
                f"weights must have shape (K,) with K >= 1, got {tuple(weights.shape)}"
            )
        n_components = weights.shape[0]
        if bool((weights <= 0).any()):
            raise ValueError("weights must all be > 0")
        total = float(weights.sum())
        if abs(total - 1.0) > _WEIGHT_SUM_TOL:
            raise ValueError(f"weights must sum to 1 (within {_WEIGHT_SUM_TOL}), got {total}")
        if means.ndim != 2 or means.shape[0] != n_components or means.shape[1] < 1:
            raise ValueError(
                f"means must have shape (K, d) = ({n_components}, d) with d >= 1, "
                f"got {tuple(means.shape)}"
            )
        dim = means.shape[1]
        if covs.shape != (n_components, dim, dim):
            raise ValueError(
                f"covs must have shape (K, d, d) = ({n_components}, {dim}, {dim}), "
                f"got {tuple(covs.shape)}"
            )
        asymmetry = float((covs - covs.mT).abs().max())
        if asymmetry > _SYMMETRY_RTOL * max(1.0, float(covs.abs().max())):
            raise ValueError(f"covs must be symmetric, max |C - C^T| = {asymmetry:.3g}")
        covs = 0.5 * (covs + covs.mT)
        eigvals, eigvecs = torch.linalg.eigh(covs)
        if bool((eigvals <= 0).any()):
            raise ValueError(
                f"covs must be positive definite, smallest eigenvalue {float(eigvals.min()):.3g}"
            )

        self.weights = weights / total
        self.means = means
        self.covs = covs
        self._eigvals = eigvals  # (K, d) lam_k in (2)
        self._eigvecs = eigvecs  # (K, d, d) U_k in (2), columns are eigenvectors

    @classmethod
    def isotropic(cls, weights, means, stds) -> GaussianMixture:
        """Mixture with covariances std_k^2 I; ``stds`` is (K,) or one number for all components."""
        means = as_tensor("means", means, torch.float64)
        stds = check_finite("stds", as_tensor("stds", stds, torch.float64))
        if means.ndim != 2:
            raise ValueError(f"means must have shape (K, d), got {tuple(means.shape)}")
        n_components, dim = means.shape
        if stds.ndim > 1 or (stds.ndim == 1 and stds.shape[0] != n_components):
            raise ValueError(
                f"stds must be a number or have shape (K,) = ({n_components},), "
                f"got {tuple(stds.shape)}"
            )
        if bool((stds <= 0).any()):
            raise ValueError("stds must all be > 0")
        variances = stds.expand(n_components) ** 2
        covs = variances[:, None, None] * torch.eye(dim, dtype=torch.float64)
        return cls(weights, means, covs)

    # ----------------------------------------------------------------------------- properties

    @property
    def dim(self) -> int:
        """Dimension d of the data space."""
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        """Number K of components."""
        return self.weights.shape[0]

    @property
    def mean(self) -> torch.Tensor:
        """Overall mean E[x0] = sum_k w_k mu_k, shape (d,)."""
        return self.weights @ self.means

    @property
    def covariance(self) -> torch.Tensor:
        """Overall covariance by the law of total covariance, shape (d, d).

        Cov[x0] = E[Cov[x0 | k]] + Cov[E[x0 | k]] = sum_k w_k (Sigma_k + mu_k mu_k^T) - m m^T.
        """
        second_moment = torch.einsum("k,kij->ij", self.weights, self.covs) + torch.einsum(
            "k,ki,kj->ij", self.weights, self.means, self.means
        )
        mean = self.mean
        return second_moment - torch.outer(mean, mean)

    def __repr__(self) -> str:
        return f"GaussianMixture(n_components={self.n_components}, dim={self.dim})"

    # ------------------------------------------------------------------------------- sampling

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Draw n exact samples, shape (n, d), float64 on the generator's device."""
        return self.sample_with_labels(n, generator)[0]

    def sample_with_labels(
        self, n: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw n samples and the index of the component each came from.

        Ancestral sampling: k ~ Categorical(w), then x0 = mu_k + U_k diag(lam_k)^(1/2) z with
        z ~ N(0, I), since (U diag(lam)^(1/2)) (U diag(lam)^(1/2))^T = Sigma_k.

        Returns:
            x: (n, d) float64 samples; labels: (n,) int64 component indices.
        """
        n = check_positive_int("n", n)
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        device = generator.device
        weights, means, eigvals, eigvecs = self._parameters(device)
        labels = torch.multinomial(weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64, device=device)
        offsets = torch.einsum("nij,nj->ni", eigvecs[labels], eigvals[labels].sqrt() * z)
        return means[labels] + offsets, labels

    # ------------------------------------------------------------------------ noised marginal

    def noised(self, scale, std) -> GaussianMixture:
        """The exact law of x_t = scale x0 + std eps as a new mixture, equation (1).

        ``scale`` and ``std`` are numbers (or 0-d tensors) here, not per-sample values.
        """
        scale = _scalar_level("scale", scale)
        std = _scalar_level("std", std)
        if scale == 0.0 and std == 0.0:
            raise ValueError("scale and std must not both be zero: x_t would be the constant 0")
        eye = torch.eye(self.dim, dtype=torch.float64)
        return GaussianMixture(
            self.weights, scale * self.means, scale**2 * self.covs + std**2 * eye
        )

    def log_prob(self, x: torch.Tensor, scale=1.0, std=0.0) -> torch.Tensor:
        """log p_t(x) of equation (1), shape (n,); defaults give the data density log p_0.

        Evaluated as log-sum-exp over components, so that points far from every component give
        a large negative number rather than -inf, down to the float64 range: beyond |x| ~ 1e154
        the true value is below -1e308 and rounds to -inf.
        """
        return torch.logsumexp(self._log_joint(x, scale, std)[0], dim=1)

    def responsibilities(self, x: torch.Tensor, scale, std) -> torch.Tensor:
        """Posterior component probabilities P(k | x_t = x), shape (n, K); rows sum to 1.

        r_k(x) = w_k N(x; scale mu_k, C_k) / sum_j w_j N(x; scale mu_j, C_j) (Bayes' rule).
        """
        return self._responsibilities(*self._log_joint(x, scale, std))[0]

    def score(self, x: torch.Tensor, scale, std) -> torch.Tensor:
        """The score grad_x log p_t(x), shape (n, d).

        Differentiating (1): grad log p_t(x) = -sum_k r_k(x) C_k^{-1} (x - scale mu_k), with
        C_k = scale^2 Sigma_k + std^2 I and C_k^{-1} = U_k diag(1 / (scale^2 lam_k + std^2)) U_k^T.
        """
        r, z, var = self._responsibilities(*self._log_joint(x, scale, std))
        eigvecs = self._eigvecs.to(r.device)
        return -torch.einsum("nk,kij,nkj->ni", r, eigvecs, z / var)

    def x0_pred(self, x: torch.Tensor, scale, std) -> torch.Tensor:
        """The optimal denoiser E[x0 | x_t = x], shape (n, d).

        Tweedie's formula (Robbins 1956; Efron 2011) gives
        E[x0 | x_t] = (x + std^2 score(x)) / scale. Here it is evaluated component by component
        (Gaussian conditioning),

            E[x0 | x_t = x] = sum_k r_k(x) [mu_k + scale Sigma_k C_k^{-1} (x - scale mu_k)],

        which needs no division by ``scale``: at scale = 0 (zero terminal SNR) the noisy input
        carries no information and the result is the data mean.
        """
        r, z, var = self._responsibilities(*self._log_joint(x, scale, std))
        _, means, eigvals, eigvecs = self._parameters(x.device)
        scale = _noise_level("scale", scale, x.shape[0], x.device)
        gain = torch.einsum("nk,kij,nkj->ni", r, eigvecs, eigvals * z / var)
        return r @ means + scale[:, None] * gain

    def eps_pred(self, x: torch.Tensor, scale, std) -> torch.Tensor:
        """The optimal noise prediction E[eps | x_t = x], shape (n, d); needs std > 0.

        E[eps | x_t] = (x - scale E[x0 | x_t]) / std = -std * score(x) (by Tweedie's formula),
        evaluated in the second form, which has no cancellation.
        """
        x = self._check_x(x)
        std_t = _noise_level("std", std, x.shape[0], x.device)
        if bool((std_t <= 0).any()):
            raise ValueError("std must be > 0 for eps_pred: at std = 0 the noise is undefined")
        return -std_t[:, None] * self.score(x, scale, std)

    # ------------------------------------------------------------------------------- internal

    def _parameters(self, device: torch.device):
        """weights, means, eigenvalues and eigenvectors on ``device``."""
        return tuple(t.to(device) for t in (self.weights, self.means, self._eigvals, self._eigvecs))

    def _check_x(self, x) -> torch.Tensor:
        x = check_float("x", x)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (n, {self.dim}), got {tuple(x.shape)}")
        return x.to(torch.float64)

    @staticmethod
    def _responsibilities(log_joint, z, var):
        """softmax(log_joint) over the components, with (z, var) passed through.

        Far from every component (|x| ~ 1e154 and beyond) each squared distance z^2 / var
        overflows and every log-density is -inf, so the softmax would be 0 / 0. The limit is
        then a certainty for the component nearest in Mahalanobis distance, found from the
        distances scaled down by their common largest coordinate."""
        r = torch.softmax(log_joint, dim=1)
        w = z / var.sqrt()
        largest = w.abs().amax(dim=(1, 2), keepdim=True).clamp(min=1.0)
        nearest = ((w / largest) ** 2).sum(-1).argmin(dim=1)
        lost = ~torch.isfinite(log_joint.amax(dim=1, keepdim=True))
        certain = torch.nn.functional.one_hot(nearest, r.shape[1]).to(r.dtype)
        return torch.where(lost, certain, r), z, var

    def _log_joint(self, x, scale, std):
        """log(w_k N(x; scale mu_k, C_k)) of shape (n, K), with the eigenbasis terms it uses.

        With z = U_k^T (x - scale mu_k) and v = scale^2 lam_k + std^2 (both (n, K, d)),
        log N = -(1/2) [sum_i z_i^2 / v_i + sum_i log v_i + d log(2 pi)], by (2).
        """
        x = self._check_x(x)
        n = x.shape[0]
        scale = _noise_level("scale", scale, n, x.device)
        std = _noise_level("std", std, n, x.device)
        if bool(((scale == 0) & (std == 0)).any()):
            raise ValueError("scale and std must not both be zero: x_t would be the constant 0")
        weights, means, eigvals, eigvecs = self._parameters(x.device)
        scale, std = scale[:, None, None], std[:, None, None]
        var = scale**2 * eigvals + std**2
        z = torch.einsum("kji,nkj->nki", eigvecs, x[:, None, :] - scale * means)
        log_normal = -0.5 * (
            (z**2 / var).sum(-1) + var.log().sum(-1) + self.dim * math.log(2 * math.pi)
        )
        return weights.log() + log_normal, z, var


# ----------------------------------------------------------------------- noise-level checks


def _noise_level(name: str, value, n: int, device: torch.device) -> torch.Tensor:
    """A non-negative finite scale or std as a float64 tensor of shape (n,).

    Allowed: a number, a 0-d tensor (one level for the whole batch) or a (n,) tensor (one level
    per sample).
    """
    value = check_finite(name, as_tensor(name, value, torch.float64))
    if bool((value > MAX_LEVEL).any()):
        raise ValueError(f"{name} must be at most {MAX_LEVEL:g} (its square must stay finite)")
    if value.ndim > 1 or (value.ndim == 1 and value.shape[0] != n):
        raise ValueError(
            f"{name} must be a number, a 0-d tensor or a tensor of shape ({n},) "
            f"(one value per sample), got shape {tuple(value.shape)}"
        )
    if bool((value < 0).any()):
        raise ValueError(f"{name} must be >= 0, got minimum {float(value.min())}")
    return value.to(device).expand(n)


def _scalar_level(name: str, value) -> float:
    """A non-negative finite number (or 0-d tensor) as a Python float."""
    value = check_finite(name, as_tensor(name, value, torch.float64))
    if value.ndim != 0:
        raise ValueError(f"{name} must be a number or a 0-d tensor, got shape {tuple(value.shape)}")
    if float(value) < 0:
        raise ValueError(f"{name} must be >= 0, got {float(value)}")
    return float(value)


# --------------------------------------------------------------------------- ready-made data


def gaussian(mean, cov) -> GaussianMixture:
    """A single Gaussian N(mean, cov) as a one-component mixture; mean (d,), cov (d, d)."""
    mean = as_tensor("mean", mean, torch.float64)
    cov = as_tensor("cov", cov, torch.float64)
    if mean.ndim != 1 or mean.shape[0] < 1:
        raise ValueError(f"mean must have shape (d,) with d >= 1, got {tuple(mean.shape)}")
    if cov.shape != (mean.shape[0], mean.shape[0]):
        d = mean.shape[0]
        raise ValueError(f"cov must have shape (d, d) = ({d}, {d}), got {tuple(cov.shape)}")
    return GaussianMixture(torch.ones(1, dtype=torch.float64), mean[None], cov[None])


def ring_mixture(n_components: int = 8, radius: float = 4.0, std: float = 0.5) -> GaussianMixture:
    """Equal-weight isotropic Gaussians with means evenly spaced on a circle in 2-D.

    Mean k is radius (cos(2 pi k / K), sin(2 pi k / K)). With the defaults neighbouring means are
    2 radius sin(pi / K) = 3.06 apart, about six standard deviations: the modes are well
    separated, the classic test of mode coverage.
    """
    n_components = check_positive_int("n_components", n_components, maximum=MAX_COMPONENTS)
    radius = check_number("radius", radius, 0, MAX_LEVEL)
    std = check_number("std", std, 0, MAX_LEVEL, low_open=True)
    angles = 2 * math.pi * torch.arange(n_components, dtype=torch.float64) / n_components
    means = radius * torch.stack([angles.cos(), angles.sin()], dim=1)
    weights = torch.full((n_components,), 1.0 / n_components, dtype=torch.float64)
    return GaussianMixture.isotropic(weights, means, std)


def default_mixture_2d() -> GaussianMixture:
    """The book's running 2-D example: three components with unequal weights (0.5, 0.3, 0.2).

    Each component has its own full (correlated) covariance, and the overall mean (0.8, 0.85) is
    not zero, so a sampler that leaks the mean or misses the weights shows it. The components are
    far apart compared with their spread, so hard assignment by responsibility recovers the
    component of a sample almost always (the weight error is then measurable).
    """
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    means = torch.tensor([[2.5, 1.5], [-2.0, 2.0], [0.75, -2.5]], dtype=torch.float64)
    covs = torch.tensor(
        [
            [[0.50, 0.25], [0.25, 0.30]],
            [[0.30, -0.15], [-0.15, 0.40]],
            [[0.60, 0.00], [0.00, 0.10]],
        ],
        dtype=torch.float64,
    )
    return GaussianMixture(weights, means, covs)


# ------------------------------------------------------------------------ velocity field


def _rate_level(name: str, value, n: int, device: torch.device) -> torch.Tensor:
    """A finite time derivative of a level, of either sign, as a float64 tensor of shape (n,)."""
    value = check_finite(name, as_tensor(name, value, torch.float64))
    if bool((value.abs() > MAX_LEVEL).any()):
        raise ValueError(f"{name} must lie in [-{MAX_LEVEL:g}, {MAX_LEVEL:g}]")
    if value.ndim > 1 or (value.ndim == 1 and value.shape[0] != n):
        raise ValueError(
            f"{name} must be a number, a 0-d tensor or a tensor of shape ({n},) "
            f"(one value per sample), got shape {tuple(value.shape)}"
        )
    return value.to(device).expand(n)


def mixture_velocity(
    mixture: GaussianMixture, x: torch.Tensor, scale, std, d_scale, d_std
) -> torch.Tensor:
    """The exact marginal velocity field u_t(x) of Gaussian-mixture data under the affine path
    x_t = scale(t) x0 + std(t) eps, whose time derivatives at t are ``d_scale`` and ``d_std``.

    Component k alone is carried by the Gaussian N(m_k, C_k), m_k = scale mu_k,
    C_k = scale^2 Sigma_k + std^2 I; the velocity that transports it along the path is

        u_k(x) = dm_k/dt + (1/2) dC_k/dt C_k^{-1} (x - m_k)
               = d_scale mu_k + (scale d_scale Sigma_k + std d_std I) C_k^{-1} (x - scale mu_k),

    and the continuity equation d p_t / dt + div(p_t u_t) = 0, linear in p_t = sum_k w_k p_k,
    gives the mixture's velocity as the responsibility-weighted average
    u_t(x) = sum_k r_k(x) u_k(x) (Lipman et al. 2023, Thm. 1, with the components as the
    conditioning variable). No denoiser enters: this is the oracle against which the velocity
    read from a denoiser (:func:`diffusion_core.parameterization.velocity_from_x0`) is checked.

    ``scale``, ``std``, ``d_scale``, ``d_std``: numbers, 0-d tensors or (n,) tensors; the
    levels must be >= 0 and not both 0, the rates finite of either sign. Returns (n, d) float64.
    """
    if not isinstance(mixture, GaussianMixture):
        raise TypeError(f"mixture must be a GaussianMixture, got {type(mixture).__name__}")
    r, z, var = mixture._responsibilities(*mixture._log_joint(x, scale, std))
    n = r.shape[0]
    _, means, eigvals, eigvecs = mixture._parameters(r.device)
    scale = _noise_level("scale", scale, n, r.device)[:, None, None]
    std = _noise_level("std", std, n, r.device)[:, None, None]
    d_scale = _rate_level("d_scale", d_scale, n, r.device)
    d_std = _rate_level("d_std", d_std, n, r.device)[:, None, None]
    # In the eigenbasis of Sigma_k, (1/2) dC_k/dt C_k^{-1} is diag((s ds lam + std dstd) / var).
    gain = (scale * d_scale[:, None, None] * eigvals + std * d_std) * z / var
    spread = torch.einsum("nk,kij,nkj->ni", r, eigvecs, gain)
    return d_scale[:, None] * (r @ means) + spread
