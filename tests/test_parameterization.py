"""Tests for :mod:`diffusion_core.parameterization`: conversions and denoiser adapters.

Round trips are exact identities, checked to 1e-12 on random variance-preserving noise levels
(scale, std) = (cos phi, sin phi) drawn per sample, and on arbitrary (non-VP) levels for the
v formulas, which the module writes for any process.
"""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from diffusion_core.analytic import default_mixture_2d
from diffusion_core.parameterization import (
    as_denoiser,
    eps_from_score,
    eps_from_v,
    eps_from_x0,
    exact_denoiser,
    score_from_eps,
    v_from_eps_x0,
    x0_from_eps,
    x0_from_v,
)
from diffusion_core.samplers import ddim
from diffusion_core.schedules import (
    VESDE,
    VPSDE,
    GridPoint,
    RectifiedFlow,
    linear_schedule,
    rescale_zero_terminal_snr,
    scaled_linear_schedule,
)

torch.set_num_threads(1)
TOL = 1e-12


def gen(seed):
    return torch.Generator().manual_seed(seed)


def vp_levels(n, seed):
    """Per-sample (scale, std) = (cos phi, sin phi), phi uniform in (0.05, pi/2 - 0.05)."""
    phi = 0.05 + (math.pi / 2 - 0.1) * torch.rand(n, generator=gen(seed), dtype=torch.float64)
    return phi.cos(), phi.sin()


def draws(n, seed, shape=(3, 4)):
    g = gen(seed)
    x0 = torch.randn(n, *shape, generator=g, dtype=torch.float64)
    eps = torch.randn(n, *shape, generator=g, dtype=torch.float64)
    return x0, eps


def per_sample(value, like):
    return value.reshape(-1, *([1] * (like.ndim - 1)))


# ------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("seed", range(3))
def test_round_trips_between_eps_x0_v_and_score_per_sample(seed):
    x0, eps = draws(16, seed)
    scale, std = vp_levels(16, seed + 10)
    x = per_sample(scale, x0) * x0 + per_sample(std, x0) * eps
    v = v_from_eps_x0(eps, x0, scale, std)

    torch.testing.assert_close(x0_from_eps(x, eps, scale, std), x0, rtol=0, atol=TOL)
    torch.testing.assert_close(eps_from_x0(x, x0, scale, std), eps, rtol=0, atol=TOL)
    torch.testing.assert_close(x0_from_v(x, v, scale, std), x0, rtol=0, atol=TOL)
    torch.testing.assert_close(eps_from_v(x, v, scale, std), eps, rtol=0, atol=TOL)
    score = score_from_eps(eps, std)
    torch.testing.assert_close(score, -eps / per_sample(std, eps), rtol=0, atol=TOL)
    torch.testing.assert_close(eps_from_score(score, std), eps, rtol=0, atol=TOL)


def test_v_formulas_are_salimans_and_ho_for_variance_preserving_levels():
    x0, eps = draws(16, 1)
    scale, std = vp_levels(16, 2)
    x = per_sample(scale, x0) * x0 + per_sample(std, x0) * eps
    v = v_from_eps_x0(eps, x0, scale, std)
    s, a = per_sample(std, x), per_sample(scale, x)
    torch.testing.assert_close(x0_from_v(x, v, scale, std), a * x - s * v, rtol=0, atol=TOL)
    torch.testing.assert_close(eps_from_v(x, v, scale, std), s * x + a * v, rtol=0, atol=TOL)


@given(
    scale=st.floats(0.0, 10.0, allow_nan=False),
    std=st.floats(1e-3, 100.0, allow_nan=False),
)
def test_v_round_trip_holds_for_any_process(scale, std):
    x0, eps = draws(4, 0, shape=(2,))
    x = scale * x0 + std * eps
    v = v_from_eps_x0(eps, x0, scale, std)
    size = 1 + scale + std
    torch.testing.assert_close(x0_from_v(x, v, scale, std), x0, rtol=0, atol=1e-12 * size**2)
    torch.testing.assert_close(eps_from_v(x, v, scale, std), eps, rtol=0, atol=1e-12 * size**2)


