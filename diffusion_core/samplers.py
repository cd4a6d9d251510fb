"""Samplers: from noise to data along an explicit time grid.

Every sampler is a pure function with one signature,

    sampler(model, x, grid, generator=None, callback=None, **options) -> x

- ``model(x, t) -> x0_hat`` is a denoiser (see :func:`diffusion_core.parameterization.as_denoiser`
  for networks that predict eps or v). ``t`` is one entry of ``grid.t`` as a 0-d tensor; ``x``
  has the shape and dtype of the sampler's input.
- ``x`` is the state at the first grid point, drawn by the caller: :func:`prior_sample` gives
  x = std_0 * z, z ~ N(0, I).
- ``grid`` is a :class:`TimeGrid`: model times and the (scale, std) of x_t = scale x0 + std eps
  at each point, from noisy to clean (:func:`schedule_grid`, :func:`sde_grid`).
- ``generator`` is the random source of the stochastic samplers: None (torch's global one), a
  ``torch.Generator`` on x's device, or a list of one generator per sample
  (:func:`diffusion_core.device.per_sample_generators`), which makes every sample's path
  independent of the batch it is drawn in. Each draw is ``torch.randn(x.shape,
  generator=generator)`` on x's device (row by row from a list), in the caller's precision: the
  dtype of the input x, or float32 for a half-precision input. A float64 caller gets float64
  noise; a float32 caller, whose result is float32, gets float32 noise, which is four times
  faster to draw on a CPU and loses nothing it could keep. The draws then join the float64
  state, so that a notebook can replay them.
- ``callback(i, x, x0_hat)``, if given, sees the float64 state after step i and the denoiser
  output used in that step: a whole trajectory at no extra cost.

The samplers think in the variance-exploding coordinates of Karras et al. (2022): y = x / scale
= x0 + sigma eps with sigma = std / scale, and lambda = log(scale / std) = -log sigma. Their update
coefficients are written so that they stay finite at sigma = inf (scale = 0).

Final-step policy. A grid from :func:`schedule_grid` or :func:`sde_grid` ends at (scale, std) =
(1, 0), the clean sample. Every sampler takes the last step onto std = 0 as a first-order step
that returns the denoiser's output x0_hat at the previous grid point, without noise: DDPM shows
its mean "noiselessly" at the end (Ho et al. 2020, Sec. 3.3 and Alg. 2), and Heun's last step is
an Euler step (Karras et al. 2022, Alg. 1). A grid that ends at std > 0 is allowed too (partial
sampling); then there is no special last step.

Precision. Every coefficient is computed once, before the loop, in float64 from the grid; the
state is float64; the model sees x in the dtype of the input x and its output is cast to float64;
the result is returned in the input's dtype. So an fp16 network gets fp16 inputs while the
schedule arithmetic, where the cancellations are, stays exact to float64.

No host synchronisation inside loops: the grid is read into Python floats with ``.tolist()``
once, and the loop has no ``.item()``, ``float(tensor)`` or ``if`` on a tensor value.

Zero terminal SNR. A grid may start at scale_0 = 0 (sigma_0 = inf, Lin et al. 2024).
:func:`ddpm`, :func:`ddim`, :func:`euler`, :func:`heun`, :func:`dpm_solver_pp_2m` and
:func:`unipc` take a first-order first step whose coefficients stay finite there (with a model
that predicts x0 or v: eps-prediction cannot give x0 at zero SNR). :func:`euler_maruyama` and
:func:`predictor_corrector` raise ``ValueError``: the reverse SDE in sigma would have to remove
noise of infinite variance sigma_0^2 in its first step.

Guidance. :func:`classifier_free_guidance` turns a class-conditional model(x, t, labels) into a
model(x, t) that any sampler above takes; :func:`exact_conditional_denoiser` is the exact
conditional denoiser of a Gaussian mixture, its reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from diffusion_core._validation import check_float, check_positive_int, check_shape
from diffusion_core.analytic import GaussianMixture
from diffusion_core.device import check_generator, generator_device, standard_normal
from diffusion_core.schedules import VESDE, VPSDE, Schedule, karras_sigmas, timestep_spacing

__all__ = [
    "GRID_KINDS",
    "SAMPLERS",
    "VARIANCES",
    "TimeGrid",
    "classifier_free_guidance",
    "ddim",
    "ddpm",
    "dpm_solver_pp_2m",
    "euler",
    "euler_maruyama",
    "exact_conditional_denoiser",
    "flow_endpoint",
    "heun",
    "predictor_corrector",
    "prior_sample",
    "schedule_grid",
    "sde_grid",
    "sigma_grid",
    "unipc",
]

GRID_KINDS = ("uniform", "karras")
VARIANCES = ("beta_tilde", "beta")


# ------------------------------------------------------------------------------ time grid


@dataclass(frozen=True)
class TimeGrid:
    """K + 1 points of a sampling path, from noisy (index 0) to clean (index K).

    Args:
        t: (K + 1,) model times, strictly decreasing: integers for a discrete
            :class:`~diffusion_core.schedules.Schedule`, reals in [0, 1] for an SDE.
        scale, std: (K + 1,) non-negative signal scale and noise std at each point (float64).

    The signal-to-noise ratio scale^2 / std^2 must increase strictly along the grid, checked as
    scale_{i+1} std_i > scale_i std_{i+1} so that the ends are allowed: the first point may have
    scale = 0 (zero terminal SNR, sigma = inf) and the last may have std = 0 (the clean sample,
    (scale, std) = (1, 0) for the library's processes).
    """

    t: torch.Tensor
    scale: torch.Tensor
    std: torch.Tensor

    def __post_init__(self):
        t = self.t
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"t must be a 1-D torch.Tensor, got {type(t).__name__}")
        if t.dtype == torch.bool or t.is_complex():
            raise TypeError(f"t must hold integer or real times, got dtype {t.dtype}")
        if t.ndim != 1 or t.shape[0] < 2:
            raise ValueError(
                f"t must be 1-D with at least 2 points (one step), got {tuple(t.shape)}"
            )
        if t.is_floating_point():
            check_float("t", t)
        scale = check_float("scale", self.scale).to(torch.float64)
        std = check_float("std", self.std).to(device=scale.device, dtype=torch.float64)
        for name, value in (("scale", scale), ("std", std)):
            if value.shape != t.shape:
                raise ValueError(
                    f"{name} must have the shape of t, {tuple(t.shape)}, got {tuple(value.shape)}"
                )
            if bool((value < 0).any()):
                raise ValueError(f"{name} must be >= 0 at every grid point")
        if bool((t[1:] >= t[:-1]).any()):
            raise ValueError("t must be strictly decreasing: a grid runs from noisy to clean")
        if not bool((scale[1:] * std[:-1] > scale[:-1] * std[1:]).all()):
            raise ValueError(
                "the grid's SNR scale^2 / std^2 must increase strictly from each point to the "
                "next (only the first point may have scale = 0, only the last std = 0)"
            )
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "std", std)

    @property
    def steps(self) -> int:
        """Number K of steps (grid points minus one)."""
        return self.t.shape[0] - 1

    @property
    def sigma(self) -> torch.Tensor:
        """sigma = std / scale, the noise level of y = x / scale (inf at scale = 0)."""
        return self.std / self.scale

    @property
    def log_snr(self) -> torch.Tensor:
        """lambda = log(scale / std) (-inf at scale = 0, +inf at std = 0)."""
        return self.scale.log() - self.std.log()


def schedule_grid(schedule: Schedule, steps: int, spacing: str = "trailing") -> TimeGrid:
    """A ``steps``-step grid of a discrete schedule: the times of
    :func:`~diffusion_core.schedules.timestep_spacing`, then t = 0 (scale 1, std 0), the clean
    sample that the last step lands on."""
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a Schedule, got {type(schedule).__name__}")
    steps = check_positive_int("steps", steps, maximum=schedule.T)
    t = torch.cat([timestep_spacing(schedule.T, steps, spacing), torch.zeros(1, dtype=torch.int64)])
    scale, std = schedule.marginal(t)
    return TimeGrid(t, scale, std)


def sde_grid(
    sde, steps: int, t_min: float = 1e-3, kind: str = "uniform", rho: float = 7.0
) -> TimeGrid:
    """A ``steps``-step grid of a continuous-time process (a VPSDE or VESDE): ``steps`` noisy
    times from 1 down to ``t_min``, then t = 0 (std 0), the clean sample.

    - ``kind="uniform"``: the noisy times evenly spaced in t (Song et al. 2021).
    - ``kind="karras"``: noise levels sigma = std / scale evenly spaced in sigma^(1 / rho) between
      sigma(1) and sigma(t_min) (Karras et al. 2022, Eq. 5), mapped back to times exactly through
      the inverse of sigma(t) (Table 1 of the same paper), so only VPSDE and VESDE qualify.
    """
    if not callable(getattr(sde, "marginal", None)):
        raise TypeError(
            f"sde must have a marginal(t) method (VPSDE, VESDE), got {type(sde).__name__}"
        )
    steps = check_positive_int("steps", steps)
    if isinstance(t_min, bool) or not isinstance(t_min, int | float) or not 0 < t_min < 1:
        raise ValueError(f"t_min must be a number in (0, 1), got {t_min!r}")
    if kind == "uniform":
        t = torch.linspace(1.0, t_min, steps, dtype=torch.float64)
    elif kind == "karras":
        t = _karras_times(sde, steps, float(t_min), rho)
    else:
        raise ValueError(f"kind must be one of {GRID_KINDS}, got {kind!r}")
    t = torch.cat([t, torch.zeros(1, dtype=torch.float64)])
    scale, std = sde.marginal(t)
    return TimeGrid(t, scale, std)


def sigma_grid(sigmas) -> TimeGrid:
    """A grid in the variance-exploding view of Karras et al. (2022): scale 1, std = sigma, and
    the model time is sigma itself, so ``model(x, t)`` receives the noise level as ``t``.

    ``sigmas`` is a strictly decreasing 1-D tensor of positive noise levels (e.g. from
    :func:`~diffusion_core.schedules.karras_sigmas`); sigma = 0, the clean sample, is appended.
    """
    sigmas = check_float("sigmas", sigmas).to(torch.float64)
    if sigmas.ndim != 1 or sigmas.shape[0] < 1:
        raise ValueError(f"sigmas must be a non-empty 1-D tensor, got shape {tuple(sigmas.shape)}")
    if bool((sigmas <= 0).any()):
        raise ValueError("sigmas must be positive (the final sigma = 0 is appended)")
    t = torch.cat([sigmas, sigmas.new_zeros(1)])
    return TimeGrid(t, torch.ones_like(t), t.clone())


def flow_endpoint(
    model, x, scale: float, std: float, steps: int = 1000, sigma_min: float = 1e-4
) -> torch.Tensor:
    """The clean end (sigma = 0) of the probability-flow path through x, to high accuracy: a
    reference for pathwise errors (:func:`diffusion_core.metrics.rms_distance`).

    x lies at a point of the process with signal scale ``scale`` and noise std ``std``. In y =
    x / scale the ODE dy/dsigma = (y - D(y; sigma)) / sigma is the same for every schedule, so
    it is solved there, on a grid of its own: ``steps`` :func:`unipc` steps over the Karras
    noise levels from sigma = std / scale down to ``sigma_min`` (dense near the data, where the
    paths bend), then onto sigma = 0. ``model(y, sigma)`` is the denoiser D in that view (scale
    1, :func:`sigma_grid`: the noise level is its time). ``scale`` and ``std`` are Python
    numbers. Returns x0, in the dtype of x. Its error falls like steps^-3 down to a floor of
    order sigma_min^2 set by the first-order last step; the distance between two step counts
    bounds it.
    """
    check_float("x", x)
    scale = _check_real("scale", scale, 0.0)
    std = _check_real("std", std, 0.0)
    if scale == 0 or std == 0:
        raise ValueError(f"scale and std must be positive, got {scale} and {std}")
    sigmas = karras_sigmas(check_positive_int("steps", steps, minimum=2), sigma_min, std / scale)
    return unipc(model, x / scale, sigma_grid(sigmas))


def _karras_times(sde, steps: int, t_min: float, rho: float) -> torch.Tensor:
    if not isinstance(sde, VPSDE | VESDE):
        raise TypeError(
            "kind='karras' needs a VPSDE or VESDE (whose sigma(t) is inverted exactly), "
            f"got {type(sde).__name__}"
        )
    if steps == 1:
        return torch.ones(1, dtype=torch.float64)
    scale, std = sde.marginal(torch.tensor([1.0, t_min], dtype=torch.float64))
    sigma_max, sigma_min = (std / scale).tolist()
    sigma = karras_sigmas(steps, sigma_min, sigma_max, rho)
    if isinstance(sde, VESDE):
        # std(t)^2 = sigma_min^2 ((sigma_max / sigma_min)^(2 t) - 1)
        t = torch.log1p((sigma / sde.sigma_min) ** 2) / (
            2 * math.log(sde.sigma_max / sde.sigma_min)
        )
    else:
        # 1 + sigma^2 = 1 / alpha_bar(t) = exp(beta_min t + (beta_max - beta_min) t^2 / 2); the
        # root of that quadratic, written without cancellation.
        b0, b1, log_1p = sde.beta_min, sde.beta_max - sde.beta_min, torch.log1p(sigma**2)
        t = 2 * log_1p / (b0 + (b0**2 + 2 * b1 * log_1p).sqrt())
    t = t.clamp(t_min, 1.0)
    t[0], t[-1] = 1.0, t_min  # exact ends, as karras_sigmas pins its own
    return t


def prior_sample(grid: TimeGrid, shape, generator: torch.Generator | None = None) -> torch.Tensor:
    """The sampler's starting point x = std_0 * z, z ~ N(0, I) of the given shape (float64).

    It approximates the marginal N(scale_0 x0, std_0^2 I) at the first grid point by dropping
    the signal scale_0 x0, which is exact at zero terminal SNR and small otherwise (the DDPM
    linear schedule keeps scale_T = 0.006). ``generator``: None, one generator, or one per
    sample (row i of z from generator i). The device is the generators', else the grid's.
    """
    if not isinstance(grid, TimeGrid):
        raise TypeError(f"grid must be a TimeGrid, got {type(grid).__name__}")
    shape = check_shape("shape", shape)
    device = generator_device(generator, grid.std.device)
    z = standard_normal(shape, generator, torch.float64, device)
    return grid.std[0].to(device) * z


# ------------------------------------------------------------------------- shared parts


def _check_call(model, x, grid, generator, callback) -> torch.dtype:
    """Validate the shared arguments; return the dtype the model sees and the result has."""
    if not callable(model):
        raise TypeError(
            f"model must be callable as model(x, t) -> x0_hat, got {type(model).__name__}"
        )
    check_float("x", x)
    if x.ndim < 1:
        raise ValueError("x must have a batch axis, shape (n, ...), got shape ()")
    if not isinstance(grid, TimeGrid):
        raise TypeError(f"grid must be a TimeGrid, got {type(grid).__name__}")
    check_generator(generator, x.shape[0], x.device)
    if callback is not None and not callable(callback):
        raise TypeError("callback must be callable as callback(i, x, x0_hat) or None")
    return x.dtype


def _check_real(name: str, value, low: float, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must lie in [{low}, {high}], got {value}")
    return float(value)


def _check_finite_sigma(grid: TimeGrid, sampler: str) -> None:
    if float(grid.scale[0]) == 0.0:
        raise ValueError(
            f"{sampler} needs a finite sigma_0 = std_0 / scale_0, but the grid starts at zero "
            "SNR (scale_0 = 0): its first reverse-SDE step would remove noise of infinite "
            "variance. Use ddpm, ddim, heun, dpm_solver_pp_2m or unipc, or drop the first grid "
            "point."
        )


def _denoise(model, x: torch.Tensor, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x0_hat = model(x, t) in float64, with x handed over in the caller's dtype."""
    x0_hat = model(x.to(dtype), t)
    if not isinstance(x0_hat, torch.Tensor) or x0_hat.shape != x.shape:
        got = tuple(x0_hat.shape) if isinstance(x0_hat, torch.Tensor) else type(x0_hat).__name__
        raise ValueError(f"model(x, t) must return a tensor of shape {tuple(x.shape)}, got {got}")
    return x0_hat.to(torch.float64)


def _noise(x: torch.Tensor, generator, dtype: torch.dtype) -> torch.Tensor:
    """N(0, I) noise of x's shape on x's device, drawn in the caller's precision ``dtype`` (at
    least float32, see the module's docstring) and returned in float64."""
    precision = torch.promote_types(dtype, torch.float32)
    return standard_normal(x.shape, generator, precision, x.device).to(torch.float64)


def _affine(*terms) -> torch.Tensor:
    """sum_j c_j v_j over the pairs (c_j, v_j) with c_j != 0 (v_j may be None where c_j = 0):
    one multiply and then one fused multiply-add per term, into a new float64 tensor (the v_j
    are left alone). At least one c_j must be non-zero, and its v_j float64."""
    out = None
    for c, v in terms:
        if c != 0:
            out = c * v if out is None else out.add_(v, alpha=c)
    return out


def _posterior(grid: TimeGrid) -> list[tuple[float, float, float]]:
    """Per step (c_x0, c_xt, beta_tilde) of q(x_s | x_t, x0) = N(c_x0 x0 + c_xt x_t, beta_tilde).

    In y = x / scale the forward process adds independent noise, y_t = y_s + (sigma_t^2 -
    sigma_s^2)^(1/2) n, so y_s | y_t, x0 ~ N(x0 + r (y_t - x0), sigma_s^2 (1 - r)) with
    r = sigma_s^2 / sigma_t^2. In x = scale y: c_xt = scale_s r / scale_t = std_s^2 scale_t /
    (scale_s std_t^2), c_x0 = scale_s - c_xt scale_t, beta_tilde = std_s^2 (1 - r); finite at
    scale_t = 0. For adjacent DDPM steps these are Ho et al. (2020), Eq. 6-7.
    """
    a, s = grid.scale.tolist(), grid.std.tolist()
    coefficients = []
    for i in range(grid.steps):
        a_t, s_t, a_s, s_s = a[i], s[i], a[i + 1], s[i + 1]
        c_xt = s_s**2 * a_t / (a_s * s_t**2)
        r = (s_s * a_t / (a_s * s_t)) ** 2
        coefficients.append((a_s - c_xt * a_t, c_xt, max(s_s**2 * (1.0 - r), 0.0)))
    return coefficients


# ------------------------------------------------------------------------------ samplers


def ddpm(model, x, grid, generator=None, callback=None, variance="beta_tilde"):
    """Ancestral sampling: x_s ~ q(x_s | x_t, x0 = x0_hat) at each step (Ho et al. 2020, Alg. 2).

    The mean is the posterior mean of :func:`_posterior`; the variance is ``"beta_tilde"``, the
    posterior's own std_s^2 (1 - r) (Ho et al.'s sigma_t^2 = beta_tilde_t), or ``"beta"``, the
    larger variance std_t^2 - (scale_t std_s / scale_s)^2 of the forward step q(x_t | x_s),
    which is 1 - scale_t^2 / scale_s^2 = beta_t for adjacent VP steps (sigma_t^2 = beta_t). Both
    are the two extremes of Ho et al. (2020), Sec. 3.2. The last step onto std = 0 adds no noise.
    """
    dtype = _check_call(model, x, grid, generator, callback)
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
    a, s = grid.scale.tolist(), grid.std.tolist()
    posterior = _posterior(grid)
    noise_std = []
    for i, (_, _, beta_tilde) in enumerate(posterior):
        beta = s[i] ** 2 - (a[i] * s[i + 1] / a[i + 1]) ** 2
        noise_std.append(
            0.0 if s[i + 1] == 0 else math.sqrt(beta_tilde if variance == "beta_tilde" else beta)
        )
    times, x = grid.t.unbind(), x.to(torch.float64)
    for i, (c_x0, c_xt, _) in enumerate(posterior):
        x0_hat = _denoise(model, x, times[i], dtype)
        z = _noise(x, generator, dtype) if noise_std[i] > 0 else None
        x = _affine((c_x0, x0_hat), (c_xt, x), (noise_std[i], z))
        if callback is not None:
            callback(i, x, x0_hat)
    return x.to(dtype)


def ddim(model, x, grid, generator=None, callback=None, eta=0.0):
    """DDIM (Song, Meng & Ermon 2021, Eq. 12), in the library's notation:

        x_s = scale_s x0_hat + (std_s^2 - sigma_eta^2)^(1/2) eps_hat + sigma_eta z,
        eps_hat = (x_t - scale_t x0_hat) / std_t,

    with sigma_eta = eta beta_tilde^(1/2) (their Eq. 16). ``eta = 0`` is deterministic (and equal
    to :func:`euler`, to the last bit); ``eta = 1`` is :func:`ddpm` with the beta_tilde variance.
    The loop gathers the step by x and x0_hat, x_s = (c_eps / std_t) x_t + (scale_s - c_eps
    scale_t / std_t) x0_hat + sigma_eta z with c_eps = (std_s^2 - sigma_eta^2)^(1/2).
    """
    dtype = _check_call(model, x, grid, generator, callback)
    eta = _check_real("eta", eta, 0.0, 1.0)
    a, s = grid.scale.tolist(), grid.std.tolist()
    sigma_eta = [eta * math.sqrt(beta_tilde) for _, _, beta_tilde in _posterior(grid)]
    c_eps = [
        s[i + 1] if sigma_eta[i] == 0 else math.sqrt(max(s[i + 1] ** 2 - sigma_eta[i] ** 2, 0.0))
        for i in range(grid.steps)
    ]
    c_x = [c_eps[i] / s[i] for i in range(grid.steps)]
    c_d = [a[i + 1] - a[i] * c_eps[i] / s[i] for i in range(grid.steps)]
    times, x = grid.t.unbind(), x.to(torch.float64)
    for i in range(grid.steps):
        x0_hat = _denoise(model, x, times[i], dtype)
        z = _noise(x, generator, dtype) if sigma_eta[i] > 0 else None
        x = _affine((c_d[i], x0_hat), (c_x[i], x), (sigma_eta[i], z))
        if callback is not None:
            callback(i, x, x0_hat)
    return x.to(dtype)


def _euler_coefficients(grid: TimeGrid) -> list[tuple[float, float]]:
    """Per step (c_x, c_d) with x_next = c_x x + c_d D: Euler's step in sigma written in x.

    With y = x / scale, d = (y - D) / sigma and y' = y + (sigma' - sigma) d = D + (sigma' / sigma)
    (y - D), multiplying by scale' gives x' = (std' / std) x + (scale' - scale std' / std) D,
    which is finite at sigma = inf.
    """
    a, s = grid.scale.tolist(), grid.std.tolist()
    return [(s[i + 1] / s[i], a[i + 1] - a[i] * s[i + 1] / s[i]) for i in range(grid.steps)]


def euler(model, x, grid, generator=None, callback=None):
    """Euler's method on the probability-flow ODE dy/dsigma = (y - D(y, sigma)) / sigma, y = x /
    scale (Karras et al. 2022, Eq. 4 and Alg. 1 without its second-order correction).

    Identical to :func:`ddim` with eta = 0 (Karras et al. 2022, Sec. 3; Song et al. 2021a).
    """
    dtype = _check_call(model, x, grid, generator, callback)
    steps = _euler_coefficients(grid)
    times, x = grid.t.unbind(), x.to(torch.float64)
    for i, (c_x, c_d) in enumerate(steps):
        x0_hat = _denoise(model, x, times[i], dtype)
        x = _affine((c_d, x0_hat), (c_x, x))
        if callback is not None:
            callback(i, x, x0_hat)
    return x.to(dtype)


def heun(model, x, grid, generator=None, callback=None):
    """Heun's second-order method on the probability-flow ODE (Karras et al. 2022, Alg. 1, no
    churn): an Euler step to sigma', then the average of the slopes d_cur at sigma and d_prime
    at sigma'. Two model calls per step, except where the step is Euler's: the last step onto
    sigma' = 0 (Alg. 1, line 8) and a first step from sigma = inf (zero terminal SNR).

    In y = x / scale, with D = x0_hat at (y, sigma) and D' at the Euler point y_E = D + (sigma' /
    sigma) (y - D), the slopes are d_cur = (y - D) / sigma and d_prime = (y_E - D') / sigma' =
    d_cur + (D - D') / sigma', so the averaged step is y' = y + (sigma' - sigma) (d_cur + d_prime)
    / 2 = y_E + (sigma' - sigma) / (2 sigma') (D - D'). In x:

        x' = x_E + r (D - D'),  r = scale' (sigma' - sigma) / (2 sigma'),

    Euler's step plus a correction by the change of the denoiser's output along it.
    """
    dtype = _check_call(model, x, grid, generator, callback)
    a, sigma = grid.scale.tolist(), grid.sigma.tolist()
    steps = _euler_coefficients(grid)
    r = [  # 0 where the step is Euler's
        a[i + 1] * (sigma[i + 1] - sigma[i]) / (2 * sigma[i + 1])
        if math.isfinite(sigma[i]) and sigma[i + 1] > 0
        else 0.0
        for i in range(grid.steps)
    ]
    times, x = grid.t.unbind(), x.to(torch.float64)
    for i, (c_x, c_d) in enumerate(steps):
        x0_hat = _denoise(model, x, times[i], dtype)
        x_next = _affine((c_d, x0_hat), (c_x, x))
        if r[i] != 0:
            x0_next = _denoise(model, x_next, times[i + 1], dtype)
            x_next = torch.add(x_next, x0_hat - x0_next, alpha=r[i])
        x = x_next
        if callback is not None:
            callback(i, x, x0_hat)
    return x.to(dtype)


def _reverse_sde_step(y, x0_hat, sigma, sigma_next, generator, dtype):
    """One Euler-Maruyama step of the reverse SDE in y = x / scale from sigma to sigma_next:
    y' = y + (sigma^2 - sigma'^2) score + (sigma^2 - sigma'^2)^(1/2) z, score = (x0_hat - y) /
    sigma^2; onto sigma' = 0 it returns x0_hat (the final-step policy)."""
    if sigma_next == 0:
        return x0_hat
    variance = sigma**2 - sigma_next**2
    score = (x0_hat - y) / sigma**2
    return y + variance * score + math.sqrt(variance) * _noise(y, generator, dtype)


def euler_maruyama(model, x, grid, generator=None, callback=None):
    """Euler-Maruyama on the reverse-time SDE (Anderson 1982; Song et al. 2021, Eq. 6).

    In y = x / scale the forward process is dy = (d sigma^2 / dt)^(1/2) dw for every schedule,
    whose reversal is dy = -(d sigma^2 / dt) score dt + (d sigma^2 / dt)^(1/2) dw_bar; one step
    from sigma to sigma' is Song et al.'s reverse-diffusion predictor (their Eq. 47). Needs a
    finite sigma_0 (raises ``ValueError`` at zero terminal SNR). It is
    :func:`predictor_corrector` without corrector steps, and runs that loop.
    """
    return _reverse_sde_sampler("euler_maruyama", model, x, grid, generator, callback, 0, 0.0)


def predictor_corrector(model, x, grid, generator=None, callback=None, corrector_steps=1, snr=0.16):
    """Reverse-diffusion predictor plus Langevin corrector (Song et al. 2021, Alg. 4 and 5).

    After each predictor step (:func:`euler_maruyama`) to a noise level sigma' > 0, run
    ``corrector_steps`` Langevin steps y <- y + e g + (2 e)^(1/2) z at sigma', with score
    g = (D(x, t') - y) / sigma'^2 and step size e = 2 (snr |z| / |g|)^2, so that the ratio of
    the drift to the noise in each step is the target ``snr``. The norms |z| and |g| are
    root-mean-square over the batch (Song et al.'s code also averages them over the batch):
    the per-sample norms of a low-dimensional vector do not concentrate, and a sample that sits
    where the score is small would take a huge step. In y = x / scale this one rule serves VE
    and VP alike (a Langevin step with this step size is unchanged by rescaling x; Alg. 5's
    factor alpha_i ~ 1 is left out). Needs a finite sigma_0. Because the step size is set by
    the whole batch, a sample's path depends on the batch it is drawn in even with one generator
    per sample, unlike the other stochastic samplers.
    """
    corrector_steps = check_positive_int("corrector_steps", corrector_steps, minimum=0)
    snr = _check_real("snr", snr, 0.0)
    return _reverse_sde_sampler(
        "predictor_corrector", model, x, grid, generator, callback, corrector_steps, snr
    )


def _reverse_sde_sampler(name, model, x, grid, generator, callback, corrector_steps, snr):
    """The loop of :func:`predictor_corrector` (and, with no corrector steps, of
    :func:`euler_maruyama`); ``name`` is the sampler the error messages speak of."""
    dtype = _check_call(model, x, grid, generator, callback)
    _check_finite_sigma(grid, name)
    a, sigma = grid.scale.tolist(), grid.sigma.tolist()
    times, x = grid.t.unbind(), x.to(torch.float64)
    for i in range(grid.steps):
        x0_hat = _denoise(model, x, times[i], dtype)
        y = _reverse_sde_step(x / a[i], x0_hat, sigma[i], sigma[i + 1], generator, dtype)
        for _ in range(corrector_steps if sigma[i + 1] > 0 else 0):
            g = (_denoise(model, a[i + 1] * y, times[i + 1], dtype) - y) / sigma[i + 1] ** 2
            z = _noise(y, generator, dtype)
            e = 2 * (snr * _rms_norm(z) / _rms_norm(g)) ** 2
            y = y + e * g + (2 * e).sqrt() * z
        x = a[i + 1] * y
        if callback is not None:
            callback(i, x, x0_hat)
    return x.to(dtype)


def _rms_norm(v: torch.Tensor) -> torch.Tensor:
    """Root-mean-square over the batch of the Euclidean norm of each sample (a 0-d tensor)."""
    return v.reshape(v.shape[0], -1).square().sum(dim=1).mean().sqrt()


def dpm_solver_pp_2m(model, x, grid, generator=None, callback=None):
    """DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2): a multistep solver of the probability-flow
    ODE in lambda = log(scale / std), with the data prediction D integrated exactly against the
    linear part:

        x_i = (std_i / std_{i-1}) x_{i-1} - scale_i (exp(-h_i) - 1) D_i,
        D_i = (1 + 1 / (2 r_i)) x0_hat_{i-1} - 1 / (2 r_i) x0_hat_{i-2},

    with h_i = lambda_i - lambda_{i-1} and r_i = h_{i-1} / h_i.

    First order (D_i = x0_hat_{i-1}, which is DDIM) on the first step, after a step of infinite
    h (from zero SNR) and on the last step onto std = 0.
    """
    dtype = _check_call(model, x, grid, generator, callback)
    steps = _multistep_coefficients(grid)
    times, x, x0_prev = grid.t.unbind(), x.to(torch.float64), None
    for i, (c_x, c_0, c_1) in enumerate(steps):
        x0_hat = _denoise(model, x, times[i], dtype)
        x = _affine((c_x, x), (c_0, x0_hat), (c_1, x0_prev))
        x0_prev = x0_hat
        if callback is not None:
            callback(i, x, x0_hat)
    return x.to(dtype)


def _multistep_coefficients(grid: TimeGrid) -> list[tuple[float, float, float]]:
    """Per step i, (c_x, c_0, c_1) with x_{i+1} = c_x x_i + c_0 x0_hat_i + c_1 x0_hat_{i-1}: the
    step of :func:`dpm_solver_pp_2m`, c_x = std_{i+1} / std_i, c_0 = -scale_{i+1} expm1(-h_i)
    (1 + w_i), c_1 = scale_{i+1} expm1(-h_i) w_i with w_i = 1 / (2 r_i) = h_i / (2 h_{i-1}) on
    second-order steps and 0 on first-order ones."""
    s, a, lam = grid.std.tolist(), grid.scale.tolist(), grid.log_snr.tolist()
    h = [lam[i + 1] - lam[i] for i in range(grid.steps)]
    steps = []
    for i in range(grid.steps):
        w = h[i] / (2 * h[i - 1]) if _second_order_step(i, h, s) else 0.0
        c_d = -a[i + 1] * math.expm1(-h[i])  # the first-order (DDIM) coefficient of x0_hat
        steps.append((s[i + 1] / s[i], c_d * (1 + w), -c_d * w))
    return steps


def _second_order_step(i: int, h: list[float], s: list[float]) -> bool:
    """Whether multistep step i uses the previous output: not on the first step, after a step of
    infinite h (from zero SNR) or on the last step onto std = 0."""
    return i > 0 and math.isfinite(h[i - 1]) and s[i + 1] > 0


def unipc(model, x, grid, generator=None, callback=None):
    """UniPC (Zhao et al. 2023) of order 2 with B(h) = e^h - 1 ("bh2"), on the data prediction:
    the predictor UniP-2 is DPM-Solver++(2M) (:func:`dpm_solver_pp_2m`, the same step), and the
    corrector UniC refines each new point with the model evaluation made there, which the next
    step needs anyway. No extra evaluations, and one order more: 3 against 2 (Zhao et al., Theorem
    3.3; the library's tests measure both on a flow known in closed form).

    Step i from x_i to x_{i+1} (h = lambda_{i+1} - lambda_i, m_j = x0_hat_j): after the model has
    been evaluated at the predicted x_{i+1}, giving m_{i+1}, the corrector recomputes

        x_{i+1} = (std_{i+1} / std_i) x_i
                  - scale_{i+1} expm1(-h) [m_i + rho_1 D_1 + rho_c (m_{i+1} - m_i)],

    with D_1 = (m_{i-1} - m_i) / r, r = (lambda_{i-1} - lambda_i) / h, and (rho_1, rho_c) solving
    rho_1 + rho_c = b_1, r rho_1 + rho_c = b_2 where b_k = k! phi_{k+1}(-h) / phi_1(-h) with
    phi_1(u) = expm1(u), phi_{k+1}(u) = phi_k(u) / u - 1 / k! (Zhao et al., Alg. 2 and Eq. 14).
    After a first-order predictor step (the first) the corrector is the trapezoid rho_c = 1/2
    (their choice for UniC-1). The next step starts from the corrected point but reuses the
    m_{i+1} of the predicted one. Neither the last point (std = 0, no model call there) nor a
    point reached from zero SNR (infinite h) is corrected. ``callback(i, x, x0_hat)`` receives
    the corrected x_{i+1}, so it runs one model call late.
    """
    dtype = _check_call(model, x, grid, generator, callback)
    predictor, corrector = _multistep_coefficients(grid), _unic_coefficients(grid)
    times, x = grid.t.unbind(), x.to(torch.float64)
    x_start = x0_prev = x0_prev2 = None  # the point the last step started from, and its m's
    for i in range(grid.steps):
        x0_hat = _denoise(model, x, times[i], dtype)
        if i > 0:
            c_x, c_0, c_1, c_new = corrector[i - 1]
            if c_new != 0:
                x = _affine((c_x, x_start), (c_0, x0_prev), (c_1, x0_prev2), (c_new, x0_hat))
            if callback is not None:
                callback(i - 1, x, x0_prev)
        c_x, c_0, c_1 = predictor[i]
        x_start, x = x, _affine((c_x, x), (c_0, x0_hat), (c_1, x0_prev))
        x0_prev2, x0_prev = x0_prev, x0_hat
    if callback is not None:
        callback(grid.steps - 1, x, x0_prev)
    return x.to(dtype)


def _unic_coefficients(grid: TimeGrid) -> list[tuple[float, float, float, float]]:
    """Per step i, the corrector (c_x, c_0, c_1, c_new) of :func:`unipc`: x_{i+1} = c_x x_i +
    c_0 m_i + c_1 m_{i-1} + c_new m_{i+1}; all zero where the point is not corrected."""
    s, a, lam = grid.std.tolist(), grid.scale.tolist(), grid.log_snr.tolist()
    h = [lam[i + 1] - lam[i] for i in range(grid.steps)]
    steps = []
    for i in range(grid.steps):
        if s[i + 1] == 0 or not math.isfinite(h[i]):
            steps.append((0.0, 0.0, 0.0, 0.0))
            continue
        if _second_order_step(i, h, s):
            phi_1, (phi_2, phi_3) = math.expm1(-h[i]), _phi_2_3(-h[i])
            b_1, b_2 = phi_2 / phi_1, 2 * phi_3 / phi_1
            r = -h[i - 1] / h[i]
            rho_1 = (b_1 - b_2) / (1 - r)
            rho_c = b_1 - rho_1
            c_1 = rho_1 / r  # m_{i-1} enters through D_1 = (m_{i-1} - m_i) / r
        else:
            rho_c, c_1 = 0.5, 0.0
        c_d = -a[i + 1] * math.expm1(-h[i])
        steps.append((s[i + 1] / s[i], c_d * (1 - c_1 - rho_c), c_d * c_1, c_d * rho_c))
    return steps


def _phi_2_3(u: float) -> tuple[float, float]:
    """phi_2(u) = (e^u - 1 - u) / u and phi_3(u) = (e^u - 1 - u - u^2 / 2) / u^2 of :func:`unipc`.

    Where |u| < 1e-3 the closed forms lose digits to cancellation (about 1e-16 / u^2 relative),
    so there they are summed as Taylor series, whose first neglected terms are below 1e-15
    relative.
    """
    if abs(u) < 1e-3:
        return (
            u / 2 + u**2 / 6 + u**3 / 24 + u**4 / 120,
            u / 6 + u**2 / 24 + u**3 / 120 + u**4 / 720,
        )
    phi_2 = math.expm1(u) / u - 1
    return phi_2, phi_2 / u - 0.5


SAMPLERS: dict[str, Callable] = {
    "ddpm": ddpm,
    "ddim": ddim,
    "euler": euler,
    "heun": heun,
    "euler_maruyama": euler_maruyama,
    "predictor_corrector": predictor_corrector,
    "dpm_solver_pp_2m": dpm_solver_pp_2m,
    "unipc": unipc,
}


# ------------------------------------------------------------------------------ guidance


def classifier_free_guidance(model: Callable, weight: float, label, null_label: int) -> Callable:
    """Classifier-free guidance (Ho & Salimans 2022) around a class-conditional model.

    ``model(x, t, labels)`` is conditional on integer labels (n,), ``null_label`` meaning "no
    condition" (a network trained with label dropout, or :func:`exact_conditional_denoiser`).
    The guided prediction with guidance weight w is

        out(x, t) = (1 - w) model(x, t, null) + w model(x, t, label)
                  = out_uncond + w (out_cond - out_uncond).

    w = 0 is the unconditional model, w = 1 the conditional one (both exactly: only that one is
    evaluated), w > 1 extrapolates away from the unconditional prediction. This w is the
    ``guidance_scale`` of common libraries; Ho & Salimans (2022, Eq. 6) write the same rule as
    (1 + w') eps_cond - w' eps_uncond, so their w' is w - 1.

    Which prediction it is applied to does not matter. At fixed (x, t) the x0-prediction, the
    eps-prediction, v and the score are affine functions of one another whose coefficients do
    not depend on the label (x0 = (x - std eps) / scale, score = -eps / std), and the two
    weights sum to one, so guiding one guides them all the same way. For the score it reads

        grad log p_t(x) + w [grad log p_t(x | c) - grad log p_t(x)]
            = grad log p_t(x) + w grad log p_t(c | x),

    the score of p_t(x) p_t(c | x)^w: an implicit classifier p_t(c | x), raised to the power w.

    ``label``: an int, or an integer tensor with one label per sample. Returns
    ``guided(x, t)`` with the signature every sampler takes (wrap it in
    :func:`diffusion_core.parameterization.as_denoiser` if ``model`` predicts eps or v). When
    both predictions are needed they come from one call on a batch of 2n.
    """
    if not callable(model):
        raise TypeError(
            f"model must be callable as model(x, t, labels), got {type(model).__name__}"
        )
    weight = _check_real("weight", weight, -math.inf)
    null_label = check_positive_int("null_label", null_label, minimum=0)

    def guided(x: torch.Tensor, t) -> torch.Tensor:
        n = x.shape[0]
        labels = _labels(label, n, x.device)
        null = torch.full_like(labels, null_label)
        if weight == 0:
            return model(x, t, null)
        if weight == 1:
            return model(x, t, labels)
        both_t = t if not isinstance(t, torch.Tensor) or t.numel() == 1 else torch.cat([t, t])
        cond, uncond = model(torch.cat([x, x]), both_t, torch.cat([labels, null])).split(n)
        return (1 - weight) * uncond + weight * cond

    return guided


def _labels(label, n: int, device) -> torch.Tensor:
    """One int64 label per sample, from an int or an integer tensor of one or n labels."""
    if isinstance(label, bool) or not isinstance(label, int | torch.Tensor):
        raise TypeError(f"label must be an int or an integer tensor, got {type(label).__name__}")
    labels = torch.as_tensor(label, device=device)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"label must hold integers, got dtype {labels.dtype}")
    if labels.numel() == 1:
        return labels.reshape(1).expand(n).to(torch.int64)
    if labels.shape != (n,):
        raise ValueError(f"label must be one int or have shape ({n},), got {tuple(labels.shape)}")
    return labels.to(torch.int64)


