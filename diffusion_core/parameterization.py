"""What a network predicts: conversions between eps-, x0-, v- and score-prediction.

With the library's convention x_t = scale * x0 + std * eps, a network may be trained to predict
the noise eps (Ho et al. 2020), the clean data x0, the velocity v = scale * eps - std * x0
(Salimans & Ho 2022, Sec. 4 and App. D) or the score grad log p_t(x_t) = -E[eps | x_t] / std
(Song et al. 2021; Tweedie's formula). Any one of them, with x_t, determines the others:

    x0    = (x - std * eps) / scale            eps = (x - scale * x0) / std
    x0    = (scale * x - std * v) / (scale^2 + std^2)
    eps   = (std * x + scale * v) / (scale^2 + std^2)
    score = -eps / std                         eps = -std * score

For a variance-preserving process scale^2 + std^2 = 1 and the v formulas are Salimans & Ho's
x0 = scale x - std v, eps = std x + scale v; the general form keeps them exact for any process.

Where a conversion divides by zero the answer is undefined: recovering x0 from eps at scale = 0
(zero terminal SNR, where x_t holds no trace of the data: the lesson of Lin et al. 2024) and
recovering eps or the score at std = 0 (clean data, where there is no noise). A ``scale`` or
``std`` given as a Python number (what a grid point holds) or a list is checked for free: it
must be finite and non-negative, and non-zero where it divides, else ``ValueError``. Levels
given as tensors are checked for type and shape only, because inspecting their values would
need a host read on every call; there a division by zero gives inf or NaN.

The samplers of :mod:`diffusion_core.samplers` see every model as a denoiser x0_hat =
D(x, point) at a grid point: :func:`as_denoiser` wraps a network that predicts eps, x0 or v, and
:func:`exact_denoiser` gives the Bayes-optimal denoiser of a Gaussian mixture, which isolates a
sampler's own error.

The conversions take tensors and ``scale``/``std`` as numbers, 0-d tensors or (n,) tensors (one
value per sample, broadcast over the other axes) and return float64. They check types and
shapes only (no host synchronisation), so they are cheap enough to call inside a sampling loop.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffusion_core._validation import MAX_LEVEL, as_tensor, check_batch, check_number, per_sample
from diffusion_core.analytic import GaussianMixture

__all__ = [
    "PREDICTIONS",
    "Denoiser",
    "as_denoiser",
    "eps_from_score",
    "eps_from_v",
    "eps_from_velocity",
    "eps_from_x0",
    "exact_denoiser",
    "score_from_eps",
    "v_from_eps_x0",
    "velocity_from_eps",
    "velocity_from_x0",
    "x0_from_eps",
    "x0_from_v",
    "x0_from_velocity",
]

PREDICTIONS = ("eps", "x0", "v")


# ------------------------------------------------------------------------------ checks


def _tensor(name: str, x) -> torch.Tensor:
    """A floating-point tensor with at least one axis, as float64 (values are not inspected)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.ndim < 1:
        raise ValueError(f"{name} must have a batch axis, shape (n, ...), got shape ()")
    return x.to(torch.float64)


def _pair(name_a: str, a, name_b: str, b) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _tensor(name_a, a), _tensor(name_b, b)
    if a.shape != b.shape:
        raise ValueError(
            f"{name_b} must have the shape of {name_a}, {tuple(a.shape)}, got {tuple(b.shape)}"
        )
    return a, b


def _copy_check(name_a: str, a, name_b: str, b) -> None:
    """The checks of :func:`_pair`, without converting either tensor."""
    for name, value in ((name_a, a), (name_b, b)):
        if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.ndim < 1:
            _tensor(name, value)  # raises the message that fits
    if a.shape != b.shape:
        raise ValueError(
            f"{name_b} must have the shape of {name_a}, {tuple(a.shape)}, got {tuple(b.shape)}"
        )


