"""Tools for the stability chapter: variance propagation, error amplification, precision studies.

Stability has three measurable meanings in this library, one per part of the module:

- **Forward.** A linear-Gaussian chain x_t = f_t x_{t-1} + n_t^(1/2) z_t propagates its mean
  and variance exactly, m_t = f_t m_{t-1} and v_t = f_t^2 v_{t-1} + n_t
  (:func:`chain_moments`); the VP chain has the fixed point v = 1, the VE chain and the source
  article's walk grow without bound.
- **Reverse.** For one-dimensional Gaussian data x0 ~ N(mu, sigma_d^2) (or isotropic data,
  coordinate by coordinate) the exact denoiser is affine in x at every grid point,
  D_i(x) = p_i x + q_i (:func:`gaussian_denoiser_coefficients`). Every sampler step is then
  affine too, e.g.

      x_{k+1} = a_k x_k + a'_k x_{k-1} + b_k + n_k z_k,     z_k ~ N(0, 1)

  for a multistep sampler, so the output law is Gaussian and is computed exactly
  (:func:`affine_map`, :func:`output_law`), including for the stochastic samplers; so is the
  gain dx_K / dx_k with which a perturbation at step k reaches the output
  (:func:`perturbation_gain`). Nothing of a sampler's update is written here: the map is
  obtained by running the sampler's own step rule through the samplers' own loop on symbolic
  states, so a sampler added to :mod:`diffusion_core.samplers` with a step rule is analysed
  with no further code.
- **Precision.** A harness runs a sampler with the model's inputs and outputs rounded to a low
  precision (:func:`precision_study`), and :func:`textbook_ddpm` runs Ho et al.'s Algorithm 2
  with *all* its arithmetic in a chosen dtype, to show where NaN and infinity come from.

Plus the denoiser wrappers for bounded data (:func:`clip_denoiser`,
:func:`dynamic_threshold_denoiser`) and the terminal-SNR leak (:func:`terminal_leak`). All
results are float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from diffusion_core._validation import (
    MAX_COUNT,
    MAX_LEVEL,
    as_tensor,
    check_callable,
    check_finite,
    check_float,
    check_number,
    check_positive_int,
    per_sample,
)
from diffusion_core.metrics import gaussian_w2
from diffusion_core.samplers import SAMPLERS, apply_steps
from diffusion_core.schedules import TimeGrid

__all__ = [
    "AFFINE_SAMPLERS",
    "AffineMap",
    "affine_map",
    "article_chain",
    "chain_moments",
    "clip_denoiser",
    "dynamic_threshold_denoiser",
    "edm_input_scale",
    "gaussian_denoiser",
    "gaussian_denoiser_coefficients",
    "gaussian_sampler_law",
    "gaussian_sampler_w2",
    "marginal_law",
    "nonfinite_count",
    "observed_order",
    "output_law",
    "perturbation_gain",
    "pf_ode_gain",
    "precision_study",
    "reverse_sde_gain",
    "simulate_linear_chain",
    "terminal_leak",
    "textbook_ddpm",
    "ve_chain",
    "vp_chain",
]

AFFINE_SAMPLERS = tuple(name for name, s in SAMPLERS.items() if hasattr(s, "step_rule"))
F64 = torch.float64


# ------------------------------------------------------------------------------ checks


def _grid(grid) -> TimeGrid:
    if not isinstance(grid, TimeGrid):
        raise TypeError(f"grid must be a TimeGrid, got {type(grid).__name__}")
    return grid


def _vector(name: str, x) -> torch.Tensor:
    x = as_tensor(name, x, F64)
    if x.ndim != 1 or x.shape[0] < 1:
        raise ValueError(f"{name} must be a non-empty 1-D sequence, got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} must be finite")
    return x


# ----------------------------------------------------------------------- forward chains


def chain_moments(factors, noise_vars, mean0: float = 0.0, var0: float = 1.0):
    """Exact mean and variance of the chain x_t = f_t x_{t-1} + n_t^(1/2) z_t, t = 1..T.

    m_t = f_t m_{t-1},  v_t = f_t^2 v_{t-1} + n_t  (independent Gaussian increments add their
    variances). Returns (means, variances), each (T + 1,), entry 0 being (mean0, var0).
    """
    factors, noise_vars = _vector("factors", factors), _vector("noise_vars", noise_vars)
    if factors.shape != noise_vars.shape:
        raise ValueError(
            f"noise_vars must have the shape of factors, {tuple(factors.shape)}, "
            f"got {tuple(noise_vars.shape)}"
        )
    if bool((noise_vars < 0).any()):
        raise ValueError("noise_vars must be >= 0")
    mean0, var0 = check_number("mean0", mean0), check_number("var0", var0, 0.0)
    means = torch.cat([torch.tensor([mean0], dtype=F64), mean0 * torch.cumprod(factors, 0)])
    variances = [var0]
    for f, n in zip(factors.tolist(), noise_vars.tolist(), strict=True):
        variances.append(f * f * variances[-1] + n)
    return means, torch.tensor(variances, dtype=F64)


def simulate_linear_chain(factors, noise_vars, x0: torch.Tensor, generator: torch.Generator):
    """Run the chain of :func:`chain_moments` on the samples ``x0``; all T + 1 states, stacked."""
    factors, noise_vars = _vector("factors", factors), _vector("noise_vars", noise_vars)
    x = check_float("x0", x0).to(F64)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    states = [x]
    for f, n in zip(factors.tolist(), noise_vars.tolist(), strict=True):
        x = f * x + math.sqrt(n) * torch.randn(x.shape, generator=generator, dtype=F64)
        states.append(x)
    return torch.stack(states)


def vp_chain(schedule) -> tuple[torch.Tensor, torch.Tensor]:
    """(factors, noise_vars) = (sqrt(1 - beta_t), beta_t) of the DDPM chain (Ho et al. 2020, Eq. 2).

    Its variance map v -> (1 - beta) v + beta has the fixed point v = 1, and
    v_t - 1 = alpha_bar_t (v_0 - 1): the chain forgets its start and keeps unit variance.
    """
    betas = getattr(schedule, "betas", None)
    if not isinstance(betas, torch.Tensor):
        raise TypeError(f"schedule must be a Schedule, got {type(schedule).__name__}")
    return (1.0 - betas).sqrt(), betas.clone()


def ve_chain(sigmas) -> tuple[torch.Tensor, torch.Tensor]:
    """(factors, noise_vars) = (1, sigma_t^2 - sigma_{t-1}^2) of a variance-exploding chain.

    ``sigmas`` are increasing noise levels sigma_0 < sigma_1 < ... < sigma_T; the chain adds
    the difference of variances at each step, so v_t = v_0 + sigma_t^2 - sigma_0^2 (Song &
    Ermon 2019; Song et al. 2021, Eq. 9 discretised).
    """
    sigmas = _vector("sigmas", sigmas)
    if sigmas.shape[0] < 2 or bool((sigmas.diff() <= 0).any()) or bool((sigmas < 0).any()):
        raise ValueError("sigmas must be non-negative and strictly increasing, with length >= 2")
    return torch.ones(sigmas.shape[0] - 1, dtype=F64), (sigmas[1:] ** 2 - sigmas[:-1] ** 2)


def article_chain(steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(factors, noise_vars) = (1, t) for t = 0..steps-1: the source article's loop
    x <- x + sqrt(t) z (see :func:`diffusion_core.forward.seed_article_diffuse`)."""
    steps = check_positive_int("steps", steps)
    return torch.ones(steps, dtype=F64), torch.arange(steps, dtype=F64)


