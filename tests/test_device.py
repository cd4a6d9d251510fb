"""Tests for :mod:`diffusion_core.device`: seeding, thread count, device choice, the CUDA
switches (TF32, autocast, compile) as far as a CPU can check them, and per-sample noise.

The same switches on a GPU are tested in ``tests/test_cuda.py``.
"""

import random

import numpy as np
import pytest
import torch

from diffusion_core.device import (
    DEFAULT_THREADS,
    DEVICE_ENV,
    autocast_context,
    check_generator,
    get_device,
    maybe_compile,
    per_sample_generators,
    per_sample_noise,
    sample_seeds,
    seed_everything,
    standard_normal,
    tf32_context,
    use_tf32,
)


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
    with pytest.raises(ValueError, match="^device name must be"):
        get_device(name)


def test_non_string_device_name():
    with pytest.raises(TypeError, match="^name must be a string"):
        get_device(0)


# ------------------------------------------------------------------------- the CUDA switches


@pytest.fixture
def restore_tf32():
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def test_tf32_is_switched_for_cuda_devices_only(restore_tf32):
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    assert use_tf32("cpu") is False
    assert not torch.backends.cuda.matmul.allow_tf32
    # The flags are plain settings: they can be set (and read back) without a GPU.
    assert use_tf32(torch.device("cuda")) is True
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert use_tf32("cuda:0", enabled=False) is True
    assert not torch.backends.cuda.matmul.allow_tf32
    with pytest.raises(TypeError, match="enabled must be True or False"):
        use_tf32("cuda", enabled=1)
    with pytest.raises(TypeError, match="device must be"):
        use_tf32(0)


@pytest.mark.parametrize("enabled", [True, False])
def test_tf32_context_restores_the_global_flags(restore_tf32, enabled):
    for before in [(False, True), (True, False)]:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
        with tf32_context("cuda", enabled):
            assert torch.backends.cuda.matmul.allow_tf32 is enabled
            assert torch.backends.cudnn.allow_tf32 is enabled
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
        with pytest.raises(RuntimeError, match="inside"), tf32_context("cuda", enabled):
            raise RuntimeError("inside")
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
        with tf32_context("cpu", enabled):  # nothing to switch on the CPU
            assert (
                torch.backends.cuda.matmul.allow_tf32,
                torch.backends.cudnn.allow_tf32,
            ) == before
    with pytest.raises(TypeError, match="enabled must be True or False"), tf32_context("cuda", 1):
        pass


def test_training_leaves_the_tf32_flags_as_it_found_them(restore_tf32, monkeypatch):
    """train switches TF32 for its run (on a CUDA device; here the CPU computes and the switch is
    made as for CUDA, the flags being plain settings) and restores the flags afterwards, also
    when the run fails."""
    import diffusion_core.train as train_module

    seen = []

    def as_for_cuda(device, enabled):
        seen.append(enabled)
        return tf32_context("cuda", enabled)

    monkeypatch.setattr(train_module, "tf32_context", as_for_cuda)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    _tiny_run(mixed_precision=True)
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    _tiny_run(mixed_precision=False)
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    with pytest.raises(TypeError, match="mixed_precision"):
        _tiny_run(mixed_precision=1)  # fails before training: the flags are never touched
    monkeypatch.setattr(train_module, "_loop", lambda *args: 1 / 0)
    with pytest.raises(ZeroDivisionError, match="division by zero"):
        _tiny_run(mixed_precision=True)
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert seen == [True, False, True]


def test_autocast_is_a_no_op_on_the_cpu():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    for enabled in (True, False):
        with autocast_context(torch.device("cpu"), enabled):
            assert not torch.is_autocast_enabled("cpu")
            assert (a @ b).dtype == torch.float32
    with pytest.raises(ValueError, match="dtype must be"):
        autocast_context("cpu", dtype=torch.float32)
    with pytest.raises(TypeError, match="enabled must be"):
        autocast_context("cpu", enabled="yes")


def test_maybe_compile_returns_the_net_or_a_compiled_view_of_it():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.SiLU(), torch.nn.Linear(8, 3))
    assert maybe_compile(net, False) is net
    compiled = maybe_compile(net, True, backend="eager")  # "eager": no C++ build in unit tests
    assert compiled is not net
    assert [p.data_ptr() for p in compiled.parameters()] == [p.data_ptr() for p in net.parameters()]
    x = torch.randn(5, 3)
    torch.testing.assert_close(compiled(x), net(x), rtol=0, atol=0)
    with pytest.raises(TypeError, match="net must be"):
        maybe_compile(lambda x: x, True)
    with pytest.raises(TypeError, match="enabled must be"):
        maybe_compile(net, None)


# ------------------------------------------------------------------------ per-sample noise


def test_a_samples_noise_does_not_depend_on_the_batch_it_is_drawn_in():
    small = per_sample_noise((4, 3, 5), sample_seeds(11, range(4)))
    large = per_sample_noise((64, 3, 5), sample_seeds(11, range(64)))
    assert torch.equal(small, large[:4])
    # Any subset of indices, in any order, gets the same rows.
    picked = [40, 2, 63]
    assert torch.equal(per_sample_noise((3, 3, 5), sample_seeds(11, picked)), large[picked])
    assert small.dtype == torch.float64 and small.device == torch.device("cpu")


