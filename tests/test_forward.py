"""Tests for :mod:`diffusion_core.forward`: closed form vs chain, posterior, SDEs, seed article.

Monte Carlo checks use a fixed seed and a tolerance of 5 standard errors (SE) of the estimate:
for n draws of a Gaussian with variance v, SE(mean) = sqrt(v / n) and SE(sample variance) =
sqrt(2 / (n - 1)) v. A correct implementation fails such a check with probability < 1e-6.
"""

import math

import pytest
import torch

from diffusion_core.forward import (
    posterior_coefficients,
    q_posterior,
    q_sample,
    q_step,
    seed_article_diffuse,
    seed_article_equation_diffuse,
    seed_article_equation_moments,
    seed_article_variance,
    simulate_chain,
    simulate_sde,
)
from diffusion_core.schedules import (
    VESDE,
    VPSDE,
    RectifiedFlow,
    Schedule,
    cosine_schedule,
    linear_schedule,
    rescale_zero_terminal_snr,
)

Z = 5.0  # tolerance in standard errors


def gen(seed):
    return torch.Generator().manual_seed(seed)


def assert_mean(samples, expected, variance, what=""):
    """Sample mean along dim 0 within Z standard errors of ``expected``."""
    n = samples.shape[0]
    error = (samples.mean(0) - expected).abs()
    bound = Z * (torch.as_tensor(variance, dtype=torch.float64) / n).sqrt()
    assert bool((error <= bound).all()), f"{what} mean off by {error} > {bound}"


def assert_variance(samples, expected, what=""):
    """Sample variance along dim 0 within Z standard errors of ``expected`` (Gaussian data)."""
    n = samples.shape[0]
    expected = torch.as_tensor(expected, dtype=torch.float64)
    error = (samples.var(0) - expected).abs()
    bound = Z * math.sqrt(2 / (n - 1)) * expected
    assert bool((error <= bound).all()), f"{what} variance off by {error} > {bound}"


# --- q_sample against the chain and the closed form -----------------------------------------


# A short chain with large, unequal steps: an off-by-one in the step index changes its
# marginals by tens of percent, far beyond the Monte Carlo error.
SHORT = Schedule(torch.linspace(0.05, 0.6, 8, dtype=torch.float64))


@pytest.mark.parametrize(
    "schedule, keep", [(linear_schedule(1000), 5), (SHORT, None)], ids=["linear", "short"]
)
def test_q_sample_and_simulate_chain_agree_in_distribution(schedule, keep):
    # 16000 x 2 values stay under torch's intra-op parallel grain (32768 elements): a loop of
    # 1000 small steps is fastest single-threaded, and immune to a busy machine.
    n = 16_000
    x0 = torch.tensor([1.5, -2.0], dtype=torch.float64).repeat(n, 1)
    states = simulate_chain(schedule, x0, gen(0), keep=keep)
    T = schedule.T
    times = list(range(T + 1)) if keep is None else [i * T // (keep - 1) for i in range(keep)]
    assert states.shape == (len(times), n, 2)
    assert torch.equal(states[0], x0)
    noise_gen = gen(1)
    for i, t in enumerate(times[1:], start=1):
        scale, std = schedule.marginal(t)
        noise = torch.randn(x0.shape, generator=noise_gen, dtype=x0.dtype)
        closed = q_sample(schedule, x0, t, noise)
        for name, x_t in [("chain", states[i]), ("q_sample", closed)]:
            assert_mean(x_t, scale * x0[0], std**2, f"{name} t={t}")
            assert_variance(x_t, std**2, f"{name} t={t}")
        # Two-sample comparison: the difference of two independent estimates has SE sqrt(2) SE.
        mean_gap = (states[i].mean(0) - closed.mean(0)).abs()
        assert bool((mean_gap <= Z * math.sqrt(2) * std / math.sqrt(n)).all())
        var_gap = (states[i].var(0) - closed.var(0)).abs()
        assert bool((var_gap <= Z * math.sqrt(2) * math.sqrt(2 / (n - 1)) * std**2).all())
    # The chain is Markov, unlike independent q_sample draws: for s < t,
    # Cov(x_s, x_t) = sqrt(alpha_bar_t / alpha_bar_s) (1 - alpha_bar_s). SE of a sample
    # covariance of jointly Gaussian pairs: sqrt((Var x_s Var x_t + Cov^2) / n).
    alpha_bars = schedule.alpha_bars
    a_s, a_t = alpha_bars[times[1]], alpha_bars[times[2]]
    cov = (a_t / a_s).sqrt() * (1 - a_s)
    centred = states[1:3] - states[1:3].mean(1, keepdim=True)
    sample_cov = (centred[0] * centred[1]).sum(0) / (n - 1)
    se = (((1 - a_s) * (1 - a_t) + cov**2) / n).sqrt()
    assert bool(((sample_cov - cov).abs() <= Z * se).all())


def test_q_sample_with_one_time_per_sample():
    schedule = cosine_schedule(1000)
    g = gen(2)
    x0 = torch.randn(6, 3, generator=g, dtype=torch.float64)
    noise = torch.randn(6, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 10, 500, 999, 1000])
    x_t = q_sample(schedule, x0, t, noise)
    for row in range(6):
        alpha_bar = schedule.alpha_bars[t[row]]
        expected = alpha_bar.sqrt() * x0[row] + (1 - alpha_bar).sqrt() * noise[row]
        torch.testing.assert_close(x_t[row], expected, rtol=1e-14, atol=1e-15)
        torch.testing.assert_close(
            x_t[row : row + 1],
            q_sample(schedule, x0[row : row + 1], int(t[row]), noise[row : row + 1]),
        )
    assert torch.equal(x_t[0], x0[0])  # t = 0 is clean data, whatever the noise


