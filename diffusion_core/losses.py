"""Training objectives: denoising score matching with eps-, x0- or v-prediction and SNR weights.

One training example is a clean sample x0, a time t drawn uniformly from 1..T and noise
eps ~ N(0, I). With (scale, std) = ``schedule.marginal(t)`` the network sees

    x_t = scale x0 + std eps

and predicts one of three targets (Ho et al. 2020; Salimans & Ho 2022):

    eps,    x0,    v = scale eps - std x0.

Each loss is the squared error of its target, averaged over the dimensions of one sample.

How the three relate. Write SNR = scale^2 / std^2 and remember scale^2 + std^2 = 1 for the
variance-preserving schedules of :mod:`diffusion_core.schedules`. A prediction of any one target
fixes the other two through x_t = scale x0 + std eps, x0 = scale x_t - std v and
eps = std x_t + scale v, so the errors are proportional, per sample:

    ||x0 - x0_hat||^2 = (std / scale)^2 ||eps - eps_hat||^2 = std^2 ||v - v_hat||^2,
    ||eps - eps_hat||^2 = scale^2 ||v - v_hat||^2.

In terms of SNR: L_x0 = L_eps / SNR = L_v / (SNR + 1). Training with one target under a weight
is the same objective as training with another target under the converted weight. Every
weighting here is therefore defined once, as a weight w(t) on the x0 error, and converted:

    weighting    w(t) on L_x0       weight on L_eps         weight on L_v
    "snr"        SNR                1                       SNR / (SNR + 1)
    "min_snr"    min(SNR, gamma)    min(SNR, gamma) / SNR   min(SNR, gamma) / (SNR + 1)

"snr" is the plain eps-loss of DDPM (Ho et al. 2020, L_simple) whatever the target;
"min_snr" is the Min-SNR-gamma weighting of Hang et al. (2023), which clips
the weight of the nearly clean times, where SNR is large, at gamma (5 in the paper). The weight
min(SNR, gamma) / SNR on L_eps is computed as min(1, gamma / SNR), which is 1 (not 0 / 0) at a
zero-terminal-SNR step. "none" puts weight 1 on the chosen target, so that the eps-, x0- and
v-losses then differ by the factors above.

Randomness comes only from the ``torch.Generator`` passed in, drawn before the network runs:
the same generator state gives the same t and eps whatever the network.

Training objectives. :func:`diffusion_core.train.train` minimises an :class:`Objective`, a small
callable ``objective(net, batch, labels, generator)`` that returns the loss of each sample (or
their mean), as EDM's ``training/loss.py`` does (Karras et al. 2022). :class:`DiffusionLoss` is
the one of this module: :func:`per_sample_loss` at t and eps from :func:`sample_t_and_noise`,
with label dropout for class-conditional networks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from diffusion_core import distributed
from diffusion_core._validation import (
    MAX_LEVEL,
    as_tensor,
    check_batch,
    check_callable,
    check_float,
    check_labels,
    check_number,
    check_positive_int,
    check_timesteps,
    check_torch_generator,
    per_sample,
)
from diffusion_core.discrete import (
    ESTIMATORS,
    MASK_SCHEDULES,
    autoregressive_nll,
    masked_cross_entropy,
    masked_draw,
)
from diffusion_core.flow import ot_couple, path_coefficients
from diffusion_core.forward import q_sample
from diffusion_core.parameterization import PREDICTIONS
from diffusion_core.schedules import Process, RectifiedFlow, Schedule

__all__ = [
    "COUPLINGS",
    "PREDICTIONS",
    "TIME_SAMPLERS",
    "WEIGHTINGS",
    "DiffusionLoss",
    "AutoregressiveLoss",
    "FlowMatchingLoss",
    "MaskedDiffusionLoss",
    "Objective",
    "diffusion_loss",
    "flow_matching_eps_weight",
    "flow_matching_loss",
    "flow_matching_target",
    "loss_weight",
    "per_sample_loss",
    "sample_flow_time",
    "sample_t_and_noise",
    "target",
]

WEIGHTINGS = ("none", "snr", "min_snr")


def sample_t_and_noise(
    x0: torch.Tensor, schedule: Schedule, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw t ~ Uniform{1..T} (int64, shape (n,)) and eps ~ N(0, I) shaped like ``x0``.

    Both come from ``generator``, in that order, on the generator's device, and are then moved
    to ``x0``'s device: a CPU generator gives the same draws on every device.
    """
    _check_schedule(schedule)
    check_float("x0", x0)
    check_torch_generator("generator", generator)
    if x0.ndim < 2:
        raise ValueError(f"x0 must have shape (n, ...) with a batch axis first, got {x0.ndim}-D")
    where = generator.device
    t = torch.randint(1, schedule.T + 1, (x0.shape[0],), generator=generator, device=where)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=where)
    return t.to(x0.device), noise.to(x0.device)


