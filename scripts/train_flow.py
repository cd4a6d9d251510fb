"""Train the book's rectified flow on the digits and write its checkpoint (EMA weights only).

    python scripts/train_flow.py    # -> diffusion_core/weights/flow_digits.safetensors

The network is the U-Net of the unconditional digits denoiser
(``diffusion_core.images.DIGITS_MODELS``), trained here to predict the velocity eps - x0 of the
rectified-flow path x_t = (1 - t) x0 + t eps with the conditional flow-matching loss
(``diffusion_core.losses.FlowMatchingLoss``, t uniform). The data are the training split,
dequantised: each image x / 8 - 1 (levels 1/8 apart) plus uniform noise over its level's bin,
``COPIES`` draws per image, so that the model has a density whose bits per dimension can be
compared with a discrete model's (Chapter 7). The run is deterministic: one CPU thread, fixed
seeds. ``--steps`` shortens a run for checks.

The checkpoint is of kind "digits_model"; read it with
``diffusion_core.images.load_digits_model(diffusion_core.checkpoints.packaged("flow_digits"))``.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import torch

from diffusion_core import checkpoints
from diffusion_core.device import seed_everything
from diffusion_core.images import DIGITS_MODELS, build_net, load_digits_split
from diffusion_core.likelihood import dequantize
from diffusion_core.losses import FlowMatchingLoss
from diffusion_core.nets import count_parameters
from diffusion_core.train import TrainConfig, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_PATH = ROOT / "diffusion_core" / "weights" / "flow_digits.safetensors"
BIN_WIDTH = 1 / 8  # the digits' levels 0..16 become x / 8 - 1
COPIES = 8  # dequantised copies of each training image
SETTINGS = {"steps": 2000, "batch_size": 128, "lr": 1e-3, "ema_decay": 0.999, "seed": 7}
INIT_SEED = 7


def train_flow(steps: int | None = None, progress: bool = False) -> dict:
    """Train the digits flow (optionally for fewer steps); return the checkpoint's state."""
    settings = dict(SETTINGS, **({} if steps is None else {"steps": steps}))
    net_config = DIGITS_MODELS["unconditional"]["net"]
    generator = seed_everything(INIT_SEED)  # one thread; the initial weights come from this seed
    net = build_net(net_config)
    split = load_digits_split()
    data = dequantize(split.train_images.repeat(COPIES, 1, 1, 1), BIN_WIDTH, generator)
    start, cpu_start = time.perf_counter(), time.process_time()
    run = train(
        net, data, FlowMatchingLoss(), TrainConfig(**settings), progress=progress, device="cpu"
    )
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return {
        "name": "flow",
        "net": net_config,
        "train": settings,
        "init_seed": INIT_SEED,
        "process": {"kind": "rectified_flow", "time_scale": 1000.0, "time_sampler": "uniform"},
        "prediction": "velocity",
        "data": {
            "test_fraction": 0.2,
            "seed": 0,
            "train_size": len(split.train_images),
            "dequantization": {"bin_width": BIN_WIDTH, "copies": COPIES},
        },
        "parameters": count_parameters(net),
        "losses": torch.tensor(run.losses, dtype=torch.float32),
        "train_seconds": round(seconds, 1),
        "cpu_seconds": round(cpu_seconds, 1),
        "threads": torch.get_num_threads(),
        "torch_version": str(torch.__version__),
        "ema": run.ema.state_dict(),
    }


def main(argv: list[str] | None = None) -> pathlib.Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="override the number of steps")
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_PATH, help="checkpoint path")
    parser.add_argument("--progress", action="store_true", help="show a progress bar")
    args = parser.parse_args(argv)
    state = train_flow(args.steps, args.progress)
    checkpoints.save(args.out, state, checkpoints.DIGITS_MODEL)
    print(
        f"{args.out}: {state['parameters']:,} parameters, {len(state['losses'])} steps, "
        f"{state['train_seconds']:.0f} s",
        file=sys.stderr,
    )
    return args.out


if __name__ == "__main__":
    main()