def test_q_sample_edge_times_and_dtype():
    schedule = linear_schedule(100)
    g = gen(3)
    x0 = torch.randn(4, 2, 2, generator=g)  # float32
    noise = torch.randn(4, 2, 2, generator=g)
    assert torch.equal(q_sample(schedule, x0, 0, noise), x0)
    assert torch.equal(q_sample(schedule, x0, torch.tensor([0]), noise), x0)
    out = q_sample(schedule, x0, torch.tensor([5, 6, 7, 100]), noise)
    assert out.dtype == torch.float32 and out.shape == x0.shape
    assert q_step(schedule, x0, 3, noise).dtype == torch.float32
    mean, variance = q_posterior(schedule, x0, out, torch.tensor([5, 6, 7, 100]))
    assert mean.dtype == torch.float32 and variance.dtype == torch.float64
    assert variance.shape == (4,)
    # With zero terminal SNR, x_T is the noise and nothing of x0.
    zero_snr = rescale_zero_terminal_snr(schedule)
    assert torch.equal(q_sample(zero_snr, x0, 100, noise), noise)


def test_q_step_is_one_step_of_the_closed_form():
    schedule = linear_schedule(50)
    g = gen(4)
    x_prev = torch.randn(5, 3, generator=g, dtype=torch.float64)
    noise = torch.randn(5, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 2, 20, 49, 50])
    beta = schedule.betas[t - 1][:, None]
    expected = (1 - beta).sqrt() * x_prev + beta.sqrt() * noise
    torch.testing.assert_close(q_step(schedule, x_prev, t, noise), expected, rtol=1e-14, atol=1e-15)


# --- the posterior q(x_{t-1} | x_t, x_0) ----------------------------------------------------


@pytest.mark.parametrize(
    "schedule, t",
    [
        (linear_schedule(1000), 2),
        (linear_schedule(1000), 300),
        (cosine_schedule(1000), 1000),
        (rescale_zero_terminal_snr(linear_schedule(1000)), 1000),
    ],
    ids=["linear-2", "linear-300", "cosine-T", "zero-snr-T"],
)
def test_q_posterior_matches_monte_carlo_regression(schedule, t):
    # Joint draws (x_{t-1}, x_t) given a fixed x_0: then E[x_{t-1} | x_t, x_0] is linear in x_t
    # and the regression of x_{t-1} on x_t recovers its slope, intercept and residual variance.
    n, x0_value = 40_000, 0.8
    g = gen(5)
    x0 = torch.full((n,), x0_value, dtype=torch.float64)
    x_prev = q_sample(schedule, x0, t - 1, torch.randn(n, generator=g, dtype=torch.float64))
    x_t = q_step(schedule, x_prev, t, torch.randn(n, generator=g, dtype=torch.float64))

    x_centred = x_t - x_t.mean()
    s_xx = (x_centred**2).sum()
    slope = (x_centred * (x_prev - x_prev.mean())).sum() / s_xx
    intercept = x_prev.mean() - slope * x_t.mean()
    residual_var = ((x_prev - intercept - slope * x_t) ** 2).sum() / (n - 2)

    at = torch.tensor([0.0, 1.0], dtype=torch.float64)
    mean_at, variance = q_posterior(
        schedule, torch.full((2,), x0_value, dtype=torch.float64), at, t
    )
    slope_true, intercept_true = mean_at[1] - mean_at[0], mean_at[0]

    # OLS standard errors: SE(slope) = sqrt(s^2 / Sxx), SE(intercept) = sqrt(s^2 (1/n +
    # mean(x_t)^2 / Sxx)); the residual variance of Gaussian errors has SE sqrt(2 / (n - 2)) s^2.
    assert abs(slope - slope_true) <= Z * (variance / s_xx).sqrt()
    se_intercept = (variance * (1 / n + x_t.mean() ** 2 / s_xx)).sqrt()
    assert abs(intercept - intercept_true) <= Z * se_intercept
    assert abs(residual_var - variance) <= Z * math.sqrt(2 / (n - 2)) * variance