def target(
    x0: torch.Tensor, noise: torch.Tensor, scale: torch.Tensor, std: torch.Tensor, prediction: str
) -> torch.Tensor:
    """What the network should output: eps, x0 or v = scale eps - std x0 (Salimans & Ho 2022).

    ``scale`` and ``std`` hold one value per sample (shape (n,)) or one for all. The result has
    ``x0``'s dtype; v is formed in float64.
    """
    _check_prediction(prediction)
    if prediction == "eps":
        return noise
    if prediction == "x0":
        return x0
    v = per_sample(scale, x0) * noise.double() - per_sample(std, x0) * x0.double()
    return v.to(x0.dtype)


def loss_weight(
    schedule: Schedule, t, prediction: str = "eps", weighting: str = "none", gamma: float = 5.0
) -> torch.Tensor:
    """The weight on the per-sample squared error of ``prediction`` at steps ``t`` (float64).

    See the table in the module docstring: a weight w(t) on the x0 error (SNR for "snr",
    min(SNR, gamma) for "min_snr"), converted to the chosen target; 1 for "none".
    """
    _check_schedule(schedule)
    _check_prediction(prediction)
    _check_weighting(weighting)
    gamma = check_number("gamma", gamma, 0.0, low_open=True, high_open=True)
    t = _check_steps(t, schedule.T)
    snr = schedule.snr[t.to(schedule.betas.device)]
    if weighting == "none":
        return torch.ones_like(snr)
    if prediction == "eps":
        return torch.ones_like(snr) if weighting == "snr" else (gamma / snr).clamp(max=1.0)
    x0_weight = snr if weighting == "snr" else snr.clamp(max=gamma)
    return x0_weight if prediction == "x0" else x0_weight / (snr + 1.0)


