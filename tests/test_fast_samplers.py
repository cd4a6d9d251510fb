"""Tests for the higher-order multistep solvers of :mod:`diffusion_core.samplers`:
DPM-Solver++(3M), UniPC of order 3 and iPNDM.

Orders are measured on a flow known in closed form (1-D Gaussian data, whose probability-flow
ODE has the exact solution y(sigma) = mu + (y_0 - mu) ((v + sigma^2) / (v + sigma_0^2))^(1/2)):
one step of full order from the exact history, on grids uniform in lambda, has the local
error O(h^{p+1}) of a method of order p. Exactness on polynomials is checked against
quadrature by SciPy, an independent computation.
"""

import math

import pytest
import torch
from scipy.integrate import quad

from diffusion_core import samplers, stability
from diffusion_core.analytic import default_mixture_2d
from diffusion_core.parameterization import exact_denoiser
from diffusion_core.samplers import (
    HIGH_ORDER_SAMPLERS,
    dpm_solver_pp_3m,
    dpm_solver_pp_3m_steps,
    ipndm,
    ipndm_steps,
    unipc,
    unipc_3,
    unipc_3_steps,
)
from diffusion_core.schedules import TimeGrid, linear_schedule

F64 = torch.float64
MU, V, SIGMA_0, Y_0 = 0.7, 0.3, 10.0, 2.0

# name: (step rule, options, order p); the local error of a full-order step is O(h^{p+1})
RULES = {
    "dpm_solver_pp_3m": (dpm_solver_pp_3m_steps, {}, 3),
    "unipc_3 bh2": (unipc_3_steps, {"variant": "bh2"}, 4),
    "unipc_3 bh1": (unipc_3_steps, {"variant": "bh1"}, 4),
    "ipndm": (ipndm_steps, {}, 4),
}


def flow_denoiser(y, sigma):
    return (MU * sigma**2 + V * y) / (V + sigma**2)


def flow(sigma):
    return MU + (Y_0 - MU) * math.sqrt((V + sigma**2) / (V + SIGMA_0**2))


def ve_grid(sigma: torch.Tensor) -> TimeGrid:
    """A grid with scale 1, so that the state is y itself and t = sigma."""
    return TimeGrid(sigma.clone(), torch.ones_like(sigma), sigma.clone())


def lambda_grid(h: float, i: int, sigma_mid: float = 1.0) -> TimeGrid:
    """i + 3 points evenly spaced by h in lambda = -log sigma, point i at sigma_mid."""
    lam = -math.log(sigma_mid) + h * torch.arange(-i, 3, dtype=F64)
    return ve_grid(torch.exp(-lam))


def apply_update(u, x, d, i, x_pred=0.0, d_pred=0.0):
    """One Update evaluated on given histories x[j] and d[j] (numbers), at step i."""
    value = u.x * x[i] + u.d * d[i] + (u.d_prev * d[i - 1] if u.d_prev else 0.0)
    value += sum(c * d[i - 2 - k] for k, c in enumerate(u.d_older))
    value += sum(c * x[i - 1 - k] for k, c in enumerate(u.x_older))
    return value + u.x_pred * x_pred + u.d_pred * d_pred


def one_step(step, grid, x, model, i):
    """Step i from the histories x (states) and d = model(x) at the grid's points."""
    sigma = [p.sigma for p in grid.points]
    d = [model(x[j], sigma[j]) for j in range(i + 1)]
    out = apply_update(step.predict, x, d, i)
    if step.correct is not None:
        out = apply_update(step.correct, x, d, i, out, model(out, sigma[i + 1]))
    return out


def local_error(rule, options, h, i=4):
    grid = lambda_grid(h, i)
    sigma = [p.sigma for p in grid.points]
    exact = [flow(s) for s in sigma]
    step = rule(grid, **options)[i]
    return abs(one_step(step, grid, exact, flow_denoiser, i) - exact[i + 1])


@pytest.mark.parametrize("name", list(RULES))
def test_local_error_shows_the_order_on_a_closed_form_flow(name):
    rule, options, order = RULES[name]
    hs = torch.tensor([0.2, 0.1, 0.05, 0.025], dtype=F64)
    errors = torch.tensor([local_error(rule, options, float(h)) for h in hs], dtype=F64)
    x, y = hs.log(), errors.log()
    slope = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
    # measured: 3.9 (3M), 4.9 (UniPC-3), 4.6 (iPNDM, reaching 4.8 at the smallest steps)
    assert abs(slope.item() - (order + 1)) <= 0.3 + (0.15 if name == "ipndm" else 0), (
        name,
        errors.tolist(),
        slope.item(),
    )


