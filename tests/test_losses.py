"""Tests for :mod:`diffusion_core.losses`: optimal predictors, target equivalences, weights,
and the training objective :class:`~diffusion_core.losses.DiffusionLoss`.

The Monte Carlo check uses Gaussian data x0 ~ N(0, c^2 I), where the optimal predictors are
linear in x_t. With D = scale^2 c^2 + std^2 (the variance of x_t per dimension), the posterior
means and the expected losses of the optimum per dimension at step t are

    eps: std x_t / D,                    Var(eps | x_t) = scale^2 c^2 / D = 1 - std^2 / D,
    x0:  scale c^2 x_t / D,              Var(x0 | x_t)  = c^2 std^2 / D,
    v:   scale std (1 - c^2) x_t / D,    Var(v | x_t)   = c^2 / D   (as scale^2 + std^2 = 1).

The loss with t uniform on 1..T is their average over t. Its Monte Carlo estimate must match
within 5 standard errors (a correct implementation fails with probability < 1e-6).
"""

import pytest
import torch
from torch import nn

from diffusion_core.losses import (
    DiffusionLoss,
    diffusion_loss,
    loss_weight,
    per_sample_loss,
    sample_t_and_noise,
    target,
)
from diffusion_core.nets import MLPDenoiser
from diffusion_core.schedules import cosine_schedule, linear_schedule, rescale_zero_terminal_snr

Z = 5.0
C = 0.5  # data standard deviation


def gen(seed):
    return torch.Generator().manual_seed(seed)


class GaussianOptimum(nn.Module):
    """The exact posterior-mean predictor for x0 ~ N(0, c^2 I), optionally scaled by a factor."""

    def __init__(self, schedule, c, prediction, factor=1.0):
        super().__init__()
        self.schedule, self.c, self.prediction, self.factor = schedule, c, prediction, factor

    def forward(self, x, t):
        scale, std = (v[:, None] for v in self.schedule.marginal(t))
        D = scale**2 * self.c**2 + std**2
        coefficient = {
            "eps": std / D,
            "x0": scale * self.c**2 / D,
            "v": scale * std * (1 - self.c**2) / D,
        }[self.prediction]
        return self.factor * coefficient * x


def optimal_loss(schedule, c, prediction):
    """The expected per-dimension loss of the optimum, averaged over t = 1..T."""
    scale, std = schedule.marginal(torch.arange(1, schedule.T + 1))
    D = scale**2 * c**2 + std**2
    return {"eps": scale**2 * c**2 / D, "x0": c**2 * std**2 / D, "v": c**2 / D}[prediction].mean()


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_optimal_predictor_reaches_the_closed_form_loss(prediction):
    schedule = linear_schedule(200)
    x0 = C * torch.randn(20_000, 2, generator=gen(0), dtype=torch.float64)
    net = GaussianOptimum(schedule, C, prediction)
    t, noise = sample_t_and_noise(x0, schedule, gen(1))
    losses = per_sample_loss(net, x0, schedule, t, noise, prediction)
    standard_error = losses.std() / losses.numel() ** 0.5
    expected = optimal_loss(schedule, C, prediction)
    assert abs(losses.mean() - expected) < Z * standard_error


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_perturbed_predictor_has_a_larger_loss(prediction, factor):
    schedule = linear_schedule(200)
    x0 = C * torch.randn(20_000, 2, generator=gen(2), dtype=torch.float64)
    optimum = GaussianOptimum(schedule, C, prediction)
    perturbed = GaussianOptimum(schedule, C, prediction, factor)
    best = diffusion_loss(optimum, x0, schedule, gen(3), prediction)
    worse = diffusion_loss(perturbed, x0, schedule, gen(3), prediction)
    assert best < worse


class Converted(nn.Module):
    """Turn an eps-predictor into the x0- or v-predictor it implies, given x_t = scale x0 + std eps.

    x0_hat = (x_t - std eps_hat) / scale and v_hat = scale eps_hat - std x0_hat
    = (eps_hat - std x_t) / scale (using scale^2 + std^2 = 1).
    """

    def __init__(self, eps_net, schedule, prediction):
        super().__init__()
        self.eps_net, self.schedule, self.prediction = eps_net, schedule, prediction

    def forward(self, x, t):
        scale, std = (v[:, None] for v in self.schedule.marginal(t))
        eps_hat = self.eps_net(x, t)
        if self.prediction == "x0":
            return (x - std * eps_hat) / scale
        return (eps_hat - std * x) / scale


