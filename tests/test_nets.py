"""Tests for :mod:`diffusion_core.nets`: the time embedding and the MLP denoiser."""

import math

import pytest
import torch

from diffusion_core.nets import MLPDenoiser, SinusoidalEmbedding, count_parameters

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def tiny_net(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return MLPDenoiser(data_dim=3, hidden=16, depth=2, time_dim=8).to(dtype)


def expected_parameter_count(data_dim, hidden, depth, time_dim):
    """The formula of the MLPDenoiser docstring."""
    return (
        (data_dim + 1) * hidden
        + (time_dim + 1) * hidden
        + (hidden + 1) * hidden
        + depth * 2 * (hidden + 1) * hidden
        + (hidden + 1) * data_dim
    )


# --- SinusoidalEmbedding ----------------------------------------------------------------------


def test_embedding_frequencies_are_geometric():
    embedding = SinusoidalEmbedding(8, max_period=10000)
    expected = torch.tensor([1.0, 10.0**-1, 10.0**-2, 10.0**-3], dtype=torch.float64)
    torch.testing.assert_close(embedding.frequencies(), expected, rtol=1e-14, atol=0)


def test_embedding_values_at_known_times():
    # dim 4: frequencies 1 and 10000^(-1/2) = 0.01; layout [sin, sin, cos, cos].
    embedding = SinusoidalEmbedding(4)
    t = torch.tensor([0.0, math.pi / 2, 100.0], dtype=torch.float64)
    expected = torch.tensor(
        [
            [0.0, 0.0, 1.0, 1.0],
            [1.0, math.sin(math.pi / 200), 0.0, math.cos(math.pi / 200)],
            [math.sin(100.0), math.sin(1.0), math.cos(100.0), math.cos(1.0)],
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(embedding(t), expected, rtol=0, atol=1e-12)


def test_embedding_dtype_follows_t():
    embedding = SinusoidalEmbedding(6)
    assert embedding(torch.arange(5)).dtype == torch.get_default_dtype()
    assert embedding(torch.arange(5, dtype=torch.float64)).dtype == torch.float64
    assert embedding(torch.arange(5.0)).shape == (5, 6)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"dim": 5}, ValueError, "dim must be even"),
        ({"dim": 0}, ValueError, "dim must be in 2"),
        ({"dim": 4.0}, TypeError, "dim must be an int"),
        ({"dim": 4, "max_period": 1.0}, ValueError, "max_period"),
        ({"dim": 4, "max_period": "big"}, TypeError, "max_period must be a number"),
    ],
)
def test_embedding_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        SinusoidalEmbedding(**kwargs)


def test_embedding_rejects_bad_times():
    embedding = SinusoidalEmbedding(4)
    with pytest.raises(ValueError, match="shape"):
        embedding(torch.zeros(2, 3))
    with pytest.raises(TypeError, match="t must be"):
        embedding([1.0, 2.0])


# --- MLPDenoiser ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_output_has_shape_and_dtype_of_x(dtype):
    net = tiny_net()
    x = torch.randn(5, 3, dtype=dtype)
    out = net(x, torch.arange(5))
    assert out.shape == (5, 3)
    assert out.dtype == dtype


def test_float64_network_keeps_float64():
    out = tiny_net(dtype=torch.float64)(torch.randn(4, 3, dtype=torch.float64), torch.arange(4))
    assert out.dtype == torch.float64


def test_int_and_float_times_agree_and_scalar_t_broadcasts():
    net = tiny_net()
    x = torch.randn(6, 3)
    t = torch.full((6,), 37)
    torch.testing.assert_close(net(x, t), net(x, t.float()), rtol=0, atol=0)
    torch.testing.assert_close(net(x, torch.tensor(37)), net(x, t), rtol=0, atol=0)


def test_different_times_give_different_outputs():
    net = tiny_net()
    x = torch.randn(8, 3)
    outputs = [net(x, torch.full((8,), step)) for step in (1, 10, 500, 1000)]
    for i in range(len(outputs)):
        for j in range(i + 1, len(outputs)):
            assert (outputs[i] - outputs[j]).abs().max() > 1e-4


def test_samples_are_processed_independently():
    net = tiny_net()
    x, t = torch.randn(6, 3), torch.arange(6)
    torch.testing.assert_close(net(x[2:3], t[2:3]), net(x, t)[2:3], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("sizes", [(3, 8, 2, 4), (2, 128, 3, 64), (1, 5, 0, 2), (4, 16, 1, 16)])
def test_parameter_count_formula(sizes):
    net = MLPDenoiser(*sizes)
    assert count_parameters(net) == expected_parameter_count(*sizes)


def test_default_parameter_count():
    assert count_parameters(MLPDenoiser()) == 124_546 == expected_parameter_count(2, 128, 3, 64)


def test_initialisation_is_determined_by_the_global_seed():
    first, second, other = tiny_net(seed=3), tiny_net(seed=3), tiny_net(seed=4)
    for a, b, c in zip(first.parameters(), second.parameters(), other.parameters(), strict=True):
        assert torch.equal(a, b)
        assert not torch.equal(a, c)


def test_gradients_reach_every_parameter():
    net = tiny_net()
    net(torch.randn(4, 3), torch.arange(1, 5)).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"data_dim": 0}, ValueError, "data_dim must be in 1"),
        ({"hidden": 0}, ValueError, "hidden must be in 1"),
        ({"hidden": 10**6}, ValueError, "hidden must be in 1..4096"),
        ({"depth": -1}, ValueError, "depth must be in 0"),
        ({"depth": 10**4}, ValueError, "depth must be in 0..256"),
        ({"time_dim": 7}, ValueError, "time_dim must be even"),
        ({"time_dim": 0}, ValueError, "time_dim must be in 2"),
        ({"data_dim": 2.0}, TypeError, "data_dim must be an int"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        MLPDenoiser(**kwargs)


def test_forward_rejects_bad_inputs():
    net = tiny_net()
    with pytest.raises(ValueError, match=r"x must have shape \(n, 3\)"):
        net(torch.randn(4, 2), torch.arange(4))
    with pytest.raises(TypeError, match="x must be a floating-point"):
        net(torch.ones(4, 3, dtype=torch.int64), torch.arange(4))
    with pytest.raises(ValueError, match=r"t must have shape \(4,\)"):
        net(torch.randn(4, 3), torch.arange(3))
    with pytest.raises(TypeError, match="t must be"):
        net(torch.randn(4, 3), torch.ones(4, dtype=torch.bool))
    with pytest.raises(TypeError, match="t must be"):
        net(torch.randn(4, 3), 5)


def test_count_parameters_rejects_non_modules():
    with pytest.raises(TypeError, match="module"):
        count_parameters([torch.zeros(3)])
