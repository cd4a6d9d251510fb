"""One reproducible, resumable training loop; what it minimises is a pluggable objective.

Each step draws a minibatch of the data (indices with replacement), evaluates the objective on
it, takes an AdamW step (Loshchilov & Hutter 2019) after clipping the gradient's global norm,
and updates an exponential moving average (EMA) of the weights, the copy that is sampled from
(Ho et al. 2020 use decay 0.9999; Song & Ermon 2020 explain why averaging helps). The loop is
the same for every model of the library; the loss is a small callable object, as in EDM's
``training/loss.py`` (Karras et al. 2022):

    objective(net, batch, labels, generator) -> the loss of each sample, or their mean,

minimised on average over the minibatches: theta <- AdamW(theta, grad mean_i loss_i). The
objectives are :class:`diffusion_core.losses.DiffusionLoss` (denoisers),
:class:`diffusion_core.latent.LatentDiffusionLoss` (prompt-conditioned latent denoisers),
:class:`diffusion_core.autoencoder.ELBOLoss` (the autoencoder) and
:class:`diffusion_core.images.ClassifierLoss` (the digits classifier); the base class
:class:`diffusion_core.losses.Objective` says what one must do.

Checkpoints. A checkpoint is a :mod:`diffusion_core.checkpoints` file of kind "training_state":
the weights, the EMA, the optimizer's state and the generators' states as safetensors tensors,
the step, the settings and the losses so far (a float64 tensor), verified by SHA-256 when read.
:func:`save_checkpoint` writes one atomically; :func:`load_checkpoint` reads it back or raises
one ``ValueError`` naming the file (truncated, corrupted, another kind, an old ``torch.save``
file).

Two configurations. :class:`TrainConfig` is what is computed: steps, minibatch, optimiser,
learning-rate schedule (constant, or the half cosine of Loshchilov & Hutter 2017), EMA, seed.
:class:`RunConfig` is how it runs: logging, checkpoints, mixed precision, compilation. A run
resumed from a checkpoint must repeat the first (all of it but the number of steps, which may
grow unless the learning rate follows the cosine over them) and the objective's settings; the
second may change.

Reproducibility. All randomness comes from CPU ``torch.Generator`` objects seeded by
``config.seed``: ``data`` draws the minibatch indices and the objective's conditioning draws
(label or prompt dropout, :meth:`~diffusion_core.losses.Objective.condition`), ``noise`` the
objective's own draws (times, noise). By default they are two generators split from the seed by
NumPy's SeedSequence, so that the minibatches do not depend on how much noise the objective
draws; ``config.shared_generator`` makes them one generator seeded with the seed itself. Their
states are saved in every checkpoint with the weights, the EMA, the optimizer and the losses so
far, so a run resumed from a checkpoint continues exactly, bit for bit, as the uninterrupted run
would have (with the same torch version, device and thread count).

Devices. The net and the data are moved to ``device`` once; the generators stay on the CPU
(their draws are then the same on every device). On a GPU, ``run.mixed_precision`` runs the
objective under bfloat16 autocast with TF32 matrix products, and ``run.compile`` compiles the
net (:mod:`diffusion_core.device`); the global TF32 flags are restored after training.

Several processes. Under ``torchrun`` (after :func:`diffusion_core.distributed.setup`) the same
loop trains with DistributedDataParallel: every process draws the same global minibatch and the
objective draws for all of it and keeps this process's shard, so the run equals the
single-process run up to the order of float additions; only rank 0 keeps the EMA, shows
progress and writes checkpoints. Objectives call the net only through its ``forward``, which is
what DDP and ``torch.compile`` wrap.

No per-step synchronisation. Each step's loss stays on the device; the losses are read back to
the host together every ``run.log_every`` steps, at checkpoints and at the end, so a GPU runs
ahead of the Python loop instead of waiting for it at every step. A read-back that finds a
non-finite loss stops the run with a ``FloatingPointError`` naming the first such step (the
run diverged). Every checkpoint is preceded by a read-back and a check that the weights are
finite, and so is the end of the run: no checkpoint and no result ever holds a diverged model.

Quiet by default. The progress bar (tqdm, on stderr) shows only when asked for or when stderr is
a terminal and the environment variable ``DIFFUSION_PROGRESS`` is not ``"0"``; nothing else is
printed, so notebook outputs stay deterministic.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from diffusion_core import checkpoints, distributed
from diffusion_core._validation import (
    check_bool,
    check_float,
    check_labels,
    check_number,
    check_positive_int,
)
from diffusion_core.device import autocast_context, get_device, maybe_compile, tf32_context
from diffusion_core.losses import Objective
from diffusion_core.nets import count_parameters

__all__ = [
    "LR_SCHEDULES",
    "MAX_BATCH_SIZE",
    "MAX_STEPS",
    "PROGRESS_ENV",
    "RunConfig",
    "TrainConfig",
    "TrainResult",
    "ema_decay_at",
    "learning_rate_at",
    "load_checkpoint",
    "save_checkpoint",
    "train",
    "training_record",
    "update_ema",
]

PROGRESS_ENV = "DIFFUSION_PROGRESS"
MAX_STEPS = 100_000_000  # optimizer steps of one run (and log and checkpoint intervals)
MAX_BATCH_SIZE = 1_048_576  # samples per minibatch
LR_SCHEDULES = ("constant", "cosine")
_PLAIN = (bool, int, float, str, type(None))


@dataclass(frozen=True)
class TrainConfig:
    """What :func:`train` computes; every value is checked when the config is made.

    Attributes:
        steps: total number of optimizer steps, 1..MAX_STEPS (10**8; a resumed run counts the
            steps already done).
        batch_size: samples per minibatch, drawn with replacement, 1..MAX_BATCH_SIZE (2**20).
        lr, weight_decay: AdamW's learning rate (finite, > 0) and decoupled weight decay
            (finite, >= 0).
        lr_schedule: "constant", or "cosine": lr_k = lr (1 + cos(pi k / steps)) / 2 at step
            k = 0..steps-1 (:func:`learning_rate_at`).
        grad_clip: maximum global gradient norm (> 0), or None for no clipping.
        ema_decay: the EMA's decay in [0, 1), reached after a warm-up (:func:`ema_decay_at`),
            or None for no EMA.
        seed: seeds the generators of the run (0..2**64 - 1).
        shared_generator: one generator, seeded with ``seed``, for the minibatches and the
            objective's draws, instead of two split from it (see the module docstring).
    """

    steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    grad_clip: float | None = 1.0
    ema_decay: float | None = 0.999
    seed: int = 0
    shared_generator: bool = False

    def __post_init__(self):
        check_positive_int("steps", self.steps, maximum=MAX_STEPS)
        check_positive_int("batch_size", self.batch_size, maximum=MAX_BATCH_SIZE)
        check_number("lr", self.lr, 0.0, low_open=True, high_open=True)
        check_number("weight_decay", self.weight_decay, 0.0, high_open=True)
        if not isinstance(self.lr_schedule, str) or self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.grad_clip is not None:
            check_number("grad_clip", self.grad_clip, 0.0, low_open=True, high_open=True)
        if self.ema_decay is not None:
            check_number("ema_decay", self.ema_decay, 0.0, 1.0, high_open=True)
        check_positive_int("seed", self.seed, minimum=0, maximum=2**64 - 1)
        check_bool("shared_generator", self.shared_generator)


@dataclass(frozen=True)
class RunConfig:
    """How :func:`train` runs: settings that do not change what a CPU computes.

    Attributes:
        log_every: the progress bar shows the mean loss of the last ``log_every`` steps, and
            the losses are read back (and checked to be finite) every that many steps
            (1..MAX_STEPS).
        checkpoint_every: save a checkpoint every that many steps (0: only at the end;
            0..MAX_STEPS).
        checkpoint_path: where checkpoints go (None: no checkpoints).
        mixed_precision: on CUDA, bfloat16 autocast for the objective and TF32 for float32
            matrix products; False trains in full float32 with TF32 off. The global TF32 flags
            are restored after training. No effect on the CPU.
        compile: run the net through ``torch.compile`` (worth it for long GPU runs).
    """

    log_every: int = 100
    checkpoint_every: int = 0
    checkpoint_path: str | os.PathLike | None = None
    mixed_precision: bool = True
    compile: bool = False

    def __post_init__(self):
        check_positive_int("log_every", self.log_every, maximum=MAX_STEPS)
        check_positive_int("checkpoint_every", self.checkpoint_every, minimum=0, maximum=MAX_STEPS)
        path = self.checkpoint_path
        if path is not None and not isinstance(path, str | os.PathLike):
            raise TypeError(f"checkpoint_path must be a path or None, got {type(path).__name__}")
        if self.checkpoint_every and path is None:
            raise ValueError("checkpoint_every > 0 needs a checkpoint_path to write to")
        check_bool("mixed_precision", self.mixed_precision)
        check_bool("compile", self.compile)


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        net: the trained net, the one passed in (updated in place).
        losses: the training loss of every step from step 1 on (a resumed run includes the
            losses before the checkpoint).
        ema: a deep copy of the net holding the EMA weights, in eval mode, without gradients;
            None when ``config.ema_decay`` is None.
        step: the number of optimizer steps done.
    """

    net: nn.Module = field(repr=False)
    losses: list[float] = field(repr=False)
    ema: nn.Module | None = field(repr=False)
    step: int