@pytest.mark.parametrize("t", [2, 17, 400, 1000])
@pytest.mark.parametrize("schedule", [linear_schedule(1000), cosine_schedule(1000)])
def test_q_posterior_is_bayes_rule(schedule, t):
    # q(x_{t-1} | x_t, x_0) = q(x_t | x_{t-1}) q(x_{t-1} | x_0) / q(x_t | x_0): both sides are
    # normalised densities in x_{t-1}, so their logs must agree (not only up to a constant).
    normal = torch.distributions.Normal
    alpha_bars, beta = schedule.alpha_bars, schedule.betas[t - 1]
    for x0_value, z in [(0.8, 0.3), (-1.7, 2.5), (0.0, -1.4)]:
        # x_t a typical draw from q(x_t | x_0), z standard deviations from its mean
        x0 = torch.tensor([x0_value], dtype=torch.float64)
        x_t = alpha_bars[t].sqrt() * x0 + (1 - alpha_bars[t]).sqrt() * z
        mean, variance = q_posterior(schedule, x0, x_t, t)
        x_prev = mean + variance.sqrt() * torch.linspace(-4, 4, 41, dtype=torch.float64)
        log_bayes = (
            normal((1 - beta).sqrt() * x_prev, beta.sqrt()).log_prob(x_t)
            + normal(alpha_bars[t - 1].sqrt() * x0, (1 - alpha_bars[t - 1]).sqrt()).log_prob(x_prev)
            - normal(alpha_bars[t].sqrt() * x0, (1 - alpha_bars[t]).sqrt()).log_prob(x_t)
        )
        log_posterior = normal(mean, variance.sqrt()).log_prob(x_prev)
        # 1 - alpha_bar_t carries a relative rounding error eps / (1 - alpha_bar_t) <= 3e-12
        # (t = 2) into log-density terms of size <= ~50: ~1e-10. A wrong coefficient in the
        # posterior would shift the difference by far more than 1e-9.
        torch.testing.assert_close(log_posterior, log_bayes, rtol=0, atol=1e-9)


def test_q_posterior_with_one_time_per_sample():
    schedule = linear_schedule(100)
    g = gen(6)
    x0 = torch.randn(3, 2, generator=g, dtype=torch.float64)
    x_t = torch.randn(3, 2, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 40, 100])
    mean, variance = q_posterior(schedule, x0, x_t, t)
    for row in range(3):
        mean_row, variance_row = q_posterior(schedule, x0[row], x_t[row], int(t[row]))
        torch.testing.assert_close(mean[row], mean_row, rtol=1e-14, atol=1e-15)
        torch.testing.assert_close(variance[row], variance_row, rtol=1e-14, atol=0)
    # At t = 1 the posterior is the clean data itself; beta_1 / (1 - alpha_bar_1) = 1 up to
    # the rounding of 1 - alpha_bar_1, relative eps / beta_1 = 2e-12.
    torch.testing.assert_close(mean[0], x0[0], rtol=1e-10, atol=0)
    assert variance[0] == 0


