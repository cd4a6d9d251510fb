"""Progressive distillation: a deterministic sampler taught to a student that takes half the steps.

Salimans & Ho (2022, Alg. 2). A teacher runs DDIM on a grid of 2K steps; the student, a network
of the same kind, learns to take one DDIM step where the teacher takes two, so that DDIM on the
grid of every other point (K steps) lands where the teacher does. The student then teaches the
next student, halving the steps again: 2K -> K -> K/2 -> ... -> 1.

One DDIM step from a point (scale, std) to (scale', std') with the denoiser output x0_hat is

    x' = (std' / std) x + (scale' - std' scale / std) x0_hat,

affine in x0_hat. So the student's target at x on its grid point i is the one x0_hat for which
its single step lands on the teacher's two-step result x'' at point i + 1 (paper, Alg. 2):

    x0_target = (x'' - (std'' / std) x) / (scale'' - std'' scale / std),

where the denominator is scale'' (1 - sigma'' / sigma) > 0 because the noise level falls. On
the last step (std'' = 0, the clean point) the target is the teacher's sample itself. The loss
is the squared error of x0_hat under the "truncated SNR" weight max(SNR, 1) of the paper
(Sec. 4), which keeps weight on the noisiest points, where the one-step student does its work.

Training inputs are x = scale_i x0 + std_i eps at a grid point i drawn uniformly for each
sample, x0 from the data: the points the student's sampler visits. The teacher and the student
are evaluated at one grid point per sample: :class:`~diffusion_core.schedules.GridPoint` with
``t``, ``scale`` and ``std`` holding one value per sample (shape (n,)), which the exact mixture
denoiser (:func:`diffusion_core.parameterization.exact_denoiser`) and a network wrapped by
:func:`~diffusion_core.parameterization.as_denoiser` with x0- or v-prediction both accept.
The student predicts v (or x0), never eps: at the noisiest point of a one-step student the
signal scale is near 0 and x0 = (x - std eps) / scale would amplify its error a hundredfold.

The objective is :class:`ProgressiveDistillationLoss`; the loop is
:func:`diffusion_core.train.train`, as for every model of the library. :func:`student_sampler`
samples with a trained student. Used in Chapter 8 and by ``scripts/train_students.py``, for the
book's 2-D mixture (MLP students) and its digits denoiser (U-Net students).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from diffusion_core import checkpoints, distributed
from diffusion_core._validation import check_float, check_torch_generator, per_sample
from diffusion_core.images import build_net
from diffusion_core.losses import Objective
from diffusion_core.nets import MLPDenoiser
from diffusion_core.parameterization import as_denoiser
from diffusion_core.samplers import ddim
from diffusion_core.schedules import GridPoint, TimeGrid

__all__ = [
    "STUDENT_PREDICTIONS",
    "ProgressiveDistillationLoss",
    "halve",
    "load_students",
    "student_sampler",
]

F64 = torch.float64
STUDENT_PREDICTIONS = ("v", "x0")


def halve(grid: TimeGrid) -> TimeGrid:
    """The grid of every other point of ``grid`` (2K steps -> K steps), the student's grid: it
    keeps the first (noisiest) and the last point, so teacher and student start and end alike."""
    if not isinstance(grid, TimeGrid):
        raise TypeError(f"grid must be a TimeGrid, got {type(grid).__name__}")
    if grid.steps % 2:
        raise ValueError(f"grid must have an even number of steps to be halved, got {grid.steps}")
    return grid[::2]


def _ddim_coefficients(x, here: GridPoint, there: GridPoint):
    """(std' / std, scale' - std' scale / std): the coefficients of x and x0_hat in one DDIM
    step, per sample, shaped to broadcast over ``x`` (any sample shape; std > 0)."""
    ratio = per_sample(there.std / here.std, x)
    return ratio, per_sample(there.scale, x) - ratio * per_sample(here.scale, x)


def _ddim_step(x, x0_hat, here: GridPoint, there: GridPoint) -> torch.Tensor:
    """x' = (std' / std) x + (scale' - std' scale / std) x0_hat, per sample (std > 0)."""
    ratio, gain = _ddim_coefficients(x, here, there)
    return ratio * x + gain * x0_hat


@dataclass(frozen=True, eq=False)
class ProgressiveDistillationLoss(Objective):
    """The progressive-distillation objective (Salimans & Ho 2022, Alg. 2) for
    :func:`diffusion_core.train.train`.

    ``teacher``: a denoiser ``teacher(x, point) -> x0_hat`` that accepts a point of (n,)
    tensors (module docstring), run without gradients. ``grid``: the teacher's grid of 2K
    steps; the student's is :func:`halve` of it. ``prediction``: what the student network
    ``net(x, t)`` predicts, ``"v"`` or ``"x0"``. The data are clean samples, (n, d) vectors or
    (n, c, h, w) images.

    loss_i = max(SNR_i, 1) |x0_hat_i - x0_target_i|^2 / d (d entries per sample) at a student
    point i drawn uniformly for each sample, x = scale_i x0 + std_i eps; the point index and
    eps are drawn from the generator, in that order, for the global batch.
    """

    teacher: Callable
    grid: TimeGrid
    prediction: str = "v"

    def __post_init__(self):
        if not callable(self.teacher):
            raise TypeError(
                f"teacher must be a denoiser teacher(x, point), got {type(self.teacher).__name__}"
            )
        halve(self.grid)  # checks the grid
        if float(self.grid.std[0]) <= 0 or float(self.grid.scale[0]) <= 0:
            raise ValueError("the grid must start at a point with scale > 0 and std > 0")
        if float(self.grid.std[-2]) <= 0:
            raise ValueError("the grid may reach std = 0 only at its last point")
        if self.prediction not in STUDENT_PREDICTIONS:
            raise ValueError(
                f"prediction must be one of {STUDENT_PREDICTIONS} (eps cannot give x0 near zero "
                f"SNR), got {self.prediction!r}"
            )

    @property
    def steps(self) -> int:
        """The student's number of steps K (half the teacher's)."""
        return self.grid.steps // 2

    @torch.no_grad()
    def targets(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """x0_target (float64) for the states ``x`` at the student's grid points ``index``: two
        teacher DDIM steps, through the teacher's point in between, then the x0_hat whose one
        DDIM step lands on their result (module docstring)."""
        here, middle, there = (self.grid.at(2 * index + k) for k in range(3))
        x = x.to(F64)
        x_mid = _ddim_step(x, self.teacher(x, here).to(F64), here, middle)
        x_end = _ddim_step(x_mid, self.teacher(x_mid, middle).to(F64), middle, there)
        ratio, gain = _ddim_coefficients(x, here, there)
        return (x_end - ratio * x) / gain

    def __call__(self, net, batch: torch.Tensor, labels, generator: torch.Generator):
        check_float("batch", batch)
        if batch.ndim < 2 or batch.shape[0] < 1:
            raise ValueError(
                f"batch must hold n >= 1 samples (n, d) or (n, c, h, w), got {tuple(batch.shape)}"
            )
        check_torch_generator("generator", generator)
        where = generator.device
        index = torch.randint(0, self.steps, (batch.shape[0],), generator=generator, device=where)
        noise = torch.randn(batch.shape, generator=generator, dtype=F64, device=where)
        x0, index, noise = distributed.shard(batch.to(F64), index.cpu(), noise.to(batch.device))
        here = self.grid.at(2 * index)  # the student's point i is the teacher's 2i
        scale, std = (per_sample(level.to(x0.device), x0) for level in (here.scale, here.std))
        x = scale * x0 + std * noise
        try:
            target = self.targets(x, index).to(x0.device)
        except (ValueError, TypeError) as error:  # a sample shape the teacher does not take
            raise type(error)(
                f"batch of shape {tuple(batch.shape)} does not fit the teacher: {error}"
            ) from error
        student = as_denoiser(net, self.prediction)
        point = GridPoint(here.t.to(batch.device), here.scale, here.std)
        x0_hat = student(x.to(batch.dtype), point).to(F64)
        snr = (here.scale / here.std).square().to(x0.device)
        weight = snr.clamp_min(1.0)
        return (weight * (x0_hat - target).square().flatten(1).mean(1)).to(batch.dtype)


def student_sampler(net: Callable, prediction: str = "v") -> Callable:
    """The sampler of a trained student: DDIM with the student's denoiser on the student's grid,
    ``sample(x, grid)``; as many evaluations as the grid has steps."""
    if prediction not in STUDENT_PREDICTIONS:
        raise ValueError(f"prediction must be one of {STUDENT_PREDICTIONS}, got {prediction!r}")
    model = as_denoiser(net, prediction)

    @torch.no_grad()
    def sample(x: torch.Tensor, grid: TimeGrid) -> torch.Tensor:
        return ddim(model, x, grid)

    return sample


def load_students(path) -> dict[int, torch.nn.Module]:
    """The students of a checkpoint written by ``scripts/train_students.py`` (kind
    "fewstep_students"), by number of steps, in eval mode without gradients, predicting the
    checkpoint's ``prediction``: MLP denoisers for the 2-D mixture (``kind`` "mlp", the
    default), U-Nets for the digits (``kind`` "unet", weights stored in float16 and loaded into
    float32). Raises :class:`~diffusion_core.checkpoints.CheckpointError` for a file of another
    kind or a damaged one."""
    state = checkpoints.load(path, checkpoints.FEWSTEP_STUDENTS)
    kind = state.get("kind", "mlp")
    if kind not in ("mlp", "unet"):
        raise checkpoints.CheckpointError(f"{path} holds students of unknown kind {kind!r}")
    students = {}
    for name, weights in state["students"].items():
        net = MLPDenoiser(**state["net"]) if kind == "mlp" else build_net(state["net"])
        net.load_state_dict({key: value.float() for key, value in weights.items()})
        students[int(name.removeprefix("steps_"))] = net.eval().requires_grad_(False)
    return dict(sorted(students.items()))
