"""Tests for classifier-free guidance (:mod:`diffusion_core.samplers`) and for class-conditional
training with label dropout (:mod:`diffusion_core.losses`, :mod:`diffusion_core.train`)."""

import math

import pytest
import torch
from torch import nn

from diffusion_core import samplers
from diffusion_core.analytic import GaussianMixture, default_mixture_2d
from diffusion_core.losses import DiffusionLoss, diffusion_loss, per_sample_loss
from diffusion_core.parameterization import as_denoiser, eps_from_x0, x0_from_eps
from diffusion_core.schedules import GridPoint, linear_schedule
from diffusion_core.train import TrainConfig, train

SCHEDULE = linear_schedule(1000)
MIXTURE = default_mixture_2d()
NULL = MIXTURE.n_components  # 3


def points(n=64, seed=0):
    return 3 * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def pt(t):
    """The grid point of SCHEDULE at step t, as a sampler passes it to the denoiser."""
    scale, std = SCHEDULE.marginal(t)
    return GridPoint(torch.tensor(t), float(scale), float(std))


def component(k):
    return GaussianMixture(torch.ones(1), MIXTURE.means[k : k + 1], MIXTURE.covs[k : k + 1])


@pytest.fixture(scope="module")
def exact():
    return samplers.exact_conditional_denoiser(MIXTURE)


# --- the exact conditional denoiser ----------------------------------------------------------


@pytest.mark.parametrize("t", [10, 300, 900])
def test_exact_conditional_denoiser_is_the_component_denoiser(exact, t):
    x, (scale, std) = points(), SCHEDULE.marginal(t)
    for k in range(NULL):
        torch.testing.assert_close(
            exact(x, pt(t), torch.full((64,), k)), component(k).x0_pred(x, scale, std)
        )
    torch.testing.assert_close(
        exact(x, pt(t), torch.full((64,), NULL)), MIXTURE.x0_pred(x, scale, std)
    )
    mixed = torch.arange(64) % (NULL + 1)  # one label per sample
    out = exact(x, pt(t), mixed)
    torch.testing.assert_close(out[5:6], exact(x[5:6], pt(t), mixed[5:6]))


# --- the guidance wrapper --------------------------------------------------------------------


def test_weight_zero_is_unconditional_and_weight_one_is_conditional_exactly(exact):
    x, t = points(), pt(400)
    unconditional = exact(x, t, torch.full((64,), NULL))
    conditional = exact(x, t, torch.full((64,), 1))
    guided = samplers.classifier_free_guidance(exact, 0.0, 1, NULL)
    assert torch.equal(guided(x, t), unconditional)
    assert torch.equal(samplers.classifier_free_guidance(exact, 1.0, 1, NULL)(x, t), conditional)