def edm_input_scale(sigma, data_std: float = 0.5) -> torch.Tensor:
    """c_in(sigma) = 1 / sqrt(sigma^2 + sigma_d^2) (Karras et al. 2022, Table 1).

    For x = x0 + sigma eps with Var[x0] = sigma_d^2, c_in x has unit variance at every sigma:
    the network sees inputs of one scale however far the variance-exploding process has grown.
    EDM's default sigma_d = 0.5 suits images in [-1, 1].
    """
    sigma = as_tensor("sigma", sigma, F64)
    if bool(((sigma < 0) | torch.isnan(sigma)).any()):
        raise ValueError("sigma must be >= 0")
    data_std = check_number("data_std", data_std, 0.0, MAX_LEVEL, low_open=True)
    return 1.0 / (sigma**2 + data_std**2).sqrt()


# ---------------------------------------------------------------- Gaussian data, exactly


def marginal_law(grid: TimeGrid, data_mean: float, data_std: float):
    """Mean and variance of x_i = scale_i x0 + std_i eps at every grid point, x0 ~ N(mu, sigma_d^2).

    mean_i = scale_i mu, var_i = scale_i^2 sigma_d^2 + std_i^2. Returns two (K + 1,) tensors.
    """
    grid = _grid(grid)
    mu, sd = (
        check_number("data_mean", data_mean, -MAX_LEVEL, MAX_LEVEL),
        check_number("data_std", data_std, 0.0, MAX_LEVEL, low_open=True),
    )
    return grid.scale * mu, grid.scale**2 * sd**2 + grid.std**2