def training_record(result: TrainResult, seconds: float, cpu_seconds: float) -> dict:
    """What a packaged checkpoint keeps of the run that made it: the net's parameter count, the
    loss of every step (float32), the wall-clock and CPU ``seconds`` the run took (finite,
    >= 0, rounded to 0.1 s), the number of torch threads and the torch version."""
    if not isinstance(result, TrainResult):
        raise TypeError(f"result must be a TrainResult, got {type(result).__name__}")
    seconds = check_number("seconds", seconds, 0.0)
    cpu_seconds = check_number("cpu_seconds", cpu_seconds, 0.0)
    return {
        "parameters": count_parameters(result.net),
        "losses": torch.tensor(result.losses, dtype=torch.float32),
        "train_seconds": round(seconds, 1),
        "cpu_seconds": round(cpu_seconds, 1),
        "threads": torch.get_num_threads(),
        "torch_version": str(torch.__version__),
    }


def ema_decay_at(decay: float, step: int) -> float:
    """The EMA decay at update number ``step`` = 1, 2, ...: min(decay, (1 + step) / (10 + step)).

    The warm-up of TensorFlow's ``ExponentialMovingAverage(num_updates=...)``: early updates
    forget quickly (0.18 at step 1, 0.5 at step 8, 0.9 at step 80), so the average is not
    dominated by the random initial weights; from about 9,000 steps on, the decay is 0.999.
    """
    decay = check_number("decay", decay, 0.0, 1.0)
    step = check_positive_int("step", step, maximum=MAX_STEPS)
    return min(decay, (1 + step) / (10 + step))