def test_guidance_is_affine_in_the_weight(exact):
    x, t = points(), pt(250)
    uncond = exact(x, t, torch.full((64,), NULL))
    cond = exact(x, t, torch.full((64,), 2))
    for w in (-0.5, 0.3, 2.0, 7.5):
        guided = samplers.classifier_free_guidance(exact, w, 2, NULL)(x, t)
        torch.testing.assert_close(guided, uncond + w * (cond - uncond), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("t", [50, 400, 800])
@pytest.mark.parametrize("w", [0.5, 3.0])
def test_guided_denoiser_on_the_mixture_matches_the_closed_form(exact, t, w):
    # Guided score = (1 - w) grad log p_t(x) + w grad log p_t(x | k) and Tweedie's formula
    # x0_hat = (x + std^2 score) / scale.
    x, (scale, std) = points(), SCHEDULE.marginal(t)
    k = 0
    score = (1 - w) * MIXTURE.score(x, scale, std) + w * component(k).score(x, scale, std)
    closed_form = (x + std**2 * score) / scale
    guided = samplers.classifier_free_guidance(exact, w, k, NULL)(x, pt(t))
    torch.testing.assert_close(guided, closed_form, rtol=1e-9, atol=1e-9)
    # the same as the score plus w times the gradient of the log-responsibility log p_t(k | x)
    x_grad = x.clone().requires_grad_(True)
    log_r = MIXTURE.responsibilities(x_grad, scale, std)[:, k].log().sum()
    (classifier_grad,) = torch.autograd.grad(log_r, x_grad)
    score_via_classifier = MIXTURE.score(x, scale, std) + w * classifier_grad
    torch.testing.assert_close(score, score_via_classifier, rtol=1e-7, atol=1e-9)


def test_guiding_eps_is_guiding_x0(exact):
    # eps and x0 are affine in one another at fixed (x, t), and the guidance weights sum to one.
    def eps_model(x, point, labels):
        return eps_from_x0(x, exact(x, point, labels), point.scale, point.std)

    x, point, w = points(), pt(600), 4.0
    guided_eps = samplers.classifier_free_guidance(eps_model, w, 1, NULL)(x, point)
    via_eps = x0_from_eps(x, guided_eps, point.scale, point.std)
    via_x0 = samplers.classifier_free_guidance(exact, w, 1, NULL)(x, point)
    torch.testing.assert_close(via_eps, via_x0, rtol=1e-9, atol=1e-9)
    # and a guided eps-network converted by as_denoiser before guidance gives the same
    as_net = as_denoiser(lambda x, t, labels: eps_model(x, point, labels), "eps")
    guided = samplers.classifier_free_guidance(as_net, w, 1, NULL)(x, point)
    torch.testing.assert_close(guided, via_x0, rtol=1e-9, atol=1e-9)


def test_one_batched_call_per_evaluation_and_per_sample_labels():
    calls = []

    def model(x, t, labels):
        calls.append((x.shape[0], labels.clone(), t))
        return x * (labels[:, None] + 1)

    x = torch.ones(3, 2)
    guided = samplers.classifier_free_guidance(model, 2.0, torch.tensor([0, 1, 2]), 9)
    point = pt(5)
    out = guided(x, point)
    assert len(calls) == 1 and calls[0][0] == 6
    assert calls[0][1].tolist() == [0, 1, 2, 9, 9, 9]
    # (1 - w) * 10 + w * (label + 1)
    torch.testing.assert_close(out[:, 0], torch.tensor([-8.0, -6.0, -4.0]))
    assert calls[0][2] is point  # the grid point passes through, unchanged


@pytest.mark.parametrize("name", sorted(samplers.SAMPLERS))
def test_guided_model_works_with_every_sampler(exact, name):
    grid = SCHEDULE.grid(20)
    generator = torch.Generator().manual_seed(0)
    x = samplers.prior_sample(grid, (200, 2), generator)
    guided = samplers.classifier_free_guidance(exact, 3.0, 2, NULL)
    out = samplers.SAMPLERS[name](guided, x, grid, generator)
    assert out.shape == (200, 2) and torch.isfinite(out).all()
    # strong guidance towards component 2 puts (nearly) every sample there
    labels = MIXTURE.responsibilities(out, 1.0, 0.0).argmax(dim=1)
    assert (labels == 2).double().mean() > 0.95


def test_guidance_rejects_bad_arguments(exact):
    with pytest.raises(TypeError, match="model must be callable"):
        samplers.classifier_free_guidance(None, 1.0, 0, NULL)
    with pytest.raises(TypeError, match="weight must be a number, got str"):
        samplers.classifier_free_guidance(exact, "2", 0, NULL)
    with pytest.raises(ValueError, match=r"null_label must be in 0\.\., got -1"):
        samplers.classifier_free_guidance(exact, 2.0, 0, -1)
    with pytest.raises(TypeError, match="label must be an int or an integer tensor, got float"):
        samplers.classifier_free_guidance(exact, 2.0, 0.5, NULL)
    with pytest.raises(ValueError, match="label must be one int"):
        samplers.classifier_free_guidance(exact, 2.0, torch.tensor([0, 1]), NULL)(points(), pt(3))
    for weight in (math.inf, -math.inf, math.nan):  # refused, not passed on as inf or NaN
        with pytest.raises(ValueError, match="weight must be a finite number"):
            samplers.classifier_free_guidance(exact, weight, 0, NULL)
    with pytest.raises(ValueError, match="label must be one or more integers >= 0"):
        samplers.classifier_free_guidance(exact, 2.0, -1, NULL)
    with pytest.raises(ValueError, match=r"label must be one or more integers >= 0, got \[0, -1\]"):
        samplers.classifier_free_guidance(exact, 2.0, torch.tensor([0, -1]), NULL)
    with pytest.raises(TypeError, match="label must be an int or an integer tensor, got bool"):
        samplers.classifier_free_guidance(exact, 2.0, True, NULL)
    with pytest.raises(TypeError, match="weight must be a number, got bool"):
        samplers.classifier_free_guidance(exact, True, 0, NULL)
    with pytest.raises(ValueError, match=f"label must not contain the null label {NULL}"):
        samplers.classifier_free_guidance(exact, 2.0, NULL, NULL)
    with pytest.raises(ValueError, match=f"label must not contain the null label {NULL}"):
        samplers.classifier_free_guidance(exact, 2.0, torch.tensor([0, NULL]), NULL)


def test_exact_conditional_denoiser_refuses_labels_outside_its_classes(exact):
    x = points(4)
    for bad in (-1, NULL + 1):  # -1 would otherwise index the null (unconditional) row
        with pytest.raises(ValueError, match=rf"labels must lie in 0\.\.{NULL}"):
            exact(x, pt(10), torch.full((4,), bad))
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        exact(x, pt(10), torch.zeros(3, dtype=torch.int64))


# --- class-conditional training --------------------------------------------------------------


class LabelSpy(nn.Module):
    """A linear denoiser that records the labels it is given."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 2)
        self.seen = []

    def forward(self, x, t, labels=None):
        self.seen.append(None if labels is None else labels.clone())
        return self.linear(x)


def test_losses_pass_labels_to_the_network():
    net, x0 = LabelSpy(), torch.randn(8, 2)
    labels = torch.arange(8) % 3
    per_sample_loss(net, x0, SCHEDULE, torch.tensor(5), torch.randn(8, 2), labels=labels)
    assert torch.equal(net.seen[-1], labels)
    diffusion_loss(net, x0, SCHEDULE, torch.Generator().manual_seed(0))
    assert net.seen[-1] is None
    with pytest.raises(ValueError, match=r"labels must have shape \(8,\)"):
        diffusion_loss(net, x0, SCHEDULE, torch.Generator(), labels=torch.arange(3))
    with pytest.raises(TypeError, match="labels must hold integers"):
        diffusion_loss(net, x0, SCHEDULE, torch.Generator(), labels=torch.ones(8))


def test_labels_draw_nothing_from_the_loss_generator():
    x0, net = torch.randn(8, 2), LabelSpy()
    a = diffusion_loss(net, x0, SCHEDULE, torch.Generator().manual_seed(3))
    b = diffusion_loss(
        net, x0, SCHEDULE, torch.Generator().manual_seed(3), labels=torch.ones(8).long()
    )
    assert torch.equal(a, b)


def test_label_dropout_replaces_the_stated_fraction_with_the_null_label():
    torch.manual_seed(0)
    net = LabelSpy()
    data = torch.randn(50, 2)
    labels = torch.arange(50) % 5
    objective = DiffusionLoss(SCHEDULE, label_dropout=0.25, null_label=5)
    config = TrainConfig(steps=20, batch_size=100, seed=4)
    train(net, data, objective, config, progress=False, labels=labels)
    seen = torch.cat(net.seen)
    dropped = (seen == 5).double().mean()
    # 2000 Bernoulli(0.25) draws: standard error 0.0097
    assert abs(dropped - 0.25) < 4 * 0.0097
    assert set(seen.tolist()) == {0, 1, 2, 3, 4, 5}


def test_conditional_training_is_reproducible_and_without_dropout_keeps_labels():
    def run(dropout):
        torch.manual_seed(0)
        net = LabelSpy()
        objective = DiffusionLoss(SCHEDULE, label_dropout=dropout, null_label=5)
        config = TrainConfig(steps=5, batch_size=16, seed=2)
        result = train(
            net, torch.randn(40, 2), objective, config, progress=False, labels=torch.arange(40) % 5
        )
        return result.losses, torch.cat(net.seen)

    (losses_a, seen_a), (losses_b, seen_b) = run(0.1), run(0.1)
    assert losses_a == losses_b and torch.equal(seen_a, seen_b)
    _, seen = run(0.0)
    assert (seen < 5).all()


def test_train_config_and_labels_are_checked():
    with pytest.raises(ValueError, match="null_label"):
        DiffusionLoss(SCHEDULE, label_dropout=0.1)
    with pytest.raises(ValueError, match="label_dropout"):
        DiffusionLoss(SCHEDULE, label_dropout=1.0, null_label=3)
    net, data, objective = LabelSpy(), torch.randn(10, 2), DiffusionLoss(SCHEDULE)
    with pytest.raises(ValueError, match=r"labels must have shape \(10,\)"):
        train(net, data, objective, TrainConfig(steps=1), progress=False, labels=torch.arange(3))
    with pytest.raises(TypeError, match="labels"):
        train(net, data, objective, TrainConfig(steps=1), progress=False, labels=torch.ones(10))


def test_the_exact_conditional_denoiser_checks_its_call():
    model = samplers.exact_conditional_denoiser(default_mixture_2d())
    point = linear_schedule(100).grid(4)[1]
    labels = torch.zeros(3, dtype=torch.long)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        model([[0.0, 1.0]], point, labels)
    with pytest.raises(ValueError, match=r"x must have shape \(n, d\) with n >= 1"):
        model(torch.zeros(0, 2, dtype=torch.float64), point, labels[:0])
    with pytest.raises(TypeError, match="point must be a GridPoint"):
        model(torch.zeros(3, 2, dtype=torch.float64), [0.5, 0.5], labels)
    with pytest.raises(ValueError, match=r"labels must lie in 0..3"):
        model(torch.zeros(3, 2, dtype=torch.float64), point, labels - 1)
