"""Train one of the book's digits denoisers and write its checkpoint (EMA weights only).

    python scripts/train_digits.py unconditional  # -> digits_unconditional.safetensors
    python scripts/train_digits.py conditional    # -> digits_conditional.safetensors

(written into ``diffusion_core/weights/``, where the package ships them).

The settings are those of ``diffusion_core.images.DIGITS_MODELS``: a small U-Net trained with
the simple eps-loss on the training split of the scikit-learn digits, under DDPM's linear
schedule. The run is deterministic: the script seeds everything and uses one CPU thread, so the
same settings give the same weights, bit for bit, on a given machine and torch version (the
unit tests check this on a short run). ``--steps`` shortens a run for such checks.

The checkpoint holds the EMA weights, the settings, the loss of every step and the training
time; notebooks read it with ``diffusion_core.images.load_digits_model``.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

from diffusion_core import checkpoints
from diffusion_core.device import seed_everything
from diffusion_core.images import (
    DIGITS_MODELS,
    build_net,
    digits_recipe,
    load_digits_split,
)
from diffusion_core.train import train, training_record

ROOT = pathlib.Path(__file__).resolve().parents[1]


def default_path(name: str) -> pathlib.Path:
    return ROOT / "diffusion_core" / "weights" / f"digits_{name}.safetensors"


def train_model(name: str, steps: int | None = None, progress: bool = False) -> dict:
    """Train model ``name`` of DIGITS_MODELS (optionally for fewer steps); return the checkpoint."""
    spec = DIGITS_MODELS[name]
    settings = dict(spec["train"])
    if steps is not None:
        settings["steps"] = steps
    objective, config = digits_recipe(settings)
    seed_everything(spec["init_seed"])  # one thread; the initial weights come from this seed
    net = build_net(spec["net"])
    split = load_digits_split()
    labels = split.train_labels if spec["net"]["num_classes"] is not None else None
    start, cpu_start = time.perf_counter(), time.process_time()
    run = train(
        net,
        split.train_images,
        objective,
        config,
        labels=labels,
        progress=progress,
        device="cpu",
    )
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return {
        "name": name,
        "net": spec["net"],
        "train": settings,
        "init_seed": spec["init_seed"],
        "schedule": {"kind": "linear", "T": 1000},
        "prediction": objective.prediction,
        "data": {"test_fraction": 0.2, "seed": 0, "train_size": len(split.train_images)},
        **training_record(run, seconds, cpu_seconds),
        "ema": run.ema.state_dict(),
    }


def main(argv: list[str] | None = None) -> pathlib.Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(DIGITS_MODELS))
    parser.add_argument("--steps", type=int, default=None, help="override the number of steps")
    parser.add_argument("--out", type=pathlib.Path, default=None, help="checkpoint path")
    parser.add_argument("--progress", action="store_true", help="show a progress bar")
    args = parser.parse_args(argv)
    state = train_model(args.name, args.steps, args.progress)
    path = args.out if args.out is not None else default_path(args.name)
    checkpoints.save(path, state, checkpoints.DIGITS_MODEL)
    print(
        f"{path}: {state['parameters']:,} parameters, {len(state['losses'])} steps, "
        f"{state['train_seconds']:.0f} s",
        file=sys.stderr,
    )
    return path


if __name__ == "__main__":
    main()
