"""Tests for flow matching: :mod:`diffusion_core.flow`, the velocity conversions of
:mod:`diffusion_core.parameterization`, the exact velocity field of
:mod:`diffusion_core.analytic` and the flow-matching objective of :mod:`diffusion_core.losses`.

References are independent of the code under test: the ODE endpoint from SciPy's DOP853, the
velocity field against the continuity equation and against the denoiser, the loss minimum in
closed form for Gaussian data, OT pairs against brute force. Monte Carlo checks are at k = 4
standard errors (:func:`diffusion_core.metrics.assert_within`).
"""

import itertools
import math

import pytest
import torch
from scipy.integrate import quad, solve_ivp

from diffusion_core import checkpoints, flow, losses, parameterization, samplers
from diffusion_core.analytic import default_mixture_2d, gaussian, mixture_velocity
from diffusion_core.images import load_digits_model
from diffusion_core.likelihood import divergence
from diffusion_core.metrics import assert_within, mean_and_standard_error, rms_distance
from diffusion_core.nets import MLPDenoiser
from diffusion_core.parameterization import (
    eps_from_velocity,
    exact_denoiser,
    velocity_from_eps,
    velocity_from_x0,
    x0_from_velocity,
)
from diffusion_core.schedules import EDM, VPSDE, RectifiedFlow
from diffusion_core.train import TrainConfig, train

F64 = torch.float64
RF = RectifiedFlow()
PATHS = {"rectified_flow": RF, "vp_sde": VPSDE(), "edm": EDM()}


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def mixture():
    return default_mixture_2d()


# ---------------------------------------------------------------- path and conversions