@pytest.mark.parametrize(
    "process, t, s",
    [
        (linear_schedule(1000), 700, 300),
        (VPSDE(), 0.9, 0.2),
        (VESDE(), 0.8, 0.5),
        (RectifiedFlow(), 0.6, 0.1),
        (RectifiedFlow(), 1.0, 0.25),  # from zero SNR: scale_t = 0
    ],
    ids=["linear", "VPSDE", "VESDE", "rectified flow", "rectified flow from t = 1"],
)
def test_posterior_coefficients_are_gaussian_conditioning_for_any_two_times(process, t, s):
    # Given x_0, x_s = a_s x_0 + s_s e and x_t = (a_t / a_s) x_s + n, n independent of x_s with
    # variance s_t^2 - (a_t s_s / a_s)^2. Conditioning the Gaussian pair (x_s, x_t) on x_t:
    # c_xt = Cov(x_s, x_t) / Var(x_t) = (a_t / a_s) s_s^2 / s_t^2, the mean's x_0 part is
    # a_s x_0 - c_xt a_t x_0, and the variance is s_s^2 - c_xt^2 s_t^2. Written differently
    # from the library, equal to a few roundings (1e-14 of the coefficients' size, 1).
    (a_t, s_t), (a_s, s_s) = (
        (float(v) for v in process.marginal(torch.tensor(u, dtype=torch.float64)))
        if isinstance(u, float)
        else (float(v) for v in process.marginal(u))
        for u in (t, s)
    )
    c_xt = (a_t / a_s) * s_s**2 / s_t**2
    expected = (a_s - c_xt * a_t, c_xt, s_s**2 - c_xt**2 * s_t**2)
    got = posterior_coefficients(a_t, s_t, a_s, s_s)
    for value, reference in zip(got, expected, strict=True):
        assert type(value) is float and math.isclose(value, reference, rel_tol=0, abs_tol=1e-14)
    # Tensors give the same numbers.
    values = (a_t, s_t, a_s, s_s)
    tensors = posterior_coefficients(*(torch.tensor([v], dtype=torch.float64) for v in values))
    for value, number in zip(tensors, got, strict=True):
        assert value.dtype == torch.float64 and value.item() == number
    if a_t == 0:  # zero SNR: x_t says nothing about x_s beyond the prior N(a_s x_0, s_s^2)
        assert got == (a_s, 0.0, s_s**2)


