"""Noise schedules: how much signal survives, and how much noise is added, at each time.

One discrete object, :class:`Schedule`, holds the per-step variances ``betas`` of the
variance-preserving chain of Ho et al. (2020) and derives everything else from them. Time is an
integer ``t = 0..T`` with ``t = 0`` the clean data, so ``alpha_bars[t]`` needs no off-by-one:

    alpha_t = 1 - beta_t,    alpha_bar_t = prod_{s <= t} alpha_s,    alpha_bar_0 = 1,
    x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps.

Two continuous-time processes (:class:`VPSDE`, :class:`VESDE`) follow Song et al. (2021), with
time a real number in [0, 1]. Both kinds share ``marginal(t) -> (scale, std)`` meaning
``x_t = scale * x_0 + std * eps``, the convention of the whole library.

Conversions between alpha-bar, the log signal-to-noise ratio lambda = log(alpha_bar / (1 -
alpha_bar)) and the variance-exploding (EDM) noise level sigma = sqrt((1 - alpha_bar) / alpha_bar)
go both ways. Timestep spacings choose k of the T steps for a k-step sampler.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from diffusion_core._validation import as_tensor, check_positive_int, check_timesteps

SPACINGS = ("leading", "trailing", "linspace")


@dataclass(frozen=True)
class Schedule:
    """A discrete variance-preserving noise schedule, defined by its ``T`` step variances.

    ``betas[t - 1]`` is beta_t for t = 1..T. Every beta must lie in (0, 1); the last one may be
    exactly 1, which is a zero-terminal-SNR schedule (alpha_bar_T = 0, pure noise at t = T).
    Tables indexed by time (``alpha_bars``, ``snr``, ``log_snr``, ``sigmas``) have ``T + 1``
    entries, entry ``t`` for time t, entry 0 being the clean data.
    """

    betas: torch.Tensor

    def __post_init__(self):
        betas = self.betas
        if not isinstance(betas, torch.Tensor):
            raise TypeError(f"betas must be a 1-D torch.Tensor, got {type(betas).__name__}")
        if betas.ndim != 1 or betas.numel() < 1:
            raise ValueError(
                f"betas must be a non-empty 1-D tensor, got shape {tuple(betas.shape)}"
            )
        if not betas.is_floating_point():
            raise TypeError(f"betas must be a floating-point tensor, got dtype {betas.dtype}")
        betas = betas.detach().to(torch.float64)
        if not bool(torch.isfinite(betas).all()):
            raise ValueError("betas must be finite, but it contains NaN or infinity")
        inner_ok = bool(((betas[:-1] > 0) & (betas[:-1] < 1)).all())
        last_ok = bool((betas[-1] > 0) & (betas[-1] <= 1))
        if not (inner_ok and last_ok):
            raise ValueError(
                "betas must lie in the open interval (0, 1) (the last may equal 1 for a "
                f"zero-terminal-SNR schedule), got values in {betas.min():.3g}..{betas.max():.3g}"
            )
        object.__setattr__(self, "betas", betas)

    @property
    def T(self) -> int:
        """Number of diffusion steps."""
        return self.betas.shape[0]

    @property
    def alphas(self) -> torch.Tensor:
        """alpha_t = 1 - beta_t for t = 1..T (length T)."""
        return 1.0 - self.betas

    @property
    def alpha_bars(self) -> torch.Tensor:
        """alpha_bar_t = prod_{s <= t} alpha_s for t = 0..T (length T + 1, entry 0 is 1)."""
        return torch.cat([self.betas.new_ones(1), torch.cumprod(self.alphas, 0)])

    @property
    def snr(self) -> torch.Tensor:
        """SNR_t = alpha_bar_t / (1 - alpha_bar_t) for t = 0..T (infinite at t = 0)."""
        return alpha_bar_to_snr(self.alpha_bars)

    @property
    def log_snr(self) -> torch.Tensor:
        """lambda_t = log SNR_t for t = 0..T."""
        return alpha_bar_to_log_snr(self.alpha_bars)

    @property
    def sigmas(self) -> torch.Tensor:
        """VE/EDM noise level sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) for t = 0..T."""
        return alpha_bar_to_sigma(self.alpha_bars)

    @property
    def terminal_snr(self) -> float:
        """SNR at t = T: how much data survives in the 'pure noise' a sampler starts from."""
        return float(self.snr[-1])

    def marginal(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, std) = (sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t)) at integer times ``t``.

        Ho et al. (2020), Eq. 4: q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I).
        """
        t = check_timesteps("t", t, self.T)
        alpha_bar = self.alpha_bars[t]
        return alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt()

    @classmethod
    def from_alpha_bars(cls, alpha_bars) -> Schedule:
        """The schedule whose alpha_bar_1..alpha_bar_T are given: beta_t = 1 - a_t / a_{t-1}."""
        alpha_bars = as_tensor("alpha_bars", alpha_bars, torch.float64)
        if alpha_bars.ndim != 1:
            raise ValueError(f"alpha_bars must be 1-D, got shape {tuple(alpha_bars.shape)}")
        previous = torch.cat([alpha_bars.new_ones(1), alpha_bars[:-1]])
        return cls(1.0 - alpha_bars / previous)


