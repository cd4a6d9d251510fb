"""Samplers: from noise to data along an explicit time grid.

Every sampler is a pure function with one signature,

    sampler(model, x, grid, generator=None, callback=None, **options) -> x

- ``model(x, point) -> x0_hat`` is a denoiser: ``point`` is the
  :class:`~diffusion_core.schedules.GridPoint` of the grid it is evaluated at (model time
  ``point.t``, and ``point.scale``, ``point.std`` of x_t = scale x0 + std eps as Python floats).
  :func:`diffusion_core.parameterization.as_denoiser` wraps a network ``net(x, t)`` that predicts
  eps, x0 or v; it needs no process of its own, because the grid already knows scale and std.
  ``x`` has the shape and dtype of the sampler's input.
- ``x`` is the state at the first grid point, drawn by the caller: :func:`prior_sample` gives
  x = std_0 * z, z ~ N(0, I).
- ``grid`` is a :class:`~diffusion_core.schedules.TimeGrid` from noisy to clean, built by
  :meth:`~diffusion_core.schedules.Process.grid` for any process.
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

One step rule per sampler. Each sampler's update is a linear combination of the state x_i, the
denoiser outputs D_i = D(x_i) and D_{i-1}, and fresh noise z_i, optionally followed by a
corrector that also uses D' = D(x_pred) at the predicted point (Heun, UniPC). Its coefficients
are computed once, before the loop, in float64 from the grid, by the sampler's *step rule*
(:func:`ddpm_steps`, :func:`ddim_steps`, ...: a list of :class:`Step`), and one loop,
:func:`run_steps`, applies them. The stability tools (:mod:`diffusion_core.stability`) obtain
every exact law by feeding the Gaussian denoiser through the same rule and the same loop, so a
sampler added here with a step rule is analysed there with no further code.
:func:`predictor_corrector` is the exception: its Langevin step size depends on the norm of the
state, so it is not affine and has no step rule.

The samplers think in the variance-exploding coordinates of Karras et al. (2022): y = x / scale
= x0 + sigma eps with sigma = std / scale. The multistep solvers step in half the log-SNR,
lambda / 2 = log(scale / std) = -log sigma (Lu et al.'s lambda; the book's lambda is the log-SNR
itself). The update coefficients are written so that they stay finite at sigma = inf (scale = 0).

Final-step policy. A grid from :meth:`~diffusion_core.schedules.Process.grid` ends at (scale,
std) = (1, 0), the clean sample. Every sampler takes the last step onto std = 0 as a first-order
step that returns the denoiser's output x0_hat at the previous grid point, without noise: DDPM
shows its mean "noiselessly" at the end (Ho et al. 2020, Sec. 3.3 and Alg. 2), and Heun's last
step is an Euler step (Karras et al. 2022, Alg. 1). A grid that ends at std > 0 is allowed too
(partial sampling); then there is no special last step.

Precision. The state is float64; the model sees x in the dtype of the input x and its output is
cast to float64; the result is returned in the input's dtype. So an fp16 network gets fp16
inputs while the schedule arithmetic, where the cancellations are, stays exact to float64.

No host synchronisation inside loops: the grid is read into Python floats once, when it is
built, and the loop has no ``.item()``, ``float(tensor)`` or ``if`` on a tensor value.

Zero terminal SNR. A grid may start at scale_0 = 0 (sigma_0 = inf, Lin et al. 2024; the
rectified-flow path always does). :func:`ddpm`, :func:`ddim`, :func:`euler`, :func:`heun`,
:func:`dpm_solver_pp_2m` and :func:`unipc` take a first-order first step whose coefficients stay
finite there (with a model that predicts x0 or v: eps-prediction cannot give x0 at zero SNR).
:func:`euler_maruyama` and :func:`predictor_corrector` raise ``ValueError``: the reverse SDE in
sigma would have to remove noise of infinite variance sigma_0^2 in its first step.

Guidance. :func:`classifier_free_guidance` turns a class-conditional model(x, point, labels) into
a model(x, point) that any sampler above takes; :func:`exact_conditional_denoiser` is the exact
conditional denoiser of a Gaussian mixture, its reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from diffusion_core._validation import (
    check_float,
    check_labels,
    check_number,
    check_positive_int,
    check_shape,
)
from diffusion_core.analytic import GaussianMixture
from diffusion_core.device import check_generator, generator_device, standard_normal
from diffusion_core.forward import posterior_coefficients
from diffusion_core.schedules import GridPoint, Process, TimeGrid

__all__ = [
    "unipc_3_steps",
    "unipc_3",
    "ipndm_steps",
    "ipndm",
    "dpm_solver_pp_3m_steps",
    "dpm_solver_pp_3m",
    "UNIPC_VARIANTS",
    "HIGH_ORDER_SAMPLERS",
    "MAX_CORRECTOR_STEPS",
    "MAX_FLOW_STEPS",
    "SAMPLERS",
    "apply_steps",
    "VARIANCES",
    "Step",
    "Update",
    "classifier_free_guidance",
    "ddim",
    "ddim_steps",
    "ddpm",
    "ddpm_steps",
    "dpm_solver_pp_2m",
    "dpm_solver_pp_2m_steps",
    "euler",
    "euler_maruyama",
    "euler_maruyama_steps",
    "euler_steps",
    "evaluations",
    "exact_conditional_denoiser",
    "flow_endpoint",
    "heun",
    "heun_steps",
    "predictor_corrector",
    "prior_sample",
    "run_steps",
    "step_rule",
    "unipc",
    "unipc_steps",
]

VARIANCES = ("beta_tilde", "beta")
MAX_CORRECTOR_STEPS = 100
MAX_FLOW_STEPS = 100_000
F64 = torch.float64


# ------------------------------------------------------------------------- step rules


class Update(NamedTuple):
    """The coefficients of one linear combination of a step,

        x_new = x x_i + d D_i + d_prev D_{i-1} + noise z_i + x_pred x_pred + d_pred D',

    where D_i = D(x_i) and D_{i-1} are the denoiser's outputs at this and the previous grid point,
    z_i ~ N(0, I) is fresh noise, and, in a corrector only, x_pred is the predicted point and
    D' = D(x_pred) at the next grid point. The higher-order multistep solvers add
    sum_k d_older[k] D_{i-2-k} + sum_k x_older[k] x_{i-1-k}: older denoiser outputs and
    states, which the loop keeps only as far back as some step asks for."""

    x: float = 0.0
    d: float = 0.0
    d_prev: float = 0.0
    noise: float = 0.0
    x_pred: float = 0.0
    d_pred: float = 0.0
    d_older: tuple[float, ...] = ()
    x_older: tuple[float, ...] = ()


class Step(NamedTuple):
    """One step of a sampler from grid point i to i + 1: the prediction x_pred = ``predict``
    (which may not use x_pred or D'), then, if ``correct`` is given, one more model call
    D' = D(x_pred) at point i + 1 and x_{i+1} = ``correct``. With ``reuse`` the next step takes
    D' as its D_{i+1} instead of evaluating the model at x_{i+1} (UniPC's corrector)."""

    predict: Update
    correct: Update | None = None
    reuse: bool = False


def step_rule(rule: Callable[..., list[Step]]) -> Callable:
    """Mark a sampler as the application of ``rule(grid, **options) -> list[Step]`` by
    :func:`run_steps`; the stability tools read the rule from the sampler's ``step_rule``."""

    if not callable(rule):
        raise TypeError(
            f"rule must be callable as rule(grid, **options), got {type(rule).__name__}"
        )

    def mark(sampler: Callable) -> Callable:
        sampler.step_rule = rule
        return sampler

    return mark


