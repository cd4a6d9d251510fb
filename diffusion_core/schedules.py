"""Processes: how much signal survives, and how much noise is added, at each time.

Every process of the library implements one protocol, :class:`Process`: a signal scale and a
noise std at each time, x_t = scale(t) x_0 + std(t) eps (the convention of the whole library),
the inverse map from a noise level sigma = std / scale back to a time, and the time grid a
sampler walks for a given number of steps and spacing (:meth:`Process.grid`). Five processes
implement it:

- :class:`Schedule`, the discrete variance-preserving chain of Ho et al. (2020), defined by its
  per-step variances ``betas``; time is an integer t = 0..T with t = 0 the clean data, so
  ``alpha_bars[t]`` needs no off-by-one:

      alpha_t = 1 - beta_t,    alpha_bar_t = prod_{s <= t} alpha_s,    alpha_bar_0 = 1,
      x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps.

  Between the integers it is continued by interpolating log sigma, which is what lets a Karras
  or log-SNR grid be laid on a discrete schedule (the network then sees fractional times);
- :class:`VPSDE` and :class:`VESDE`, the continuous-time processes of Song et al. (2021),
  t in [0, 1];
- :class:`EDM`, the variance-exploding view of Karras et al. (2022): scale 1, std = sigma = t;
- :class:`RectifiedFlow`, the straight path x_t = (1 - t) x_0 + t eps of Liu et al. (2023) and
  Lipman et al. (2023), t in [0, 1], which starts from pure noise (zero SNR) at t = 1.

A :class:`TimeGrid` holds the K + 1 points of a sampling path, each a :class:`GridPoint`
(time, scale, std), which is what the samplers hand to a denoiser.

Conversions between alpha-bar, the log signal-to-noise ratio lambda = log(alpha_bar / (1 -
alpha_bar)) and the variance-exploding (EDM) noise level sigma = sqrt((1 - alpha_bar) / alpha_bar)
go both ways. Timestep spacings choose k of the T steps for a k-step sampler.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from diffusion_core._validation import (
    as_tensor,
    check_callable,
    check_float,
    check_increasing,
    check_number,
    check_positive_int,
    check_timesteps,
)

__all__ = [
    "EDM",
    "GRID_SPACINGS",
    "SPACINGS",
    "VESDE",
    "VPSDE",
    "GridPoint",
    "Process",
    "RectifiedFlow",
    "Schedule",
    "TimeGrid",
    "alpha_bar_to_log_snr",
    "alpha_bar_to_sigma",
    "alpha_bar_to_snr",
    "betas_from_alpha_bar_fn",
    "cosine_schedule",
    "karras_sigmas",
    "linear_schedule",
    "log_snr_to_alpha_bar",
    "log_snr_to_sigma",
    "rescale_zero_terminal_snr",
    "scaled_linear_schedule",
    "sigma_to_alpha_bar",
    "sigma_to_log_snr",
    "sigmoid_schedule",
    "timestep_spacing",
]

SPACINGS = ("leading", "trailing", "linspace")
# Karras et al.'s rho is 7. Far beyond 100, sigma^(1 / rho) rounds to 1; far below 0.1,
# sigma^(1 / rho) overflows and the levels crowd at one end until they coincide.
MIN_RHO, MAX_RHO = 0.1, 100.0
GRID_SPACINGS = ("uniform", "karras", "log_snr")


# --- the time grid --------------------------------------------------------------------------


class GridPoint(NamedTuple):
    """One point of a :class:`TimeGrid`, what a sampler hands its denoiser: ``model(x, point)``.

    ``t`` is the model time (a 0-d tensor, as the network was trained on it); ``scale`` and
    ``std`` are the Python floats of x_t = scale x_0 + std eps there, read from the grid once, so
    that a denoiser converts its network's output without recomputing the schedule or reading
    the device.
    """

    t: torch.Tensor
    scale: float
    std: float

    @property
    def sigma(self) -> float:
        """sigma = std / scale, the noise level of x / scale (inf at scale = 0)."""
        return self.std / self.scale if self.scale > 0 else math.inf

    @property
    def log_snr(self) -> float:
        """lambda = log SNR = 2 log(scale / std) (-inf at scale = 0, +inf at std = 0)."""
        if self.scale == 0:
            return -math.inf
        return math.inf if self.std == 0 else 2 * math.log(self.scale / self.std)


@dataclass(frozen=True)
class TimeGrid:
    """K + 1 points of a sampling path, from noisy (index 0) to clean (index K).

    Args:
        t: (K + 1,) model times, strictly decreasing: integers (or reals between them) for a
            discrete :class:`Schedule`, reals for a continuous process.
        scale, std: (K + 1,) non-negative signal scale and noise std at each point (float64).

    The signal-to-noise ratio scale^2 / std^2 must increase strictly along the grid, checked as
    scale_{i+1} std_i > scale_i std_{i+1} so that the ends are allowed: the first point may have
    scale = 0 (zero terminal SNR, sigma = inf) and the last may have std = 0 (the clean sample).
    ``grid[i]`` is the :class:`GridPoint` i; ``grid[i:j]`` is the grid of the points i..j-1
    (for instance ``grid[:-1]``, the path without its final clean point).
    Build one with :meth:`Process.grid`.
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
        scale = _float64_tensor("scale", self.scale)
        std = _float64_tensor("std", self.std).to(scale.device)
        for name, value in (("scale", scale), ("std", std)):
            if value.shape != t.shape:
                raise ValueError(
                    f"{name} must have the shape of t, {tuple(t.shape)}, got {tuple(value.shape)}"
                )
        # The values are checked on the host, as Python floats, each array read once.
        a, s, times = scale.tolist(), std.tolist(), t.tolist()
        for name, value in (("t", times), ("scale", a), ("std", s)):
            if not all(map(math.isfinite, value)):
                raise ValueError(f"{name} must be finite, but it contains NaN or infinity")
            if name != "t" and min(value) < 0:
                raise ValueError(f"{name} must be >= 0 at every grid point")
        if any(times[i + 1] >= times[i] for i in range(len(times) - 1)):
            raise ValueError("t must be strictly decreasing: a grid runs from noisy to clean")
        if not all(a[i + 1] * s[i] > a[i] * s[i + 1] for i in range(len(a) - 1)):
            raise ValueError(
                "the grid's SNR scale^2 / std^2 must increase strictly from each point to the "
                "next (only the first point may have scale = 0, only the last std = 0)"
            )
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "std", std)
        points = tuple(map(GridPoint, t.unbind(), a, s))
        object.__setattr__(self, "points", points)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return TimeGrid(self.t[index], self.scale[index], self.std[index])
        return self.points[index]

    def __len__(self) -> int:
        return len(self.points)

    def at(self, index: torch.Tensor) -> GridPoint:
        """The points ``index`` (an integer tensor, one index per sample) as one GridPoint of
        (n,) tensors: the per-sample points at which a training objective evaluates a model."""
        return GridPoint(self.t[index], self.scale[index], self.std[index])

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
        """lambda = log SNR = 2 log(scale / std) (-inf at scale = 0, +inf at std = 0), as in
        :attr:`Schedule.log_snr`."""
        return 2 * (self.scale.log() - self.std.log())