def test_scalar_and_zero_dim_levels_broadcast_and_results_are_float64():
    x0, eps = draws(5, 3)
    x0, eps = x0.float(), eps.float()
    x = 0.6 * x0 + 0.8 * eps
    from_number = x0_from_eps(x, eps, 0.6, 0.8)
    f64 = torch.float64
    from_tensor = x0_from_eps(x, eps, torch.tensor(0.6, dtype=f64), torch.tensor(0.8, dtype=f64))
    assert from_number.dtype == torch.float64
    torch.testing.assert_close(from_number, from_tensor, rtol=0, atol=0)
    torch.testing.assert_close(from_number, x0.double(), rtol=0, atol=1e-6)


def test_documented_division_by_zero():
    x0, eps = draws(3, 4, shape=(2,))
    # eps cannot give x0 at scale = 0, nor x0 give eps or the score at std = 0: a level given
    # as a number is refused there; a level given as a tensor is not inspected (no host read),
    # and the division gives inf or NaN, as documented.
    with pytest.raises(ValueError, match=r"scale must be a finite number in \(0, 1e\+150\]"):
        x0_from_eps(eps, eps, 0.0, 1.0)
    with pytest.raises(ValueError, match=r"std must be a finite number in \(0, 1e\+150\]"):
        eps_from_x0(x0, x0 + 1, 1.0, 0)
    with pytest.raises(ValueError, match=r"std must be a finite number in \(0, 1e\+150\]"):
        score_from_eps(eps, 0.0)
    with pytest.raises(ValueError, match="scale and std must not both be 0"):
        x0_from_v(eps, x0, 0.0, 0.0)
    for bad in (math.nan, math.inf, -1.0):
        with pytest.raises(ValueError, match="std must be a finite number in"):
            x0_from_eps(eps, eps, 0.5, bad)
    zero = torch.zeros(())
    assert not bool(torch.isfinite(x0_from_eps(eps, eps, zero, 1.0)).all())
    assert not bool(torch.isfinite(eps_from_x0(x0, x0 + 1, 1.0, zero)).all())
    # v stays usable at both ends.
    torch.testing.assert_close(x0_from_v(eps, -x0, 0.0, 1.0), x0, rtol=0, atol=TOL)
    torch.testing.assert_close(x0_from_v(x0, eps, 1.0, 0.0), x0, rtol=0, atol=TOL)


def test_conversions_reject_bad_arguments():
    x0, eps = draws(4, 5, shape=(2,))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        x0_from_eps([1.0, 2.0], eps, 0.5, 0.5)
    with pytest.raises(TypeError, match="eps must be a floating-point"):
        x0_from_eps(x0, eps.long(), 0.5, 0.5)
    with pytest.raises(ValueError, match="v must have the shape of x"):
        x0_from_v(x0, eps[:3], 0.5, 0.5)
    with pytest.raises(ValueError, match=r"scale must be a scalar or have shape \(4,\)"):
        x0_from_eps(x0, eps, torch.ones(3), 0.5)
    with pytest.raises(ValueError, match="std must be a scalar"):
        score_from_eps(eps, torch.ones(4, 2))
    with pytest.raises(TypeError, match="std must be a tensor or a number"):
        eps_from_score(eps, "one")
    with pytest.raises(ValueError, match="batch axis"):
        eps_from_score(torch.tensor(1.0), 1.0)


# --------------------------------------------------------------------------- denoisers