def test_path_coefficients_match_finite_differences():
    for name, process in PATHS.items():
        t = torch.tensor([0.3, 0.55, 0.8], dtype=F64)
        scale, std, d_scale, d_std = flow.path_coefficients(process, t)
        h = 1e-6
        (s_up, d_up), (s_dn, d_dn) = process.marginal(t + h), process.marginal(t - h)
        torch.testing.assert_close(d_scale, (s_up - s_dn) / (2 * h), rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(d_std, (d_up - d_dn) / (2 * h), rtol=1e-6, atol=1e-8)
        torch.testing.assert_close((scale, std), process.marginal(t), msg=name)
    rf = flow.path_coefficients(RF, 0.25)
    assert [float(c) for c in rf] == [0.75, 0.25, -1.0, 1.0]


@pytest.mark.parametrize("path", list(PATHS))
def test_velocity_conversions_round_trip_and_match_the_definition(path):
    # u = scale' x0 + std' eps with x = scale x0 + std eps: every conversion against that
    # definition, and each pair of conversions as inverses, per sample.
    process, g = PATHS[path], gen(1)
    t = torch.rand(16, generator=g, dtype=F64) * 0.9 + 0.05
    scale, std, d_scale, d_std = flow.path_coefficients(process, t)
    x0 = torch.randn(16, 3, generator=g, dtype=F64)
    eps = torch.randn(16, 3, generator=g, dtype=F64)
    x = scale[:, None] * x0 + std[:, None] * eps
    u = d_scale[:, None] * x0 + d_std[:, None] * eps
    levels = (scale, std, d_scale, d_std)
    close = dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(velocity_from_x0(x, x0, *levels), u, **close)
    torch.testing.assert_close(velocity_from_eps(x, eps, *levels), u, **close)
    torch.testing.assert_close(x0_from_velocity(x, u, *levels), x0, **close)
    torch.testing.assert_close(eps_from_velocity(x, u, *levels), eps, **close)
    # through the other parameterisations of the library: eps <-> x0 <-> velocity
    eps_back = parameterization.eps_from_x0(x, x0_from_velocity(x, u, *levels), scale, std)
    torch.testing.assert_close(eps_back, eps, **close)


def test_rectified_flow_velocity_is_eps_minus_x0_and_finite_at_pure_noise():
    x0, eps = torch.randn(5, 2, generator=gen(2), dtype=F64), torch.randn(5, 2, dtype=F64)
    x = eps.clone()  # t = 1: scale 0, std 1
    u = eps - x0
    torch.testing.assert_close(x0_from_velocity(x, u, 0.0, 1.0, -1.0, 1.0), x0)
    torch.testing.assert_close(eps_from_velocity(x, u, 0.0, 1.0, -1.0, 1.0), eps)


@pytest.mark.parametrize("path", ["rectified_flow", "vp_sde"])
def test_exact_denoiser_velocity_equals_the_exact_velocity_field(path, mixture):
    # The velocity read from the Bayes denoiser (an affine map of E[x0 | x_t]) against the
    # component-wise transport field dm/dt + (1/2) dC/dt C^-1 (x - m), mixed by responsibility.
    process = PATHS[path]
    x = 3 * torch.randn(200, 2, generator=gen(3), dtype=F64)
    from_denoiser = flow.velocity_field(exact_denoiser(mixture), process)
    oracle = flow.exact_velocity(mixture, process)
    for t in (0.05, 0.3, 0.7, 0.95):
        torch.testing.assert_close(from_denoiser(x, t), oracle(x, t), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("path", ["rectified_flow", "vp_sde"])
def test_exact_velocity_solves_the_continuity_equation(path, mixture):
    # d/dt log p_t + div u + u . grad log p_t = 0, with d/dt by central differences of the
    # closed-form log-density and the divergence by autograd.
    process = PATHS[path]
    x = 2 * torch.randn(50, 2, generator=gen(4), dtype=F64) + mixture.mean
    field = flow.exact_velocity(mixture, process)
    for t in (0.2, 0.5, 0.8):
        h = 1e-5
        up = process.marginal(torch.tensor(t + h, dtype=F64))
        dn = process.marginal(torch.tensor(t - h, dtype=F64))
        dlogp = (mixture.log_prob(x, *up) - mixture.log_prob(x, *dn)) / (2 * h)
        scale, std = process.marginal(torch.tensor(t, dtype=F64))
        u = field(x, t)
        transport = divergence(field, x, t) + (u * mixture.score(x, scale, std)).sum(1)
        torch.testing.assert_close(dlogp, -transport, rtol=1e-5, atol=1e-5)


def test_mixture_velocity_takes_per_sample_times(mixture):
    t = torch.tensor([0.1, 0.4, 0.9], dtype=F64)
    x = torch.randn(3, 2, generator=gen(5), dtype=F64)
    together = mixture_velocity(mixture, x, *flow.path_coefficients(RF, t))
    for i in range(3):
        alone = mixture_velocity(mixture, x[i : i + 1], *flow.path_coefficients(RF, t[i]))
        torch.testing.assert_close(together[i : i + 1], alone, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------- sampling


@pytest.fixture(scope="module")
def flow_reference(mixture):
    """64 noise draws and their exact endpoints: SciPy's DOP853 at tolerance 1e-11 on the exact
    velocity field from t = 1 to t = 0 (no sampler of the library involved)."""
    z = torch.randn(64, 2, generator=gen(0), dtype=F64)
    field = flow.exact_velocity(mixture, RF)

    def rhs(t, y):
        return field(torch.from_numpy(y).reshape(-1, 2), t).reshape(-1).numpy()

    solution = solve_ivp(rhs, (1.0, 0.0), z.reshape(-1).numpy(), "DOP853", rtol=1e-11, atol=1e-11)
    return z, torch.from_numpy(solution.y[:, -1]).reshape(-1, 2), field


# Orders from zero SNR: every sampler's first step is first order, which makes UniPC second
# order here (measured 1.02, 1.80, 1.02, 2.11, 2.44 from 32 to 256 steps).
ORDERS = {"euler": 1, "ddim": 1, "heun": 2, "dpm_solver_pp_2m": 2, "unipc": 2}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ORDERS))
def test_rectified_flow_velocity_through_every_deterministic_sampler(name, flow_reference):
    # The exact velocity field as a denoiser (flow_denoiser) through each sampler: the error
    # against the DOP853 endpoint falls by 8^p from 32 to 256 steps, p the order, within 0.3.
    z, reference, field = flow_reference
    model = flow.flow_denoiser(field, RF)
    sampler = samplers.SAMPLERS[name]
    errors = [rms_distance(sampler(model, z, RF.grid(k)), reference).item() for k in (32, 256)]
    order = math.log(errors[0] / errors[1]) / math.log(8)
    assert errors[1] < 1e-2 and order > ORDERS[name] - 0.3, (name, errors, order)


def test_euler_on_the_rectified_flow_is_euler_in_t(mixture):
    # The samplers step in y = x / scale and sigma; on the straight path their Euler step is
    # x + (t' - t) u_t(x), the flow's own Euler method, to round-off.
    field = flow.exact_velocity(mixture, RF)
    grid = RF.grid(6)
    x = torch.randn(30, 2, generator=gen(6), dtype=F64)
    by_hand = x.clone()
    for i in range(grid.steps):
        t, t_next = float(grid.t[i]), float(grid.t[i + 1])
        by_hand = by_hand + (t_next - t) * field(by_hand, t)
    out = samplers.euler(flow.flow_denoiser(field, RF), x, grid)
    torch.testing.assert_close(out, by_hand, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- the objective


def test_flow_matching_loss_minimum_in_closed_form_for_gaussian_data():
    # For x0 ~ N(mu, S) the marginal velocity is exact and the least loss at t is
    # tr(Cov[u] - Cov[u, x_t] C^-1 Cov[x_t, u]) / d = tr(s'^2 S + std'^2 I - dC C^-1 dC / 4) / d,
    # dC = 2 (s s' S + std std' I); its mean over t ~ U(0, 1) by quadrature against the Monte
    # Carlo mean of the loss of the exact field.
    mean = torch.tensor([1.0, -0.5], dtype=F64)
    cov = torch.tensor([[0.6, 0.2], [0.2, 0.3]], dtype=F64)
    data = gaussian(mean, cov)

    def least_loss(t):
        s, sd, ds, dsd = (float(c) for c in flow.path_coefficients(RF, t))
        eye = torch.eye(2, dtype=F64)
        c = s**2 * cov + sd**2 * eye
        dc = 2 * (s * ds * cov + sd * dsd * eye)
        return float(torch.trace(ds**2 * cov + dsd**2 * eye - dc @ torch.linalg.solve(c, dc) / 4))

    expected = quad(lambda t: least_loss(t) / 2, 0, 1, epsabs=1e-10)[0]
    g = gen(7)
    n = 20_000
    x0 = data.sample(n, g)
    t = losses.sample_flow_time(n, g)
    eps = torch.randn(n, 2, generator=g, dtype=F64)

    def exact_net(x, t_scaled):
        return mixture_velocity(data, x, *flow.path_coefficients(RF, t_scaled / 1000))

    mean, se = mean_and_standard_error(losses.flow_matching_loss(exact_net, x0, eps, t, RF))
    assert_within(mean, expected, se, what="least flow-matching loss")


def test_flow_matching_loss_is_least_at_the_exact_velocity(mixture):
    # L(u* + delta) - L(u*) = E ||delta||^2 / d for any delta (the cross term vanishes because
    # u* = E[target | x_t]): paired Monte Carlo on the mixture, common random numbers.
    g = gen(8)
    n = 20_000
    x0, t = mixture.sample(n, g), losses.sample_flow_time(n, g, "logit_normal")
    eps = torch.randn(n, 2, generator=g, dtype=F64)

    def exact_net(x, t_scaled):
        return mixture_velocity(mixture, x, *flow.path_coefficients(RF, t_scaled / 1000))

    def perturbation(x, t_scaled):
        return 0.3 * torch.stack([torch.sin(x[:, 1]), t_scaled / 1000 * x[:, 0]], 1)

    def perturbed(x, t_scaled):
        return exact_net(x, t_scaled) + perturbation(x, t_scaled)

    best = losses.flow_matching_loss(exact_net, x0, eps, t, RF)
    worse = losses.flow_matching_loss(perturbed, x0, eps, t, RF)
    scale, std = RF.marginal(t)
    x_t = scale[:, None] * x0 + std[:, None] * eps
    penalty = perturbation(x_t, 1000 * t).square().mean(1)
    gap, gap_se = mean_and_standard_error(worse - best - penalty)
    assert_within(gap, 0.0, gap_se, what="cross term of the flow-matching loss")
    assert float((worse - best).mean()) > 0


@pytest.mark.parametrize("path", ["rectified_flow", "vp_sde"])
def test_flow_matching_is_the_eps_loss_with_a_weight(path):
    # ||u - u_hat||^2 = w(t) ||eps - eps_hat||^2 exactly, for a velocity read from any eps_hat.
    process, g = PATHS[path], gen(9)
    t = torch.rand(32, generator=g, dtype=F64) * 0.9 + 0.05
    scale, std, d_scale, d_std = flow.path_coefficients(process, t)
    x0, eps = torch.randn(32, 2, generator=g, dtype=F64), torch.randn(32, 2, generator=g, dtype=F64)
    eps_hat = eps + 0.4 * torch.randn(32, 2, generator=g, dtype=F64)
    x = scale[:, None] * x0 + std[:, None] * eps
    u = d_scale[:, None] * x0 + d_std[:, None] * eps
    u_hat = velocity_from_eps(x, eps_hat, scale, std, d_scale, d_std)
    weight = losses.flow_matching_eps_weight(process, t)
    torch.testing.assert_close(
        (u - u_hat).square().sum(1), weight * (eps - eps_hat).square().sum(1), rtol=1e-10, atol=0
    )
    if path == "rectified_flow":
        torch.testing.assert_close(weight, 1 / (1 - t) ** 2)


def test_time_samplers_have_their_laws():
    g, n = gen(10), 40_000
    uniform = losses.sample_flow_time(n, g)
    mean, se = mean_and_standard_error(uniform)
    assert_within(mean, 0.5, se, what="uniform mean")
    t = losses.sample_flow_time(n, g, "logit_normal", location=0.5, spread=0.8)
    logit = torch.log(t / (1 - t))
    mean, se = mean_and_standard_error(logit)
    assert_within(mean, 0.5, se, what="logit mean")
    assert_within(float(logit.std()), 0.8, 0.8 / math.sqrt(2 * n), what="logit spread")
    assert bool(((t > 0) & (t < 1)).all())


def test_objective_draws_the_same_for_the_same_generator_and_trains():
    # Deterministic draws (times, then noise), and a short run lowers the loss of a fresh net
    # towards its floor (the conditional loss keeps the variance of eps - x0 given x_t).
    data = default_mixture_2d().sample(2_000, gen(11)).float()
    torch.manual_seed(0)
    net = MLPDenoiser(hidden=32, depth=1)
    objective = losses.FlowMatchingLoss()
    a = objective(net, data[:64], None, gen(12))
    b = objective(net, data[:64], None, gen(12))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    run = train(net, data, objective, TrainConfig(steps=300, lr=3e-3, seed=0), progress=False)
    first, last = sum(run.losses[:30]) / 30, sum(run.losses[-30:]) / 30
    assert last < 0.75 * first, (first, last)


def test_given_coupling_trains_on_the_pairs():
    pairs = torch.randn(8, 2, 2, generator=gen(13))

    def net(x, t):
        return torch.zeros_like(x)

    loss = losses.FlowMatchingLoss(coupling="given")(net, pairs, None, gen(14))
    expected = (pairs[:, 1] - pairs[:, 0]).square().mean(1)  # the target eps - x0, for any t
    torch.testing.assert_close(loss, expected)


# -------------------------------------------------------------- couplings, straightness


def test_ot_couple_is_the_optimal_permutation():
    g = gen(15)
    x0, noise = torch.randn(6, 2, generator=g), torch.randn(6, 2, generator=g)
    paired = flow.ot_couple(x0, noise)
    best = min(
        float((x0 - noise[list(p)]).square().sum()) for p in itertools.permutations(range(6))
    )
    assert float((x0 - paired).square().sum()) == pytest.approx(best, rel=1e-6)
    assert sorted(paired[:, 0].tolist()) == sorted(noise[:, 0].tolist())  # a permutation


def test_straightness_of_known_paths():
    t = torch.linspace(1, 0, 2001, dtype=F64)
    start, end = torch.randn(4, 3, dtype=F64), torch.randn(4, 3, dtype=F64)
    line = t[:, None, None] * start + (1 - t[:, None, None]) * end
    assert float(flow.straightness(line, t).abs().max()) < 1e-20
    # x(t) = (t, t^2): chord speed (1, 1), speed (1, 2t), int (2t - 1)^2 dt / 2 = 1/6
    parabola = torch.stack([t, t**2], 1)[:, None, :]
    torch.testing.assert_close(flow.straightness(parabola, t), torch.tensor([1 / 6], dtype=F64))


def test_the_exact_rectified_flow_is_not_straight_but_reflow_pairs_are_its_endpoints(mixture):
    field = flow.exact_velocity(mixture, RF)
    model = flow.flow_denoiser(field, RF)
    z = torch.randn(200, 2, generator=gen(16), dtype=F64)
    grid = RF.grid(40)
    path = flow.flow_path(samplers.heun, model, z, grid)
    assert path.shape == (41, 200, 2)
    torch.testing.assert_close(path[0], z)
    torch.testing.assert_close(path[-1], samplers.heun(model, z, grid))
    s, se = mean_and_standard_error(flow.straightness(path, grid.t))
    assert s > 10 * se  # curved: the independent coupling crosses paths
    pairs = flow.reflow_pairs(samplers.heun, model, z, grid)
    torch.testing.assert_close(pairs[:, 0], path[-1])
    torch.testing.assert_close(pairs[:, 1], z)


# -------------------------------------------------------------------- argument checks

X = torch.zeros(4, 2, dtype=F64)
IDENTITY = lambda x, t: x  # noqa: E731 - a field, net or denoiser that returns its input
RF_EXACT = flow.flow_denoiser(flow.exact_velocity(default_mixture_2d(), RF), RF)
BAD_CALLS = [
    (flow.path_coefficients, ("not a process", 0.5), TypeError, "process"),
    (flow.path_coefficients, (RF, 1.5), ValueError, "t"),
    (flow.velocity_field, (3, RF), TypeError, "model"),
    (flow.velocity_field, (lambda x, p: x, "rf"), TypeError, "process"),
    (flow.flow_denoiser, (None, RF), TypeError, "field"),
    (flow.flow_denoiser, (lambda x, t: x, 1), TypeError, "process"),
    (flow.network_velocity, ("net",), TypeError, "net"),
    (flow.network_velocity, (lambda x, t: x, -1.0), ValueError, "time_scale"),
    (flow.exact_velocity, ("mixture", RF), TypeError, "mixture"),
    (flow.exact_velocity, (default_mixture_2d(), None), TypeError, "process"),
    (flow.ot_couple, (X, torch.zeros(3, 2)), ValueError, "noise"),
    (flow.ot_couple, ([1.0], X), TypeError, "x0"),
    (flow.reflow_pairs, (None, None, X, RF.grid(2)), TypeError, "sampler"),
    (flow.flow_path, (samplers.euler, None, "x", RF.grid(2)), TypeError, "x"),
    (flow.straightness, (torch.zeros(3, 2, 2), torch.zeros(2)), ValueError, "path"),
    (flow.straightness, (torch.zeros(3, 2, 2), torch.zeros(3)), ValueError, "t"),
    (velocity_from_x0, (X, X, 0.5, 0.0, -1.0, 1.0), ValueError, "std"),
    (velocity_from_x0, (X, X, 0.5, 0.5, float("nan"), 1.0), ValueError, "d_scale"),
    (velocity_from_eps, (X, X, 0.0, 1.0, -1.0, 1.0), ValueError, "scale"),
    (x0_from_velocity, (X, X, 1.0, 1.0, 1.0, 1.0), ValueError, "d_std"),
    (x0_from_velocity, (X, torch.zeros(3, 2), 0.5, 0.5, -1.0, 1.0), ValueError, "u"),
    (eps_from_velocity, (X, X, 0.5, 0.5, -1.0, "a"), TypeError, "d_std"),
    (mixture_velocity, ("m", X, 1, 1, 0, 0), TypeError, "mixture"),
    (mixture_velocity, (default_mixture_2d(), X, 1, 1, float("inf"), 0), ValueError, "d_scale"),
    (mixture_velocity, (default_mixture_2d(), X, 1, 1, 0, torch.zeros(3)), ValueError, "d_std"),
    (losses.sample_flow_time, (0, gen(0)), ValueError, "n"),
    (losses.sample_flow_time, (4, None), TypeError, "generator"),
    (losses.sample_flow_time, (4, gen(0), "cosine"), ValueError, "sampler"),
    (losses.sample_flow_time, (4, gen(0), "logit_normal", 0.0, 0.0), ValueError, "spread"),
    (losses.sample_flow_time, (4, gen(0), "logit_normal", math.nan), ValueError, "location"),
    (losses.flow_matching_target, (X, torch.zeros(4, 3), 1, 1), ValueError, "noise"),
    (losses.flow_matching_target, (X, X, torch.zeros(3), 1), ValueError, "d_scale"),
    (losses.flow_matching_loss, (IDENTITY, X, X, torch.zeros(3), RF), ValueError, "t"),
    (losses.flow_matching_loss, (IDENTITY, X, X, torch.zeros(4), RF, 0), ValueError, "time_scale"),
    (losses.flow_matching_loss, (lambda x, t: x[:2], X, X, torch.zeros(4), RF), ValueError, "net"),
    (losses.flow_matching_loss, (None, X, X, torch.zeros(4), RF), TypeError, "net"),
    (losses.flow_matching_eps_weight, ("rf", 0.5), TypeError, "process"),
    # a time that is not finite, or at which the weight is infinite
    (flow.network_velocity(IDENTITY), (X, math.nan), ValueError, "t"),
    (flow.network_velocity(IDENTITY), (X, 1e308), ValueError, "t"),
    (flow.exact_velocity(default_mixture_2d(), RF), (X, -math.inf), ValueError, "t"),
    (losses.flow_matching_eps_weight, (RF, [0.5, 1.0]), ValueError, "t"),
    # a grid point that is not one, and errors raised by what the function calls
    (flow.flow_denoiser(IDENTITY, RF), (X, None), TypeError, "point"),
    (flow.flow_denoiser(IDENTITY, RF), (X, [0.5, 0.5, 0.5]), TypeError, "point"),
    (flow.reflow_pairs, (samplers.euler, RF_EXACT, X[:0], RF.grid(2)), ValueError, "noise"),
    (flow.reflow_pairs, (samplers.euler, RF_EXACT, X[:, :, None], RF.grid(2)), ValueError, "noise"),
    (losses.flow_matching_target, (X, X, 1e200, 1), ValueError, "d_scale"),
    (losses.flow_matching_target, (X, X, 1, -1e300 * X[:, 0].exp()), ValueError, "d_std"),
]


@pytest.mark.parametrize("function, args, error, name", BAD_CALLS)
def test_bad_arguments_are_refused_by_name(function, args, error, name):
    with pytest.raises(error, match=name):
        function(*args)


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        ({"process": "rf"}, TypeError, "process"),
        ({"time_sampler": "beta"}, ValueError, "time_sampler"),
        ({"spread": -1.0}, ValueError, "spread"),
        ({"location": math.inf}, ValueError, "location"),
        ({"coupling": "sinkhorn"}, ValueError, "coupling"),
        ({"time_scale": 0}, ValueError, "time_scale"),
    ],
)
def test_flow_matching_objective_refuses_bad_settings(kwargs, error, name):
    with pytest.raises(error, match=name):
        losses.FlowMatchingLoss(**kwargs)


