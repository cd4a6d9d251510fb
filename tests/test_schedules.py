"""Tests for :mod:`diffusion_core.schedules`: invariants, known figures, continuous processes."""

import math

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from scipy import integrate

from diffusion_core.schedules import (
    EDM,
    GRID_SPACINGS,
    SPACINGS,
    VESDE,
    VPSDE,
    RectifiedFlow,
    Schedule,
    alpha_bar_to_log_snr,
    alpha_bar_to_sigma,
    alpha_bar_to_snr,
    cosine_schedule,
    karras_sigmas,
    linear_schedule,
    log_snr_to_alpha_bar,
    log_snr_to_sigma,
    rescale_zero_terminal_snr,
    scaled_linear_schedule,
    sigma_to_alpha_bar,
    sigma_to_log_snr,
    sigmoid_schedule,
    timestep_spacing,
)

EPS = torch.finfo(torch.float64).eps

# --- strategies -----------------------------------------------------------------------------

steps = st.integers(2, 2000)
schedules = st.one_of(
    st.builds(linear_schedule, steps, st.floats(1e-5, 1e-3), st.floats(5e-3, 5e-2)),
    st.builds(scaled_linear_schedule, steps, st.floats(1e-4, 2e-3), st.floats(5e-3, 3e-2)),
    st.builds(cosine_schedule, steps, st.floats(1e-4, 0.05)),
    st.builds(sigmoid_schedule, steps, st.floats(-5, 0), st.floats(1, 5), st.floats(0.3, 2)),
)


def float_tensors(min_value, max_value, **kwargs):
    values = st.floats(min_value, max_value, **kwargs)
    return st.lists(values, min_size=1, max_size=64).map(
        lambda v: torch.tensor(v, dtype=torch.float64)
    )


@st.composite
def steps_and_count(draw):
    T = draw(st.integers(1, 2000))
    return T, draw(st.integers(1, T))


# --- invariants of every schedule -----------------------------------------------------------


@given(schedules)
def test_alpha_bars_start_at_one_and_strictly_decrease_inside_unit_interval(schedule):
    alpha_bars = schedule.alpha_bars
    assert alpha_bars.shape == (schedule.T + 1,)
    assert alpha_bars[0] == 1.0
    assert bool((alpha_bars[1:].diff() < 0).all())
    assert bool((alpha_bars[1:] > 0).all()) and bool((alpha_bars[1:] < 1).all())


@given(schedules)
def test_rescale_zero_terminal_snr(schedule):
    rescaled = rescale_zero_terminal_snr(schedule)
    alpha_bars = rescaled.alpha_bars
    assert rescaled.T == schedule.T
    assert alpha_bars[-1] == 0.0
    assert rescaled.betas[-1] == 1.0
    assert rescaled.terminal_snr == 0.0
    assert bool((alpha_bars[:-1].diff() < 0).all())
    assert bool((alpha_bars[:-1] > 0).all())
    # alpha_bar_1 goes through a multiply, a divide, a square and a product: a few ulps.
    assert float(alpha_bars[1]) == pytest.approx(float(schedule.alpha_bars[1]), rel=1e-12)


@given(schedules)
def test_from_alpha_bars_round_trips_betas(schedule):
    rebuilt = Schedule.from_alpha_bars(schedule.alpha_bars[1:])
    # beta = 1 - a_t / a_{t-1} recovers beta_t up to the rounding of one product and one
    # quotient of numbers below 1: a few ulps of 1 in absolute terms.
    torch.testing.assert_close(rebuilt.betas, schedule.betas, rtol=0, atol=20 * EPS)


def test_zero_terminal_snr_schedule_accepts_a_final_beta_of_one():
    schedule = Schedule(torch.tensor([0.1, 0.2, 1.0], dtype=torch.float64))
    assert schedule.alpha_bars[-1] == 0.0
    assert schedule.sigmas[-1] == math.inf
    assert schedule.log_snr[-1] == -math.inf


# --- conversions ----------------------------------------------------------------------------