def gaussian_denoiser_coefficients(grid: TimeGrid, data_mean: float, data_std: float):
    """(p, q) with E[x0 | x_i = x] = p_i x + q_i at every grid point, for x0 ~ N(mu, sigma_d^2).

    Gaussian conditioning (or Tweedie's formula, Chapter 2):
    p = scale sigma_d^2 / (scale^2 sigma_d^2 + std^2), q = mu std^2 / (scale^2 sigma_d^2 + std^2).
    Finite at zero SNR (scale = 0: p = 0, q = mu) and at the clean point (p = 1 / scale, q = 0).
    """
    grid = _grid(grid)
    mu, sd = (
        check_number("data_mean", data_mean, -MAX_LEVEL, MAX_LEVEL),
        check_number("data_std", data_std, 0.0, MAX_LEVEL, low_open=True),
    )
    var = grid.scale**2 * sd**2 + grid.std**2
    return grid.scale * sd**2 / var, mu * grid.std**2 / var


def gaussian_denoiser(data_mean: float, data_std: float) -> Callable:
    """model(x, point) = E[x0 | x_t = x] for x0 ~ N(mu, sigma_d^2 I), coordinate by coordinate.

    The same formula as :func:`gaussian_denoiser_coefficients`, at the grid point's (scale,
    std), written with plain tensor arithmetic: unlike
    :meth:`~diffusion_core.analytic.GaussianMixture.x0_pred` it checks nothing about x, so NaN and
    infinity pass through it the way they pass through a network.
    """
    mu, sd = (
        check_number("data_mean", data_mean, -MAX_LEVEL, MAX_LEVEL),
        check_number("data_std", data_std, 0.0, MAX_LEVEL, low_open=True),
    )

    def model(x: torch.Tensor, point) -> torch.Tensor:
        var = point.scale**2 * sd**2 + point.std**2
        return point.scale * sd**2 / var * x.to(F64) + mu * point.std**2 / var

    return model


@dataclass(frozen=True)
class AffineMap:
    """A sampler run on an affine denoiser, as the affine map it is:

        x_K = offset + sum_k gain_k delta_k + sum_j noise_j z_j,

    where delta_0 is the start x_0, delta_k (k >= 1) a perturbation added to the state at grid
    point k, and z_j ~ N(0, 1) the j-th noise draw of the run (independent of the start).
    ``gain`` is (K + 1,) with gain_K = 1; ``noise`` has one entry per draw; ``offset`` is 0-d."""

    gain: torch.Tensor
    offset: torch.Tensor
    noise: torch.Tensor

    @property
    def steps(self) -> int:
        return self.gain.shape[0] - 1


