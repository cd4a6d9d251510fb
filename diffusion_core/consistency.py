"""Consistency distillation: one network that maps any point of a probability-flow path to its
end, sampled in one step or a few (Song et al. 2023, "Consistency Models").

Coordinates. As in the samplers, y = x / scale is the state in noise-level coordinates, where
y = x0 + sigma eps and the probability-flow ODE reads dy/dsigma = (y - D(y, sigma)) / sigma.
The consistency function f(y, sigma) is the end, at the smallest level sigma_min of training,
of the path through y at sigma: f is constant along every path, and f(y, sigma_min) = y.

Parameterisation (paper, Eq. 5 and Appendix C, the EDM-style coefficients of Karras et al.
2022). A network F gives

    f(y, sigma) = c_skip(sigma) y + c_out(sigma) F(x, t),
    c_skip(sigma) = sigma_data^2 / ((sigma - sigma_min)^2 + sigma_data^2),
    c_out(sigma) = sigma_data (sigma - sigma_min) / sqrt(sigma_data^2 + sigma^2),

so that c_skip(sigma_min) = 1 and c_out(sigma_min) = 0: the boundary condition holds exactly,
whatever the network. The network reads the library's x = scale y and its own time t, as every
network of the library does (for a variance-preserving process x has about unit variance, the
role of EDM's c_in). :class:`ConsistencyFunction` wraps a network ``net(x, t)`` so; called as
``f(x, point)`` it returns the clean estimate, the denoiser interface of the samplers.

Objective (paper, Eq. 7 and Alg. 2). On a grid of N noise levels sigma_0 > ... > sigma_{N-1} =
sigma_min, draw a data point x0, an index n in 0..N-2 and y_n = x0 + sigma_n eps; one Heun step
of the teacher's probability-flow ODE gives y_hat at sigma_{n+1}; the loss is

    d(f_theta(y_n, sigma_n), f_target(y_hat, sigma_{n+1})),

with the target network's weights an exponential moving average of the student's, held fixed
under the gradient (stop-gradient), and d the squared distance per coordinate or the
pseudo-Huber distance sqrt(|a - b|^2 + c^2) - c of Song & Dhariwal (2024). The teacher is a
denoiser ``teacher(x, point)`` (the exact mixture denoiser, or a trained network), called with
points of (n,) tensors as in :mod:`diffusion_core.distill`. The objective is
:class:`ConsistencyDistillationLoss`; the loop is :func:`diffusion_core.train.train`. The target
network lives in the objective: a run resumed from a checkpoint restarts it from the student's
weights (it is not part of the checkpoint).

Sampling (paper, Alg. 1). One step: x0_hat = f(y_0, sigma_0) from the start. Several: after
each estimate, noise it again to the next level tau of the sampling grid with fresh noise z
from the generator, y = x0_hat + sqrt(tau^2 - sigma_min^2) z, and apply f there. The
re-noising draws new noise, so with two steps or more the sampler is not a deterministic map
of its start: it samples the right distribution, not the path of the start.
:func:`consistency_sample`; :func:`choose_levels` picks the intermediate levels greedily on
pilot samples, as the paper does.

Used in Chapter 8 and by ``scripts/train_students.py``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from diffusion_core import checkpoints, distributed
from diffusion_core._validation import (
    MAX_LEVEL,
    check_callable,
    check_float,
    check_number,
    check_positive_int,
    check_torch_generator,
    per_sample,
)
from diffusion_core.losses import Objective
from diffusion_core.schedules import GridPoint, TimeGrid
from diffusion_core.train import update_ema

__all__ = [
    "DISTANCES",
    "ConsistencyDistillationLoss",
    "ConsistencyFunction",
    "boundary_coefficients",
    "choose_levels",
    "consistency_sample",
    "heun_step",
    "levels_grid",
    "load_consistency_model",
]

F64 = torch.float64
DISTANCES = ("l2", "pseudo_huber")


def boundary_coefficients(sigma, sigma_min: float, sigma_data: float):
    """(c_skip, c_out) at the noise level(s) ``sigma`` >= ``sigma_min`` (module docstring):
    c_skip = s_d^2 / ((sigma - sigma_min)^2 + s_d^2), c_out = s_d (sigma - sigma_min) /
    sqrt(s_d^2 + sigma^2). Exactly (1, 0) at sigma = sigma_min. Floats or tensors."""
    sigma_min = check_number("sigma_min", sigma_min, 0.0, MAX_LEVEL, low_open=True)
    sigma_data = check_number("sigma_data", sigma_data, 0.0, MAX_LEVEL, low_open=True)
    low = sigma_min * (1 - 1e-12)  # sigma_min itself, up to the rounding of a grid's levels
    if isinstance(sigma, torch.Tensor):
        check_float("sigma", sigma)
        if sigma.numel() and not (low <= float(sigma.min()) and float(sigma.max()) <= MAX_LEVEL):
            raise ValueError(
                f"sigma must lie in [sigma_min, {MAX_LEVEL:g}] with sigma_min = {sigma_min:g}"
            )
    else:
        sigma = check_number("sigma", sigma, 0.0, MAX_LEVEL)
        if sigma < low:
            raise ValueError(f"sigma must be at least sigma_min = {sigma_min:g}, got {sigma:g}")
    gap = sigma - sigma_min
    c_skip = sigma_data**2 / (gap**2 + sigma_data**2)
    root = math.sqrt if isinstance(sigma, float | int) else torch.sqrt
    c_out = sigma_data * gap / root(sigma_data**2 + sigma**2)
    return c_skip, c_out


def _levels(point, like: torch.Tensor):
    """scale and sigma of a point, floats or (n,) tensors shaped to broadcast over ``like``."""
    scale, std = point.scale, point.std
    if isinstance(scale, torch.Tensor):
        scale = per_sample(scale.to(like.device, F64), like)
        std = per_sample(std.to(like.device, F64), like)
    return scale, std / scale


class ConsistencyFunction:
    """f(x, point) = c_skip(sigma) x / scale + c_out(sigma) net(x, t): the clean estimate of a
    consistency model at the grid point ``point`` (a :class:`~diffusion_core.schedules.
    GridPoint` of floats, or of (n,) tensors during training), float64.

    ``net(x, t)``: a network of the library's kind (an MLP or a U-Net). ``sigma_min``: the
    smallest noise level of training, where f(x, point) = x / scale exactly; levels below it
    are refused. ``sigma_data``: the data's standard deviation in the coefficients (EDM's 0.5
    for images in [-1, 1]).
    """

    def __init__(self, net: Callable, sigma_min: float, sigma_data: float = 0.5):
        self.net = check_callable("net", net, "net(x, t)")
        self.sigma_min = check_number("sigma_min", sigma_min, 0.0, low_open=True)
        self.sigma_data = check_number("sigma_data", sigma_data, 0.0, low_open=True)

    def __call__(self, x: torch.Tensor, point) -> torch.Tensor:
        check_float("x", x)
        if not isinstance(point, GridPoint):
            raise TypeError(f"point must be a GridPoint, got {type(point).__name__}")
        scale, sigma = _levels(point, x)
        low = sigma.min() if isinstance(sigma, torch.Tensor) else sigma
        if not low >= self.sigma_min * (1 - 1e-12):
            raise ValueError(
                f"point must have sigma >= sigma_min = {self.sigma_min:g} (the model's smallest "
                f"level), got sigma = {float(low):g}"
            )
        c_skip, c_out = boundary_coefficients(sigma, self.sigma_min, self.sigma_data)
        out = self.net(x, point.t).to(F64)
        return c_skip * (x.to(F64) / scale) + c_out * out


def heun_step(teacher: Callable, y: torch.Tensor, here: GridPoint, there: GridPoint):
    """One Heun step of dy/dsigma = (y - D(y, sigma)) / sigma from the points ``here`` to
    ``there`` (per-sample (n,) tensors, both noisy) with the denoiser ``teacher(x, point)``,
    in the coordinates y = x / scale (EDM, Alg. 1 without churn):

        d = (y - D(y, s)) / s,  y' = y + (s' - s) d,  d' = (y' - D(y', s')) / s',
        y_next = y + (s' - s) (d + d') / 2.
    """
    scale, sigma = _levels(here, y)
    scale_next, sigma_next = _levels(there, y)
    slope = (y - teacher(scale * y, here).to(F64)) / sigma
    euler = y + (sigma_next - sigma) * slope
    slope_next = (euler - teacher(scale_next * euler, there).to(F64)) / sigma_next
    return y + (sigma_next - sigma) * (slope + slope_next) / 2


def _check_noisy_grid(grid, name: str = "grid") -> TimeGrid:
    if not isinstance(grid, TimeGrid):
        raise TypeError(f"{name} must be a TimeGrid, got {type(grid).__name__}")
    if float(grid.std.min()) <= 0 or float(grid.scale.min()) <= 0:
        raise ValueError(
            f"{name} must hold noisy levels only (scale > 0 and std > 0 at every point): pass "
            "process.grid(N)[:-1], without the clean end"
        )
    return grid


def _check_batch(batch, name: str = "batch") -> torch.Tensor:
    """A finite floating-point batch (n, ...) with n >= 1."""
    check_float(name, batch)
    if batch.ndim < 2 or batch.shape[0] < 1:
        raise ValueError(
            f"{name} must have shape (n, ...) with n >= 1 samples, got {tuple(batch.shape)}"
        )
    return batch


@dataclass(eq=False)
class ConsistencyDistillationLoss(Objective):
    """The consistency-distillation objective (Song et al. 2023, Alg. 2) for
    :func:`diffusion_core.train.train`; the student ``net(x, t)`` is read through
    :class:`ConsistencyFunction`.

    ``teacher``: a denoiser ``teacher(x, point) -> x0_hat`` accepting points of (n,) tensors,
    run without gradients. ``grid``: the N noisy levels (a TimeGrid without its clean end,
    N >= 2); its last level is sigma_min. ``sigma_data``: as in :class:`ConsistencyFunction`.
    ``target_decay``: mu of the target network theta^- <- mu theta^- + (1 - mu) theta, updated
    from the student's current weights at each call, before the loss (0: the student's
    weights themselves, under stop-gradient). ``distance``: ``"l2"`` (|a - b|^2 / d) or
    ``"pseudo_huber"`` (sqrt(|a - b|^2 + c^2) - c with c = ``huber_c``). The batch holds clean
    samples (n, ...); the index n (uniform in 0..N-2) and eps are drawn from the generator, in
    that order, for the global batch.

    loss_i = d(f_theta(x_n, sigma_n), f_target(x_hat, sigma_{n+1})),
    x_n = scale_n (x0 + sigma_n eps), x_hat = scale_{n+1} heun_step(y_n).
    """

    teacher: Callable
    grid: TimeGrid
    sigma_data: float = 0.5
    target_decay: float = 0.95
    distance: str = "l2"
    huber_c: float = 0.03
    _target: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self):
        check_callable("teacher", self.teacher, "teacher(x, point)")
        _check_noisy_grid(self.grid)
        if len(self.grid.t) < 2:
            raise ValueError("grid must have at least 2 noisy levels")
        check_number("sigma_data", self.sigma_data, 0.0, low_open=True)
        check_number("target_decay", self.target_decay, 0.0, 1.0, high_open=True)
        if self.distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {self.distance!r}")
        check_number("huber_c", self.huber_c, 0.0, low_open=True)

    @property
    def sigma_min(self) -> float:
        return float(self.grid.std[-1] / self.grid.scale[-1])

    def function(self, net: Callable) -> ConsistencyFunction:
        """The consistency function of a network under this objective's sigma_min, sigma_data."""
        return ConsistencyFunction(net, self.sigma_min, self.sigma_data)

    def target_network(self, net: nn.Module) -> nn.Module:
        """theta^-: the EMA of the student's weights, updated from ``net`` (module docstring)."""
        student = getattr(net, "module", net)  # the module inside DDP or a compiled wrapper
        target = self._target.get("net")
        if target is None:
            target = copy.deepcopy(student).requires_grad_(False)
            self._target["net"] = target
        else:
            update_ema(target, student, self.target_decay)
        return target.train(student.training)

    def __call__(self, net, batch: torch.Tensor, labels, generator: torch.Generator):
        _check_batch(batch)
        check_torch_generator("generator", generator)
        where = generator.device
        count = len(self.grid.t)
        index = torch.randint(0, count - 1, (batch.shape[0],), generator=generator, device=where)
        noise = torch.randn(batch.shape, generator=generator, dtype=F64, device=where)
        x0, index, noise = distributed.shard(batch.to(F64), index.cpu(), noise.to(batch.device))
        here, there = self.grid.at(index), self.grid.at(index + 1)
        scale, sigma = _levels(here, x0)
        y = x0 + sigma * noise
        with torch.no_grad():
            y_hat = heun_step(self.teacher, y, here, there)
            target_net = self.target_network(net)
            scale_next, _ = _levels(there, x0)
            target = self.function(target_net)((scale_next * y_hat).to(batch.dtype), there)
        estimate = self.function(net)((scale * y).to(batch.dtype), here)
        squared = (estimate - target).square().flatten(1)
        if self.distance == "l2":
            loss = squared.mean(1)
        else:
            c = self.huber_c
            loss = (squared.sum(1) + c**2).sqrt() - c
        return loss.to(batch.dtype)