def test_ot_couple_pairs_huge_coordinates_as_it_pairs_their_rescaled_copies():
    # The squared costs of coordinates near 1e200 overflow; the plan is scale-invariant.
    x0 = torch.randn(16, 3, generator=gen(0), dtype=F64)
    noise = torch.randn(16, 3, generator=gen(1), dtype=F64)
    paired = flow.ot_couple(x0, noise)
    torch.testing.assert_close(flow.ot_couple(x0 * 1e200, noise * 1e200), paired * 1e200)
    assert torch.isfinite(flow.ot_couple(x0 * 1e300, noise)).all()


def test_errors_of_the_network_name_the_batch_they_came_from():
    # The network refuses x_t of the wrong shape; the message says that x_t is the data batch.
    net = MLPDenoiser(data_dim=2, hidden=8, depth=1, time_dim=4)
    for coupling, batch in (("ot", torch.zeros(4, 2, 1)), ("given", torch.zeros(4, 2, 2, 1))):
        with pytest.raises(ValueError, match="batch"):
            losses.FlowMatchingLoss(coupling=coupling)(net, batch, None, gen(0))
    with pytest.raises(TypeError, match="net"):
        losses.FlowMatchingLoss()("net", torch.zeros(4, 2), None, gen(0))


def test_objective_refuses_batches_of_the_wrong_shape():
    with pytest.raises(ValueError, match="batch"):
        losses.FlowMatchingLoss(coupling="given")(lambda x, t: x, X, None, gen(0))
    with pytest.raises(ValueError, match="batch"):
        losses.FlowMatchingLoss()(lambda x, t: x, torch.zeros(4), None, gen(0))
    with pytest.raises(TypeError, match="batch"):
        losses.FlowMatchingLoss()(
            lambda x, t: x, torch.zeros(4, 2, dtype=torch.int64), None, gen(0)
        )