@pytest.mark.parametrize("name", list(HIGH_ORDER_SAMPLERS))
def test_global_error_falls_at_least_as_fast_as_the_warm_up_allows(name):
    # Globally the first-order first step leaves an O(h^2) term with a tiny constant (the
    # flow is nearly straight at sigma_0 = 10); the error still falls by at least 2^2.7 per
    # halving from 16 to 64 steps and stays below 1e-5 at 64.
    errors = []
    for steps in (16, 32, 64):
        sigma = torch.logspace(1.0, -1.0, steps + 1, dtype=F64)
        out = HIGH_ORDER_SAMPLERS[name](
            lambda y, point: flow_denoiser(y, point.sigma),
            torch.tensor([[Y_0]], dtype=F64),
            ve_grid(sigma),
        )
        errors.append(abs(out.item() - flow(0.1)))
    assert all(a / b > 2**2.7 for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] < 1e-5, errors


def exponential_step(grid, i, poly):
    """The exact step from y_i in VE coordinates (scale 1, lambda = -log sigma) for a
    denoiser that is the polynomial ``poly`` of lambda: y_{i+1} = e^{-h} y_i + int e^{-(
    lambda_{i+1} - lambda)} poly(lambda) d lambda."""
    lam = [-math.log(p.sigma) for p in grid.points]
    integral = quad(lambda v: math.exp(-(lam[i + 1] - v)) * poly(v), lam[i], lam[i + 1])[0]
    return lambda y: math.exp(-(lam[i + 1] - lam[i])) * y + integral


def test_exponential_multistep_steps_are_exact_for_polynomials_of_their_degree():
    # DPM-Solver++(3M): exact for x0_hat quadratic in lambda; UniPC-3: predictor quadratic,
    # corrector cubic (one more node, the new output). Unequal steps.
    sigma = torch.tensor([8.0, 3.0, 1.5, 0.6, 0.3, 0.1], dtype=F64)
    grid, i = ve_grid(sigma), 3
    lam = [-math.log(p.sigma) for p in grid.points]
    for degree, rule, part in (
        (2, dpm_solver_pp_3m_steps, "predict"),
        (2, unipc_3_steps, "predict"),
        (3, unipc_3_steps, "correct"),
    ):
        coeffs = [0.3, -0.7, 0.2, 0.05][: degree + 1]

        def poly(v, c=coeffs):
            return sum(ck * v**k for k, ck in enumerate(c))

        d = [poly(v) for v in lam]
        y_i, exact = 1.3, exponential_step(grid, i, poly)(1.3)
        step = rule(grid)[i]
        x = [0.0] * i + [y_i]
        if part == "predict":
            out = apply_update(step.predict, x, d, i)
        else:
            out = apply_update(step.correct, x, d, i, 0.0, d[i + 1])
        assert out == pytest.approx(exact, rel=1e-12, abs=1e-12), (rule.__name__, part)
        # one degree more is not integrated exactly
        d_more = [v + 0.1 * lam_v ** (degree + 1) for v, lam_v in zip(d, lam, strict=True)]
        if part == "predict":
            more = apply_update(step.predict, x, d_more, i)
        else:
            more = apply_update(step.correct, x, d_more, i, 0.0, d_more[i + 1])
        assert abs(more - out) > 1e-6


def test_ipndm_is_exact_for_slopes_cubic_in_sigma():
    # A denoiser x0_hat = y - sigma p(sigma) makes dy/dsigma = p(sigma): from the exact
    # history, step i (of order min(4, i + 1)) integrates every p of degree <= i exactly;
    # unequal steps.
    sigma = torch.tensor([9.0, 7.5, 5.0, 4.0, 2.5, 1.0, 0.5], dtype=F64)
    grid = ve_grid(sigma)
    steps = ipndm_steps(grid)
    for degree in range(4):
        coeffs = [0.4, -0.3, 0.05, -0.01][: degree + 1]

        def p(s, c=coeffs):
            return sum(ck * s**k for k, ck in enumerate(c))

        def model(y, s, p=p):
            return y - s * p(s)

        exact = [1.0 + quad(p, float(sigma[0]), float(s))[0] for s in sigma]
        for i in range(degree, len(sigma) - 2):
            out = one_step(steps[i], grid, exact, model, i)
            assert out == pytest.approx(exact[i + 1], rel=1e-12, abs=1e-12), (degree, i)
        if degree > 0:  # one degree too many for the step of order degree
            out = one_step(steps[degree - 1], grid, exact, model, degree - 1)
            assert abs(out - exact[degree]) > 1e-6, degree


