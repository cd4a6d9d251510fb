"""The forward (noising) process: what diffusion does to data, in closed form and step by step.

All functions take the randomness they use as an argument (``noise`` tensors or a
``torch.Generator``), so that a notebook can replay exactly the same draw. Time steps ``t`` are
integer tensors in 0..T with one entry per sample, or a single integer for the whole batch.
"""

from __future__ import annotations

import math

import torch

from diffusion_core._validation import (
    MAX_COUNT,
    MAX_LEVEL,
    as_tensor,
    check_batch,
    check_finite,
    check_float,
    check_number,
    check_positive_int,
    check_timesteps,
    check_torch_generator,
    per_sample,
)
from diffusion_core.schedules import VESDE, VPSDE, Schedule

__all__ = [
    "posterior_coefficients",
    "q_posterior",
    "q_sample",
    "q_step",
    "seed_article_diffuse",
    "seed_article_equation_diffuse",
    "seed_article_equation_moments",
    "seed_article_reverse",
    "seed_article_variance",
    "simulate_chain",
    "simulate_sde",
]


def _check_schedule(schedule) -> Schedule:
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a Schedule, got {type(schedule).__name__}")
    return schedule


def _check_pair(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    check_float(name_a, a)
    check_float(name_b, b)
    if a.shape != b.shape:
        raise ValueError(
            f"{name_b} must have the same shape as {name_a}, got {tuple(b.shape)} "
            f"and {tuple(a.shape)}"
        )


def _times(schedule: Schedule, t, x: torch.Tensor, minimum: int = 0) -> torch.Tensor:
    t = check_timesteps("t", t, schedule.T)
    check_batch("t", t, x.shape[0] if x.ndim else 1, "the batch size of x")
    if t.numel() and bool((t < minimum).any()):
        raise ValueError(f"t must lie in {minimum}..{schedule.T} here, got {int(t.min())}")
    return t


def q_sample(schedule: Schedule, x0: torch.Tensor, t, noise: torch.Tensor) -> torch.Tensor:
    """Draw x_t ~ q(x_t | x_0) in one shot: x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps.

    Ho et al. (2020), Eq. 4. ``noise`` is eps, shaped like ``x0``; ``t`` has one entry per sample
    (or one for all). The arithmetic runs in float64 and the result has ``x0``'s dtype.
    """
    _check_schedule(schedule)
    _check_pair("x0", x0, "noise", noise)
    t = _times(schedule, t, x0)
    scale, std = schedule.marginal(t)
    x_t = per_sample(scale, x0) * x0.double() + per_sample(std, x0) * noise.double()
    return x_t.to(x0.dtype)


def q_step(schedule: Schedule, x_prev: torch.Tensor, t, noise: torch.Tensor) -> torch.Tensor:
    """One step of the chain, x_t ~ q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I).

    Ho et al. (2020), Eq. 2; ``t`` in 1..T.
    """
    _check_schedule(schedule)
    _check_pair("x_prev", x_prev, "noise", noise)
    t = _times(schedule, t, x_prev, minimum=1)
    return _step(schedule.betas[t - 1], x_prev, noise)


def _step(beta: torch.Tensor, x_prev: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(1 - beta) x_{t-1} + sqrt(beta) noise, in float64, for already checked inputs."""
    x_t = per_sample((1.0 - beta).sqrt(), x_prev) * x_prev.double()
    x_t = x_t + per_sample(beta.sqrt(), x_prev) * noise.double()
    return x_t.to(x_prev.dtype)


def _level(name: str, value):
    """A scale or std: a number in [0, MAX_LEVEL] (as a float) or a finite tensor of them."""
    if isinstance(value, torch.Tensor):
        check_float(name, value)
        if bool((value < 0).any()) or bool((value > MAX_LEVEL).any()):
            raise ValueError(f"{name} must lie in [0, {MAX_LEVEL:g}]")
        return value
    return check_number(name, value, 0, MAX_LEVEL)


def _posterior_levels(scale_t, std_t, scale_s, std_s):
    """The checks of :func:`posterior_coefficients`, each error naming its argument."""
    names = ("scale_t", "std_t", "scale_s", "std_s")
    scale_t, std_t, scale_s, std_s = map(_level, names, (scale_t, std_t, scale_s, std_s))
    if _any(std_t <= 0) or _any(scale_s <= 0):
        raise ValueError("std_t and scale_s must be > 0: the later time s is not pure noise")
    if _any(scale_s * std_t < scale_t * std_s):
        raise ValueError(
            "s must be no noisier than t: need scale_s / std_s >= scale_t / std_t (SNR_s >= SNR_t)"
        )
    return scale_t, std_t, scale_s, std_s


def _any(condition) -> bool:
    return bool(condition.any()) if isinstance(condition, torch.Tensor) else bool(condition)


def posterior_coefficients(scale_t, std_t, scale_s, std_s):
    """(c_x0, c_xt, variance) of q(x_s | x_t, x_0) = N(c_x0 x_0 + c_xt x_t, variance) for any
    two times s < t of a process x = scale x_0 + std eps: the one place the posterior is written.

    In y = x / scale the forward process adds independent noise, y_t = y_s + (sigma_t^2 -
    sigma_s^2)^(1/2) n, so y_s | y_t, x_0 ~ N(x_0 + r (y_t - x_0), sigma_s^2 (1 - r)) with
    r = sigma_s^2 / sigma_t^2. In x = scale y: c_xt = scale_s r / scale_t = std_s^2 scale_t /
    (scale_s std_t^2), c_x0 = scale_s - c_xt scale_t, variance = std_s^2 (1 - r), finite at
    scale_t = 0. For adjacent steps of a VP chain these are Ho et al. (2020), Eq. 6-7. Works on
    Python floats and on tensors alike.
    """
    # The samplers' step rules call this once per step with Python floats of a checked grid:
    # those pass one comparison chain; anything else gets the checks that name the argument.
    levels = (scale_t, std_t, scale_s, std_s)
    plain = all(type(v) is float for v in levels) and (
        0 <= scale_t <= MAX_LEVEL
        and 0 < std_t <= MAX_LEVEL
        and 0 < scale_s <= MAX_LEVEL
        and 0 <= std_s <= MAX_LEVEL
        and scale_s * std_t >= scale_t * std_s
    )
    if not plain:
        scale_t, std_t, scale_s, std_s = _posterior_levels(*levels)
    c_xt = std_s**2 * scale_t / (scale_s * std_t**2)
    r = (std_s * scale_t / (scale_s * std_t)) ** 2
    variance = std_s**2 * (1.0 - r)
    variance = variance.clamp(min=0.0) if isinstance(variance, torch.Tensor) else max(variance, 0.0)
    return scale_s - c_xt * scale_t, c_xt, variance


def q_posterior(
    schedule: Schedule, x0: torch.Tensor, x_t: torch.Tensor, t
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of q(x_{t-1} | x_t, x_0), the Gaussian that makes reversal tractable.

    Ho et al. (2020), Eq. 6-7:
        mean = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x_0
               + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t,
        beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t,
    computed by :func:`posterior_coefficients` (the same Gaussian, written for any two times).
    ``t`` in 1..T. The variance is returned per sample (shape of ``t``), in float64.
    """
    _check_schedule(schedule)
    _check_pair("x0", x0, "x_t", x_t)
    t = _times(schedule, t, x0, minimum=1)
    (scale_t, std_t), (scale_s, std_s) = schedule.marginal(t), schedule.marginal(t - 1)
    coef_x0, coef_xt, variance = posterior_coefficients(scale_t, std_t, scale_s, std_s)
    mean = per_sample(coef_x0, x0) * x0.double() + per_sample(coef_xt, x0) * x_t.double()
    return mean.to(x0.dtype), variance


def simulate_chain(
    schedule: Schedule, x0: torch.Tensor, generator: torch.Generator, keep: int | None = None
) -> torch.Tensor:
    """Run the Markov chain x_0 -> x_1 -> ... -> x_T step by step with :func:`q_step`.

    Returns the states at ``keep`` evenly spaced times including 0 and T (all T + 1 states if
    ``keep`` is None), stacked along a new first axis. Used to check the closed form
    :func:`q_sample` against the chain it summarises.
    """
    _check_schedule(schedule)
    check_float("x0", x0)
    times = _kept_times(schedule.T, keep)
    states, x = [x0] if 0 in times else [], x0
    for t in range(1, schedule.T + 1):
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        x = _step(schedule.betas[t - 1], x, noise)
        if t in times:
            states.append(x)
    return torch.stack(states)


def _kept_times(T: int, keep: int | None) -> set[int]:
    if keep is None:
        return set(range(T + 1))
    check_positive_int("keep", keep, minimum=2, maximum=T + 1)
    return {round(i * T / (keep - 1)) for i in range(keep)}


def simulate_sde(
    sde, x0: torch.Tensor, n_steps: int, generator: torch.Generator, t_end: float = 1.0
) -> torch.Tensor:
    """Euler-Maruyama for the forward SDE dx = f(x, t) dt + g(t) dw from t = 0 to ``t_end``.

    x_{k+1} = x_k + f(x_k, t_k) h + g(t_k) sqrt(h) z_k with h = t_end / n_steps. ``sde`` is a
    :class:`~diffusion_core.schedules.VPSDE` or :class:`~diffusion_core.schedules.VESDE`; the
    result should match ``sde.marginal(t_end)`` up to an O(h) error in the variance.
    """
    if not isinstance(sde, VPSDE | VESDE):
        raise TypeError(f"sde must be a VPSDE or a VESDE, got {type(sde).__name__}")
    check_float("x0", x0)
    check_positive_int("n_steps", n_steps)
    t_end = check_number("t_end", t_end, 0, 1, low_open=True)
    check_torch_generator("generator", generator)
    h = t_end / n_steps
    x = x0.double()
    for k in range(n_steps):
        t = torch.tensor(k * h, dtype=torch.float64)
        z = torch.randn(x.shape, generator=generator, dtype=torch.float64)
        x = x + sde.drift(x, t) * h + sde.diffusion(t) * math.sqrt(h) * z
    return x.to(x0.dtype)


def seed_article_diffuse(x0: torch.Tensor, steps: int, generator: torch.Generator) -> torch.Tensor:
    """The source article's forward loop, run exactly as its code is written.

    Its code (with the identity as its ``diffusion_model``) repeats, for t = 0, 1, ..., steps - 1:
        noise ~ N(0, I);  x <- x + sqrt(t) * noise.
    Nothing shrinks the signal, and the step variance t grows with t, so after n steps
    Var[x_n] = Var[x_0] + sum_{t<n} t = Var[x_0] + n (n - 1) / 2: a standard deviation of about
    707 after 1000 steps. Returns the whole trajectory, shape (steps + 1, *x0.shape).
    """
    check_float("x0", x0)
    check_positive_int("steps", steps)
    x, states = x0.double(), [x0.double()]
    for t in range(steps):
        noise = torch.randn(x.shape, generator=generator, dtype=torch.float64)
        x = x + math.sqrt(t) * noise
        states.append(x)
    return torch.stack(states)


def seed_article_reverse(x_T: torch.Tensor, steps: int, generator: torch.Generator) -> torch.Tensor:
    """The source article's reverse loop, run exactly as its code is written.

    With the identity as its ``reverse_diffusion_model`` it repeats, for t = steps - 1, ..., 0:
        noise ~ N(0, I);  x <- x - sqrt(t) * noise.
    Subtracting a fresh draw is adding one (-noise has the law of noise): the variance grows by
    another n (n - 1) / 2 instead of returning to the data's. Returns the trajectory, shape
    (steps + 1, *x_T.shape), in the loop's order.
    """
    check_float("x_T", x_T)
    check_positive_int("steps", steps)
    x, states = x_T.double(), [x_T.double()]
    for t in reversed(range(steps)):
        noise = torch.randn(x.shape, generator=generator, dtype=torch.float64)
        x = x - math.sqrt(t) * noise
        states.append(x)
    return torch.stack(states)


def seed_article_equation_diffuse(
    schedule: Schedule, x0: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """The source article's equations, read as a sampling rule, run for T steps.

    The article writes x_t = x_{t-1} + sqrt(t) Q_t(x_{t-1}) with
    Q_t(x) = N(x; mu_t, sigma_t^2) / sqrt(t), mu_t = beta_t x, sigma_t^2 = beta_t (1 - beta_{t-1}).
    Reading "N(...)" as a draw, the sqrt(t) cancels and each step is
        x_t = (1 + beta_t) x_{t-1} + sqrt(beta_t (1 - beta_{t-1})) z,   beta_0 = 0,
    which amplifies the signal by prod (1 + beta_t) instead of shrinking it. Returns all T + 1
    states; :func:`seed_article_equation_moments` gives their exact mean factor and variance.
    """
    _check_schedule(schedule)
    check_float("x0", x0)
    betas = schedule.betas
    betas_prev = torch.cat([betas.new_zeros(1), betas[:-1]])
    x, states = x0.double(), [x0.double()]
    for beta, beta_prev in zip(betas.tolist(), betas_prev.tolist(), strict=True):
        z = torch.randn(x.shape, generator=generator, dtype=torch.float64)
        x = (1 + beta) * x + math.sqrt(beta * (1 - beta_prev)) * z
        states.append(x)
    return torch.stack(states)


def seed_article_equation_moments(
    schedule: Schedule, data_variance: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact signal factor m_t and variance v_t of :func:`seed_article_equation_diffuse`.

    E[x_t | x_0] = m_t x_0 with m_t = prod_{s<=t} (1 + beta_s), and
    v_t = (1 + beta_t)^2 v_{t-1} + beta_t (1 - beta_{t-1}), v_0 = data_variance. Both (T + 1,).
    """
    _check_schedule(schedule)
    data_variance = check_number("data_variance", data_variance, 0, MAX_LEVEL)
    betas = schedule.betas
    betas_prev = torch.cat([betas.new_zeros(1), betas[:-1]])
    factor = torch.cat([betas.new_ones(1), torch.cumprod(1 + betas, 0)])
    variances = [torch.tensor(float(data_variance), dtype=torch.float64)]
    for beta, beta_prev in zip(betas, betas_prev, strict=True):
        variances.append((1 + beta) ** 2 * variances[-1] + beta * (1 - beta_prev))
    return factor, torch.stack(variances)


def seed_article_variance(steps, data_variance: float = 0.0) -> torch.Tensor:
    """Exact variance of :func:`seed_article_diffuse` after n steps: data_variance + n(n - 1)/2."""
    data_variance = check_number("data_variance", data_variance, 0, MAX_LEVEL)
    if isinstance(steps, int) and not isinstance(steps, bool):
        steps = check_positive_int("steps", steps, minimum=0)
    n = as_tensor("steps", steps, torch.float64)
    check_finite("steps", n)
    if bool((n < 0).any()) or bool((n > MAX_COUNT).any()) or not torch.equal(n, n.round()):
        raise ValueError(f"steps must be whole numbers in 0..{MAX_COUNT}")
    return data_variance + n * (n - 1) / 2