# Round trips agree to a relative 1e-10 wherever the conversion is well conditioned. Where the
# quantity itself crosses zero (log-SNR near 0) relative error is meaningless, so an absolute
# floor of ~4500 ulps of 1 (1e-12) is allowed as well. Ranges avoid the ill-conditioned ends:
# log_snr -> alpha_bar -> log_snr loses eps * exp(lambda) to rounding of 1 - alpha_bar, so lambda
# stays below 12; sigma -> alpha_bar -> sigma loses eps / sigma^2, so sigma stays above 1e-2.
ROUND_TRIP = {"rtol": 1e-10, "atol": 1e-12}


@given(float_tensors(1e-300, 1.0, exclude_max=True))
def test_alpha_bar_round_trips_through_log_snr_and_sigma(alpha_bar):
    torch.testing.assert_close(
        log_snr_to_alpha_bar(alpha_bar_to_log_snr(alpha_bar)), alpha_bar, rtol=1e-10, atol=0
    )
    torch.testing.assert_close(
        sigma_to_alpha_bar(alpha_bar_to_sigma(alpha_bar)), alpha_bar, rtol=1e-10, atol=0
    )


@given(float_tensors(-700.0, 12.0))
def test_log_snr_round_trips_through_alpha_bar(log_snr):
    torch.testing.assert_close(
        alpha_bar_to_log_snr(log_snr_to_alpha_bar(log_snr)), log_snr, **ROUND_TRIP
    )


@given(float_tensors(-1000.0, 1000.0))
def test_log_snr_round_trips_through_sigma(log_snr):
    torch.testing.assert_close(sigma_to_log_snr(log_snr_to_sigma(log_snr)), log_snr, **ROUND_TRIP)


@given(float_tensors(1e-300, 1e300))
def test_sigma_round_trips_through_log_snr(sigma):
    torch.testing.assert_close(log_snr_to_sigma(sigma_to_log_snr(sigma)), sigma, **ROUND_TRIP)


@given(float_tensors(1e-2, 1e100))
def test_sigma_round_trips_through_alpha_bar(sigma):
    torch.testing.assert_close(alpha_bar_to_sigma(sigma_to_alpha_bar(sigma)), sigma, **ROUND_TRIP)


@given(float_tensors(1e-6, 1 - 1e-6))
def test_conversions_agree_with_each_other(alpha_bar):
    snr = alpha_bar_to_snr(alpha_bar)
    torch.testing.assert_close(snr, alpha_bar / (1 - alpha_bar), rtol=1e-13, atol=0)
    torch.testing.assert_close(alpha_bar_to_log_snr(alpha_bar).exp(), snr, rtol=1e-10, atol=0)
    torch.testing.assert_close(alpha_bar_to_sigma(alpha_bar) ** -2, snr, rtol=1e-10, atol=0)


# --- timestep spacings ----------------------------------------------------------------------


