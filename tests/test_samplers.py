"""Tests for :mod:`diffusion_core.samplers`: grids, convergence, orders, equivalences, edge cases.

Every sampler is driven by the exact denoiser of known data, so that what is measured is the
sampler's own error:

- On the 2-D Gaussian mixture, the sliced W2 distance to exact data samples must fall as the
  step budget grows and end within 1.5 times its noise floor at the same sample size (the
  distance between two exact samples). ODE samplers get 5, 10, 50 steps; the stochastic ones
  10, 50, 250, because their error falls only like h (weak order 1), not h^2.
- On Gaussian data every sampler is affine in x, so its output law is Gaussian and known
  exactly: run it on x = 0 and the unit vectors to read off the map, push the exact marginal at
  the first grid point through it, and compare with the exact marginal at the last point by
  the Gaussian W2. The grid stops before the clean point, so the error is the ODE solver's
  alone. On a VESDE a grid uniform in t is uniform in log sigma = -lambda, so every step has
  the same size h in the variable that DPM-Solver++ integrates in and the slopes of log error
  against log steps are clean from 16 steps on.
"""

import math

import pytest
import torch

from diffusion_core._validation import check_labels, check_number
from diffusion_core.analytic import default_mixture_2d, gaussian
from diffusion_core.device import per_sample_generators, sample_seeds
from diffusion_core.forward import q_posterior
from diffusion_core.metrics import (
    gaussian_w2,
    rms_distance,
    sliced_wasserstein,
    sliced_wasserstein_floor,
)
from diffusion_core.parameterization import (
    as_denoiser,
    eps_from_x0,
    exact_denoiser,
    v_from_eps_x0,
)
from diffusion_core.samplers import (
    SAMPLERS,
    ddim,
    ddim_steps,
    ddpm,
    ddpm_steps,
    dpm_solver_pp_2m,
    dpm_solver_pp_2m_steps,
    euler,
    euler_maruyama,
    euler_maruyama_steps,
    euler_steps,
    evaluations,
    flow_endpoint,
    heun,
    heun_steps,
    predictor_corrector,
    prior_sample,
    run_steps,
    step_rule,
    unipc_steps,
)
from diffusion_core.schedules import (
    EDM,
    VESDE,
    VPSDE,
    GridPoint,
    RectifiedFlow,
    TimeGrid,
    cosine_schedule,
    karras_sigmas,
    linear_schedule,
    rescale_zero_terminal_snr,
    scaled_linear_schedule,
)

torch.set_num_threads(1)
F64 = torch.float64
EPS = torch.finfo(F64).eps
ODE_SAMPLERS = ["ddim", "euler", "heun", "dpm_solver_pp_2m", "unipc"]
ZERO_SNR_SAMPLERS = ["ddpm", "ddim", "euler", "heun", "dpm_solver_pp_2m", "unipc"]
STOCHASTIC_SAMPLERS = ["ddpm", "euler_maruyama", "predictor_corrector"]


def gen(seed):
    return torch.Generator().manual_seed(seed)


def sample(name, model, grid, n=64, seed=0, **options):
    """n samples of 2-D data: prior noise from seed, the sampler's own noise from seed + 1."""
    x = prior_sample(grid, (n, 2), gen(seed))
    return SAMPLERS[name](model, x, grid, gen(seed + 1), **options)


@pytest.fixture(scope="module")
def mixture():
    return default_mixture_2d()


@pytest.fixture(scope="module")
def ddpm_schedule():
    return linear_schedule(1000)


# ----------------------------------------------------------------------------- grids


@pytest.mark.parametrize("steps", [1, 3, 7, 50, 1000])
def test_trailing_schedule_grid_runs_from_T_to_the_clean_sample(ddpm_schedule, steps):
    grid = ddpm_schedule.grid(steps)  # trailing is a discrete schedule's default
    assert grid.steps == steps and grid.t.dtype == torch.int64
    assert int(grid.t[0]) == 1000 and int(grid.t[-1]) == 0
    assert (float(grid.scale[-1]), float(grid.std[-1])) == (1.0, 0.0)
    scale, std = ddpm_schedule.marginal(grid.t)
    torch.testing.assert_close(grid.scale, scale, rtol=0, atol=0)
    torch.testing.assert_close(grid.std, std, rtol=0, atol=0)


def test_time_grid_properties_at_zero_terminal_snr():
    schedule = rescale_zero_terminal_snr(scaled_linear_schedule(1000))
    grid = schedule.grid(10, "leading")
    assert int(grid.t[0]) == 901  # leading spacing never visits t = T
    grid = schedule.grid(10)
    assert float(grid.sigma[0]) == math.inf and float(grid.log_snr[0]) == -math.inf
    assert float(grid.sigma[-1]) == 0.0 and float(grid.log_snr[-1]) == math.inf
    assert bool((grid.log_snr.diff() > 0).all())


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()])
def test_sde_grids_uniform_and_karras(sde):
    grid = sde.grid(8, t_min=0.01)  # uniform is a continuous process's default
    expected = torch.cat([torch.linspace(1, 0.01, 8, dtype=F64), torch.zeros(1, dtype=F64)])
    torch.testing.assert_close(grid.t, expected, rtol=0, atol=0)
    assert float(grid.std[-1]) == 0.0 and float(grid.scale[-1]) == 1.0

    grid = sde.grid(8, "karras", t_min=0.01, rho=5.0)
    sigma_max, sigma_min = grid.sigma[0].item(), grid.sigma[-2].item()
    sigmas = karras_sigmas(8, sigma_min, sigma_max, rho=5.0)
    torch.testing.assert_close(grid.sigma[:-1], sigmas, rtol=1e-10, atol=0)
    assert grid.t[0].item() == 1.0 and grid.t[-2].item() == 0.01
    assert sde.grid(1, "karras").t.tolist() == [1.0, 0.0]
    # log-SNR: evenly spaced in log sigma between the same ends.
    grid = sde.grid(8, "log_snr", t_min=0.01)
    even = torch.linspace(math.log(sigma_max), math.log(sigma_min), 8, dtype=F64)
    torch.testing.assert_close(grid.sigma[:-1].log(), even, rtol=0, atol=1e-12)
    assert grid.t[0].item() == 1.0 and grid.t[-2].item() == 0.01


def test_prior_sample_scales_unit_noise_by_the_first_std():
    grid = VESDE().grid(4)
    x = prior_sample(grid, (5, 3), gen(0))
    z = torch.randn(5, 3, generator=gen(0), dtype=F64)
    assert x.dtype == F64
    torch.testing.assert_close(x, grid.std[0] * z, rtol=0, atol=0)
    assert prior_sample(grid, 4).shape == (4,)


