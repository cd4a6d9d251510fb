"""A small, reproducible, resumable training loop for denoisers.

Each step draws a minibatch of the data, evaluates :func:`diffusion_core.losses.diffusion_loss`,
takes an AdamW step (Loshchilov & Hutter 2019) after clipping the gradient's global norm, and
updates an exponential moving average (EMA) of the weights, the copy that is sampled from
(Ho et al. 2020 use decay 0.9999; Song & Ermon 2020 explain why averaging helps).

Reproducibility. All randomness comes from two CPU ``torch.Generator`` objects derived from
``config.seed``: ``data`` draws the minibatch indices (with replacement) and ``noise`` draws the
times and the noise of the loss. Their states are saved in every checkpoint with the weights,
the EMA, the optimizer and the losses so far, so a run resumed from a checkpoint continues
exactly, bit for bit, as the uninterrupted run would have (with the same torch version, device
and thread count).

Devices. The net, the data and the schedule's table are moved to ``device`` once; the
generators stay on the CPU (their draws are then the same on every device) and each step copies
its indices, times and noise to the device, a transfer of one batch of noise. The loop is the
same on a CPU and a GPU; on a GPU, ``config.mixed_precision`` runs the forward pass under
bfloat16 autocast with TF32 matrix products, and ``config.compile`` compiles the net
(:mod:`diffusion_core.device`).

Several processes. Under ``torchrun`` (after :func:`diffusion_core.distributed.setup`) the same
loop trains with DistributedDataParallel: every process draws the same global minibatch, times
and noise and keeps its shard of them, so the run equals the single-process run up to the order
of float additions; only rank 0 keeps the EMA, shows progress and writes checkpoints.

No per-step synchronisation. Each step's loss stays on the device; the losses are read back to
the host together every ``config.log_every`` steps, at checkpoints and at the end, so a GPU
runs ahead of the Python loop instead of waiting for it at every step.

Quiet by default. The progress bar (tqdm, on stderr) shows only when asked for or when stderr is
a terminal and the environment variable ``DIFFUSION_PROGRESS`` is not ``"0"``; nothing else is
printed, so notebook outputs stay deterministic.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import sys
import tempfile
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from diffusion_core import distributed
from diffusion_core._validation import check_float, check_positive_int
from diffusion_core.device import autocast_context, get_device, maybe_compile, use_tf32
from diffusion_core.losses import PREDICTIONS, WEIGHTINGS, per_sample_loss, sample_t_and_noise
from diffusion_core.schedules import Schedule

__all__ = [
    "TrainConfig",
    "TrainResult",
    "ema_decay_at",
    "load_checkpoint",
    "save_checkpoint",
    "train",
    "update_ema",
]

PROGRESS_ENV = "DIFFUSION_PROGRESS"
CHECKPOINT_FORMAT = 1
# The fields that determine the trajectory: a resumed run must use the same values.
_TRAJECTORY_FIELDS = (
    "batch_size",
    "lr",
    "weight_decay",
    "ema_decay",
    "grad_clip",
    "prediction",
    "weighting",
    "min_snr_gamma",
    "seed",
    "label_dropout",
    "null_label",
)


@dataclass(frozen=True)
class TrainConfig:
    """Settings of :func:`train`; every value is checked when the config is made.

    Attributes:
        steps: total number of optimizer steps (a resumed run counts the steps already done).
        batch_size: samples per minibatch, drawn with replacement.
        lr, weight_decay: AdamW's learning rate (> 0) and decoupled weight decay (>= 0).
        ema_decay: the EMA's decay in [0, 1), reached after a warm-up (:func:`ema_decay_at`).
        grad_clip: maximum global gradient norm (> 0), or None for no clipping.
        prediction, weighting, min_snr_gamma: the loss (:mod:`diffusion_core.losses`).
        seed: seeds the two generators of the run.
        label_dropout, null_label: for class-conditional training (``train(..., labels=...)``),
            each label of a minibatch is replaced by ``null_label``, the network's "no
            condition" class, with probability ``label_dropout`` (Ho & Salimans 2022, Alg. 1);
            the draws come from the data generator, after the minibatch indices.
        log_every: the progress bar shows the mean loss of the last ``log_every`` steps.
        checkpoint_every: save a checkpoint every that many steps (0: only at the end).
        checkpoint_path: where checkpoints go (None: no checkpoints).
        mixed_precision: on CUDA, bfloat16 autocast for the forward pass and the loss, and TF32
            for float32 matrix products; False trains in full float32 and turns TF32 off (a
            global setting, left as set after training). No effect on the CPU.
        compile: run the net through ``torch.compile`` (worth it for long GPU runs).
    """

    steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    grad_clip: float | None = 1.0
    prediction: str = "eps"
    weighting: str = "none"
    min_snr_gamma: float = 5.0
    seed: int = 0
    label_dropout: float = 0.0
    null_label: int | None = None
    log_every: int = 100
    checkpoint_every: int = 0
    checkpoint_path: str | os.PathLike | None = None
    mixed_precision: bool = True
    compile: bool = False

    def __post_init__(self):
        check_positive_int("steps", self.steps)
        check_positive_int("batch_size", self.batch_size)
        _check_number("lr", self.lr, low=0.0, low_open=True)
        _check_number("weight_decay", self.weight_decay, low=0.0)
        _check_number("ema_decay", self.ema_decay, low=0.0, high=1.0)
        if self.grad_clip is not None:
            _check_number("grad_clip", self.grad_clip, low=0.0, low_open=True)
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        _check_number("min_snr_gamma", self.min_snr_gamma, low=0.0, low_open=True)
        check_positive_int("seed", self.seed, minimum=0, maximum=2**63 - 1)
        _check_number("label_dropout", self.label_dropout, low=0.0, high=1.0)
        if self.null_label is not None:
            check_positive_int("null_label", self.null_label, minimum=0)
        if self.label_dropout > 0 and self.null_label is None:
            raise ValueError("label_dropout > 0 needs the null_label to replace labels with")
        check_positive_int("log_every", self.log_every)
        check_positive_int("checkpoint_every", self.checkpoint_every, minimum=0)
        path = self.checkpoint_path
        if path is not None and not isinstance(path, str | os.PathLike):
            raise TypeError(f"checkpoint_path must be a path or None, got {type(path).__name__}")
        if self.checkpoint_every and path is None:
            raise ValueError("checkpoint_every > 0 needs a checkpoint_path to write to")
        for name in ("mixed_precision", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")


@dataclass
class TrainResult:
    """What :func:`train` returns; the trained net itself is the one passed in, updated in place.

    Attributes:
        losses: the training loss of every step from step 1 on (a resumed run includes the
            losses before the checkpoint).
        ema: a deep copy of the net holding the EMA weights, in eval mode, without gradients.
        step: the number of optimizer steps done.
    """

    losses: list[float] = field(repr=False)
    ema: nn.Module = field(repr=False)
    step: int


def ema_decay_at(decay: float, step: int) -> float:
    """The EMA decay at update number ``step`` = 1, 2, ...: min(decay, (1 + step) / (10 + step)).

    The warm-up of TensorFlow's ``ExponentialMovingAverage(num_updates=...)``: early updates
    forget quickly (0.18 at step 1, 0.5 at step 8, 0.9 at step 80), so the average is not
    dominated by the random initial weights; from about 9,000 steps on, the decay is 0.999.
    """
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def update_ema(ema: nn.Module, net: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * net, parameter by parameter; buffers are copied."""
    for averaged, current in zip(ema.parameters(), net.parameters(), strict=True):
        averaged.lerp_(current, 1.0 - decay)
    for averaged, current in zip(ema.buffers(), net.buffers(), strict=True):
        averaged.copy_(current)