@given(steps_and_count(), st.sampled_from(SPACINGS))
@example((1, 1), "leading")
@example((1000, 1000), "trailing")
@example((1000, 1), "linspace")
@example((1000, 50), "leading")
@example((999, 998), "trailing")
def test_timestep_spacing_gives_k_distinct_decreasing_steps(T_and_k, spacing):
    T, k = T_and_k
    steps = timestep_spacing(T, k, spacing)
    assert steps.dtype == torch.int64
    assert steps.shape == (k,)
    assert bool((steps.diff() < 0).all())  # strictly decreasing, hence distinct
    assert 1 <= int(steps.min()) and int(steps.max()) <= T
    if spacing == "trailing":
        assert steps[0] == T
        # round(T - i T / k): within half a step (plus float slack) of the exact grid
        exact = T - torch.arange(k, dtype=torch.float64) * T / k
        assert float((steps - exact).abs().max()) <= 0.5 + 1e-9
    elif spacing == "leading":
        assert steps[-1] == 1
        assert bool(((steps - 1) % (T // k) == 0).all())
        # 1 + (k - 1) (T // k) = T only when T // k = 1 and k divides T, i.e. k = T
        assert bool((steps == T).any()) == (k == T)
    else:
        assert steps[-1] == 1
        if k > 1:
            assert steps[0] == T


def test_leading_spacing_misses_the_last_step_that_trailing_starts_from():
    assert timestep_spacing(1000, 50, "leading").tolist()[:2] == [981, 961]
    assert timestep_spacing(1000, 50, "trailing").tolist()[:2] == [1000, 980]
    assert timestep_spacing(1000, 50, "linspace").tolist()[:2] == [1000, 980]


# --- known figures --------------------------------------------------------------------------


def test_stable_diffusion_schedule_figures():
    schedule = scaled_linear_schedule()
    # The widely quoted figures: terminal SNR 0.00468 and init_noise_sigma 14.6146.
    assert schedule.terminal_snr == pytest.approx(0.00468, abs=1e-5)
    assert float(schedule.sigmas[-1]) == pytest.approx(14.6146, abs=1e-3)
    assert float(schedule.betas[0]) == pytest.approx(0.00085, rel=1e-12)
    assert float(schedule.betas[-1]) == pytest.approx(0.012, rel=1e-12)


def test_ddpm_linear_schedule_figures():
    schedule = linear_schedule()
    assert schedule.T == 1000
    assert float(schedule.betas[0]) == pytest.approx(1e-4, rel=1e-12)
    assert float(schedule.betas[-1]) == pytest.approx(0.02, rel=1e-12)
    # alpha_bar_T = prod (1 - beta_t) = 4.0358e-5 (DDPM's quoted terminal value, 3 figures)
    assert float(schedule.alpha_bars[-1]) == pytest.approx(4.04e-5, rel=2e-3)


def test_cosine_betas_are_clipped_at_max_beta():
    betas = cosine_schedule().betas
    # alpha_bar(1) = cos^2(pi/2) ~ 0 would make the last beta 1; the clip holds it at 0.999.
    assert betas[-1] == 0.999
    assert betas.max() == 0.999
    assert bool((betas[:-1] < 0.999).all())
    assert cosine_schedule(max_beta=0.5).betas.max() == 0.5


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


@pytest.mark.parametrize(
    "schedule, alpha_bar",
    [
        (
            cosine_schedule(500, s=0.008),
            lambda u: (
                math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
                / math.cos(0.008 / 1.008 * math.pi / 2) ** 2
            ),
        ),
        (
            sigmoid_schedule(500, start=-3.0, end=3.0, tau=0.7),
            lambda u: (
                (_sigmoid(3 / 0.7) - _sigmoid((6 * u - 3) / 0.7))
                / (_sigmoid(3 / 0.7) - _sigmoid(-3 / 0.7))
            ),
        ),
    ],
    ids=["cosine", "sigmoid"],
)
def test_continuous_alpha_bar_schedules_follow_their_definition(schedule, alpha_bar):
    # alpha_bar_t = alpha_bar(t / T) for t < T (only the last beta is clipped). The product of
    # T rounded factors 1 - beta_t drifts by at most ~T eps = 1e-13 relative.
    T = schedule.T
    expected = torch.tensor([alpha_bar(t / T) for t in range(T)], dtype=torch.float64)
    torch.testing.assert_close(schedule.alpha_bars[:T], expected, rtol=1e-10, atol=0)
    assert schedule.betas[-1] == 0.999  # alpha_bar(1) = 0 (or ~1e-33): the clip holds beta_T


def test_vpsde_discretization_is_the_ddpm_linear_schedule():
    T, sde = 1000, VPSDE()
    vp, ddpm = sde.discretize(T).betas, linear_schedule(T).betas
    # beta_t = beta((t - 1/2)/T)/T vs beta_min/T + (t - 1)(beta_max - beta_min)/(T (T - 1)):
    # their difference is (beta_max - beta_min)/T * ((t - 1/2)/T - (t - 1)/(T - 1)), linear in
    # t and +-1/(2T) at the ends, so at most (beta_max - beta_min) / (2 T^2) = 9.95e-6.
    bound = (sde.beta_max - sde.beta_min) / (2 * T**2)
    assert float((vp - ddpm).abs().max()) <= bound * (1 + 1e-9)
    # Both sums are the exact integral of beta(t) (midpoint and trapezoid rules on a line).
    assert float(vp.sum()) == pytest.approx(float(ddpm.sum()), rel=1e-12)


def test_karras_sigmas():
    sigma_min, sigma_max, rho, n = 0.002, 80.0, 7.0, 18
    sigmas = karras_sigmas(n, sigma_min, sigma_max, rho)
    assert sigmas.dtype == torch.float64 and sigmas.shape == (n,)
    assert sigmas[0] == sigma_max and sigmas[-1] == sigma_min
    assert bool((sigmas.diff() < 0).all())
    gaps = (sigmas ** (1 / rho)).diff()
    torch.testing.assert_close(gaps, gaps.mean().expand(n - 1), rtol=1e-12, atol=0)


@given(
    st.integers(2, 500),
    st.floats(1e-4, 1.0),
    st.floats(1.5, 1000.0),
    st.floats(0.5, 10.0),
)
def test_karras_sigmas_properties(n, sigma_min, sigma_max, rho):
    sigmas = karras_sigmas(n, sigma_min, sigma_max, rho)
    assert sigmas[0] == sigma_max and sigmas[-1] == sigma_min
    assert bool((sigmas.diff() < 0).all())


# --- continuous-time processes --------------------------------------------------------------


@pytest.mark.parametrize("beta_min, beta_max", [(0.1, 20.0), (0.01, 1.0), (1.0, 50.0)])
def test_vpsde_marginal_is_exp_of_minus_integrated_beta(beta_min, beta_max):
    sde = VPSDE(beta_min, beta_max)
    for t in [0.0, 0.01, 0.3, 0.77, 1.0]:
        integral, _ = integrate.quad(lambda s: float(sde.beta(s)), 0.0, t, epsabs=1e-13)
        scale, std = sde.marginal(t)
        assert float(scale) ** 2 == pytest.approx(math.exp(-integral), rel=1e-8, abs=1e-300)
        assert float(std) ** 2 == pytest.approx(-math.expm1(-integral), rel=1e-8, abs=1e-300)
        assert float(sde.log_alpha_bar(t)) == pytest.approx(-integral, rel=1e-8, abs=1e-300)


@pytest.mark.parametrize("sigma_min, sigma_max", [(0.01, 50.0), (0.002, 80.0)])
def test_vesde_marginal_and_diffusion(sigma_min, sigma_max):
    sde = VESDE(sigma_min, sigma_max)
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    scale, std = sde.marginal(t)
    assert bool((scale == 1).all())
    torch.testing.assert_close(std**2 + sigma_min**2, sde.sigma(t) ** 2, rtol=1e-12, atol=0)
    assert float(sde.sigma(0.0)) == pytest.approx(sigma_min, rel=1e-14)
    assert float(sde.sigma(1.0)) == pytest.approx(sigma_max, rel=1e-14)
    # Central difference of sigma^2(t) = sigma_min^2 r^(2t): truncation error h^2 (2 log r)^2 / 6
    # relative (< 1e-8 for h = 1e-5, log r < 11), rounding eps / h ~ 2e-11: so 1e-7 relative.
    h = 1e-5
    slope = (sde.sigma(t + h) ** 2 - sde.sigma(t - h) ** 2) / (2 * h)
    torch.testing.assert_close(sde.diffusion(t) ** 2, slope, rtol=1e-7, atol=0)


def test_vpsde_diffusion_and_drift():
    sde = VPSDE()
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    torch.testing.assert_close(sde.diffusion(t) ** 2, sde.beta(t), rtol=1e-14, atol=0)
    x = torch.linspace(-3, 3, 50, dtype=torch.float64)
    torch.testing.assert_close(sde.drift(x, t), -0.5 * sde.beta(t) * x, rtol=1e-14, atol=0)
    # beta(t) = -d log alpha_bar / dt; central difference of a quadratic is exact up to rounding.
    h = 1e-5
    slope = -(sde.log_alpha_bar(t + h) - sde.log_alpha_bar(t - h)) / (2 * h)
    torch.testing.assert_close(sde.beta(t), slope, rtol=1e-8, atol=0)


@given(schedules)
def test_discrete_marginal_matches_alpha_bars(schedule):
    t = torch.arange(schedule.T + 1)
    scale, std = schedule.marginal(t)
    torch.testing.assert_close(scale**2, schedule.alpha_bars, rtol=1e-14, atol=0)
    torch.testing.assert_close(std**2, 1 - schedule.alpha_bars, rtol=1e-14, atol=1e-15)
    scale_T, std_T = schedule.marginal(schedule.T)
    assert scale_T**2 == pytest.approx(float(schedule.alpha_bars[-1]), rel=1e-14)
    assert std_T.shape == ()


# --- bad input ------------------------------------------------------------------------------


def f64(*values):
    return torch.tensor(values, dtype=torch.float64)


@pytest.mark.parametrize(
    "betas, error",
    [
        ([0.1, 0.2], TypeError),  # not a tensor
        (torch.full((2, 3), 0.1), ValueError),  # 2-D
        (torch.tensor([], dtype=torch.float64), ValueError),  # empty
        (f64(0.1, math.nan), ValueError),
        (f64(0.1, math.inf), ValueError),
        (torch.tensor([1, 1]), TypeError),  # integer dtype
        (f64(0.0, 0.1), ValueError),
        (f64(-0.1, 0.1), ValueError),
        (f64(0.1, 1.0, 0.2), ValueError),  # only the last beta may be 1
        (f64(0.1, 1.5), ValueError),
    ],
)
def test_schedule_rejects_bad_betas(betas, error):
    with pytest.raises(error, match="^betas must"):
        Schedule(betas)


@pytest.mark.parametrize("t", [-1, 11, torch.tensor([0, 11]), torch.tensor([-1, 3])])
def test_discrete_time_out_of_range(t):
    with pytest.raises(ValueError, match=r"^t must lie in 0\.\.10"):
        linear_schedule(10).marginal(t)


@pytest.mark.parametrize("t", [0.5, True, "3"])
def test_discrete_time_must_be_integer(t):
    # Real times are a floating-point tensor (the interpolation between steps); a Python float,
    # a bool or a string is refused.
    with pytest.raises(TypeError, match="^t must"):
        linear_schedule(10).marginal(t)


@pytest.mark.parametrize("t", [10.5, -0.5, math.nan])
def test_real_time_out_of_range(t):
    with pytest.raises(ValueError, match=r"^t must"):
        linear_schedule(10).marginal(torch.tensor([1.0, t], dtype=torch.float64))


@pytest.mark.parametrize(
    "T, k, spacing, error, match",
    [
        (10, 0, "leading", ValueError, "^k must"),
        (10, 11, "trailing", ValueError, "^k must"),
        (10, 2.0, "trailing", TypeError, "^k must"),
        (0, 1, "trailing", ValueError, "^T must"),
        (10, 3, "uniform", ValueError, "^spacing must"),
    ],
)
def test_timestep_spacing_bad_input(T, k, spacing, error, match):
    with pytest.raises(error, match=match):
        timestep_spacing(T, k, spacing)


@pytest.mark.parametrize("fn", [sigma_to_alpha_bar, sigma_to_log_snr])
@pytest.mark.parametrize("sigma", [-1.0, f64(1.0, -1e-3), math.nan])
def test_negative_sigma(fn, sigma):
    with pytest.raises(ValueError, match="^sigma must"):
        fn(sigma)


@pytest.mark.parametrize("fn", [alpha_bar_to_snr, alpha_bar_to_log_snr, alpha_bar_to_sigma])
@pytest.mark.parametrize("alpha_bar", [1.5, -0.1, f64(0.5, 1 + 1e-12), math.nan])
def test_alpha_bar_outside_unit_interval(fn, alpha_bar):
    with pytest.raises(ValueError, match=r"^alpha_bar must lie in \[0, 1\]"):
        fn(alpha_bar)


@pytest.mark.parametrize("fn", [log_snr_to_alpha_bar, log_snr_to_sigma])
def test_nan_log_snr(fn):
    with pytest.raises(ValueError, match="^log_snr must"):
        fn(f64(0.0, math.nan))


def test_conversions_reject_non_numbers():
    with pytest.raises(TypeError, match="^alpha_bar must"):
        alpha_bar_to_sigma("0.5")
    with pytest.raises(TypeError, match="^sigma must"):
        sigma_to_alpha_bar(True)


@pytest.mark.parametrize(
    "call",
    [
        lambda: VPSDE().marginal(1.5),
        lambda: VPSDE().beta(-0.1),
        lambda: VPSDE().diffusion(f64(0.5, 1.01)),
        lambda: VPSDE().log_alpha_bar(math.nan),
        lambda: VESDE().sigma(-1e-9),
        lambda: VESDE().marginal(math.inf),
    ],
)
def test_continuous_time_outside_unit_interval(call):
    with pytest.raises(ValueError, match=r"^t must lie in \[0, 1\]"):
        call()


@pytest.mark.parametrize(
    "cls, kwargs, match",
    [
        (VPSDE, {"beta_min": 0.0}, "beta_min"),
        (VPSDE, {"beta_min": -1.0}, "beta_min"),
        (VPSDE, {"beta_min": 2.0, "beta_max": 1.0}, "beta_max"),
        (VPSDE, {"beta_max": math.nan}, "beta_max"),
        (VESDE, {"sigma_min": 0.0}, "sigma_min"),
        (VESDE, {"sigma_min": 60.0, "sigma_max": 50.0}, "sigma_max"),
    ],
)
def test_bad_sde_parameters(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"n": 1}, ValueError, "^n must"),
        ({"n": 10.0}, TypeError, "^n must"),
        ({"n": 10, "sigma_min": 0.0}, ValueError, "sigma_min"),
        ({"n": 10, "sigma_min": 100.0}, ValueError, "sigma_max"),
        ({"n": 10, "rho": 0.0}, ValueError, "^rho must"),
        ({"n": 10, "rho": -7.0}, ValueError, "^rho must"),
    ],
)
def test_karras_sigmas_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        karras_sigmas(**kwargs)