def _float64_tensor(name: str, x) -> torch.Tensor:
    """A floating-point tensor, as float64 (its values are checked by the caller)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x.to(torch.float64)


# --- the process protocol -------------------------------------------------------------------


class Process(ABC):
    """A forward process x_t = scale(t) x_0 + std(t) eps, eps ~ N(0, I), from the clean data at
    t = 0 to the noisiest time ``t_max`` (the protocol of score_sde's ``SDE`` and of
    flow_matching's schedulers, reduced to what the samplers need).

    A subclass gives ``t_max`` and ``t_min`` (the least noisy time a grid visits before it lands
    on the clean point t = 0), :meth:`marginal` and its inverse :meth:`time_at`; the grid is then
    built the same way for every process. The sampler's prior is N(0, std(t_max)^2 I) (drawn by
    :func:`diffusion_core.samplers.prior_sample` from the grid's first point), exact when
    scale(t_max) = 0 and close when it is small.
    """

    default_spacing = "uniform"
    t_max: float
    t_min: float

    @abstractmethod
    def marginal(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, std) of x_t given x_0 at the times ``t``."""

    @abstractmethod
    def time_at(self, sigma) -> torch.Tensor:
        """The time t at which sigma(t) = std(t) / scale(t) equals ``sigma``: the inverse map,
        which places a grid chosen in noise levels (Karras, log-SNR) on the process's clock."""

    def grid(
        self, steps: int, spacing: str | None = None, *, t_max=None, t_min=None, rho: float = 7.0
    ) -> TimeGrid:
        """A ``steps``-step :class:`TimeGrid`: ``steps`` noisy times from ``t_max`` down to
        ``t_min`` (the process's own by default), then t = 0, the clean sample the last step
        lands on. ``spacing`` (default: the process's ``default_spacing``):

        - ``"uniform"``: evenly spaced in t (Song et al. 2021);
        - ``"karras"``: noise levels evenly spaced in sigma^(1 / rho) (Karras et al. 2022, Eq. 5),
          dense near the data;
        - ``"log_snr"``: evenly spaced in lambda = log SNR = -2 log sigma (DPM-Solver's step,
          Lu et al. 2022);
        - for a discrete :class:`Schedule` also ``"trailing"``, ``"leading"``, ``"linspace"``
          (:func:`timestep_spacing`).

        The noise levels of the last two kinds are mapped back to times through
        :meth:`time_at`, and (scale, std) at every point come from :meth:`marginal`.
        """
        steps = check_positive_int("steps", steps)
        spacing = self.default_spacing if spacing is None else spacing
        t_max = self.t_max if t_max is None else check_number("t_max", t_max, 0, self.t_max)
        t_min = self.t_min if t_min is None else check_number("t_min", t_min, 0, t_max)
        if not 0 < t_min <= t_max:
            raise ValueError(f"need 0 < t_min <= t_max, got t_min={t_min}, t_max={t_max}")
        rho = check_number("rho", rho, MIN_RHO, MAX_RHO)
        t = self._noisy_times(steps, spacing, float(t_max), float(t_min), rho)
        t = torch.cat([t, t.new_zeros(1)])
        return TimeGrid(t, *self.marginal(t))

    def _noisy_times(self, steps, spacing, t_max, t_min, rho) -> torch.Tensor:
        if spacing == "uniform":
            return torch.linspace(t_max, t_min, steps, dtype=torch.float64)
        if spacing not in ("karras", "log_snr"):
            raise ValueError(f"spacing must be one of {self.spacings}, got {spacing!r}")
        if steps == 1:
            return torch.tensor([t_max], dtype=torch.float64)
        scale, std = self.marginal(torch.tensor([t_max, t_min], dtype=torch.float64))
        sigma_max, sigma_min = (std / scale).tolist()
        if not math.isfinite(sigma_max):
            raise ValueError(
                f"spacing={spacing!r} needs a finite noise level at t_max, but scale(t_max) = 0 "
                "(zero terminal SNR): pass a smaller t_max or use another spacing"
            )
        if spacing == "karras":
            sigma = karras_sigmas(steps, sigma_min, sigma_max, rho)
        else:
            sigma = torch.logspace(
                math.log10(sigma_max), math.log10(sigma_min), steps, dtype=torch.float64
            )
        # Exact ends, as karras_sigmas pins its own; only the inner levels are mapped back (the
        # end levels, recomputed from the marginal, may lie an ulp outside time_at's range).
        t = torch.tensor([t_max] * (steps - 1) + [t_min], dtype=torch.float64)
        t[1:-1] = self.time_at(sigma[1:-1]).clamp(t_min, t_max)
        return t

    @property
    def spacings(self) -> tuple[str, ...]:
        """The values :meth:`grid` accepts for ``spacing``."""
        return GRID_SPACINGS


@dataclass(frozen=True)
class Schedule(Process):
    """A discrete variance-preserving noise schedule, defined by its ``T`` step variances.

    ``betas[t - 1]`` is beta_t for t = 1..T. Every beta must lie in (0, 1); the last one may be
    exactly 1, which is a zero-terminal-SNR schedule (alpha_bar_T = 0, pure noise at t = T).
    Tables indexed by time (``alpha_bars``, ``snr``, ``log_snr``, ``sigmas``) have ``T + 1``
    entries, entry ``t`` for time t, entry 0 being the clean data.

    As a :class:`Process` its clock runs from t = 0 to t_max = T, and a grid visits t_min = 1
    last before the clean point. Real times between the integers are defined by interpolating
    log sigma_t linearly between neighbouring steps (and sigma linearly in t on [0, 1]), the
    continuation that diffusers' Karras grids also use on a discrete schedule.
    """

    default_spacing = "trailing"

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
        alpha_bars = torch.cat([betas.new_ones(1), torch.cumprod(1.0 - betas, 0)])
        object.__setattr__(self, "_alpha_bars", alpha_bars)

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
        return self._alpha_bars

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

    @property
    def t_max(self) -> int:
        return self.T

    @property
    def t_min(self) -> int:
        return 1

    @property
    def spacings(self) -> tuple[str, ...]:
        return SPACINGS + GRID_SPACINGS

    def marginal(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, std) = (sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t)) at times ``t``.

        Ho et al. (2020), Eq. 4: q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I).
        Integer times index the table; real times in [0, T] take the interpolated sigma of the
        class docstring, with scale = (1 + sigma^2)^(-1/2) and std = sigma scale.
        """
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            return self._between_steps(t)
        t = check_timesteps("t", t, self.T)
        alpha_bar = self.alpha_bars.to(t.device)[t]
        return alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt()

    def _between_steps(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = check_float("t", t).to(torch.float64)
        if bool(((t < 0) | (t > self.T)).any()):
            raise ValueError(f"t must lie in [0, {self.T}] (T = {self.T})")
        sigmas = self.sigmas.to(t.device)
        low = t.floor().clamp(max=self.T - 1).to(torch.int64)
        frac = t - low
        ratio = sigmas[(low + 1).clamp(max=self.T)] / sigmas[low].clamp(min=1e-300)
        sigma = torch.where(low == 0, t * sigmas[1].clamp(max=1e300), sigmas[low] * ratio.pow(frac))
        # Integer times read the table; between them scale = (1 + sigma^2)^(-1/2) and std =
        # sigma scale, which keeps std exact to round-off where 1 - alpha_bar would cancel.
        whole = t.floor()
        exact = t == whole  # t = T included, where frac = 1
        alpha_bar = self.alpha_bars.to(t.device)[whole.to(torch.int64)]
        between = (1.0 + sigma**2).rsqrt()
        scale = torch.where(exact, alpha_bar.sqrt(), between)
        std = torch.where(exact, (1.0 - alpha_bar).sqrt(), (sigma * between).nan_to_num(1.0))
        return scale, std

    def time_at(self, sigma) -> torch.Tensor:
        """The real time at which the interpolated sigma(t) of :meth:`marginal` equals ``sigma``
        (in [0, sigma_T]): the inverse of that interpolation."""
        sigma = as_tensor("sigma", sigma, torch.float64)
        sigmas = self.sigmas.to(sigma.device)
        if bool(((sigma < 0) | ~(sigma <= sigmas[-1])).any()):
            raise ValueError(f"sigma must lie in [0, {float(sigmas[-1]):.6g}] (sigma at t = T)")
        log_sigmas = sigmas[1:].log()
        k = torch.searchsorted(log_sigmas, sigma.log().contiguous()).clamp(1, max(self.T - 1, 1))
        low, high = log_sigmas[k - 1], log_sigmas[k]
        above = k.to(torch.float64) + (sigma.log() - low) / (high - low)
        return torch.where(sigma < sigmas[1], sigma / sigmas[1], above)

    def _noisy_times(self, steps, spacing, t_max, t_min, rho) -> torch.Tensor:
        if spacing not in SPACINGS:
            return super()._noisy_times(steps, spacing, t_max, t_min, rho)
        if (t_max, t_min) != (self.T, 1):
            raise ValueError(
                f"spacing={spacing!r} picks integer steps from 1..T: t_max and t_min must be left "
                "at their defaults (use 'uniform', 'karras' or 'log_snr' for a partial range)"
            )
        return timestep_spacing(self.T, check_positive_int("steps", steps, maximum=self.T), spacing)

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
    check_callable("alpha_bar_fn", alpha_bar_fn, "alpha_bar_fn(u) -> alpha_bar")
    check_positive_int("T", T)
    check_number("max_beta", max_beta, 0, 1, low_open=True)
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
class VPSDE(Process):
    """Variance-preserving SDE dx = -beta(t)/2 x dt + sqrt(beta(t)) dw, t in [0, 1].

    beta(t) = beta_min + t (beta_max - beta_min) (Song et al. 2021, Eq. 11). It is the limit of
    the DDPM chain with T steps and betas beta(t)/T: see :meth:`discretize`. ``t_min`` is the
    smallest noisy time of its grids (Song et al. stop at 1e-3 or 1e-5).
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    t_min: float = 1e-3
    t_max = 1.0

    def __post_init__(self):
        check_increasing("beta_min", self.beta_min, "beta_max", self.beta_max)
        check_number("t_min", self.t_min, 0, 1, low_open=True, high_open=True)

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

    def time_at(self, sigma) -> torch.Tensor:
        """1 + sigma^2 = 1 / alpha_bar(t) = exp(beta_min t + (beta_max - beta_min) t^2 / 2): the
        positive root of that quadratic in t, written without cancellation."""
        sigma = _noise_level(sigma)
        b0, b1, log_1p = self.beta_min, self.beta_max - self.beta_min, torch.log1p(sigma**2)
        return 2 * log_1p / (b0 + (b0**2 + 2 * b1 * log_1p).sqrt())

    def drift(self, x: torch.Tensor, t) -> torch.Tensor:
        return -0.5 * self.beta(t).to(x.dtype) * x

    def diffusion(self, t) -> torch.Tensor:
        return self.beta(t).sqrt()

    def discretize(self, T: int = 1000) -> Schedule:
        """The DDPM chain with beta_t = beta((t - 1/2) / T) / T: linear betas, as in DDPM."""
        check_positive_int("T", T)
        midpoints = (torch.arange(1, T + 1, dtype=torch.float64) - 0.5) / T
        return Schedule(self.beta(midpoints) / T)


