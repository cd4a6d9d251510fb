"""One or two steps of every sampler against its paper's equations, to 1e-12.

Each sampler is driven by a known affine denoiser D(x, point) = p x + q c whose coefficients
depend on the grid point (so a denoiser read at the wrong point shows), on a grid whose scales
and stds are arbitrary (so no coefficient is accidentally 0 or 1). The expected state is
computed here from the update written in the paper, not from the library's step rule. A wrong
coefficient, sign, dropped term or index in a step changes the result at order 1, far above the
1e-12 tolerance, which only covers float64 rounding.

For the stochastic samplers the noise is replayed: a ``torch.Generator`` with a known seed gives
the same draws here as in the sampler (``torch.randn`` of x's shape, float64 for a float64 x, in
the order the sampler draws them). Where the step is affine in its noise, two seeds separate the
mean from the noise coefficient and both are checked on their own.
"""

import math

import pytest
import torch

from diffusion_core.device import per_sample_generators, sample_seeds
from diffusion_core.samplers import (
    ddim,
    ddpm,
    dpm_solver_pp_2m,
    euler,
    euler_maruyama,
    heun,
    predictor_corrector,
    unipc,
)
from diffusion_core.schedules import TimeGrid, linear_schedule

torch.set_num_threads(1)
F64 = torch.float64
TOL = dict(rtol=1e-12, atol=1e-12)
SHAPE = (5, 3)

# An arbitrary grid from noisy to clean: SNR increases, scale is neither 1 nor VP-tied.
GRID = TimeGrid(
    torch.tensor([3.0, 2.0, 1.0, 0.0], dtype=F64),
    torch.tensor([0.45, 0.7, 0.88, 1.0], dtype=F64),
    torch.tensor([1.3, 0.8, 0.35, 0.0], dtype=F64),
)
C = torch.linspace(-1.0, 2.0, SHAPE[1], dtype=F64)


def start():
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(11), dtype=F64)


def model(x, point):
    """D(x, point) = p x + q c with p, q depending on the point's noise level."""
    p = 1.0 / (1.0 + 3.0 * point.std**2)
    q = 0.5 + point.std + 0.25 * point.scale
    return p * x + q * C


