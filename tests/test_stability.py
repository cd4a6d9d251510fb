"""Tests for :mod:`diffusion_core.stability`: every quantitative claim of the stability chapter.

The closed forms are checked against the library's real samplers, exactly where the sampler is
deterministic (run on the inputs 0 and 1, an affine map is known from two points) and by Monte
Carlo where it draws noise. Monte Carlo tolerances are 5 standard errors (SE): for n Gaussian
draws of variance v, SE(mean) = sqrt(v / n) and SE(sample variance) = v sqrt(2 / (n - 1)). With
fixed seeds the tests are deterministic; a correct implementation would fail such a check with
probability below 1e-6 for a fresh seed.
"""

import math

import pytest
import torch
from sklearn.datasets import load_digits

from diffusion_core import stability as st
from diffusion_core.analytic import default_mixture_2d, gaussian
from diffusion_core.forward import seed_article_equation_moments, seed_article_variance
from diffusion_core.parameterization import as_denoiser, exact_denoiser, v_from_eps_x0
from diffusion_core.samplers import (
    SAMPLERS,
    Step,
    Update,
    ddim,
    ddpm,
    euler_steps,
    heun,
    predictor_corrector,
    prior_sample,
    run_steps,
    step_rule,
)
from diffusion_core.schedules import (
    VESDE,
    VPSDE,
    GridPoint,
    TimeGrid,
    cosine_schedule,
    linear_schedule,
    rescale_zero_terminal_snr,
    scaled_linear_schedule,
)

torch.set_num_threads(1)
F64 = torch.float64
Z = 5.0
MEAN, STD = 0.8, 0.6  # 1-D Gaussian data N(MEAN, STD^2)
ODE = ("ddim", "euler", "heun", "dpm_solver_pp_2m", "unipc")


def gen(seed):
    return torch.Generator().manual_seed(seed)


def truncated(grid):
    """The grid without its clean point: the error is then the solver's alone."""
    return grid[:-1]


LINEAR = linear_schedule()
ZERO_SNR = rescale_zero_terminal_snr(scaled_linear_schedule())
GRIDS = {
    "linear, 10 trailing": (LINEAR, LINEAR.grid(10)),
    "linear, 7 leading": (LINEAR, LINEAR.grid(7, "leading")),
    "VE, 6 uniform": (VESDE(), VESDE().grid(6)),
    "VP, 5 Karras, stop at t_min": (VPSDE(), truncated(VPSDE().grid(5, "karras"))),
    "zero terminal SNR, 8": (ZERO_SNR, ZERO_SNR.grid(8)),
}


def exact_law_start(grid, n, seed, mean=MEAN, std=STD):
    means, variances = st.marginal_law(grid, mean, std)
    z = torch.randn(n, generator=gen(seed), dtype=F64)
    return means[0] + variances[0].sqrt() * z


# ------------------------------------------------------------------------ forward chains


def test_chain_moments_reproduce_the_forward_module_and_the_closed_forms():
    _, variances = st.chain_moments(*st.article_chain(1000), var0=1.0)
    torch.testing.assert_close(variances, seed_article_variance(torch.arange(1001), 1.0))
    schedule = cosine_schedule(200)
    betas_prev = torch.cat([schedule.betas.new_zeros(1), schedule.betas[:-1]])
    factor, variance = seed_article_equation_moments(schedule, data_variance=0.3)
    means, variances = st.chain_moments(
        1 + schedule.betas, schedule.betas * (1 - betas_prev), 1, 0.3
    )
    torch.testing.assert_close(means, factor)
    torch.testing.assert_close(variances, variance)
    # VP: v_t - 1 = alpha_bar_t (v_0 - 1), the deviation from unit variance decays.
    means, variances = st.chain_moments(*st.vp_chain(schedule), mean0=2.0, var0=5.0)
    torch.testing.assert_close(variances, 1 + schedule.alpha_bars * 4.0)
    torch.testing.assert_close(means, 2.0 * schedule.alpha_bars.sqrt())
    # VE: the variances add up, v_t = v_0 + sigma_t^2 - sigma_0^2.
    sigmas = VESDE().sigma(torch.linspace(0, 1, 101, dtype=F64))
    _, variances = st.chain_moments(*st.ve_chain(sigmas), var0=0.25)
    torch.testing.assert_close(variances, 0.25 + sigmas**2 - sigmas[0] ** 2)


