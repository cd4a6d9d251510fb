"""The likelihood of data under a flow: the instantaneous change of variables.

A flow dx/dt = u_t(x) that carries the data law p_0 at t = 0 to the prior p_1 at t = 1 changes
log-densities along each path by the divergence of the field (Chen et al. 2018, Thm. 1):

    d log p_t(x_t) / dt = -div u_t(x_t),
    log p_0(x_0) = log p_1(x_1) + int_0^1 div u_t(x_t) dt,                            (1)

with x_t the solution started at the data point x_0. Integrating x and the integral of the
divergence together from t = 0 to t = 1 gives the exact log-likelihood of a trained model up
to the ODE solver's error (Song et al. 2021, Sec. 4.3 and App. D.2; Grathwohl et al. 2019).

The divergence is the trace of the Jacobian. :func:`divergence` computes it exactly, with one
vector-Jacobian product per dimension (cheap in 2-D); :func:`hutchinson_divergence` estimates it
with one product, E[z^T (du/dx) z] = tr(du/dx) for a probe z with E[z z^T] = I (Hutchinson
1989), the estimator of FFJORD for images. With one probe held fixed along each path, the
estimate of (1) is unbiased. Its variance, with J_s = (J + J^T) / 2 the symmetric part of the
Jacobian, is 2 ||J_s||_F^2 for a Gaussian probe and 2 (||J_s||_F^2 - sum_i J_ii^2) for a
:func:`rademacher` one, which removes the diagonal's share.

For images of discrete values the density of a continuous model becomes a probability through
dequantisation (Theis et al. 2016; Ho et al. 2019): with data x + (v - 1/2) Delta, v ~ U[0, 1)^d,
and Delta the width of a level, -log2 P(x) <= -(E_v log p(x + ...) + d log Delta) / log 2, so
:func:`bits_per_dim` adds d log Delta before dividing by d log 2.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from diffusion_core._validation import (
    MAX_LEVEL,
    as_tensor,
    check_callable,
    check_float,
    check_number,
    check_positive_int,
    check_shape,
    check_torch_generator,
)
from diffusion_core.schedules import Process

__all__ = [
    "bits_per_dim",
    "dequantize",
    "divergence",
    "hutchinson_divergence",
    "log_likelihood",
    "rademacher",
]

F64 = torch.float64
MAX_ODE_STEPS = 100_000


def _check_level(name: str, x: torch.Tensor) -> torch.Tensor:
    """A finite floating-point tensor whose entries are at most MAX_LEVEL in magnitude: the
    divergence and the prior square them."""
    x = check_float(name, x)
    if x.numel() and float(x.abs().max()) > MAX_LEVEL:
        raise ValueError(
            f"{name} must have entries of magnitude at most {MAX_LEVEL:g}, "
            f"got {float(x.abs().max()):.3g}"
        )
    return x


def _check_field_input(field, x) -> torch.Tensor:
    check_callable("field", field, "field(x, t) -> u")
    x = _check_level("x", x)
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(f"x must have shape (n, ...) with n >= 1, got {tuple(x.shape)}")
    return x


def _check_probe(probe, x: torch.Tensor) -> torch.Tensor:
    probe = _check_level("probe", probe)
    if probe.shape != x.shape:
        raise ValueError(
            f"probe must have the shape of x {tuple(x.shape)}, got {tuple(probe.shape)}"
        )
    return probe


def _field_and_jacobian_products(field, x, t, probes) -> tuple[torch.Tensor, list]:
    """u = field(x, t) and the vector-Jacobian products z^T du/dx for each probe z."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        u = field(x, t)
        if not isinstance(u, torch.Tensor) or u.shape != x.shape:
            got = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
            raise ValueError(
                f"field must return a tensor shaped like x {tuple(x.shape)}, got {got}"
            )
        products = [
            torch.autograd.grad(u, x, z.to(u.dtype), retain_graph=k < len(probes) - 1)[0]
            for k, z in enumerate(probes)
        ]
    return u.detach(), products


def _unit_probes(x: torch.Tensor) -> list[torch.Tensor]:
    d = x[0].numel()
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    return [eye[i].reshape(x.shape[1:]).expand(x.shape) for i in range(d)]


def divergence(field: Callable, x: torch.Tensor, t) -> torch.Tensor:
    """div u_t(x) = sum_i du_i / dx_i exactly, shape (n,): one vector-Jacobian product per
    dimension (e_i^T du/dx e_i). The field must be differentiable in x (torch operations)."""
    x = _check_field_input(field, x)
    probes = _unit_probes(x)
    _, products = _field_and_jacobian_products(field, x, t, probes)
    return sum((p * z).flatten(1).sum(1) for p, z in zip(products, probes, strict=True)).detach()