@pytest.fixture(scope="module")
def equivalence_case():
    schedule = cosine_schedule(100)
    torch.manual_seed(0)
    eps_net = MLPDenoiser(data_dim=3, hidden=16, depth=1, time_dim=8).double()
    x0 = torch.randn(256, 3, generator=gen(4), dtype=torch.float64)
    t, noise = sample_t_and_noise(x0, schedule, gen(5))
    nets = {"eps": eps_net}
    nets.update({p: Converted(eps_net, schedule, p) for p in ("x0", "v")})
    return schedule, nets, x0, t, noise


def test_unweighted_losses_differ_by_the_snr_factors(equivalence_case):
    schedule, nets, x0, t, noise = equivalence_case
    loss = {p: per_sample_loss(nets[p], x0, schedule, t, noise, p) for p in nets}
    snr = schedule.snr[t]
    scale, _ = schedule.marginal(t)
    # ||x0 - x0_hat||^2 = ||eps - eps_hat||^2 / SNR,  ||eps - eps_hat||^2 = scale^2 ||v - v_hat||^2
    torch.testing.assert_close(loss["x0"] * snr, loss["eps"], rtol=1e-10, atol=0)
    torch.testing.assert_close(loss["v"] * scale**2, loss["eps"], rtol=1e-10, atol=0)
    torch.testing.assert_close(loss["v"] / (snr + 1), loss["x0"], rtol=1e-10, atol=0)


@pytest.mark.parametrize("weighting", ["snr", "min_snr"])
@pytest.mark.parametrize("gamma", [1.0, 5.0])
def test_matching_weights_make_the_three_losses_equal(equivalence_case, weighting, gamma):
    schedule, nets, x0, t, noise = equivalence_case
    loss = {p: per_sample_loss(nets[p], x0, schedule, t, noise, p, weighting, gamma) for p in nets}
    torch.testing.assert_close(loss["x0"], loss["eps"], rtol=1e-10, atol=0)
    torch.testing.assert_close(loss["v"], loss["eps"], rtol=1e-10, atol=0)


def test_snr_weighting_of_eps_is_the_plain_eps_loss(equivalence_case):
    schedule, nets, x0, t, noise = equivalence_case
    plain = per_sample_loss(nets["eps"], x0, schedule, t, noise, "eps", "none")
    weighted = per_sample_loss(nets["eps"], x0, schedule, t, noise, "eps", "snr")
    assert torch.equal(plain, weighted)


def test_loss_weight_table():
    schedule = linear_schedule(1000)
    t = torch.tensor([1, 100, 300, 600, 1000])
    snr = schedule.snr[t]
    gamma = 5.0
    clipped = snr.clamp(max=gamma)
    cases = {
        ("eps", "snr"): torch.ones_like(snr),
        ("x0", "snr"): snr,
        ("v", "snr"): snr / (snr + 1),
        ("eps", "min_snr"): clipped / snr,
        ("x0", "min_snr"): clipped,
        ("v", "min_snr"): clipped / (snr + 1),
    }
    for (prediction, weighting), expected in cases.items():
        got = loss_weight(schedule, t, prediction, weighting, gamma)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
    for prediction in ("eps", "x0", "v"):
        assert torch.equal(loss_weight(schedule, t, prediction, "none"), torch.ones(5).double())


def test_weights_are_finite_at_zero_terminal_snr():
    schedule = rescale_zero_terminal_snr(linear_schedule(100))
    T = schedule.T
    assert float(loss_weight(schedule, T, "eps", "min_snr")) == 1.0
    assert float(loss_weight(schedule, T, "x0", "min_snr")) == 0.0
    assert float(loss_weight(schedule, T, "v", "min_snr")) == 0.0
    assert float(loss_weight(schedule, T, "eps", "snr")) == 1.0


def test_v_target_definition():
    schedule = linear_schedule(50)
    x0 = torch.randn(7, 2, generator=gen(6), dtype=torch.float64)
    noise = torch.randn(7, 2, generator=gen(7), dtype=torch.float64)
    t = torch.arange(1, 8) * 7
    scale, std = schedule.marginal(t)
    v = target(x0, noise, scale, std, "v")
    torch.testing.assert_close(v, scale[:, None] * noise - std[:, None] * x0, rtol=0, atol=1e-15)
    assert target(x0, noise, scale, std, "eps") is noise
    assert target(x0, noise, scale, std, "x0") is x0


def test_times_cover_one_to_T_and_noise_matches_x0():
    schedule = linear_schedule(3)
    x0 = torch.zeros(1000, 2)
    t, noise = sample_t_and_noise(x0, schedule, gen(8))
    assert t.dtype == torch.int64
    assert set(t.tolist()) == {1, 2, 3}
    assert noise.shape == x0.shape and noise.dtype == x0.dtype