def nets_from_mixture(mixture, process):
    """eps-, x0- and v-predicting networks that are exact for the mixture."""

    def x0_net(x, t):
        return mixture.x0_pred(x, *process.marginal(t))

    def eps_net(x, t):
        scale, std = process.marginal(t)
        return eps_from_x0(x, mixture.x0_pred(x, scale, std), scale, std)

    def v_net(x, t):
        scale, std = process.marginal(t)
        x0 = mixture.x0_pred(x, scale, std)
        return v_from_eps_x0(eps_from_x0(x, x0, scale, std), x0, scale, std)

    return {"x0": x0_net, "eps": eps_net, "v": v_net}


def point_at(process, t):
    """The grid point a sampler hands its denoiser at time t of a process."""
    scale, std = process.marginal(t)
    return GridPoint(t, float(scale), float(std))


@pytest.mark.parametrize(
    "process, times",
    [
        (linear_schedule(100), [torch.tensor(1), torch.tensor(50), torch.tensor(100)]),
        (VPSDE(), [torch.tensor(0.01), torch.tensor(0.5), torch.tensor(1.0)]),
        (VESDE(), [torch.tensor(0.01), torch.tensor(0.5), torch.tensor(1.0)]),
    ],
)
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_as_denoiser_recovers_the_exact_denoiser(process, times, prediction):
    mixture = default_mixture_2d()
    net = nets_from_mixture(mixture, process)[prediction]
    model = as_denoiser(net, prediction)
    exact = exact_denoiser(mixture)
    x = 3 * torch.randn(64, 2, generator=gen(0), dtype=torch.float64)
    for t in times:
        expected = mixture.x0_pred(x, *process.marginal(t))
        point = point_at(process, t)
        torch.testing.assert_close(exact(x, point), expected, rtol=0, atol=0)
        torch.testing.assert_close(model(x, point), expected, rtol=1e-9, atol=1e-9)
        # The affine form the samplers fold into their steps gives the same x0_hat.
        out, a, b = model.affine(x, point)
        torch.testing.assert_close(a * x + b * out.double(), expected, rtol=1e-9, atol=1e-9)


def test_as_denoiser_passes_conditioning_to_the_network():
    schedule, mixture = linear_schedule(100), default_mixture_2d()
    seen = []

    def conditional_net(x, t, labels, extra):
        seen.append((t, labels, extra))
        return nets_from_mixture(mixture, schedule)["v"](x, t)

    x = torch.randn(3, 2, generator=gen(1), dtype=torch.float64)
    point = point_at(schedule, torch.tensor(40))
    labels = torch.tensor([0, 1, 2])
    out = as_denoiser(conditional_net, "v")(x, point, labels, "context")
    torch.testing.assert_close(
        out, mixture.x0_pred(x, point.scale, point.std), rtol=1e-9, atol=1e-9
    )
    assert seen[0][0] is point.t and seen[0][1] is labels and seen[0][2] == "context"


def test_eps_prediction_raises_at_zero_snr_while_v_prediction_works():
    schedule = rescale_zero_terminal_snr(scaled_linear_schedule(100))
    mixture = default_mixture_2d()
    nets = nets_from_mixture(mixture, schedule)
    x = torch.randn(8, 2, generator=gen(2), dtype=torch.float64)
    eps_model = as_denoiser(nets["eps"], "eps")
    for call in (eps_model, eps_model.affine):
        with pytest.raises(ValueError, match="zero SNR"):
            call(x, point_at(schedule, torch.tensor(100)))
    assert bool(torch.isfinite(eps_model(x, point_at(schedule, torch.tensor(99)))).all())
    v_model = as_denoiser(nets["v"], "v")
    # At zero SNR x carries nothing of x0: the best guess is the data mean.
    expected = mixture.mean.expand(8, 2)
    at_T = point_at(schedule, torch.tensor(100))
    torch.testing.assert_close(v_model(x, at_T), expected, rtol=0, atol=1e-12)