def hutchinson_divergence(field: Callable, x: torch.Tensor, t, probe: torch.Tensor):
    """Hutchinson's estimate z^T (du/dx) z of div u_t(x), shape (n,), for a probe z shaped like
    x with E[z z^T] = I (:func:`rademacher`, or Gaussian): unbiased, one vector-Jacobian
    product whatever the dimension (Hutchinson 1989; Grathwohl et al. 2019)."""
    x = _check_field_input(field, x)
    probe = _check_probe(probe, x)
    _, (product,) = _field_and_jacobian_products(field, x, t, [probe])
    return (product * probe.to(product.dtype)).flatten(1).sum(1).detach()


def rademacher(shape, generator: torch.Generator, dtype=F64) -> torch.Tensor:
    """A probe of independent signs +-1 with probability 1/2 each, drawn from ``generator``,
    of the floating-point ``dtype``."""
    check_torch_generator("generator", generator)
    if isinstance(shape, int):
        raise ValueError(f"shape must be a tuple of positive ints, got {shape!r}")
    shape = check_shape("shape", shape)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    bits = torch.randint(0, 2, tuple(shape), generator=generator, device=generator.device)
    return (2 * bits - 1).to(dtype)


def log_likelihood(
    field: Callable,
    x: torch.Tensor,
    process: Process,
    steps: int = 64,
    probe: torch.Tensor | None = None,
) -> torch.Tensor:
    """log p_0(x) of the flow ``field(x, t)`` on ``process``, by equation (1), shape (n,).

    The augmented state (x_t, int_0^t div u) is integrated from t = 0 to t = t_max with
    ``steps`` steps of the classical fourth-order Runge-Kutta method, uniform in t, in float64;
    the prior is N(0, std(t_max)^2 I), exact for a process that ends at pure noise
    (scale(t_max) = 0, as :class:`~diffusion_core.schedules.RectifiedFlow` does; others are
    refused). The divergence is exact (:func:`divergence`) when ``probe`` is None, else
    Hutchinson's estimate with that probe, the same along the whole path (FFJORD's choice,
    which keeps the estimate of the integral unbiased). Error: O(steps^-4) from the solver.
    """
    x = _check_field_input(field, x)
    if not isinstance(process, Process):
        raise TypeError(f"process must be a Process, got {type(process).__name__}")
    steps = check_positive_int("steps", steps, maximum=MAX_ODE_STEPS)
    if probe is not None:
        probe = _check_probe(probe, x)
    t_max = float(process.t_max)
    scale_1, std_1 = (float(v) for v in process.marginal(torch.tensor(t_max, dtype=F64)))
    if scale_1 != 0:
        raise ValueError(
            f"process must end at pure noise, scale(t_max) = 0, for an exact prior; got "
            f"scale(t_max) = {scale_1:.3g}"
        )
    probes = _unit_probes(x) if probe is None else [probe]

    def rates(state, t):
        u, products = _field_and_jacobian_products(field, state.to(x.dtype), t, probes)
        pairs = zip(products, probes, strict=True)
        div = sum((p.to(F64) * z.to(F64)).flatten(1).sum(1) for p, z in pairs)
        return u.to(F64), div

    state, integral = x.to(F64), torch.zeros(x.shape[0], dtype=F64, device=x.device)
    h = t_max / steps
    for k in range(steps):
        t = k * h
        k1, d1 = rates(state, t)
        k2, d2 = rates(state + h / 2 * k1, t + h / 2)
        k3, d3 = rates(state + h / 2 * k2, t + h / 2)
        k4, d4 = rates(state + h * k3, t + h)
        state = state + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        integral = integral + h / 6 * (d1 + 2 * d2 + 2 * d3 + d4)
    d = x[0].numel()
    log_prior = -0.5 * (state / std_1).square().flatten(1).sum(1) - d * (
        math.log(std_1) + 0.5 * math.log(2 * math.pi)
    )
    return log_prior + integral


def dequantize(x: torch.Tensor, bin_width: float, generator: torch.Generator) -> torch.Tensor:
    """x + (v - 1/2) bin_width with v ~ U[0, 1) per entry: uniform noise over the level's bin,
    centred on the level (Theis et al. 2016). Drawn from ``generator``; x's dtype."""
    x = check_float("x", x)
    bin_width = check_number("bin_width", bin_width, 0.0, 1e6, low_open=True)
    check_torch_generator("generator", generator)
    v = torch.rand(x.shape, generator=generator, dtype=F64, device=generator.device)
    return (x.to(F64) + (v.to(x.device) - 0.5) * bin_width).to(x.dtype)


def bits_per_dim(log_likelihood, dim: int, bin_width: float) -> torch.Tensor:
    """-(log p(x) + dim log bin_width) / (dim log 2): the bits per dimension of discrete data
    whose dequantised values have the continuous log-density ``log_likelihood`` (an upper bound
    on -log2 P(x) / dim, by Jensen's inequality over the dequantisation noise). float64."""
    ll = check_float("log_likelihood", as_tensor("log_likelihood", log_likelihood, F64))
    dim = check_positive_int("dim", dim)
    bin_width = check_number("bin_width", bin_width, 0.0, 1e6, low_open=True)
    return -(ll + dim * math.log(bin_width)) / (dim * math.log(2))