# --- discrete schedules ---------------------------------------------------------------------


def linear_schedule(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
    """Betas evenly spaced from ``beta_start`` to ``beta_end`` (Ho et al. 2020, Sec. 4)."""
    check_positive_int("T", T)
    return Schedule(torch.linspace(beta_start, beta_end, T, dtype=torch.float64))


def scaled_linear_schedule(
    T: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
) -> Schedule:
    """Square roots of the betas evenly spaced: Stable Diffusion's schedule (Rombach et al. 2022).

    Its terminal SNR is about 0.0047, so its "pure noise" still holds sqrt(alpha_bar_T) = 0.068
    of the data, and sigma_T = 14.61 is the ``init_noise_sigma`` of its Euler-type samplers.
    """
    check_positive_int("T", T)
    root = torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), T, dtype=torch.float64)
    return Schedule(root**2)


def betas_from_alpha_bar_fn(
    alpha_bar_fn: Callable[[torch.Tensor], torch.Tensor], T: int, max_beta: float = 0.999
) -> Schedule:
    """Discretise a continuous alpha_bar(u), u in [0, 1], into T steps.

    beta_t = min(1 - alpha_bar(t / T) / alpha_bar((t - 1) / T), max_beta). The clip keeps the
    last steps, where alpha_bar reaches 0, from having beta = 1 (Nichol & Dhariwal 2021, Sec. 3.2).
    """
    check_positive_int("T", T)
    u = torch.linspace(0.0, 1.0, T + 1, dtype=torch.float64)
    alpha_bar = alpha_bar_fn(u)
    betas = 1.0 - alpha_bar[1:] / alpha_bar[:-1]
    return Schedule(betas.clamp(max=max_beta))


def cosine_schedule(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Schedule:
    """alpha_bar(u) = f(u) / f(0), f(u) = cos^2(pi/2 (u + s) / (1 + s)) (Nichol & Dhariwal 2021)."""

    def alpha_bar(u):
        return (
            torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
            / math.cos(s / (1 + s) * math.pi / 2) ** 2
        )

    return betas_from_alpha_bar_fn(alpha_bar, T, max_beta)


def sigmoid_schedule(
    T: int = 1000, start: float = -3.0, end: float = 3.0, tau: float = 1.0, max_beta: float = 0.999
) -> Schedule:
    """alpha_bar(u) = (v_end - sigmoid(((end - start) u + start) / tau)) / (v_end - v_start),
    v_start = sigmoid(start / tau), v_end = sigmoid(end / tau) (Jabri et al. 2023; Chen 2023,
    Alg. 1). A larger ``tau`` spreads the fall of alpha_bar over more of the chain.
    """
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    if not start < end:
        raise ValueError(f"start must be smaller than end, got start={start}, end={end}")
    v_start, v_end = torch.sigmoid(torch.tensor([start / tau, end / tau], dtype=torch.float64))

    def alpha_bar(u):
        return (v_end - torch.sigmoid(((end - start) * u + start) / tau)) / (v_end - v_start)

    return betas_from_alpha_bar_fn(alpha_bar, T, max_beta)


def rescale_zero_terminal_snr(schedule: Schedule) -> Schedule:
    """Shift and scale sqrt(alpha_bar) so that alpha_bar_T = 0 and alpha_bar_1 is unchanged.

    Lin et al. (2024), Algorithm 1: with r_t = sqrt(alpha_bar_t),
    r_t <- (r_t - r_T) * r_1 / (r_1 - r_T). The last beta becomes exactly 1: the sampler then
    starts from noise that carries no trace of the data, which eps-prediction cannot handle at
    t = T (use v- or x0-prediction there).
    """
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a Schedule, got {type(schedule).__name__}")
    root = schedule.alpha_bars[1:].sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)
    return Schedule.from_alpha_bars(root**2)