def run_steps(steps, model, x, grid, generator=None, callback=None) -> torch.Tensor:
    """Apply a step rule's coefficients (a list of :class:`Step`, one per grid step) with the
    model; the loop every affine sampler shares. Arguments as for every sampler."""
    dtype = _check_call(model, x, grid, generator, callback)
    if (
        not isinstance(steps, list | tuple)
        or len(steps) != grid.steps
        or not all(isinstance(step, Step) for step in steps)
    ):
        raise ValueError(f"steps must be a list of {grid.steps} Step, one per grid step")
    precision = torch.promote_types(dtype, torch.float32)

    def noise(like):
        return standard_normal(like.shape, generator, precision, like.device).to(F64)

    return apply_steps(steps, model, x.to(F64), grid.points, noise, callback, dtype).to(dtype)


def apply_steps(steps, model, x, points, noise, callback, dtype, shift=None):
    """The loop of :func:`run_steps`, unchecked, over a float64 state ``x`` and the grid's
    ``points``: ``noise(x)`` draws z_i, the model sees x in ``dtype``, and ``shift(i)``, if given,
    is added to the state after step i. :mod:`diffusion_core.stability` runs it on symbolic
    states to obtain a sampler's exact affine map."""
    d_prev = d_next = None
    depth_d, depth_x = _history_depth(steps)
    d_past, x_past = [], []  # D_{i-2}, D_{i-3}, ... and x_{i-1}, x_{i-2}, ...
    for i, step in enumerate(steps):
        d = _evaluate(model, x, points[i], dtype) if d_next is None else d_next
        z = noise(x) if step.predict.noise != 0 else None
        past = (d_past, x_past) if depth_d or depth_x else None
        predicted = _terms(step.predict, x, d, d_prev, z, past=past)
        if step.correct is None:
            x_new, d_next = _total(predicted), None
        else:
            x_new, d_next = _correct(
                step, model, points[i + 1], dtype, x, d, d_prev, predicted, past
            )
        if depth_d and d_prev is not None:
            d_past[:] = [d_prev, *d_past][:depth_d]
        if depth_x:
            x_past[:] = [x, *x_past][:depth_x]
        x, d_prev = x_new, d
        if shift is not None:
            x = x + shift(i)
        if callback is not None:
            callback(i, x, _x0_hat(d))
    return x


def _history_depth(steps) -> tuple[int, int]:
    """How many older denoiser outputs and states any step of ``steps`` reads."""
    updates = [u for step in steps for u in (step.predict, step.correct) if u is not None]
    return (
        max((len(u.d_older) for u in updates), default=0),
        max((len(u.x_older) for u in updates), default=0),
    )


def _correct(step: Step, model, point, dtype, x, d, d_prev, predicted, past=None) -> tuple:
    """A corrector: the prediction x_pred (the sum of the ``predicted`` terms), D' = D(x_pred) at
    ``point``, and x_{i+1} = ``step.correct``; returns x_{i+1} and D' if the next step reuses it.

    The combination is written with x_pred as it is, or, where that takes fewer tensor
    operations, with x_pred replaced by the predictor's own terms (the same sum in exact
    arithmetic): Heun's corrector on an eps network then takes three, not four.
    """
    x_pred = _total(predicted)
    d_pred = _evaluate(model, x_pred, point, dtype)
    terms = _terms(step.correct, x, d, d_prev, None, x_pred, d_pred, past)
    # x_pred is the loop's own temporary unless the model saw it itself or D' is kept for later
    target = x_pred if dtype != F64 and not step.reuse else None
    expanded, c_pred, in_place = [], 0.0, False
    for c, v in terms:
        if v is x_pred:
            c_pred, in_place = c, target is not None and c == 1
        else:
            expanded.append([c, v])
    for k, v in predicted:
        _add_term(expanded, c_pred * k, v)
    expanded = [term for term in expanded if term[0] != 0]
    d_next = d_pred if step.reuse else None
    if len(expanded) < len(terms) - in_place:
        return _total(expanded, target), d_next
    return _total(terms, target), d_next


def _evaluate(model, x: torch.Tensor, point: GridPoint, dtype: torch.dtype) -> tuple:
    """The denoiser's output at x as terms ((c, tensor), ...) that sum to x0_hat: ((1, x0_hat),)
    for any model, and ((a, x), (b, out)) for a
    :class:`~diffusion_core.parameterization.Denoiser`, whose conversion from its network's
    output is affine; the step then folds a and b into its own coefficients. (The conversion
    uses the float64 state x; the network sees x in ``dtype``.)"""
    affine = getattr(model, "affine", None)
    if affine is None:
        return ((1.0, _model_output(model, x, point, dtype)),)
    out, a, b = affine(x.to(dtype), point)
    return ((a, x), (b, out))


def _terms(u: Update, x, d, d_prev, z, x_pred=None, d_pred=None, past=None) -> list:
    """The linear combination ``u`` of x, the denoiser terms d, d_prev and d_pred (see
    :func:`_evaluate`), the noise z and x_pred, and ``past`` = (older denoiser terms, older
    states) where the update reads them, as a list of [coefficient, tensor] with one entry per
    distinct tensor (the coefficients of one tensor summed) and none that is zero."""
    terms = []
    if u.d != 0:
        for k, v in d:
            _add_term(terms, u.d * k, v)
    if u.x != 0:
        _add_term(terms, u.x, x)
    if u.d_prev != 0:
        for k, v in d_prev:
            _add_term(terms, u.d_prev * k, v)
    if u.noise != 0:
        _add_term(terms, u.noise, z)
    if u.x_pred != 0:
        _add_term(terms, u.x_pred, x_pred)
    if u.d_pred != 0:
        for k, v in d_pred:
            _add_term(terms, u.d_pred * k, v)
    if u.d_older:
        for c, older in zip(u.d_older, past[0][: len(u.d_older)], strict=True):
            for k, v in older:
                _add_term(terms, c * k, v)
    if u.x_older:
        for c, v in zip(u.x_older, past[1][: len(u.x_older)], strict=True):
            _add_term(terms, c, v)
    return [term for term in terms if term[0] != 0]


def _x0_hat(d: tuple) -> torch.Tensor:
    """x0_hat in float64 from its terms (see :func:`_evaluate`)."""
    return _total(_terms(Update(d=1.0), None, d, None, None))


def _add_term(terms: list, c: float, v: torch.Tensor) -> None:
    for term in terms:
        if term[1] is v:
            term[0] += c
            return
    terms.append([c, v])