def draws(seed, count):
    """The first ``count`` noise draws a sampler makes from a generator seeded ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(SHAPE, generator=g, dtype=F64) for _ in range(count)]


def split_noise(sampler, grid, expected_mean, expected_noise, **options):
    """Run a one-step sampler whose step is mean + n z with two seeds; check mean and n apart."""
    out = [
        sampler(model, start(), grid, torch.Generator().manual_seed(s), **options) for s in (1, 2)
    ]
    z1, z2 = draws(1, 1)[0], draws(2, 1)[0]
    n = (out[0] - out[1]) / (z1 - z2)
    torch.testing.assert_close(n, torch.full_like(n, expected_noise), **TOL)
    torch.testing.assert_close(out[0] - expected_noise * z1, expected_mean, **TOL)


def point(grid, i):
    p = grid.points[i]
    return p, p.scale, p.std, p.std / p.scale


# ------------------------------------------------------------------------- ancestral


@pytest.mark.parametrize("variance", ["beta_tilde", "beta"])
def test_ddpm_step_is_ho_et_al_eq_7_on_adjacent_steps(variance):
    """Ho et al. (2020), Eq. 7: mu = sqrt(abar_{t-1}) beta_t / (1 - abar_t) x0 + sqrt(alpha_t)
    (1 - abar_{t-1}) / (1 - abar_t) x_t, beta_tilde = (1 - abar_{t-1}) / (1 - abar_t) beta_t;
    the variance is beta_tilde_t or beta_t (their Sec. 3.2)."""
    schedule = linear_schedule(10, beta_start=0.01, beta_end=0.3)
    betas = schedule.betas
    abar = torch.cumprod(1 - betas, 0).tolist()  # abar[t - 1] for t = 1..T
    grid = schedule.grid(10)[4:6]  # t = 6 -> 5
    t = int(grid.t[0])
    beta_t, ab_t, ab_s = float(betas[t - 1]), abar[t - 1], abar[t - 2]
    x = start()
    x0_hat = model(x, grid.points[0])
    mean = (math.sqrt(ab_s) * beta_t / (1 - ab_t)) * x0_hat + (
        math.sqrt(1 - beta_t) * (1 - ab_s) / (1 - ab_t)
    ) * x
    var = (1 - ab_s) / (1 - ab_t) * beta_t if variance == "beta_tilde" else beta_t
    split_noise(ddpm, grid, mean, math.sqrt(var), variance=variance)


@pytest.mark.parametrize("variance", ["beta_tilde", "beta"])
def test_ddpm_step_is_the_gaussian_posterior_on_any_grid(variance):
    """q(x_s | x_t, x0) for x_t = a_t x0 + s_t eps (Kingma et al. 2021, Eq. 26 and 27):
    a_ts = a_t / a_s, s2_ts = s_t^2 - a_ts^2 s_s^2, mean = (a_ts s_s^2 / s_t^2) x_t +
    (a_s s2_ts / s_t^2) x0, variance s2_ts s_s^2 / s_t^2 (or s2_ts, the forward step's)."""
    p0, a_t, s_t, _ = point(GRID, 0)
    _, a_s, s_s, _ = point(GRID, 1)
    a_ts = a_t / a_s
    s2_ts = s_t**2 - a_ts**2 * s_s**2
    x = start()
    mean = (a_ts * s_s**2 / s_t**2) * x + (a_s * s2_ts / s_t**2) * model(x, p0)
    var = s2_ts * s_s**2 / s_t**2 if variance == "beta_tilde" else s2_ts
    split_noise(ddpm, GRID[:2], mean, math.sqrt(var), variance=variance)


@pytest.mark.parametrize("eta", [0.0, 0.4, 1.0])
def test_ddim_step_is_song_meng_ermon_eq_12(eta):
    """Song, Meng & Ermon (2021), Eq. 12 and 16 with alpha = abar: x_s = sqrt(abar_s) x0_hat +
    sqrt(1 - abar_s - sigma^2) eps_hat + sigma z, eps_hat = (x_t - sqrt(abar_t) x0_hat) /
    sqrt(1 - abar_t), sigma = eta sqrt((1 - abar_s) / (1 - abar_t)) sqrt(1 - abar_t / abar_s)."""
    schedule = linear_schedule(10, beta_start=0.01, beta_end=0.3)
    grid = schedule.grid(5)[1:3]  # t = 8 -> 6: two forward steps apart
    abar = torch.cat([torch.ones(1, dtype=F64), torch.cumprod(1 - schedule.betas, 0)])
    ab_t, ab_s = float(abar[int(grid.t[0])]), float(abar[int(grid.t[1])])
    x = start()
    x0_hat = model(x, grid.points[0])
    eps_hat = (x - math.sqrt(ab_t) * x0_hat) / math.sqrt(1 - ab_t)
    sigma = eta * math.sqrt((1 - ab_s) / (1 - ab_t)) * math.sqrt(1 - ab_t / ab_s)
    mean = math.sqrt(ab_s) * x0_hat + math.sqrt(1 - ab_s - sigma**2) * eps_hat
    if eta == 0:
        torch.testing.assert_close(ddim(model, x, grid, eta=eta), mean, **TOL)
    else:
        split_noise(ddim, grid, mean, sigma, eta=eta)


# ----------------------------------------------------------------------- ODE solvers


def test_euler_step_is_karras_et_al_alg_1_without_correction():
    """y = x / scale, d = (y - D) / sigma, y' = y + (sigma' - sigma) d, x' = scale' y'."""
    p0, a0, _, sig0 = point(GRID, 0)
    _, a1, _, sig1 = point(GRID, 1)
    x = start()
    y = x / a0
    y1 = y + (sig1 - sig0) * (y - model(x, p0)) / sig0
    torch.testing.assert_close(euler(model, x, GRID[:2]), a1 * y1, **TOL)


def heun_reference(x, grid):
    """Karras et al. (2022), Alg. 1 (S_churn = 0), in y = x / scale, the model read in x."""
    for i in range(grid.steps):
        p, a, _, sig = point(grid, i)
        q, a1, _, sig1 = point(grid, i + 1)
        y = x / a
        d = (y - model(a * y, p)) / sig
        y_next = y + (sig1 - sig) * d
        if sig1 > 0:
            d_prime = (y_next - model(a1 * y_next, q)) / sig1
            y_next = y + (sig1 - sig) * (d + d_prime) / 2
        x = a1 * y_next
    return x


def test_heun_steps_are_karras_et_al_alg_1():
    """Two second-order steps, then the last one onto sigma = 0, which is Euler's (line 8)."""
    x = start()
    torch.testing.assert_close(heun(model, x, GRID[:3]), heun_reference(x, GRID[:3]), **TOL)
    torch.testing.assert_close(heun(model, x, GRID), heun_reference(x, GRID), **TOL)


def lam(grid, i):
    return math.log(grid.points[i].scale / grid.points[i].std)


def test_dpm_solver_pp_2m_is_lu_et_al_alg_2():
    """x_i = (s_i / s_{i-1}) x_{i-1} - a_i (e^{-h_i} - 1) D_i, D_1 = x0_hat_0 (first order),
    D_i = (1 + 1 / (2 r_i)) x0_hat_{i-1} - 1 / (2 r_i) x0_hat_{i-2}, r_i = h_{i-1} / h_i."""
    grid = GRID[:3]
    x0 = start()
    m0 = model(x0, grid.points[0])
    h1, h2 = lam(grid, 1) - lam(grid, 0), lam(grid, 2) - lam(grid, 1)
    s, a = grid.std.tolist(), grid.scale.tolist()
    x1 = (s[1] / s[0]) * x0 - a[1] * (math.exp(-h1) - 1) * m0
    m1 = model(x1, grid.points[1])
    r = h1 / h2
    x2 = (s[2] / s[1]) * x1 - a[2] * (math.exp(-h2) - 1) * ((1 + 1 / (2 * r)) * m1 - m0 / (2 * r))
    torch.testing.assert_close(dpm_solver_pp_2m(model, x0, grid), x2, **TOL)
    # the last step onto std = 0 is first order: it returns the denoiser's output at x2
    last = dpm_solver_pp_2m(model, x0, GRID)
    torch.testing.assert_close(last, model(x2, grid.points[2]), **TOL)


def unipc_reference(x, grid):
    """UniPC-bh2 of order 2 (Zhao et al. 2023, Alg. 2 and Eq. 14), written as in their
    reference code: x_t_ = (s_t / s) x - a_t phi_1 m0, predictor x_t_ - a_t B_h rho_p D1 with
    rho_p = 1/2, corrector x_t_ - a_t B_h (rho_1 D1 + rho_c (m_t - m0)), (rho_1, rho_c) solving
    [[1, 1], [rk, 1]] rho = [phi_2 / B_h, 2 phi_3 / B_h]; rho_c = 1/2 after a first-order step."""
    outputs = []
    lams = [lam(grid, i) for i in range(len(grid))]
    m0 = model(x, grid.points[0])
    for i in range(grid.steps):
        a_t, s_t, s_0 = grid.points[i + 1].scale, grid.points[i + 1].std, grid.points[i].std
        h = lams[i + 1] - lams[i]
        hh = -h
        h_phi_1 = math.expm1(hh)
        b_h = h_phi_1
        x_t_ = (s_t / s_0) * x - a_t * h_phi_1 * m0
        if outputs:
            rk = (lams[i - 1] - lams[i]) / h
            d1 = (outputs[-1] - m0) / rk
            x_pred = x_t_ - a_t * b_h * 0.5 * d1
        else:
            x_pred = x_t_
        m_t = model(x_pred, grid.points[i + 1])
        if outputs:
            phi_2 = h_phi_1 / hh - 1
            phi_3 = phi_2 / hh - 0.5
            rhs = torch.tensor([phi_2 / b_h, 2 * phi_3 / b_h], dtype=F64)
            rho_1, rho_c = torch.linalg.solve(torch.tensor([[1.0, 1.0], [rk, 1.0]], dtype=F64), rhs)
            x = x_t_ - a_t * b_h * (float(rho_1) * d1 + float(rho_c) * (m_t - m0))
        else:
            x = x_t_ - a_t * b_h * 0.5 * (m_t - m0)
        outputs.append(m0)
        m0 = m_t
    return x


def test_unipc_steps_are_zhao_et_al_alg_2():
    x = start()
    torch.testing.assert_close(unipc(model, x, GRID[:3]), unipc_reference(x, GRID[:3]), **TOL)


# -------------------------------------------------------------------- reverse SDE


def em_reference(x, p0, p1, z):
    """Song et al. (2021), Eq. 47 (reverse diffusion, VE form) in y = x / scale: y' = y +
    (sigma^2 - sigma'^2) score + (sigma^2 - sigma'^2)^(1/2) z, score = (D - y) / sigma^2."""
    a0, sig0 = p0.scale, p0.std / p0.scale
    a1, sig1 = p1.scale, p1.std / p1.scale
    y = x / a0
    score = (model(x, p0) - y) / sig0**2
    return a1 * (y + (sig0**2 - sig1**2) * score + math.sqrt(sig0**2 - sig1**2) * z)


def test_euler_maruyama_step_is_the_reverse_diffusion_predictor():
    p0, a0, _, sig0 = point(GRID, 0)
    p1, a1, _, sig1 = point(GRID, 1)
    x = start()
    mean = em_reference(x, p0, p1, torch.zeros(SHAPE, dtype=F64))
    split_noise(euler_maruyama, GRID[:2], mean, a1 * math.sqrt(sig0**2 - sig1**2))
    torch.testing.assert_close(euler_maruyama(model, x, GRID[2:]), model(x, GRID.points[2]), **TOL)


def langevin_reference(x, p, z, snr):
    """Song et al. (2021), Alg. 5, in y = x / scale at the point p: g = score, e = 2 (snr |z| /
    |g|)^2 with |.| the batch root-mean-square of the per-sample norms, y <- y + e g +
    (2 e)^(1/2) z."""
    a, sig = p.scale, p.std / p.scale
    y = x / a
    g = (model(x, p) - y) / sig**2
    e = 2 * (snr * z.square().sum(1).mean().sqrt() / g.square().sum(1).mean().sqrt()) ** 2
    return a * (y + e * g + (2 * e).sqrt() * z), float(e)


@pytest.mark.parametrize("corrector_steps", [0, 1, 2])
@pytest.mark.parametrize("snr", [0.16, 0.3])
def test_predictor_corrector_is_song_et_al_alg_4_and_5(corrector_steps, snr):
    """Two predictor steps, each followed by ``corrector_steps`` Langevin steps at the level it
    reached; noise drawn predictor first, then one draw per Langevin step."""
    grid = GRID[:3]
    x = start()
    z = draws(7, 2 * (1 + corrector_steps))
    expected, k = x, 0
    for i in range(2):
        expected = em_reference(expected, grid.points[i], grid.points[i + 1], z[k])
        k += 1
        for _ in range(corrector_steps):
            expected, _ = langevin_reference(expected, grid.points[i + 1], z[k], snr)
            k += 1
    out = predictor_corrector(
        model, x, grid, torch.Generator().manual_seed(7), corrector_steps=corrector_steps, snr=snr
    )
    torch.testing.assert_close(out, expected, **TOL)


def test_predictor_corrector_differs_from_euler_maruyama_by_the_langevin_step():
    """With one corrector step the output is the Euler-Maruyama step plus e g + (2 e)^(1/2) z at
    the new level, e = 2 snr^2 |z|^2 / |g|^2: checked against the step size computed here."""
    grid = GRID[:2]
    x = start()
    g = torch.Generator().manual_seed(3)
    em = euler_maruyama(model, x, grid, g)
    z = draws(3, 2)[1]  # the corrector's draw follows the predictor's
    expected, e = langevin_reference(em, grid.points[1], z, 0.16)
    out = predictor_corrector(model, x, grid, torch.Generator().manual_seed(3), snr=0.16)
    torch.testing.assert_close(out, expected, **TOL)
    # the correction is of order one here, not a rounding effect
    assert (out - em).abs().max() > 1e-2 and e > 1e-3
    # the last step onto std = 0 runs no corrector and returns the denoiser's output
    torch.testing.assert_close(
        predictor_corrector(model, x, GRID[2:]), model(x, GRID.points[2]), **TOL
    )


# ------------------------------------------------------------------------ seeds


def test_per_sample_seeds_and_generators_are_pinned():
    """Recorded values: a change in the seed derivation or the generator would change every
    sample drawn with per-sample generators."""
    assert sample_seeds(0, [0, 1, 2]) == [
        6375474603054492659,
        8514611595135926838,
        6745496414556587486,
    ]
    assert sample_seeds(2026, [5]) == [4846475609700476390]
    generators = per_sample_generators(sample_seeds(0, [0, 1]))
    rows = [torch.randn(2, generator=g, dtype=F64).tolist() for g in generators]
    assert rows == [
        [0.06389959466220221, -0.6546891528784816],
        [1.7307121824415201, 0.03766554695812123],
    ]


FINAL_STEP_CASES = [
    (ddpm, {"variance": "beta_tilde"}),
    (ddpm, {"variance": "beta"}),
    (ddim, {"eta": 1.0}),
    (euler, {}),
    (heun, {}),
    (euler_maruyama, {}),
    (predictor_corrector, {"corrector_steps": 2}),
    (dpm_solver_pp_2m, {}),
    (unipc, {}),
]


@pytest.mark.parametrize("sampler, options", FINAL_STEP_CASES)
def test_the_last_step_returns_the_denoiser_output_without_noise(sampler, options):
    """The final-step policy: the step onto std = 0 returns D(x) at the previous point, with no
    noise whatever the variance option (Ho et al. 2020, Alg. 2; Karras et al. 2022, Alg. 1)."""
    x = start()
    out = sampler(model, x, GRID[2:], torch.Generator().manual_seed(5), **options)
    torch.testing.assert_close(out, model(x, GRID.points[2]), **TOL)
