"""Consistency distillation: the boundary condition, the objective against a computation by
hand and at the exact flow map, a trained student against one-step DDIM, the sampler, errors."""

import math

import pytest
import torch

from diffusion_core import checkpoints, consistency, samplers
from diffusion_core.analytic import default_mixture_2d, gaussian
from diffusion_core.device import seed_everything
from diffusion_core.metrics import mean_and_standard_error
from diffusion_core.nets import MLPDenoiser
from diffusion_core.parameterization import exact_denoiser
from diffusion_core.schedules import GridPoint, linear_schedule
from diffusion_core.train import TrainConfig, train

F64 = torch.float64
MIXTURE, SCHEDULE = default_mixture_2d(), linear_schedule(1000)
TEACHER = exact_denoiser(MIXTURE)


def _grid(points):
    return SCHEDULE.grid(points, "karras")[:-1]


def test_the_boundary_condition_holds_exactly_whatever_the_network():
    """f(y, sigma_min) = y bit for bit, for an untrained network and for per-sample points."""
    torch.manual_seed(0)
    grid = _grid(8)
    model = consistency.ConsistencyFunction(MLPDenoiser(2, 32, 1), float(grid[-1].sigma), 1.3)
    assert consistency.boundary_coefficients(model.sigma_min, model.sigma_min, 1.3) == (1.0, 0.0)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(1)) * 5
    last = grid[-1]
    assert torch.equal(model(x, last), x.double() / last.scale)
    index = torch.full((64,), len(grid.t) - 1)
    point = GridPoint(grid.t[index], grid.scale[index], grid.std[index])
    assert torch.equal(model(x, point), x.double() / last.scale)
    # elsewhere the coefficients of Song et al. (2023, App. C), written out
    sigma, s_min, s_d = 3.0, 0.01, 1.3
    c_skip, c_out = consistency.boundary_coefficients(sigma, s_min, s_d)
    assert c_skip == pytest.approx(1.69 / (2.99**2 + 1.69), rel=1e-15)
    assert c_out == pytest.approx(1.3 * 2.99 / math.sqrt(1.69 + 9.0), rel=1e-15)


GAUSS_MEAN, GAUSS_VAR = torch.tensor([1.0, -0.5], dtype=F64), 0.3


def _exact_consistency_net(grid, sigma_data):
    """A 'network' whose consistency function is the exact flow map to sigma_min of Gaussian
    data N(m, v I), y -> m + (y - m) sqrt((v + sigma_min^2) / (v + sigma^2)) (closed form),
    through F = (f* - c_skip y) / c_out (F is not read at sigma_min, where c_out = 0)."""
    sigmas = grid.std / grid.scale
    s_min = float(sigmas[-1])

    def forward(x, t):
        k = (t[:, None] == grid.t[None]).double().argmax(1)
        sigma, scale = sigmas[k][:, None], grid.scale[k][:, None]
        y = x.double() / scale
        shrink = ((GAUSS_VAR + s_min**2) / (GAUSS_VAR + sigma**2)).sqrt()
        end = GAUSS_MEAN + (y - GAUSS_MEAN) * shrink
        c_skip, c_out = consistency.boundary_coefficients(sigma, s_min, sigma_data)
        return torch.where(c_out > 0, (end - c_skip * y) / c_out.clamp_min(1e-300), 0.0)

    module = torch.nn.Module()  # the target network is a copy of a module: give it one
    module.forward = forward
    return module


def test_the_exact_flow_map_leaves_only_the_teachers_step_error():
    """Gaussian data, its exact denoiser as teacher and its exact flow map as student and
    target: the loss is the squared error of the teacher's Heun step carried to sigma_min,
    so it falls like h^6 (local error h^3): doubling the levels divides it by about 64 (we
    require more than 16); a map with an error of its own would leave a floor instead."""
    data = gaussian(GAUSS_MEAN, GAUSS_VAR * torch.eye(2, dtype=F64))
    teacher = exact_denoiser(data)
    x0 = data.sample(2000, torch.Generator().manual_seed(2)).float()
    losses = {}
    for points in (10, 20):
        grid = _grid(points)
        objective = consistency.ConsistencyDistillationLoss(teacher, grid, sigma_data=0.5)
        net = _exact_consistency_net(grid, 0.5)
        draw = torch.Generator().manual_seed(3)
        losses[points] = float(objective(net, x0, None, draw).mean())
    assert losses[10] / losses[20] > 16, losses