def test_schedule_builders_bad_arguments():
    with pytest.raises(ValueError, match="^T must"):
        linear_schedule(0)
    with pytest.raises(TypeError, match="^T must"):
        cosine_schedule(100.0)
    with pytest.raises(ValueError, match="^tau must"):
        sigmoid_schedule(100, tau=0.0)
    with pytest.raises(ValueError, match="^start must"):
        sigmoid_schedule(100, start=3.0, end=3.0)
    with pytest.raises(TypeError, match="^schedule must"):
        rescale_zero_terminal_snr(torch.full((10,), 0.01))
    with pytest.raises(ValueError, match="^alpha_bars must"):
        Schedule.from_alpha_bars(torch.full((2, 2), 0.5))


# --- the process protocol: time_at, interpolation between steps, grids ----------------------


def sigma_of(process, t):
    scale, std = process.marginal(t)
    return std / scale


PROCESSES = {
    "linear": linear_schedule(),
    "cosine": cosine_schedule(),
    "VPSDE": VPSDE(),
    "VESDE": VESDE(),
    "EDM": EDM(),
    "rectified flow": RectifiedFlow(),
}


def top_sigma(process):
    """The largest finite noise level time_at accepts: sigma(t_max), or 1e4 at zero SNR."""
    if isinstance(process, Schedule):
        return float(process.sigmas[-1])
    sigma = float(sigma_of(process, torch.tensor([float(process.t_max)], dtype=torch.float64)))
    return sigma if math.isfinite(sigma) else 1e4


