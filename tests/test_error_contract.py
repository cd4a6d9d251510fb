"""The error contract of the public API, on property-based examples.

For each function below, hypothesis replaces one argument of a valid call by an arbitrary
value (numbers of every size and sign, NaN and infinities, None, strings, bools, lists, tensors
of odd shapes, dtypes and values). Whatever it draws, the call must either return a finite
result of the documented shape, or raise a ``ValueError`` or ``TypeError`` whose message names
the argument that was replaced. Nothing else: no torch ``RuntimeError``, ``IndexError`` or
``ZeroDivisionError``, no NaN, no hang (every count is bounded).

Functions that document that they do not inspect the values of tensor arguments (the
conversions of :mod:`diffusion_core.parameterization`, which a sampling loop calls) may answer
a tensor argument with NaN or infinity (a non-finite tensor passed through, a zero level they
divide by); every other non-finite result fails.
"""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffusion_core import (
    analytic,
    audio,
    consistency,
    distill,
    flow,
    forward,
    grids,
    likelihood,
    losses,
    metrics,
    parameterization,
    schedules,
    stability,
)
from diffusion_core.nets import MLPDenoiser, UNet

F64 = torch.float64
LIN = schedules.linear_schedule(50)
GRID = LIN.grid(4)
MIX = analytic.default_mixture_2d()


def tone_spectrogram() -> torch.Tensor:
    """The log-mel spectrogram (dB) of a 150 Hz harmonic tone: valid audio input."""
    t = torch.arange(6400, dtype=F64) / audio.SAMPLE_RATE
    wave = 0.2 * sum(torch.sin(2 * math.pi * 150 * k * t) / k for k in range(1, 8))
    return torch.as_tensor(audio.log_mel(wave.float()))


TONE = tone_spectrogram()
TONE_CLIPS = audio.to_unit(TONE[:, : audio.FRAMES])[None, None].repeat(2, 1, 1, 1)
SOUND_JUDGE = audio.load_classifier()


def x2(n=6):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(n), dtype=F64)


# name: (function, valid keyword arguments, the result's shape (or a function of the
# arguments giving it, or None where it is not a tensor), tensor values inspected)
CALLS = {
    "linear_schedule": (schedules.linear_schedule, lambda: {"T": 20}, None, True),
    "karras_sigmas": (
        schedules.karras_sigmas,
        lambda: {"n": 5, "rho": 7.0},
        lambda kwargs: (kwargs["n"],),
        True,
    ),
    "VESDE": (schedules.VESDE, lambda: {"sigma_min": 0.01, "sigma_max": 50.0}, None, True),
    "grid": (LIN.grid, lambda: {"steps": 5, "spacing": "karras", "rho": 7.0}, None, True),
    "timestep_spacing": (
        schedules.timestep_spacing,
        lambda: {"T": 50, "k": 5},
        lambda kwargs: (kwargs["k"],),
        True,
    ),
    "posterior_coefficients": (
        forward.posterior_coefficients,
        lambda: {"scale_t": 0.5, "std_t": 0.8, "scale_s": 0.7, "std_s": 0.6},
        None,
        True,
    ),
    "q_sample": (
        forward.q_sample,
        lambda: {"schedule": LIN, "x0": x2(), "t": torch.full((6,), 7), "noise": x2()},
        (6, 2),
        True,
    ),
    "seed_article_variance": (
        forward.seed_article_variance,
        lambda: {"steps": 5, "data_variance": 1.0},
        None,  # the shape of steps
        True,
    ),
    "ring_mixture": (analytic.ring_mixture, lambda: {"n_components": 4, "radius": 2.0}, None, True),
    "x0_pred": (MIX.x0_pred, lambda: {"x": x2(), "scale": 0.5, "std": 0.8}, (6, 2), True),
    "x0_from_eps": (
        parameterization.x0_from_eps,
        lambda: {"x": x2(), "eps": x2(), "scale": 0.5, "std": 0.8},
        (6, 2),
        False,
    ),
    "x0_from_v": (
        parameterization.x0_from_v,
        lambda: {"x": x2(), "v": x2(), "scale": 0.5, "std": 0.8},
        (6, 2),
        False,
    ),
    "sliced_wasserstein": (
        metrics.sliced_wasserstein,
        lambda: {"x": x2(), "y": x2(7), "n_projections": 8},
        (),
        True,
    ),
    "mmd_rbf": (metrics.mmd_rbf, lambda: {"x": x2(), "y": x2(7), "bandwidth": 1.0}, (), True),
    "rms_distance": (metrics.rms_distance, lambda: {"x": x2(), "y": x2()}, (), True),
    "gaussian_w2": (
        metrics.gaussian_w2,
        lambda: {
            "mean1": torch.zeros(2),
            "cov1": torch.eye(2),
            "mean2": torch.ones(2),
            "cov2": torch.eye(2),
        },
        (),
        True,
    ),
    "gaussian_sampler_w2": (
        stability.gaussian_sampler_w2,
        lambda: {"name": "heun", "grid": GRID, "data_mean": 0.3, "data_std": 0.8},
        (),
        True,
    ),
    "pf_ode_gain": (
        stability.pf_ode_gain,
        lambda: {"scale": GRID.scale[:-1], "std": GRID.std[:-1], "data_std": 0.5},
        (4,),
        True,
    ),
    "observed_order": (
        stability.observed_order,
        lambda: {"steps": [10, 20, 40], "errors": [1e-2, 2.5e-3, 6.3e-4]},
        None,
        True,
    ),
    "MLPDenoiser": (MLPDenoiser, lambda: {"hidden": 8, "depth": 1, "time_dim": 4}, None, True),
    "UNet": (UNet, lambda: {"channels": (4, 8), "attention": False, "groups": 2}, None, True),
    "ot_couple": (flow.ot_couple, lambda: {"x0": x2(), "noise": 3 * x2()}, (6, 2), True),
    "straightness": (
        flow.straightness,
        lambda: {"path": torch.stack([x2(), 2 * x2(), x2() ** 2]), "t": [1.0, 0.5, 0.0]},
        (6,),
        True,
    ),
    "flow_matching_target": (
        losses.flow_matching_target,
        lambda: {"x0": x2(), "noise": 2 * x2(), "d_scale": -1.0, "d_std": 1.0},
        (6, 2),
        True,
    ),
    "rademacher": (
        likelihood.rademacher,
        lambda: {"shape": (3, 2), "generator": torch.Generator().manual_seed(0), "dtype": F64},
        lambda kwargs: tuple(kwargs["shape"]),
        True,
    ),
    "dequantize": (
        likelihood.dequantize,
        lambda: {"x": x2(), "bin_width": 0.1, "generator": torch.Generator().manual_seed(0)},
        lambda kwargs: tuple(kwargs["x"].shape),
        True,
    ),
    "boundary_coefficients": (
        consistency.boundary_coefficients,
        lambda: {"sigma": 1.0, "sigma_min": 0.01, "sigma_data": 0.5},
        None,
        True,
    ),
    "levels_grid": (
        consistency.levels_grid,
        lambda: {"candidates": LIN.grid(6)[:-1], "indices": [0, 3]},
        None,
        True,
    ),
    "halve": (distill.halve, lambda: {"grid": LIN.grid(4)}, None, True),
    "power_grid": (
        grids.power_grid,
        lambda: {"process": LIN, "steps": 4, "power": 2.0, "t_end": 3.0},
        None,
        True,
    ),
    "window_grid": (
        grids.window_grid,
        lambda: {
            "process": LIN,
            "steps": 6,
            "height": 3.0,
            "sigma_center": 2.0,
            "width": 1.0,
            "sigma_end": 0.1,
        },
        None,
        True,
    ),
    "grid_from_sigmas": (
        grids.grid_from_sigmas,
        lambda: {"process": LIN, "sigmas": torch.tensor([3.0, 1.0, 0.3], dtype=F64)},
        None,
        True,
    ),
    "log_mel": (audio.log_mel, lambda: {"waveform": torch.sin(torch.arange(600.0))}, None, True),
    "mel_pitch": (
        audio.mel_pitch,
        lambda: {"spectrogram": TONE.numpy(), "fmin": 60.0, "fmax": 320.0, "voiced_db": 30.0},
        None,
        True,
    ),
    "clip_pitches": (audio.clip_pitches, lambda: {"clips": TONE_CLIPS.clone()}, (2,), True),
    "to_unit": (  # elementwise: the shape of its input
        audio.to_unit,
        lambda: {"spectrogram": TONE.clone()},
        lambda kwargs: tuple(kwargs["spectrogram"].shape),
        False,
    ),
    "from_unit": (
        audio.from_unit,
        lambda: {"x": TONE_CLIPS[0, 0].clone()},
        lambda kwargs: tuple(kwargs["x"].shape),
        False,
    ),
    "condition_label": (audio.condition_label, lambda: {"word": 3, "pitch_level": 1}, (), True),
    "word_accuracy": (
        audio.word_accuracy,
        lambda: {
            "classifier": SOUND_JUDGE,
            "clips": TONE_CLIPS.clone(),
            "words": torch.tensor([1, 2]),
        },
        None,
        True,
    ),
    "bits_per_dim": (
        likelihood.bits_per_dim,
        lambda: {"log_likelihood": torch.tensor([-3.0, -2.0]), "dim": 2, "bin_width": 1 / 128},
        None,
        True,
    ),
}

