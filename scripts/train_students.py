"""Distil DDIM with the exact 2-D mixture denoiser into students of 8, 4, 2 and 1 steps.

    python scripts/train_students.py    # -> diffusion_core/weights/fewstep_students.safetensors

Progressive distillation (Salimans & Ho 2022; ``diffusion_core.distill``) on the book's 2-D
mixture (``analytic.default_mixture_2d``) and the DDPM linear schedule (T = 1000). The first
teacher is DDIM with the exact denoiser on the grid of ``TEACHER_STEPS`` steps evenly spaced in
log-SNR; each round trains an MLP denoiser (``nets.MLPDenoiser``, v-prediction) to take one
step where its teacher takes two, with ``diffusion_core.train.train`` and
``distill.ProgressiveDistillationLoss``, and the student teaches the next round, initialised
from its teacher's weights (the paper's Alg. 2). Each round's grid is every other point of the
last. The run is deterministic: one CPU thread, fixed seeds. ``--steps`` shortens every round
for checks.

The checkpoint (kind "fewstep_students") holds the students of 8, 4, 2 and 1 steps, the
settings, each round's final loss and seconds. Chapter 8 reads it with
``diffusion_core.distill.load_students(checkpoints.packaged("fewstep_students"))``.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import torch

from diffusion_core import checkpoints, distill
from diffusion_core.analytic import default_mixture_2d
from diffusion_core.device import seed_everything
from diffusion_core.nets import MLPDenoiser, count_parameters
from diffusion_core.parameterization import as_denoiser, exact_denoiser
from diffusion_core.schedules import linear_schedule
from diffusion_core.train import TrainConfig, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_PATH = ROOT / "diffusion_core" / "weights" / "fewstep_students.safetensors"
TEACHER_STEPS = 64
KEEP = (8, 4, 2, 1)  # the students that ship
NET = {"data_dim": 2, "hidden": 128, "depth": 3, "time_dim": 64}
FIRST_ROUND = {"steps": 4000, "batch_size": 256, "lr": 2e-3, "lr_schedule": "cosine"}
LATER_ROUNDS = {"steps": 2000, "batch_size": 256, "lr": 1e-3, "lr_schedule": "cosine"}
DATA_SIZE, DATA_SEED, INIT_SEED = 50_000, 1, 3


def train_students(steps: int | None = None, log=print) -> dict:
    """Run every round (each shortened to ``steps`` optimizer steps if given); return the
    checkpoint's state."""
    seed_everything(INIT_SEED)  # one thread; the first student's weights come from this seed
    mixture, schedule = default_mixture_2d(), linear_schedule(1000)
    data = mixture.sample(DATA_SIZE, torch.Generator().manual_seed(DATA_SEED)).float()
    grid = schedule.grid(TEACHER_STEPS, "log_snr")
    teacher, net = exact_denoiser(mixture), MLPDenoiser(**NET)
    students, rounds = {}, []
    for k in range(TEACHER_STEPS.bit_length() - 1):
        settings = dict(FIRST_ROUND if k == 0 else LATER_ROUNDS, ema_decay=None, seed=k)
        if steps is not None:
            settings["steps"] = steps
        objective = distill.ProgressiveDistillationLoss(teacher, grid)
        began = time.perf_counter()
        run = train(net, data, objective, TrainConfig(**settings), progress=False, device="cpu")
        seconds = time.perf_counter() - began
        loss = sum(run.losses[-100:]) / len(run.losses[-100:])
        rounds.append({"steps": objective.steps, "loss": loss, "seconds": round(seconds, 1)})
        log(
            f"round {k + 1}: {grid.steps} -> {objective.steps} steps, loss {loss:.2e}, "
            f"{seconds:.0f} s"
        )
        if objective.steps in KEEP:
            students[f"steps_{objective.steps}"] = {
                name: value.clone() for name, value in net.state_dict().items()
            }
        net.eval()
        teacher, grid = as_denoiser(net, "v"), distill.halve(grid)
        net = _copy(net)
    return {
        "net": NET,
        "prediction": "v",
        "teacher_steps": TEACHER_STEPS,
        "spacing": "log_snr",
        "schedule": {"kind": "linear", "T": 1000},
        "first_round": FIRST_ROUND,
        "later_rounds": LATER_ROUNDS,
        "data": {"size": DATA_SIZE, "seed": DATA_SEED},
        "init_seed": INIT_SEED,
        "parameters": count_parameters(net),
        "rounds": rounds,
        "threads": torch.get_num_threads(),
        "torch_version": str(torch.__version__),
        "students": students,
    }


def _copy(net: MLPDenoiser) -> MLPDenoiser:
    """A fresh student with its teacher's weights, in training mode."""
    student = MLPDenoiser(**NET)
    student.load_state_dict(net.state_dict())
    return student.train()


def main(argv: list[str] | None = None) -> pathlib.Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per round")
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_PATH)
    args = parser.parse_args(argv)
    state = train_students(args.steps)
    checkpoints.save(args.out, state, checkpoints.FEWSTEP_STUDENTS)
    print(f"wrote {args.out}", file=sys.stderr)
    return args.out


if __name__ == "__main__":
    main()