def learning_rate_at(config: TrainConfig, step: int) -> float:
    """The learning rate of step ``step`` = 0..steps-1: lr, or lr (1 + cos(pi step / steps)) / 2.

    The cosine decays from lr at the first step towards 0 after the last (Loshchilov & Hutter
    2017, SGDR without restarts): large steps while the loss falls fast, small ones to settle.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    check_positive_int("step", step, minimum=0, maximum=config.steps - 1)
    if config.lr_schedule == "constant":
        return config.lr
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * step / config.steps))


@torch.no_grad()
def update_ema(ema: nn.Module, net: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * net, parameter by parameter; buffers are copied.

    ``decay`` must be a finite number in [0, 1] (0 copies the net, 1 keeps the average): a NaN
    would silently turn every averaged weight into NaN.
    """
    if not isinstance(ema, nn.Module):
        raise TypeError(f"ema must be a torch.nn.Module, got {type(ema).__name__}")
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    decay = check_number("decay", decay, 0.0, 1.0)
    for averaged, current in zip(ema.parameters(), net.parameters(), strict=True):
        averaged.lerp_(current, 1.0 - decay)
    for averaged, current in zip(ema.buffers(), net.buffers(), strict=True):
        averaged.copy_(current)


def train(
    net: nn.Module,
    data: torch.Tensor,
    objective: Objective,
    config: TrainConfig,
    *,
    labels: torch.Tensor | None = None,
    run: RunConfig | None = None,
    progress: bool | None = None,
    device: str | torch.device | None = None,
    resume_from: str | os.PathLike | None = None,
) -> TrainResult:
    """Train ``net`` in place on ``data`` (N, ...) to minimise ``objective``.

    ``labels``: an integer tensor (N,) with the class of each data point, handed to the
    objective with its minibatch (class-conditional denoisers, captions, the classifier).
    ``run``: logging, checkpoints and device switches (:class:`RunConfig`; default settings
    when None). ``progress``: True or False shows or hides the progress bar; None (the default)
    shows it only when stderr is a terminal and ``$DIFFUSION_PROGRESS`` is not "0".
    ``device``: where to compute (None: :func:`diffusion_core.device.get_device`, the CPU
    unless the environment says otherwise). ``resume_from``: a checkpoint written by a run with
    the same config and objective (see the module docstring); training continues from its step
    up to ``config.steps`` exactly as the uninterrupted run would.

    Raises ``FloatingPointError`` when a loss or, at a checkpoint or the end, a weight is not
    finite (the run diverged); the message names the first non-finite step.
    """
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    _check_data(data)
    if not isinstance(objective, Objective):
        raise TypeError(f"objective must be an Objective, got {type(objective).__name__}")
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    run = RunConfig() if run is None else run
    if not isinstance(run, RunConfig):
        raise TypeError(f"run must be a RunConfig or None, got {type(run).__name__}")
    labels = None if labels is None else check_labels("labels", labels, data.shape[0]).cpu()
    if resume_from is not None and not isinstance(resume_from, str | os.PathLike):
        raise TypeError(
            f"resume_from must be a path (str or os.PathLike) or None, got "
            f"{type(resume_from).__name__}"
        )
    show = _show_progress(progress) and distributed.is_main_process()
    device = device if isinstance(device, torch.device) else get_device(device)
    with tf32_context(device, run.mixed_precision):
        state = _start(net.to(device).train(), objective, config, resume_from)
        model = maybe_compile(distributed.wrap(net, device), run.compile)  # shares net's weights
        _loop(model, data.to(device), labels, objective, config, run, state, show)
    return TrainResult(net=net, losses=state.losses, ema=state.ema, step=state.step)