numbers = st.one_of(
    st.integers(min_value=-(10**15), max_value=10**15),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, -1, 0.5, 1e-300, 1e300]),
)
tensors = st.builds(
    lambda shape, dtype, fill: torch.full(shape, fill, dtype=F64).to(dtype),
    st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple),
    st.sampled_from([torch.float64, torch.float32, torch.int64, torch.bool]),
    st.sampled_from([0.0, 1.0, -1.0, 1e200, math.nan, math.inf]),
)
values = st.one_of(
    numbers,
    tensors,
    st.none(),
    st.booleans(),
    st.text(max_size=5),
    st.lists(numbers, max_size=4),
    st.tuples(st.integers(-3, 64), st.integers(-3, 64)),
    st.just((10**7, 10**7)),
)


def finite(result) -> bool:
    if isinstance(result, torch.Tensor):
        return not result.is_floating_point() or bool(torch.isfinite(result).all())
    if isinstance(result, float):
        return math.isfinite(result)
    if isinstance(result, tuple | list):
        return all(finite(item) for item in result)
    return True


@pytest.mark.parametrize("name", list(CALLS))
@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(data=st.data())
def test_one_bad_argument_is_refused_by_name_or_answered_finitely(name, data):
    function, valid, shape, inspects_tensors = CALLS[name]
    kwargs = valid()
    argument = data.draw(st.sampled_from(sorted(kwargs)), label="argument")
    value = data.draw(values, label="value")
    kwargs[argument] = value
    try:
        result = function(**kwargs)
    except (ValueError, TypeError) as error:
        assert argument in str(error), f"{type(error).__name__} does not name {argument}: {error}"
        return
    # A function that does not inspect tensor values (documented) may answer a tensor with
    # NaN or infinity: a non-finite tensor passed through, or a zero it divides by.
    assert finite(result) or (isinstance(value, torch.Tensor) and not inspects_tensors), result
    if callable(shape):
        shape = shape(kwargs)
    if shape is not None and isinstance(result, torch.Tensor):
        assert tuple(result.shape) == shape
