"""Device choice and seeding: the one helper every notebook and script calls first.

The CPU is the default: the whole book runs on it. A GPU is used only when asked for, by
argument or by the environment variable ``DIFFUSION_DEVICE`` (``cpu``, ``cuda``, ``cuda:1`` or
``auto``).

The CUDA path uses the same code as the CPU path, with three switches that matter only on a GPU:
TF32 matrix products (:func:`use_tf32`, or :func:`tf32_context` for the length of a block),
bfloat16 autocast for the network's forward pass (:func:`autocast_context`) and, optionally,
``torch.compile`` (:func:`maybe_compile`). Each is a no-op on the CPU. Sampler arithmetic
stays float64 on both devices. :func:`per_sample_noise` and :func:`per_sample_generators` give
every sample its own random stream, so that a sample's starting noise, and with a stochastic
sampler its whole path, does not depend on how the samples are batched (or spread over GPUs,
:mod:`diffusion_core.distributed`).
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from diffusion_core._validation import check_positive_int, check_shape

__all__ = [
    "DEFAULT_THREADS",
    "DEVICE_ENV",
    "autocast_context",
    "check_generator",
    "generator_device",
    "get_device",
    "maybe_compile",
    "per_sample_generators",
    "per_sample_noise",
    "sample_seeds",
    "seed_everything",
    "standard_normal",
    "tf32_context",
    "use_tf32",
]

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
    source = "device name" if name is not None else f"${DEVICE_ENV}"
    if choice != "cpu" and not choice.startswith("cuda"):
        raise ValueError(f"{source} must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {choice!r}")
    try:
        device = torch.device(choice)
    except RuntimeError as err:
        raise ValueError(
            f"{source} must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {choice!r}"
        ) from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {choice!r} was requested but CUDA is not available")
    return device


# --- the CUDA path ----------------------------------------------------------------------------


def use_tf32(device: str | torch.device, enabled: bool = True) -> bool:
    """Let float32 matrix products and convolutions on CUDA use TensorFloat-32 (or stop them).

    TF32 keeps float32's range but rounds the inputs of a product to a 10-bit mantissa (about
    1e-3 relative), for several times the throughput of full float32 on Ampere and later
    GPUs: ample for training a network, harmless to the samplers, whose arithmetic is float64
    (TF32 never touches float64). On the CPU nothing changes. The setting is global
    (``torch.backends.cuda.matmul.allow_tf32`` and ``torch.backends.cudnn.allow_tf32``).
    Returns whether it applied, i.e. whether ``device`` is a CUDA device.
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be True or False, got {type(enabled).__name__}")
    if _device_type(device) != "cuda":
        return False
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    return True


