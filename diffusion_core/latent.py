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

Trained by ``scripts/train_latent.py``; used in the chapter "Stable Diffusion in miniature".
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diffusion_core._validation import check_positive_int
from diffusion_core.autoencoder import (
    AutoencoderConfig,
    ConvVAE,
    latent_scale_factor,
    train_autoencoder,
)
from diffusion_core.losses import sample_t_and_noise
from diffusion_core.nets import TextUNet
from diffusion_core.parameterization import as_denoiser
from diffusion_core.samplers import classifier_free_guidance, ddim, prior_sample
from diffusion_core.schedules import Schedule, scaled_linear_schedule
from diffusion_core.text import NULL_PROMPT, TextEncoder, Tokenizer, drop_prompts, make_prompts
from diffusion_core.train import ema_decay_at, update_ema

__all__ = [
    "LatentConfig",
    "LatentDiffusion",
    "CHECKPOINT_FORMAT",
    "generate",
    "load_latent_model",
    "train_latent_diffusion",
]

CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class LatentConfig:
    """Everything that fixes a trained :class:`LatentDiffusion`, the seed included.

    Architecture: the U-Net's ``channels`` (its levels run at 4x4 and 2x2 on the 2x4x4 latent),
    the text encoder's width ``text_dim`` and ``text_layers``. Training of the denoiser: AdamW
    with a half-cosine learning-rate decay, ``steps`` minibatches of ``batch_size`` (images drawn
    with replacement, a fresh random prompt for each), ``prompt_dropout`` the probability of the
    empty prompt, an EMA of the weights with decay ``ema_decay``. The autoencoder is trained
    first with ``autoencoder_steps`` steps of :func:`~diffusion_core.autoencoder.train_autoencoder`.
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
        object.__setattr__(self, "channels", tuple(self.channels))
        for name in ("text_dim", "text_layers", "heads", "T", "steps", "batch_size"):
            check_positive_int(name, getattr(self, name))
        check_positive_int("autoencoder_steps", self.autoencoder_steps)
        check_positive_int("seed", self.seed, minimum=0, maximum=2**63 - 1)
        if not 0 <= self.prompt_dropout <= 1:
            raise ValueError(f"prompt_dropout must lie in [0, 1], got {self.prompt_dropout}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr}")

    def to_dict(self) -> dict:
        """Plain Python data (lists, ints, floats), fit for ``torch.load(weights_only=True)``."""
        state = asdict(self)
        state["channels"] = list(self.channels)
        return state


class LatentDiffusion(nn.Module):
    """Autoencoder, tokenizer, text encoder and latent denoiser, with the latent scale factor.

    ``eps(z, t, context, mask)`` is the denoiser's noise prediction on scaled latents;
    ``encode_prompts(prompts)`` gives (context, mask); ``encode_images(x)`` the scaled latents
    scale_factor * mean(x) and ``decode_latents(z)`` the images decoder(z / scale_factor).
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