def test_the_objective_is_the_loss_written_out():
    """One minibatch: the index and the noise drawn in that order, one Heun step by hand,
    the squared distance per coordinate between the student and its first target (a copy)."""
    torch.manual_seed(4)
    grid = _grid(12)
    net = MLPDenoiser(2, 32, 1)
    objective = consistency.ConsistencyDistillationLoss(TEACHER, grid, sigma_data=2.0)
    x0 = MIXTURE.sample(128, torch.Generator().manual_seed(5)).float()
    with torch.no_grad():
        loss = objective(net, x0, None, torch.Generator().manual_seed(6))
    draw = torch.Generator().manual_seed(6)
    n = torch.randint(0, 11, (128,), generator=draw)
    eps = torch.randn(128, 2, generator=draw, dtype=F64)
    sigma = grid.std / grid.scale

    def denoise(y, k):
        return MIXTURE.x0_pred(y * grid.scale[k][:, None], grid.scale[k], grid.std[k])

    def f(y, k):  # the network reads x = scale y in float32, as in training
        s = sigma[k][:, None]
        c_skip = 4.0 / ((s - sigma[-1]) ** 2 + 4.0)
        c_out = 2.0 * (s - sigma[-1]) / (4.0 + s**2).sqrt()
        x = (y * grid.scale[k][:, None]).float()
        return c_skip * x.double() / grid.scale[k][:, None] + c_out * net(x, grid.t[k]).double()

    s, s_next = sigma[n][:, None], sigma[n + 1][:, None]
    y = x0.double() + s * eps
    slope = (y - denoise(y, n)) / s
    euler = y + (s_next - s) * slope
    y_hat = y + (s_next - s) * (slope + (euler - denoise(euler, n + 1)) / s_next) / 2
    with torch.no_grad():
        by_hand = (f(y, n) - f(y_hat, n + 1)).square().mean(1)
    assert torch.allclose(loss.double(), by_hand, rtol=1e-5, atol=1e-10)


def test_the_target_network_is_the_moving_average_of_the_student():
    torch.manual_seed(7)
    net = MLPDenoiser(2, 16, 1)
    objective = consistency.ConsistencyDistillationLoss(TEACHER, _grid(6), target_decay=0.9)
    first = [p.clone() for p in objective.target_network(net).parameters()]
    assert all(torch.equal(a, b) for a, b in zip(first, net.parameters(), strict=True))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    second = list(objective.target_network(net).parameters())
    for old, new, student in zip(first, second, net.parameters(), strict=True):
        assert torch.allclose(new, 0.9 * old + 0.1 * student, atol=1e-6)
        assert not new.requires_grad


def test_a_trained_student_beats_one_step_ddim_by_far():
    """A small MLP distilled for 600 steps: its one-step samples lie closer to the exact ends
    of the flow than one DDIM step (the data mean) by more than 4 standard errors of the
    paired difference of squared distances, and within the spread of one component."""
    seed_everything(0)
    grid = _grid(24)
    data = MIXTURE.sample(20_000, torch.Generator().manual_seed(8)).float()
    net = MLPDenoiser(2, hidden=64, depth=2)
    objective = consistency.ConsistencyDistillationLoss(TEACHER, grid, sigma_data=2.0)
    settings = TrainConfig(steps=600, batch_size=256, lr=2e-3, lr_schedule="cosine", ema_decay=None)
    train(net, data, objective, settings, progress=False, device="cpu")
    one = SCHEDULE.grid(1)
    x_T = samplers.prior_sample(one, (2000, 2), torch.Generator().manual_seed(9))
    exact = samplers.flow_endpoint(TEACHER, x_T, SCHEDULE, SCHEDULE.T, 200)
    model = objective.function(net.eval())
    student = consistency.consistency_sample(model, x_T.float(), one)
    ddim = samplers.ddim(TEACHER, x_T, one)
    gain = (ddim - exact).square().sum(1) - (student - exact).square().sum(1)
    mean, se = mean_and_standard_error(gain)
    assert mean > 4 * se, (mean, se)
    assert float((student - exact).square().sum(1).mean().sqrt()) < 0.5