def train(
    net: nn.Module,
    data: torch.Tensor,
    schedule: Schedule,
    config: TrainConfig,
    progress: bool | None = None,
    device: str | torch.device | None = None,
    resume_from: str | os.PathLike | None = None,
    labels: torch.Tensor | None = None,
) -> TrainResult:
    """Train ``net`` in place on ``data`` (N, ...) to predict ``config.prediction``.

    ``progress``: True or False shows or hides the progress bar; None (the default) shows it
    only when stderr is a terminal and ``$DIFFUSION_PROGRESS`` is not "0". ``device``: where to
    compute (None: :func:`diffusion_core.device.get_device`, the CPU unless the environment
    says otherwise). ``resume_from``: a checkpoint written by a run with the same config (the
    steps and checkpoint settings may differ); training continues from its step up to
    ``config.steps`` exactly as the uninterrupted run would. ``labels``: an integer tensor (N,)
    with the class of each data point, for a class-conditional net called as
    ``net(x, t, labels)``; minibatch labels are dropped to ``config.null_label`` with
    probability ``config.label_dropout``. Without labels the run is exactly as before.
    """
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    check_float("data", data)
    if data.ndim < 2 or data.shape[0] < 1:
        raise ValueError(f"data must have shape (N, ...) with N >= 1, got {tuple(data.shape)}")
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a Schedule, got {type(schedule).__name__}")
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    labels = _check_labels(labels, data.shape[0])
    show = _show_progress(progress) and distributed.is_main_process()
    device = device if isinstance(device, torch.device) else get_device(device)
    use_tf32(device, config.mixed_precision)

    net.to(device).train()
    data = data.to(device)
    schedule = Schedule(schedule.betas.to(device))
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    ema = _ema_copy(net)
    generators = _generators(config.seed)
    step, losses = 0, []
    if resume_from is not None:
        state = load_checkpoint(resume_from)
        step, losses = _restore(state, config, net, ema, optimizer, generators)
    model = maybe_compile(distributed.wrap(net, device), config.compile)  # shares net's weights

    pending = []  # losses of the steps since the last read-back, still on the device
    with tqdm(total=config.steps, initial=step, disable=not show, unit="step") as bar:
        while step < config.steps:
            index = torch.randint(data.shape[0], (config.batch_size,), generator=generators["data"])
            batch_labels = (
                None if labels is None else _drop_labels(labels[index], config, generators)
            )
            loss = _train_step(
                model, optimizer, data[index.to(device)], schedule, config, generators, batch_labels
            )
            step += 1
            if distributed.is_main_process():
                update_ema(ema, net, ema_decay_at(config.ema_decay, step))
            pending.append(loss)
            bar.update(1)
            checkpoint = _checkpoint_due(config, step) and distributed.is_main_process()
            if step % config.log_every == 0 or checkpoint or step == config.steps:
                losses += torch.stack(pending).tolist()  # one read-back for all pending steps
                pending = []
            if step % config.log_every == 0:
                recent = losses[-config.log_every :]
                bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}", refresh=False)
            if checkpoint:
                state = _state(config, step, losses, net, ema, optimizer, generators)
                save_checkpoint(config.checkpoint_path, state)
    return TrainResult(losses=losses, ema=ema, step=step)