def exact_conditional_denoiser(mixture: GaussianMixture, process) -> Callable:
    """The Bayes-optimal class-conditional denoiser of Gaussian-mixture data, model(x, t, labels).

    The class of a sample is its mixture component: label k in 0..K-1 gives E[x0 | x_t = x,
    k], the denoiser of component k alone (the conditional score is the component's score),
    and label K = ``mixture.n_components``, the null label, gives E[x0 | x_t = x] of the whole
    mixture. With :func:`classifier_free_guidance` it gives exact guided denoisers, to study
    guidance without any learning error.
    """
    if not isinstance(mixture, GaussianMixture):
        raise TypeError(f"mixture must be a GaussianMixture, got {type(mixture).__name__}")
    if not callable(getattr(process, "marginal", None)):
        raise TypeError(
            f"process must have a marginal(t) -> (scale, std) method, got {type(process).__name__}"
        )
    components = [
        GaussianMixture(
            torch.ones(1, dtype=torch.float64), mixture.means[k : k + 1], mixture.covs[k : k + 1]
        )
        for k in range(mixture.n_components)
    ]

    def model(x: torch.Tensor, t, labels: torch.Tensor) -> torch.Tensor:
        scale, std = process.marginal(t)
        labels = _labels(labels, x.shape[0], x.device)
        candidates = torch.stack(
            [c.x0_pred(x, scale, std) for c in components] + [mixture.x0_pred(x, scale, std)]
        )  # (K + 1, n, d)
        return candidates[labels, torch.arange(x.shape[0], device=x.device)]

    return model