# ------------------------------------------------------------------ the training script


def test_flow_training_script_is_reproducible_and_matches_the_packaged_run(tmp_path, load_script):
    script = load_script("train_flow")
    out = [tmp_path / f"{name}.safetensors" for name in "ab"]
    for path in out:
        script.main(["--steps", "2", "--out", str(path)])
    a, b = (checkpoints.load(path, checkpoints.DIGITS_MODEL) for path in out)
    for name in a["ema"]:
        assert torch.equal(a["ema"][name], b["ema"][name]), name
    assert torch.equal(a["losses"], b["losses"]) and len(a["losses"]) == 2
    # the packaged model: the script's settings, and its first steps (bit for bit on the
    # machine that trained it; another CPU may round its convolutions differently)
    net, packaged_record = load_digits_model(checkpoints.packaged("flow_digits"))
    assert packaged_record["train"] == script.SETTINGS
    assert packaged_record["prediction"] == "velocity"
    torch.testing.assert_close(a["losses"], packaged_record["losses"][:2], rtol=1e-5, atol=0)


def test_eps_objective_of_the_script_is_reproducible_and_loads_back_in_float16(
    tmp_path, load_script
):
    script = load_script("train_flow")
    out = {name: tmp_path / f"{name}.safetensors" for name in ("eps_a", "eps_b", "flow")}
    for name in ("eps_a", "eps_b"):
        script.main(["--steps", "2", "--objective", "eps", "--seed", "3", "--out", str(out[name])])
    script.main(["--steps", "2", "--seed", "3", "--out", str(out["flow"])])
    a, b, f = (checkpoints.load(out[name], checkpoints.DIGITS_MODEL) for name in out)
    for name in a["ema"]:
        assert torch.equal(a["ema"][name], b["ema"][name]), name
    assert torch.equal(a["losses"], b["losses"]) and len(a["losses"]) == 2
    assert a["prediction"] == "eps" and f["prediction"] == "velocity"
    assert a["train"] == f["train"] == dict(script.SETTINGS, steps=2, seed=3)
    assert a["init_seed"] == f["init_seed"] == 3
    # the set keeps the runs in order, in float16, and reads them back into float32 nets
    collected = tmp_path / "set.safetensors"
    script.main(["--collect", str(out["eps_a"]), str(out["flow"]), "--out", str(collected)])
    stored = checkpoints.load(collected, checkpoints.DIGITS_MODEL_SET)["models"]
    assert all(v.dtype == torch.float16 for m in stored for v in m["ema"].values())
    loaded = flow.load_digits_model_set(collected)
    assert [record["prediction"] for _, record in loaded] == ["eps", "velocity"]
    x = torch.randn(16, 1, 8, 8, generator=gen(0))
    t = torch.tensor(500.0)
    for (net, record), full in zip(loaded, (a, f), strict=True):
        assert next(net.parameters()).dtype == torch.float32 and "ema" not in record
        reference, _ = load_digits_model(out["eps_a" if full is a else "flow"])
        with torch.no_grad():
            got, want = net(x, t), reference(x, t)
        # float16 keeps 11 significant bits: the outputs move by a few parts in a thousand
        assert (got - want).abs().max() < 1e-2 * want.abs().max()
    with pytest.raises(checkpoints.CheckpointError, match="digits denoiser"):
        flow.load_digits_model_set(out["flow"])