def test_unipc_3_capped_at_order_2_is_unipc():
    model, schedule = exact_denoiser(default_mixture_2d()), linear_schedule(1000)
    for spacing in ("trailing", "karras"):
        grid = schedule.grid(10, spacing)
        x = samplers.prior_sample(grid, (64, 2), torch.Generator().manual_seed(0))
        torch.testing.assert_close(
            unipc_3(model, x, grid, order=2), unipc(model, x, grid), rtol=0, atol=1e-12
        )


@pytest.mark.parametrize("name", list(HIGH_ORDER_SAMPLERS))
def test_one_evaluation_per_step_and_x0_hat_at_the_end(name):
    schedule = linear_schedule(1000)
    sampler = HIGH_ORDER_SAMPLERS[name]
    for steps in (1, 2, 3, 7, 12):
        assert samplers.evaluations(sampler, schedule.grid(steps)) == steps
    # one step from the clean point's neighbour is the denoiser's output
    model = exact_denoiser(default_mixture_2d())
    grid = schedule.grid(1)
    x = samplers.prior_sample(grid, (8, 2), torch.Generator().manual_seed(0))
    torch.testing.assert_close(sampler(model, x, grid), model(x, grid[0]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", list(HIGH_ORDER_SAMPLERS))
def test_exact_gaussian_law_through_the_stability_tools(name):
    # The history terms run through the same loop on symbolic states: the affine map the
    # stability tools build applies the sampler exactly.
    grid = linear_schedule(1000).grid(8, "log_snr", t_min=5)[:-1]
    p = torch.full((grid.t.shape[0],), 0.6, dtype=F64)
    q = torch.linspace(0.1, 0.3, grid.t.shape[0], dtype=F64)
    affine = stability.affine_map(HIGH_ORDER_SAMPLERS[name], grid, p, q)
    index = {id(point): i for i, point in enumerate(grid.points)}

    def linear(x, point):
        return p[index[id(point)]] * x + q[index[id(point)]]

    x = torch.randn(5, 1, generator=torch.Generator().manual_seed(1), dtype=F64)
    out = HIGH_ORDER_SAMPLERS[name](linear, x, grid)
    expected = affine.gain[0] * x + affine.offset
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_zero_terminal_snr_start_stays_finite():
    from diffusion_core.schedules import rescale_zero_terminal_snr

    schedule = rescale_zero_terminal_snr(linear_schedule(1000))
    mixture = default_mixture_2d()
    model = exact_denoiser(mixture)
    grid = schedule.grid(10, "trailing")
    assert grid.points[0].scale == 0
    x = samplers.prior_sample(grid, (16, 2), torch.Generator().manual_seed(0))
    for sampler in HIGH_ORDER_SAMPLERS.values():
        assert torch.isfinite(sampler(model, x, grid)).all(), sampler.__name__


def test_arguments_are_checked():
    grid = linear_schedule(50).grid(4)
    model = exact_denoiser(default_mixture_2d())
    x = torch.zeros(3, 2, dtype=F64)
    for rule in (dpm_solver_pp_3m_steps, unipc_3_steps, ipndm_steps):
        with pytest.raises(TypeError, match="grid must be a TimeGrid"):
            rule("grid")
    with pytest.raises(ValueError, match="variant must be one of \\('bh1', 'bh2'\\)"):
        unipc_3(model, x, grid, variant="bh3")
    with pytest.raises(ValueError, match="order must be in 1"):
        unipc_3(model, x, grid, order=4)
    with pytest.raises(ValueError, match="order must be in 1"):
        ipndm(model, x, grid, order=0)
    with pytest.raises(TypeError, match="order must be an int"):
        ipndm(model, x, grid, order=2.5)
    with pytest.raises(TypeError, match="model must be callable"):
        dpm_solver_pp_3m(None, x, grid)