def _level(name: str, value, like: torch.Tensor, divides: bool = False) -> torch.Tensor | float:
    """``scale`` or ``std``: a number, a 0-d tensor or one value per sample, shaped to broadcast.
    A Python number (what a grid point holds) is checked (finite, >= 0, > 0 where the conversion
    ``divides`` by it) and used as a float, with no tensor made."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return check_number(name, value, 0.0, MAX_LEVEL, low_open=divides)
    on_host = not isinstance(value, torch.Tensor)  # a list: its values are free to check
    value = as_tensor(name, value)
    if not value.is_floating_point():
        value = value.to(torch.float64)
    if on_host:
        for number in value.reshape(-1).tolist():
            check_number(name, number, 0.0, MAX_LEVEL, low_open=divides)
    check_batch(name, value, like.shape[0], "the batch size")
    return per_sample(value.to(device=like.device, dtype=torch.float64), like)


def _levels(scale, std, like: torch.Tensor):
    """``scale`` and ``std`` of a v conversion, which divides by scale^2 + std^2."""
    scale, std = _level("scale", scale, like), _level("std", std, like)
    if isinstance(scale, float) and isinstance(std, float) and scale == std == 0:
        raise ValueError(
            "scale and std must not both be 0 (the conversion divides by their squares)"
        )
    return scale, std


# ------------------------------------------------------------------------- conversions


def x0_from_eps(x, eps, scale, std) -> torch.Tensor:
    """x0 = (x - std * eps) / scale, inverting x = scale x0 + std eps (Ho et al. 2020, Eq. 15).

    Divides by ``scale``: undefined at scale = 0 (zero terminal SNR), where eps carries no
    information about x0.
    """
    x, eps = _pair("x", x, "eps", eps)
    return (x - _level("std", std, x) * eps) / _level("scale", scale, x, divides=True)


def eps_from_x0(x, x0, scale, std) -> torch.Tensor:
    """eps = (x - scale * x0) / std. Divides by ``std``: undefined at std = 0 (clean data)."""
    x, x0 = _pair("x", x, "x0", x0)
    return (x - _level("scale", scale, x) * x0) / _level("std", std, x, divides=True)


def v_from_eps_x0(eps, x0, scale, std) -> torch.Tensor:
    """v = scale * eps - std * x0 (Salimans & Ho 2022, Sec. 4), the velocity d x_t / d phi of
    the variance-preserving path x_t = cos(phi) x0 + sin(phi) eps."""
    eps, x0 = _pair("eps", eps, "x0", x0)
    return _level("scale", scale, eps) * eps - _level("std", std, eps) * x0


def x0_from_v(x, v, scale, std) -> torch.Tensor:
    """x0 = (scale * x - std * v) / (scale^2 + std^2); = scale x - std v for a VP process.

    Finite whenever scale and std are not both zero: v-prediction works at zero terminal SNR.
    """
    x, v = _pair("x", x, "v", v)
    scale, std = _levels(scale, std, x)
    return (scale * x - std * v) / (scale**2 + std**2)


def eps_from_v(x, v, scale, std) -> torch.Tensor:
    """eps = (std * x + scale * v) / (scale^2 + std^2); = std x + scale v for a VP process."""
    x, v = _pair("x", x, "v", v)
    scale, std = _levels(scale, std, x)
    return (std * x + scale * v) / (scale**2 + std**2)


def score_from_eps(eps, std) -> torch.Tensor:
    """score = grad log p_t(x) = -E[eps | x_t] / std (Tweedie; Song et al. 2021, Eq. 4 ff.).

    Divides by ``std``: undefined at std = 0.
    """
    eps = _tensor("eps", eps)
    return -eps / _level("std", std, eps, divides=True)


def eps_from_score(score, std) -> torch.Tensor:
    """eps = -std * score, the inverse of :func:`score_from_eps`."""
    score = _tensor("score", score)
    return -_level("std", std, score) * score


# ---------------------------------------------------------------------------- denoisers


def as_denoiser(net: Callable, prediction: str) -> Denoiser:
    """Turn ``net(x, t)``, which predicts eps, x0 or v at time t, into the denoiser
    ``model(x, point) -> x0_hat`` that every sampler takes (a :class:`Denoiser`).

    ``point`` is the :class:`~diffusion_core.schedules.GridPoint` the sampler evaluates at: the
    network sees ``point.t`` (its own time, whatever the process), and the conversion above uses
    the grid's ``point.scale`` and ``point.std``, Python floats, so no process is passed twice
    (a mismatch between two cannot be written) and nothing is recomputed or read from the device
    per call. ``prediction`` is one of ``"eps"``, ``"x0"``, ``"v"``; the result is float64.
    Conditioning passes through: ``model(x, point, *cond)`` calls ``net(x, point.t, *cond)``
    (class labels, or a prompt's context), so a conditional network becomes a conditional
    denoiser for :func:`~diffusion_core.samplers.classifier_free_guidance`.

    An eps-predicting network cannot give x0 at zero SNR (scale = 0): x = eps there, and
    x0 = (x - std eps) / scale is 0 / 0. The model then raises ``ValueError`` at such a point
    instead of returning NaN (a comparison of Python floats, free).
    """
    return Denoiser(net, prediction)


class Denoiser:
    """The denoiser of a network that predicts eps, x0 or v (see :func:`as_denoiser`).

    Each conversion is affine in the network's output at fixed (x, point),

        x0_hat = a x + b out:   eps: (a, b) = (1 / scale, -std / scale),
                                v:   (a, b) = (scale, -std) / (scale^2 + std^2),
                                x0:  (a, b) = (0, 1),

    and :meth:`affine` returns (out, a, b). The samplers' loop uses it to fold the conversion
    into a step's own coefficients (x' = c_x x + c_d x0_hat becomes (c_x + c_d a) x + c_d b out),
    the arithmetic a scheduler that steps on eps directly does, with no tensor of x0_hat made
    unless it is needed; calling the denoiser gives x0_hat itself.
    """

    def __init__(self, net: Callable, prediction: str):
        if not callable(net):
            raise TypeError(f"net must be callable, got {type(net).__name__}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        self.net, self.prediction = net, prediction

    def __call__(self, x: torch.Tensor, point, *cond) -> torch.Tensor:
        out = self.net(x, point.t, *cond)
        if self.prediction == "x0":
            return _pair("x", x, "net(x, t)", out)[1]
        if self.prediction == "v":
            return x0_from_v(x, out, point.scale, point.std)
        self._check_snr(point)
        return x0_from_eps(x, out, point.scale, point.std)

    def affine(self, x: torch.Tensor, point, *cond) -> tuple[torch.Tensor, float, float]:
        """(out, a, b) with x0_hat = a x + b out, out = ``net(x, point.t, *cond)`` as it is."""
        out = self.net(x, point.t, *cond)
        if type(out) is not torch.Tensor or out.shape != x.shape or not out.is_floating_point():
            _copy_check("x", x, "net(x, t)", out)  # raises the message that fits
        scale, std = point.scale, point.std
        if self.prediction == "x0":
            return out, 0.0, 1.0
        if self.prediction == "v":
            norm = scale**2 + std**2
            return out, scale / norm, -std / norm
        self._check_snr(point)
        return out, 1.0 / scale, -std / scale

    @staticmethod
    def _check_snr(point) -> None:
        scale = point.scale  # a float, or one value per sample (a training objective's points)
        if bool((scale == 0).any()) if isinstance(scale, torch.Tensor) else scale == 0:
            raise ValueError(
                "prediction='eps' cannot recover x0 at zero SNR (scale = 0 at this t): x_t holds "
                "no information about x0 there. Use a v- or x0-predicting model, or start the "
                "grid at a time with scale > 0."
            )


def exact_denoiser(mixture: GaussianMixture) -> Callable:
    """The Bayes-optimal denoiser model(x, point) = E[x0 | x_t = x] of Gaussian-mixture data.

    It evaluates :meth:`GaussianMixture.x0_pred` at the grid point's (scale, std): exact at every
    noise level of every process, including zero SNR (where it returns the data mean), so that a
    sampler driven by it shows only its own discretisation error.
    """
    if not isinstance(mixture, GaussianMixture):
        raise TypeError(f"mixture must be a GaussianMixture, got {type(mixture).__name__}")

    def model(x: torch.Tensor, point) -> torch.Tensor:
        return mixture.x0_pred(x, point.scale, point.std)

    return model


# --------------------------------------------------------------------------- velocity


def _rate(name: str, value, like: torch.Tensor) -> torch.Tensor | float:
    """``d_scale`` or ``d_std``, the time derivative of a level: like :func:`_level`, but of
    either sign (a level may fall or grow along the path)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return check_number(name, value, -MAX_LEVEL, MAX_LEVEL)
    on_host = not isinstance(value, torch.Tensor)
    value = as_tensor(name, value)
    if not value.is_floating_point():
        value = value.to(torch.float64)
    if on_host:
        for number in value.reshape(-1).tolist():
            check_number(name, number, -MAX_LEVEL, MAX_LEVEL)
    check_batch(name, value, like.shape[0], "the batch size")
    return per_sample(value.to(device=like.device, dtype=torch.float64), like)


