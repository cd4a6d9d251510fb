"""Train the book's rectified flow on the digits, and its equal-budget eps-prediction twins.

    python scripts/train_flow.py    # -> diffusion_core/weights/flow_digits.safetensors
    python scripts/train_flow.py --objective eps --seed 8 --out eps8.safetensors
    python scripts/train_flow.py --collect eps7.safetensors eps8.safetensors ...
                                    # -> diffusion_core/weights/digits_equal_budget.safetensors

The network is the U-Net of the unconditional digits denoiser
(``diffusion_core.images.DIGITS_MODELS``), trained here to predict the velocity eps - x0 of the
rectified-flow path x_t = (1 - t) x0 + t eps with the conditional flow-matching loss
(``diffusion_core.losses.FlowMatchingLoss``, t uniform). The data are the training split,
dequantised: each image x / 8 - 1 (levels 1/8 apart) plus uniform noise over its level's bin,
``COPIES`` draws per image, so that the model has a density whose bits per dimension can be
compared with a discrete model's (Chapter 7). The run is deterministic: one CPU thread, fixed
seeds. ``--steps`` shortens a run for checks.

``--objective eps`` trains the same network on the same data with the same budget, but with
the eps-loss (``diffusion_core.losses.DiffusionLoss``) under the schedule of the digits models
of Chapter 4 (``diffusion_core.images.digits_schedule``): the equal-budget comparison of
Chapter 7. ``--seed`` sets the seed of the initial weights, of the dequantisation noise and of
the minibatches together (``SETTINGS["seed"]`` = 7 by default), so that an eps run and a flow
run of one seed start from the same weights and see the same minibatches. ``--collect`` gathers
such runs into one checkpoint of kind "digits_model_set", with the EMA weights in float16
(half the file; read back into float32 by ``diffusion_core.flow.load_digits_model_set``).

The default checkpoint is of kind "digits_model"; read it with
``diffusion_core.images.load_digits_model(diffusion_core.checkpoints.packaged("flow_digits"))``.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

from diffusion_core import checkpoints
from diffusion_core.device import seed_everything
from diffusion_core.images import DIGITS_MODELS, build_net, digits_schedule, load_digits_split
from diffusion_core.likelihood import dequantize
from diffusion_core.losses import DiffusionLoss, FlowMatchingLoss
from diffusion_core.train import TrainConfig, train, training_record

ROOT = pathlib.Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "diffusion_core" / "weights"
DEFAULT_PATH = WEIGHTS / "flow_digits.safetensors"
SET_PATH = WEIGHTS / "digits_equal_budget.safetensors"
BIN_WIDTH = 1 / 8  # the digits' levels 0..16 become x / 8 - 1
COPIES = 8  # dequantised copies of each training image
SETTINGS = {"steps": 2000, "batch_size": 128, "lr": 1e-3, "ema_decay": 0.999, "seed": 7}
INIT_SEED = 7
OBJECTIVES = ("flow", "eps")


def _objective(name: str):
    """The loss and the record of the path (or schedule) and prediction of objective ``name``."""
    if name == "flow":
        process = {"kind": "rectified_flow", "time_scale": 1000.0, "time_sampler": "uniform"}
        return FlowMatchingLoss(), {"process": process, "prediction": "velocity"}
    loss = DiffusionLoss(digits_schedule())  # Chapter 4's eps-loss: L_simple, linear, T = 1000
    return loss, {"schedule": {"kind": "linear", "T": 1000}, "prediction": loss.prediction}


def train_flow(
    steps: int | None = None,
    progress: bool = False,
    objective: str = "flow",
    seed: int | None = None,
) -> dict:
    """Train the digits flow, or its eps twin (optionally for fewer steps, with another seed);
    return the checkpoint's state."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    settings = dict(SETTINGS, **({} if steps is None else {"steps": steps}))
    init_seed = INIT_SEED if seed is None else seed
    settings["seed"] = settings["seed"] if seed is None else seed
    loss, record = _objective(objective)
    net_config = DIGITS_MODELS["unconditional"]["net"]
    generator = seed_everything(init_seed)  # one thread; the initial weights come from this seed
    net = build_net(net_config)
    split = load_digits_split()
    data = dequantize(split.train_images.repeat(COPIES, 1, 1, 1), BIN_WIDTH, generator)
    start, cpu_start = time.perf_counter(), time.process_time()
    run = train(net, data, loss, TrainConfig(**settings), progress=progress, device="cpu")
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return {
        "name": objective if seed is None else f"{objective}-seed{settings['seed']}",
        "net": net_config,
        "train": settings,
        "init_seed": init_seed,
        **record,
        "data": {
            "test_fraction": 0.2,
            "seed": 0,
            "train_size": len(split.train_images),
            "dequantization": {"bin_width": BIN_WIDTH, "copies": COPIES},
        },
        **training_record(run, seconds, cpu_seconds),
        "ema": run.ema.state_dict(),
    }


def collect(paths: list[pathlib.Path]) -> dict:
    """The state of a "digits_model_set": the runs at ``paths`` (digits_model checkpoints of
    this script), in that order, each with its EMA weights in float16."""
    models = []
    for path in paths:
        state = checkpoints.load(path, checkpoints.DIGITS_MODEL)
        # half precision: half the file; the samples' scores do not change measurably
        state["ema"] = {name: value.half() for name, value in state["ema"].items()}
        models.append(state)
    return {"models": models}


def main(argv: list[str] | None = None) -> pathlib.Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="override the number of steps")
    parser.add_argument("--objective", choices=OBJECTIVES, default="flow", help="the loss")
    parser.add_argument("--seed", type=int, default=None, help="weights and minibatch seed")
    parser.add_argument("--out", type=pathlib.Path, default=None, help="checkpoint path")
    parser.add_argument("--progress", action="store_true", help="show a progress bar")
    parser.add_argument(
        "--collect", type=pathlib.Path, nargs="+", help="gather runs into one float16 set"
    )
    args = parser.parse_args(argv)
    if args.collect:
        out = SET_PATH if args.out is None else args.out
        state = collect(args.collect)
        checkpoints.save(out, state, checkpoints.DIGITS_MODEL_SET)
        print(f"{out}: {len(state['models'])} models", file=sys.stderr)
        return out
    out = DEFAULT_PATH if args.out is None else args.out
    state = train_flow(args.steps, args.progress, args.objective, args.seed)
    checkpoints.save(out, state, checkpoints.DIGITS_MODEL)
    print(
        f"{out}: {state['parameters']:,} parameters, {len(state['losses'])} steps, "
        f"{state['train_seconds']:.0f} s",
        file=sys.stderr,
    )
    return out


if __name__ == "__main__":
    main()