@torch.no_grad()
def consistency_sample(model: Callable, x: torch.Tensor, grid: TimeGrid, generator=None):
    """Multistep consistency sampling (Song et al. 2023, Alg. 1) with ``model``, a
    :class:`ConsistencyFunction`, from ``x`` at the first point of ``grid``.

    ``grid``: K noisy levels tau_0 > ... > tau_{K-1} >= sigma_min, then the clean end (a
    library grid of K steps); K evaluations. x0_hat = f(x, tau_0); then for k = 1..K-1:
    y = x0_hat + sqrt(tau_k^2 - sigma_min^2) z_k, z_k ~ N(0, I) from ``generator`` (required
    for K > 1), x0_hat = f(scale_k y, tau_k). Returns x0_hat (float64).
    """
    if not isinstance(model, ConsistencyFunction):
        raise TypeError(f"model must be a ConsistencyFunction, got {type(model).__name__}")
    check_float("x", x)
    if not isinstance(grid, TimeGrid):
        raise TypeError(f"grid must be a TimeGrid, got {type(grid).__name__}")
    if float(grid.std[-1]) != 0 or float(grid.std[:-1].min()) <= 0 or float(grid.scale.min()) <= 0:
        raise ValueError("grid must hold noisy levels (scale > 0, std > 0) then the clean end")
    if grid.steps > 1:
        check_torch_generator("generator", generator)
    x0_hat = model(x, grid[0])
    for point in grid.points[1:-1]:
        z = torch.randn(x.shape, generator=generator, dtype=F64, device=generator.device)
        spread = math.sqrt(max(point.sigma**2 - model.sigma_min**2, 0.0))
        y = x0_hat + spread * z.to(x.device)
        x0_hat = model((point.scale * y).to(x.dtype), point)
    return x0_hat


