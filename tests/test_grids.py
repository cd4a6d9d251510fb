"""Tests for :mod:`diffusion_core.grids`: the fixed grids and the grid fitted to a model."""

import math

import pytest
import torch

from diffusion_core import grids, samplers
from diffusion_core.analytic import default_mixture_2d
from diffusion_core.parameterization import exact_denoiser
from diffusion_core.schedules import EDM, TimeGrid, linear_schedule

F64 = torch.float64
MODEL = exact_denoiser(default_mixture_2d())
SCHEDULE = linear_schedule(1000)
SMALL = {"pilot": 32, "max_trials": 60, "reference_steps": 100}


@pytest.fixture(scope="module")
def fit():
    return grids.fit_grid(MODEL, SCHEDULE, 5, seed=3, **SMALL)


def test_fitted_grid_is_a_valid_grid_within_the_process_range(fit):
    grid = fit.grid
    assert isinstance(grid, TimeGrid) and grid.steps == 5
    t = grid.t.tolist()
    assert t[0] == SCHEDULE.t_max and t[-1] == 0
    assert all(b < a for a, b in zip(t, t[1:], strict=False))
    assert all(SCHEDULE.t_min <= v <= SCHEDULE.t_max for v in t[:-1])
    # the grid's scale and std are the process's own at its times
    scale, std = SCHEDULE.marginal(grid.t)
    torch.testing.assert_close(grid.scale, scale, rtol=0, atol=0)
    torch.testing.assert_close(grid.std, std, rtol=0, atol=0)
    # and every sampler takes it
    x = samplers.prior_sample(grid, (4, 2), torch.Generator().manual_seed(0))
    for sampler in (samplers.euler, samplers.heun, samplers.ipndm, samplers.unipc_3):
        assert torch.isfinite(sampler(MODEL, x, grid)).all()


def test_fit_is_never_worse_than_its_start_on_the_pilot_starts(fit):
    assert fit.error <= fit.start_error
    # recomputed independently: the same pilot starts and reference as fit_grid draws
    start = SCHEDULE.grid(5, "log_snr")
    x = samplers.prior_sample(start, (32, 2), torch.Generator().manual_seed(3))
    reference = samplers.flow_endpoint(MODEL, x, SCHEDULE, SCHEDULE.t_max, 100)

    def error(grid):
        return float((samplers.unipc(MODEL, x, grid) - reference).square().sum(1).mean().sqrt())

    assert error(start) == pytest.approx(fit.start_error, rel=1e-12)
    assert error(fit.grid) == pytest.approx(fit.error, rel=1e-9)
    # with this budget the search finds a clearly better grid (measured: 0.15 of the start)
    assert fit.error < 0.5 * fit.start_error
    assert fit.trials > 12 and fit.seconds > 0


def test_fit_is_deterministic_for_a_seed(fit):
    again = grids.fit_grid(MODEL, SCHEDULE, 5, seed=3, **SMALL)
    assert torch.equal(again.grid.t, fit.grid.t) and again.error == fit.error


def test_fixed_grids_are_the_process_spacings():
    fixed = grids.fixed_grids(SCHEDULE, 6)
    assert list(fixed) == ["uniform in t", "uniform in log-SNR", "Karras rho = 7"]
    lam = fixed["uniform in log-SNR"].log_snr[:-1]
    assert torch.allclose(lam.diff(), lam.diff()[0].expand(5), rtol=1e-6)
    rho = fixed["Karras rho = 7"].sigma[:-1] ** (1 / 7)
    assert torch.allclose(rho.diff(), rho.diff()[0].expand(5), rtol=1e-6)
    t = fixed["uniform in t"].t[:-1]
    assert torch.allclose(t.diff(), t.diff()[0].expand(5))