def test_per_sample_noise_is_standard_normal_and_independent_across_samples():
    noise = per_sample_noise((4000, 2), sample_seeds(5, range(4000)), dtype=torch.float32)
    assert noise.dtype == torch.float32
    assert abs(float(noise.mean())) < 0.05 and abs(float(noise.std()) - 1) < 0.05
    # Neighbouring indices get unrelated streams: no correlation between consecutive rows.
    correlation = torch.corrcoef(torch.stack([noise[:-1, 0], noise[1:, 0]]))[0, 1]
    assert abs(float(correlation)) < 0.05


def test_standard_normal_takes_one_generator_or_one_per_sample():
    one = standard_normal((3, 4), torch.Generator().manual_seed(2), torch.float32)
    assert torch.equal(one, torch.randn(3, 4, generator=torch.Generator().manual_seed(2)))
    rows = standard_normal((3, 4), per_sample_generators([5, 6, 7]))
    for row, seed in zip(rows, [5, 6, 7], strict=True):
        expected = torch.randn(
            4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
        )
        assert torch.equal(row, expected)
    assert torch.equal(per_sample_noise((3, 4), [5, 6, 7]), rows)


@pytest.mark.parametrize(
    "generator, error, message",
    [
        (0, TypeError, "generator must be a torch.Generator"),
        ([torch.Generator(), "g"], TypeError, "got str"),
        ([torch.Generator()], ValueError, r"one generator per sample \(2\), got 1"),
    ],
)
def test_bad_generators(generator, error, message):
    with pytest.raises(error, match=message):
        standard_normal((2, 3), generator)
    with pytest.raises(error, match=message):
        check_generator(generator, 2, "cpu")


def test_bad_standard_normal_and_generator_arguments():
    with pytest.raises(TypeError, match="dtype must be a floating-point"):
        standard_normal((2, 3), None, torch.int64)
    with pytest.raises(ValueError, match="at least one seed"):
        per_sample_generators([])
    with pytest.raises(ValueError, match="seeds\\[1\\] must be in 0"):
        per_sample_generators([1, -1])
    assert check_generator(None, 5, "cpu") is None


def test_sample_seeds_depend_on_the_base_seed_and_the_index_only():
    seeds = sample_seeds(3, range(100))
    assert len(set(seeds)) == 100 and all(0 <= s < 2**63 for s in seeds)
    assert sample_seeds(3, torch.arange(5)) == seeds[:5]
    assert set(sample_seeds(4, range(100))).isdisjoint(seeds)
    with pytest.raises(ValueError, match="indices\\[0\\] must be in 0"):
        sample_seeds(3, [-1])
    with pytest.raises(ValueError, match="base_seed"):
        sample_seeds(-3, [0])


@pytest.mark.parametrize(
    "shape, seeds, error, message",
    [
        ((2, 3), [1], ValueError, "one seed per sample"),
        ((), [], ValueError, "at least one axis"),
        ((0, 2), [], ValueError, "positive ints"),
        ((2,), [1, -2], ValueError, "seeds\\[1\\] must be in 0"),
    ],
)
def test_bad_per_sample_noise_arguments(shape, seeds, error, message):
    with pytest.raises(error, match=message):
        per_sample_noise(shape, seeds)


# ------------------------------------------------- the training loop's device switches


def _tiny_run(**changes):
    from diffusion_core.analytic import default_mixture_2d
    from diffusion_core.losses import DiffusionLoss
    from diffusion_core.nets import MLPDenoiser
    from diffusion_core.schedules import linear_schedule
    from diffusion_core.train import RunConfig, TrainConfig, train

    data = default_mixture_2d().sample(256, _gen(0)).float()
    torch.manual_seed(0)
    net = MLPDenoiser(hidden=16, depth=1, time_dim=8)
    config = TrainConfig(steps=8, batch_size=32, seed=1)
    objective = DiffusionLoss(linear_schedule(100))
    result = train(net, data, objective, config, run=RunConfig(**changes), progress=False)
    return result.losses, net


def test_mixed_precision_changes_nothing_on_the_cpu(restore_tf32):
    torch.backends.cuda.matmul.allow_tf32 = False
    with_flag, net_a = _tiny_run(mixed_precision=True)
    without, net_b = _tiny_run(mixed_precision=False)
    assert with_flag == without
    for a, b in zip(net_a.parameters(), net_b.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not torch.backends.cuda.matmul.allow_tf32  # train on the CPU leaves TF32 alone


def test_compile_flag_trains_through_the_compiled_net(monkeypatch):
    import diffusion_core.train as train_module

    calls = []

    def eager_compile(net, enabled):
        calls.append(enabled)
        return maybe_compile(net, enabled, backend="eager")

    monkeypatch.setattr(train_module, "maybe_compile", eager_compile)
    compiled, net_a = _tiny_run(compile=True)
    plain, net_b = _tiny_run(compile=False)
    assert calls == [True, False]
    torch.testing.assert_close(torch.tensor(compiled), torch.tensor(plain), rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", ["mixed_precision", "compile"])
def test_device_switches_of_the_config_must_be_booleans(name):
    from diffusion_core.train import RunConfig

    with pytest.raises(TypeError, match=f"{name} must be True or False"):
        RunConfig(**{name: 1})