@pytest.mark.parametrize("t", [1, 2, 500, 1000])
def test_q_posterior_is_the_posterior_coefficients_of_adjacent_steps(t):
    # Ho et al. (2020), Eq. 7, written with betas and alpha_bars, against the one posterior.
    schedule = linear_schedule(1000)
    alpha_bars, beta, alpha = schedule.alpha_bars, schedule.betas[t - 1], schedule.alphas[t - 1]
    c_x0 = alpha_bars[t - 1].sqrt() * beta / (1 - alpha_bars[t])
    c_xt = alpha.sqrt() * (1 - alpha_bars[t - 1]) / (1 - alpha_bars[t])
    beta_tilde = (1 - alpha_bars[t - 1]) / (1 - alpha_bars[t]) * beta
    x0, x_t = torch.tensor([[0.8, -0.3]], dtype=torch.float64), torch.tensor([[1.5, 0.2]])
    mean, variance = q_posterior(schedule, x0, x_t.double(), t)
    # 1 - alpha_bar carries eps / (1 - alpha_bar_t) relative: at most 2e-12 at t = 1.
    torch.testing.assert_close(mean, c_x0 * x0 + c_xt * x_t.double(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(variance, beta_tilde.reshape(()), rtol=1e-10, atol=1e-15)


# --- Euler-Maruyama for the continuous processes --------------------------------------------


def euler_maruyama_moments(sde, x0, n_steps, t_end=1.0):
    """Mean and variance of the Euler-Maruyama chain for a linear SDE dx = a(t) x dt + g(t) dw.

    The scheme's own moments obey m <- (1 + a h) m, v <- (1 + a h)^2 v + g^2 h exactly; their
    gap from the exact marginal is the scheme's discretisation bias, O(h).
    """
    h, mean, variance = t_end / n_steps, torch.tensor(x0, dtype=torch.float64), 0.0
    one = torch.ones((), dtype=torch.float64)
    for k in range(n_steps):
        t = torch.tensor(k * h, dtype=torch.float64)
        factor = 1 + sde.drift(one, t) * h
        mean, variance = factor * mean, factor**2 * variance + sde.diffusion(t) ** 2 * h
    return mean, variance


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["VP", "VE"])
def test_simulate_sde_matches_marginal(sde):
    n, n_steps, x0_value = 20_000, 1000, 3.0
    x1 = simulate_sde(sde, torch.full((n,), x0_value, dtype=torch.float64), n_steps, gen(7))
    assert x1.dtype == torch.float64 and x1.shape == (n,)
    scale, std = sde.marginal(1.0)
    mean_em, var_em = euler_maruyama_moments(sde, x0_value, n_steps)
    # Allowance = MC error (Z SE) + the scheme's O(h) bias, which at h = 1e-3 is below 1%.
    mean_bias, var_bias = abs(mean_em - scale * x0_value), abs(var_em - std**2)
    assert var_bias <= 0.01 * std**2
    assert abs(x1.mean() - scale * x0_value) <= Z * (var_em / n).sqrt() + mean_bias
    assert abs(x1.var() - std**2) <= Z * math.sqrt(2 / (n - 1)) * var_em + var_bias


@pytest.mark.parametrize("sde", [VPSDE(), VESDE(), VPSDE(0.5, 5.0)], ids=["VP", "VE", "VP-mild"])
def test_euler_maruyama_bias_is_first_order_in_the_step(sde):
    # Halving h must halve the gap between the scheme's moments and sde.marginal(1): this ties
    # drift and diffusion to the marginal (a wrong marginal would leave an O(1) gap).
    scale, std = sde.marginal(1.0)
    gaps = []
    for n_steps in (400, 800):
        mean, variance = euler_maruyama_moments(sde, 1.0, n_steps)
        gaps.append((abs(float(mean - scale)), abs(float(variance - std**2))))
    for coarse, fine in zip(gaps[0], gaps[1], strict=True):
        if coarse > 1e-12:  # VE has no drift: its mean is exact
            assert 1.8 <= coarse / fine <= 2.2


@pytest.mark.parametrize(
    "sde, t_end", [(VPSDE(), 1.0), (VESDE(), 1.0), (VPSDE(), 0.5)], ids=["VP", "VE", "VP-half"]
)
def test_simulate_sde_is_euler_maruyama(sde, t_end):
    # With 20 coarse steps the scheme's bias is large (~10%) and depends on where each step
    # evaluates f and g; Monte Carlo must match the scheme's own moments, with no allowance.
    n, n_steps, x0_value = 50_000, 20, 3.0
    x0 = torch.full((n,), x0_value, dtype=torch.float64)
    x_end = simulate_sde(sde, x0, n_steps, gen(11), t_end=t_end)
    mean, variance = euler_maruyama_moments(sde, x0_value, n_steps, t_end)
    assert_mean(x_end, mean, variance, "Euler-Maruyama")
    assert_variance(x_end, variance, "Euler-Maruyama")


# --- the seed article's schemes -------------------------------------------------------------


def test_seed_article_variance_formula():
    assert float(seed_article_variance(1000)) == 499_500
    assert math.sqrt(float(seed_article_variance(1000))) == pytest.approx(706.75, abs=0.01)
    torch.testing.assert_close(
        seed_article_variance([0, 1, 2, 3, 10], data_variance=2.0),
        torch.tensor([2.0, 2.0, 3.0, 5.0, 47.0], dtype=torch.float64),
    )


def test_seed_article_diffuse_variance_grows_quadratically():
    n = 8000
    x0 = torch.zeros(n, dtype=torch.float64)
    states = seed_article_diffuse(x0, 1000, gen(8))
    assert states.shape == (1001, n)
    assert torch.equal(states[0], x0)
    assert torch.equal(states[1], x0)  # the first step adds sqrt(0) * noise
    for steps in [2, 3, 10, 100, 1000]:
        expected = seed_article_variance(steps)
        # Mean is known (0), so use the mean square: SE = sqrt(2 / n) Var for a Gaussian.
        mean_square = (states[steps] ** 2).mean()
        assert abs(mean_square - expected) <= Z * math.sqrt(2 / n) * expected, steps
        assert_mean(states[steps], 0.0, expected, f"steps={steps}")


@pytest.mark.parametrize(
    "schedule, n, times",
    [(linear_schedule(1000), 4000, [1, 10, 100, 1000]), (SHORT, 20_000, range(1, 9))],
    ids=["linear", "short"],
)
def test_seed_article_equation_diffuse_matches_its_moments(schedule, n, times):
    # The short schedule's large betas make beta_t (1 - beta_{t-1}) differ from beta_t by up
    # to 50%, so a step that dropped the (1 - beta_{t-1}) factor would fail.
    # A fixed x0: the mean is m_t x0 and the variance is the noise part alone.
    x0_value = 0.5
    states = seed_article_equation_diffuse(
        schedule, torch.full((n,), x0_value, dtype=torch.float64), gen(9)
    )
    assert states.shape == (schedule.T + 1, n)
    factor, variance = seed_article_equation_moments(schedule)
    assert bool((factor[1:].diff() > 0).all())  # the signal is amplified, not shrunk
    for t in times:
        assert_mean(states[t], factor[t] * x0_value, variance[t], f"t={t}")
        assert_variance(states[t], variance[t], f"t={t}")
    # Data drawn from N(0, 4): the variance propagates the data variance as well.
    g = gen(10)
    x0 = 2.0 * torch.randn(n, generator=g, dtype=torch.float64)
    states = seed_article_equation_diffuse(schedule, x0, g)
    _, variance = seed_article_equation_moments(schedule, data_variance=4.0)
    for t in times:
        assert_variance(states[t], variance[t], f"data t={t}")


# --- bad input ------------------------------------------------------------------------------

SCHEDULE = linear_schedule(10)
X = torch.zeros(4, 2, dtype=torch.float64)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (
            lambda: q_sample(SCHEDULE, X, 1, torch.zeros(4, 3)),
            ValueError,
            "^noise must have the same shape",
        ),
        (
            lambda: q_sample(SCHEDULE, X.clone().fill_(math.nan), 1, X),
            ValueError,
            "^x0 must be finite",
        ),
        (lambda: q_sample(SCHEDULE, X, 1, X + math.inf), ValueError, "^noise must be finite"),
        (lambda: q_sample(SCHEDULE, X.long(), 1, X), TypeError, "^x0 must be a floating"),
        (lambda: q_sample(SCHEDULE, [[0.0]], 1, X), TypeError, "^x0 must be a torch.Tensor"),
        (lambda: q_sample(SCHEDULE, X, 11, X), ValueError, r"^t must lie in 0\.\.10"),
        (lambda: q_sample(SCHEDULE, X, -1, X), ValueError, r"^t must lie in 0\.\.10"),
        (lambda: q_sample(SCHEDULE, X, 0.5, X), TypeError, "^t must"),
        (
            lambda: q_sample(SCHEDULE, X, torch.tensor([1, 2, 3]), X),
            ValueError,
            "^t must be a scalar or",
        ),
        (
            lambda: q_sample(SCHEDULE, X, torch.ones(4, 1, dtype=torch.long), X),
            ValueError,
            "^t must be a scalar",
        ),
        (lambda: q_sample(SCHEDULE.betas, X, 1, X), TypeError, "^schedule must be a Schedule"),
        (lambda: q_step(SCHEDULE, X, 0, X), ValueError, r"^t must lie in 1\.\.10"),
        (lambda: q_step(SCHEDULE, X, 1, X[:3]), ValueError, "^noise must have the same shape"),
        (lambda: q_step(None, X, 1, X), TypeError, "^schedule must"),
        (lambda: q_posterior(SCHEDULE, X, X, 0), ValueError, r"^t must lie in 1\.\.10"),
        (
            lambda: q_posterior(SCHEDULE, X, X[:, :1], 1),
            ValueError,
            "^x_t must have the same shape",
        ),
        (lambda: q_posterior("linear", X, X, 1), TypeError, "^schedule must"),
        (lambda: simulate_chain(SCHEDULE, X, gen(0), keep=1), ValueError, "^keep must"),
        (lambda: simulate_chain(SCHEDULE, X, gen(0), keep=12), ValueError, "^keep must"),
        (lambda: simulate_sde(VPSDE(), X, 0, gen(0)), ValueError, "^n_steps must"),
        (lambda: simulate_sde(VPSDE(), X, 10, gen(0), t_end=0.0), ValueError, "^t_end must"),
        (lambda: simulate_sde(VPSDE(), X, 10, gen(0), t_end=1.5), ValueError, "^t_end must"),
        (lambda: seed_article_diffuse(X, 0, gen(0)), ValueError, "^steps must"),
        (lambda: seed_article_variance(-1), ValueError, "^steps must"),
        (lambda: seed_article_equation_diffuse(X, X, gen(0)), TypeError, "^schedule must"),
    ],
)
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()
