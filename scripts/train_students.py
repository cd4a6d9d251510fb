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

    python scripts/train_students.py --which digits_progressive
                                        # -> fewstep_digits_students.safetensors

The same rounds for the book's unconditional digits denoiser (``digits_unconditional``, an eps
U-Net): the first teacher is DDIM with it on 64 steps uniform in log-SNR, the first student a
U-Net of the same shape that predicts v, initialised from the teacher's weights (so its first
round also teaches it the new output); the students of 8, 4, 2 and 1 steps are stored in
float16, read by the same ``load_students``.

    python scripts/train_students.py --which consistency   # -> fewstep_consistency.safetensors
    python scripts/train_students.py --which digits        # -> fewstep_digits.safetensors

Consistency distillation (Song et al. 2023; ``diffusion_core.consistency``) of the same 2-D
mixture, its teacher one Heun step of the exact denoiser between adjacent levels of a Karras
grid, and of the book's unconditional digits denoiser (``digits_unconditional``, an eps U-Net),
its student a U-Net of the same shape initialised from the teacher's weights. One network per
data set serves every number of steps; its intermediate sampling levels for 2 and 4 steps are
chosen greedily on pilot samples (sliced W2 to fresh mixture data; Frechet distance to the
training digits in the classifier's features), never on the samples the book scores. The
weights are stored in float16 (kind "consistency_students"); Chapter 8 reads them with
``diffusion_core.consistency.load_consistency_model``.
"""

from __future__ import annotations

import argparse
import copy
import pathlib
import sys
import time

import torch

from diffusion_core import checkpoints, consistency, distill, images, metrics
from diffusion_core.analytic import default_mixture_2d
from diffusion_core.device import seed_everything
from diffusion_core.nets import MLPDenoiser, count_parameters
from diffusion_core.parameterization import as_denoiser, exact_denoiser
from diffusion_core.samplers import prior_sample
from diffusion_core.schedules import linear_schedule
from diffusion_core.train import TrainConfig, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "diffusion_core" / "weights"
DEFAULT_PATH = WEIGHTS / "fewstep_students.safetensors"
PATHS = {
    "progressive": DEFAULT_PATH,
    "consistency": WEIGHTS / "fewstep_consistency.safetensors",
    "digits": WEIGHTS / "fewstep_digits.safetensors",
    "digits_progressive": WEIGHTS / "fewstep_digits_students.safetensors",
}
TEACHER_STEPS = 64
KEEP = (8, 4, 2, 1)  # the students that ship
NET = {"data_dim": 2, "hidden": 128, "depth": 3, "time_dim": 64}
FIRST_ROUND = {"steps": 4000, "batch_size": 256, "lr": 2e-3, "lr_schedule": "cosine"}
LATER_ROUNDS = {"steps": 2000, "batch_size": 256, "lr": 1e-3, "lr_schedule": "cosine"}
DATA_SIZE, DATA_SEED, INIT_SEED = 50_000, 1, 3
CONSISTENCY = {
    "mixture": {
        "points": 40,  # N noisy Karras levels (rho = 7) from sigma_T to sigma_1
        "sigma_data": 2.0,  # about the mixture's standard deviation
        "target_decay": 0.95,
        "distance": "l2",
        "huber_c": 0.03,
        "train": {"steps": 8000, "batch_size": 256, "lr": 2e-3, "lr_schedule": "cosine"},
    },
    "digits": {
        "points": 18,  # as for CIFAR-10 in the paper
        "sigma_data": 0.5,
        "target_decay": 0.95,
        "distance": "pseudo_huber",
        "huber_c": 0.0043,  # 0.00054 sqrt(d), d = 64 (Song & Dhariwal 2024)
        "train": {"steps": 1500, "batch_size": 128, "lr": 4e-4, "lr_schedule": "cosine"},
    },
}
DIGITS_PROGRESSIVE = {
    "teacher_steps": 64,
    "spacing": "log_snr",
    "first_round": {"steps": 3000, "batch_size": 128, "lr": 2e-4, "lr_schedule": "cosine"},
    "later_rounds": {"steps": 1500, "batch_size": 128, "lr": 2e-4, "lr_schedule": "cosine"},
}
PILOT, PILOT_SEED, LEVELS_SEED = 4000, 21, 22  # the starts and data that choose the levels
SAMPLING_STEPS = (2, 4)


def train_students(steps: int | None = None, log=print) -> dict:
    """Run every round (each shortened to ``steps`` optimizer steps if given); return the
    checkpoint's state."""
    seed_everything(INIT_SEED)  # one thread; the first student's weights come from this seed
    mixture, schedule = default_mixture_2d(), linear_schedule(1000)
    data = mixture.sample(DATA_SIZE, torch.Generator().manual_seed(DATA_SEED)).float()
    grid = schedule.grid(TEACHER_STEPS, "log_snr")
    rounds = (FIRST_ROUND, *[LATER_ROUNDS] * (TEACHER_STEPS.bit_length() - 2))
    net = MLPDenoiser(**NET)
    students, record = _progressive_rounds(
        net, exact_denoiser(mixture), grid, data, rounds, KEEP, steps, log
    )
    return {
        "kind": "mlp",
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
        "rounds": record,
        "threads": torch.get_num_threads(),
        "torch_version": str(torch.__version__),
        "students": students,
    }


def train_digits_students(steps: int | None = None, log=print) -> dict:
    """Progressive distillation of the unconditional digits denoiser (an eps U-Net): the
    first teacher is DDIM with it on DIGITS_PROGRESSIVE's grid; the first student, a U-Net of
    the same shape predicting v, starts from its weights. Weights are stored in float16."""
    settings = DIGITS_PROGRESSIVE
    seed_everything(INIT_SEED)
    teacher_net, teacher_record = images.load_digits_model(
        checkpoints.packaged("digits_unconditional")
    )
    schedule, split = images.digits_schedule(), images.load_digits_split()
    grid = schedule.grid(settings["teacher_steps"], settings["spacing"])
    net = images.build_net(teacher_record["net"])
    net.load_state_dict(teacher_net.state_dict())
    net.requires_grad_(True)
    rounds = (settings["first_round"], *[settings["later_rounds"]] * (grid.steps.bit_length() - 2))
    students, record = _progressive_rounds(
        net, as_denoiser(teacher_net, "eps"), grid, split.train_images, rounds, KEEP, steps, log
    )
    return {
        **settings,
        "kind": "unet",
        "net": teacher_record["net"],
        "prediction": "v",
        "schedule": {"kind": "linear", "T": 1000},
        "init_seed": INIT_SEED,
        "parameters": count_parameters(net),
        "rounds": record,
        "threads": torch.get_num_threads(),
        "torch_version": str(torch.__version__),
        "students": {
            name: {key: value.to(torch.float16) for key, value in weights.items()}
            for name, weights in students.items()
        },
    }


def _progressive_rounds(net, teacher, grid, data, rounds, keep, steps, log):
    """Alg. 2 of Salimans & Ho: one round per entry of ``rounds`` (a TrainConfig's settings),
    each training a v-predicting copy of the last student (``net`` first) to take one DDIM step
    where its teacher takes two; the student then teaches the next round on the halved grid.
    Returns the weights of the students whose steps are in ``keep``, and each round's record."""
    students, record = {}, []
    for k, settings in enumerate(rounds):
        settings = dict(settings, ema_decay=None, seed=k)
        if steps is not None:
            settings["steps"] = steps
        objective = distill.ProgressiveDistillationLoss(teacher, grid)
        began = time.perf_counter()
        run = train(net, data, objective, TrainConfig(**settings), progress=False, device="cpu")
        seconds = time.perf_counter() - began
        loss = sum(run.losses[-100:]) / len(run.losses[-100:])
        record.append({"steps": objective.steps, "loss": loss, "seconds": round(seconds, 1)})
        log(
            f"round {k + 1}: {grid.steps} -> {objective.steps} steps, loss {loss:.2e}, "
            f"{seconds:.0f} s"
        )
        if objective.steps in keep:
            students[f"steps_{objective.steps}"] = {
                name: value.clone() for name, value in net.state_dict().items()
            }
        net.eval().requires_grad_(False)
        teacher, grid = as_denoiser(net, "v"), distill.halve(grid)
        net = copy.deepcopy(net).train().requires_grad_(True)
    return students, record


def _consistency_run(net, data, teacher, process, settings, steps, log) -> tuple[dict, object]:
    """Train one consistency model; return its record (without levels) and its function."""
    grid = process.grid(settings["points"], "karras")[:-1]
    objective = consistency.ConsistencyDistillationLoss(
        teacher,
        grid,
        sigma_data=settings["sigma_data"],
        target_decay=settings["target_decay"],
        distance=settings["distance"],
        huber_c=settings["huber_c"],
    )
    config = dict(settings["train"], ema_decay=None, seed=0)
    if steps is not None:
        config["steps"] = steps
    began = time.perf_counter()
    run = train(net, data, objective, TrainConfig(**config), progress=False, device="cpu")
    seconds = time.perf_counter() - began
    loss = sum(run.losses[-100:]) / len(run.losses[-100:])
    log(f"consistency distillation: {config['steps']} steps, loss {loss:.2e}, {seconds:.0f} s")
    # float16 storage: the one-step samples of the rounded weights against the trained ones
    net.eval().requires_grad_(False)
    start = prior_sample(grid, (512, *data.shape[1:]), torch.Generator().manual_seed(PILOT_SEED))
    one_step = objective.function(net)(start.float(), grid[0])
    weights = {name: value.to(torch.float16) for name, value in net.state_dict().items()}
    net.load_state_dict({name: value.float() for name, value in weights.items()})
    rounded = objective.function(net)(start.float(), grid[0])
    record = {
        **{name: value for name, value in settings.items() if name != "train"},
        "train": config,
        "sigma_min": objective.sigma_min,
        "loss": loss,
        "seconds": round(seconds, 1),
        "parameters": count_parameters(net),
        "float16_rms_change": float(metrics.rms_distance(rounded.flatten(1), one_step.flatten(1))),
        "weights": weights,
    }
    return record, objective.function(net)


def _levels(function, grid, score, start) -> dict:
    """The greedy sampling levels (indices into the training grid) for SAMPLING_STEPS."""
    chosen = {}
    for k in SAMPLING_STEPS:
        levels = consistency.choose_levels(function, grid, k, score, start, seed=LEVELS_SEED)
        indices = [int((grid.t == t).nonzero()) for t in levels.t[:-1]]
        chosen[str(k)] = indices
    return chosen


def train_consistency_mixture(steps: int | None = None, pilot: int = PILOT, log=print) -> dict:
    """The consistency model of the 2-D mixture (``steps`` shortens training and ``pilot``
    the search of the sampling levels, for checks)."""
    settings = CONSISTENCY["mixture"]
    seed_everything(INIT_SEED)
    mixture, schedule = default_mixture_2d(), linear_schedule(1000)
    data = mixture.sample(DATA_SIZE, torch.Generator().manual_seed(DATA_SEED)).float()
    net = MLPDenoiser(**NET)
    record, function = _consistency_run(
        net, data, exact_denoiser(mixture), schedule, settings, steps, log
    )
    grid = schedule.grid(settings["points"], "karras")[:-1]
    pilot_data = mixture.sample(pilot, torch.Generator().manual_seed(PILOT_SEED))
    start = prior_sample(grid, (pilot, 2), torch.Generator().manual_seed(PILOT_SEED + 1))

    def score(samples):
        draws = torch.Generator().manual_seed(0)
        return float(metrics.sliced_wasserstein(samples, pilot_data, generator=draws))

    record["levels"] = _levels(function, grid, score, start.float())
    record.update(kind="mlp", net=NET, schedule={"kind": "linear", "T": 1000})
    return _consistency_state("mixture", record)


def train_consistency_digits(steps: int | None = None, log=print) -> dict:
    """The consistency model of the unconditional digits denoiser, initialised from it."""
    settings = CONSISTENCY["digits"]
    seed_everything(INIT_SEED)
    teacher_net, teacher_record = images.load_digits_model(
        checkpoints.packaged("digits_unconditional")
    )
    schedule, split = images.digits_schedule(), images.load_digits_split()

    teacher = as_denoiser(teacher_net, "eps")
    net = images.build_net(teacher_record["net"])
    net.load_state_dict(teacher_net.state_dict())
    net.requires_grad_(True)
    record, function = _consistency_run(
        net, split.train_images, teacher, schedule, settings, steps, log
    )
    grid = schedule.grid(settings["points"], "karras")[:-1]
    classifier = images.digits_classifier(split)
    train_features = images.classifier_features(classifier, split.train_images)
    start = prior_sample(grid, (256, 1, 8, 8), torch.Generator().manual_seed(PILOT_SEED + 1))

    def score(samples):
        features = images.classifier_features(classifier, samples.float().clamp(-1, 1))
        return float(metrics.frechet_distance(features, train_features))

    record["levels"] = _levels(function, grid, score, start.float())
    record.update(kind="unet", net=teacher_record["net"], schedule={"kind": "linear", "T": 1000})
    return _consistency_state("digits", record)


def _consistency_state(key: str, record: dict) -> dict:
    return {
        "models": {key: record},
        "init_seed": INIT_SEED,
        "threads": torch.get_num_threads(),
        "torch_version": str(torch.__version__),
    }


def main(argv: list[str] | None = None) -> pathlib.Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per round")
    parser.add_argument("--which", choices=tuple(PATHS), default="progressive")
    parser.add_argument("--out", type=pathlib.Path, default=None)
    args = parser.parse_args(argv)
    out = PATHS[args.which] if args.out is None else args.out
    if args.which in ("progressive", "digits_progressive"):
        trainer = train_students if args.which == "progressive" else train_digits_students
        checkpoints.save(out, trainer(args.steps), checkpoints.FEWSTEP_STUDENTS)
    else:
        trainer = train_consistency_mixture if args.which == "consistency" else None
        trainer = trainer or train_consistency_digits
        checkpoints.save(out, trainer(args.steps), checkpoints.CONSISTENCY_STUDENTS)
    print(f"wrote {out}", file=sys.stderr)
    return out


if __name__ == "__main__":
    main()
