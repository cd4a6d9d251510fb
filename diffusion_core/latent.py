"""Latent diffusion with text prompts: Stable Diffusion in miniature.

Stable Diffusion (Rombach et al. 2022) is three networks trained for one job:

    prompt --Tokenizer, TextEncoder--> context (n, L, d)
    image x --ConvVAE encoder--> z = scale_factor * mean(x)        the latent, about unit variance
    z_t = sqrt(alpha_bar_t) z + sqrt(1 - alpha_bar_t) eps          the scaled-linear schedule
    eps_hat = TextUNet(z_t, t, context, mask)                      cross-attention on the prompt
    sample: guided eps_hat, any sampler, then x = decoder(z / scale_factor)

Here on the 8x8 digits of scikit-learn: a 2x4x4 latent (:mod:`diffusion_core.autoencoder`),
word-level prompts such as "a thin seven" (:mod:`diffusion_core.text`) and a
:class:`~diffusion_core.nets.TextUNet`. Training has two stages, as in the paper: the
autoencoder first, then, with it frozen, the denoiser jointly with the text encoder on the
simple eps-loss (Ho et al. 2020, Eq. 14), with a fraction of the prompts replaced by the empty
prompt so that one network is both conditional and unconditional, what classifier-free guidance
(Ho & Salimans 2022) needs. :func:`generate` samples with the library's samplers and
:func:`diffusion_core.samplers.classifier_free_guidance`.

Both stages run the library's one training loop (:func:`diffusion_core.train.train`), the
second with :class:`LatentDiffusionLoss`. Trained by ``scripts/train_latent.py``; used in the
chapter "Stable Diffusion in miniature".
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diffusion_core import checkpoints, distributed
from diffusion_core._validation import (
    check_float,
    check_labels,
    check_number,
    check_positive_int,
    check_torch_generator,
)
from diffusion_core.autoencoder import (
    AutoencoderConfig,
    ConvVAE,
    latent_scale_factor,
    train_autoencoder,
)
from diffusion_core.forward import q_sample
from diffusion_core.losses import Objective, sample_t_and_noise
from diffusion_core.nets import TextUNet
from diffusion_core.parameterization import as_denoiser
from diffusion_core.samplers import classifier_free_guidance, ddim, prior_sample
from diffusion_core.schedules import Schedule, scaled_linear_schedule
from diffusion_core.text import (
    MAX_PROMPTS,
    MAX_WIDTH,
    NULL_PROMPT,
    TextEncoder,
    Tokenizer,
    drop_prompts,
    make_prompts,
)
from diffusion_core.train import (
    MAX_BATCH_SIZE,
    MAX_STEPS,
    RunConfig,
    TrainConfig,
    TrainResult,
    train,
)

__all__ = [
    "MAX_GUIDANCE",
    "MAX_T",
    "LatentConfig",
    "LatentDiffusion",
    "LatentDiffusionLoss",
    "generate",
    "load_latent_model",
    "train_latent_diffusion",
]


MAX_T = 100_000  # the most diffusion steps of a LatentConfig's schedule
MAX_GUIDANCE = 1000.0  # |w| beyond this overflows the guided prediction; useful w are 0..20
_NUM_CLASSES = 10  # the digits' labels 0..9, what the prompts are written from


@dataclass(frozen=True)
class LatentConfig:
    """Everything that fixes a trained :class:`LatentDiffusion`, the seed included.

    Architecture: the U-Net's ``channels`` (its levels run at 4x4 and 2x2 on the 2x4x4 latent),
    the text encoder's width ``text_dim`` and ``text_layers``. Training of the denoiser: AdamW
    (weight decay 0.01, PyTorch's default) with a half-cosine learning-rate decay, ``steps``
    minibatches of ``batch_size`` (images drawn with replacement, a fresh random prompt for
    each), ``prompt_dropout`` the probability of the empty prompt, an EMA of the weights with
    decay ``ema_decay``. The autoencoder is trained
    first with ``autoencoder_steps`` steps of :func:`~diffusion_core.autoencoder.train_autoencoder`.

    Ranges: ``channels`` a non-empty tuple of ints in 1..65536; ``text_dim``, ``text_layers``,
    ``heads`` in 1..65536 (``text_dim`` divisible by ``heads``); ``T`` in 1..100,000; ``steps``
    and ``autoencoder_steps`` in 1..10**8, ``batch_size`` in 1..2**20
    (:data:`~diffusion_core.train.MAX_STEPS`, :data:`~diffusion_core.train.MAX_BATCH_SIZE`);
    ``lr`` finite > 0; ``prompt_dropout`` in [0, 1]; ``ema_decay`` in [0, 1); ``seed`` in
    0..2**63 - 1.
    """

    channels: tuple[int, ...] = (32, 48)
    text_dim: int = 32
    text_layers: int = 2
    heads: int = 4
    T: int = 1000
    steps: int = 2500
    batch_size: int = 64
    lr: float = 2e-3
    prompt_dropout: float = 0.1
    ema_decay: float = 0.995
    autoencoder_steps: int = 1000
    seed: int = 0

    def __post_init__(self):
        channels = self.channels
        if isinstance(channels, str) or not isinstance(channels, tuple | list) or not channels:
            raise TypeError(f"channels must be a non-empty tuple of ints, got {channels!r}")
        for i, width in enumerate(channels):
            check_positive_int(f"channels[{i}]", width, maximum=MAX_WIDTH)
        object.__setattr__(self, "channels", tuple(channels))
        for name in ("text_dim", "text_layers", "heads"):
            check_positive_int(name, getattr(self, name), maximum=MAX_WIDTH)
        if self.text_dim % self.heads:
            raise ValueError(
                f"text_dim must be divisible by heads ({self.heads}), got {self.text_dim}"
            )
        check_positive_int("T", self.T, maximum=MAX_T)
        check_positive_int("steps", self.steps, maximum=MAX_STEPS)
        check_positive_int("batch_size", self.batch_size, maximum=MAX_BATCH_SIZE)
        check_positive_int("autoencoder_steps", self.autoencoder_steps, maximum=MAX_STEPS)
        check_positive_int("seed", self.seed, minimum=0, maximum=2**63 - 1)
        check_number("prompt_dropout", self.prompt_dropout, 0.0, 1.0)
        check_number("ema_decay", self.ema_decay, 0.0, 1.0, high_open=True)
        check_number("lr", self.lr, 0.0, low_open=True, high_open=True)

    def training(self, draw_seed: int) -> TrainConfig:
        """The loop's settings of the denoiser's stage: AdamW with weight decay 0.01 and the
        half-cosine decay, no gradient clipping, the EMA, one generator seeded with
        ``draw_seed`` for every draw."""
        return TrainConfig(
            steps=self.steps,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=0.01,
            lr_schedule="cosine",
            grad_clip=None,
            ema_decay=self.ema_decay,
            seed=draw_seed,
            shared_generator=True,
        )

    def to_dict(self) -> dict:
        """Plain Python data (lists, ints, floats), the JSON record of a checkpoint."""
        state = asdict(self)
        state["channels"] = list(self.channels)
        return state


class LatentDiffusion(nn.Module):
    """Autoencoder, tokenizer, text encoder and latent denoiser, with the latent scale factor.

    ``eps(z, t, context, mask)`` is the denoiser's noise prediction on scaled latents, and
    calling the model, ``model(z, t, prompts)``, the same from the prompts' text (the forward
    that training calls); ``encode_prompts(prompts)`` gives (context, mask);
    ``encode_images(x)`` the scaled latents scale_factor * mean(x) and ``decode_latents(z)``
    the images decoder(z / scale_factor).
    The scale factor is a buffer, saved with the weights.
    """

    def __init__(self, config: LatentConfig):
        super().__init__()
        if not isinstance(config, LatentConfig):
            raise TypeError(f"config must be a LatentConfig, got {type(config).__name__}")
        self.config = config
        self.tokenizer = Tokenizer()
        self.vae = ConvVAE()
        self.text_encoder = TextEncoder.from_tokenizer(
            self.tokenizer, dim=config.text_dim, layers=config.text_layers
        )
        self.unet = TextUNet(
            config.text_dim,
            heads=config.heads,
            in_channels=self.vae.latent_channels,
            channels=config.channels,
        )
        self.register_buffer("scale_factor", torch.tensor(1.0, dtype=torch.float64))

    @property
    def schedule(self) -> Schedule:
        """Stable Diffusion's scaled-linear schedule with T = ``config.T`` steps."""
        return scaled_linear_schedule(self.config.T)

    def encode_prompts(self, prompts) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.tokenizer.encode(prompts)
        device = self.scale_factor.device
        return self.text_encoder(ids.to(device), mask.to(device))

    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(x)[0] * self.scale_factor.to(x.dtype)

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z / self.scale_factor.to(z.dtype))

    def eps(self, z, t, context, mask) -> torch.Tensor:
        return self.unet(z, t, context, mask)

    def forward(self, z, t, prompts) -> torch.Tensor:
        return self.eps(z, t, *self.encode_prompts(prompts))