@pytest.mark.parametrize("name", list(PROCESSES))
def test_time_at_inverts_the_marginal_to_round_off(name):
    # sigma(time_at(sigma)) = sigma up to the rounding of the time itself, amplified by the
    # condition number |d log sigma / d log t| (a relative error eps in t moves sigma by that
    # much; t near T = 1000 keeps only eps * 1000 of its fraction), plus a handful of roundings
    # (8 eps) in time_at and marginal. VESDE's std = (sigma(t)^2 - sigma_min^2)^(1/2) also
    # cancels where sigma << sigma_min, which costs another factor sigma_min^2 / sigma^2.
    process = PROCESSES[name]
    sigma = torch.logspace(-4, math.log10(top_sigma(process)), 801, dtype=torch.float64)
    sigma[-1] = top_sigma(process)  # logspace may round past the end
    t = process.time_at(sigma)
    assert bool((t.diff() > 0).all()) and float(t.min()) >= 0 and float(t.max()) <= process.t_max
    t = t.detach().requires_grad_(True)
    log_sigma = sigma_of(process, t).log()
    (slope,) = torch.autograd.grad(log_sigma.sum(), t)
    condition = 1 + (t * slope).abs().detach()
    if isinstance(process, VESDE):
        condition = condition + process.sigma_min**2 / sigma**2
    relative = (log_sigma.detach().exp() - sigma).abs() / sigma
    assert bool((relative <= 8 * EPS * condition).all()), float((relative / condition).max() / EPS)
    # The ends: sigma = 0 is the clean time 0; rectified flow reaches t = 1 at sigma = inf.
    assert float(process.time_at(torch.zeros(1, dtype=torch.float64))) == 0.0
    if isinstance(process, RectifiedFlow):
        assert float(process.time_at(torch.tensor([math.inf], dtype=torch.float64))) == 1.0


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_time_at_refuses_noise_levels_beyond_the_schedule(name):
    schedule = PROCESSES[name]
    with pytest.raises(ValueError, match="^sigma must lie in"):
        schedule.time_at(torch.tensor([1.01 * float(schedule.sigmas[-1])], dtype=torch.float64))
    with pytest.raises(ValueError, match="^sigma must lie in"):
        schedule.time_at(-1.0)