def test_grid_from_sigmas_round_trips_the_noise_levels():
    levels = torch.tensor([80.0, 10.0, 1.0, 0.1, 0.01], dtype=F64)
    grid = grids.grid_from_sigmas(EDM(), levels)
    torch.testing.assert_close(grid.sigma[:-1], levels, rtol=1e-12, atol=0)
    assert grid.points[-1].std == 0
    with pytest.raises(ValueError, match="strictly decreasing"):
        grids.grid_from_sigmas(EDM(), torch.tensor([10.0, 10.0], dtype=F64))
    with pytest.raises(ValueError, match="process's range"):
        grids.grid_from_sigmas(EDM(), torch.tensor([1000.0, 1.0], dtype=F64))


def test_one_step_has_nothing_to_fit():
    fit = grids.fit_grid(MODEL, SCHEDULE, 1, **SMALL)
    assert fit.error == fit.start_error and fit.grid.steps == 1


def test_arguments_are_checked():
    with pytest.raises(TypeError, match="model must be callable"):
        grids.fit_grid(None, SCHEDULE, 4)
    with pytest.raises(TypeError, match="process must be a Process"):
        grids.fit_grid(MODEL, "vp", 4)
    with pytest.raises(ValueError, match="steps must be in 1"):
        grids.fit_grid(MODEL, SCHEDULE, 0)
    with pytest.raises(ValueError, match="steps must be in 1"):
        grids.fixed_grids(SCHEDULE, grids.MAX_FIT_STEPS + 1)
    with pytest.raises(ValueError, match="start must be one of"):
        grids.fit_grid(MODEL, SCHEDULE, 4, start="trailing")
    with pytest.raises(ValueError, match="pilot must be in 1"):
        grids.fit_grid(MODEL, SCHEDULE, 4, pilot=0)
    with pytest.raises(ValueError, match="shape must be a tuple of positive ints"):
        grids.fit_grid(MODEL, SCHEDULE, 4, shape=(0,))
    with pytest.raises(TypeError, match="sampler must be a sampler function"):
        grids.fit_grid(MODEL, SCHEDULE, 4, sampler="unipc")
    with pytest.raises(ValueError, match="max_trials must be in 1"):
        grids.fit_grid(MODEL, SCHEDULE, 4, max_trials=0)
    with pytest.raises(ValueError, match="finite noise level at t_max"):
        from diffusion_core.schedules import RectifiedFlow

        grids.fit_grid(MODEL, RectifiedFlow(), 4)


def test_power_grid_is_uniform_in_t_at_power_one_and_denser_near_the_data_above():
    uniform = grids.power_grid(SCHEDULE, 5, 1.0, 1.0)
    assert uniform.t.tolist()[:-1] == pytest.approx([1000.0, 750.25, 500.5, 250.75, 1.0])
    assert float(uniform.t[-1]) == 0.0
    dense = grids.power_grid(SCHEDULE, 5, 2.0, 1.0)
    gaps = (-dense.t[:-1].diff()).tolist()
    assert all(b < a for a, b in zip(gaps, gaps[1:], strict=False))
    with pytest.raises(ValueError, match="t_end must be a finite number"):
        grids.power_grid(SCHEDULE, 5, 1.0, 1000.0)
    with pytest.raises(ValueError, match="power must be a finite number"):
        grids.power_grid(SCHEDULE, 5, 0.0, 1.0)


@pytest.mark.parametrize("statistic", ["mean", "median"])
def test_power_family_fit_beats_its_start_and_reports_its_statistic(statistic):
    fit = grids.fit_grid(MODEL, SCHEDULE, 5, seed=4, family="power", statistic=statistic, **SMALL)
    assert fit.error <= fit.start_error and fit.trials > 7
    t = fit.grid.t[:-1]
    # a member of the family: from t_max, its last noisy time in [t_min, t_max)
    assert float(t[0]) == SCHEDULE.t_max and SCHEDULE.t_min <= float(t[-1]) < SCHEDULE.t_max
    x = samplers.prior_sample(fit.grid, (32, 2), torch.Generator().manual_seed(4))
    reference = samplers.flow_endpoint(MODEL, x, SCHEDULE, SCHEDULE.t_max, 100)
    squared = (samplers.unipc(MODEL, x, fit.grid) - reference).square().sum(1)
    value = squared.mean() if statistic == "mean" else squared.median()
    assert float(value.sqrt()) == pytest.approx(fit.error, rel=1e-9)