def test_denoiser_adapters_reject_bad_arguments():
    schedule = linear_schedule(10)
    with pytest.raises(TypeError, match="net must be callable"):
        as_denoiser(None, "eps")
    with pytest.raises(ValueError, match="prediction must be one of"):
        as_denoiser(lambda x, t: x, "score")
    with pytest.raises(TypeError, match="mixture must be a GaussianMixture"):
        exact_denoiser("mixture")
    model = as_denoiser(lambda x, t: x[:, :1], "x0")
    for call in (model, model.affine):
        with pytest.raises(ValueError, match=r"net\(x, t\) must have the shape of x"):
            call(torch.zeros(2, 2, dtype=torch.float64), point_at(schedule, torch.tensor(3)))


def test_as_denoiser_accepts_one_time_per_sample():
    # The samplers hand one grid point to a whole batch; the conversions also take one level
    # per sample, so a point that carries (n,) times, scales and stds denoises every sample at
    # its own time (every prediction; eps-prediction's zero-SNR check reads every scale).
    schedule, mixture = linear_schedule(100), default_mixture_2d()
    nets = nets_from_mixture(mixture, schedule)
    x = torch.randn(3, 2, generator=gen(1), dtype=torch.float64)
    t = torch.tensor([5, 50, 95])
    scale, std = schedule.marginal(t)
    expected = mixture.x0_pred(x, scale, std)
    zero_snr = rescale_zero_terminal_snr(scaled_linear_schedule(100))
    at_end = torch.tensor([50, 100, 95])
    with pytest.raises(ValueError, match="prediction='eps' cannot recover x0 at zero SNR"):
        as_denoiser(nets["eps"], "eps")(x, GridPoint(at_end, *zero_snr.marginal(at_end)))
    for prediction in ("v", "x0", "eps"):
        model = as_denoiser(nets[prediction], prediction)
        out = model(x, GridPoint(t, scale, std))
        torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)
        for row in range(3):
            one = model(x[row : row + 1], point_at(schedule, t[row]))
            torch.testing.assert_close(out[row : row + 1], one, rtol=1e-12, atol=1e-12)


def test_the_affine_form_passes_conditioning_too():
    seen = []

    def conditional_net(x, t, labels):
        seen.append(labels)
        return x * (1 + labels[:, None])

    x = torch.ones(3, 2, dtype=torch.float64)
    point = point_at(linear_schedule(10), torch.tensor(4))
    labels = torch.tensor([0, 1, 2])
    model = as_denoiser(conditional_net, "x0")
    out, a, b = model.affine(x, point, labels)
    assert seen == [labels] and (a, b) == (0.0, 1.0)
    torch.testing.assert_close(out, x * torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64))
    torch.testing.assert_close(model(x, point, labels), out, rtol=0, atol=0)


def test_eps_prediction_raises_at_the_start_of_a_rectified_flow_grid():
    # The straight path starts at pure noise, scale = 0 at t = 1: eps cannot give x0 there, on
    # any process, while x0- and v-prediction can.
    process, mixture = RectifiedFlow(), default_mixture_2d()
    nets = nets_from_mixture(mixture, process)
    grid = process.grid(10)
    assert grid[0].scale == 0.0 and grid[1].scale > 0
    x = torch.randn(8, 2, generator=gen(3), dtype=torch.float64)
    eps_model = as_denoiser(nets["eps"], "eps")
    for call in (eps_model, eps_model.affine):
        with pytest.raises(ValueError, match="prediction='eps' cannot recover x0 at zero SNR"):
            call(x, grid[0])
    with pytest.raises(ValueError, match="zero SNR"):
        ddim(eps_model, x, grid)
    torch.testing.assert_close(
        eps_model(x, grid[1]), mixture.x0_pred(x, grid[1].scale, grid[1].std), rtol=1e-9, atol=1e-9
    )
    for prediction in ("v", "x0"):
        out = as_denoiser(nets[prediction], prediction)(x, grid[0])
        torch.testing.assert_close(out, mixture.mean.expand(8, 2), rtol=0, atol=1e-12)
        assert bool(torch.isfinite(ddim(as_denoiser(nets[prediction], prediction), x, grid)).all())