@contextlib.contextmanager
def tf32_context(device: str | torch.device, enabled: bool = True):
    """:func:`use_tf32` for the duration of a block, then the two global flags as they were.

    A training run on a GPU wants TF32 (or, for a full-float32 comparison, not), but the flags
    are process-wide: set and left, they would change every later float32 product of the
    session, samplers' networks included. Restored also when the block raises.
    """
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        use_tf32(device, enabled)
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def autocast_context(
    device: str | torch.device, enabled: bool = True, dtype: torch.dtype = torch.bfloat16
) -> contextlib.AbstractContextManager:
    """Mixed precision for a network's forward pass: bf16 autocast on CUDA, nothing on the CPU.

    Inside the block, CUDA matrix products and convolutions run in ``dtype`` (bfloat16: float32's
    exponent range, so no loss scaling and none of float16's overflow to inf) while reductions,
    norms and the loss stay float32 (PyTorch's autocast op lists). Parameters and their
    gradients remain float32; run ``backward`` outside the block. On the CPU, or with
    ``enabled=False``, it is a no-op context, so the same code serves both devices and the book's
    CPU results do not change.
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be True or False, got {type(enabled).__name__}")
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be torch.bfloat16 or torch.float16, got {dtype}")
    if enabled and _device_type(device) == "cuda":
        return torch.autocast(device_type="cuda", dtype=dtype)
    return contextlib.nullcontext()


def maybe_compile(net: nn.Module, enabled: bool, **options) -> nn.Module:
    """``torch.compile(net, **options)`` if ``enabled``, else ``net`` itself.

    The compiled module shares its parameters with ``net`` (train and checkpoint ``net``, call
    the compiled one). Compilation happens at the first call and takes tens of seconds; it pays
    off for long runs on a GPU, not for the book's short CPU runs, hence off by default where
    it is used (:class:`diffusion_core.train.RunConfig`).
    """
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be True or False, got {type(enabled).__name__}")
    return torch.compile(net, **options) if enabled else net


def sample_seeds(base_seed: int, indices) -> list[int]:
    """One seed per sample, derived from (``base_seed``, sample index) by NumPy's SeedSequence.

    The seed of sample i depends on i and the base seed only, not on which batch the sample is
    drawn in, nor on the process: a sample keeps its noise when the batch size, the order of
    the batches or the number of GPUs changes. SeedSequence mixes the pair by a hash, so that
    neighbouring indices get unrelated streams.
    """
    check_positive_int("base_seed", base_seed, minimum=0, maximum=2**63 - 1)
    indices = _int_sequence("indices", indices)
    seeds = []
    for i, index in enumerate(indices):
        check_positive_int(f"indices[{i}]", index, minimum=0, maximum=2**63 - 1)
        state = np.random.SeedSequence([base_seed, index]).generate_state(2, dtype=np.uint32)
        seeds.append(int(state[0]) << 31 | int(state[1]) >> 1)  # 63 bits
    return seeds


def per_sample_generators(seeds, device: str | torch.device | None = None) -> list[torch.Generator]:
    """One generator per sample, generator i seeded with ``seeds[i]``, on ``device`` (the CPU
    by default; a CUDA generator on a GPU).

    Passed to a sampler as its ``generator`` (a list of n generators for a batch of n), every
    random draw takes row i from generator i, so that a sample's whole path, not only its
    starting noise, is the same whatever batch it is drawn in. CUDA and CPU generators are
    different algorithms (Philox and the Mersenne Twister): the same seeds give different
    numbers on the two devices.
    """
    device = torch.device("cpu") if device is None else torch.device(device)
    generators = []
    for i, seed in enumerate(_int_sequence("seeds", seeds)):
        check_positive_int(f"seeds[{i}]", seed, minimum=0, maximum=2**64 - 1)
        generators.append(torch.Generator(device=device).manual_seed(seed))
    if not generators:
        raise ValueError("seeds must hold at least one seed")
    return generators


def check_generator(generator, batch: int, device: str | torch.device):
    """Validate a random source for a batch of ``batch`` samples on ``device``: None (torch's
    global generator), one ``torch.Generator``, or a list or tuple of ``batch`` of them (one per
    sample, :func:`per_sample_generators`), on ``device``'s type. Returns it unchanged."""
    if generator is None:
        return None
    many = isinstance(generator, list | tuple)
    for g in generator if many else [generator]:
        if not isinstance(g, torch.Generator):
            raise TypeError(
                "generator must be a torch.Generator, a list of one per sample, or None, got "
                f"{type(g).__name__}"
            )
        if g.device.type != torch.device(device).type:
            raise ValueError(
                f"generator must be on the device of the samples ({torch.device(device).type}), "
                f"got a {g.device.type} generator"
            )
    if many and len(generator) != batch:
        raise ValueError(
            f"generator must hold one generator per sample ({batch}), got {len(generator)}"
        )
    return generator


def generator_device(generator, default: torch.device) -> torch.device:
    """The device of a random source (one generator, or the first of a list of them), or
    ``default`` for None, torch's global generator, which serves every device."""
    first = generator[0] if isinstance(generator, list | tuple) and generator else generator
    return first.device if isinstance(first, torch.Generator) else default


def standard_normal(
    shape,
    generator=None,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """N(0, I) noise of ``shape`` = (n, ...): ``torch.randn`` from one generator, or, from a list
    of n generators (:func:`per_sample_generators`), row i from generator i, so that a sample's
    noise does not depend on the batch it is drawn in. ``device``: the generators' by default.
    """
    shape = check_shape("shape", shape)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype}")
    device = generator_device(generator, torch.device("cpu")) if device is None else device
    generator = check_generator(generator, shape[0], device)
    if not isinstance(generator, list | tuple):
        return torch.randn(shape, generator=generator, dtype=dtype, device=device)
    out = torch.empty(shape, dtype=dtype, device=device)
    for row, g in zip(out, generator, strict=True):
        row.normal_(generator=g)
    return out


def per_sample_noise(
    shape, seeds, device: str | torch.device | None = None, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Standard normal noise of ``shape`` = (n, ...), row i drawn from a generator of its own
    seeded with ``seeds[i]`` (e.g. from :func:`sample_seeds`), on ``device``: a sample's noise
    does not depend on the batch it is drawn in. For the same noise on a GPU and a CPU, draw on
    the CPU and copy (see :func:`per_sample_generators`).
    """
    shape = check_shape("shape", shape)
    seeds = _int_sequence("seeds", seeds)
    if len(seeds) != shape[0]:
        raise ValueError(f"seeds must hold one seed per sample ({shape[0]}), got {len(seeds)}")
    return standard_normal(shape, per_sample_generators(seeds, device), dtype)


def _int_sequence(name: str, values) -> list:
    """A sequence (or 1-D tensor) of ints, as a list; a string or a lone number is refused."""
    if isinstance(values, torch.Tensor):
        values = values.tolist() if values.ndim == 1 else values
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a sequence of ints, got {type(values).__name__}")
    return list(values)


def _device_type(device) -> str:
    if isinstance(device, str):
        device = torch.device(device)
    if not isinstance(device, torch.device):
        raise TypeError(f"device must be a torch.device or a string, got {type(device).__name__}")
    return device.type