# --- continuous-time processes --------------------------------------------------------------


def _continuous_time(t) -> torch.Tensor:
    t = as_tensor("t", t, torch.float64)
    if bool(((t < 0) | (t > 1) | ~torch.isfinite(t)).any()):
        raise ValueError("t must lie in [0, 1] for a continuous-time process")
    return t


@dataclass(frozen=True)
class VPSDE:
    """Variance-preserving SDE dx = -beta(t)/2 x dt + sqrt(beta(t)) dw, t in [0, 1].

    beta(t) = beta_min + t (beta_max - beta_min) (Song et al. 2021, Eq. 11). It is the limit of
    the DDPM chain with T steps and betas beta(t)/T: see :meth:`discretize`.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0

    def __post_init__(self):
        if not 0 < self.beta_min < self.beta_max:
            raise ValueError(
                f"need 0 < beta_min < beta_max, got beta_min={self.beta_min}, "
                f"beta_max={self.beta_max}"
            )

    def beta(self, t) -> torch.Tensor:
        return self.beta_min + _continuous_time(t) * (self.beta_max - self.beta_min)

    def log_alpha_bar(self, t) -> torch.Tensor:
        """log alpha_bar(t) = -int_0^t beta(s) ds = -(beta_min t + (beta_max - beta_min) t^2/2)."""
        t = _continuous_time(t)
        return -(self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2)

    def marginal(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, std) of x_t given x_0: (exp(log_alpha_bar / 2), sqrt(1 - alpha_bar))."""
        log_alpha_bar = self.log_alpha_bar(t)
        return (0.5 * log_alpha_bar).exp(), (-torch.expm1(log_alpha_bar)).sqrt()

    def drift(self, x: torch.Tensor, t) -> torch.Tensor:
        return -0.5 * self.beta(t).to(x.dtype) * x

    def diffusion(self, t) -> torch.Tensor:
        return self.beta(t).sqrt()

    def prior_sample(self, shape, generator: torch.Generator | None = None) -> torch.Tensor:
        """The prior N(0, I) that x_1 approaches."""
        return torch.randn(shape, generator=generator, dtype=torch.float64)

    def discretize(self, T: int = 1000) -> Schedule:
        """The DDPM chain with beta_t = beta((t - 1/2) / T) / T: linear betas, as in DDPM."""
        check_positive_int("T", T)
        midpoints = (torch.arange(1, T + 1, dtype=torch.float64) - 0.5) / T
        return Schedule(self.beta(midpoints) / T)


