"""Train the book's miniature Stable Diffusion and write its checkpoint.

    python scripts/train_latent.py  # -> diffusion_core/weights/latent_digits.safetensors

The settings are the defaults of ``diffusion_core.latent.LatentConfig``: a ConvVAE with a 2x4x4
latent, then a text-conditioned U-Net and a small text encoder trained together on the scaled
latents of the training split of the scikit-learn digits, with random captions and 10 % prompt
dropout. The run is deterministic: one CPU thread and every draw seeded from ``--seed``, so the
same settings give the same weights, bit for bit, on a given machine and torch version (the unit
tests check this on a tiny run). ``--steps`` and ``--autoencoder-steps`` shorten a run.

The checkpoint holds the EMA weights (autoencoder, text encoder, U-Net, latent scale factor),
the config with its seed, the loss of every step and the training time; notebooks read it with
``diffusion_core.latent.load_latent_model``.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
import time

import torch

from diffusion_core import checkpoints
from diffusion_core.device import seed_everything
from diffusion_core.images import load_digits_split
from diffusion_core.latent import LatentConfig, train_latent_diffusion
from diffusion_core.nets import count_parameters

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_PATH = ROOT / "diffusion_core" / "weights" / "latent_digits.safetensors"
DEFAULT_CONFIG = LatentConfig()


def train_model(config: LatentConfig = DEFAULT_CONFIG) -> dict:
    """Train with ``config`` on one thread; return the checkpoint as plain data and tensors."""
    seed_everything(config.seed)  # one thread: float sums round the same way in every run
    split = load_digits_split()
    start = time.perf_counter()
    result = train_latent_diffusion(split.train_images, split.train_labels, config)
    seconds, model = time.perf_counter() - start, result.ema
    return {
        "config": config.to_dict(),
        "seed": config.seed,
        "data": {"test_fraction": 0.2, "seed": 0, "train_size": len(split.train_images)},
        "parameters": {
            name: count_parameters(getattr(model, name)) for name in ("vae", "text_encoder", "unet")
        },
        "losses": torch.tensor(result.losses, dtype=torch.float32),
        "train_seconds": round(seconds, 1),
        "threads": torch.get_num_threads(),
        "torch_version": str(torch.__version__),
        "weights": model.state_dict(),
    }


def main(argv: list[str] | None = None) -> pathlib.Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=DEFAULT_CONFIG.steps)
    parser.add_argument("--autoencoder-steps", type=int, default=DEFAULT_CONFIG.autoencoder_steps)
    parser.add_argument("--seed", type=int, default=DEFAULT_CONFIG.seed)
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_PATH, help="checkpoint path")
    args = parser.parse_args(argv)
    config = dataclasses.replace(
        DEFAULT_CONFIG,
        steps=args.steps,
        autoencoder_steps=args.autoencoder_steps,
        seed=args.seed,
    )
    state = train_model(config)
    checkpoints.save(args.out, state, checkpoints.LATENT_MODEL)
    print(
        f"{args.out}: {sum(state['parameters'].values()):,} parameters, "
        f"{len(state['losses'])} steps, {state['train_seconds']:.0f} s",
        file=sys.stderr,
    )
    return args.out


if __name__ == "__main__":
    main()