def test_grid_arguments_are_checked(ddpm_schedule):
    small = linear_schedule(50)
    # A Karras or uniform grid may have any number of steps; trailing, leading and linspace
    # pick integer steps, at most T of them.
    with pytest.raises(ValueError, match=r"steps must be in 1\.\., got 0"):
        small.grid(0)
    with pytest.raises(ValueError, match=r"steps must be in 1\.\.50, got 51"):
        small.grid(51)
    with pytest.raises(ValueError, match=r"steps must be in 1\.\.50, got 51"):
        small.grid(51, "leading")
    assert small.grid(51, "karras").steps == 51
    with pytest.raises(TypeError, match="steps must be an int"):
        small.grid(2.0)
    with pytest.raises(ValueError, match="spacing must be one of .*'trailing'"):
        small.grid(5, "cosine")
    with pytest.raises(ValueError, match="picks integer steps from 1..T"):
        small.grid(5, t_max=40)
    with pytest.raises(
        ValueError, match=r"spacing must be one of \('uniform', 'karras', 'log_snr'\)"
    ):
        VPSDE().grid(5, "trailing")
    with pytest.raises(ValueError, match="steps must be in 1"):
        VPSDE().grid(0)
    with pytest.raises(ValueError, match=r"need 0 < t_min <= t_max, got t_min=0\.0"):
        VPSDE().grid(5, t_min=0.0)
    with pytest.raises(ValueError, match=r"t_min must be a finite number in \(0, 1\), got 0\.0"):
        VPSDE(t_min=0.0)
    with pytest.raises(ValueError, match=r"t_max must be a finite number in \[0, 1\], got 1\.5"):
        VPSDE().grid(5, t_max=1.5)
    with pytest.raises(ValueError, match=r"t_min must be a finite number in \[0, 0\.5\]"):
        VESDE().grid(5, t_max=0.5, t_min=0.6)
    with pytest.raises(ValueError, match="spacing must be one of"):
        VPSDE().grid(5, "cosine")
    with pytest.raises(ValueError, match="finite noise level at t_max"):
        rescale_zero_terminal_snr(small).grid(5, "karras")
    with pytest.raises(ValueError, match="shape must be a tuple of positive ints"):
        prior_sample(small.grid(2), (0, 2))
    with pytest.raises(TypeError, match="grid must be a TimeGrid"):
        prior_sample(small, (2, 2))


def test_time_grid_rejects_bad_grids():
    t, scale, std = (
        torch.tensor([3, 2, 0]),
        torch.tensor([0.6, 0.8, 1.0]),
        torch.tensor([0.8, 0.6, 0.0]),
    )
    TimeGrid(t, scale, std)
    with pytest.raises(ValueError, match="t must be strictly decreasing"):
        TimeGrid(torch.tensor([3, 3, 0]), scale, std)
    with pytest.raises(ValueError, match="t must be strictly decreasing"):
        TimeGrid(torch.tensor([0, 2, 3]), scale, std)
    with pytest.raises(ValueError, match="SNR scale\\^2 / std\\^2 must increase strictly"):
        TimeGrid(t, scale.flip(0), std.flip(0))
    with pytest.raises(ValueError, match="SNR"):
        TimeGrid(t, torch.tensor([0.6, 0.6, 1.0]), torch.tensor([0.8, 0.8, 0.0]))
    with pytest.raises(ValueError, match="SNR"):  # zero SNR is allowed only at the start
        TimeGrid(t, torch.tensor([0.6, 0.0, 1.0]), torch.tensor([0.8, 1.0, 0.0]))
    with pytest.raises(ValueError, match=r"std must have the shape of t, \(3,\)"):
        TimeGrid(t, scale, std[:2])
    with pytest.raises(ValueError, match="at least 2 points"):
        TimeGrid(t[:1], scale[:1], std[:1])
    with pytest.raises(ValueError, match="scale must be >= 0"):
        TimeGrid(t, -scale, std)
    with pytest.raises(ValueError, match="std must be finite"):
        TimeGrid(t, scale, torch.tensor([math.nan, 0.6, 0.0]))
    with pytest.raises(TypeError, match="t must be a 1-D torch.Tensor"):
        TimeGrid([3, 2, 0], scale, std)
    with pytest.raises(TypeError, match="scale must be a floating-point tensor"):
        TimeGrid(t, torch.tensor([0, 1, 1]), std)


# ------------------------------------------------------------------ sliced W2 on a mixture


BUDGETS = {
    "ddim": [5, 10, 50],
    "euler": [5, 10, 50],
    "heun": [5, 10, 50],
    "dpm_solver_pp_2m": [5, 10, 50],
    "ddpm": [10, 50, 250],
    "euler_maruyama": [10, 50, 250],
    "predictor_corrector": [10, 50, 250],
}
N_SW = 2000


@pytest.fixture(scope="module")
def sw_floor(mixture):
    return sliced_wasserstein_floor(mixture.sample, N_SW).item()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BUDGETS))
def test_sliced_w2_falls_with_steps_down_to_the_noise_floor(name, mixture, ddpm_schedule, sw_floor):
    model = exact_denoiser(mixture)
    data = mixture.sample(N_SW, gen(100))
    distances = []
    for steps in BUDGETS[name]:
        grid = ddpm_schedule.grid(steps)
        out = sample(name, model, grid, n=N_SW, seed=1)
        distances.append(sliced_wasserstein(out, data).item())
    band = 1.5 * sw_floor
    report = f"{name}: SW2 {distances} at steps {BUDGETS[name]}, floor {sw_floor:.4f}"
    assert distances[-1] <= band, report
    assert distances[0] > 1.5 * distances[-1], report  # the smallest budget is visibly worse
    for coarse, fine in zip(distances, distances[1:], strict=False):
        # Falls, until both are within the floor's band, where sampling noise decides.
        assert fine < coarse or max(coarse, fine) <= band, report


# ---------------------------------------------------------------- orders on Gaussian data


GAUSS_MEAN = torch.tensor([1.0, -0.5], dtype=F64)
GAUSS_COV = torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=F64)


def gaussian_error(name, sde, steps):
    """Exact W2 between the sampler's output law and the exact marginal at the grid's end."""
    grid = sde.grid(steps)[:-1]  # stop before the clean point
    model = exact_denoiser(gaussian(GAUSS_MEAN, GAUSS_COV))
    basis = torch.cat([torch.zeros(1, 2, dtype=F64), torch.eye(2, dtype=F64)])
    out = SAMPLERS[name](model, basis, grid)
    offset, matrix = out[0], (out[1:] - out[0]).T  # the affine map x -> matrix x + offset
    eye = torch.eye(2, dtype=F64)

    def marginal(i):
        scale, std = grid.scale[i], grid.std[i]
        return scale * GAUSS_MEAN, scale**2 * GAUSS_COV + std**2 * eye

    mean0, cov0 = marginal(0)
    mean, cov = marginal(-1)
    return gaussian_w2(matrix @ mean0 + offset, matrix @ cov0 @ matrix.T, mean, cov).item()


