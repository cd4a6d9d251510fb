"""Training on several processes: DistributedDataParallel (DDP), launched by ``torchrun``.

One process per device (a GPU, or a share of a CPU), all running the same script. ``torchrun``
starts them and tells each who it is through environment variables:

    RANK          this process's number among all processes, 0..WORLD_SIZE-1
    WORLD_SIZE    the number of processes, on all nodes together
    LOCAL_RANK    its number on its own node (which GPU to take)
    MASTER_ADDR, MASTER_PORT    where process 0 listens while the processes find each other

:func:`setup` joins the process group (NCCL between GPUs, gloo on CPUs) and returns the device of
this process; :func:`cleanup` leaves it. Outside ``torchrun`` both do nothing, and every other
function here answers as a single process would (rank 0 of 1), so the training loop
(:func:`diffusion_core.train.train`) is one code path for one process and for many.

How a run on W processes equals the run on one. Every process holds the whole data set and the
same two random generators, seeded alike. Each step, every process draws the same indices of the
global minibatch of B samples, and the same times t and noise eps for all B of them; then
process r keeps rows r B/W .. (r + 1) B/W - 1 (:func:`shard`) and computes the mean loss of its
B/W samples. DDP averages the gradients over the processes, and the average of W means of B/W
terms is the mean of the B terms: the gradient of the single-process loss. What differs is the
order of the float additions (a sum over B in one process, W partial sums added by the
all-reduce in many), so weights agree to rounding, not bit for bit. Drawing t and eps for the
whole batch on every process costs one batch of noise per process; it keeps the result
independent of W.

Only process 0 keeps the EMA of the weights and writes checkpoints (:func:`is_main_process`).
The book's appendix "Scaling out" shows the commands.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from diffusion_core.device import get_device

__all__ = [
    "average",
    "barrier",
    "cleanup",
    "is_main_process",
    "launched",
    "rank",
    "setup",
    "shard",
    "world_size",
    "wrap",
]

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (its variables are all set)."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def setup(device: str | torch.device | None = None) -> torch.device:
    """Join the process group that ``torchrun`` describes; return this process's device.

    ``device`` is chosen as by :func:`diffusion_core.device.get_device` (argument, else
    ``$DIFFUSION_DEVICE``, else the CPU). Under ``torchrun`` a CUDA device without an index
    becomes ``cuda:LOCAL_RANK``, one GPU per process, and the backend is NCCL; on the CPU it is
    gloo. Without ``torchrun`` nothing is joined and the device is returned as chosen. Calling
    it again in a process that has joined returns the device without joining twice.
    """
    device = device if isinstance(device, torch.device) else get_device(device)
    if not launched():
        return device
    local_rank = _environment_int("LOCAL_RANK")
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            rank=_environment_int("RANK"),
            world_size=_environment_int("WORLD_SIZE"),
        )
    return device


def cleanup() -> None:
    """Leave the process group (after the last collective call); a no-op outside one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank in the group, 0 outside one."""
    return dist.get_rank() if _initialized() else 0


def world_size() -> int:
    """The number of processes in the group, 1 outside one."""
    return dist.get_world_size() if _initialized() else 1


def is_main_process() -> bool:
    """Whether this is rank 0, the process that logs, keeps the EMA and writes checkpoints."""
    return rank() == 0


def barrier() -> None:
    """Wait until every process gets here (e.g. before reading a checkpoint rank 0 wrote)."""
    if _initialized():
        dist.barrier()


def shard(*items):
    """This process's rows of each item of a global batch: rows r n/W .. (r + 1) n/W - 1.

    An item is a tensor with a batch axis first, a list of n entries (such as the prompts of a
    minibatch) or ``None`` (an absent optional input, such as the labels of an unconditional
    run), which passes through. All items must have the same number n of rows, divisible by the
    world size W, so that every process gets the same number of samples (then DDP's average of
    the per-process mean losses is the mean over the global batch). In a single process the
    items come back unchanged.
    """
    present = [item for item in items if item is not None]
    if not present:
        raise ValueError("shard needs at least one tensor")
    for item in present:
        if not (isinstance(item, list) or (isinstance(item, torch.Tensor) and item.ndim >= 1)):
            raise TypeError("shard takes tensors with a batch axis first, lists (or None)")
    n = len(present[0])
    if any(len(item) != n for item in present):
        raise ValueError(f"the items must share their batch size, got {[len(i) for i in present]}")
    size, index = world_size(), rank()
    if size == 1:
        return items
    if n % size:
        raise ValueError(
            f"the global batch of {n} samples does not split evenly over {size} processes; "
            "choose a batch size divisible by the number of processes"
        )
    rows = slice(index * (n // size), (index + 1) * (n // size))
    return tuple(None if item is None else item[rows] for item in items)


def average(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of ``tensor`` over the processes (a new tensor; itself in a single process).

    A sum all-reduce divided by W (gloo has no averaging all-reduce); used to report the loss
    of the global batch, the mean of the per-process losses.
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"tensor must be a torch.Tensor, got {type(tensor).__name__}")
    if world_size() == 1:
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / world_size()


def wrap(net: nn.Module, device: torch.device) -> nn.Module:
    """``net`` inside DistributedDataParallel when there are several processes, else ``net``.

    DDP broadcasts rank 0's parameters and buffers when it is built, so every process starts
    from the same weights, and during ``backward`` it averages the gradients over the processes
    in buckets while the rest of the backward pass runs. The wrapper shares its parameters with
    ``net``: optimise, average and save ``net``, call the wrapper.
    """
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    if world_size() == 1:
        return net
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(net, device_ids=device_ids)


def _environment_int(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"${name} must be an integer, got {value!r}") from None