class NoisyNet(nn.Module):
    """A network that consumes the global random stream, to show it cannot change the draws."""

    def forward(self, x, t):
        return x + torch.randn_like(x)


def test_draws_depend_only_on_the_generator():
    schedule = linear_schedule(100)
    x0 = torch.randn(64, 2, generator=gen(9))
    reference = gen(10)
    sample_t_and_noise(x0, schedule, reference)
    for net in (NoisyNet(), MLPDenoiser()):
        generator = gen(10)
        diffusion_loss(net, x0, schedule, generator)
        assert torch.equal(generator.get_state(), reference.get_state())
    net = MLPDenoiser()
    assert torch.equal(
        diffusion_loss(net, x0, schedule, gen(11)), diffusion_loss(net, x0, schedule, gen(11))
    )


def test_scalar_t_applies_to_every_sample():
    schedule = linear_schedule(100)
    x0 = torch.randn(16, 2, generator=gen(12), dtype=torch.float64)
    noise = torch.randn(16, 2, generator=gen(13), dtype=torch.float64)
    net = GaussianOptimum(schedule, 1.0, "eps")
    scalar = per_sample_loss(net, x0, schedule, 40, noise)
    full = per_sample_loss(net, x0, schedule, torch.full((16,), 40), noise)
    assert torch.equal(scalar, full)


def test_bad_arguments_raise():
    schedule = linear_schedule(10)
    x0 = torch.randn(4, 2)
    net = MLPDenoiser()
    with pytest.raises(ValueError, match="prediction must be one of"):
        diffusion_loss(net, x0, schedule, gen(0), prediction="score")
    with pytest.raises(ValueError, match="weighting must be one of"):
        diffusion_loss(net, x0, schedule, gen(0), weighting="p2")
    with pytest.raises(ValueError, match="gamma must be"):
        diffusion_loss(net, x0, schedule, gen(0), weighting="min_snr", gamma=0.0)
    with pytest.raises(TypeError, match="generator must be"):
        diffusion_loss(net, x0, schedule, 0)
    with pytest.raises(TypeError, match="schedule must be"):
        diffusion_loss(net, x0, "linear", gen(0))
    with pytest.raises(TypeError, match="x0 must be"):
        diffusion_loss(net, torch.ones(4, 2, dtype=torch.int64), schedule, gen(0))
    with pytest.raises(ValueError, match=r"t must lie in 1\.\.10"):
        per_sample_loss(net, x0, schedule, torch.zeros(4, dtype=torch.int64), torch.randn(4, 2))
    with pytest.raises(ValueError, match=r"t must lie in 1\.\.10"):
        per_sample_loss(net, x0, schedule, torch.full((4,), 11), torch.randn(4, 2))
    with pytest.raises(ValueError, match="noise must have the shape"):
        per_sample_loss(net, x0, schedule, 3, torch.randn(4, 3))
    with pytest.raises(ValueError, match="net must return a tensor shaped like x0"):
        diffusion_loss(lambda x, t: x[:, :1], x0, schedule, gen(0))


# --- the training objective ------------------------------------------------------------------


def test_diffusion_objective_is_the_per_sample_diffusion_loss():
    schedule = linear_schedule(100)
    x0 = torch.randn(64, 2, generator=gen(14))
    torch.manual_seed(0)
    net = MLPDenoiser()
    objective = DiffusionLoss(schedule, prediction="v", weighting="min_snr", min_snr_gamma=2.0)
    per_sample = objective(net, x0, None, gen(15))
    assert per_sample.shape == (64,)
    expected = diffusion_loss(net, x0, schedule, gen(15), "v", "min_snr", 2.0)
    assert torch.equal(per_sample.mean(), expected)
    t, noise = sample_t_and_noise(x0, schedule, gen(15))
    assert torch.equal(
        per_sample, per_sample_loss(net, x0, schedule, t, noise, "v", "min_snr", 2.0)
    )


def test_label_dropout_replaces_labels_by_the_null_label_at_the_stated_rate():
    objective = DiffusionLoss(linear_schedule(10), label_dropout=0.25, null_label=7)
    labels = torch.arange(20_000) % 7
    dropped = objective.condition(labels, gen(16))
    kept = dropped != 7
    assert torch.equal(dropped[kept], labels[kept])
    # 20,000 Bernoulli(0.25) draws: standard error 0.0031
    assert abs(float((~kept).double().mean()) - 0.25) < Z * 0.0031
    assert objective.condition(None, gen(16)) is None
    plain, generator = DiffusionLoss(linear_schedule(10)), gen(17)
    state = generator.get_state()
    assert plain.condition(labels, generator) is labels
    assert torch.equal(generator.get_state(), state)  # no dropout, no draw