def _window_mass(lower, upper, height, center, width):
    """The integral of 1 + height exp(-(u - center)^2 / (2 width^2)) from lower to upper."""
    scale = math.sqrt(2) * width
    bump = math.erf((upper - center) / scale) - math.erf((lower - center) / scale)
    return (upper - lower) + height * width * math.sqrt(math.pi / 2) * bump


@pytest.mark.parametrize("height", [0.0, 3.0, 50.0])
def test_window_grid_puts_equal_density_mass_between_its_levels(height):
    """Each gap between neighbouring noisy levels holds 1 / (K - 1) of the density's integral
    (the closed form in erf), from sigma_max to sigma_end; at height 0 the levels are evenly
    spaced in log sigma, and with a bump the smallest gap lies next to its centre."""
    center, width, end = math.log(2.0), 0.8, 0.05
    grid = grids.window_grid(SCHEDULE, 9, height, 2.0, width, end)
    sigma = grid.sigma[:-1].tolist()
    high = float(SCHEDULE.grid(1)[0].sigma)
    assert sigma[0] == pytest.approx(high, rel=1e-12) and sigma[-1] == pytest.approx(end, rel=1e-9)
    assert float(grid.t[0]) == SCHEDULE.t_max and float(grid.t[-1]) == 0.0
    u = [math.log(v) for v in sigma]
    total = _window_mass(u[-1], u[0], height, center, width)
    for a, b in zip(u, u[1:], strict=False):
        assert _window_mass(b, a, height, center, width) == pytest.approx(total / 8, rel=1e-6)
    gaps = [a - b for a, b in zip(u, u[1:], strict=False)]
    if height == 0:
        assert max(gaps) - min(gaps) < 1e-6
    else:
        narrow = gaps.index(min(gaps))
        assert u[narrow + 1] - 0.5 <= center <= u[narrow] + 0.5


def test_window_grid_refuses_bad_numbers_by_name():
    for name, value, match in [
        ("height", -1.0, "height must be a finite number in"),
        ("width", 0.0, "width must be a finite number in"),
        ("sigma_center", 0.0, "sigma_center must be a finite number in"),
        ("sigma_end", 1e-4, "sigma_end must be a finite number in"),
        ("sigma_end", 1e4, "sigma_end must be a finite number in"),
    ]:
        settings = {"height": 3.0, "sigma_center": 2.0, "width": 1.0, "sigma_end": 0.1}
        with pytest.raises(ValueError, match=match):
            grids.window_grid(SCHEDULE, 5, **{**settings, name: value})


def test_window_family_fit_is_valid_never_worse_than_its_start_and_deterministic():
    fits = [grids.fit_grid(MODEL, SCHEDULE, 6, seed=5, family="window", **SMALL) for _ in "ab"]
    fit = fits[0]
    assert fit.error <= fit.start_error and fit.trials > 37
    assert torch.equal(fit.grid.t, fits[1].grid.t) and fit.error == fits[1].error
    t = fit.grid.t.tolist()
    assert t[0] == SCHEDULE.t_max and t[-1] == 0.0
    assert all(b < a for a, b in zip(t, t[1:], strict=False))


def test_fit_refuses_unknown_family_and_statistic():
    with pytest.raises(ValueError, match="family must be one of"):
        grids.fit_grid(MODEL, SCHEDULE, 3, family="spline", **SMALL)
    with pytest.raises(ValueError, match="statistic must be one of"):
        grids.fit_grid(MODEL, SCHEDULE, 3, statistic="max", **SMALL)