def _ema_copy(net: nn.Module) -> nn.Module:
    ema = copy.deepcopy(net).requires_grad_(False).eval()
    for parameter in ema.parameters():
        parameter.grad = None
    return ema


def _train_step(net, optimizer, batch, schedule, config, generators, labels=None):
    """One step of :func:`diffusion_core.losses.diffusion_loss` on this process's shard.

    t and eps are drawn for the whole global batch, then sharded (a no-op in one process, where
    this is exactly ``diffusion_loss``); the returned loss is that of the global batch.
    """
    t, noise = sample_t_and_noise(batch, schedule, generators["noise"])
    labels = None if labels is None else labels.to(batch.device)
    batch, t, noise, labels = distributed.shard(batch, t, noise, labels)
    with autocast_context(batch.device, config.mixed_precision):
        loss = per_sample_loss(
            net,
            batch,
            schedule,
            t,
            noise,
            config.prediction,
            config.weighting,
            config.min_snr_gamma,
            labels=labels,
        ).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip is not None:
        nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
    optimizer.step()
    return distributed.average(loss.detach())


def _check_labels(labels, n: int) -> torch.Tensor | None:
    """None, or an integer tensor of shape (n,), kept on the CPU where the generators are."""
    if labels is None:
        return None
    if (
        not isinstance(labels, torch.Tensor)
        or labels.dtype.is_floating_point
        or labels.is_complex()
    ):
        raise TypeError("labels must be an integer torch.Tensor of shape (N,) or None")
    if labels.dtype == torch.bool:
        raise TypeError("labels must be integers, got dtype torch.bool")
    if labels.shape != (n,):
        raise ValueError(
            f"labels must have shape ({n},), one per data point, got {tuple(labels.shape)}"
        )
    return labels.cpu()