@dataclass
class _State:
    """What a step changes and a checkpoint holds."""

    net: nn.Module
    ema: nn.Module | None
    optimizer: torch.optim.Optimizer
    generators: dict[str, torch.Generator]
    trajectory: dict
    step: int = 0
    losses: list[float] = field(default_factory=list)


def _start(net, objective, config, resume_from) -> _State:
    """A fresh run's state, or the state of the checkpoint ``resume_from``."""
    trained = [parameter for parameter in net.parameters() if parameter.requires_grad]
    state = _State(
        net=net,
        ema=None if config.ema_decay is None else _ema_copy(net),
        optimizer=torch.optim.AdamW(trained, lr=config.lr, weight_decay=config.weight_decay),
        generators=_generators(config.seed, config.shared_generator),
        trajectory=_trajectory(config, objective),
    )
    if resume_from is not None:
        _restore(load_checkpoint(resume_from), state, config.steps, resume_from)
    return state


def _loop(model, data, labels, objective, config, run, state, show) -> None:
    """Steps ``state.step + 1`` to ``config.steps``, with read-backs and checkpoints."""
    pending = []  # losses of the steps since the last read-back, still on the device
    with tqdm(total=config.steps, initial=state.step, disable=not show, unit="step") as bar:
        while state.step < config.steps:
            pending.append(_step(model, data, labels, objective, config, run, state))
            bar.update(1)
            checkpoint = _checkpoint_due(run, state.step, config.steps)
            if state.step % run.log_every == 0 or checkpoint or state.step == config.steps:
                state.losses += _read_back(pending, len(state.losses), config)
                pending = []
            if state.step % run.log_every == 0:
                recent = state.losses[-run.log_every :]
                bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}", refresh=False)
            if checkpoint or state.step == config.steps:
                _check_weights(state, config)
            if checkpoint:
                save_checkpoint(run.checkpoint_path, _checkpoint(state))


def _step(model, data, labels, objective, config, run, state) -> torch.Tensor:
    """One optimizer step on a fresh minibatch; returns its loss (global batch) on the device."""
    for group in state.optimizer.param_groups:
        group["lr"] = learning_rate_at(config, state.step)
    data_generator, noise_generator = state.generators["data"], state.generators["noise"]
    index = torch.randint(data.shape[0], (config.batch_size,), generator=data_generator)
    batch_labels = objective.condition(None if labels is None else labels[index], data_generator)
    with autocast_context(data.device, run.mixed_precision):
        loss = objective(model, data[index.to(data.device)], batch_labels, noise_generator)
        loss = loss.mean()
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip is not None:
        nn.utils.clip_grad_norm_(state.net.parameters(), config.grad_clip)
    state.optimizer.step()
    state.step += 1
    if state.ema is not None and distributed.is_main_process():
        update_ema(state.ema, state.net, ema_decay_at(config.ema_decay, state.step))
    return distributed.average(loss.detach())


def _read_back(pending: list[torch.Tensor], done: int, config: TrainConfig) -> list[float]:
    """The pending losses as floats, in one transfer; a non-finite one stops the run."""
    values = torch.stack(pending).tolist()
    for offset, value in enumerate(values):
        if not math.isfinite(value):
            raise FloatingPointError(
                f"training diverged: the loss of step {done + offset + 1} is {value}; "
                f"{_divergence_hint(config)}"
            )
    return values


def _check_weights(state: _State, config: TrainConfig) -> None:
    """Stop if a weight of the net or the EMA is not finite (a step can overflow the weights
    while its own loss, computed before the step, was finite); one read-back for all."""
    modules = [module for module in (state.net, state.ema) if module is not None]
    flags = [
        torch.isfinite(p).all() for m in modules for p in m.parameters() if p.is_floating_point()
    ]
    if flags and not bool(torch.stack(flags).all()):
        raise FloatingPointError(
            f"training diverged: the weights are not finite after step {state.step}; "
            f"{_divergence_hint(config)}"
        )