@pytest.mark.parametrize(
    "schedule",
    [linear_schedule(), cosine_schedule(), rescale_zero_terminal_snr(scaled_linear_schedule())],
    ids=["linear", "cosine", "zero terminal SNR"],
)
def test_real_times_interpolate_log_sigma_and_equal_the_table_at_the_integers(schedule):
    T = schedule.T
    steps = torch.arange(T + 1)
    table, real = schedule.marginal(steps), schedule.marginal(steps.double())
    assert torch.equal(table[0], real[0]) and torch.equal(table[1], real[1])  # t = T included
    # Between the steps log sigma is linear in t: the midpoint is the geometric mean of the two
    # neighbours (to a few roundings of log sigma, absolute), and sigma(1/2) = sigma_1 / 2.
    k = torch.arange(1, T - 1)
    log_sigmas = schedule.sigmas.log()
    mid = sigma_of(schedule, k.double() + 0.5).log()
    expected = 0.5 * (log_sigmas[k] + log_sigmas[k + 1])
    assert float((mid - expected).abs().max()) <= 8 * EPS * float(log_sigmas[1:T].abs().max())
    half = float(sigma_of(schedule, torch.tensor([0.5], dtype=torch.float64)))
    assert math.isclose(half, float(schedule.sigmas[1]) / 2, rel_tol=4 * EPS)
    # Monotone: sigma rises strictly along a fine real grid through every step.
    t = torch.linspace(0, T - 1, 20 * (T - 1) + 1, dtype=torch.float64)
    assert bool((sigma_of(schedule, t).diff() > 0).all())


