"""Argument checks shared by the public functions of :mod:`diffusion_core`.

Every public function validates what it is given and raises a ``TypeError`` (wrong kind of
object) or ``ValueError`` (right kind, wrong value) whose message names the argument and the
allowed range. Silent NaNs and accidental broadcasting are the bugs these checks exist to stop.
"""

from __future__ import annotations

import torch


def as_tensor(name: str, x, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Return ``x`` as a tensor (numbers and sequences are converted), optionally cast."""
    if isinstance(x, bool):
        raise TypeError(f"{name} must be a tensor or a number, got bool")
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(x, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"{name} must be a tensor or a number, got {type(x).__name__}") from err
    if dtype is not None:
        x = x.to(dtype)
    return x


def check_finite(name: str, x: torch.Tensor) -> torch.Tensor:
    """Raise ``ValueError`` if ``x`` holds NaN or infinity."""
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} must be finite, but it contains NaN or infinity")
    return x


def check_float(name: str, x) -> torch.Tensor:
    """A finite floating-point tensor (integers are rejected so that dtype never surprises)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return check_finite(name, x)


def check_timesteps(name: str, t, T: int) -> torch.Tensor:
    """Integer time steps in ``0..T`` (``t = 0`` is clean data), returned as int64."""
    if isinstance(t, bool):
        raise TypeError(f"{name} must be an integer or an integer tensor, got bool")
    if isinstance(t, int):
        t = torch.tensor(t)
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be an integer or an integer tensor, got {type(t).__name__}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold integers in 0..{T}, got dtype {t.dtype}")
    if t.numel() and (bool((t < 0).any()) or bool((t > T).any())):
        raise ValueError(
            f"{name} must lie in 0..{T} (T = {T}), got values in {int(t.min())}..{int(t.max())}"
        )
    return t.to(torch.int64)


def check_positive_int(name: str, n, minimum: int = 1, maximum: int | None = None) -> int:
    """A Python integer in ``minimum..maximum``."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"{name} must be an int, got {type(n).__name__}")
    upper = "" if maximum is None else f"..{maximum}"
    if n < minimum or (maximum is not None and n > maximum):
        raise ValueError(f"{name} must be in {minimum}{upper or '..'}, got {n}")
    return n


def check_shape(name: str, shape) -> tuple[int, ...]:
    """A tensor shape with a leading batch axis: an int or a sequence of positive ints."""
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, tuple | list | torch.Size) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape
    ):
        raise ValueError(f"{name} must be a tuple of positive ints, got {shape!r}")
    if len(shape) < 1:
        raise ValueError(f"{name} must have at least one axis (the batch)")
    return tuple(shape)


def check_batch(name: str, x: torch.Tensor, batch: int, other: str) -> None:
    """``x`` must hold one entry per sample of a batch of size ``batch``, or a single entry."""
    if x.ndim > 1 or (x.ndim == 1 and x.shape[0] not in (1, batch)):
        raise ValueError(
            f"{name} must be a scalar or have shape ({batch},) to match {other}, "
            f"got shape {tuple(x.shape)}"
        )


def per_sample(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a scalar or a ``(batch,)`` tensor so that it broadcasts over ``like`` per sample."""
    return x.reshape(-1, *([1] * (like.ndim - 1))) if x.ndim == 1 else x