def per_sample_loss(
    net,
    x0: torch.Tensor,
    schedule: Schedule,
    t,
    noise: torch.Tensor,
    prediction: str = "eps",
    weighting: str = "none",
    gamma: float = 5.0,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """The weighted squared error of each sample at given times and noise, shape (n,).

    loss_i = weight(t_i) * mean_j (net(x_t, t)_ij - target_ij)^2 with x_t from
    :func:`diffusion_core.forward.q_sample`, the target from :func:`target` and the weight from
    :func:`loss_weight`. ``t`` is an int tensor in 1..T of shape (n,), or one step for all.
    For analysis (loss against t); :func:`diffusion_loss` draws ``t`` and ``noise`` itself.
    The result has the dtype of the network's output.

    ``labels``: for a class-conditional network, an integer tensor of shape (n,) with the class
    of each sample; the network is then called as ``net(x_t, t, labels)`` instead of
    ``net(x_t, t)``.
    """
    _check_schedule(schedule)
    check_float("x0", x0)
    check_float("noise", noise)
    if x0.ndim < 2:
        raise ValueError(f"x0 must have shape (n, ...) with a batch axis first, got {x0.ndim}-D")
    if noise.shape != x0.shape:
        raise ValueError(
            f"noise must have the shape of x0 {tuple(x0.shape)}, got {tuple(noise.shape)}"
        )
    t = _check_steps(t, schedule.T)
    check_batch("t", t, x0.shape[0], "the batch size of x0")
    t = t.to(x0.device).expand(x0.shape[0])
    labels = None if labels is None else check_labels("labels", labels, x0.shape[0])
    weight = loss_weight(schedule, t, prediction, weighting, gamma).to(x0.device)

    schedule = _schedule_on(schedule, x0.device)
    x_t = q_sample(schedule, x0, t, noise)
    scale, std = schedule.marginal(t)
    prediction_value = net(x_t, t) if labels is None else net(x_t, t, labels.to(x0.device))
    if not isinstance(prediction_value, torch.Tensor) or prediction_value.shape != x0.shape:
        got = (
            tuple(prediction_value.shape)
            if isinstance(prediction_value, torch.Tensor)
            else type(prediction_value).__name__
        )
        raise ValueError(f"net must return a tensor shaped like x0 {tuple(x0.shape)}, got {got}")
    wanted = target(x0, noise, scale, std, prediction).to(prediction_value.dtype)
    squared_error = (prediction_value - wanted).square().flatten(1).mean(1)
    return weight.to(squared_error.dtype) * squared_error


def diffusion_loss(
    net,
    x0: torch.Tensor,
    schedule: Schedule,
    generator: torch.Generator,
    prediction: str = "eps",
    weighting: str = "none",
    gamma: float = 5.0,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """The Monte Carlo training loss: the mean of :func:`per_sample_loss` over the batch.

    t ~ Uniform{1..T} and eps ~ N(0, I) are drawn from ``generator`` by
    :func:`sample_t_and_noise`. With ``prediction="eps"`` and ``weighting="none"`` this is
    L_simple of Ho et al. (2020, Eq. 14). ``labels`` (n,), if given, go to a class-conditional
    network (see :func:`per_sample_loss`); they draw nothing from ``generator``. Returns a
    scalar tensor.
    """
    t, noise = sample_t_and_noise(x0, schedule, generator)
    return per_sample_loss(
        net, x0, schedule, t, noise, prediction, weighting, gamma, labels=labels
    ).mean()


class Objective:
    """What :func:`diffusion_core.train.train` minimises: ``objective(net, batch, labels, gen)``.

    ``__call__`` returns the loss of each sample of ``batch`` (shape (n,)) or their mean; the
    loop averages it and steps on its gradient. ``batch`` is the global minibatch of every
    process; an objective draws its randomness (times, noise) from ``generator`` for all of it
    and then keeps this process's rows (:func:`diffusion_core.distributed.shard`, a no-op in one
    process), so that a run on W processes equals the run on one. It calls the net only
    through ``net(...)``, the forward that DistributedDataParallel and ``torch.compile`` wrap.

    ``condition(labels, generator)`` turns the minibatch's labels (or None) into what
    ``__call__`` receives as ``labels``; the loop calls it with the generator of the minibatch
    draws. Here it returns them unchanged; label or prompt dropout overrides it.
    """

    def condition(self, labels, generator: torch.Generator):
        """The minibatch's conditioning: here ``labels`` unchanged."""
        return labels

    def __call__(self, net, batch: torch.Tensor, labels, generator: torch.Generator):
        raise NotImplementedError


@dataclass(frozen=True)
class DiffusionLoss(Objective):
    """The denoising loss of :func:`diffusion_loss` as a training objective.

    loss_i = weight(t_i) ||net(x_t, t_i[, y_i]) - target_i||^2 / d, with t_i ~ U{1..T} and eps_i
    drawn for the global batch (:func:`sample_t_and_noise`), then :func:`per_sample_loss` on
    this process's shard. With ``prediction="eps"`` and ``weighting="none"``, L_simple of Ho et
    al. (2020, Eq. 14).

    Label dropout (Ho & Salimans 2022, Alg. 1): for a class-conditional net, called as
    ``net(x_t, t, labels)``, each label of a minibatch becomes ``null_label``, the net's "no
    condition" class, with probability ``label_dropout``, so that one net learns both the
    conditional and the unconditional model that classifier-free guidance combines.
    """

    schedule: Schedule
    prediction: str = "eps"
    weighting: str = "none"
    min_snr_gamma: float = 5.0
    label_dropout: float = 0.0
    null_label: int | None = None

    def __post_init__(self):
        _check_schedule(self.schedule)
        _check_prediction(self.prediction)
        _check_weighting(self.weighting)
        check_number("min_snr_gamma", self.min_snr_gamma, 0.0, low_open=True, high_open=True)
        check_number("label_dropout", self.label_dropout, 0.0, 1.0, high_open=True)
        if self.null_label is not None:
            check_positive_int("null_label", self.null_label, minimum=0)
        if self.label_dropout > 0 and self.null_label is None:
            raise ValueError("label_dropout > 0 needs the null_label to replace labels with")

    def condition(self, labels, generator: torch.Generator):
        """Each label replaced by ``null_label`` with probability ``label_dropout`` (one uniform
        draw per label from ``generator``, none when the probability is 0); None stays None."""
        if labels is None or self.label_dropout == 0:
            return labels
        drop = torch.rand(labels.shape, generator=generator) < self.label_dropout
        return labels.masked_fill(drop, self.null_label)

    def __call__(self, net, x0: torch.Tensor, labels, generator: torch.Generator):
        """The per-sample loss of this process's shard of the batch ``x0``, shape (n / W,)."""
        t, noise = sample_t_and_noise(x0, self.schedule, generator)
        x0, t, noise, labels = distributed.shard(x0, t, noise, labels)
        return per_sample_loss(
            net,
            x0,
            self.schedule,
            t,
            noise,
            self.prediction,
            self.weighting,
            self.min_snr_gamma,
            labels=labels,
        )


def _schedule_on(schedule: Schedule, device: torch.device) -> Schedule:
    """The same schedule with its table on ``device`` (forward.q_sample indexes it with t)."""
    if schedule.betas.device == device:
        return schedule
    return Schedule(schedule.betas.to(device))


def _check_schedule(schedule) -> None:
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a Schedule, got {type(schedule).__name__}")


def _check_steps(t, T: int) -> torch.Tensor:
    """Integer steps in 1..T: the loss is not defined at t = 0, where SNR is infinite."""
    try:
        steps = check_timesteps("t", t, T)
        in_range = not steps.numel() or bool((steps >= 1).all())
    except ValueError:
        in_range = False
    if not in_range:
        values = torch.as_tensor(t)
        raise ValueError(
            f"t must lie in 1..{T} (t = 0 is clean data, where SNR is infinite), got values in "
            f"{int(values.min())}..{int(values.max())}"
        )
    return steps


def _check_prediction(prediction) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")


def _check_weighting(weighting) -> None:
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")


# ------------------------------------------------------------------------ flow matching

TIME_SAMPLERS = ("uniform", "logit_normal")
COUPLINGS = ("independent", "ot", "given")


def sample_flow_time(
    n: int,
    generator: torch.Generator,
    sampler: str = "uniform",
    location: float = 0.0,
    spread: float = 1.0,
) -> torch.Tensor:
    """n continuous times in (0, 1), float64, drawn from ``generator``.

    - ``"uniform"``: t ~ U(0, 1) (Lipman et al. 2023);
    - ``"logit_normal"``: t = sigmoid(location + spread z), z ~ N(0, 1), whose density

          pi_ln(t; m, s) = exp(-(logit t - m)^2 / (2 s^2)) / (s sqrt(2 pi) t (1 - t))

      puts the training effort on the middle times, where the velocity is hardest to predict
      (Esser et al. 2024, Sec. 3.1, Eq. 19; their best rectified flows use m = 0, s = 1).
    """
    n = check_positive_int("n", n)
    check_torch_generator("generator", generator)
    if sampler not in TIME_SAMPLERS:
        raise ValueError(f"sampler must be one of {TIME_SAMPLERS}, got {sampler!r}")
    location = check_number("location", location, -50.0, 50.0)
    spread = check_number("spread", spread, 0.0, 50.0, low_open=True)
    where = generator.device
    if sampler == "uniform":
        return torch.rand(n, generator=generator, dtype=torch.float64, device=where)
    z = torch.randn(n, generator=generator, dtype=torch.float64, device=where)
    return torch.sigmoid(location + spread * z)


def flow_matching_target(x0: torch.Tensor, noise: torch.Tensor, d_scale, d_std) -> torch.Tensor:
    """The conditional velocity u = d_scale x0 + d_std eps of the path x_t = scale x0 + std eps
    (Lipman et al. 2023, Eq. 15 and 23): eps - x0 for rectified flow. ``d_scale`` and ``d_std``
    hold one value per sample (n,) or one for all; the result has ``x0``'s dtype."""
    x0, noise = check_float("x0", x0), check_float("noise", noise)
    if x0.ndim < 2 or noise.shape != x0.shape:
        raise ValueError(
            f"x0 and noise must have one shape (n, ...) with a batch axis, got "
            f"{tuple(x0.shape)} and {tuple(noise.shape)}"
        )
    d_scale = check_float("d_scale", as_tensor("d_scale", d_scale, torch.float64))
    d_std = check_float("d_std", as_tensor("d_std", d_std, torch.float64))
    for name, value in (("d_scale", d_scale), ("d_std", d_std)):
        if value.ndim > 1 or (value.ndim == 1 and value.shape[0] != x0.shape[0]):
            raise ValueError(
                f"{name} must be a number or have shape ({x0.shape[0]},), got {tuple(value.shape)}"
            )
        if value.numel() and float(value.abs().max()) > MAX_LEVEL:
            raise ValueError(
                f"{name} must lie in [-{MAX_LEVEL:g}, {MAX_LEVEL:g}], "
                f"got {float(value.abs().max()):.3g} in magnitude"
            )
    d_scale, d_std = d_scale.to(x0.device), d_std.to(x0.device)
    u = per_sample(d_scale, x0) * x0.double() + per_sample(d_std, x0) * noise.double()
    return u.to(x0.dtype)


def flow_matching_loss(
    net, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, process, time_scale=1000.0
) -> torch.Tensor:
    """The conditional flow-matching loss of each sample, shape (n,) (Lipman et al. 2023,
    Eq. 23, with the path's scale and std):

        loss_i = || net(x_t, time_scale t_i) - (scale'(t_i) x0_i + std'(t_i) eps_i) ||^2 / d,
        x_t = scale(t_i) x0_i + std(t_i) eps_i.

    Its expectation differs from that of the marginal loss ||net - u_t(x_t)||^2 by a constant,
    so both have one minimiser, the marginal velocity u_t(x) = E[u | x_t = x] (their Thm. 2).
    ``t``: (n,) float times of ``process`` (see :func:`sample_flow_time`).
    """
    check_callable("net", net, "net(x_t, t) -> u")
    x0, noise = check_float("x0", x0), check_float("noise", noise)
    if x0.ndim < 2 or noise.shape != x0.shape:
        raise ValueError(
            f"x0 and noise must have one shape (n, ...) with a batch axis, got "
            f"{tuple(x0.shape)} and {tuple(noise.shape)}"
        )
    t = check_float("t", t)
    if t.shape != x0.shape[:1]:
        raise ValueError(f"t must have shape ({x0.shape[0]},), one time each, got {tuple(t.shape)}")
    time_scale = check_number("time_scale", time_scale, 0.0, 1e6, low_open=True)
    scale, std, d_scale, d_std = (c.to(x0.device) for c in path_coefficients(process, t.cpu()))
    x_t = (per_sample(scale, x0) * x0.double() + per_sample(std, x0) * noise.double()).to(x0.dtype)
    try:
        out = net(x_t, (time_scale * t).to(x0.device))
    except (TypeError, ValueError) as err:
        raise type(err)(
            f"net refused x_t, shaped like x0 (the data batch) {tuple(x0.shape)}: {err}"
        ) from err
    if not isinstance(out, torch.Tensor) or out.shape != x0.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"net must return a tensor shaped like x0 {tuple(x0.shape)}, got {got}")
    wanted = flow_matching_target(x0, noise, d_scale, d_std).to(out.dtype)
    return (out - wanted).square().flatten(1).mean(1)


def flow_matching_eps_weight(process, t) -> torch.Tensor:
    """The weight w(t) that makes the flow-matching loss an eps-loss:
    ||u - u_hat||^2 = w(t) ||eps - eps_hat||^2 with

        w(t) = ((scale std' - std scale') / scale)^2,

    since at fixed x_t the velocity is u = (scale' x_t + (scale std' - std scale') eps) / scale
    (:func:`diffusion_core.parameterization.velocity_from_eps`). For rectified flow
    w(t) = 1 / (1 - t)^2: flow matching is the eps-loss with its weight growing without bound
    towards the noise, where eps-prediction is useless (Esser et al. 2024, Sec. 3; Kingma &
    Gao 2023). float64, shaped like ``t``; infinite at scale = 0 (pure noise), so a time
    there is refused."""
    scale, std, d_scale, d_std = path_coefficients(process, t)
    if bool((scale == 0).any()):
        raise ValueError(
            "t must lie where scale(t) > 0: the weight is infinite at pure noise, got "
            f"scale(t) = 0 at {int((scale == 0).sum())} of the times"
        )
    return ((scale * d_std - std * d_scale) / scale).square()


@dataclass(frozen=True)
class FlowMatchingLoss(Objective):
    """Conditional flow matching as a training objective (Lipman et al. 2023; Liu et al. 2023).

    Per sample: t from :func:`sample_flow_time` (``time_sampler``, ``location``, ``spread``),
    noise eps ~ N(0, I), then :func:`flow_matching_loss` on ``process`` (rectified flow by
    default: x_t = (1 - t) x0 + t eps, target eps - x0). ``coupling`` says how data and noise
    are paired:

    - ``"independent"``: as drawn (the product coupling);
    - ``"ot"``: the noise of the global minibatch reordered by the minibatch optimal-transport
      plan, :func:`diffusion_core.flow.ot_couple` (Tong et al. 2024);
    - ``"given"``: the batch holds the pairs, shape (n, 2, ...) with x0 = batch[:, 0] and eps =
      batch[:, 1] (reflow, :func:`diffusion_core.flow.reflow_pairs`); no noise is drawn.

    The times are drawn first, then the noise, both from ``generator`` for the whole batch,
    before the shard of this process is kept.
    """

    process: Process = field(default_factory=RectifiedFlow)
    time_sampler: str = "uniform"
    location: float = 0.0
    spread: float = 1.0
    coupling: str = "independent"
    time_scale: float = 1000.0

    def __post_init__(self):
        if not isinstance(self.process, Process):
            raise TypeError(f"process must be a Process, got {type(self.process).__name__}")
        if self.time_sampler not in TIME_SAMPLERS:
            raise ValueError(
                f"time_sampler must be one of {TIME_SAMPLERS}, got {self.time_sampler!r}"
            )
        check_number("location", self.location, -50.0, 50.0)
        check_number("spread", self.spread, 0.0, 50.0, low_open=True)
        if self.coupling not in COUPLINGS:
            raise ValueError(f"coupling must be one of {COUPLINGS}, got {self.coupling!r}")
        check_number("time_scale", self.time_scale, 0.0, 1e6, low_open=True)

    def __call__(self, net, batch: torch.Tensor, labels, generator: torch.Generator):
        """The per-sample loss of this process's shard of ``batch``, shape (n / W,)."""
        check_float("batch", batch)
        if self.coupling == "given" and (batch.ndim < 3 or batch.shape[1] != 2):
            raise ValueError(
                f"coupling='given' needs batch of shape (n, 2, ...) holding (x0, eps) pairs, "
                f"got {tuple(batch.shape)}"
            )
        if batch.ndim < 2 or batch.shape[0] < 1:
            raise ValueError(
                f"batch must have shape (n, ...) with n >= 1, got {tuple(batch.shape)}"
            )
        t = float(self.process.t_max) * sample_flow_time(
            batch.shape[0], generator, self.time_sampler, self.location, self.spread
        )
        if self.coupling == "given":
            x0, noise = batch[:, 0], batch[:, 1]
        else:
            x0 = batch
            where = generator.device
            noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=where)
            noise = noise.to(x0.device)
            if self.coupling == "ot":
                noise = ot_couple(x0, noise)
        x0, t, noise = distributed.shard(x0, t, noise)
        return flow_matching_loss(net, x0, noise, t, self.process, self.time_scale)


