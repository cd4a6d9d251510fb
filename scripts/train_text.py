"""Train the book's token models and write their checkpoint (EMA weights only).

    python scripts/train_text.py    # -> diffusion_core/weights/text_models.safetensors

Four networks of one size (``diffusion_core.discrete.TokenTransformer``, the same settings):
for each language of ``diffusion_core.languages.book_languages`` (the Markov language and the
two-digit additions), a masked diffusion denoiser trained on the masked ELBO
(``diffusion_core.losses.MaskedDiffusionLoss``) and a causal autoregressive model trained on
the exact likelihood (``diffusion_core.losses.AutoregressiveLoss``), with the same data, steps,
minibatches and optimiser: equal parameters and equal training compute, so that Chapter 9 can
compare them. The data are ``DATA_SIZE`` sequences drawn from each language with a fixed seed.
The run is deterministic: one CPU thread, fixed seeds. ``--steps`` shortens a run for checks.

Read the checkpoint with
``diffusion_core.discrete.load_token_models(diffusion_core.checkpoints.packaged("text_models"))``.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import torch

from diffusion_core import checkpoints
from diffusion_core.device import seed_everything
from diffusion_core.discrete import TokenTransformer
from diffusion_core.languages import BOOK_MARKOV, book_languages
from diffusion_core.losses import AutoregressiveLoss, MaskedDiffusionLoss
from diffusion_core.nets import count_parameters
from diffusion_core.train import TrainConfig, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_PATH = ROOT / "diffusion_core" / "weights" / "text_models.safetensors"
NET = {"dim": 48, "layers": 2, "heads": 4}
SETTINGS = {
    "steps": 3000,
    "batch_size": 128,
    "lr": 2e-3,
    "lr_schedule": "cosine",
    "ema_decay": 0.999,
    "seed": 9,
}
DATA_SIZE = 50_000
DATA_SEED = 1
INIT_SEED = 9


def train_models(steps: int | None = None, progress: bool = False) -> dict:
    """Train the four models (optionally for fewer steps); return the checkpoint's state."""
    settings = dict(SETTINGS, **({} if steps is None else {"steps": steps}))
    models = {}
    for language_name, language in book_languages().items():
        data = language.sample(DATA_SIZE, torch.Generator().manual_seed(DATA_SEED)).float()
        for kind, objective in (
            ("diffusion", MaskedDiffusionLoss(language.vocab_size, estimator="count")),
            ("autoregressive", AutoregressiveLoss(language.vocab_size)),
        ):
            seed_everything(INIT_SEED)  # one thread; the initial weights come from this seed
            config = {
                "vocab_size": language.vocab_size,
                "length": language.length,
                **NET,
                "causal": kind == "autoregressive",
            }
            net = TokenTransformer(**config)
            start = time.perf_counter()
            run = train(
                net, data, objective, TrainConfig(**settings), progress=progress, device="cpu"
            )
            models[f"{language_name}_{kind}"] = {
                "net": config,
                "language": language_name,
                "objective": type(objective).__name__,
                "parameters": count_parameters(net),
                "losses": torch.tensor(run.losses, dtype=torch.float32),
                "train_seconds": round(time.perf_counter() - start, 1),
                "weights": run.ema.state_dict(),
            }
            print(
                f"{language_name}_{kind}: last loss {sum(run.losses[-100:]) / 100:.4f} nats per "
                f"token, {models[f'{language_name}_{kind}']['train_seconds']:.0f} s",
                file=sys.stderr,
            )
    return {
        "train": settings,
        "init_seed": INIT_SEED,
        "data": {"size": DATA_SIZE, "seed": DATA_SEED, "markov": dict(BOOK_MARKOV)},
        "threads": torch.get_num_threads(),
        "torch_version": str(torch.__version__),
        "models": models,
    }


def main(argv: list[str] | None = None) -> pathlib.Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="override the number of steps")
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_PATH, help="checkpoint path")
    parser.add_argument("--progress", action="store_true", help="show a progress bar")
    args = parser.parse_args(argv)
    state = train_models(args.steps, args.progress)
    checkpoints.save(args.out, state, checkpoints.TEXT_MODELS)
    seconds = sum(model["train_seconds"] for model in state["models"].values())
    print(f"{args.out}: 4 models, {seconds:.0f} s in all", file=sys.stderr)
    return args.out


if __name__ == "__main__":
    main()