def train_latent_diffusion(
    images: torch.Tensor, labels: torch.Tensor, config: LatentConfig | None = None
) -> tuple[LatentDiffusion, list[float]]:
    """Train a :class:`LatentDiffusion` on digit ``images`` (N, 1, 8, 8) in [-1, 1] with their
    ``labels``; return the model (EMA weights, eval mode, no gradients) and the loss per step.

    Stage 1: the autoencoder (:func:`~diffusion_core.autoencoder.train_autoencoder`), then the
    scale factor 1 / std of its latents. Stage 2: per step, a minibatch of latents z, one random
    caption per image (:func:`~diffusion_core.text.make_prompts`), prompt dropout
    (:func:`~diffusion_core.text.drop_prompts`), t ~ U{1..T} and eps, and the loss
    ||eps - eps_hat(z_t, t, text)||^2 on the denoiser and the text encoder together.

    Deterministic: every draw comes from generators seeded by ``config.seed`` (the global random
    state is left as it was); with one CPU thread, two runs give bitwise equal weights.
    """
    config = LatentConfig() if config is None else config
    if not isinstance(config, LatentConfig):
        raise TypeError(f"config must be a LatentConfig, got {type(config).__name__}")
    seeds = np.random.SeedSequence(config.seed).generate_state(3, dtype=np.uint64)
    vae_seed, init_seed, draw_seed = (int(seed) >> 1 for seed in seeds)  # < 2**63
    vae = train_autoencoder(
        images, AutoencoderConfig(steps=config.autoencoder_steps, seed=vae_seed), "cpu"
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        model = LatentDiffusion(config)
    model.vae.load_state_dict(vae.state_dict())
    model.vae.requires_grad_(False)
    model.scale_factor.fill_(latent_scale_factor(vae, images))
    with torch.no_grad():
        latents = model.encode_images(images.float())
    trained = [*model.text_encoder.parameters(), *model.unet.parameters()]
    with torch.random.fork_rng(devices=[]):
        ema = LatentDiffusion(config)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)

    schedule, generator = model.schedule, torch.Generator().manual_seed(draw_seed)
    root_bar, root_one_minus = schedule.alpha_bars.sqrt(), (1 - schedule.alpha_bars).sqrt()
    optimizer = torch.optim.AdamW(trained, lr=config.lr)
    losses = []
    for step in range(config.steps):
        for group in optimizer.param_groups:
            group["lr"] = config.lr * 0.5 * (1.0 + math.cos(math.pi * step / config.steps))
        index = torch.randint(len(latents), (config.batch_size,), generator=generator)
        prompts = drop_prompts(
            make_prompts(labels[index], generator), config.prompt_dropout, generator
        )
        z0 = latents[index]
        t, noise = sample_t_and_noise(z0, schedule, generator)
        z_t = root_bar[t, None, None, None] * z0 + root_one_minus[t, None, None, None] * noise
        loss = F.mse_loss(model.eps(z_t.float(), t, *model.encode_prompts(prompts)), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        update_ema(ema, model, ema_decay_at(config.ema_decay, step + 1))
        losses.append(loss.detach())
    return ema.eval(), torch.stack(losses).tolist()  # read back once, not at every step


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
    """Images (n, 1, 8, 8) for ``prompts`` (n strings): Stable Diffusion's sampling loop.

    z_T ~ N(0, std_T^2 I) (:func:`~diffusion_core.samplers.prior_sample`), then ``sampler``
    (DDIM by default) over ``steps`` trailing steps of the scaled-linear schedule, with the
    guided noise prediction eps_uncond + w (eps_cond - eps_uncond), w = ``guidance``
    (:func:`~diffusion_core.samplers.classifier_free_guidance`; w = 1 is the plain conditional
    model, w = 0 the unconditional one), and finally the decoder. The prompts are encoded once:
    the wrapper's integer labels index the n prompts, label n is the empty prompt.
    """
    if not isinstance(model, LatentDiffusion):
        raise TypeError(f"model must be a LatentDiffusion, got {type(model).__name__}")
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, got one string (write [prompt])")
    n = len(prompts)
    check_positive_int("number of prompts", n)
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


def load_latent_model(path) -> tuple[LatentDiffusion, dict]:
    """The model of a checkpoint written by ``scripts/train_latent.py``, and its metadata.

    Read with ``torch.load(weights_only=True)`` (data only, never code); the model is in eval
    mode without gradients, the metadata is everything in the file but the weights.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is not a latent diffusion checkpoint of format {CHECKPOINT_FORMAT}"
        )
    with torch.random.fork_rng(devices=[]):
        model = LatentDiffusion(LatentConfig(**state["config"]))
    model.load_state_dict(state["weights"])
    metadata = {key: value for key, value in state.items() if key != "weights"}
    return model.eval().requires_grad_(False), metadata