def affine_map(sampler, grid: TimeGrid, p, q, **options) -> AffineMap:
    """The exact affine map of ``sampler`` (a sampler with a step rule, or its name in
    :data:`~diffusion_core.samplers.SAMPLERS`) for the linear model D_i(x) = p_i x + q_i at grid
    point i (p, q: (K + 1,) tensors, e.g. from :func:`gaussian_denoiser_coefficients`).

    Obtained from the sampler's own code, not from a copy of its update: the step rule's
    coefficients (:mod:`diffusion_core.samplers`) are applied by the samplers' own loop to
    symbolic states. A state is a row of coefficients over the basis (1, delta_0, ..., delta_K,
    z_1, ..., z_N), each noise draw is the next basis vector, and the linear model maps a row c
    to p_i c + q_i e_1, so the loop's output is the map's coefficients, exact to rounding. Any
    sampler built on :func:`~diffusion_core.samplers.run_steps` is covered, multistep and
    corrector steps included; :func:`~diffusion_core.samplers.predictor_corrector`, whose step
    size depends on the state's norm, is not affine and is refused. The result feeds
    :func:`output_law` and :func:`perturbation_gain`.
    """
    rule, grid = _step_rule(sampler), _grid(grid)
    p, q = _coefficients("p", p, grid).tolist(), _coefficients("q", q, grid).tolist()
    steps = rule(grid, **options)
    K = grid.steps
    width = 2 + K + sum(step.predict.noise != 0 for step in steps)
    index = {id(point): i for i, point in enumerate(grid.points)}
    draws = iter(range(2 + K, width))

    def linear_model(c, point):
        i = index[id(point)]
        out = p[i] * c
        out[:, 0] += q[i]
        return out

    def basis(column):
        e = torch.zeros(1, width, dtype=F64)
        e[0, column] = 1.0
        return e

    out = apply_steps(
        steps,
        linear_model,
        basis(1),
        grid.points,
        lambda _: basis(next(draws)),
        None,
        F64,
        shift=lambda i: basis(2 + i),
    )[0]
    return AffineMap(gain=out[1 : 2 + K].clone(), offset=out[0].clone(), noise=out[2 + K :].clone())


def _step_rule(sampler, argument: str = "sampler") -> Callable:
    """The step rule of a sampler given as one of the SAMPLERS' names or as a function; the
    errors name the caller's ``argument``."""
    name = sampler if isinstance(sampler, str) else getattr(sampler, "__name__", repr(sampler))
    if isinstance(sampler, str):
        if sampler not in SAMPLERS:
            raise ValueError(f"{argument} must be one of {tuple(SAMPLERS)}, got {sampler!r}")
        sampler = SAMPLERS[sampler]
    rule = getattr(sampler, "step_rule", None)
    if rule is None:
        raise ValueError(
            f"{argument} {name} has no step rule, so it is not affine in x (the "
            "predictor-corrector's "
            "Langevin step size depends on the state's norm): the affine samplers are "
            f"{AFFINE_SAMPLERS}"
        )
    return rule


def _coefficients(name: str, x, grid: TimeGrid) -> torch.Tensor:
    x = as_tensor(name, x, F64)
    if x.shape != grid.t.shape:
        raise ValueError(f"{name} must have one entry per grid point, {tuple(grid.t.shape)}")
    return x


def _map(value) -> AffineMap:
    if not isinstance(value, AffineMap):
        raise TypeError(f"affine must be an AffineMap, got {type(value).__name__}")
    return value


def output_law(affine: AffineMap, start_mean: float, start_var: float):
    """Mean and variance of x_K when x_0 ~ N(start_mean, start_var), independent of the noise,
    for the map of :func:`affine_map`: mean = offset + gain_0 m, var = gain_0^2 v + sum_j
    noise_j^2. Returns two 0-d float64 tensors."""
    affine = _map(affine)
    m, v = check_number("start_mean", start_mean), check_number("start_var", start_var, 0.0)
    mean = affine.offset + affine.gain[0] * m
    return mean, affine.gain[0] ** 2 * v + affine.noise.square().sum()