@dataclass(frozen=True)
class LatentDiffusionLoss(Objective):
    """The simple eps-loss on scaled latents z0 with a caption per image (Rombach et al. 2022):

        loss = mean ||eps - eps_hat(z_t, t, prompt)||^2,  z_t = sqrt(alpha_bar_t) z0
               + sqrt(1 - alpha_bar_t) eps  (:func:`diffusion_core.forward.q_sample`),

    t ~ U{1..T}, the mean over the batch and the latent's entries (Ho et al. 2020, Eq. 14).
    The conditioning draws a random caption for each image's label
    (:func:`~diffusion_core.text.make_prompts`) and replaces it by the empty prompt with
    probability ``prompt_dropout`` (:func:`~diffusion_core.text.drop_prompts`), so that one
    network is both the conditional and the unconditional model of classifier-free guidance.
    """

    schedule: Schedule
    prompt_dropout: float = 0.1

    def __post_init__(self):
        if not isinstance(self.schedule, Schedule):
            raise TypeError(f"schedule must be a Schedule, got {type(self.schedule).__name__}")
        check_number("prompt_dropout", self.prompt_dropout, 0.0, 1.0)

    def condition(self, labels, generator: torch.Generator) -> list[str]:
        """One random caption per label, each dropped with probability ``prompt_dropout``."""
        if labels is None:
            raise ValueError("LatentDiffusionLoss needs labels, one per image, to caption")
        return drop_prompts(make_prompts(labels, generator), self.prompt_dropout, generator)

    def __call__(self, net, z0: torch.Tensor, prompts, generator: torch.Generator):
        """The mean loss of this process's shard of the latents ``z0`` and their prompts."""
        t, noise = sample_t_and_noise(z0, self.schedule, generator)
        z_t = q_sample(self.schedule, z0, t, noise)
        z_t, t, noise, prompts = distributed.shard(z_t, t, noise, prompts)
        return F.mse_loss(net(z_t, t, prompts), noise)