@dataclass(frozen=True)
class VESDE(Process):
    """Variance-exploding SDE dx = sqrt(d sigma^2(t) / dt) dw with sigma(t) = sigma_min
    (sigma_max / sigma_min)^t, t in [0, 1] (Song et al. 2021, Eq. 9).

    The data are never scaled down; noise is added until it swamps them, so the prior is
    N(0, std(1)^2 I) with std(1) close to sigma_max, not N(0, I).
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    t_min: float = 1e-3
    t_max = 1.0

    def __post_init__(self):
        check_increasing("sigma_min", self.sigma_min, "sigma_max", self.sigma_max)
        check_number("t_min", self.t_min, 0, 1, low_open=True, high_open=True)

    def sigma(self, t) -> torch.Tensor:
        """The SDE's sigma(t) (the std of x(t) started at x(0) ~ N(x_0, sigma_min^2))."""
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** _continuous_time(t)

    def marginal(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, std) = (1, sqrt(sigma(t)^2 - sigma_min^2)): exact for x(0) = x_0."""
        sigma = self.sigma(t)
        return torch.ones_like(sigma), (sigma**2 - self.sigma_min**2).sqrt()

    def time_at(self, sigma) -> torch.Tensor:
        """std(t)^2 = sigma_min^2 ((sigma_max / sigma_min)^(2 t) - 1), solved for t."""
        sigma = _noise_level(sigma)
        return torch.log1p((sigma / self.sigma_min) ** 2) / (
            2 * math.log(self.sigma_max / self.sigma_min)
        )

    def drift(self, x: torch.Tensor, t) -> torch.Tensor:
        return torch.zeros_like(x)

    def diffusion(self, t) -> torch.Tensor:
        """g(t) = sigma(t) sqrt(2 log(sigma_max / sigma_min)), so that g^2 = d sigma^2 / dt."""
        return self.sigma(t) * math.sqrt(2 * math.log(self.sigma_max / self.sigma_min))


@dataclass(frozen=True)
class EDM(Process):
    """The variance-exploding process of Karras et al. (2022, Table 1): x = x_0 + sigma eps, with
    the noise level itself as the clock, t = sigma in [0, sigma_max]. Its grids run from
    sigma_max down to sigma_min with the Karras spacing (rho = 7) by default.

    Every process is this one seen through y = x / scale and sigma = std / scale, so the EDM
    denoiser D(y; sigma) of the paper is ``model(y, point)`` on one of these grids.
    """

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    default_spacing = "karras"

    def __post_init__(self):
        check_increasing("sigma_min", self.sigma_min, "sigma_max", self.sigma_max)

    @property
    def t_max(self) -> float:
        return self.sigma_max

    @property
    def t_min(self) -> float:
        return self.sigma_min

    def marginal(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, std) = (1, t)."""
        t = _noise_level(as_tensor("t", t, torch.float64))
        return torch.ones_like(t), t.clone()

    def time_at(self, sigma) -> torch.Tensor:
        """t = sigma."""
        return _noise_level(sigma).clone()