def test_packaged_equal_budget_models_match_the_script(tmp_path, load_script):
    script = load_script("train_flow")
    models = flow.load_digits_model_set()
    short = checkpoints.load(
        script.main(
            [
                "--steps",
                "2",
                "--objective",
                "eps",
                "--seed",
                "8",
                "--out",
                str(tmp_path / "eps8.safetensors"),
            ]
        ),
        checkpoints.DIGITS_MODEL,
    )
    seeds = {"eps": [], "velocity": []}
    for net, record in models:
        seeds[record["prediction"]].append(record["train"]["seed"])
        assert record["train"] == dict(script.SETTINGS, seed=record["train"]["seed"])
        assert record["init_seed"] == record["train"]["seed"]
        assert record["net"] == script.DIGITS_MODELS["unconditional"]["net"]
        assert next(net.parameters()).dtype == torch.float32 and not net.training
        if record["prediction"] == "eps" and record["train"]["seed"] == 8:
            # its first steps (bit for bit on the machine that trained it)
            torch.testing.assert_close(short["losses"], record["losses"][:2], rtol=1e-5, atol=0)
    # with the packaged flow of seed 7, three training seeds of each objective
    assert sorted(seeds["eps"]) == [7, 8, 9] and sorted(seeds["velocity"] + [7]) == [7, 8, 9]