def perturbation_gain(affine: AffineMap) -> torch.Tensor:
    """G_k = d x_K / d x_k for k = 0..K: how much of a perturbation of the state at grid point k
    reaches the output (G_K = 1). The noise does not depend on the state, so the gain is the same
    for every draw. For a multistep sampler x_k also enters later steps through D(x_k)."""
    return _map(affine).gain.clone()


def gaussian_sampler_law(
    name: str, grid: TimeGrid, data_mean: float, data_std: float, start=None, **options
):
    """Exact output law N(mean, var) of sampler ``name`` with the exact denoiser of
    x0 ~ N(mu, sigma_d^2), started from ``start`` = (mean, var) (default: the exact marginal at
    the first grid point, so that only the sampler's own error remains)."""
    _step_rule(name, argument="name")
    p, q = gaussian_denoiser_coefficients(grid, data_mean, data_std)
    if start is None:
        means, variances = marginal_law(grid, data_mean, data_std)
        start = (float(means[0]), float(variances[0]))
    if not isinstance(start, Sequence) or len(start) != 2:
        raise TypeError("start must be a pair (mean, variance) or None")
    return output_law(affine_map(name, grid, p, q, **options), *start)


def gaussian_sampler_w2(
    name: str, grid: TimeGrid, data_mean: float, data_std: float, start=None, **options
) -> torch.Tensor:
    """Exact W2 between the output law of :func:`gaussian_sampler_law` and the exact marginal at
    the last grid point (the data law when the grid ends at the clean sample). For isotropic data
    in d dimensions multiply by sqrt(d)."""
    mean, var = gaussian_sampler_law(name, grid, data_mean, data_std, start, **options)
    means, variances = marginal_law(grid, data_mean, data_std)
    return gaussian_w2(mean[None], var.reshape(1, 1), means[-1:], variances[-1].reshape(1, 1))


def _levels(scale, std, data_std):
    scale, std = as_tensor("scale", scale, F64), as_tensor("std", std, F64)
    if scale.shape != std.shape or scale.numel() == 0:
        raise ValueError(
            f"std must have the shape of scale, {tuple(scale.shape)} (not empty), "
            f"got {tuple(std.shape)}"
        )
    if bool(((scale <= 0) | (std < 0) | ~torch.isfinite(scale) | ~torch.isfinite(std)).any()):
        raise ValueError("scale must be > 0 and std >= 0, both finite")
    return (
        scale,
        (std / scale) ** 2,
        check_number("data_std", data_std, 0.0, MAX_LEVEL, low_open=True) ** 2,
    )


def pf_ode_gain(scale, std, data_std: float) -> torch.Tensor:
    """d x_0 / d x_t along the exact probability-flow ODE, Gaussian data of std sigma_d.

    In y = x / scale the ODE is dy / dsigma = (y - D) / sigma with D = mu + k (y - mu),
    k = sigma_d^2 / (sigma_d^2 + sigma^2), so a perturbation obeys d(dy)/dsigma =
    sigma dy / (sigma_d^2 + sigma^2): dy is proportional to (sigma_d^2 + sigma^2)^(1/2). Hence
    gain = sigma_d / (scale (sigma_d^2 + sigma^2)^(1/2)) = std(x_0) / std(x_t): the flow maps
    quantile to quantile. It is 1 at every t for unit-variance data on a VP process.
    """
    scale, sigma2, d2 = _levels(scale, std, data_std)
    return math.sqrt(d2) / (scale * (d2 + sigma2).sqrt())


def reverse_sde_gain(scale, std, data_std: float) -> torch.Tensor:
    """d x_0 / d x_t along the exact reverse SDE (same noise for both paths), Gaussian data.

    The drift is twice the ODE's score term (Anderson 1982; Song et al. 2021, Eq. 6 vs Eq. 13),
    so d(dy)/dsigma = 2 sigma dy / (sigma_d^2 + sigma^2) and dy is proportional to
    sigma_d^2 + sigma^2: gain = sigma_d^2 / (scale (sigma_d^2 + sigma^2)) = scale *
    pf_ode_gain^2. It is scale = sqrt(alpha_bar_t) for unit-variance data on a VP process.
    """
    scale, sigma2, d2 = _levels(scale, std, data_std)
    return d2 / (scale * (d2 + sigma2))


