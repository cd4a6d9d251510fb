"""Argument checks shared by the public functions of :mod:`diffusion_core`.

Every public function validates what it is given and raises a ``TypeError`` (wrong kind of
object) or ``ValueError`` (right kind, wrong value) whose message names the argument and the
allowed range. Silent NaNs and accidental broadcasting are the bugs these checks exist to stop.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = [
    "MAX_COUNT",
    "MAX_LEVEL",
    "MAX_NUMEL",
    "as_tensor",
    "check_batch",
    "check_bool",
    "check_callable",
    "check_finite",
    "check_float",
    "check_images",
    "check_increasing",
    "check_labels",
    "check_number",
    "check_positive_int",
    "check_shape",
    "check_timesteps",
    "check_torch_generator",
    "per_sample",
]


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
    if t.numel():
        low, high = (int(v) for v in torch.aminmax(t))
        if low < 0 or high > T:
            raise ValueError(f"{name} must lie in 0..{T} (T = {T}), got values in {low}..{high}")
    return t.to(torch.int64)


MAX_COUNT = 1_000_000
"""The largest count (of steps, samples, repeats, layers ...) a function accepts unless it
says otherwise: a larger one would run for hours or exhaust memory instead of failing."""


MAX_LEVEL = 1e150
"""The largest magnitude accepted for a scale, a noise level, a standard deviation or a sample
coordinate: the library squares them, and the square of anything larger overflows float64."""

MAX_NUMEL = 1 << 30
"""The most numbers a tensor the library is asked to create may hold (8 GiB in float64)."""


def check_positive_int(name: str, n, minimum: int = 1, maximum: int | None = MAX_COUNT) -> int:
    """A Python integer in ``minimum..maximum`` (``maximum=None``: no upper bound, for seeds and
    other values that are not counts)."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"{name} must be an int, got {type(n).__name__}")
    if n < minimum:
        raise ValueError(f"{name} must be in {minimum}.., got {n}")
    if maximum is not None and n > maximum:
        raise ValueError(f"{name} must be in {minimum}..{maximum}, got {n}")
    return n


def check_callable(name: str, value, signature: str) -> Callable:
    """A callable; the message says how it will be called (``signature``)."""
    if not callable(value):
        raise TypeError(f"{name} must be callable as {signature}, got {type(value).__name__}")
    return value


def check_increasing(
    low_name: str, low, high_name: str, high, minimum: float = 0.0, maximum: float = math.inf
) -> tuple[float, float]:
    """Two finite numbers with minimum < low < high <= maximum (a range such as sigma_min,
    sigma_max), as Python floats."""
    low = check_number(low_name, low, minimum, maximum, low_open=True, high_open=True)
    high = check_number(high_name, high, minimum, maximum, low_open=True)
    if high <= low:
        raise ValueError(
            f"{high_name} must exceed {low_name}, got {low_name}={low}, {high_name}={high}"
        )
    return low, high


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
    if math.prod(shape) > MAX_NUMEL:
        raise ValueError(f"{name} must hold at most {MAX_NUMEL} numbers, got {tuple(shape)}")
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


def check_number(
    name: str,
    value,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """A finite real number in the interval from ``low`` to ``high`` (closed unless ``low_open``
    or ``high_open``), returned as a Python float. A 0-d tensor counts as a number (read once on
    the host); a bool does not."""
    if isinstance(value, torch.Tensor) and value.ndim == 0 and not value.dtype == torch.bool:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    if not (math.isfinite(value) and above and below):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be a finite number in {interval}, got {value}")
    return float(value)


def check_labels(name: str, labels, n: int | None = None, classes: int | None = None):
    """Integer class labels: an int64 tensor of shape (n,) (any length when ``n`` is None) whose
    values lie in ``0..classes - 1`` when ``classes`` is given. A negative label is refused, never
    read as "the last class"."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be an integer torch.Tensor, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name} must hold integers, got dtype {labels.dtype}")
    if labels.ndim != 1 or (n is not None and labels.shape[0] != n):
        wanted = "(n,)" if n is None else f"({n},)"
        raise ValueError(
            f"{name} must have shape {wanted}, one per sample, got {tuple(labels.shape)}"
        )
    if classes is not None and labels.numel():
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= classes:
            raise ValueError(f"{name} must lie in 0..{classes - 1}, got values in {low}..{high}")
    return labels.to(torch.int64)


def check_images(
    name: str, x, channels: int | None = None, size: tuple[int, int] | None = None, minimum: int = 0
) -> torch.Tensor:
    """A finite floating-point batch of images (n, C, H, W) with n >= ``minimum``, C =
    ``channels`` and (H, W) = ``size`` where they are given."""
    check_float(name, x)
    wanted = (
        "C" if channels is None else str(channels),
        *(("H", "W") if size is None else (str(size[0]), str(size[1]))),
    )
    if (
        x.ndim != 4
        or (channels is not None and x.shape[1] != channels)
        or (size is not None and tuple(x.shape[2:]) != tuple(size))
        or x.shape[0] < minimum
    ):
        least = f" with n >= {minimum}" if minimum else ""
        raise ValueError(
            f"{name} must have shape (n, {', '.join(wanted)}){least}, got {tuple(x.shape)}"
        )
    return x


def check_bool(name: str, value) -> bool:
    """True or False (not 0, 1 or None)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def check_torch_generator(name: str, generator) -> torch.Generator:
    """One ``torch.Generator`` (not None: a function that must be reproducible takes its
    randomness explicitly, never from torch's global stream)."""
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator, got {type(generator).__name__}")
    return generator
