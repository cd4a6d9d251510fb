"""Flow matching: the transport of diffusion seen as a velocity field.

Every process of :mod:`diffusion_core.schedules` is an *affine path*

    x_t = scale(t) x0 + std(t) eps,    eps ~ N(0, I),

and a path has a velocity, u = dx_t / dt = scale'(t) x0 + std'(t) eps (Lipman et al. 2023;
Albergo & Vanden-Eijnden 2023; Liu et al. 2023). Its conditional expectation given x_t,

    u_t(x) = E[scale' x0 + std' eps | x_t = x],

is the *marginal velocity field*: the ODE dx/dt = u_t(x) carries the law of x_t along the path
(continuity equation), which is what a flow-matching network learns. Since u is affine in
(x0, eps) and x_t fixes one given the other, u_t is an affine function of the denoiser
E[x0 | x_t] (:func:`diffusion_core.parameterization.velocity_from_x0`): the probability-flow ODE
of diffusion and the rectified flow are one family, the same field in different coordinates.

This module holds:

- :func:`path_coefficients`: (scale, std) and their time derivatives for any process;
- velocity fields, ``field(x, t) -> u``, and the two ways between them and the samplers'
  denoisers ``model(x, point)``: :func:`velocity_field` reads a denoiser as a field,
  :func:`flow_denoiser` a field as a denoiser (so every sampler of
  :mod:`diffusion_core.samplers` integrates a flow); :func:`network_velocity` is a
  velocity-predicting network as a field, and :func:`exact_velocity` the oracle field of a
  Gaussian mixture (:func:`diffusion_core.analytic.mixture_velocity`);
- couplings of noise and data: minibatch optimal transport (:func:`ot_couple`, Tong et al.
  2024; Pooladian et al. 2023) and the pairs of reflow (:func:`reflow_pairs`, Liu et al. 2023);
- the measure of how straight a flow is (:func:`straightness`) along a path recorded from a
  sampler (:func:`flow_path`);
- the digits networks trained at equal budget with the eps-loss and with flow matching
  (:func:`load_digits_model_set`, written by ``scripts/train_flow.py``).

The training objective is :class:`diffusion_core.losses.FlowMatchingLoss`; the log-likelihood
through the ODE is in :mod:`diffusion_core.likelihood`. Time ``t`` here is the process's own
continuous time (t in [0, 1] for rectified flow, t = 1 the noise); a network sees
``time_scale * t`` (1000 by default, the scale its sinusoidal embedding is made for).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from scipy.optimize import linear_sum_assignment

from diffusion_core import analytic, checkpoints
from diffusion_core._validation import (
    MAX_COUNT,
    as_tensor,
    check_callable,
    check_float,
    check_number,
)
from diffusion_core.parameterization import velocity_from_x0, x0_from_velocity
from diffusion_core.schedules import GridPoint, Process, TimeGrid

__all__ = [
    "exact_velocity",
    "flow_denoiser",
    "flow_path",
    "load_digits_model_set",
    "network_velocity",
    "ot_couple",
    "path_coefficients",
    "reflow_pairs",
    "straightness",
    "velocity_field",
]

F64 = torch.float64


def _check_process(process) -> Process:
    if not isinstance(process, Process):
        raise TypeError(f"process must be a Process, got {type(process).__name__}")
    return process


def _time(t) -> torch.Tensor:
    """One time for the whole batch: a finite number in [0, MAX_COUNT] or a one-element tensor
    holding one, as a 0-d float64 (read once on the host: a field is called once per step)."""
    if isinstance(t, bool) or not isinstance(t, int | float | torch.Tensor):
        raise TypeError(f"t must be a number or a 0-d tensor, got {type(t).__name__}")
    t = torch.as_tensor(t, dtype=F64).detach().cpu()
    if t.numel() != 1:
        raise ValueError(f"t must be one time, a 0-d tensor, got shape {tuple(t.shape)}")
    t = t.reshape(())
    check_number("t", t, 0.0, MAX_COUNT)
    return t


def _check_point(point) -> GridPoint:
    if not isinstance(point, GridPoint):
        raise TypeError(f"point must be a GridPoint, got {type(point).__name__}")
    return point


def path_coefficients(process: Process, t) -> tuple[torch.Tensor, ...]:
    """(scale, std, d_scale, d_std) of ``process`` at times ``t``, float64, each shaped like t.

    The derivatives scale'(t) and std'(t) are taken by automatic differentiation of
    :meth:`~diffusion_core.schedules.Process.marginal`, so every process of the library is an
    affine path with a velocity: rectified flow has (1 - t, t, -1, 1); the VP SDE
    (exp(-B(t) / 2), sqrt(1 - exp(-B(t))), -beta(t) scale / 2, beta(t) scale^2 / (2 std)) with
    B(t) = int_0^t beta.
    """
    _check_process(process)
    t = as_tensor("t", t, F64).detach().clone().requires_grad_(True)
    with torch.enable_grad():
        scale, std = process.marginal(t)
        d_scale, d_std = (_derivative(level, t) for level in (scale, std))
    return scale.detach(), std.detach(), d_scale.detach(), d_std.detach()


def _derivative(level: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """d level / dt of a level that is elementwise in t (the gradient of its sum); zero for a
    constant level, which autograd does not track."""
    if not level.requires_grad:
        return torch.zeros_like(t.detach())
    return torch.autograd.grad(level.sum(), t, retain_graph=True)[0]


# ------------------------------------------------------------------------ velocity fields


def velocity_field(model: Callable, process: Process) -> Callable:
    """The velocity field u_t(x) of a denoiser ``model(x, point) -> E[x0 | x_t]`` on the
    affine path ``process``: ``field(x, t)`` returns

        u_t(x) = (std' x - (scale std' - std scale') D(x, t)) / std

    (:func:`~diffusion_core.parameterization.velocity_from_x0`), the probability-flow ODE of
    the diffusion written as a flow. Undefined at std = 0 (the clean end).
    """
    check_callable("model", model, "model(x, point) -> x0_hat")
    _check_process(process)

    def field(x: torch.Tensor, t) -> torch.Tensor:
        scale, std, d_scale, d_std = (float(c) for c in path_coefficients(process, _time(t)))
        x0_hat = model(x, GridPoint(_time(t), scale, std))
        return velocity_from_x0(x, x0_hat, scale, std, d_scale, d_std)

    return field


def flow_denoiser(field: Callable, process: Process) -> Callable:
    """A velocity field ``field(x, t)`` as the denoiser ``model(x, point)`` every sampler of
    :mod:`diffusion_core.samplers` takes:

        D(x, t) = (std' x - std u_t(x)) / (scale std' - std scale')

    (:func:`~diffusion_core.parameterization.x0_from_velocity`; x - t u for rectified flow).
    The samplers step in y = x / scale and sigma = std / scale; on the rectified-flow path their
    Euler step is exactly Euler's method in t on dx/dt = u_t(x), so the flow's own integrators
    and the diffusion samplers are the same code. Finite at zero SNR (t = 1).
    """
    check_callable("field", field, "field(x, t) -> u")
    _check_process(process)

    def model(x: torch.Tensor, point) -> torch.Tensor:
        _check_point(point)
        _, _, d_scale, d_std = (float(c) for c in path_coefficients(process, point.t))
        u = field(x, point.t)
        return x0_from_velocity(x, u, point.scale, point.std, d_scale, d_std)

    return model


def network_velocity(net: Callable, time_scale: float = 1000.0) -> Callable:
    """A network trained by :class:`~diffusion_core.losses.FlowMatchingLoss` as a velocity
    field: ``field(x, t) = net(x, time_scale * t)`` (one time for the batch), in x's dtype."""
    check_callable("net", net, "net(x, t) -> u")
    time_scale = check_number("time_scale", time_scale, 0.0, 1e6, low_open=True)

    def field(x: torch.Tensor, t) -> torch.Tensor:
        check_float("x", x)
        return net(x, (time_scale * _time(t)).to(x.device))

    return field


def exact_velocity(mixture: analytic.GaussianMixture, process: Process) -> Callable:
    """The exact marginal velocity field of Gaussian-mixture data on the path ``process``,
    ``field(x, t)`` (:func:`diffusion_core.analytic.mixture_velocity`): the oracle of flow
    matching, finite at both ends of the rectified-flow path."""
    if not isinstance(mixture, analytic.GaussianMixture):
        raise TypeError(f"mixture must be a GaussianMixture, got {type(mixture).__name__}")
    _check_process(process)

    def field(x: torch.Tensor, t) -> torch.Tensor:
        return analytic.mixture_velocity(mixture, x, *path_coefficients(process, _time(t)))

    return field


# --------------------------------------------------------------------------- couplings


def ot_couple(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``noise`` reordered so that row i is paired with ``x0[i]`` by the optimal transport
    plan of the minibatch: the permutation pi minimising sum_i ||x0_i - noise_pi(i)||^2
    (an assignment problem, solved exactly by ``scipy.optimize.linear_sum_assignment``).

    Training on these pairs is minibatch OT flow matching (Tong et al. 2024, Alg. 2; Pooladian
    et al. 2023): with a large batch the pairs approach the OT coupling of the two laws, whose
    flow lines are straight and do not cross. The marginals are unchanged (a permutation).
    """
    x0, noise = check_float("x0", x0), check_float("noise", noise)
    if x0.ndim < 2 or noise.shape != x0.shape:
        raise ValueError(
            f"x0 and noise must have one shape (n, ...) with a batch axis, got "
            f"{tuple(x0.shape)} and {tuple(noise.shape)}"
        )
    data, points = x0.flatten(1).double(), noise.flatten(1).double()
    size = float(torch.cat([data, points]).abs().max()) if data.numel() else 0.0
    if size > 1e100:
        # The plan is unchanged by a common rescaling, which keeps the squared costs of huge
        # coordinates finite.
        data, points = data / size, points / size
    cost = torch.cdist(data, points).square()
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    order = torch.as_tensor(cols[rows.argsort()], device=noise.device)
    return noise[order]


def reflow_pairs(
    sampler: Callable, model: Callable, noise: torch.Tensor, grid: TimeGrid
) -> torch.Tensor:
    """The couplings of reflow (Liu et al. 2023, Sec. 2.3): each noise draw and the sample the
    current flow carries it to, ``sampler(model, noise, grid)``, stacked as (n, 2, ...) with
    the sample first, the batch :class:`~diffusion_core.losses.FlowMatchingLoss` takes with
    ``coupling="given"``. Training on them gives a flow with the same marginals whose paths
    cross less, so they are straighter and fewer steps suffice."""
    check_callable("sampler", sampler, "sampler(model, x, grid) -> x0")
    noise = check_float("noise", noise)
    if noise.ndim < 2 or noise.shape[0] < 1:
        raise ValueError(f"noise must have shape (n, ...) with n >= 1, got {tuple(noise.shape)}")
    with torch.no_grad():
        try:
            samples = sampler(model, noise, grid)
        except (TypeError, ValueError) as err:
            raise type(err)(f"sampler(model, noise, grid) refused its input: {err}") from err
    return torch.stack([samples.to(noise.dtype), noise], dim=1)


# -------------------------------------------------------------------------- straightness


def flow_path(sampler: Callable, model: Callable, x: torch.Tensor, grid: TimeGrid):
    """The states of ``sampler(model, x, grid)`` at every grid point, shape (K + 1, *x.shape),
    float64, recorded through the samplers' ``callback``: a trajectory of the flow."""
    check_callable("sampler", sampler, "sampler(model, x, grid, callback=...) -> x0")
    x = check_float("x", x)
    states = [x.to(F64)]
    with torch.no_grad():
        sampler(model, x, grid, callback=lambda i, state, x0_hat: states.append(state.clone()))
    return torch.stack(states)


def straightness(path: torch.Tensor, t) -> torch.Tensor:
    """How far each path of a flow is from straight, shape (n,):

        S = int ||dx/dt - (x_end - x_start) / (t_end - t_start)||^2 dt / (d |t_end - t_start|)

    (Liu et al. 2023, Eq. 5, with the realised end points of each path, per dimension d). Zero
    iff the path is a straight line walked at constant speed, as the paths of an optimal
    coupling are; for a flow whose paths all are, one Euler step is exact.

    ``path``: (K + 1, n, ...) states at the times ``t`` (K + 1,), as :func:`flow_path` returns;
    dx/dt is read as the finite difference of each step. float64; average the n values with
    :func:`~diffusion_core.metrics.mean_and_standard_error`.
    """
    path = check_float("path", path)
    t = check_float("t", as_tensor("t", t, F64))
    if path.ndim < 3 or t.ndim != 1 or t.shape[0] != path.shape[0] or t.shape[0] < 2:
        raise ValueError(
            f"path must have shape (K + 1, n, ...) with K >= 1 and t shape (K + 1,), got "
            f"{tuple(path.shape)} and {tuple(t.shape)}"
        )
    dt = t.diff().to(path.device)
    if bool((dt == 0).any()):
        raise ValueError("t must not repeat a time: each step needs a non-zero duration")
    path = path.to(F64).flatten(2)
    # S is quadratic in the path: huge coordinates are rescaled so that only a straightness
    # that is itself beyond float64 overflows.
    size = float(path.abs().max()) if path.numel() else 0.0
    size = size if size > 1e100 else 1.0
    path = path / size
    chord = (path[-1] - path[0]) / (t[-1] - t[0])
    speeds = path.diff(dim=0) / dt[:, None, None]
    deviation = (speeds - chord).square().mean(2)  # (K, n)
    s = (dt.abs()[:, None] * deviation).sum(0) / abs(float(t[-1] - t[0])) * size * size
    if not bool(torch.isfinite(s).all()):
        largest = float(path.abs().max()) * size
        raise ValueError(
            f"path and t give a straightness beyond float64: path reaches {largest:.3g} with "
            f"steps of t as short as {float(dt.abs().min()):.3g}; rescale path or t"
        )
    return s


# ------------------------------------------------------------------ trained digits models


def load_digits_model_set(path=None) -> list[tuple[torch.nn.Module, dict]]:
    """The networks of a checkpoint of kind "digits_model_set" (default: the packaged
    ``digits_equal_budget``, eps-prediction and flow-matching U-Nets of ``scripts/train_flow.py``
    trained on the same data with the same budget and seeds), each with its metadata.

    The file stores the EMA weights in float16; they are read back into the float32 network of
    :func:`diffusion_core.images.build_net`, in eval mode without gradients. The metadata of a
    model is its record without the weights: ``"prediction"`` ("eps" or "velocity"),
    ``"train"`` (steps, batch, learning rate, EMA, seed), ``"losses"``, ``"train_seconds"``.
    Raises :class:`~diffusion_core.checkpoints.CheckpointError` (a ``ValueError`` naming the
    file) for a file that is not such a checkpoint or whose weights do not fit their network.
    """
    from diffusion_core.images import build_net  # images -> losses -> flow: import on use

    path = checkpoints.packaged("digits_equal_budget") if path is None else path
    state = checkpoints.load(path, checkpoints.DIGITS_MODEL_SET)
    models = []
    try:
        for record in state["models"]:
            with torch.random.fork_rng(devices=[]):
                net = build_net(record["net"])
            net.load_state_dict({name: value.float() for name, value in record["ema"].items()})
            metadata = {key: value for key, value in record.items() if key != "ema"}
            models.append((net.eval().requires_grad_(False), metadata))
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise checkpoints.CheckpointError(
            f"{path} is a digits model set whose nets or weights do not fit ({err!r})"
        ) from None
    return models