@dataclass(frozen=True)
class RectifiedFlow(Process):
    """The straight path x_t = (1 - t) x_0 + t eps, t in [0, 1]: rectified flow (Liu et al. 2023)
    and the conditional optimal-transport path of flow matching (Lipman et al. 2023), the
    process of Stable Diffusion 3 (Esser et al. 2024).

    At t = 1 it is pure noise (scale 0, zero terminal SNR), so the prior N(0, I) is exact; its
    velocity dx_t / dt = eps - x_0 is what a flow-matching network predicts. Grids are uniform
    in t by default, from t = 1 down to ``t_min``.
    """

    t_min: float = 1e-3
    t_max = 1.0

    def __post_init__(self):
        check_number("t_min", self.t_min, 0, 1, low_open=True, high_open=True)

    def marginal(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, std) = (1 - t, t)."""
        t = _continuous_time(t)
        return 1.0 - t, t.clone()

    def time_at(self, sigma) -> torch.Tensor:
        """sigma = t / (1 - t), so t = sigma / (1 + sigma) (t = 1 at sigma = inf)."""
        sigma = _noise_level(sigma)
        return torch.where(torch.isinf(sigma), torch.ones_like(sigma), sigma / (1.0 + sigma))


def _noise_level(sigma) -> torch.Tensor:
    sigma = as_tensor("sigma", sigma, torch.float64)
    if bool(((sigma < 0) | torch.isnan(sigma)).any()):
        raise ValueError("sigma must be a non-negative noise level")
    return sigma


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
    sigma_min, sigma_max = check_increasing("sigma_min", sigma_min, "sigma_max", sigma_max)
    rho = check_number("rho", rho, MIN_RHO, MAX_RHO)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    try:
        inv_rho_min, inv_rho_max = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    except OverflowError:
        raise ValueError(
            f"rho={rho} is too small for sigma_max={sigma_max}: sigma_max^(1 / rho) overflows"
        ) from None
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
    check_positive_int("k", k)
    if k > T:
        raise ValueError(f"k must be at most T (k of the T steps are picked), got k={k}, T={T}")
    if spacing == "leading":
        steps = torch.arange(k, dtype=torch.int64) * (T // k) + 1
    elif spacing == "trailing":
        steps = torch.round(torch.arange(T, 0, -T / k, dtype=torch.float64)[:k]).to(torch.int64)
    elif spacing == "linspace":
        steps = torch.round(torch.linspace(1, T, k, dtype=torch.float64)).to(torch.int64)
    else:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    return steps.sort(descending=True).values