def choose_levels(
    model: ConsistencyFunction,
    candidates: TimeGrid,
    steps: int,
    score: Callable,
    start: torch.Tensor,
    seed: int = 0,
) -> TimeGrid:
    """The sampling grid of ``steps`` evaluations: the first level of ``candidates`` (noisy
    levels, decreasing), then steps - 1 levels chosen greedily among the candidates, one at a
    time, each the one whose sampler (:func:`consistency_sample`, fresh generator from
    ``seed``) minimises ``score(samples)`` on the pilot starts ``start`` (Song et al. 2023,
    Sec. 6, who choose by FID). The last candidate, sigma_min, is never chosen: re-noising
    to it adds no noise and f there is the identity (Alg. 1 takes tau in (sigma_min, T)).
    Returns the grid with its clean end appended."""
    if not isinstance(model, ConsistencyFunction):
        raise TypeError(f"model must be a ConsistencyFunction, got {type(model).__name__}")
    _check_noisy_grid(candidates, "candidates")
    steps = check_positive_int("steps", steps, maximum=len(candidates.t) - 1)
    check_callable("score", score, "score(samples) -> float")
    _check_batch(start, "start")
    seed = check_positive_int("seed", seed, minimum=0, maximum=2**63 - 1)
    try:
        model(start, candidates[0])
    except (RuntimeError, ValueError) as error:  # a shape the network refuses
        raise ValueError(
            f"start must be a batch that model accepts, got shape {tuple(start.shape)}: {error}"
        ) from error
    chosen = [0]
    for _ in range(steps - 1):
        trials = {}
        for k in range(1, len(candidates.t) - 1):  # tau = sigma_min would re-noise nothing
            if k not in chosen:
                grid = levels_grid(candidates, [*chosen, k])
                samples = consistency_sample(
                    model, start, grid, torch.Generator().manual_seed(seed)
                )
                trials[k] = float(score(samples))
        chosen.append(min(trials, key=trials.get))
    return levels_grid(candidates, chosen)