def test_the_sampler_renoises_with_the_generator_it_is_given():
    torch.manual_seed(10)
    grid = _grid(10)
    model = consistency.ConsistencyFunction(MLPDenoiser(2, 16, 1), float(grid[-1].sigma))
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(11))
    two = consistency.levels_grid(grid, [0, 5])
    assert samplers.evaluations(consistency_sampler, two) == 2
    a, b, c = (
        consistency.consistency_sample(model, x, two, torch.Generator().manual_seed(s))
        for s in (1, 1, 2)
    )
    assert torch.equal(a, b) and not torch.allclose(a, c)
    one = consistency.levels_grid(grid, [0])
    assert torch.equal(consistency.consistency_sample(model, x, one), model(x, grid[0]))


def consistency_sampler(model, x, grid, generator=None, callback=None):
    """consistency_sample in the samplers' signature, for counting evaluations."""
    wrapped = consistency.ConsistencyFunction(lambda y, t: model(y, None), 1e-3)
    return consistency.consistency_sample(wrapped, x, grid, generator)


def test_bad_arguments_are_refused_by_name():
    grid = _grid(6)
    with pytest.raises(TypeError, match="teacher must be callable"):
        consistency.ConsistencyDistillationLoss(None, grid)
    with pytest.raises(ValueError, match="grid must hold noisy levels only"):
        consistency.ConsistencyDistillationLoss(TEACHER, SCHEDULE.grid(6))
    with pytest.raises(ValueError, match="target_decay must be"):
        consistency.ConsistencyDistillationLoss(TEACHER, grid, target_decay=1.0)
    with pytest.raises(ValueError, match="distance must be one of"):
        consistency.ConsistencyDistillationLoss(TEACHER, grid, distance="l1")
    with pytest.raises(ValueError, match="sigma_min must be"):
        consistency.ConsistencyFunction(MLPDenoiser(), 0.0)
    with pytest.raises(ValueError, match="sigma_data must be"):
        consistency.boundary_coefficients(1.0, 0.01, -1.0)
    model = consistency.ConsistencyFunction(MLPDenoiser(), 0.5)
    with pytest.raises(ValueError, match="point must have sigma >= sigma_min"):
        model(torch.zeros(3, 2), grid[-1])
    with pytest.raises(TypeError, match="model must be a ConsistencyFunction"):
        consistency.consistency_sample(TEACHER, torch.zeros(3, 2), SCHEDULE.grid(2))
    model = consistency.ConsistencyFunction(MLPDenoiser(), float(grid[-1].sigma))
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        consistency.consistency_sample(
            model, torch.zeros(3, 2), consistency.levels_grid(grid, [0, 2])
        )
    with pytest.raises(ValueError, match="then the clean end"):
        consistency.consistency_sample(model, torch.zeros(3, 2), grid)
    with pytest.raises(ValueError, match="indices must be distinct"):
        consistency.levels_grid(grid, [0, 0])
    with pytest.raises(ValueError, match="indices must be a non-empty list"):
        consistency.levels_grid(grid, [0, 9])


def test_the_packaged_model_samples_the_mixture_in_one_step():
    """The shipped float16 weights: one step lands near the exact end of each start's flow."""
    model, record = consistency.load_consistency_model(checkpoints.packaged("fewstep_consistency"))
    assert record["sigma_min"] == model.sigma_min and record["kind"] == "mlp"
    assert record["float16_rms_change"] < 1e-2
    one = SCHEDULE.grid(1)
    x_T = samplers.prior_sample(one, (1000, 2), torch.Generator().manual_seed(12))
    exact = samplers.flow_endpoint(TEACHER, x_T, SCHEDULE, SCHEDULE.T, 200)
    out = consistency.consistency_sample(model, x_T.float(), one)
    # the progressive one-step student of the same size lands 0.19 away (Chapter 8)
    assert float((out - exact).square().sum(1).mean().sqrt()) < 0.15
    with pytest.raises(ValueError, match="key must be one of"):
        consistency.load_consistency_model(checkpoints.packaged("fewstep_consistency"), "x")


def test_the_consistency_script_is_deterministic(load_script):
    """scripts/train_students.py, the mixture's consistency model shortened to 5 steps and a
    small pilot, twice: the same float16 weights and levels bit for bit."""
    script = load_script("train_students")
    runs = [
        script.train_consistency_mixture(steps=5, pilot=200, log=lambda _: None)["models"][
            "mixture"
        ]
        for _ in range(2)
    ]
    assert runs[0]["levels"] == runs[1]["levels"]
    assert sorted(runs[0]["levels"]) == ["2", "4"]
    for name, value in runs[0]["weights"].items():
        assert value.dtype == torch.float16
        assert torch.equal(value, runs[1]["weights"][name]), name