def _drop_labels(labels: torch.Tensor, config: TrainConfig, generators) -> torch.Tensor:
    """Replace each label by ``config.null_label`` with probability ``config.label_dropout``."""
    if config.label_dropout == 0:
        return labels
    drop = torch.rand(labels.shape, generator=generators["data"]) < config.label_dropout
    return labels.masked_fill(drop, config.null_label)


def _checkpoint_due(config: TrainConfig, step: int) -> bool:
    if config.checkpoint_path is None:
        return False
    every = config.checkpoint_every
    return step == config.steps or (every > 0 and step % every == 0)


def _generators(seed: int) -> dict[str, torch.Generator]:
    """Two independent CPU generators from one seed, via NumPy's SeedSequence."""
    data_seed, noise_seed = np.random.SeedSequence(seed).generate_state(2, dtype=np.uint64)
    return {
        "data": torch.Generator().manual_seed(int(data_seed)),
        "noise": torch.Generator().manual_seed(int(noise_seed)),
    }


def _show_progress(progress) -> bool:
    if progress is None:
        isatty = getattr(sys.stderr, "isatty", None)
        return bool(isatty and isatty()) and os.environ.get(PROGRESS_ENV, "1") != "0"
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be True, False or None, got {type(progress).__name__}")
    return progress


# --- checkpoints ----------------------------------------------------------------------------


def _state(config, step, losses, net, ema, optimizer, generators) -> dict:
    """Everything a resumed run needs, as tensors, dicts, lists, numbers and strings only."""
    return {
        "format": CHECKPOINT_FORMAT,
        "step": step,
        "losses": list(losses),
        "net": net.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": optimizer.state_dict(),
        "generators": {name: g.get_state() for name, g in generators.items()},
        "config": {name: getattr(config, name) for name in _TRAJECTORY_FIELDS},
    }


def _restore(state, config, net, ema, optimizer, generators) -> tuple[int, list[float]]:
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"resume_from is not a checkpoint of format {CHECKPOINT_FORMAT}")
    for name in _TRAJECTORY_FIELDS:
        # Checkpoints written before a field existed hold its default.
        saved, current = (
            state["config"].get(name, getattr(TrainConfig, name)),
            getattr(config, name),
        )
        if saved != current:
            raise ValueError(
                f"resume_from was written with {name}={saved!r}, but config has "
                f"{name}={current!r}; a resumed run must use the same settings"
            )
    step = state["step"]
    if step > config.steps:
        raise ValueError(f"resume_from is at step {step}, past config.steps = {config.steps}")
    net.load_state_dict(state["net"])
    ema.load_state_dict(state["ema"])
    optimizer.load_state_dict(state["optimizer"])
    for name, generator in generators.items():
        generator.set_state(state["generators"][name])
    return step, list(state["losses"])


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` to ``path`` atomically: the file is either the old one or the new one.

    The state goes to a temporary file in the same directory, which is flushed and fsync-ed
    and then renamed over ``path`` with ``os.replace`` (atomic on POSIX and Windows). If
    anything fails, the temporary file is removed and an existing checkpoint stays as it was.
    """
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    path = os.path.abspath(os.fspath(path))
    directory, name = os.path.split(path)
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise
    _fsync_directory(directory)


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a checkpoint with ``torch.load(weights_only=True)``: data only, never code."""
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    return torch.load(path, map_location=map_location, weights_only=True)


def _fsync_directory(directory: str) -> None:
    """Make the rename itself durable (POSIX; Windows cannot open a directory)."""
    if os.name != "posix":
        return
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _check_number(name, value, low=-math.inf, high=math.inf, low_open=False) -> float:
    """A finite real number in [low, high) (or (low, high) with ``low_open``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    above = value > low if low_open else value >= low
    if not (math.isfinite(value) and above and value < high):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g})"
        raise ValueError(f"{name} must be a finite number in {interval}, got {value}")
    return float(value)
