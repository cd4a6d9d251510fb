"""Time grids for few-step sampling: the classical fixed choices and a grid fitted to a model.

With 5 to 20 model evaluations most of a sampler's error is set by *where* the steps are
placed. :func:`fixed_grids` gives the classical choices of a process (evenly spaced in t, in
log-SNR, and Karras et al.'s rho = 7 noise levels). :func:`fit_grid` chooses the grid for a
given model, process, sampler and number of steps by direct search: it minimises the pathwise
error of the sampler against a fine reference solve of the same probability-flow ODE
(:func:`diffusion_core.samplers.flow_endpoint`) from a few pilot starts, in the manner of
DM-NonUniform (Xue et al. 2024), GITS (Chen et al. 2024) and LD3 (Tong et al. 2025), which
fit a grid to a model from a handful of its own trajectories. The result is a plain
:class:`~diffusion_core.schedules.TimeGrid` that every sampler takes.

The grid is parametrised so that every trial is valid: the first point stays at the process's
t_max (where the prior is drawn), the last at t = 0, and the K - 1 inner noise levels are
log sigma_0 minus the partial sums of K positive gaps (a softmax of K free numbers) that
together span log sigma_0 - log sigma(t_min): strictly decreasing, within the process's range,
and mapped back to times by :meth:`~diffusion_core.schedules.Process.time_at`.

With K - 1 free levels and a few hundred pilot starts the fit can overfit its pilots: on a
16-dimensional mixture the squared error is dominated by the few paths that change mixture
component, and which ones do depends on the starts. Two regularised choices help there.
``family="power"`` fits two numbers instead of K - 1, the exponent p and the last noisy time
t_end of the power law t_i = t_end + (t_max - t_end) (1 - i / (K - 1))^p on the process's own
clock (p = 1 is the grid evenly spaced in t, the "trailing" grid of a DDPM schedule), in the
spirit of the low-dimensional schedules of Karras et al. (2022) and of GITS and LD3's few
parameters. ``statistic="median"`` minimises the median squared distance over the pilot
starts instead of the mean, a robust objective that fits the bulk of the paths and ignores the
few that switch component.

``family="window"`` fits four numbers of a smooth density of the noisy levels in log sigma,
uniform plus a Gaussian bump (:func:`window_grid`): it can crowd steps into the window of noise
levels where a model's paths decide between modes, without starving the noisier levels above
or changing the step size abruptly (which a multistep solver, extrapolating from its last
steps, does not forgive). On the 16-dimensional mixture of ``benchmarks/sampler_accuracy.py``,
fitted on 8192 pilots (enough to hold some of the rare paths that switch mode), it is the
family that serves the typical path without switching more paths than the fixed grids.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import NamedTuple

import torch
from scipy.optimize import minimize

from diffusion_core._validation import (
    as_tensor,
    check_float,
    check_number,
    check_positive_int,
)
from diffusion_core.samplers import MAX_FLOW_STEPS, flow_endpoint, prior_sample, unipc
from diffusion_core.schedules import Process, TimeGrid

__all__ = [
    "FAMILIES",
    "MAX_FIT_STEPS",
    "STATISTICS",
    "GridFit",
    "fit_grid",
    "fixed_grids",
    "grid_from_sigmas",
    "power_grid",
    "window_grid",
]

F64 = torch.float64
MAX_FIT_STEPS = 64
SCAN, SCAN_TOP = 12, 2.0  # last noisy levels tried before the search, up to sigma = 2
FAMILIES = ("free", "power", "window")
STATISTICS = ("mean", "median")
MAX_POWER = 10.0  # the largest exponent of the power family
MAX_HEIGHT, MAX_WIDTH = 1000.0, 10.0  # the window family's largest bump and its widest
FIXED = {"uniform in t": "uniform", "uniform in log-SNR": "log_snr", "Karras rho = 7": "karras"}


class GridFit(NamedTuple):
    """The result of :func:`fit_grid`: the fitted ``grid``, its pilot ``error`` (the root of the
    objective: RMS distance to the reference, or the median distance for
    ``statistic="median"``), the ``start_error`` of the grid it started from, the number of
    ``trials`` (sampler runs) and the ``seconds`` the fit took (reference solve included)."""

    grid: TimeGrid
    error: float
    start_error: float
    trials: int
    seconds: float


def fixed_grids(process: Process, steps: int) -> dict[str, TimeGrid]:
    """The classical grids of ``steps`` steps of ``process``, by name: evenly spaced in t (Song
    et al. 2021), in log-SNR (Lu et al. 2022) and in sigma^(1/7) (Karras et al. 2022, Eq. 5),
    each from t_max to t_min and then onto t = 0 (:meth:`Process.grid`)."""
    if not isinstance(process, Process):
        raise TypeError(f"process must be a Process, got {type(process).__name__}")
    steps = check_positive_int("steps", steps, maximum=MAX_FIT_STEPS)
    return {name: process.grid(steps, spacing) for name, spacing in FIXED.items()}


def grid_from_sigmas(process: Process, sigmas) -> TimeGrid:
    """The grid through the noise levels ``sigmas`` (strictly decreasing, the first at most
    sigma(t_max), the last at least sigma(t_min)), placed on the process's clock by
    :meth:`Process.time_at`, then onto t = 0."""
    if not isinstance(process, Process):
        raise TypeError(f"process must be a Process, got {type(process).__name__}")
    sigmas = check_float("sigmas", as_tensor("sigmas", sigmas)).to(F64)
    if sigmas.ndim != 1 or sigmas.numel() < 1:
        raise ValueError(f"sigmas must be 1-D with at least one level, got {tuple(sigmas.shape)}")
    low, high = _sigma_range(process)
    values = sigmas.tolist()
    if values[0] > high * (1 + 1e-12) or values[-1] < low * (1 - 1e-12):
        raise ValueError(f"sigmas must lie in [{low:.6g}, {high:.6g}], the process's range")
    if any(b >= a for a, b in zip(values, values[1:], strict=False)):
        raise ValueError("sigmas must be strictly decreasing")
    # (the top level is held an ulp below high: a process's own table of sigma may round its
    # sigma(t_max) a unit lower than std / scale does; t_max is set exactly below)
    inside = sigmas.clamp(low, high * (1 - 1e-12))
    t = process.time_at(inside).clamp(float(process.t_min), float(process.t_max))
    t[0] = float(process.t_max) if values[0] >= high else t[0]
    t = torch.cat([t, t.new_zeros(1)])
    return TimeGrid(t, *process.marginal(t))


def power_grid(process: Process, steps: int, power: float, t_end: float) -> TimeGrid:
    """The grid t_i = t_end + (t_max - t_end) (1 - i / (K - 1))^power, i = 0..K-1 (K =
    ``steps``), then t = 0: ``power`` = 1 spaces the noisy times evenly, a larger one puts them
    closer together near t_end (the data), a smaller one near t_max. ``t_end`` lies in
    [t_min, t_max) of the process; ``power`` in (0, 10]."""
    if not isinstance(process, Process):
        raise TypeError(f"process must be a Process, got {type(process).__name__}")
    steps = check_positive_int("steps", steps, maximum=MAX_FIT_STEPS)
    power = check_number("power", power, 0.0, MAX_POWER, low_open=True)
    t_max, t_min = float(process.t_max), float(process.t_min)
    t_end = check_number("t_end", t_end, t_min, t_max, high_open=True)
    u = torch.linspace(0, 1, steps, dtype=F64) if steps > 1 else torch.zeros(1, dtype=F64)
    t = t_end + (t_max - t_end) * (1 - u) ** power
    t[0] = t_max
    t = torch.cat([t, t.new_zeros(1)])
    return TimeGrid(t, *process.marginal(t))


def window_grid(
    process: Process, steps: int, height: float, sigma_center: float, width: float, sigma_end: float
) -> TimeGrid:
    """The grid whose K = ``steps`` noisy levels follow the density

        rho(u) = 1 + height exp(-(u - log sigma_center)^2 / (2 width^2)),   u = log sigma,

    between sigma_max (the process's noise level at t_max, the first level) and ``sigma_end``
    (the last noisy level): level i sits at the quantile i / (K - 1) of rho on that interval,
    so the gaps in log sigma are inversely proportional to rho, and the step sizes change
    smoothly. Then t = 0. ``height`` = 0 spaces the levels evenly in log sigma (the log-SNR grid
    of a VE process, nearly that of a VP one); a larger ``height`` crowds them around
    ``sigma_center``, within about ``width`` nepers (e-folds of sigma). ``height`` lies in
    [0, 1000], ``width`` in (0, 10], ``sigma_center`` > 0 and ``sigma_end`` in [sigma_min,
    sigma_max) of the process."""
    if not isinstance(process, Process):
        raise TypeError(f"process must be a Process, got {type(process).__name__}")
    steps = check_positive_int("steps", steps, maximum=MAX_FIT_STEPS)
    height = check_number("height", height, 0.0, MAX_HEIGHT)
    center = math.log(check_number("sigma_center", sigma_center, 0.0, low_open=True))
    width = check_number("width", width, 0.0, MAX_WIDTH, low_open=True)
    low, high = _sigma_range(process)
    sigma_end = check_number("sigma_end", sigma_end, low, high, high_open=True)
    top, bottom = math.log(high), math.log(sigma_end)

    def mass(u: torch.Tensor) -> torch.Tensor:  # int_u^top rho(v) dv
        z = math.erf((top - center) / (math.sqrt(2) * width)) - torch.erf(
            (u - center) / (math.sqrt(2) * width)
        )
        return (top - u) + height * width * math.sqrt(math.pi / 2) * z

    share = torch.linspace(0, 1, steps, dtype=F64) if steps > 1 else torch.zeros(1, dtype=F64)
    target = share * mass(torch.tensor(bottom, dtype=F64))
    lo, hi = torch.full_like(share, bottom), torch.full_like(share, top)
    for _ in range(60):  # bisection: mass falls as u rises, to 2^-60 of the interval
        mid = (lo + hi) / 2
        above = mass(mid) > target  # mid lies below the quantile: move up
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    u = (lo + hi) / 2
    u[0], u[-1] = top, (bottom if steps > 1 else top)
    return grid_from_sigmas(process, u.exp())


def _sigma_range(process: Process) -> tuple[float, float]:
    ends = torch.tensor([float(process.t_min), float(process.t_max)], dtype=F64)
    scale, std = process.marginal(ends)
    low, high = (std / scale).tolist()
    if not math.isfinite(high):
        raise ValueError(
            "the process must have a finite noise level at t_max (scale(t_max) > 0) for its grid "
            "to be fitted in noise levels"
        )
    return low, high


def _log_objective(error: Callable, grid_of: Callable) -> Callable:
    """theta -> log error(grid_of(theta)), the searched objective; +inf where theta gives no
    valid grid (levels or times that round onto one another)."""

    def objective(theta) -> float:
        try:
            value = error(grid_of(theta))
        except ValueError:
            return math.inf
        return math.log(value) if value > 0 else -math.inf

    return objective


def fit_grid(
    model: Callable,
    process: Process,
    steps: int,
    *,
    sampler: Callable = unipc,
    start: str = "log_snr",
    pilot: int = 128,
    shape: tuple[int, ...] = (2,),
    reference_steps: int = 400,
    max_trials: int = 400,
    seed: int = 0,
    family: str = "free",
    statistic: str = "mean",
) -> GridFit:
    """Fit the ``steps``-step grid of ``sampler`` to ``model`` on ``process``.

    The objective is the squared pathwise error mean_i |sampler(x_i) - x0_i|^2 over ``pilot``
    starts x_i = std(t_max) z_i, z_i ~ N(0, I) of the per-sample ``shape``, drawn from
    ``seed``, where x0_i is the reference end of the probability flow through x_i
    (:func:`~diffusion_core.samplers.flow_endpoint`, ``reference_steps`` UniPC steps). It is
    minimised over the K - 1 inner noise levels (module docstring): first over the last noisy
    level alone (a scan of log-SNR grids that end at 12 levels up to sigma = 2, with the grid
    of spacing ``start``, ``"log_snr"``, ``"karras"`` or ``"uniform"``, among the
    candidates), then over all of them by Nelder-Mead from the best candidate (at most
    ``max_trials`` sampler runs). The best grid seen is returned, so the fitted grid is never
    worse than its start on the pilot starts. Deterministic for a given seed.

    ``family="power"`` searches the two numbers of :func:`power_grid` instead (from p = 1 and
    the best of a scan of t_end), ``family="window"`` the four of :func:`window_grid` (from
    the best of a scan of 36 bumps); ``statistic="median"`` minimises the median squared
    distance over the pilots instead of the mean (module docstring).

    Judge the fit on other starts than the pilot ones (the book and the benchmark do).
    """
    if not callable(model):
        raise TypeError(f"model must be callable as model(x, point), got {type(model).__name__}")
    if not isinstance(process, Process):
        raise TypeError(f"process must be a Process, got {type(process).__name__}")
    steps = check_positive_int("steps", steps, minimum=1, maximum=MAX_FIT_STEPS)
    if not callable(sampler):
        raise TypeError(f"sampler must be a sampler function, got {type(sampler).__name__}")
    if start not in FIXED.values():
        raise ValueError(f"start must be one of {tuple(FIXED.values())}, got {start!r}")
    pilot = check_positive_int("pilot", pilot, minimum=1, maximum=100_000)
    if not isinstance(shape, tuple) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape
    ):
        raise ValueError(f"shape must be a tuple of positive ints, got {shape!r}")
    reference_steps = check_positive_int(
        "reference_steps", reference_steps, minimum=2, maximum=MAX_FLOW_STEPS
    )
    max_trials = check_positive_int("max_trials", max_trials, minimum=1, maximum=1_000_000)
    seed = check_positive_int("seed", seed, minimum=0, maximum=2**63 - 1)
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
    began = time.perf_counter()

    start_grid = process.grid(steps, start)
    low, high = _sigma_range(process)
    generator = torch.Generator().manual_seed(seed)
    x = prior_sample(start_grid, (pilot, *shape), generator)
    reference = flow_endpoint(model, x, process, process.t_max, reference_steps)
    span = math.log(high) - math.log(low)

    def grid_of(theta) -> TimeGrid:
        gaps = torch.softmax(torch.as_tensor(theta, dtype=F64), 0) * span
        log_sigma = math.log(high) - torch.cat([gaps.new_zeros(1), gaps.cumsum(0)[:-1]])
        return grid_from_sigmas(process, log_sigma.exp())

    def error(grid: TimeGrid) -> float:
        squared = (sampler(model, x, grid) - reference).square().flatten(1).sum(1)
        return float(squared.mean() if statistic == "mean" else squared.median())

    objective = _log_objective(error, grid_of)
    start_error = error(start_grid)
    if steps == 1:  # no inner level to place
        seconds = time.perf_counter() - began
        return GridFit(start_grid, math.sqrt(start_error), math.sqrt(start_error), 1, seconds)
    if family in ("power", "window"):
        fit = _fit_power if family == "power" else _fit_window
        return fit(process, steps, error, start_grid, start_error, max_trials, began)
    # First a scan of the last noisy level, the most sensitive choice (the last step returns
    # x0_hat there): log-SNR grids from sigma_max down to each of SCAN levels.
    candidates = [(start_error, start_grid)]
    top = min(high, SCAN_TOP)
    for end in torch.logspace(math.log10(low), math.log10(top), SCAN, dtype=F64).tolist()[1:]:
        levels = torch.logspace(math.log10(high), math.log10(end), steps, dtype=F64)
        try:
            grid = grid_from_sigmas(process, levels)
        except ValueError:  # an end level at sigma_max, or levels that round together
            continue
        candidates.append((error(grid), grid))
    best_error, best = min(candidates, key=lambda c: c[0])
    sigma = best.sigma[:-1].clamp(low, high)
    gaps = torch.cat([-(sigma.log().diff()), sigma[-1:].log() - math.log(low)])
    theta0 = gaps.clamp_min(1e-3 * span / steps).log().numpy()
    result = minimize(
        objective,
        theta0,
        method="Nelder-Mead",
        options={"maxfev": max_trials, "xatol": 1e-3, "fatol": 1e-4, "adaptive": True},
    )
    fitted, fitted_error = best, best_error
    if math.isfinite(result.fun) and math.exp(result.fun) < best_error:
        fitted, fitted_error = grid_of(result.x), math.exp(result.fun)
    trials = len(candidates) + int(result.nfev)
    seconds = time.perf_counter() - began
    return GridFit(fitted, math.sqrt(fitted_error), math.sqrt(start_error), trials, seconds)


def _fit_power(process, steps, error, start_grid, start_error, max_trials, began) -> GridFit:
    """Nelder-Mead over (log p, logit of t_end's place in [t_min, t_max)), from p = 1 and the
    best t_end of a scan; the best grid seen, the start grid included, is returned."""
    t_max, t_min = float(process.t_max), float(process.t_min)

    def grid_of(theta) -> TimeGrid:
        power = min(math.exp(float(theta[0])), MAX_POWER)
        share = 1 / (1 + math.exp(-float(theta[1])))
        return power_grid(process, steps, power, t_min + share * (t_max - t_min) * 0.999)

    scan = [[0.0, logit] for logit in (-8.0, -6.0, -5.0, -4.0, -3.0, -2.0)]
    return _scan_then_search(grid_of, error, scan, start_grid, start_error, max_trials, began)


def _fit_window(process, steps, error, start_grid, start_error, max_trials, began) -> GridFit:
    """Nelder-Mead over (log height, log sigma_center, log width, logit of sigma_end's place in
    log sigma between sigma_min and min(sigma_max, 2)), from the best of a scan of bumps of
    height 1, 3 and 10, one neper wide, centred at four levels spread over the process's range,
    each with three last levels; the best grid seen, the start grid included, is returned."""
    low, high = _sigma_range(process)
    bottom, top, span = math.log(low), math.log(min(high, SCAN_TOP)), math.log(high / low)

    def grid_of(theta) -> TimeGrid:
        height = min(math.exp(float(theta[0])), MAX_HEIGHT)
        width = min(math.exp(float(theta[2])), MAX_WIDTH)
        share = 1 / (1 + math.exp(-float(theta[3])))
        end = math.exp(bottom + share * (top - bottom))
        return window_grid(process, steps, height, math.exp(float(theta[1])), width, end)

    centers = [bottom + f * span for f in (0.35, 0.5, 0.65, 0.8)]
    ends = [-4.0, -1.0, 1.0]  # logits: the last level near sigma_min, 1/4 and 3/4 of the way up
    scan = [
        [math.log(height), center, 0.0, end]
        for height in (1.0, 3.0, 10.0)
        for center in centers
        for end in ends
    ]
    return _scan_then_search(grid_of, error, scan, start_grid, start_error, max_trials, began)


def _scan_then_search(grid_of, error, scan, start_grid, start_error, max_trials, began) -> GridFit:
    """The best of the parameters ``scan``, then Nelder-Mead from it on the log error (at most
    ``max_trials`` sampler runs); returns the best grid seen, the start grid included."""
    objective = _log_objective(error, grid_of)
    best_value, best_theta = min(((objective(theta), theta) for theta in scan), key=lambda c: c[0])
    result = minimize(
        objective,
        best_theta,
        method="Nelder-Mead",
        options={"maxfev": max_trials, "xatol": 1e-3, "fatol": 1e-4},
    )
    fitted, fitted_error = start_grid, start_error
    for value, theta in ((best_value, best_theta), (result.fun, result.x)):
        if math.isfinite(value) and math.exp(value) < fitted_error:
            fitted, fitted_error = grid_of(theta), math.exp(value)
    trials = 1 + len(scan) + int(result.nfev)
    seconds = time.perf_counter() - began
    return GridFit(fitted, math.sqrt(fitted_error), math.sqrt(start_error), trials, seconds)