def levels_grid(candidates: TimeGrid, indices) -> TimeGrid:
    """The sampling grid of the levels ``indices`` (distinct, any order) of the noisy grid
    ``candidates``, from noisy to clean, with the clean end (t = 0, scale 1, std 0) appended:
    a grid of len(indices) steps for :func:`consistency_sample`."""
    _check_noisy_grid(candidates, "candidates")
    count = len(candidates.t)
    if (
        not isinstance(indices, list | tuple)
        or not indices
        or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < count for i in indices
        )
    ):
        raise ValueError(
            f"indices must be a non-empty list of ints in 0..{count - 1}, got {indices!r}"
        )
    if len(set(indices)) != len(indices):
        raise ValueError(f"indices must be distinct, got {indices!r}")
    indices = sorted(indices)
    t = torch.cat([candidates.t[indices], candidates.t.new_zeros(1)])
    scale = torch.cat([candidates.scale[indices], candidates.scale.new_ones(1)])
    std = torch.cat([candidates.std[indices], candidates.std.new_zeros(1)])
    return TimeGrid(t, scale, std)


def load_consistency_model(path, key: str = "mixture") -> tuple[ConsistencyFunction, dict]:
    """The consistency model ``key`` of a checkpoint written by ``scripts/train_students.py``
    (kind "consistency_students"), as a :class:`ConsistencyFunction` of a network in eval mode,
    and its record (its sampling grids by number of steps, its settings). Weights stored in
    float16 are read back into float32."""
    from diffusion_core.images import build_net  # the digits U-Net, only when asked for
    from diffusion_core.nets import MLPDenoiser

    state = checkpoints.load(path, checkpoints.CONSISTENCY_STUDENTS)
    if key not in state["models"]:
        raise ValueError(f"key must be one of {sorted(state['models'])}, got {key!r}")
    record = state["models"][key]
    with torch.random.fork_rng(devices=[]):
        if record["kind"] == "mlp":
            net = MLPDenoiser(**record["net"])
        else:
            net = build_net(record["net"])
    weights = {name: value.float() for name, value in record["weights"].items()}
    net.load_state_dict(weights)
    net = net.eval().requires_grad_(False)
    model = ConsistencyFunction(net, record["sigma_min"], record["sigma_data"])
    info = {name: value for name, value in record.items() if name != "weights"}
    return model, info