# UniPC's corrector lifts DPM-Solver++(2M) by most of an order here: 2.78 from 16 to 128 steps
# (not 3: near t = 0 this grid's steps in lambda do not shrink with the step count; the clean
# orders are measured on a flow known in closed form below).
@pytest.mark.parametrize(
    "name, order", [("euler", 1), ("heun", 2), ("dpm_solver_pp_2m", 2), ("unipc", 2.8)]
)
def test_convergence_order_on_gaussian_data(name, order):
    steps = torch.tensor([16, 32, 64, 128], dtype=F64)
    errors = torch.tensor([gaussian_error(name, VESDE(), int(k)) for k in steps], dtype=F64)
    x, y = steps.log(), errors.log()
    slope = -((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
    assert abs(slope.item() - order) <= 0.3, f"{name}: errors {errors.tolist()}, order {slope}"


def test_multistep_orders_on_a_closed_form_flow():
    # 1-D Gaussian data N(mu, v): D(y, sigma) = (mu sigma^2 + v y) / (v + sigma^2), and the
    # probability-flow ODE has the exact solution y(sigma) = mu + (y_0 - mu) ((v + sigma^2) /
    # (v + sigma_0^2))^(1/2). On grids uniform in log sigma (constant h in lambda) the step
    # halving ratios give the orders: 2 for DPM-Solver++(2M), 3 for UniPC, whose corrector adds
    # one (Zhao et al. 2023, Theorem 3.3).
    mu, v, sigma_0, sigma_end = 0.7, 0.3, 10.0, 0.1
    y_0 = torch.tensor([[2.0]], dtype=F64)
    exact = mu + (y_0 - mu) * math.sqrt((v + sigma_end**2) / (v + sigma_0**2))

    def denoiser(y, point):
        sigma = point.sigma  # scale 1: the state is y itself
        return (mu * sigma**2 + v * y) / (v + sigma**2)

    for name, order in (("dpm_solver_pp_2m", 2), ("unipc", 3)):
        errors = []
        for steps in (32, 64, 128, 256):
            sigma = torch.logspace(math.log10(sigma_0), math.log10(sigma_end), steps + 1, dtype=F64)
            out = SAMPLERS[name](denoiser, y_0, TimeGrid(sigma, torch.ones_like(sigma), sigma))
            errors.append((out - exact).abs().item())
        orders = [math.log2(a / b) for a, b in zip(errors, errors[1:], strict=False)]
        assert all(abs(o - order) < 0.1 for o in orders), (name, errors, orders)


def closed_form_flow(mu, v):
    """1-D Gaussian data N(mu, v): the exact denoiser D(x, point) of x = scale x0 + std eps, and
    the exact end of its probability flow, y(0) = mu + (y - mu) (v / (v + sigma^2))^(1/2) in
    y = x / scale."""

    def denoiser(x, point):
        y, sigma = x / point.scale, point.sigma
        return (mu * sigma**2 + v * y) / (v + sigma**2)

    def end(x, scale, std):
        return mu + (x / scale - mu) * math.sqrt(v / (v + (std / scale) ** 2))

    return denoiser, end


def test_flow_endpoint_is_the_exact_end_of_the_probability_flow():
    # Started from a VP state with (scale, std) = (0.2, 0.9) proportions: sigma_0 = 4.5, at the
    # VPSDE time where sigma(t) = 4.5.
    mu, v, sigma_0 = 0.7, 0.3, 4.5
    denoiser, end = closed_form_flow(mu, v)
    process = VPSDE()
    t = float(process.time_at(sigma_0))
    scale, std = (float(a) for a in process.marginal(t))
    assert math.isclose(std / scale, sigma_0, rel_tol=1e-14)
    x = torch.tensor([[2.0], [-1.0], [0.4]], dtype=F64)
    exact = end(x, scale, std)
    # Measured: 4.8e-5 at 100 steps, 3.4e-8 at 1000 (there the first-order last step from
    # sigma_min = 1e-4, an error of order sigma_min^2 / v, dominates).
    for steps, tolerance in ((100, 1e-4), (1000, 1e-7)):
        out = flow_endpoint(denoiser, x, process, t, steps)
        assert rms_distance(out, exact).item() < tolerance, steps
    with pytest.raises(ValueError, match="sigma_min < sigma\\(t\\) < inf, got sigma\\(t\\) = 0"):
        flow_endpoint(denoiser, x, process, 0.0)
    with pytest.raises(ValueError, match="sigma\\(t\\) < inf, got sigma\\(t\\) = inf"):
        flow_endpoint(denoiser, x, RectifiedFlow(), 1.0)
    with pytest.raises(ValueError, match="sigma_min < sigma\\(t\\)"):
        flow_endpoint(denoiser, x, process, t, sigma_min=10.0)
    with pytest.raises(TypeError, match="process must be a Process"):
        flow_endpoint(denoiser, x, "vp", t)
    with pytest.raises(ValueError, match="steps must be in 2"):
        flow_endpoint(denoiser, x, process, t, steps=1)
    with pytest.raises(ValueError, match=r"sigma_min must be a finite number in \(0, inf\]"):
        flow_endpoint(denoiser, x, process, t, sigma_min=0.0)


def test_unipc_weights_are_accurate_for_tiny_steps():
    from diffusion_core.samplers import _phi_2_3

    for u in (-1e-3, 1e-3):  # the series and the closed form meet at |u| = 1e-3
        below, above = _phi_2_3(u * (1 - 1e-12)), _phi_2_3(u * (1 + 1e-12))
        for a, b in zip(below, above, strict=True):
            assert math.isclose(a, b, rel_tol=1e-9), (u, below, above)
    # For a tiny step the corrector tends to the weights of the third-order Adams-Moulton rule
    # on a uniform grid, (8/12, -1/12, 5/12) on (m_i, m_{i-1}, m_{i+1}), instead of blowing up.
    h = 1e-9
    sigma = torch.exp(-h * torch.arange(4, dtype=F64))  # lambda = -log sigma: steps of h
    step = unipc_steps(TimeGrid(sigma, torch.ones(4, dtype=F64), sigma))[1]
    assert step.reuse and step.correct.x_pred == step.correct.noise == 0
    corrector = step.correct
    c_x, c_0, c_1, c_new = corrector.x, corrector.d, corrector.d_prev, corrector.d_pred
    c_d = -math.expm1(-h)  # the step's first-order weight, scale' (1 - e^-h)
    assert math.isclose(c_x, math.exp(-h), rel_tol=1e-15)
    for weight, expected in ((c_0, 8 / 12), (c_1, -1 / 12), (c_new, 5 / 12)):
        assert math.isclose(weight / c_d, expected, rel_tol=1e-6), (weight / c_d, expected)


def test_unipc_corrector_beats_its_own_predictor_at_the_same_cost():
    # The predictor of unipc is dpm_solver_pp_2m; the corrector costs no model evaluation.
    for steps in (16, 32, 64, 128):
        corrected = gaussian_error("unipc", VESDE(), steps)
        predicted = gaussian_error("dpm_solver_pp_2m", VESDE(), steps)
        assert corrected < predicted / 1.4, (steps, corrected, predicted)


def test_ode_samplers_are_exact_on_a_point_mass():
    # With a data distribution that is a single point, D(x, t) = x0 everywhere and the ODE
    # solution is a straight line in sigma: every first-order step is exact.
    x0 = torch.tensor([[0.3, -1.2]], dtype=F64)
    grid = VPSDE().grid(6)
    x = prior_sample(grid, (1, 2), gen(0))
    y = x / grid.scale[0]
    expected = grid.scale[3] * (x0 + grid.sigma[3] / grid.sigma[0] * (y - x0))
    partial = grid[:4]
    for name in ODE_SAMPLERS:
        out = SAMPLERS[name](lambda x, point: x0.expand_as(x), x, partial)
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12, msg=name)


# ------------------------------------------------------------------------ equivalences


@pytest.fixture(scope="module")
def exact_model(mixture, ddpm_schedule):
    return exact_denoiser(mixture)


def test_ddim_eta_zero_equals_the_first_order_dpm_solver_step(exact_model, ddpm_schedule):
    t = torch.tensor([800, 500])
    grid = TimeGrid(t, *ddpm_schedule.marginal(t))
    x = prior_sample(grid, (32, 2), gen(0))
    torch.testing.assert_close(
        ddim(exact_model, x, grid), dpm_solver_pp_2m(exact_model, x, grid), rtol=0, atol=1e-12
    )
    # ... and the first step of a longer grid, seen through the callback.
    grid = ddpm_schedule.grid(10)
    first = {}
    for name in ("ddim", "dpm_solver_pp_2m"):
        SAMPLERS[name](
            exact_model, x, grid, callback=lambda i, x, _, n=name: first.setdefault(n, x)
        )
    torch.testing.assert_close(first["ddim"], first["dpm_solver_pp_2m"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("spacing", ["trailing", "leading"])
def test_euler_equals_ddim_with_eta_zero(exact_model, ddpm_schedule, spacing):
    grid = ddpm_schedule.grid(20, spacing)
    x = prior_sample(grid, (32, 2), gen(1))
    torch.testing.assert_close(
        euler(exact_model, x, grid), ddim(exact_model, x, grid, eta=0.0), rtol=0, atol=1e-12
    )


def test_ddim_eta_one_equals_ddpm_beta_tilde(exact_model, ddpm_schedule):
    grid = ddpm_schedule.grid(20)
    x = prior_sample(grid, (32, 2), gen(2))
    torch.testing.assert_close(
        ddim(exact_model, x, grid, gen(3), eta=1.0),
        ddpm(exact_model, x, grid, gen(3), variance="beta_tilde"),
        rtol=0,
        atol=1e-12,
    )


@pytest.mark.parametrize("t", [1, 2, 10, 500, 1000])
def test_ddpm_single_step_is_the_forward_posterior(ddpm_schedule, t):
    x0 = torch.randn(16, 2, generator=gen(4), dtype=F64)
    x_t = torch.randn(16, 2, generator=gen(5), dtype=F64)
    times = torch.tensor([t, t - 1])
    grid = TimeGrid(times, *ddpm_schedule.marginal(times))
    mean, variance = q_posterior(ddpm_schedule, x0, x_t, t)
    z = torch.randn(16, 2, generator=gen(6), dtype=F64) if t > 1 else torch.zeros(16, 2, dtype=F64)
    out = ddpm(lambda x, point: x0, x_t, grid, gen(6))
    torch.testing.assert_close(out, mean + variance.sqrt() * z, rtol=0, atol=1e-12)
    # variance="beta": Ho et al.'s sigma_t^2 = beta_t, except on the last step onto t = 0.
    beta = ddpm_schedule.betas[t - 1] if t > 1 else torch.zeros((), dtype=F64)
    out = ddpm(lambda x, point: x0, x_t, grid, gen(6), variance="beta")
    torch.testing.assert_close(out, mean + beta.sqrt() * z, rtol=0, atol=1e-12)


# -------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_one_step_returns_the_denoiser_output(name, exact_model, ddpm_schedule):
    grid = ddpm_schedule.grid(1)
    x = prior_sample(grid, (16, 2), gen(8))
    expected = exact_model(x, grid[0])
    assert grid[0].t == 1000
    torch.testing.assert_close(SAMPLERS[name](exact_model, x, grid, gen(9)), expected)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_all_T_steps_of_a_small_schedule(name, mixture):
    schedule = cosine_schedule(50)
    calls = []
    out = sample(
        name,
        exact_denoiser(mixture),
        schedule.grid(50),
        n=8,
        callback=lambda i, x, x0_hat: calls.append(i),
    )
    assert schedule.grid(50).t.tolist() == list(range(50, -1, -1))
    assert calls == list(range(50))
    assert out.shape == (8, 2) and bool(torch.isfinite(out).all())


def v_model_at_zero_snr(mixture, schedule):
    """A v-predicting network built from the exact denoiser, wrapped by as_denoiser."""

    def v_net(x, t):
        scale, std = schedule.marginal(t)
        x0 = mixture.x0_pred(x, scale, std)
        return v_from_eps_x0(eps_from_x0(x, x0, scale, std), x0, scale, std)

    return as_denoiser(v_net, "v")


@pytest.mark.parametrize("name", ZERO_SNR_SAMPLERS)
def test_zero_terminal_snr_with_v_prediction_stays_finite(name, mixture):
    schedule = rescale_zero_terminal_snr(scaled_linear_schedule(1000))
    grid = schedule.grid(25)
    assert float(grid.scale[0]) == 0.0
    model = v_model_at_zero_snr(mixture, schedule)
    trajectory = []
    out = sample(name, model, grid, n=256, callback=lambda i, x, x0: trajectory.append(x))
    assert all(bool(torch.isfinite(x).all()) for x in trajectory)
    # The first x0_hat is the data mean, yet the samples find the modes and their weights.
    floor = sliced_wasserstein_floor(mixture.sample, 256).item()
    assert sliced_wasserstein(out, mixture.sample(256, gen(11))).item() < 2 * floor


@pytest.mark.parametrize("name", ["euler_maruyama", "predictor_corrector"])
def test_reverse_sde_samplers_refuse_zero_terminal_snr(name, mixture):
    schedule = rescale_zero_terminal_snr(scaled_linear_schedule(100))
    model = v_model_at_zero_snr(mixture, schedule)
    with pytest.raises(ValueError, match="finite sigma_0"):
        sample(name, model, schedule.grid(10))


def test_eps_prediction_at_zero_terminal_snr_raises_on_the_first_call(mixture):
    schedule = rescale_zero_terminal_snr(scaled_linear_schedule(100))

    def eps_net(x, t):
        return mixture.eps_pred(x, *schedule.marginal(t))

    model = as_denoiser(eps_net, "eps")
    with pytest.raises(ValueError, match="zero SNR"):
        sample("ddim", model, schedule.grid(10))


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_float32_input_gives_float32_output_with_float64_arithmetic(
    name, exact_model, ddpm_schedule
):
    grid = ddpm_schedule.grid(8)
    x = prior_sample(grid, (16, 2), gen(12))
    seen = set()

    def model(x, point):
        seen.add(x.dtype)
        return exact_model(x.double(), point).float()

    states = []
    out = SAMPLERS[name](model, x.float(), grid, gen(13), callback=lambda i, x, _: states.append(x))
    assert out.dtype == torch.float32 and seen == {torch.float32}
    assert {s.dtype for s in states} == {F64}
    if name not in STOCHASTIC_SAMPLERS:  # those draw float32 noise here, float64 below
        reference = SAMPLERS[name](exact_model, x, grid, gen(13))
        torch.testing.assert_close(out, reference.float(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", [n for n, s in SAMPLERS.items() if hasattr(s, "step_rule")])
@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_a_float32_network_through_the_wrapper_is_its_denoiser(name, prediction, mixture):
    # The loop folds the wrapper's conversion into each step and writes correctors in the
    # predictor's terms, in the temporary it owns; the result must be the sampler run on the
    # denoiser the wrapper defines, and the caller's input must be left as it was. The folded
    # conversion reads the float64 state where a call of the denoiser reads the float32 copy
    # the network saw: they differ by a float32 rounding (6e-8) times 1 / scale, at most 2.3
    # on this grid (t <= 400), so a few 1e-6 after nine steps.
    schedule = linear_schedule(1000)
    grid = schedule.grid(9, "uniform", t_max=400)
    convert = {
        "eps": eps_from_x0,
        "v": lambda x, x0, a, s: v_from_eps_x0(eps_from_x0(x, x0, a, s), x0, a, s),
        "x0": lambda x, x0, a, s: x0,
    }[prediction]

    def net(x, t):
        scale, std = schedule.marginal(t)
        return convert(x.double(), mixture.x0_pred(x, scale, std), scale, std).float()

    model = as_denoiser(net, prediction)
    x = prior_sample(grid, (32, 2), gen(14)).float()
    start = x.clone()
    out = SAMPLERS[name](model, x, grid, gen(15))
    assert torch.equal(x, start)
    reference = SAMPLERS[name](lambda x, point: model(x, point), x, grid, gen(15))
    torch.testing.assert_close(out, reference, rtol=5e-6, atol=5e-6)


@pytest.mark.parametrize(
    "dtype, drawn", [(F64, F64), (torch.float32, torch.float32), (torch.bfloat16, torch.float32)]
)
def test_noise_is_drawn_in_the_callers_precision(dtype, drawn, ddpm_schedule):
    # One DDPM step from x = 0 with a model that predicts 0 is pure noise: beta_tilde^(1/2) z.
    grid = ddpm_schedule.grid(10)[:2]
    (a_t, a_s), (s_t, s_s) = grid.scale.tolist(), grid.std.tolist()
    beta_tilde = s_s**2 * (1 - (s_s * a_t / (a_s * s_t)) ** 2)
    out = ddpm(lambda x, point: torch.zeros_like(x), torch.zeros(64, 3, dtype=dtype), grid, gen(3))
    z = torch.randn(64, 3, generator=gen(3), dtype=drawn).double()
    expected = (math.sqrt(beta_tilde) * z).to(dtype)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    "name, options", [("ddpm", {}), ("ddim", {"eta": 0.5}), ("euler_maruyama", {})]
)
def test_per_sample_generators_make_a_samples_path_independent_of_its_batch(
    name, options, exact_model, ddpm_schedule
):
    grid = ddpm_schedule.grid(12)
    seeds = sample_seeds(7, range(6))
    x = prior_sample(grid, (6, 2), per_sample_generators(seeds))
    whole = SAMPLERS[name](exact_model, x, grid, per_sample_generators(seeds), **options)
    rows = [4, 1]
    part = SAMPLERS[name](
        exact_model, x[rows], grid, per_sample_generators([seeds[i] for i in rows]), **options
    )
    torch.testing.assert_close(part, whole[rows], rtol=1e-12, atol=1e-12)
    # One generator for the batch gives different noise to the same rows.
    shared = SAMPLERS[name](exact_model, x[rows], grid, gen(7), **options)
    assert (shared - whole[rows]).abs().min() > 1e-6
    # Row i of the starting noise comes from generator i alone, too.
    torch.testing.assert_close(
        prior_sample(grid, (2, 2), per_sample_generators([seeds[i] for i in rows])), x[rows]
    )


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_images_shaped_batches_work(name, ddpm_schedule):
    grid = ddpm_schedule.grid(4)
    x = prior_sample(grid, (3, 1, 4, 4), gen(14))
    out = SAMPLERS[name](lambda x, point: 0.5 * x, x, grid, gen(15))
    assert out.shape == (3, 1, 4, 4) and bool(torch.isfinite(out).all())


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_sampler_arguments_are_checked(name, ddpm_schedule):
    grid = ddpm_schedule.grid(4)
    x = prior_sample(grid, (4, 2), gen(16))
    sampler = SAMPLERS[name]

    def identity(x, point):
        return x

    with pytest.raises(TypeError, match="model must be callable"):
        sampler("model", x, grid)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        sampler(identity, x.tolist(), grid)
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        sampler(identity, x.long(), grid)
    with pytest.raises(ValueError, match="x must be finite"):
        sampler(identity, x * math.inf, grid)
    with pytest.raises(TypeError, match="grid must be a TimeGrid"):
        sampler(identity, x, ddpm_schedule)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        sampler(identity, x, grid, 0)
    with pytest.raises(ValueError, match=r"one generator per sample \(4\), got 3"):
        sampler(identity, x, grid, [gen(i) for i in range(3)])
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        sampler(identity, x, grid, [gen(0), 1, gen(2), gen(3)])
    with pytest.raises(TypeError, match="callback must be callable"):
        sampler(identity, x, grid, None, "print")
    must_return = r"model\(x, point\) must return a floating-point tensor of shape \(4, 2\)"
    with pytest.raises(ValueError, match=must_return + r", got shape \(4, 1\)"):
        sampler(lambda x, point: x[:, :1], x, grid)
    with pytest.raises(ValueError, match=must_return + r", got shape \(4, 2\), dtype torch.int64"):
        sampler(lambda x, point: x.long(), x, grid)
    with pytest.raises(ValueError, match=must_return + ", got list"):
        sampler(lambda x, point: x.tolist(), x, grid)


def test_sampler_options_are_checked(exact_model, ddpm_schedule):
    grid = ddpm_schedule.grid(4)
    x = prior_sample(grid, (4, 2), gen(17))
    with pytest.raises(ValueError, match="variance must be one of"):
        ddpm(exact_model, x, grid, variance="fixed_large")
    with pytest.raises(ValueError, match=r"eta must be a finite number in \[0, 1\], got 1\.5"):
        ddim(exact_model, x, grid, eta=1.5)
    with pytest.raises(ValueError, match=r"eta must be a finite number in \[0, 1\], got nan"):
        ddim(exact_model, x, grid, eta=math.nan)
    with pytest.raises(TypeError, match="eta must be a number"):
        ddim(exact_model, x, grid, eta="1")
    with pytest.raises(ValueError, match=r"corrector_steps must be in 0\.\., got -1"):
        predictor_corrector(exact_model, x, grid, corrector_steps=-1)
    with pytest.raises(ValueError, match=r"snr must be a finite number in \[0, 1\], got -0\.1"):
        predictor_corrector(exact_model, x, grid, snr=-0.1)


def test_counts_are_bounded_and_float_options_finite(exact_model, ddpm_schedule):
    """A count that would hang the loop is refused before any model call, and so is a float
    option that is infinite or NaN."""
    grid = ddpm_schedule.grid(4)
    x = prior_sample(grid, (4, 2), gen(18))
    with pytest.raises(ValueError, match=r"corrector_steps must be in 0\.\.100, got 1000000000000"):
        predictor_corrector(exact_model, x, grid, corrector_steps=10**12)
    with pytest.raises(TypeError, match="corrector_steps must be an int, got float"):
        predictor_corrector(exact_model, x, grid, corrector_steps=1.0)
    for snr in (math.inf, -math.inf, math.nan, 1.5):
        with pytest.raises(ValueError, match=r"snr must be a finite number in \[0, 1\], got"):
            predictor_corrector(exact_model, x, grid, snr=snr)
    for eta in (math.inf, -math.inf):
        with pytest.raises(ValueError, match=r"eta must be a finite number in \[0, 1\], got"):
            ddim(exact_model, x, grid, eta=eta)
    with pytest.raises(ValueError, match=r"variance must be one of \('beta_tilde', 'beta'\)"):
        ddpm(exact_model, x, grid, variance=None)
    process = VPSDE()
    with pytest.raises(ValueError, match=r"steps must be in 2\.\.100000, got 1000000000000"):
        flow_endpoint(exact_model, x, process, 0.5, steps=10**12)
    with pytest.raises(TypeError, match="t must be a number or a 0-d tensor, got bool"):
        flow_endpoint(exact_model, x, process, True)
    with pytest.raises(TypeError, match="t must be a number or a 0-d tensor, got str"):
        flow_endpoint(exact_model, x, process, "0.5")
    with pytest.raises(ValueError, match=r"t must be one time, a 0-d tensor, got shape \(2,\)"):
        flow_endpoint(exact_model, x, process, torch.tensor([0.5, 0.4]))
    for t in (math.nan, math.inf):
        with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
            flow_endpoint(exact_model, x, process, t)
    for sigma_min in (math.inf, math.nan, 0.0):
        with pytest.raises(ValueError, match=r"sigma_min must be a finite number in \(0, inf\]"):
            flow_endpoint(exact_model, x, process, 0.5, sigma_min=sigma_min)


def test_plumbing_arguments_are_checked(exact_model, ddpm_schedule):
    grid = ddpm_schedule.grid(4)
    x = prior_sample(grid, (4, 2), gen(19))
    with pytest.raises(TypeError, match="sampler must be a sampler function, got str"):
        evaluations("ddpm", grid)
    with pytest.raises(TypeError, match="grid must be a TimeGrid, got Schedule"):
        evaluations(ddpm, ddpm_schedule)
    with pytest.raises(TypeError, match="rule must be callable as rule"):
        step_rule(None)
    with pytest.raises(ValueError, match="steps must be a list of 4 Step, one per grid step"):
        run_steps(euler_steps(grid)[:3], exact_model, x, grid)
    with pytest.raises(ValueError, match="steps must be a list of 4 Step, one per grid step"):
        run_steps([None] * 4, exact_model, x, grid)
    for rule in (
        ddpm_steps,
        ddim_steps,
        euler_steps,
        heun_steps,
        euler_maruyama_steps,
        dpm_solver_pp_2m_steps,
        unipc_steps,
    ):
        with pytest.raises(TypeError, match="grid must be a TimeGrid, got Schedule"):
            rule(ddpm_schedule)


# ------------------------------------------------------------- no host synchronisation


class SyncCounter:
    """Counts host reads of tensor values while armed; the model's own reads do not count."""

    METHODS = ("item", "tolist", "cpu", "__bool__", "__float__")

    def __init__(self, monkeypatch):
        self.armed, self.calls = False, []
        for method in self.METHODS:
            original = getattr(torch.Tensor, method)
            monkeypatch.setattr(torch.Tensor, method, self._counting(method, original))

    def _counting(self, method, original):
        def wrapper(tensor, *args, **kwargs):
            if self.armed:
                self.calls.append(method)
            return original(tensor, *args, **kwargs)

        return wrapper

    def wrap(self, model):
        """Arm at the first model call (the loop has begun) and pause during every call."""

        def counted(x, point):
            self.armed = False
            try:
                return model(x, point)
            finally:
                self.armed = True

        return counted


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_no_host_synchronisation_inside_the_loop(name, exact_model, ddpm_schedule, monkeypatch):
    grid = ddpm_schedule.grid(6)
    x = prior_sample(grid, (16, 2), gen(18))
    counter = SyncCounter(monkeypatch)
    SAMPLERS[name](counter.wrap(exact_model), x, grid, gen(19), callback=None)
    counter.armed = False
    assert counter.calls == [], f"{name} read tensor values on the host: {counter.calls}"
    # The counter does see a read when one happens.
    counter.armed = True
    bool(torch.ones(()))
    counter.armed = False
    assert counter.calls == ["__bool__"]


def test_euler_maruyama_and_predictor_corrector_are_reproducible(exact_model, ddpm_schedule):
    grid = ddpm_schedule.grid(5)
    x = prior_sample(grid, (8, 2), gen(20))
    for sampler in (euler_maruyama, predictor_corrector, ddpm, heun):
        first, second = (
            sampler(exact_model, x, grid, gen(21)),
            sampler(exact_model, x, grid, gen(21)),
        )
        torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_edm_grids_are_the_variance_exploding_view():
    # EDM's default grid is karras_sigmas with sigma = 0 appended, scale 1, model time sigma.
    grid = EDM(0.1, 80.0).grid(4)
    sigmas = karras_sigmas(4, 0.1, 80.0)
    assert torch.equal(grid.t, torch.cat([sigmas, torch.zeros(1, dtype=F64)]))
    assert torch.equal(grid.std, grid.t) and torch.equal(grid.scale, torch.ones(5, dtype=F64))
    assert torch.equal(grid.sigma[:-1], sigmas)
    assert [point.t.item() for point in grid.points] == grid.t.tolist()
    # Any other list of noise levels: TimeGrid(t, 1, t) with t = [sigmas, 0].
    sigmas = torch.tensor([80.0, 10.0, 1.0, 0.1], dtype=F64)
    t = torch.cat([sigmas, torch.zeros(1, dtype=F64)])
    grid = TimeGrid(t, torch.ones_like(t), t)
    assert torch.equal(grid.t, torch.tensor([80.0, 10.0, 1.0, 0.1, 0.0], dtype=F64))
    assert torch.equal(grid.sigma[:-1], sigmas)
    with pytest.raises(ValueError, match="t must be strictly decreasing"):
        t = torch.tensor([1.0, 0.0, 0.0], dtype=F64)
        TimeGrid(t, torch.ones_like(t), t)
    with pytest.raises(ValueError, match="t must be strictly decreasing"):
        t = torch.tensor([1.0, 2.0, 0.0], dtype=F64)
        TimeGrid(t, torch.ones_like(t), t)
    with pytest.raises(TypeError, match="t must be a 1-D torch.Tensor"):
        TimeGrid([1.0, 0.5, 0.0], torch.ones(3, dtype=F64), torch.ones(3, dtype=F64))
    with pytest.raises(ValueError, match=r"sigma_min must be a finite number in \(0, inf\)"):
        EDM(0.0, 80.0)
    with pytest.raises(ValueError, match=r"sigma_max must be a finite number in \(0, inf\]"):
        EDM(1.0, math.inf)


# ----------------------------------------------------------- TimeGrid indexing and slicing


def test_time_grid_indexing_and_slicing(ddpm_schedule):
    grid = ddpm_schedule.grid(10)
    assert len(grid) == 11 == grid.steps + 1 and len(grid.points) == 11
    assert isinstance(grid.points, tuple)
    # grid[:-1] is the grid a caller once built by hand to stop before the clean point.
    truncated = grid[:-1]
    by_hand = TimeGrid(grid.t[:-1], grid.scale[:-1], grid.std[:-1])
    for field in ("t", "scale", "std"):
        assert torch.equal(getattr(truncated, field), getattr(by_hand, field)), field
    assert isinstance(truncated, TimeGrid) and truncated.steps == 9
    assert truncated.points == by_hand.points
    middle = grid[3:6]
    assert middle.steps == 2 and torch.equal(middle.t, grid.t[3:6])
    # grid[i] is a GridPoint whose Python floats are the tensors' values, exactly.
    for i in (0, 4, -1):
        point = grid[i]
        assert isinstance(point, GridPoint) and point is grid.points[i]
        assert type(point.scale) is float and type(point.std) is float
        assert point.scale == grid.scale[i].item() and point.std == grid.std[i].item()
        assert torch.equal(point.t, grid.t[i]) and point.t.ndim == 0
        assert point.sigma == grid.sigma[i].item()
        assert math.isclose(point.log_snr, grid.log_snr[i].item(), rel_tol=4 * EPS)
    assert grid[0].t == 1000 and grid[-1].t == 0
    assert (grid[-1].sigma, grid[-1].log_snr) == (0.0, math.inf)
    zero = RectifiedFlow().grid(4)[0]
    assert (zero.scale, zero.std, zero.sigma, zero.log_snr) == (0.0, 1.0, math.inf, -math.inf)
    with pytest.raises(IndexError, match="index out of range"):
        grid[11]
    with pytest.raises(ValueError, match="at least 2 points"):
        grid[3:4]  # a single point is not a grid


# ------------------------------------------------------------------- model evaluations


def counting(model, calls):
    def counted(x, point):
        calls.append(point)
        return model(x, point)

    return counted


@pytest.mark.parametrize("K", [1, 2, 7])
def test_evaluations_count_the_model_calls(K, exact_model, ddpm_schedule):
    # On a grid that ends at std = 0: one call per step, Heun and the predictor-corrector one
    # more per step but the last (its Euler step onto sigma = 0, no corrector at the clean
    # point), UniPC none more (its corrector's call is the next step's).
    grid = ddpm_schedule.grid(K)
    expected = {
        "ddpm": K,
        "ddim": K,
        "euler": K,
        "heun": 2 * K - 1,
        "euler_maruyama": K,
        "predictor_corrector": 2 * K - 1,
        "dpm_solver_pp_2m": K,
        "unipc": K,
    }
    assert set(expected) == set(SAMPLERS)
    x = prior_sample(grid, (16, 2), gen(30))
    for name, count in expected.items():
        assert evaluations(SAMPLERS[name], grid) == count, name
        calls = []
        SAMPLERS[name](counting(exact_model, calls), x, grid, gen(31))
        assert len(calls) == count, name
        assert calls[0] is grid[0] and all(p in grid.points[:-1] for p in calls), name
    assert evaluations(predictor_corrector, grid, corrector_steps=1) == 2 * K - 1
    assert evaluations(predictor_corrector, grid, corrector_steps=0) == K
    assert evaluations(predictor_corrector, grid, corrector_steps=3) == K + 3 * (K - 1)


def test_evaluations_on_partial_and_zero_snr_grids(exact_model, ddpm_schedule):
    # A grid that stops at std > 0 (K steps): Heun corrects the last step too, and UniPC
    # evaluates the model at its last point to correct it. From zero SNR Heun's first step is
    # Euler's.
    K = 6
    partial = ddpm_schedule.grid(K + 1)[:-1]
    assert partial.steps == K and float(partial.std[-1]) > 0
    assert evaluations(heun, partial) == 2 * K and evaluations(euler, partial) == K
    assert evaluations(SAMPLERS["unipc"], partial) == K + 1
    assert evaluations(predictor_corrector, partial) == 2 * K
    flow = RectifiedFlow().grid(K)
    assert evaluations(heun, flow) == 2 * K - 2 and evaluations(SAMPLERS["unipc"], flow) == K
    calls = []
    heun(counting(exact_model, calls), prior_sample(flow, (4, 2), gen(32)), flow)
    assert len(calls) == 2 * K - 2


# ------------------------------------------------------------------ the rectified-flow path


DETERMINISTIC = {"ddim": 1, "euler": 1, "heun": 2, "dpm_solver_pp_2m": 2, "unipc": 2}


def mixture_covariance(mixture):
    second = sum(
        w * (c + m[:, None] * m[None, :])
        for w, m, c in zip(mixture.weights, mixture.means, mixture.covs, strict=True)
    )
    return second - mixture.mean[:, None] * mixture.mean[None, :]


@pytest.fixture(scope="module")
def zero_snr_flow(mixture):
    """The start z of the rectified-flow path at t = 1 (pure noise) and the exact end of its
    probability flow. The flow cannot be started at zero SNR, so it is started at t = 1 - d from
    its Taylor expansion: with D = E[x0 | x_t] = mean + Cov (1 - t) x / t^2 + O((1 - t)^2) and
    the velocity v = (x - D) / t, x(1) = z gives v = z - mean and x'' = Cov z at t = 1, so
    x(1 - d) = z - d (z - mean) + d^2 / 2 Cov z + O(d^3)."""
    model = exact_denoiser(mixture)
    z = torch.randn(64, 2, generator=gen(40), dtype=F64)
    cov = mixture_covariance(mixture)

    def end(d, steps):
        start = z - d * (z - mixture.mean) + d**2 / 2 * z @ cov.T
        return flow_endpoint(model, start, RectifiedFlow(), 1 - d, steps)

    reference = end(1e-3, 4000)
    # Validated: another start (d = 2e-3) and half the steps give the same end to 1e-6. (A
    # start without the d^2 term would be off by 2e-6 |Cov z|, about 6e-6 here, and the
    # 2000-step solve is within 3e-6 / 8 of the 4000-step one: its error falls like steps^-3.)
    assert rms_distance(end(2e-3, 2000), reference).item() < 1e-6
    return model, z, reference


@pytest.mark.slow
@pytest.mark.parametrize("name", list(DETERMINISTIC))
def test_rectified_flow_runs_through_every_deterministic_sampler(name, zero_snr_flow):
    # The straight path x_t = (1 - t) x0 + t eps from pure noise at t = 1, through the samplers
    # as they are, with the exact mixture denoiser: the error falls between 50 and 500 steps by
    # 10^p, p the order, within the suite's 0.3 on observed orders. From zero SNR every sampler
    # takes a first-order first step, whose local error O(h^2) makes UniPC second order here
    # (third on the closed-form flow above).
    model, z, reference = zero_snr_flow
    errors = []
    for steps in (50, 500):
        grid = RectifiedFlow().grid(steps)
        assert float(grid.scale[0]) == 0.0 and float(grid.std[0]) == 1.0
        out = SAMPLERS[name](model, z, grid)
        assert bool(torch.isfinite(out).all())
        errors.append(rms_distance(out, reference).item())
    order = DETERMINISTIC[name]
    assert errors[1] < 1e-2 and math.log10(errors[0] / errors[1]) > order - 0.3, (name, errors)


@pytest.mark.parametrize(
    "process", [VPSDE(), linear_schedule(), EDM(1e-4, 100.0)], ids=["VPSDE", "linear", "EDM"]
)
def test_the_flow_endpoint_does_not_depend_on_the_process(process, mixture):
    # The probability-flow ODE in y = x / scale is the same for every process: a rectified-flow
    # state at t = 0.7 and the matching state of another process (same sigma, x scaled by the
    # ratio of the scales) flow to the same clean point. The two solves are one computation on
    # sigma grids equal to a few ulps, so they agree to round-off: 1000 steps of eps * |x0|.
    model = exact_denoiser(mixture)
    rf, t = RectifiedFlow(), 0.7
    scale, std = (float(v) for v in rf.marginal(t))
    x = std * torch.randn(64, 2, generator=gen(41), dtype=F64)
    t_other = process.time_at(torch.tensor(std / scale, dtype=F64)).item()
    scale_other, std_other = (float(v) for v in process.marginal(torch.tensor(t_other, dtype=F64)))
    assert math.isclose(std_other / scale_other, std / scale, rel_tol=8 * EPS)
    end = flow_endpoint(model, x, rf, t, steps=1000)
    other = flow_endpoint(model, x * scale_other / scale, process, t_other, steps=1000)
    bound = 1000 * EPS * end.abs().max().item()
    assert (other - end).abs().max().item() < bound


# ------------------------------------------------------------------ shared argument checks


def test_check_number_names_the_argument_and_the_range():
    assert check_number("w", 3) == 3.0 and type(check_number("w", 3)) is float
    assert check_number("w", torch.tensor(0.5)) == 0.5
    assert check_number("eta", 1.0, 0.0, 1.0) == 1.0  # closed ends by default
    with pytest.raises(ValueError, match=r"^eta must be a finite number in \[0, 1\], got 1\.5$"):
        check_number("eta", 1.5, 0.0, 1.0)
    with pytest.raises(ValueError, match=r"^t must be a finite number in \(0, 1\), got 1$"):
        check_number("t", 1, 0, 1, low_open=True, high_open=True)
    with pytest.raises(ValueError, match=r"^t must be a finite number in \(0, 1\], got 0$"):
        check_number("t", 0, 0, 1, low_open=True)
    with pytest.raises(ValueError, match=r"^s must be a finite number in \[-inf, inf\], got nan"):
        check_number("s", math.nan)
    for value in (math.inf, -math.inf, torch.tensor(math.inf)):
        with pytest.raises(ValueError, match=r"^s must be a finite number in \[-inf, inf\]"):
            check_number("s", value)
    for value in (True, False):
        with pytest.raises(TypeError, match="^flag must be a number, got bool"):
            check_number("flag", value)
    with pytest.raises(TypeError, match="^flag must be a number, got Tensor"):
        check_number("flag", torch.tensor(True))  # a bool tensor is not read as 1.0
    for value in ("1", None, [1.0], torch.ones(2)):
        with pytest.raises(TypeError, match="^x must be a number, got"):
            check_number("x", value)


def test_check_labels_names_the_argument_and_the_range():
    labels = check_labels("labels", torch.tensor([0, 2, 1], dtype=torch.int32), 3, 3)
    assert labels.dtype == torch.int64 and labels.tolist() == [0, 2, 1]
    assert check_labels("labels", torch.tensor([5, 7])).tolist() == [5, 7]  # no range given
    for bad in (torch.tensor([0, 3]), torch.tensor([-1, 0])):
        with pytest.raises(ValueError, match=r"^labels must lie in 0\.\.2, got values in"):
            check_labels("labels", bad, classes=3)
    with pytest.raises(ValueError, match=r"got values in -1\.\.3$"):
        check_labels("labels", torch.tensor([-1, 3]), classes=3)
    with pytest.raises(ValueError, match=r"^y must have shape \(4,\), one per sample, got \(3,\)"):
        check_labels("y", torch.tensor([0, 1, 2]), 4)
    with pytest.raises(ValueError, match=r"^y must have shape \(n,\), one per sample, got \(\)"):
        check_labels("y", torch.tensor(1))
    for bad in (torch.tensor([True, False]), torch.tensor([0.0, 1.0])):
        with pytest.raises(TypeError, match="^y must hold integers, got dtype"):
            check_labels("y", bad)
    with pytest.raises(TypeError, match="^y must be an integer torch.Tensor, got list"):
        check_labels("y", [0, 1])


def test_predictor_corrector_makes_no_langevin_move_where_the_score_vanishes(ddpm_schedule):
    # At x = 0 with a model that returns x itself the score (D - y) / sigma^2 is zero for the
    # whole batch: the step size 2 (snr |z| / |g|)^2 would be 0 / 0. The corrector then stays
    # put (it drew its noise, so the stream is not Euler-Maruyama's), and nothing is NaN.
    grid = ddpm_schedule.grid(6)

    def model(x, point):
        return x / point.scale

    x = torch.zeros(4, 2, dtype=F64)
    with_corrector = predictor_corrector(model, x, grid, gen(3), corrector_steps=1)
    assert bool(torch.isfinite(with_corrector).all())


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_an_empty_batch_is_refused_by_name(name, exact_model, ddpm_schedule):
    with pytest.raises(ValueError, match="x must have a batch axis with at least one sample"):
        SAMPLERS[name](exact_model, torch.zeros(0, 2, dtype=F64), ddpm_schedule.grid(4), gen(0))