def condition_of_schedule_time(schedule):
    """1 + T max_k |log(sigma_{k+1} / sigma_k)|: how far the rounding of a real time in 0..T
    (relative eps) moves sigma (relative), at worst over the schedule."""
    steps = schedule.sigmas[1:].log().diff().abs().max()
    return 1 + schedule.T * max(float(steps), 1.0)


@pytest.mark.parametrize("k", [2, 10, 37])
def test_karras_and_log_snr_grids_on_a_discrete_schedule(k):
    schedule = linear_schedule()
    sigma_1, sigma_T = float(schedule.sigmas[1]), float(schedule.sigmas[-1])
    tolerance = 8 * EPS * condition_of_schedule_time(schedule)
    # Karras: the noise levels are karras_sigmas itself, from x_T's sigma_T = 157.4 down to
    # sigma_1 (not from VPSDE's sigma(1) = 152.2, the continuous process of the same betas).
    grid = schedule.grid(k, "karras", rho=7.0)
    assert grid.t.dtype == torch.float64 and grid.t[0] == 1000.0 and grid.t[-2] == 1.0
    assert grid.t[-1] == 0.0 and (float(grid.scale[-1]), float(grid.std[-1])) == (1.0, 0.0)
    assert float(grid.sigma[0]) == sigma_T and abs(sigma_T - 157.4) < 0.01
    vp_start = float(VPSDE().grid(k, "karras").sigma[0])
    assert abs(vp_start - 152.2) < 0.05
    expected = karras_sigmas(k, sigma_1, sigma_T, 7.0)
    torch.testing.assert_close(grid.sigma[:-1], expected, rtol=tolerance, atol=0)
    # log-SNR: evenly spaced in log sigma between the same ends (absolute error of log sigma =
    # relative error of sigma).
    grid = schedule.grid(k, "log_snr")
    assert float(grid.sigma[0]) == sigma_T and grid.t[-2] == 1.0
    log_sigma = grid.sigma[:-1].log()
    even = torch.linspace(math.log(sigma_T), math.log(sigma_1), k, dtype=torch.float64)
    assert float((log_sigma - even).abs().max()) <= tolerance + 8 * EPS * math.log(sigma_T)
    assert bool((grid.log_snr.diff() > 0).all())