def _divergence_hint(config: TrainConfig) -> str:
    clip = "no gradient clipping" if config.grad_clip is None else f"grad_clip={config.grad_clip}"
    return (
        f"the likely cause is a learning rate too large (lr={config.lr:g}, {clip}): try a "
        "smaller lr or a grad_clip. Stopped without writing a checkpoint of it"
    )


def _ema_copy(net: nn.Module) -> nn.Module:
    ema = copy.deepcopy(net).requires_grad_(False).eval()
    for parameter in ema.parameters():
        parameter.grad = None
    return ema


def _check_data(data) -> None:
    check_float("data", data)
    if data.ndim < 2 or data.shape[0] < 1:
        raise ValueError(f"data must have shape (N, ...) with N >= 1, got {tuple(data.shape)}")


def _checkpoint_due(run: RunConfig, step: int, steps: int) -> bool:
    if run.checkpoint_path is None or not distributed.is_main_process():
        return False
    every = run.checkpoint_every
    return step == steps or (every > 0 and step % every == 0)


def _generators(seed: int, shared: bool) -> dict[str, torch.Generator]:
    """The "data" and "noise" generators: one seeded with ``seed``, or two split from it."""
    if shared:
        generator = torch.Generator().manual_seed(seed)
        return {"data": generator, "noise": generator}
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


def _trajectory(config: TrainConfig, objective: Objective) -> dict:
    """The settings a resumed run must repeat, as plain data: the config (its steps only under
    the cosine schedule, which depends on them) and the objective's plain-valued fields."""
    settings = dataclasses.asdict(config)
    steps = settings.pop("steps")
    if config.lr_schedule == "cosine":
        settings["steps"] = steps
    plain = {}
    if dataclasses.is_dataclass(objective):
        plain = {item.name: getattr(objective, item.name) for item in dataclasses.fields(objective)}
    plain = {name: value for name, value in plain.items() if isinstance(value, _PLAIN)}
    return {"config": settings, "objective": {"kind": type(objective).__name__, **plain}}


def _checkpoint(state: _State) -> dict:
    """Everything a resumed run needs: tensors (the losses too, a float64 tensor, so that they
    come back bit for bit), dicts, lists, numbers and strings."""
    return {
        "step": state.step,
        "losses": torch.tensor(state.losses, dtype=torch.float64),
        "net": state.net.state_dict(),
        "ema": None if state.ema is None else state.ema.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "generators": {name: g.get_state() for name, g in state.generators.items()},
        "trajectory": state.trajectory,
    }


def _restore(saved: dict, state: _State, steps: int, path) -> None:
    """Put the checkpoint ``saved`` (read from ``path``) into ``state``, after checking that
    it was written with the same settings."""
    try:
        for part, current in state.trajectory.items():
            written = saved["trajectory"][part]
            for name in [*current, *(name for name in written if name not in current)]:
                if written.get(name) != current.get(name):
                    raise ValueError(
                        f"resume_from was written with {name}={written.get(name)!r}, but {part} "
                        f"has {name}={current.get(name)!r}; a resumed run must use the same "
                        "settings"
                    )
        if saved["step"] > steps:
            raise ValueError(f"resume_from is at step {saved['step']}, past config.steps = {steps}")
        state.net.load_state_dict(saved["net"])
        if state.ema is not None:
            state.ema.load_state_dict(saved["ema"])
        state.optimizer.load_state_dict(saved["optimizer"])
        for name, generator in state.generators.items():
            generator.set_state(saved["generators"][name])
        state.step, state.losses = saved["step"], saved["losses"].tolist()
    except (KeyError, TypeError, AttributeError, RuntimeError) as err:
        raise checkpoints.CheckpointError(
            f"{path} is a training state that does not fit this net, optimizer or config ({err})"
        ) from None


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write the training state ``state`` to ``path`` atomically, as a checkpoint of kind
    "training_state" (:func:`diffusion_core.checkpoints.save`): the file is either the old one
    or the new one, and temporary files left by a killed save of it are removed."""
    checkpoints.save(path, state, checkpoints.TRAINING_STATE)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """The training state at ``path`` (:func:`diffusion_core.checkpoints.load`): data only,
    never code, verified by its SHA-256; a ``ValueError`` naming the file if it is not a
    training state that reads back intact."""
    return checkpoints.load(path, checkpoints.TRAINING_STATE)