def train_latent_diffusion(
    images: torch.Tensor,
    labels: torch.Tensor,
    config: LatentConfig | None = None,
    *,
    run: RunConfig | None = None,
    progress: bool | None = None,
    device: str | torch.device | None = None,
    resume_from: str | os.PathLike | None = None,
) -> TrainResult:
    """Train a :class:`LatentDiffusion` on digit ``images`` (N, 1, 8, 8) in [-1, 1] with their
    ``labels`` (N,) in 0..9 (both checked before anything is trained; N >= 2, so that the
    latents have a spread); return the second stage's
    :class:`~diffusion_core.train.TrainResult`, whose ``ema`` is the model to sample (EMA
    weights, eval mode, no gradients) and ``losses`` the loss per step.

    Stage 1: the autoencoder (:func:`~diffusion_core.autoencoder.train_autoencoder`), then the
    scale factor 1 / std of its latents. Stage 2: :class:`LatentDiffusionLoss` on the scaled
    latents, trained on the denoiser and the text encoder together, the autoencoder frozen.

    Deterministic: every draw comes from generators seeded by ``config.seed`` (the global random
    state is left as it was); with one CPU thread, two runs give bitwise equal weights. ``run``,
    ``progress``, ``device`` and ``resume_from`` go to the second stage's loop
    (:func:`diffusion_core.train.train`); a resumed run retrains the first stage, which is
    deterministic, and continues the second from the checkpoint.
    """
    config = LatentConfig() if config is None else config
    if not isinstance(config, LatentConfig):
        raise TypeError(f"config must be a LatentConfig, got {type(config).__name__}")
    check_float("images", images)
    if images.ndim != 4 or tuple(images.shape[1:]) != (1, 8, 8) or images.shape[0] < 2:
        raise ValueError(
            f"images must have shape (N, 1, 8, 8) with N >= 2, got {tuple(images.shape)}"
        )
    if bool((images.abs() > 1).any()):
        raise ValueError("images must lie in [-1, 1] (digits: grey level / 8 - 1)")
    labels = check_labels("labels", labels, images.shape[0], _NUM_CLASSES)
    seeds = np.random.SeedSequence(config.seed).generate_state(3, dtype=np.uint64)
    vae_seed, init_seed, draw_seed = (int(seed) >> 1 for seed in seeds)  # < 2**63
    vae_config = AutoencoderConfig(steps=config.autoencoder_steps, seed=vae_seed)
    vae = train_autoencoder(images, vae_config, device, progress=progress).net.cpu()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        model = LatentDiffusion(config)
    model.vae.load_state_dict(vae.state_dict())
    model.vae.requires_grad_(False)
    model.scale_factor.fill_(latent_scale_factor(vae, images))
    with torch.no_grad():
        latents = model.encode_images(images.float())
    objective = LatentDiffusionLoss(model.schedule, config.prompt_dropout)
    result = train(
        model,
        latents,
        objective,
        config.training(draw_seed),
        labels=labels,
        run=run,
        progress=progress,
        device=device,
        resume_from=resume_from,
    )
    result.net.eval().requires_grad_(False)
    return result