def _path(x: torch.Tensor, scale, std, d_scale, d_std):
    """The levels and rates of a velocity conversion, and its determinant
    scale d_std - std d_scale (checked non-zero where all four are numbers)."""
    scale, std = _level("scale", scale, x), _level("std", std, x)
    d_scale, d_std = _rate("d_scale", d_scale, x), _rate("d_std", d_std, x)
    det = scale * d_std - std * d_scale
    if isinstance(det, float) and det == 0:
        raise ValueError(
            "scale * d_std - std * d_scale must not be 0: the path does not separate x0 and eps "
            f"there (scale={scale}, std={std}, d_scale={d_scale}, d_std={d_std})"
        )
    return scale, std, d_scale, d_std, det


def velocity_from_x0(x, x0, scale, std, d_scale, d_std) -> torch.Tensor:
    """The velocity u = d_scale x0 + d_std eps of the affine path x_t = scale x0 + std eps
    (Lipman et al. 2023, Eq. 15; Albergo & Vanden-Eijnden 2023), written with x_t and x0:

        u = (d_std x - (scale d_std - std d_scale) x0) / std.

    Applied to a denoiser's E[x0 | x_t] it gives the marginal velocity E[u | x_t] (the map is
    affine). Divides by ``std``: undefined at std = 0. For rectified flow (scale, std) =
    (1 - t, t), (d_scale, d_std) = (-1, 1) and u = (x - x0) / t.
    """
    x, x0 = _pair("x", x, "x0", x0)
    scale, std, d_scale, d_std, det = _path(x, scale, std, d_scale, d_std)
    if isinstance(std, float):
        check_number("std", std, 0.0, MAX_LEVEL, low_open=True)
    return (d_std * x - det * x0) / std