def test_uniform_spacing_on_a_discrete_schedule_gives_real_times():
    schedule = linear_schedule(100)
    grid = schedule.grid(7, "uniform")
    expected = torch.cat([torch.linspace(100, 1, 7, dtype=torch.float64), torch.zeros(1)])
    assert torch.equal(grid.t, expected.double())
    scale, std = schedule.marginal(grid.t)
    assert torch.equal(grid.scale, scale) and torch.equal(grid.std, std)
    assert set(schedule.spacings) == set(SPACINGS) | set(GRID_SPACINGS)
    assert VPSDE().spacings == GRID_SPACINGS


def test_grids_of_the_continuous_processes():
    # Rectified flow starts at pure noise (scale 0, std 1) and is uniform in t by default.
    grid = RectifiedFlow().grid(4)
    expected = torch.cat([torch.linspace(1.0, 1e-3, 4, dtype=torch.float64), torch.zeros(1)])
    assert torch.equal(grid.t, expected.double())
    assert float(grid.scale[0]) == 0.0 and float(grid.std[0]) == 1.0
    torch.testing.assert_close(grid.scale + grid.std, torch.ones(5, dtype=torch.float64))
    # EDM: t = sigma, Karras spacing by default.
    grid = EDM(0.002, 80.0).grid(6)
    assert torch.equal(grid.t[:-1], karras_sigmas(6, 0.002, 80.0)) and torch.equal(grid.std, grid.t)
    # A Karras grid needs a finite sigma at t_max: not rectified flow's t = 1, but t_max < 1.
    with pytest.raises(ValueError, match="finite noise level at t_max"):
        RectifiedFlow().grid(5, "karras")
    grid = RectifiedFlow().grid(5, "karras", t_max=0.99)
    torch.testing.assert_close(
        grid.sigma[:-1], karras_sigmas(5, 1e-3 / 0.999, 99.0), rtol=8 * EPS * 100, atol=0
    )


@pytest.mark.parametrize("T", [10, 50, 200, 500, 1000])
@pytest.mark.parametrize("builder", [linear_schedule, cosine_schedule, scaled_linear_schedule])
def test_karras_and_log_snr_grids_build_on_every_discrete_schedule(builder, T):
    # The end levels are recomputed from the marginal, which may round an ulp above the table's
    # sigma_T that time_at accepts: the grid must not depend on that rounding (linear 50, 200,
    # 500 and scaled linear 500, 1000 once raised "sigma must lie in [0, sigma_T]").
    schedule = builder(T)
    for spacing in ("karras", "log_snr"):
        for k in (2, 7, T):
            grid = schedule.grid(k, spacing)
            assert grid.steps == k and grid.t[0] == T and grid.t[-2] == 1 and grid.t[-1] == 0
            assert float(grid.sigma[0]) == float(sigma_of(schedule, torch.tensor([T])))


def test_grid_at_gives_one_point_per_sample():
    grid = linear_schedule(100).grid(5)
    index = torch.tensor([0, 3, 3, 5])
    point = grid.at(index)
    for got, whole in ((point.t, grid.t), (point.scale, grid.scale), (point.std, grid.std)):
        assert torch.equal(got, whole[index])
    assert [grid[i].std for i in index.tolist()] == point.std.tolist()