@torch.no_grad()
def generate(
    model: LatentDiffusion,
    prompts,
    guidance: float = 3.0,
    steps: int = 25,
    generator: torch.Generator | None = None,
    sampler=ddim,
    return_latents: bool = False,
):
    """Images (n, 1, 8, 8) for ``prompts`` (a list of n strings): Stable Diffusion's sampling
    loop.

    z_T ~ N(0, std_T^2 I) (:func:`~diffusion_core.samplers.prior_sample`), then ``sampler``
    (DDIM by default) over ``steps`` trailing steps of the scaled-linear schedule, with the
    guided noise prediction eps_uncond + w (eps_cond - eps_uncond), w = ``guidance``
    (:func:`~diffusion_core.samplers.classifier_free_guidance`; w = 1 is the plain conditional
    model, w = 0 the unconditional one), and finally the decoder. The prompts are encoded once:
    the wrapper's integer labels index the n prompts, label n is the empty prompt.

    One string alone is refused rather than read as one prompt per character: write
    ``[prompt]``. ``prompts`` holds 1..MAX_PROMPTS strings; ``guidance`` a number in
    [-MAX_GUIDANCE, MAX_GUIDANCE] (1000);
    ``steps`` in 1..T; ``generator`` a ``torch.Generator`` or None (torch's global stream).
    """
    if not isinstance(model, LatentDiffusion):
        raise TypeError(f"model must be a LatentDiffusion, got {type(model).__name__}")
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, got one string (write [prompt])")
    if not isinstance(prompts, list | tuple):
        raise TypeError(f"prompts must be a list of strings, got {type(prompts).__name__}")
    if not 1 <= len(prompts) <= MAX_PROMPTS:
        raise ValueError(f"prompts must hold 1..{MAX_PROMPTS} prompts, got {len(prompts)}")
    n = len(prompts)
    guidance = check_number("guidance", guidance, -MAX_GUIDANCE, MAX_GUIDANCE)
    check_positive_int("steps", steps, maximum=model.config.T)
    if generator is not None:
        check_torch_generator("generator", generator)
    if not callable(sampler):
        raise TypeError(f"sampler must be a sampler function, got {type(sampler).__name__}")
    if not isinstance(return_latents, bool):
        raise TypeError(f"return_latents must be True or False, got {return_latents!r}")
    context, mask = model.encode_prompts([*prompts, NULL_PROMPT])

    def eps_given_label(z, t, labels):
        return model.eps(z, t, context[labels], mask[labels])

    denoiser = classifier_free_guidance(
        as_denoiser(eps_given_label, "eps"), guidance, torch.arange(n), null_label=n
    )
    grid = model.schedule.grid(steps)
    shape = (n, model.vae.latent_channels, 4, 4)
    z = sampler(denoiser, prior_sample(grid, shape, generator).float(), grid, generator)
    images = model.decode_latents(z)
    return (images, z) if return_latents else images


def load_latent_model(path: str | os.PathLike) -> tuple[LatentDiffusion, dict]:
    """The model of a checkpoint written by ``scripts/train_latent.py``, and its metadata.

    The file is a :mod:`diffusion_core.checkpoints` checkpoint of kind "latent_model" (data
    only, never code, verified by SHA-256): a ``ValueError`` naming the file if it is not one
    or is damaged. The model is in eval mode without gradients, the metadata is everything in
    the file but the weights.
    """
    state = checkpoints.load(path, checkpoints.LATENT_MODEL)
    try:
        with torch.random.fork_rng(devices=[]):
            model = LatentDiffusion(LatentConfig(**state["config"]))
        model.load_state_dict(state["weights"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise checkpoints.CheckpointError(
            f"{path} is a latent model checkpoint whose config or weights do not fit ({err})"
        ) from None
    metadata = {key: value for key, value in state.items() if key != "weights"}
    return model.eval().requires_grad_(False), metadata