@dataclass(frozen=True)
class VESDE:
    """Variance-exploding SDE dx = sqrt(d sigma^2(t) / dt) dw with sigma(t) = sigma_min
    (sigma_max / sigma_min)^t, t in [0, 1] (Song et al. 2021, Eq. 9).

    The data are never scaled down; noise is added until it swamps them, so the prior must be
    N(0, sigma_max^2 I), not N(0, I).
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0

    def __post_init__(self):
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(
                f"need 0 < sigma_min < sigma_max, got sigma_min={self.sigma_min}, "
                f"sigma_max={self.sigma_max}"
            )

    def sigma(self, t) -> torch.Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** _continuous_time(t)

    def marginal(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, std) = (1, sqrt(sigma(t)^2 - sigma_min^2)): exact for x(0) = x_0."""
        sigma = self.sigma(t)
        return torch.ones_like(sigma), (sigma**2 - self.sigma_min**2).sqrt()

    def drift(self, x: torch.Tensor, t) -> torch.Tensor:
        return torch.zeros_like(x)

    def diffusion(self, t) -> torch.Tensor:
        """g(t) = sigma(t) sqrt(2 log(sigma_max / sigma_min)), so that g^2 = d sigma^2 / dt."""
        return self.sigma(t) * math.sqrt(2 * math.log(self.sigma_max / self.sigma_min))

    def prior_sample(self, shape, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.sigma_max * torch.randn(shape, generator=generator, dtype=torch.float64)


# --- conversions ----------------------------------------------------------------------------


def _alpha_bar(alpha_bar) -> torch.Tensor:
    alpha_bar = as_tensor("alpha_bar", alpha_bar, torch.float64)
    if bool(((alpha_bar < 0) | (alpha_bar > 1) | torch.isnan(alpha_bar)).any()):
        raise ValueError("alpha_bar must lie in [0, 1]")
    return alpha_bar


def alpha_bar_to_snr(alpha_bar) -> torch.Tensor:
    """SNR = alpha_bar / (1 - alpha_bar); 0 at alpha_bar = 0, infinite at alpha_bar = 1."""
    alpha_bar = _alpha_bar(alpha_bar)
    return alpha_bar / (1.0 - alpha_bar)


def alpha_bar_to_log_snr(alpha_bar) -> torch.Tensor:
    """lambda = log(alpha_bar) - log(1 - alpha_bar), with log1p for accuracy near 0 and 1."""
    alpha_bar = _alpha_bar(alpha_bar)
    return alpha_bar.log() - torch.log1p(-alpha_bar)


def log_snr_to_alpha_bar(log_snr) -> torch.Tensor:
    """alpha_bar = sigmoid(lambda), the inverse of :func:`alpha_bar_to_log_snr`."""
    log_snr = as_tensor("log_snr", log_snr, torch.float64)
    if bool(torch.isnan(log_snr).any()):
        raise ValueError("log_snr must not be NaN")
    return torch.sigmoid(log_snr)


def alpha_bar_to_sigma(alpha_bar) -> torch.Tensor:
    """sigma = sqrt((1 - alpha_bar) / alpha_bar): VP state over its scale is x_0 + sigma eps.

    Karras et al. (2022), Table 1. Infinite at alpha_bar = 0 (zero terminal SNR).
    """
    alpha_bar = _alpha_bar(alpha_bar)
    return ((1.0 - alpha_bar) / alpha_bar).sqrt()


def sigma_to_alpha_bar(sigma) -> torch.Tensor:
    """alpha_bar = 1 / (1 + sigma^2), the inverse of :func:`alpha_bar_to_sigma`."""
    sigma = as_tensor("sigma", sigma, torch.float64)
    if bool(((sigma < 0) | torch.isnan(sigma)).any()):
        raise ValueError("sigma must be non-negative")
    return 1.0 / (1.0 + sigma**2)


def log_snr_to_sigma(log_snr) -> torch.Tensor:
    """sigma = exp(-lambda / 2), since SNR = 1 / sigma^2."""
    log_snr = as_tensor("log_snr", log_snr, torch.float64)
    if bool(torch.isnan(log_snr).any()):
        raise ValueError("log_snr must not be NaN")
    return torch.exp(-0.5 * log_snr)


def sigma_to_log_snr(sigma) -> torch.Tensor:
    """lambda = -2 log sigma."""
    sigma = as_tensor("sigma", sigma, torch.float64)
    if bool(((sigma < 0) | torch.isnan(sigma)).any()):
        raise ValueError("sigma must be non-negative")
    return -2.0 * sigma.log()


def karras_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0):
    """n noise levels from sigma_max down to sigma_min, evenly spaced in sigma^(1/rho).

    Karras et al. (2022), Eq. 5. Returns a decreasing float64 tensor of length n (no final zero).
    """
    check_positive_int("n", n, minimum=2)
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    if not rho > 0:
        raise ValueError(f"rho must be positive, got {rho}")
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    inv_rho_min, inv_rho_max = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (inv_rho_max + ramp * (inv_rho_min - inv_rho_max)) ** rho
    # The rho-th power of a rho-th root is off in the last bits: pin the ends exactly.
    sigmas[0], sigmas[-1] = sigma_max, sigma_min
    return sigmas


# --- timestep spacings ----------------------------------------------------------------------


def timestep_spacing(T: int, k: int, spacing: str = "trailing") -> torch.Tensor:
    """Choose k of the times 1..T for a k-step sampler, returned in decreasing order (int64).

    - ``"leading"``: 1, 1 + T//k, 1 + 2 T//k, ...: misses t = T unless k = T, so the sampler
      starts from pure noise at a time the model believes still holds some signal (Lin et al.
      2024, Table 2).
    - ``"trailing"``: T, T - T/k, ..., rounded: always starts at t = T.
    - ``"linspace"``: k times evenly spaced from 1 to T, rounded (for k = 1 that is t = 1 alone).
    """
    check_positive_int("T", T)
    check_positive_int("k", k, maximum=T)
    if spacing == "leading":
        steps = torch.arange(k, dtype=torch.int64) * (T // k) + 1
    elif spacing == "trailing":
        steps = torch.round(torch.arange(T, 0, -T / k, dtype=torch.float64)[:k]).to(torch.int64)
    elif spacing == "linspace":
        steps = torch.round(torch.linspace(1, T, k, dtype=torch.float64)).to(torch.int64)
    else:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    return steps.sort(descending=True).values