def _total(terms: list, target: torch.Tensor | None = None) -> torch.Tensor:
    """The float64 sum of the terms: one multiply, then one fused multiply-add per further
    tensor. The sum starts from ``target`` if it is one of the terms, else from a float64
    tensor, so that it is float64. ``target``, a float64 temporary of the loop's own that
    nothing else holds, receives the sum in its memory, which saves an allocation."""
    first = None
    for j, (_, v) in enumerate(terms):
        if v is target:
            first = j
            break
        if first is None and v.dtype == F64:
            first = j
    if first is None:
        first, (c, v) = 0, terms[0]
        out = v.to(F64).mul_(c)
    else:
        c, v = terms[first]
        if v is target:
            out = v if c == 1 else v.mul_(c)
        elif target is not None:
            out = torch.mul(v, c, out=target)
        else:
            out = v.mul(c)
    for j, (c, v) in enumerate(terms):
        if j != first:
            out.add_(v, alpha=c)
    return out


def _check_grid(grid) -> None:
    """A step rule's grid must be a TimeGrid (checked before any of it is read)."""
    if not isinstance(grid, TimeGrid):
        raise TypeError(f"grid must be a TimeGrid, got {type(grid).__name__}")


def evaluations(sampler: Callable, grid: TimeGrid, **options) -> int:
    """The number of model calls ``sampler`` makes on ``grid``: the cost of a budget, counted by
    running it on one sample with a counting stand-in for the model (Heun and the
    predictor-corrector make two calls per step but the last; UniPC one per step)."""
    if not callable(sampler):
        raise TypeError(f"sampler must be a sampler function, got {type(sampler).__name__}")
    calls = []

    def counting(x, point):
        calls.append(point)
        return torch.zeros_like(x)

    x = torch.ones(1, dtype=F64)  # any start: only the number of calls is read
    sampler(counting, x, grid, torch.Generator().manual_seed(0), **options)
    return len(calls)


# ------------------------------------------------------------------------ the samplers


def ddpm_steps(grid: TimeGrid, variance: str = "beta_tilde") -> list[Step]:
    """Ancestral sampling, x_s ~ q(x_s | x_t, x0 = x0_hat) (Ho et al. 2020, Alg. 2): x_s = c_x0 D
    + c_xt x_t + n z with the posterior of :func:`diffusion_core.forward.posterior_coefficients`.
    The noise variance n^2 is ``"beta_tilde"``, the posterior's own, or ``"beta"``, the forward
    step's std_t^2 - (scale_t std_s / scale_s)^2 (= beta_t for adjacent VP steps); none onto
    std_s = 0."""
    _check_grid(grid)
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
    a, s = grid.scale.tolist(), grid.std.tolist()
    steps = []
    for i in range(grid.steps):
        c_x0, c_xt, beta_tilde = posterior_coefficients(a[i], s[i], a[i + 1], s[i + 1])
        beta = s[i] ** 2 - (a[i] * s[i + 1] / a[i + 1]) ** 2
        n = 0.0 if s[i + 1] == 0 else math.sqrt(beta_tilde if variance == "beta_tilde" else beta)
        steps.append(Step(Update(x=c_xt, d=c_x0, noise=n)))
    return steps


@step_rule(ddpm_steps)
def ddpm(model, x, grid, generator=None, callback=None, variance="beta_tilde"):
    """Ancestral sampling: x_s ~ q(x_s | x_t, x0 = x0_hat) at each step (Ho et al. 2020, Alg. 2).

    The mean is the posterior mean; the variance is ``"beta_tilde"``, the posterior's own
    std_s^2 (1 - r) (Ho et al.'s sigma_t^2 = beta_tilde_t), or ``"beta"``, the larger variance
    std_t^2 - (scale_t std_s / scale_s)^2 of the forward step q(x_t | x_s), which is
    1 - scale_t^2 / scale_s^2 = beta_t for adjacent VP steps (sigma_t^2 = beta_t). Both are the
    two extremes of Ho et al. (2020), Sec. 3.2. The last step onto std = 0 adds no noise. Step
    rule: :func:`ddpm_steps`.
    """
    return run_steps(ddpm_steps(grid, variance), model, x, grid, generator, callback)


def ddim_steps(grid: TimeGrid, eta: float = 0.0) -> list[Step]:
    """DDIM's step gathered by x and x0_hat: x_s = (c_eps / std_t) x_t + (scale_s - c_eps
    scale_t / std_t) x0_hat + sigma_eta z, with sigma_eta = eta beta_tilde^(1/2) and c_eps =
    (std_s^2 - sigma_eta^2)^(1/2) (Song, Meng & Ermon 2021, Eq. 12 and 16)."""
    _check_grid(grid)
    eta = check_number("eta", eta, 0.0, 1.0)
    a, s = grid.scale.tolist(), grid.std.tolist()
    steps = []
    for i in range(grid.steps):
        beta_tilde = posterior_coefficients(a[i], s[i], a[i + 1], s[i + 1])[2]
        sigma_eta = eta * math.sqrt(beta_tilde)
        c_eps = s[i + 1] if sigma_eta == 0 else math.sqrt(max(s[i + 1] ** 2 - sigma_eta**2, 0.0))
        steps.append(
            Step(Update(x=c_eps / s[i], d=a[i + 1] - a[i] * c_eps / s[i], noise=sigma_eta))
        )
    return steps


@step_rule(ddim_steps)
def ddim(model, x, grid, generator=None, callback=None, eta=0.0):
    """DDIM (Song, Meng & Ermon 2021, Eq. 12), in the library's notation:

        x_s = scale_s x0_hat + (std_s^2 - sigma_eta^2)^(1/2) eps_hat + sigma_eta z,
        eps_hat = (x_t - scale_t x0_hat) / std_t,

    with sigma_eta = eta beta_tilde^(1/2) (their Eq. 16). ``eta = 0`` is deterministic (and equal
    to :func:`euler`, to the last bit); ``eta = 1`` is :func:`ddpm` with the beta_tilde variance.
    Step rule: :func:`ddim_steps`.
    """
    return run_steps(ddim_steps(grid, eta), model, x, grid, generator, callback)


def euler_steps(grid: TimeGrid) -> list[Step]:
    """Euler's step in sigma written in x: with y = x / scale, d = (y - D) / sigma and y' = y +
    (sigma' - sigma) d = D + (sigma' / sigma) (y - D), multiplying by scale' gives
    x' = (std' / std) x + (scale' - scale std' / std) D, which is finite at sigma = inf."""
    _check_grid(grid)
    a, s = grid.scale.tolist(), grid.std.tolist()
    return [
        Step(Update(x=s[i + 1] / s[i], d=a[i + 1] - a[i] * s[i + 1] / s[i]))
        for i in range(grid.steps)
    ]


@step_rule(euler_steps)
def euler(model, x, grid, generator=None, callback=None):
    """Euler's method on the probability-flow ODE dy/dsigma = (y - D(y, sigma)) / sigma, y = x /
    scale (Karras et al. 2022, Eq. 4 and Alg. 1 without its second-order correction).

    Identical to :func:`ddim` with eta = 0 (Karras et al. 2022, Sec. 3; Song et al. 2021a).
    Step rule: :func:`euler_steps`.
    """
    return run_steps(euler_steps(grid), model, x, grid, generator, callback)