def observed_order(steps, errors) -> float:
    """Least-squares slope p of log(error) = c - p log(steps): the observed order of convergence."""
    steps, y = _vector("steps", steps), _vector("errors", errors)
    if bool((steps < 1).any()) or bool((steps > MAX_COUNT).any()):
        raise ValueError(f"steps must lie in 1..{MAX_COUNT}")
    if steps.unique().numel() < 2:
        raise ValueError("steps must hold at least two different step counts")
    if steps.shape != y.shape or bool((y <= 0).any()):
        raise ValueError("errors must have the length of steps and be > 0")
    x, y = steps.log(), y.log()
    return float(-((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())


def terminal_leak(grid: TimeGrid, data_mean) -> torch.Tensor:
    """scale_0 * mu: the part of the data mean that x at the first grid point still carries and
    that a start from pure noise N(0, std_0^2) leaves out (Lin et al. 2024).

    A probability-flow sampler carries a shift of its start to the output with gain
    :func:`pf_ode_gain` (1 for unit-variance data on a VP process), so the output mean is short of
    mu by about gain * scale_0 * mu: sqrt(alpha_bar_T) mu = 0.068 mu for Stable Diffusion's
    schedule. Zero at zero terminal SNR.
    """
    grid = _grid(grid)
    return grid.scale[0] * check_finite("data_mean", as_tensor("data_mean", data_mean, F64))


# ----------------------------------------------------------------------------- precision


def nonfinite_count(x: torch.Tensor) -> tuple[int, int]:
    """(number of NaN entries, number of infinite entries) of a tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    return int(torch.isnan(x).sum()), int(torch.isinf(x).sum())


def _check_dtype(dtype) -> None:
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch dtype, got {dtype!r}")


def _cast(model: Callable, dtype: torch.dtype) -> Callable:
    def rounded(x, point):
        return model(x.to(dtype), point).to(dtype)

    return rounded


def precision_study(
    sampler: Callable,
    model: Callable,
    x: torch.Tensor,
    grid: TimeGrid,
    dtypes=(torch.float32, torch.bfloat16, torch.float16),
    seed: int = 0,
    **options,
):
    """Run ``sampler`` with the model's input and output rounded to each of ``dtypes`` (a network
    run in low precision), the sampler's own arithmetic staying float64, and compare with the
    float64 run. The sampler's noise comes from a generator seeded with ``seed`` in every run, so
    the differences are rounding alone.

    Returns {dtype: {"nan": int, "inf": int, "max_error": float, "rms_error": float}}, errors
    measured against the float64 output (NaN where the run produced NaN).
    """
    check_callable("sampler", sampler, "sampler(model, x, grid, generator, **options)")
    check_callable("model", model, "model(x, point) -> x0_hat")
    x = check_float("x", x).to(F64)
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(f"x must have shape (n, ...) with n >= 1, got {tuple(x.shape)}")
    _grid(grid)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    for dtype in dtypes:
        _check_dtype(dtype)

    def run(m):
        return sampler(m, x, grid, torch.Generator().manual_seed(seed), **options)

    reference = run(model)
    report = {}
    for dtype in dtypes:
        out = run(_cast(model, dtype))
        error = (out - reference).abs()
        nan, inf = nonfinite_count(out)
        report[dtype] = {
            "nan": nan,
            "inf": inf,
            "max_error": float(error.max()),
            "rms_error": float(error.square().mean().sqrt()),
        }
    return report


def textbook_ddpm(
    eps_model: Callable,
    x: torch.Tensor,
    betas: torch.Tensor,
    dtype: torch.dtype,
    generator: torch.Generator,
) -> torch.Tensor:
    """Ho et al. (2020), Algorithm 2, with *every* quantity in ``dtype``, as a naive port would:

        alpha_bar = cumprod(1 - beta),   for t = T..1:
        x <- (x - beta_t / sqrt(1 - alpha_bar_t) eps_model(x, t)) / sqrt(alpha_t) + sqrt(beta_t) z

    (sigma_t^2 = beta_t, no noise at t = 1). In float16, 1 - beta rounds to 1 for beta <= 2^-12,
    so alpha_bar_t = 1 for the first steps of the linear schedule and 1 - alpha_bar_t = 0: the
    division gives infinity, and the next step infinity minus infinity. The library's samplers
    avoid it by keeping the schedule in float64 and rounding only the network's input and output.
    ``eps_model(x, t)`` receives x in ``dtype`` and t as a 0-d int64 tensor; noise is drawn in
    float64 from ``generator`` and rounded, so runs in different dtypes share it.
    """
    check_callable("eps_model", eps_model, "eps_model(x, t) -> eps")
    x = check_float("x", x)
    betas = check_float("betas", betas)
    if betas.ndim != 1 or betas.numel() == 0:
        raise ValueError(f"betas must be 1-D and not empty, got shape {tuple(betas.shape)}")
    if bool(((betas <= 0) | (betas > 1)).any()):
        raise ValueError("betas must lie in (0, 1]")
    _check_dtype(dtype)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    betas = betas.to(dtype)
    alphas = 1 - betas
    alpha_bars = torch.cumprod(alphas, 0)
    x = x.to(dtype)
    for t in range(betas.shape[0], 0, -1):
        z = torch.randn(x.shape, generator=generator, dtype=F64).to(dtype) if t > 1 else 0.0
        eps = eps_model(x, torch.tensor(t)).to(dtype)
        beta, alpha, alpha_bar = betas[t - 1], alphas[t - 1], alpha_bars[t - 1]
        x = (x - beta / (1 - alpha_bar).sqrt() * eps) / alpha.sqrt() + beta.sqrt() * z
    return x


# ---------------------------------------------------------------- bounded data: clipping


def _check_model(model) -> None:
    if not callable(model):
        raise TypeError(
            f"model must be callable as model(x, point) -> x0_hat, got {type(model).__name__}"
        )


def clip_denoiser(model: Callable, low: float = -1.0, high: float = 1.0) -> Callable:
    """model(x, point) clamped to [low, high]: "static thresholding" of x0_hat (Ho et al. 2020's
    sampler clips x0_hat to [-1, 1]; Saharia et al. 2022, Sec. 2.3). Bounded data have their
    posterior mean inside the bounds, so this changes only an erring model's predictions."""
    _check_model(model)
    low, high = check_number("low", low), check_number("high", high)
    if not low < high:
        raise ValueError(f"need low < high, got low={low}, high={high}")

    def clipped(x, point):
        return model(x, point).clamp(low, high)

    return clipped


def dynamic_threshold_denoiser(model: Callable, percentile: float = 0.995) -> Callable:
    """Dynamic thresholding of Saharia et al. (2022), Sec. 2.3, as a denoiser wrapper.

    Per sample, s = the ``percentile`` quantile of |x0_hat| over all its coordinates; if s > 1,
    x0_hat <- clip(x0_hat, -s, s) / s. Saturated coordinates are pulled inside [-1, 1] by
    rescaling the whole sample instead of piling up at the bounds. Data in [-1, 1]; a sample of a
    single coordinate is simply clipped (s is then |x0_hat|).
    """
    _check_model(model)
    percentile = check_number("percentile", percentile, 0.0, 1.0)

    def thresholded(x, point):
        x0_hat = model(x, point)
        flat = x0_hat.reshape(x0_hat.shape[0], -1).abs()
        s = torch.quantile(flat, percentile, dim=1).clamp(min=1.0)
        s = per_sample(s, x0_hat)
        return torch.minimum(torch.maximum(x0_hat, -s), s) / s

    return thresholded
