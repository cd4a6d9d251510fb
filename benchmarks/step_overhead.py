"""Per-step overhead of our samplers against diffusers' scheduler loops, with a trivial model.

The model returns its input, so what is timed is the sampler's own work per model evaluation:
its arithmetic, its Python and its tensor bookkeeping. Ours are timed twice: with a bare
denoiser (x0_hat = x), and as a user with an eps-prediction network runs them, that network
(eps = x) wrapped by the public ``parameterization.as_denoiser``, conversion included.
Diffusers' schedulers see the noise eps = x. Each contender is timed as a user runs it: ours as
``schedule.grid`` plus the sampler call, diffusers' as ``set_timesteps`` plus the usual loop
(``scale_model_input``, the model, ``scheduler.step``). Scheduler and schedule objects
are built once, outside the timing. The input is float32 of shape (batch, 2), the book's 2-D
data; our samplers keep their state in float64 (diffusers' in the input's dtype, or float32).

The machine is shared and noisy: the contenders of a pair are timed in turn, round after round,
and the medians are reported, with the ratio ours / diffusers. The target is a ratio of at most
0.5. Heun makes two model evaluations per step (both libraries); times are per evaluation.

Run:  .venv/bin/python benchmarks/step_overhead.py [--steps 50] [--repeats 15] [--device auto]
"""

from __future__ import annotations

import argparse

import torch
from common import header, interleaved_medians, require_diffusers, table

from diffusion_core import samplers
from diffusion_core.device import get_device
from diffusion_core.parameterization import as_denoiser
from diffusion_core.schedules import linear_schedule

PAIRS = {  # algorithm: (our sampler, diffusers scheduler class)
    "DDPM": ("ddpm", "DDPMScheduler"),
    "DDIM": ("ddim", "DDIMScheduler"),
    "Euler": ("euler", "EulerDiscreteScheduler"),
    "Heun": ("heun", "HeunDiscreteScheduler"),
    "DPM-Solver++(2M)": ("dpm_solver_pp_2m", "DPMSolverMultistepScheduler"),
    "UniPC": ("unipc", "UniPCMultistepScheduler"),
}


def identity(x, t):
    return x


MODELS = {  # how our samplers see the trivial model
    "bare denoiser": identity,
    "eps net + as_denoiser": as_denoiser(identity, "eps"),
}


def ours(name, model, schedule, x, steps, generator):
    def run():
        grid = schedule.grid(steps)
        samplers.SAMPLERS[name](model, x, grid, generator)

    return run


def theirs(scheduler, x, steps, generator):
    stochastic = "generator" in scheduler.step.__code__.co_varnames

    def run():
        scheduler.set_timesteps(steps, device=x.device)
        sample = x * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            eps = identity(scheduler.scale_model_input(sample, t), t)
            options = {"generator": generator} if stochastic else {}
            sample = scheduler.step(eps, t, sample, **options).prev_sample

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4096])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    args = parser.parse_args()
    diffusers = require_diffusers()
    torch.set_num_threads(1)
    device = get_device(args.device)
    header(f"Per-step overhead: ours against diffusers {diffusers.__version__} on {device}")

    schedule = linear_schedule(1000)
    rows, worst = [], 0.0
    for batch in args.batches:
        x = torch.randn(batch, 2, generator=torch.Generator().manual_seed(0)).to(device)
        generator = torch.Generator(device=device).manual_seed(1)
        for algorithm, (our_name, class_name) in PAIRS.items():
            scheduler = getattr(diffusers, class_name)(
                num_train_timesteps=1000,
                trained_betas=schedule.betas.numpy(),
                timestep_spacing="trailing",
            )
            steps = args.steps // 2 if algorithm == "Heun" else args.steps
            evaluations = 2 * steps - 1 if algorithm == "Heun" else steps
            contenders = {
                label: ours(our_name, model, schedule, x, steps, generator)
                for label, model in MODELS.items()
            }
            contenders["diffusers"] = theirs(scheduler, x, steps, generator)
            for run in contenders.values():  # warm-up: first calls allocate and cache
                run()
            medians = interleaved_medians(contenders, args.repeats, device)
            per_eval = {name: 1e6 * value / evaluations for name, value in medians.items()}
            ratios = [per_eval[label] / per_eval["diffusers"] for label in MODELS]
            worst = max(worst, *ratios)
            rows.append(
                [algorithm, batch, *(per_eval[label] for label in MODELS), per_eval["diffusers"]]
                + ratios
            )
    print(f"Median time per model evaluation, {args.steps} evaluations, {args.repeats} rounds.")
    headers = ["algorithm", "batch", "bare (us)", "eps net (us)", "diffusers (us)"]
    headers += ["bare / diffusers", "eps net / diffusers"]
    print(table(headers, rows, ["s", "d", ".1f", ".1f", ".1f", ".2f", ".2f"]))
    print()
    verdict = "met" if worst <= 0.5 else "NOT met"
    print(f"Largest ratio {worst:.2f}; target (at most 0.5 everywhere): {verdict}")


if __name__ == "__main__":
    main()
