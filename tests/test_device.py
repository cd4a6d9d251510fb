"""Tests for :mod:`diffusion_core.device`: seeding, thread count and device choice."""

import random

import numpy as np
import pytest
import torch

from diffusion_core.device import DEFAULT_THREADS, DEVICE_ENV, get_device, seed_everything


@pytest.fixture
def restore_threads():
    """seed_everything sets torch's global thread count: put the original back afterwards."""
    threads = torch.get_num_threads()
    yield threads
    torch.set_num_threads(threads)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def draws(generator):
    return (
        torch.randn(5),
        np.random.standard_normal(5),  # noqa: NPY002 (the global state is what is seeded)
        [random.random() for _ in range(5)],
        torch.randn(5, generator=generator),
    )


def test_same_seed_gives_identical_draws(restore_threads):
    first = draws(seed_everything(1234))
    second = draws(seed_everything(1234))
    other = draws(seed_everything(1235))
    assert torch.equal(first[0], second[0]) and torch.equal(first[3], second[3])
    assert np.array_equal(first[1], second[1])
    assert first[2] == second[2]
    # A different seed changes every source (equal floats by chance: probability ~ 0).
    assert not torch.equal(first[0], other[0]) and not torch.equal(first[3], other[3])
    assert not np.array_equal(first[1], other[1])
    assert first[2] != other[2]


def test_seed_everything_seeds_each_global_source_with_the_seed(restore_threads):
    # Same seed, same draws, as seeding torch, NumPy and Python by hand: a notebook that seeds
    # once reproduces code written against any of the three.
    got = draws(seed_everything(42))
    torch.manual_seed(42)
    np.random.seed(42)  # noqa: NPY002
    random.seed(42)
    expected = draws(_gen(42))
    assert torch.equal(got[0], expected[0]) and torch.equal(got[3], expected[3])
    assert np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def test_seed_everything_returns_a_seeded_cpu_generator(restore_threads):
    generator = seed_everything(7)
    assert isinstance(generator, torch.Generator)
    assert generator.device == torch.device("cpu")
    assert generator.initial_seed() == 7
    assert torch.equal(torch.randn(3, generator=generator), torch.randn(3, generator=_gen(7)))


def test_large_seeds_are_accepted(restore_threads):
    # numpy takes seeds below 2**32 only; the helper reduces larger ones.
    generator = seed_everything(2**63 - 1)
    assert generator.initial_seed() == 2**63 - 1


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_seed_everything_sets_thread_count(restore_threads, threads):
    seed_everything(0, threads=threads)
    assert torch.get_num_threads() == threads


def test_default_thread_count(restore_threads):
    torch.set_num_threads(DEFAULT_THREADS + 1)
    seed_everything(0)
    assert torch.get_num_threads() == DEFAULT_THREADS


@pytest.mark.parametrize(
    "seed, error",
    [(-1, ValueError), (2**63, ValueError), (True, TypeError), (1.0, TypeError), ("1", TypeError)],
)
def test_bad_seeds(restore_threads, seed, error):
    with pytest.raises(error, match="^seed must"):
        seed_everything(seed)


@pytest.mark.parametrize("threads, error", [(0, ValueError), (1.5, TypeError)])
def test_bad_thread_counts(restore_threads, threads, error):
    with pytest.raises(error, match="^threads must"):
        seed_everything(0, threads=threads)


def test_default_device_is_cpu(monkeypatch):
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    assert get_device() == torch.device("cpu")


@pytest.mark.parametrize("value", ["cpu", " CPU ", "Cpu"])
def test_environment_variable_is_honoured(monkeypatch, value):
    monkeypatch.setenv(DEVICE_ENV, value)
    assert get_device() == torch.device("cpu")


def test_environment_variable_is_read_and_validated(monkeypatch):
    monkeypatch.setenv(DEVICE_ENV, "tpu")
    with pytest.raises(ValueError, match="'tpu'"):
        get_device()


def test_explicit_argument_overrides_environment(monkeypatch):
    monkeypatch.setenv(DEVICE_ENV, "tpu")  # would raise if it were read
    assert get_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        monkeypatch.setenv(DEVICE_ENV, "cuda")
        assert get_device("cpu") == torch.device("cpu")


def test_auto_picks_cuda_only_when_available(monkeypatch):
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert get_device("auto").type == expected
    monkeypatch.setenv(DEVICE_ENV, "auto")
    assert get_device().type == expected


def test_auto_without_cuda_is_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert get_device("auto") == torch.device("cpu")


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "CUDA:1"])
def test_cuda_without_cuda_is_an_error_not_a_fallback(monkeypatch, name):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ValueError, match="CUDA is not available"):
        get_device(name)
    monkeypatch.setenv(DEVICE_ENV, name)
    with pytest.raises(ValueError, match="CUDA is not available"):
        get_device()


@pytest.mark.parametrize("name", ["gpu", "", "cuda:x", "cuda0", "mps", "cpu:0:1"])
def test_garbage_device_names(name):
    with pytest.raises(ValueError, match="^device must be"):
        get_device(name)


def test_non_string_device_name():
    with pytest.raises(TypeError, match="^name must be a string"):
        get_device(0)