def test_simulated_chains_match_their_exact_variance():
    n = 20_000
    x0 = 0.5 * torch.randn(n, generator=gen(0), dtype=F64)
    sigmas = VESDE().sigma(torch.linspace(0, 1, 51, dtype=F64))
    for chain in (st.vp_chain(linear_schedule(200)), st.ve_chain(sigmas), st.article_chain(60)):
        states = st.simulate_linear_chain(*chain, x0, gen(1))
        _, variances = st.chain_moments(*chain, var0=0.25)
        error = (states.var(1) / variances - 1).abs().max()
        assert error < Z * math.sqrt(2 / (n - 1)), error


def test_edm_input_scale_gives_unit_variance_at_every_sigma():
    sigma = torch.tensor([0.0, 0.002, 0.5, 10.0, 80.0], dtype=F64)
    c_in = st.edm_input_scale(sigma, data_std=0.5)
    torch.testing.assert_close(c_in**2 * (0.5**2 + sigma**2), torch.ones(5, dtype=F64))


# ---------------------------------------------------- exact affine steps vs real samplers


def test_gaussian_denoiser_is_the_exact_posterior_mean():
    grid = LINEAR.grid(10)
    exact = exact_denoiser(
        gaussian(torch.tensor([MEAN], dtype=F64), torch.tensor([[STD**2]], dtype=F64))
    )
    linear_model = st.gaussian_denoiser(MEAN, STD)
    p, q = st.gaussian_denoiser_coefficients(grid, MEAN, STD)
    x = torch.linspace(-3, 3, 7, dtype=F64)[:, None]
    for i, t in enumerate(grid.points[:-1]):
        torch.testing.assert_close(linear_model(x, t), exact(x, t), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(linear_model(x, t), p[i] * x + q[i], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("grid_name", list(GRIDS))
@pytest.mark.parametrize("name", ODE)
def test_affine_steps_reproduce_the_deterministic_samplers_on_inputs_0_and_1(name, grid_name):
    process, grid = GRIDS[grid_name]
    model = st.gaussian_denoiser(MEAN, STD)
    out = SAMPLERS[name](model, torch.tensor([0.0, 1.0], dtype=F64), grid)
    steps = st.affine_map(name, grid, *st.gaussian_denoiser_coefficients(grid, MEAN, STD))
    at_zero, _ = st.output_law(steps, 0.0, 0.0)
    at_one, _ = st.output_law(steps, 1.0, 0.0)
    # The map is the sampler's own step rule on symbolic states: the same arithmetic up to its
    # grouping, so the two agree to float64 round-off (measured 1e-14 at most, outputs ~1).
    torch.testing.assert_close(torch.stack([at_zero, at_one]), out, rtol=1e-12, atol=1e-12)
    gain = st.perturbation_gain(steps)
    torch.testing.assert_close(gain[0], out[1] - out[0], rtol=1e-9, atol=1e-12)


STOCHASTIC = [
    ("ddpm", {}),
    ("ddpm", {"variance": "beta"}),
    ("ddim", {"eta": 0.5}),
    ("euler_maruyama", {}),
]


@pytest.mark.parametrize("name, options", STOCHASTIC, ids=lambda v: str(v))
@pytest.mark.parametrize("grid_name", ["linear, 10 trailing", "VE, 6 uniform"])
def test_output_law_of_the_stochastic_samplers_matches_monte_carlo(name, options, grid_name):
    process, grid = GRIDS[grid_name]
    n = 40_000
    out = SAMPLERS[name](
        st.gaussian_denoiser(MEAN, STD),
        exact_law_start(grid, n, 1),
        grid,
        gen(2),
        **options,
    )
    mean, var = st.gaussian_sampler_law(name, grid, MEAN, STD, **options)
    assert abs(out.mean() - mean) < Z * (var / n).sqrt(), (out.mean(), mean)
    assert abs(out.var() / var - 1) < Z * math.sqrt(2 / (n - 1)), (out.var(), var)


def test_closed_form_w2_of_euler_matches_monte_carlo_of_the_sampler():
    grid = truncated(VESDE().grid(8))
    n = 160_000
    out = SAMPLERS["euler"](st.gaussian_denoiser(MEAN, STD), exact_law_start(grid, n, 3), grid)
    means, variances = st.marginal_law(grid, MEAN, STD)
    # In 1-D, W2 = ((m1 - m2)^2 + (s1 - s2)^2)^(1/2); the estimate moves by at most the errors of
    # the sample mean and standard deviation (SE of a std: s / sqrt(2 (n - 1))).
    w2_mc = math.hypot(out.mean() - means[-1], out.std() - variances[-1].sqrt())
    w2 = st.gaussian_sampler_w2("euler", grid, MEAN, STD).item()
    bound = Z * out.std().item() * (1 / math.sqrt(n) + 1 / math.sqrt(2 * (n - 1)))
    assert w2 > 10 * bound  # a real discretisation error, not noise
    assert abs(w2_mc - w2) < bound, (w2_mc, w2, bound)


@pytest.mark.parametrize(
    "name, order",
    [
        ("euler", 1),
        ("ddim", 1),
        ("heun", 2),
        ("dpm_solver_pp_2m", 2),
        ("ddpm", 1),
        ("euler_maruyama", 1),
    ],
)
def test_observed_orders_on_gaussian_data(name, order):
    # A VE grid uniform in t is uniform in log sigma, so every step has the same size h in the
    # variable DPM-Solver++ integrates in; from 32 steps on all six are in their asymptotic range.
    steps = [32, 64, 128, 256]
    errors = [st.gaussian_sampler_w2(name, truncated(VESDE().grid(k)), MEAN, STD) for k in steps]
    observed = st.observed_order(steps, torch.stack(errors))
    assert abs(observed - order) < 0.3, (name, observed, errors)


# ------------------------------------------------------------ error propagation in reverse


def test_ddpm_gain_is_sqrt_alpha_bar_and_ode_gain_is_one_for_unit_variance_vp_data():
    grid = LINEAR.grid(50)
    p, q = st.gaussian_denoiser_coefficients(grid, 0.0, 1.0)
    scale = grid.scale[:-1]
    ode = st.pf_ode_gain(scale, grid.std[:-1], 1.0)
    sde = st.reverse_sde_gain(scale, grid.std[:-1], 1.0)
    torch.testing.assert_close(ode, torch.ones_like(ode))
    torch.testing.assert_close(sde, scale)
    for name in ("ddpm", "euler_maruyama"):  # exact at any step count (the product telescopes)
        gain = st.perturbation_gain(st.affine_map(name, grid, p, q))[:-1]
        torch.testing.assert_close(gain, scale, rtol=1e-10, atol=0)
    # ODE samplers carry a perturbation along: within their discretisation error of gain 1.
    for name, tolerance in (("ddim", 0.04), ("heun", 0.003)):
        gain = st.perturbation_gain(st.affine_map(name, grid, p, q))[:-1]
        assert (gain - 1).abs().max() < tolerance, (name, gain)
    assert float(sde[0]) < 0.007  # a perturbation of the starting noise is all but forgotten


@pytest.mark.parametrize("name", ["ddim", "heun", "ddpm", "euler_maruyama"])
def test_a_perturbation_moves_the_real_sampler_by_the_exact_gain(name):
    grid = LINEAR.grid(20)
    model = st.gaussian_denoiser(MEAN, STD)
    steps = st.affine_map(name, grid, *st.gaussian_denoiser_coefficients(grid, MEAN, STD))
    x = prior_sample(grid, (256,), gen(4))
    delta = 1e-3
    moved = SAMPLERS[name](model, x + delta, grid, gen(5)) - SAMPLERS[name](model, x, grid, gen(5))
    gain = st.perturbation_gain(steps)[0]
    torch.testing.assert_close(moved / delta, gain.expand(256), rtol=1e-6, atol=1e-9)


def test_on_the_mixture_the_reverse_sde_contracts_what_the_ode_carries():
    mixture = default_mixture_2d()
    grid = LINEAR.grid(25)
    model = exact_denoiser(mixture)
    x = prior_sample(grid, (200, 2), gen(6))
    direction = torch.randn(200, 2, generator=gen(7), dtype=F64)
    direction = direction / direction.norm(dim=1, keepdim=True)
    gains = {}
    for name in ("ddim", "ddpm"):
        a = SAMPLERS[name](model, x, grid, gen(8))
        b = SAMPLERS[name](model, x + 1e-4 * direction, grid, gen(8))
        gains[name] = ((b - a).norm(dim=1) / 1e-4).median().item()
    # The mixture's per-coordinate spread (std 1.6 and 2.1) exceeds 1, so the ODE gain is near
    # or above one; the reverse SDE's is near sqrt(alpha_bar_T) = 0.006.
    assert gains["ddim"] > 0.5 and gains["ddpm"] < 0.05, gains


# ----------------------------------------------------------------------- schedule flaws


def test_terminal_snr_leak_has_the_predicted_size():
    schedule = scaled_linear_schedule()
    grid = schedule.grid(50)
    start = (0.0, float(grid.std[0] ** 2))  # prior_sample's law: pure noise
    mean, var = st.gaussian_sampler_law("ddim", grid, MEAN, 1.0, start=start)
    steps = st.affine_map("ddim", grid, *st.gaussian_denoiser_coefficients(grid, MEAN, 1.0))
    leak = st.terminal_leak(grid, MEAN)
    gain = st.perturbation_gain(steps)[0]
    # Started from the exact law the mean is exact; from pure noise it is short by gain * leak.
    torch.testing.assert_close(mean - MEAN, -gain * leak, rtol=1e-10, atol=1e-12)
    assert abs(math.sqrt(schedule.alpha_bars[-1]) - 0.0683) < 1e-4
    predicted = st.pf_ode_gain(grid.scale[0], grid.std[0], 1.0) * leak
    assert abs((mean - MEAN) / -predicted - 1) < 0.05  # continuous-time estimate, 50 steps
    n = 100_000
    out = ddim(st.gaussian_denoiser(MEAN, 1.0), prior_sample(grid, (n,), gen(9)), grid)
    assert abs(out.mean() - mean) < Z * (var / n).sqrt()
    assert abs(out.mean() - MEAN) > 10 * (var / n).sqrt()  # the leak itself is far above noise


def test_zero_terminal_snr_with_v_prediction_has_no_leak():
    grid = ZERO_SNR.grid(25)
    assert float(grid.scale[0]) == 0.0 and st.terminal_leak(grid, MEAN) == 0
    mean, _ = st.gaussian_sampler_law("ddim", grid, MEAN, 1.0, start=(0.0, 1.0))
    assert abs(mean - MEAN) < 1e-12
    x0_model = st.gaussian_denoiser(MEAN, 1.0)

    def v_net(x, t):
        point = GridPoint(t, *(float(v) for v in ZERO_SNR.marginal(t)))
        x0 = x0_model(x, point)
        return v_from_eps_x0((x - point.scale * x0) / point.std, x0, point.scale, point.std)

    n = 50_000
    out = ddim(as_denoiser(v_net, "v"), prior_sample(grid, (n,), gen(10)), grid)
    assert bool(torch.isfinite(out).all())
    assert abs(out.mean() - MEAN) < Z * (out.var() / n).sqrt()


def test_leading_spacing_leaks_more_than_trailing():
    schedule = scaled_linear_schedule()
    bias = {}
    for spacing in ("leading", "trailing"):
        grid = schedule.grid(10, spacing)
        mean, _ = st.gaussian_sampler_law(
            "ddim", grid, MEAN, 1.0, start=(0.0, float(grid.std[0] ** 2))
        )
        bias[spacing] = float(mean - MEAN)
    assert bias["leading"] < 1.5 * bias["trailing"] < 0, bias


@pytest.mark.parametrize(
    "schedule, noise",
    [(LINEAR, 0.0100), (scaled_linear_schedule(), 0.0292), (cosine_schedule(), 0.0064)],
    ids=["linear", "scaled linear", "cosine"],
)
def test_a_last_step_that_stops_at_t_1_leaves_noise_of_std_sqrt_beta_1(schedule, noise):
    # A nearly constant coordinate (a background pixel): any spread in the output is noise.
    full = schedule.grid(50)
    t = torch.cat([full.t[:-1], torch.ones(1, dtype=torch.int64)])
    stops_at_one = TimeGrid(t, *schedule.marginal(t))
    _, std_1 = schedule.marginal(1)
    assert abs(std_1 - noise) < 5e-5 and abs(std_1**2 - schedule.betas[0]) < 1e-12
    _, var = st.gaussian_sampler_law("ddim", stops_at_one, -1.0, 1e-3)
    _, var_full = st.gaussian_sampler_law("ddim", full, -1.0, 1e-3)
    assert abs(var.sqrt() / std_1 - 1) < 0.01  # the output's spread is the noise of t = 1
    assert var_full.sqrt() < 1e-3  # landing on t = 0 leaves none


# ----------------------------------------------------------------------------- precision


def test_textbook_ddpm_in_float16_gives_nan_and_the_library_does_not():
    model = st.gaussian_denoiser(MEAN, STD)

    def eps_model(x, t):
        point = GridPoint(t, *(float(v) for v in LINEAR.marginal(t)))
        return (x.to(F64) - point.scale * model(x, point)) / point.std

    x = prior_sample(LINEAR.grid(1000), (200,), gen(11))
    ab16 = torch.cumprod(1 - LINEAR.betas.half(), 0)
    assert int((ab16 == 1).sum()) == 8  # 1 - beta_t rounds to 1 for t <= 8: 1 - alpha_bar_t = 0
    naive = {
        dtype: st.textbook_ddpm(eps_model, x, LINEAR.betas, dtype, gen(12))
        for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16)
    }
    assert st.nonfinite_count(naive[torch.float64]) == (0, 0)
    assert (naive[torch.float32].double() - naive[torch.float64]).abs().max() < 1e-4
    for dtype in (torch.float16, torch.bfloat16):
        nan, inf = st.nonfinite_count(naive[dtype])
        assert nan + inf == 200, dtype
    report = st.precision_study(ddpm, model, x, LINEAR.grid(1000), seed=12)
    for dtype, bound in ((torch.float32, 1e-6), (torch.float16, 1e-3), (torch.bfloat16, 5e-3)):
        assert report[dtype]["nan"] == report[dtype]["inf"] == 0
        # Rounding of x0_hat, relative 2^-11 (fp16) or 2^-8 (bf16), reaches the output with gain
        # below one: the rms error stays below the rounding of a unit value.
        assert report[dtype]["rms_error"] < bound, (dtype, report[dtype])


# ------------------------------------------------------------------ clipping, thresholding


def test_dynamic_threshold_and_clip_by_hand():
    x0_hat = torch.tensor([[0.5, -0.2, 0.1, 0.3], [2.0, -4.0, 1.0, 0.5]], dtype=F64)
    clipped = st.clip_denoiser(lambda x, t: x)(x0_hat, 0)
    torch.testing.assert_close(clipped, x0_hat.clamp(-1, 1))
    dynamic = st.dynamic_threshold_denoiser(lambda x, t: x, percentile=1.0)(x0_hat, 0)
    torch.testing.assert_close(dynamic[0], x0_hat[0])  # in range: untouched
    torch.testing.assert_close(dynamic[1], x0_hat[1] / 4.0)  # s = max |x0_hat| = 4
    s = torch.quantile(x0_hat[1].abs(), 0.5)
    half = st.dynamic_threshold_denoiser(lambda x, t: x, percentile=0.5)(x0_hat, 0)
    torch.testing.assert_close(half[1], x0_hat[1].clamp(-s, s) / s)


def test_clipping_removes_range_violations_at_a_measured_cost_in_bias():
    images = torch.as_tensor(load_digits().images, dtype=F64).reshape(-1, 64) / 8 - 1
    fit = gaussian(images.mean(0), torch.cov(images.T) + 1e-3 * torch.eye(64, dtype=F64))
    model = exact_denoiser(fit)  # a Gaussian model of bounded data: it errs near -1, 1
    grid = LINEAR.grid(20)
    n = 400
    x = prior_sample(grid, (n, 64), gen(13))
    results = {}
    for label, wrapped in (
        ("none", model),
        ("clip", st.clip_denoiser(model)),
        ("dynamic", st.dynamic_threshold_denoiser(model)),
    ):
        out = ddim(wrapped, x, grid)
        # Mean intensity of an image: its SE over n images is std(image means) / sqrt(n).
        means = out.mean(1)
        results[label] = ((out.abs() > 1).double().mean(), means.mean(), means.std() / math.sqrt(n))
    data_mean = images.mean()
    outside, mean, se = results["none"]
    assert outside > 0.2 and abs(mean - data_mean) < Z * se  # out of range, but unbiased
    for label in ("clip", "dynamic"):
        outside, mean, se = results[label]
        assert outside == 0 and mean - data_mean > Z * se, (label, results[label])
    assert results["dynamic"][1] > results["clip"][1]  # rescaling costs more than clipping here


# ---------------------------------------------------------------------------- arguments


def test_arguments_are_checked():
    grid = LINEAR.grid(5)
    p, q = st.gaussian_denoiser_coefficients(grid, 0.0, 1.0)
    with pytest.raises(ValueError, match="predictor_corrector has no step rule"):
        st.affine_map("predictor_corrector", grid, p, q)
    with pytest.raises(ValueError, match="predictor_corrector has no step rule"):
        st.affine_map(predictor_corrector, grid, p, q)  # the function itself, too
    with pytest.raises(ValueError, match="predictor_corrector has no step rule"):
        st.gaussian_sampler_law("predictor_corrector", grid, 0.0, 1.0)
    with pytest.raises(ValueError, match="sampler must be one of"):
        st.affine_map("nonesuch", grid, p, q)
    with pytest.raises(TypeError, match="grid must be a TimeGrid"):
        st.affine_map("ddim", LINEAR, p, q)
    with pytest.raises(ValueError, match="p must have one entry per grid point"):
        st.affine_map("ddim", grid, p[:-1], q)
    with pytest.raises(ValueError, match=r"eta must be a finite number in \[0, 1\]"):
        st.affine_map("ddim", grid, p, q, eta=2.0)
    with pytest.raises(ValueError, match="variance must be one of"):
        st.affine_map("ddpm", grid, p, q, variance="large")
    with pytest.raises(ValueError, match="finite sigma_0"):
        zero = ZERO_SNR.grid(5)
        st.affine_map("euler_maruyama", zero, *st.gaussian_denoiser_coefficients(zero, 0.0, 1.0))
    with pytest.raises(ValueError, match=r"data_std must be a finite number in \(0, 1e\+150\]"):
        st.marginal_law(grid, 0.0, 0.0)
    with pytest.raises(TypeError, match="data_mean must be a number"):
        st.gaussian_denoiser_coefficients(grid, "0", 1.0)
    with pytest.raises(ValueError, match=r"start_var must be a finite number in \[0, inf\]"):
        st.output_law(st.affine_map("ddim", grid, p, q), 0.0, -1.0)
    with pytest.raises(TypeError, match="affine must be an AffineMap"):
        st.perturbation_gain((p, q))
    with pytest.raises(ValueError, match="noise_vars must have the shape of factors"):
        st.chain_moments(torch.ones(3), torch.ones(2))
    with pytest.raises(ValueError, match="strictly increasing"):
        st.ve_chain(torch.tensor([1.0, 0.5]))
    with pytest.raises(ValueError, match="percentile must be a finite number in"):
        st.dynamic_threshold_denoiser(lambda x, t: x, percentile=99.5)
    with pytest.raises(ValueError, match="need low < high"):
        st.clip_denoiser(lambda x, t: x, 1.0, -1.0)
    with pytest.raises(TypeError, match="model must be callable"):
        st.clip_denoiser("model")
    with pytest.raises(TypeError, match="dtype must be a floating torch dtype"):
        st.precision_study(
            ddim, lambda x, t: x, torch.zeros(2, dtype=F64), grid, dtypes=(torch.int32,)
        )
    with pytest.raises(TypeError, match="dtype must be a floating torch dtype"):
        st.textbook_ddpm(lambda x, t: x, torch.zeros(2), LINEAR.betas, "half", gen(0))
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        st.precision_study(ddim, lambda x, t: x, torch.zeros(2, dtype=F64), grid, seed=-1)
    with pytest.raises(ValueError, match="errors must have the length of steps and be > 0"):
        st.observed_order([1, 2], [0.1, 0.0])
    with pytest.raises(ValueError, match="scale must be > 0"):
        st.pf_ode_gain(0.0, 1.0, 1.0)


# ------------------------------------------------------------- a sampler added elsewhere


def noisy_euler_steps(grid):
    """A toy rule written outside the library: Euler's step plus fresh noise of std std' / 10
    (not a good sampler; an affine one the library has never seen)."""
    a, s = grid.scale.tolist(), grid.std.tolist()
    return [
        Step(Update(x=s[i + 1] / s[i], d=a[i + 1] - a[i] * s[i + 1] / s[i], noise=s[i + 1] / 10))
        for i in range(grid.steps)
    ]


@step_rule(noisy_euler_steps)
def noisy_euler(model, x, grid, generator=None, callback=None):
    return run_steps(noisy_euler_steps(grid), model, x, grid, generator, callback)


def test_a_new_sampler_with_a_step_rule_gets_its_exact_law_for_free():
    grid = LINEAR.grid(12)[:-1]  # ends at std > 0, so every step adds noise
    mean, var = st.gaussian_sampler_law(noisy_euler, grid, MEAN, STD)
    affine = st.affine_map(noisy_euler, grid, *st.gaussian_denoiser_coefficients(grid, MEAN, STD))
    assert affine.noise.shape == (grid.steps,) and bool((affine.noise != 0).all())
    n = 200_000
    out = noisy_euler(st.gaussian_denoiser(MEAN, STD), exact_law_start(grid, n, 21), grid, gen(22))
    # Z standard errors of the mean and of the variance of n Gaussian draws
    assert abs(out.mean() - mean) < Z * (var / n).sqrt()
    assert abs(out.var() / var - 1) < Z * math.sqrt(2 / (n - 1))


def test_every_sampler_with_a_step_rule_is_affine_unipc_included():
    assert "unipc" in st.AFFINE_SAMPLERS and "predictor_corrector" not in st.AFFINE_SAMPLERS
    assert set(st.AFFINE_SAMPLERS) == set(SAMPLERS) - {"predictor_corrector"}
    assert all(hasattr(SAMPLERS[name], "step_rule") for name in st.AFFINE_SAMPLERS)


def noisy_heun_steps(grid, fraction=0.5):
    """A second toy rule, with a corrector: Heun's step (Euler, then the trapezoid on the
    denoiser at the Euler point) with fresh noise of ``fraction`` times the posterior std added
    to the Euler point, which the corrector then carries along."""
    a, s = grid.scale.tolist(), grid.std.tolist()
    steps = []
    for i, euler_step in enumerate(euler_steps(grid)):
        posterior_var = s[i + 1] ** 2 * (1 - (s[i + 1] * a[i] / (a[i + 1] * s[i])) ** 2)
        predict = euler_step.predict._replace(noise=fraction * math.sqrt(posterior_var))
        sigma, sigma_next = s[i] / a[i], s[i + 1] / a[i + 1]
        r = a[i + 1] * (sigma_next - sigma) / (2 * sigma_next)
        steps.append(Step(predict, Update(x_pred=1.0, d=r, d_pred=-r)))
    return steps


@step_rule(noisy_heun_steps)
def noisy_heun(model, x, grid, generator=None, callback=None, fraction=0.5):
    return run_steps(noisy_heun_steps(grid, fraction), model, x, grid, generator, callback)


def test_a_toy_sampler_with_a_corrector_and_noise_is_analysed_exactly():
    grid = LINEAR.grid(12)[:-1]  # ends at std > 0: every step is a corrected, noisy one
    p, q = st.gaussian_denoiser_coefficients(grid, MEAN, STD)
    model = st.gaussian_denoiser(MEAN, STD)
    affine = st.affine_map(noisy_heun, grid, p, q, fraction=0.5)
    assert affine.noise.shape == (grid.steps,) and bool((affine.noise != 0).all())
    # Draw by draw: one sample, whose noise z_j is the generator's j-th float64 draw, lands at
    # offset + gain_0 x_0 + sum_j noise_j z_j, to round-off.
    x0 = torch.tensor([0.37], dtype=F64)
    out = noisy_heun(model, x0, grid, gen(23), fraction=0.5)
    g = gen(23)
    draws = torch.cat([torch.randn(1, generator=g, dtype=F64) for _ in range(grid.steps)])
    by_map = affine.offset + affine.gain[0] * x0 + (affine.noise * draws).sum()
    torch.testing.assert_close(out, by_map, rtol=1e-12, atol=1e-12)
    # In law: 200 000 runs from the exact marginal at the first point agree with the exact law
    # within Z = 5 standard errors of the mean and of the variance.
    mean, var = st.gaussian_sampler_law(noisy_heun, grid, MEAN, STD, fraction=0.5)
    n = 200_000
    out = noisy_heun(model, exact_law_start(grid, n, 24), grid, gen(25), fraction=0.5)
    se_var = math.sqrt(2 / (n - 1))
    assert abs(out.mean() - mean) < Z * (var / n).sqrt()
    assert abs(out.var() / var - 1) < Z * se_var
    # ... and the noise matters: without it (fraction = 0, Heun itself) the law is another,
    # more than 10 standard errors away.
    _, var_heun = st.gaussian_sampler_law("heun", grid, MEAN, STD)
    _, var_none = st.gaussian_sampler_law(noisy_heun, grid, MEAN, STD, fraction=0.0)
    torch.testing.assert_close(var_none, var_heun, rtol=1e-12, atol=0)
    assert abs(var_heun / var - 1) > 10 * se_var
    torch.testing.assert_close(
        heun(model, torch.tensor([0.0, 1.0], dtype=F64), grid),
        noisy_heun(model, torch.tensor([0.0, 1.0], dtype=F64), grid, fraction=0.0),
        rtol=1e-12,
        atol=1e-12,
    )