def velocity_from_eps(x, eps, scale, std, d_scale, d_std) -> torch.Tensor:
    """u = (d_scale x + (scale d_std - std d_scale) eps) / scale, the velocity of the affine
    path from x_t and eps. Divides by ``scale``: undefined at scale = 0 (pure noise)."""
    x, eps = _pair("x", x, "eps", eps)
    scale, std, d_scale, d_std, det = _path(x, scale, std, d_scale, d_std)
    if isinstance(scale, float):
        check_number("scale", scale, 0.0, MAX_LEVEL, low_open=True)
    return (d_scale * x + det * eps) / scale


def x0_from_velocity(x, u, scale, std, d_scale, d_std) -> torch.Tensor:
    """x0 = (d_std x - std u) / (scale d_std - std d_scale): solving x = scale x0 + std eps and
    u = d_scale x0 + d_std eps for x0 (Cramer's rule). For rectified flow, x0 = x - t u.

    Finite wherever the determinant is non-zero, which it is on every path whose
    signal-to-noise ratio falls strictly (zero SNR included): the velocity, like v, works at
    t = 1 where eps-prediction cannot.
    """
    x, u = _pair("x", x, "u", u)
    scale, std, d_scale, d_std, det = _path(x, scale, std, d_scale, d_std)
    return (d_std * x - std * u) / det


def eps_from_velocity(x, u, scale, std, d_scale, d_std) -> torch.Tensor:
    """eps = (scale u - d_scale x) / (scale d_std - std d_scale), the other half of the
    solution of :func:`x0_from_velocity`. For rectified flow, eps = x + (1 - t) u."""
    x, u = _pair("x", x, "u", u)
    scale, std, d_scale, d_std, det = _path(x, scale, std, d_scale, d_std)
    return (scale * u - d_scale * x) / det