# --- tokens -----------------------------------------------------------------------------------


def _token_batch(batch: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """The token ids of a minibatch: :func:`diffusion_core.train.train` takes float data, so
    token sequences travel as floats holding whole numbers 0..V-1 and come back as int64."""
    check_float("batch", batch)
    if batch.ndim != 2:
        raise ValueError(f"batch must hold token sequences (n, L), got {tuple(batch.shape)}")
    ids = batch.round()
    if bool((ids != batch).any()) or bool(((ids < 0) | (ids >= vocab_size)).any()):
        raise ValueError(f"batch must hold whole token ids 0..{vocab_size - 1} (as floats)")
    return ids.long()


@dataclass(frozen=True)
class MaskedDiffusionLoss(Objective):
    """The masked diffusion ELBO (Sahoo et al. 2024; Shi et al. 2024) as a training objective.

    loss_i = weight_i sum over the masked positions of -log p(x_0^i | x_t) / L: the one-sample
    negative ELBO of :func:`diffusion_core.discrete.masked_nelbo` in nats per token, the masks
    drawn for the global batch (:func:`diffusion_core.discrete.masked_draw`, ``estimator``
    "time" or "count"), then this process's shard. The net is a denoiser
    ``net(x_t, t) -> logits (n, L, V)``; the data are token ids 0..V-1 stored as floats
    (``tokens.float()``), the mask id is V.
    """

    vocab_size: int
    schedule: str = "linear"
    estimator: str = "time"

    def __post_init__(self):
        check_positive_int("vocab_size", self.vocab_size, maximum=65_536)
        if self.schedule not in MASK_SCHEDULES:
            raise ValueError(f"schedule must be one of {MASK_SCHEDULES}, got {self.schedule!r}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}")

    def __call__(self, net, batch: torch.Tensor, labels, generator: torch.Generator):
        x0 = _token_batch(batch, self.vocab_size)
        drawn = masked_draw(x0.cpu(), self.vocab_size, generator, self.schedule, self.estimator)
        t, weight, xt = (value.to(x0.device) for value in drawn)
        x0, t, weight, xt = distributed.shard(x0, t, weight, xt)
        return masked_cross_entropy(net, x0, xt, t, weight) / x0.shape[1]


@dataclass(frozen=True)
class AutoregressiveLoss(Objective):
    """-log p(x_0) / L of a causal :class:`diffusion_core.discrete.TokenTransformer`: the exact
    negative log-likelihood in nats per token (teacher forcing); data as for
    :class:`MaskedDiffusionLoss`. No randomness is drawn."""

    vocab_size: int

    def __post_init__(self):
        check_positive_int("vocab_size", self.vocab_size, maximum=65_536)

    def __call__(self, net, batch: torch.Tensor, labels, generator: torch.Generator):
        (x0,) = distributed.shard(_token_batch(batch, self.vocab_size))
        return autoregressive_nll(net, x0) / x0.shape[1]
