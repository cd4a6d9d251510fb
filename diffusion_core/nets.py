"""Small denoising networks: a sinusoidal time embedding and an MLP for low-dimensional data.

A denoiser takes a noised batch ``x`` of shape (n, d) and the time ``t`` of each sample and
returns one prediction per sample, shaped like ``x``: the noise eps, the clean data x0 or the
velocity v, depending on the loss it is trained with (:mod:`diffusion_core.losses`). Time enters
through a sinusoidal embedding, so that nearby times get similar codes while distant ones stay
distinguishable.

Trained by :func:`diffusion_core.train.train`; the 2-D chapters use :class:`MLPDenoiser`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from diffusion_core._validation import check_positive_int

__all__ = ["MLPDenoiser", "SinusoidalEmbedding", "count_parameters"]


class SinusoidalEmbedding(nn.Module):
    """Map times t of shape (n,) to features of shape (n, dim) at geometrically spaced frequencies.

    With half = dim / 2 and frequencies omega_i = max_period^(-i / half), i = 0..half-1,

        emb(t) = [sin(omega_0 t), ..., sin(omega_{half-1} t), cos(omega_0 t), ..., cos(...)],

    the positional encoding of Vaswani et al. (2017, Sec. 3.5) with the sines and cosines in two
    blocks, as in DDPM (Ho et al. 2020). The periods range from 2 pi to about 2 pi max_period,
    so ``t`` should be on the scale of the step index: the integer step t = 0..T as a float,
    or a continuous time in [0, 1] multiplied by 1000. The arithmetic runs in float64 (sin of a
    large argument loses digits in float32); the result has the default dtype, or ``t``'s dtype
    if ``t`` is floating point.
    """

    def __init__(self, dim: int, max_period: float = 10000.0):
        super().__init__()
        check_positive_int("dim", dim, minimum=2)
        if dim % 2:
            raise ValueError(f"dim must be even (sines and cosines come in pairs), got {dim}")
        if isinstance(max_period, bool) or not isinstance(max_period, int | float):
            raise TypeError(f"max_period must be a number, got {type(max_period).__name__}")
        if not math.isfinite(max_period) or max_period <= 1:
            raise ValueError(f"max_period must be a finite number > 1, got {max_period}")
        self.dim = dim
        self.max_period = float(max_period)

    def frequencies(self, device: torch.device | None = None) -> torch.Tensor:
        """The angular frequencies omega_i = max_period^(-i / half), shape (dim / 2,), float64."""
        half = self.dim // 2
        exponents = torch.arange(half, dtype=torch.float64, device=device) / half
        return torch.exp(-math.log(self.max_period) * exponents)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"t must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != 1:
            raise ValueError(f"t must have shape (n,), got {tuple(t.shape)}")
        dtype = t.dtype if t.is_floating_point() else torch.get_default_dtype()
        angles = t.to(torch.float64)[:, None] * self.frequencies(t.device)[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=1).to(dtype)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, max_period={self.max_period:g}"


class _ResidualBlock(nn.Module):
    """h -> h + W2 silu(W1 silu(h) + c): a pre-activation residual block, conditioned on c."""

    def __init__(self, hidden: int):
        super().__init__()
        self.linear1 = nn.Linear(hidden, hidden)
        self.linear2 = nn.Linear(hidden, hidden)

    def forward(self, h: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return h + self.linear2(F.silu(self.linear1(F.silu(h)) + condition))


class MLPDenoiser(nn.Module):
    """A residual MLP denoiser for data of shape (n, data_dim), conditioned on the time step.

    Architecture (SiLU activations throughout):

        c = W_t2 silu(W_t1 emb(t))                          time embedding -> hidden
        h = W_in x
        h <- h + W2 silu(W1 silu(h) + c)                    ``depth`` residual blocks
        output = W_out silu(h)

    The time code c is added inside every block, as the time embedding is in the residual
    blocks of the DDPM U-Net. The parameter count is

        (data_dim + 1) hidden                               input layer
        + (time_dim + 1) hidden + (hidden + 1) hidden       time MLP
        + depth * 2 (hidden + 1) hidden                     residual blocks
        + (hidden + 1) data_dim                             output layer

    (124,546 for the defaults). Weights use PyTorch's default initialisation, so they are
    determined by the global seed (:func:`diffusion_core.device.seed_everything`).

    ``forward(x, t)``: ``x`` is (n, data_dim) floating point; ``t`` holds the integer steps (an
    int tensor) or float times on the same scale (see :class:`SinusoidalEmbedding`), shape (n,)
    or a single value for the whole batch. The output has ``x``'s shape and dtype; the
    computation runs in the parameters' dtype.
    """

    def __init__(self, data_dim: int = 2, hidden: int = 128, depth: int = 3, time_dim: int = 64):
        super().__init__()
        self.data_dim = check_positive_int("data_dim", data_dim)
        check_positive_int("hidden", hidden)
        check_positive_int("depth", depth, minimum=0)
        self.embedding = SinusoidalEmbedding(time_dim)
        self.time_mlp = nn.Sequential(
            nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden)
        )
        self.input = nn.Linear(data_dim, hidden)
        self.blocks = nn.ModuleList(_ResidualBlock(hidden) for _ in range(depth))
        self.output = nn.Linear(hidden, data_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x, t = self._check_inputs(x, t)
        dtype = self.input.weight.dtype
        condition = self.time_mlp(self.embedding(t.to(torch.float64)).to(dtype))
        h = self.input(x.to(dtype))
        for block in self.blocks:
            h = block(h, condition)
        return self.output(F.silu(h)).to(x.dtype)

    def _check_inputs(self, x, t) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            kind = f"dtype {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise TypeError(f"x must be a floating-point torch.Tensor, got {kind}")
        if x.ndim != 2 or x.shape[1] != self.data_dim:
            raise ValueError(f"x must have shape (n, {self.data_dim}), got {tuple(x.shape)}")
        if not isinstance(t, torch.Tensor) or t.is_complex() or t.dtype == torch.bool:
            kind = f"dtype {t.dtype}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise TypeError(f"t must be an integer or floating-point torch.Tensor, got {kind}")
        if t.numel() == 1:
            t = t.reshape(1).expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(
                f"t must have shape ({x.shape[0]},) (one time per sample) or hold a single "
                f"value, got {tuple(t.shape)}"
            )
        return x, t


def count_parameters(module: nn.Module) -> int:
    """The number of scalar parameters of ``module`` (trainable or not)."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    return sum(p.numel() for p in module.parameters())