def heun_steps(grid: TimeGrid) -> list[Step]:
    """Euler's step to x_E, then x' = x_E + r (D - D'), r = scale' (sigma' - sigma) / (2 sigma'),
    with D' the denoiser at the Euler point; an Euler step alone onto sigma' = 0 and from
    sigma = inf (derivation in :func:`heun`)."""
    steps = euler_steps(grid)
    sigma, a = [point.sigma for point in grid.points], grid.scale.tolist()
    for i in range(grid.steps):
        if math.isfinite(sigma[i]) and sigma[i + 1] > 0:
            r = a[i + 1] * (sigma[i + 1] - sigma[i]) / (2 * sigma[i + 1])
            steps[i] = Step(steps[i].predict, Update(x_pred=1.0, d=r, d_pred=-r))
    return steps


@step_rule(heun_steps)
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

    Euler's step plus a correction by the change of the denoiser's output along it. Step rule:
    :func:`heun_steps`.
    """
    return run_steps(heun_steps(grid), model, x, grid, generator, callback)


def euler_maruyama_steps(grid: TimeGrid) -> list[Step]:
    """One Euler-Maruyama step of the reverse SDE in y = x / scale from sigma to sigma':
    y' = y + (sigma^2 - sigma'^2) score + (sigma^2 - sigma'^2)^(1/2) z with score = (D - y) /
    sigma^2, that is y' = rho y + (1 - rho) D + (sigma^2 - sigma'^2)^(1/2) z, rho = sigma'^2 /
    sigma^2, and x' = scale' y'; onto sigma' = 0 it returns D (the final-step policy). Raises
    ``ValueError`` at zero terminal SNR."""
    _check_grid(grid)
    _check_finite_sigma(grid, "euler_maruyama")
    a, sigma = grid.scale.tolist(), grid.sigma.tolist()
    steps = []
    for i in range(grid.steps):
        if sigma[i + 1] == 0:
            steps.append(Step(Update(d=a[i + 1])))
            continue
        rho = sigma[i + 1] ** 2 / sigma[i] ** 2
        n = a[i + 1] * math.sqrt(sigma[i] ** 2 - sigma[i + 1] ** 2)
        steps.append(Step(Update(x=a[i + 1] * rho / a[i], d=a[i + 1] * (1 - rho), noise=n)))
    return steps


@step_rule(euler_maruyama_steps)
def euler_maruyama(model, x, grid, generator=None, callback=None):
    """Euler-Maruyama on the reverse-time SDE (Anderson 1982; Song et al. 2021, Eq. 6).

    In y = x / scale the forward process is dy = (d sigma^2 / dt)^(1/2) dw for every schedule,
    whose reversal is dy = -(d sigma^2 / dt) score dt + (d sigma^2 / dt)^(1/2) dw_bar; one step
    from sigma to sigma' is Song et al.'s reverse-diffusion predictor (their Eq. 47). Needs a
    finite sigma_0 (raises ``ValueError`` at zero terminal SNR). Step rule:
    :func:`euler_maruyama_steps`, which is also the predictor of :func:`predictor_corrector`.

    Its error is of first order and always widens the samples: on Gaussian data, a step from the
    exact marginal of variance v (in y) to v' gives v' (1 + (v - v')^2 / (v v')), so the output
    is too wide at every budget, by a relative amount that falls like 1 / steps on a fine grid
    and explodes where one step divides sigma by a large factor (see
    :func:`predictor_corrector`). Prefer many steps of moderate ratio sigma' / sigma.
    """
    return run_steps(euler_maruyama_steps(grid), model, x, grid, generator, callback)


def predictor_corrector(model, x, grid, generator=None, callback=None, corrector_steps=1, snr=0.16):
    """Reverse-diffusion predictor plus Langevin corrector (Song et al. 2021, Alg. 4 and 5).

    After each predictor step (:func:`euler_maruyama_steps`) to a noise level sigma' > 0, run
    ``corrector_steps`` Langevin steps y <- y + e g + (2 e)^(1/2) z at sigma', with score
    g = (D(x, t') - y) / sigma'^2 and step size e = 2 (snr |z| / |g|)^2, so that the ratio of
    the drift to the noise in each step is the target ``snr``. The norms |z| and |g| are
    root-mean-square over the batch (Song et al.'s code averages them over the batch too):
    the per-sample norms of a low-dimensional vector do not concentrate, and a sample that sits
    where the score is small would take a huge step. In y = x / scale this one rule serves VE
    and VP alike (a Langevin step with this step size is unchanged by rescaling x; Alg. 5's
    factor alpha_i = 1 - beta_i of the VP code, within 2 % of 1 on the DDPM schedule, is left
    out). The corrector runs at the level the predictor reached, as in Song et al.'s loop (their
    corrector at t_i precedes the predictor from t_i), and none runs on the clean last point,
    whose step returns the denoiser's output (the mean of their final predictor step).

    What the method does, exactly, on Gaussian data N(mu, s_d^2) (Chapter 3 measures it):

    - The predictor is first order in the step. From the exact marginal at sigma, one step
      gives the variance v' (1 + (v - v')^2 / (v v')) in place of v' (v = s_d^2 + sigma^2,
      v' = s_d^2 + sigma'^2, in y): always too wide, and by about (sigma / sigma')^2 where
      sigma' << sigma. So a grid with a few large steps, such as a Karras grid from the DDPM
      schedule's sigma_max = 157 with 3 steps, returns data of std 0.5 with a variance 145
      times too large, and the corrector cannot repair it: its step e shrinks as the spread
      grows.
    - A fixed-snr corrector has a bias of its own: at a level where the state's variance is V,
      e = 2 snr^2 v^2 / V (for a large batch), and the Langevin steps settle at V = (1 + snr^2)
      v, not v. With many steps the output variance tends to (1 + snr^2) s_d^2 (+2.6 % at the
      default snr = 0.16) while Euler-Maruyama's bias falls like 1 / steps: more steps stop
      helping, and with 500 steps of the DDPM schedule the output is wider than
      Euler-Maruyama's with as many steps (variance +2.4 % against +1.3 %).

    Use it with many small steps (e.g. a trailing grid of 100 or more steps) and a small
    ``snr``; ``corrector_steps`` is at most :data:`MAX_CORRECTOR_STEPS` (beyond a few the
    Langevin chain has settled at its biased variance) and ``snr`` lies in [0, 1] (at snr = 1
    the variance doubles). Needs a finite sigma_0. Because the step size is set by the whole
    batch (it depends on the norm of the state), the sampler is not affine in x and has no step
    rule; and a sample's path depends on the batch it is drawn in even with one generator per
    sample, unlike the other stochastic samplers.
    """
    dtype = _check_call(model, x, grid, generator, callback)
    corrector_steps = check_positive_int(
        "corrector_steps", corrector_steps, minimum=0, maximum=MAX_CORRECTOR_STEPS
    )
    snr = check_number("snr", snr, 0.0, 1.0)
    predictor, points = euler_maruyama_steps(grid), grid.points
    precision = torch.promote_types(dtype, torch.float32)

    def noise(like):
        return standard_normal(like.shape, generator, precision, like.device).to(F64)

    x = x.to(F64)
    for i, step in enumerate(predictor):
        d = _evaluate(model, x, points[i], dtype)
        z = noise(x) if step.predict.noise != 0 else None
        x = _total(_terms(step.predict, x, d, None, z))
        a, sigma = points[i + 1].scale, points[i + 1].sigma
        for _ in range(corrector_steps if points[i + 1].std > 0 else 0):
            y = x / a
            g = (_denoise(model, x, points[i + 1], dtype) - y) / sigma**2
            z = noise(y)
            g_norm = _rms_norm(g)
            # Where the score vanishes for the whole batch there is no drift to balance: no move
            # (not 0 / 0).
            e = torch.where(g_norm > 0, 2 * (snr * _rms_norm(z) / g_norm) ** 2, 0.0)
            x = a * (y + e * g + (2 * e).sqrt() * z)
        if callback is not None:
            callback(i, x, _x0_hat(d))
    return x.to(dtype)


def _rms_norm(v: torch.Tensor) -> torch.Tensor:
    """Root-mean-square over the batch of the Euclidean norm of each sample (a 0-d tensor)."""
    return v.reshape(v.shape[0], -1).square().sum(dim=1).mean().sqrt()


def dpm_solver_pp_2m_steps(grid: TimeGrid) -> list[Step]:
    """Per step x_{i+1} = c_x x_i + c_0 x0_hat_i + c_1 x0_hat_{i-1}: c_x = std_{i+1} / std_i,
    c_0 = -scale_{i+1} expm1(-h_i) (1 + w_i), c_1 = scale_{i+1} expm1(-h_i) w_i with
    w_i = 1 / (2 r_i) = h_i / (2 h_{i-1}) on second-order steps and 0 on first-order ones."""
    _check_grid(grid)
    s, a, lam = grid.std.tolist(), grid.scale.tolist(), _half_log_snr(grid)
    h = [lam[i + 1] - lam[i] for i in range(grid.steps)]
    steps = []
    for i in range(grid.steps):
        w = h[i] / (2 * h[i - 1]) if _second_order_step(i, h, s) else 0.0
        c_d = -a[i + 1] * math.expm1(-h[i])  # the first-order (DDIM) coefficient of x0_hat
        steps.append(Step(Update(x=s[i + 1] / s[i], d=c_d * (1 + w), d_prev=-c_d * w)))
    return steps


def _half_log_snr(grid: TimeGrid) -> list[float]:
    """log(scale / std) = lambda / 2 at every grid point: the time variable of DPM-Solver and
    UniPC (Lu et al. 2022; their lambda)."""
    return (grid.scale.log() - grid.std.log()).tolist()


def _second_order_step(i: int, h: list[float], s: list[float]) -> bool:
    """Whether multistep step i uses the previous output: not on the first step, after a step of
    infinite h (from zero SNR) or on the last step onto std = 0."""
    return i > 0 and math.isfinite(h[i - 1]) and s[i + 1] > 0


@step_rule(dpm_solver_pp_2m_steps)
def dpm_solver_pp_2m(model, x, grid, generator=None, callback=None):
    """DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2): a multistep solver of the probability-flow
    ODE in lambda / 2 = log(scale / std), with the data prediction D integrated exactly against the
    linear part:

        x_i = (std_i / std_{i-1}) x_{i-1} - scale_i (exp(-h_i) - 1) D_i,
        D_i = (1 + 1 / (2 r_i)) x0_hat_{i-1} - 1 / (2 r_i) x0_hat_{i-2},

    with h_i = (lambda_i - lambda_{i-1}) / 2 and r_i = h_{i-1} / h_i.

    First order (D_i = x0_hat_{i-1}, which is DDIM) on the first step, after a step of infinite
    h (from zero SNR) and on the last step onto std = 0. Step rule: :func:`dpm_solver_pp_2m_steps`.
    """
    return run_steps(dpm_solver_pp_2m_steps(grid), model, x, grid, generator, callback)


def unipc_steps(grid: TimeGrid) -> list[Step]:
    """The predictor of :func:`dpm_solver_pp_2m_steps`, then the corrector UniC with the model
    evaluation at the predicted point, which the next step reuses: x_{i+1} = c_x x_i + c_0 m_i +
    c_1 m_{i-1} + c_new m_{i+1} (coefficients in :func:`unipc`). Neither the last point (std = 0,
    no model call there) nor a point reached from zero SNR (infinite h) is corrected."""
    _check_grid(grid)
    s, a, lam = grid.std.tolist(), grid.scale.tolist(), _half_log_snr(grid)
    h = [lam[i + 1] - lam[i] for i in range(grid.steps)]
    steps = []
    for i, predictor in enumerate(dpm_solver_pp_2m_steps(grid)):
        if s[i + 1] == 0 or not math.isfinite(h[i]):
            steps.append(predictor)
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
        corrector = Update(
            x=s[i + 1] / s[i], d=c_d * (1 - c_1 - rho_c), d_prev=c_d * c_1, d_pred=c_d * rho_c
        )
        steps.append(Step(predictor.predict, corrector, reuse=True))
    return steps


@step_rule(unipc_steps)
def unipc(model, x, grid, generator=None, callback=None):
    """UniPC (Zhao et al. 2023) of order 2 with B(h) = e^h - 1 ("bh2"), on the data prediction:
    the predictor UniP-2 is DPM-Solver++(2M) (:func:`dpm_solver_pp_2m`, the same step), and the
    corrector UniC refines each new point with the model evaluation made there, which the next
    step needs anyway. No extra evaluations, and one order more: 3 against 2 (Zhao et al., Theorem
    3.3; the library's tests measure both on a flow known in closed form).

    Step i from x_i to x_{i+1} (h = (lambda_{i+1} - lambda_i) / 2, m_j = x0_hat_j): after the
    model has been evaluated at the predicted x_{i+1}, giving m_{i+1}, the corrector recomputes

        x_{i+1} = (std_{i+1} / std_i) x_i
                  - scale_{i+1} expm1(-h) [m_i + rho_1 D_1 + rho_c (m_{i+1} - m_i)],

    with D_1 = (m_{i-1} - m_i) / r, r = -h_{i-1} / h (h_{i-1} the previous step's), and
    (rho_1, rho_c) solving rho_1 + rho_c = b_1, r rho_1 + rho_c = b_2 where b_k = k!
    phi_{k+1}(-h) / phi_1(-h) with phi_1(u) = expm1(u), phi_{k+1}(u) = phi_k(u) / u - 1 / k!
    (Zhao et al., Alg. 2 and Eq. 14).
    After a first-order predictor step (the first) the corrector is the trapezoid rho_c = 1/2
    (their choice for UniC-1). The next step starts from the corrected point but reuses the
    m_{i+1} of the predicted one. Step rule: :func:`unipc_steps`.
    """
    return run_steps(unipc_steps(grid), model, x, grid, generator, callback)


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


# ------------------------------------------------------- higher-order multistep solvers


def _phi(k: int, z: float) -> float:
    """phi_k(z) = sum_{n >= 0} z^n / (n + k)!, the weights of exponential integrators
    (phi_1(z) = expm1(z) / z, phi_{k+1}(z) = (phi_k(z) - 1 / k!) / z; phi_k(0) = 1 / k!).
    Summed as the series where |z| < 1, where the recurrence would cancel (30 terms leave
    less than 1e-30 relative), and by the recurrence elsewhere."""
    if abs(z) < 1:
        term, total = 1 / math.factorial(k), 0.0
        for n in range(30):
            total += term
            term *= z / (n + k + 1)
        return total
    value = math.expm1(z) / z
    for j in range(1, k):
        value = (value - 1 / math.factorial(j)) / z
    return value


def _interpolation_weights(nodes: list[float], moments: list[float]) -> list[float]:
    """The weights w_j with sum_j w_j v_j^k = moments[k] for k < len(nodes): integrating the
    polynomial through the values at the ``nodes`` v_j against a weight whose moments are
    given (exact for every polynomial of degree < len(nodes))."""
    q = len(nodes)
    matrix = torch.tensor([[v**k for v in nodes] for k in range(q)], dtype=F64)
    return torch.linalg.solve(matrix, torch.tensor(moments, dtype=F64)).tolist()


def _multistep_order(i: int, order: int, finite_from: int, steps: int, clean_end: bool) -> int:
    """The order of step i: warm-up from the first point of finite SNR (``finite_from``),
    first order on the last step onto std = 0 and at most (steps - i) before it (Lu et al.
    2022b, "lower order final"; Zhao et al. 2023)."""
    q = min(order, i - finite_from + 1)
    return max(1, min(q, steps - i) if clean_end else q)


def dpm_solver_pp_3m_steps(grid: TimeGrid) -> list[Step]:
    """Step i of order q (3, lower while warming up and on the last two steps of a grid that
    ends at std = 0): x_{i+1} = (std_{i+1} / std_i) x_i + scale_{i+1} sum_j w_j m_{i-j},
    j < q, with the weights that integrate the polynomial through (lambda_{i-j}, m_{i-j})
    exactly against e^{-(lambda_{i+1} - lambda)} (derivation in :func:`dpm_solver_pp_3m`)."""
    _check_grid(grid)
    return _exponential_multistep_steps(grid, 3)


def _multistep_plan(grid: TimeGrid, order: int):
    """The lists std, scale and lambda / 2 of the grid's points, and (i, h_i, q_i) for every
    step: its index, its length in lambda / 2 and its order (:func:`_multistep_order`)."""
    s, a, lam = grid.std.tolist(), grid.scale.tolist(), _half_log_snr(grid)
    K, finite_from = grid.steps, 1 if a[0] == 0 else 0
    plan = [
        (i, lam[i + 1] - lam[i], _multistep_order(i, order, finite_from, K, s[-1] == 0))
        for i in range(K)
    ]
    return s, a, lam, plan


def _exponential_multistep_steps(grid: TimeGrid, order: int) -> list[Step]:
    s, a, lam, plan = _multistep_plan(grid, order)
    steps = []
    for i, h, q in plan:
        if q == 1 or not math.isfinite(h):
            w = [-math.expm1(-h)]  # DDIM's step, finite from zero SNR and onto std = 0
        else:
            nodes = [(lam[i - j] - lam[i]) / h for j in range(q)]
            # moments of u / h under e^{-(h - u)} du on [0, h]: h k! phi_{k+1}(-h)
            moments = [h * math.factorial(k) * _phi(k + 1, -h) for k in range(q)]
            w = _interpolation_weights(nodes, moments)
        c = [a[i + 1] * wj for wj in w]
        update = Update(
            x=s[i + 1] / s[i],
            d=c[0],
            d_prev=c[1] if q > 1 else 0.0,
            d_older=tuple(c[2:]),
        )
        steps.append(Step(update))
    return steps


@step_rule(dpm_solver_pp_3m_steps)
def dpm_solver_pp_3m(model, x, grid, generator=None, callback=None):
    """DPM-Solver++(3M) (Lu et al. 2022b, Sec. 4 and App. B), third order with three model
    outputs and one evaluation per step.

    The probability-flow ODE in lambda / 2 = log(scale / std) has the exact step
    (Lu et al. 2022b, Eq. 9)

        x_{i+1} = (std_{i+1} / std_i) x_i
                  + scale_{i+1} int_{lambda_i}^{lambda_{i+1}} e^{-(lambda_{i+1} - lambda)}
                    x0_hat(lambda) d lambda.

    The multistep solver of order q replaces x0_hat(lambda) by the polynomial of degree q - 1
    through the last q outputs m_i, m_{i-1}, ... and integrates it exactly; the moments of the
    weight are h^{k+1} k! phi_{k+1}(-h) (:func:`_phi`). So the step is exact whenever x0_hat
    is a polynomial of degree < q in lambda, its local error is O(h^{q+1}), and the method is
    of order q. (The quadratic term of the published code carries half this weight; here it
    is integrated exactly.) Warm-up: orders 1 and 2 on the first two steps (after zero SNR,
    from the first finite point); on a grid that ends at std = 0, order 2 on the step before
    the last and the first-order last step (x0_hat) of the library's final-step policy.
    Order 2 integrates the line through m_i and m_{i-1}, which differs from
    :func:`dpm_solver_pp_2m`'s midpoint rule by O(h^3). Step rule:
    :func:`dpm_solver_pp_3m_steps`.
    """
    return run_steps(dpm_solver_pp_3m_steps(grid), model, x, grid, generator, callback)


UNIPC_VARIANTS = ("bh1", "bh2")


def unipc_3_steps(grid: TimeGrid, variant: str = "bh2", order: int = 3) -> list[Step]:
    """UniP of order q then UniC (Zhao et al. 2023, Alg. 2 and 3): with r_k = (lambda_{i-k}
    - lambda_i) / h, D_k = (m_{i-k} - m_i) / r_k, B(h) = h ("bh1") or expm1(h) ("bh2"), the
    predictor x_pred = (std_{i+1} / std_i) x_i - scale_{i+1} [expm1(-h) m_i + B(-h) sum_k
    rho^p_k D_k] and the corrector, with the new output m_{i+1} as the node r = 1, x_{i+1} =
    the same with sum_k rho^c_k D_k + rho^c_q (m_{i+1} - m_i). The rho solve R rho = b, R_kj =
    r_j^(k-1), b_k = k! (-h) phi_{k+1}(-h) / B(-h) (R and b without their last row and column
    for the predictor; rho^p = 1/2 at q = 2 and rho^c = 1/2 at q = 1, their choices)."""
    _check_grid(grid)
    if variant not in UNIPC_VARIANTS:
        raise ValueError(f"variant must be one of {UNIPC_VARIANTS}, got {variant!r}")
    order = check_positive_int("order", order, minimum=1, maximum=3)
    s, a, lam, plan = _multistep_plan(grid, order)
    steps = []
    for i, h, q in plan:
        c_d = -a[i + 1] * math.expm1(-h)  # the first-order coefficient of m_i
        if q == 1 and (s[i + 1] == 0 or not math.isfinite(h)):
            steps.append(Step(Update(x=s[i + 1] / s[i], d=c_d)))  # no corrector
            continue
        hh = -h
        b_h = hh if variant == "bh1" else math.expm1(hh)
        r = [(lam[i - k] - lam[i]) / h for k in range(1, q)] + [1.0]
        b = [math.factorial(k) * hh * _phi(k + 1, hh) / b_h for k in range(1, q + 1)]
        matrix = [[rj ** (k - 1) for rj in r] for k in range(1, q + 1)]
        if q == 1:
            rho_p, rho_c = [], [0.5]
        else:
            rho_p = [0.5] if q == 2 else _solve([row[:-1] for row in matrix[:-1]], b[:-1])
            rho_c = _solve(matrix, b)
        scale_b = -a[i + 1] * b_h  # coefficient of sum rho_k D_k

        c_x = s[i + 1] / s[i]
        predictor = _unipc_update(c_x, c_d, scale_b, r, rho_p, 0.0)
        corrector = _unipc_update(c_x, c_d, scale_b, r, rho_c[:-1], rho_c[-1])
        steps.append(Step(predictor, corrector, reuse=True))
    return steps


def _unipc_update(c_x, c_d, scale_b, r, rho, new) -> Update:
    """x_{i+1} = c_x x_i + c_d m_i + scale_b [sum_k rho_k (m_{i-k} - m_i) / r_k
    + new (m_{i+1} - m_i)] as an :class:`Update`."""
    older = [scale_b * rho[k] / r[k] for k in range(len(rho))]
    return Update(
        x=c_x,
        d=c_d - sum(older) - scale_b * new,
        d_prev=older[0] if older else 0.0,
        d_older=tuple(older[1:]),
        d_pred=scale_b * new,
    )


def _solve(matrix: list[list[float]], rhs: list[float]) -> list[float]:
    return torch.linalg.solve(
        torch.tensor(matrix, dtype=F64), torch.tensor(rhs, dtype=F64)
    ).tolist()


@step_rule(unipc_3_steps)
def unipc_3(model, x, grid, generator=None, callback=None, variant="bh2", order=3):
    """UniPC of order 3 (Zhao et al. 2023): the predictor UniP-3, a multistep method on the
    data prediction that uses m_i, m_{i-1}, m_{i-2}, and the corrector UniC, which refines
    the predicted point with the model output made there (the next step reuses that output,
    so no evaluation is added) and raises the order by one (their Theorem 3.3). ``variant``
    chooses B(h): "bh2" (expm1(h), their recommendation for few steps with guidance-free
    models) or "bh1" (h). ``order`` (1..3) caps the predictor's order; at 2 this is
    :func:`unipc`'s step, up to rounding. Warm-up and final steps as in
    :func:`dpm_solver_pp_3m`; the last step onto std = 0 is x0_hat, without corrector.
    Coefficients in :func:`unipc_3_steps`. Step rule: :func:`unipc_3_steps`.
    """
    steps = unipc_3_steps(grid, variant, order)
    return run_steps(steps, model, x, grid, generator, callback)


def ipndm_steps(grid: TimeGrid, order: int = 4) -> list[Step]:
    """Adams-Bashforth of order q (4, lower while warming up) on dy/dsigma = eps_hat in
    y = x / scale: y_{i+1} = y_i + sum_j W_j eps_hat_{i-j} with eps_hat_j = (y_j - m_j) /
    sigma_j and W_j the integrals over [sigma_i, sigma_{i+1}] of the Lagrange polynomials
    through sigma_{i-j}, written in x (coefficients of x_{i-j} and m_{i-j})."""
    _check_grid(grid)
    order = check_positive_int("order", order, minimum=1, maximum=4)
    a, s, sigma = grid.scale.tolist(), grid.std.tolist(), [p.sigma for p in grid.points]
    K, finite_from = grid.steps, 1 if a[0] == 0 else 0
    steps = []
    for i in range(K):
        q = max(1, min(order, i - finite_from + 1))
        if q == 1 or sigma[i + 1] == 0:
            steps.append(euler_steps(grid[i : i + 2])[0])
            continue
        delta = sigma[i + 1] - sigma[i]
        nodes = [(sigma[i - j] - sigma[i]) / delta for j in range(q)]
        w = [delta * wj for wj in _interpolation_weights(nodes, [1 / (k + 1) for k in range(q)])]
        # eps_hat_j = x_j / std_j - m_j / sigma_j; x_{i+1} = scale_{i+1} y_{i+1}
        c_x = [a[i + 1] * w[j] / s[i - j] for j in range(q)]
        c_d = [-a[i + 1] * w[j] / sigma[i - j] for j in range(q)]
        update = Update(
            x=a[i + 1] / a[i] + c_x[0],
            d=c_d[0],
            d_prev=c_d[1],
            d_older=tuple(c_d[2:]),
            x_older=tuple(c_x[1:]),
        )
        steps.append(Step(update))
    return steps


@step_rule(ipndm_steps)
def ipndm(model, x, grid, generator=None, callback=None, order=4):
    """iPNDM (Zhang & Chen 2023, "improved PNDM"): the linear multistep method of
    Adams-Bashforth on the probability-flow ODE in the noise level, dy/dsigma = eps_hat(y,
    sigma) = (y - x0_hat) / sigma with y = x / scale, of order 4 with lower-order warm-up
    (Euler, then orders 2 and 3 with the outputs at hand). One evaluation per step.

    Zhang and Chen give the fixed coefficients of uniform steps, (55, -59, 37, -9) / 24 at
    order 4; here they are those of the grid's own steps (the integral of the polynomial
    through the last q slopes, exact for every slope that is a polynomial of degree < q in
    sigma), which are theirs on a grid uniform in sigma and keep the order on any other.
    ``order`` (1..4) caps it. The last step onto sigma = 0 is Euler's (x0_hat). Step rule:
    :func:`ipndm_steps`.
    """
    return run_steps(ipndm_steps(grid, order), model, x, grid, generator, callback)


HIGH_ORDER_SAMPLERS: dict[str, Callable] = {
    "dpm_solver_pp_3m": dpm_solver_pp_3m,
    "unipc_3": unipc_3,
    "ipndm": ipndm,
}


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


# ------------------------------------------------------------------------- shared parts


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
    z = standard_normal(shape, generator, F64, device)
    return grid.points[0].std * z


def flow_endpoint(
    model, x, process: Process, t, steps: int = 1000, sigma_min: float = 1e-4
) -> torch.Tensor:
    """The clean end (sigma = 0) of the probability-flow path through x at time ``t`` of
    ``process``, to high accuracy: a reference for pathwise errors
    (:func:`diffusion_core.metrics.rms_distance`).

    ``steps`` (at most :data:`MAX_FLOW_STEPS`) :func:`unipc` steps over the Karras noise levels
    from sigma(t) down to ``sigma_min`` (dense near the data, where the paths bend), placed on
    the process's own clock by :meth:`~diffusion_core.schedules.Process.time_at`, then onto
    sigma = 0. The ODE in y = x / scale is the same for every process, so the answer does not
    depend on which one the model is written for. Returns x0, in the dtype of x. Its error
    falls like steps^-3 down to a floor of order sigma_min^2 set by the first-order last step;
    the distance between two step counts bounds it.
    """
    check_float("x", x)
    if not isinstance(process, Process):
        raise TypeError(f"process must be a Process, got {type(process).__name__}")
    if isinstance(t, bool) or not isinstance(t, int | float | torch.Tensor):
        raise TypeError(f"t must be a number or a 0-d tensor, got {type(t).__name__}")
    if isinstance(t, torch.Tensor) and t.numel() != 1:
        raise ValueError(f"t must be one time, a 0-d tensor, got shape {tuple(t.shape)}")
    steps = check_positive_int("steps", steps, minimum=2, maximum=MAX_FLOW_STEPS)
    sigma_min = check_number("sigma_min", sigma_min, 0.0, low_open=True)
    t_start = torch.as_tensor(t, dtype=F64 if not isinstance(t, int) else None).reshape(1)
    scale, std = (float(v) for v in process.marginal(t_start))
    if scale == 0 or std == 0 or std / scale <= sigma_min:
        raise ValueError(
            "t must be a time with sigma_min < sigma(t) < inf, got sigma(t) = "
            f"{std / scale if scale > 0 else math.inf}"
        )
    t_max, t_min = float(t_start), float(process.time_at(sigma_min))
    grid = process.grid(steps, "karras", t_max=t_max, t_min=t_min)
    return unipc(model, x, grid)


def _check_call(model, x, grid, generator, callback) -> torch.dtype:
    """Validate the shared arguments; return the dtype the model sees and the result has."""
    if not callable(model):
        raise TypeError(
            f"model must be callable as model(x, point) -> x0_hat, got {type(model).__name__}"
        )
    check_float("x", x)
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(
            f"x must have a batch axis with at least one sample, shape (n, ...), got "
            f"{tuple(x.shape)}"
        )
    if not isinstance(grid, TimeGrid):
        raise TypeError(f"grid must be a TimeGrid, got {type(grid).__name__}")
    check_generator(generator, x.shape[0], x.device)
    if callback is not None and not callable(callback):
        raise TypeError("callback must be callable as callback(i, x, x0_hat) or None")
    return x.dtype


def _check_finite_sigma(grid: TimeGrid, sampler: str) -> None:
    if grid.points[0].scale == 0.0:
        raise ValueError(
            f"{sampler} needs a finite sigma_0 = std_0 / scale_0, but the grid starts at zero "
            "SNR (scale_0 = 0): its first reverse-SDE step would remove noise of infinite "
            "variance. Use ddpm, ddim, heun, dpm_solver_pp_2m or unipc, or drop the first grid "
            "point."
        )


def _denoise(model, x: torch.Tensor, point: GridPoint, dtype: torch.dtype) -> torch.Tensor:
    """x0_hat = model(x, point) in float64, with x handed over in the caller's dtype."""
    return _model_output(model, x, point, dtype).to(F64)


def _model_output(model, x: torch.Tensor, point: GridPoint, dtype: torch.dtype) -> torch.Tensor:
    """model(x, point) as it comes (its dtype is promoted to float64 where it joins the state),
    with x handed over in the caller's dtype; its shape and kind are checked."""
    x0_hat = model(x.to(dtype), point)
    if (
        not isinstance(x0_hat, torch.Tensor)
        or x0_hat.shape != x.shape
        or not x0_hat.is_floating_point()
    ):
        got = (
            f"shape {tuple(x0_hat.shape)}, dtype {x0_hat.dtype}"
            if isinstance(x0_hat, torch.Tensor)
            else type(x0_hat).__name__
        )
        raise ValueError(
            f"model(x, point) must return a floating-point tensor of shape {tuple(x.shape)}, "
            f"got {got}"
        )
    return x0_hat


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

    ``label``: a non-negative int, or an integer tensor with one label per sample (checked once,
    here), never ``null_label`` (that is the unconditional model: use weight 0).
    ``model(x, point, labels)`` is called with the grid point the sampler gives. Returns
    ``guided(x, point)`` with the signature every sampler takes (build ``model`` with
    :func:`diffusion_core.parameterization.as_denoiser` if the network predicts eps or v). When
    both predictions are needed they come from one call on a batch of 2n.
    """
    if not callable(model):
        raise TypeError(
            f"model must be callable as model(x, point, labels), got {type(model).__name__}"
        )
    weight = check_number("weight", weight)
    null_label = check_positive_int("null_label", null_label, minimum=0)
    label = _check_label(label)
    if bool((label == null_label).any()):
        raise ValueError(
            f"label must not contain the null label {null_label}: the unconditional model is "
            "weight = 0"
        )

    def guided(x: torch.Tensor, point) -> torch.Tensor:
        n = x.shape[0]
        labels = _labels(label, n, x.device)
        null = torch.full_like(labels, null_label)
        if weight == 0:
            return model(x, point, null)
        if weight == 1:
            return model(x, point, labels)
        cond, uncond = model(torch.cat([x, x]), point, torch.cat([labels, null])).split(n)
        return (1 - weight) * uncond + weight * cond

    return guided


def _check_label(label) -> torch.Tensor:
    """A guidance label: a non-negative int or a 1-D tensor of them (a negative label would
    index from the end of a table and silently pick another class)."""
    if isinstance(label, bool) or not isinstance(label, int | torch.Tensor):
        raise TypeError(f"label must be an int or an integer tensor, got {type(label).__name__}")
    labels = check_labels("label", torch.as_tensor(label).reshape(-1))
    if labels.numel() == 0 or bool((labels < 0).any()):
        raise ValueError(f"label must be one or more integers >= 0, got {labels.tolist()}")
    return labels


def _labels(labels: torch.Tensor, n: int, device) -> torch.Tensor:
    """One int64 label per sample, from one or n labels."""
    if labels.numel() == 1:
        return labels.to(device).reshape(1).expand(n)
    if labels.shape != (n,):
        raise ValueError(f"label must be one int or have shape ({n},), got {tuple(labels.shape)}")
    return labels.to(device)


def exact_conditional_denoiser(mixture: GaussianMixture) -> Callable:
    """The Bayes-optimal class-conditional denoiser of Gaussian-mixture data,
    model(x, point, labels).

    The class of a sample is its mixture component: label k in 0..K-1 gives E[x0 | x_t = x,
    k], the denoiser of component k alone (the conditional score is the component's score),
    and label K = ``mixture.n_components``, the null label, gives E[x0 | x_t = x] of the whole
    mixture; any other label raises ``ValueError``. With :func:`classifier_free_guidance` it
    gives exact guided denoisers, to study guidance without any learning error.
    """
    if not isinstance(mixture, GaussianMixture):
        raise TypeError(f"mixture must be a GaussianMixture, got {type(mixture).__name__}")
    components = [
        GaussianMixture(
            torch.ones(1, dtype=torch.float64), mixture.means[k : k + 1], mixture.covs[k : k + 1]
        )
        for k in range(mixture.n_components)
    ]

    def model(x: torch.Tensor, point, labels: torch.Tensor) -> torch.Tensor:
        check_float("x", x)
        if x.ndim != 2 or x.shape[0] < 1:
            raise ValueError(f"x must have shape (n, d) with n >= 1, got {tuple(x.shape)}")
        if not isinstance(point, GridPoint):
            raise TypeError(f"point must be a GridPoint, got {type(point).__name__}")
        labels = check_labels("labels", labels, x.shape[0], mixture.n_components + 1)
        scale, std = point.scale, point.std
        candidates = torch.stack(
            [c.x0_pred(x, scale, std) for c in components] + [mixture.x0_pred(x, scale, std)]
        )  # (K + 1, n, d)
        return candidates[labels.to(x.device), torch.arange(x.shape[0], device=x.device)]

    return model
