"""Device choice and seeding: the one helper every notebook and script calls first.

The CPU is the default: the whole book runs on it. A GPU is used only when asked for, by
argument or by the environment variable ``DIFFUSION_DEVICE`` (``cpu``, ``cuda``, ``cuda:1`` or
``auto``).
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from diffusion_core._validation import check_positive_int

DEVICE_ENV = "DIFFUSION_DEVICE"
DEFAULT_THREADS = 1


def seed_everything(seed: int, threads: int = DEFAULT_THREADS) -> torch.Generator:
    """Seed Python, NumPy and torch, fix torch's CPU thread count, and return a CPU generator.

    The thread count is part of the seed: a float sum split over 1 or 2 threads rounds
    differently in its last bits, so two runs agree exactly only with the same count. The
    default is one thread: the book's tensors are small, and several processes that each spin
    up threads on a small machine (a notebook beside a test worker) slow each other down by
    orders of magnitude. The returned ``torch.Generator`` is the randomness to pass to library
    functions.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed must lie in 0..2**63 - 1, got {seed}")
    check_positive_int("threads", threads)
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (the legacy global state is what we seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    return torch.Generator().manual_seed(seed)


def get_device(name: str | None = None) -> torch.device:
    """The device to compute on: ``name`` if given, else ``$DIFFUSION_DEVICE``, else the CPU.

    ``"auto"`` picks CUDA when available. Asking for CUDA on a machine without it is an error,
    not a silent fall-back, so a GPU run never quietly becomes a CPU run.
    """
    choice = name if name is not None else os.environ.get(DEVICE_ENV, "cpu")
    if not isinstance(choice, str):
        raise TypeError(f"name must be a string such as 'cpu', 'cuda' or 'auto', got {choice!r}")
    choice = choice.strip().lower()
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice != "cpu" and not choice.startswith("cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {choice!r}")
    try:
        device = torch.device(choice)
    except RuntimeError as err:
        raise ValueError(
            f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {choice!r}"
        ) from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {choice!r} was requested but CUDA is not available")
    return device
