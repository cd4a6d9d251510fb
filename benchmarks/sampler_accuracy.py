"""Sampler accuracy against diffusers' schedulers, with the exact model of known data.

Every sampler, ours and diffusers', is driven by the Bayes-optimal model of the book's 2-D
Gaussian mixture (``analytic.default_mixture_2d``) on the DDPM linear schedule (T = 1000,
betas 1e-4 .. 0.02), so that each error is the sampler's own discretisation error. Ours see
the exact denoiser (``parameterization.exact_denoiser``); diffusers' schedulers see the exact
noise prediction (``GaussianMixture.eps_pred``) at their own alpha-bar table, configured with
our betas (``trained_betas``) and ``timestep_spacing="trailing"``, the spacing our grids use
(``schedule.grid``), so that both start at t = T. Other settings are diffusers'
defaults (DPM-Solver++ and UniPC of order 2, DDPM with the "fixed_small" variance; clipping off).

Budgets count model evaluations. Heun and the predictor-corrector spend two per step except on
the last step (an Euler step onto sigma = 0 for Heun; no corrector there), so a budget E buys
them (E + 1) // 2 steps, E or E - 1 evaluations; the table shows the evaluations used.

The error is Chapter 2's: the sliced Wasserstein-2 distance of n samples to n exact samples of
the mixture, next to its noise floor (the distance between two exact samples of size n).
Common random numbers: every sampler starts from the same point x_T = std_T z, is compared
with the same exact sample, along the same fixed projections; the stochastic samplers take
their noise from generators with the same seed. Diffusers' schedulers get x_T in their own
coordinates: x itself for the variance-preserving ones, y = x / scale_T for Euler and Heun,
which work in sigma. (Their pipelines start from z * ``init_noise_sigma``, that is from z, or
from sigma_T z for Euler and Heun: a relative difference of 1 - std_T = 2e-5 from x_T that
shows in the pathwise errors below, so it is not used here.)

Near the floor, the sliced W2 cannot rank samplers (a first-order sampler may land closer to the
reference sample by chance). A second table therefore gives, for the deterministic samplers,
the pathwise error: the root-mean-square distance from each sample to the exact solution of
the probability-flow ODE from the same starting noise (``metrics.rms_distance``). That
solution is computed by ``samplers.flow_endpoint``: the ODE dy/dsigma = (y - D(y, sigma)) /
sigma in y = x / scale is the same for every schedule, and it is solved with 2000 UniPC steps on
Karras noise levels from sigma_T down to 1e-4 (dense where the solution bends, near the data),
placed on the linear schedule's own clock, with the exact denoiser at every level; its own
error is bounded by its distance to 1000 steps of the same (printed).
This error has no sampling noise at all.

``--few-step`` runs only the few-step comparison of ``few_step``: diffusers' fast schedulers
in every spacing they offer against our higher-order solvers on fixed and fitted grids
(``grids.fit_grid``, fitted on pilot starts apart from the measured ones), on the 2-D mixture
and a 16-dimensional anisotropic one, by the pathwise error at 10 and 20 evaluations. The
grids are fitted four ways (``FITS``): all K - 1 inner levels on 256 pilots, the
two-parameter power family of ``grids.power_grid`` on 1024 pilots by the mean or by the median
squared error, and the four-parameter window family of ``grids.window_grid`` on 8192 pilots
(enough to see the rare paths that change component) by the mean, its Nelder-Mead search cut
at 60 trials after its scan of 36. The median distance is printed beside each RMS error:
the RMS of the 16-D mixture is dominated by the few paths that change component, which the
verdict counts; it gives each ratio of best RMS errors with a 95% paired-bootstrap interval
over the starts.

Run:  .venv/bin/python benchmarks/sampler_accuracy.py [--n 20000] [--budgets 5 10 20 50 100]
      .venv/bin/python benchmarks/sampler_accuracy.py --few-step [--n 10000]
          [--problems 2-D 16-D] [--fits free power "power, median" window]
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from common import header, require_diffusers, table

from diffusion_core import samplers
from diffusion_core.analytic import default_mixture_2d
from diffusion_core.metrics import rms_distance, sliced_wasserstein, sliced_wasserstein_floor
from diffusion_core.parameterization import exact_denoiser
from diffusion_core.schedules import linear_schedule

TWO_EVALS_PER_STEP = {"heun", "predictor_corrector", "diffusers Heun"}
DIFFUSERS = {  # name: (scheduler class, options beyond the shared ones, step options)
    "diffusers DDPM": ("DDPMScheduler", {"clip_sample": False}, {"generator": True}),
    "diffusers DDIM": ("DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": True}, {}),
    "diffusers DPM-Solver++(2M)": ("DPMSolverMultistepScheduler", {}, {}),
    "diffusers Euler": ("EulerDiscreteScheduler", {}, {}),
    "diffusers Heun": ("HeunDiscreteScheduler", {}, {}),
    "diffusers UniPC": ("UniPCMultistepScheduler", {}, {}),
}
STOCHASTIC = {"ddpm", "euler_maruyama", "predictor_corrector", "diffusers DDPM"}


class FixedSlices:
    """Sliced W2 to one reference sample along fixed directions, the reference sorted once.

    The same number as ``metrics.sliced_wasserstein(x, reference, n_projections, generator)``
    for a generator seeded with ``seed`` (checked on the first call), computed faster when
    many samples are compared with the same reference.
    """

    def __init__(self, reference: torch.Tensor, n_projections: int, seed: int = 0):
        self.reference, self.n_projections, self.seed = reference, n_projections, seed
        directions = torch.randn(
            reference.shape[1],
            n_projections,
            generator=torch.Generator().manual_seed(seed),
            dtype=torch.float64,
        )
        self.directions = directions / directions.norm(dim=0, keepdim=True)
        self.sorted_reference = (reference @ self.directions).sort(dim=0).values
        self.checked = False

    def __call__(self, x: torch.Tensor) -> float:
        projected = (x.double() @ self.directions).sort(dim=0).values
        distance = float((projected - self.sorted_reference).square().mean(dim=0).mean().sqrt())
        if not self.checked:
            library = sliced_wasserstein(
                x, self.reference, self.n_projections, torch.Generator().manual_seed(self.seed)
            )
            assert abs(distance - float(library)) <= 1e-9 * distance, (distance, library)
            self.checked = True
        return distance


def steps_for(name: str, budget: int) -> int:
    return (budget + 1) // 2 if name in TWO_EVALS_PER_STEP else budget


def ours(name, mixture, schedule, z, budget, seed):
    """Run one of our samplers; return (samples, model evaluations)."""
    grid = schedule.grid(steps_for(name, budget), "trailing")
    model = exact_denoiser(mixture)
    calls = []

    def counted(x, point):
        calls.append(1)
        return model(x, point)

    out = samplers.SAMPLERS[name](
        counted, grid.std[0] * z, grid, torch.Generator().manual_seed(seed)
    )
    return out, len(calls)


def theirs(name, diffusers, mixture, schedule, z, budget, seed):
    """Drive a diffusers scheduler with the exact eps; return (samples, model evaluations)."""
    class_name, options, step_options = DIFFUSERS[name]
    scheduler = getattr(diffusers, class_name)(
        num_train_timesteps=schedule.T,
        trained_betas=schedule.betas.numpy(),
        prediction_type="epsilon",
        timestep_spacing="trailing",
        **options,
    )
    alpha_bars = scheduler.alphas_cumprod.double()  # index t = our t + 1
    torch.testing.assert_close(alpha_bars, schedule.alpha_bars[1:], rtol=1e-6, atol=0)
    scheduler.set_timesteps(steps_for(name, budget))
    generator = torch.Generator().manual_seed(seed)
    extra = {"generator": generator} if step_options.get("generator") else {}
    scale_T, std_T = float(alpha_bars[-1].sqrt()), float((1 - alpha_bars[-1]).sqrt())
    in_sigma = class_name in ("EulerDiscreteScheduler", "HeunDiscreteScheduler")
    x, evaluations = std_T * z / (scale_T if in_sigma else 1.0), 0
    for t in scheduler.timesteps:
        index = int(t)
        assert index == t, "trailing spacing gives integer timesteps"
        scale, std = alpha_bars[index].sqrt(), (1 - alpha_bars[index]).sqrt()
        eps = mixture.eps_pred(scheduler.scale_model_input(x, t), scale, std)
        evaluations += 1
        x = scheduler.step(eps, t, x, **extra).prev_sample
    return x, evaluations


def verdict(ours_error: float, their_error: float) -> str:
    """ "met" if ours is at most theirs; a difference within 1e-4 relative is a tie: diffusers
    keeps its alpha-bar table in float32, so the same algorithm differs in the 5th digit."""
    if ours_error <= their_error:
        return "met"
    if ours_error <= their_error * (1 + 1e-4):
        return "met (a tie within float32 rounding of diffusers' tables)"
    return "NOT met"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="samples per run")
    parser.add_argument("--projections", type=int, default=256, help="fixed slicing directions")
    parser.add_argument("--budgets", type=int, nargs="+", default=[5, 10, 20, 50, 100])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--few-step", action="store_true", help="only the few-step pathwise comparison"
    )
    parser.add_argument("--problems", nargs="+", choices=PROBLEMS, default=list(PROBLEMS))
    parser.add_argument("--fits", nargs="+", choices=list(FITS), default=list(FITS))
    args = parser.parse_args()
    diffusers = require_diffusers()
    torch.set_num_threads(1)
    if args.few_step:
        header(f"Few-step sampling: ours against diffusers {diffusers.__version__}")
        few_step(diffusers, n=args.n, seed=args.seed, problems=args.problems, fit_kinds=args.fits)
        return
    header(f"Sampler accuracy: ours against diffusers {diffusers.__version__}")

    mixture, schedule = default_mixture_2d(), linear_schedule(1000)
    generator = torch.Generator().manual_seed(args.seed)
    z = torch.randn(args.n, 2, generator=generator, dtype=torch.float64)
    reference = mixture.sample(args.n, generator)
    floor = float(
        sliced_wasserstein_floor(mixture.sample, args.n, args.projections, generator=generator)
    )
    distance = FixedSlices(reference, args.projections)

    contenders = {name: "ours" for name in samplers.SAMPLERS} | {
        name: "diffusers" for name in DIFFUSERS
    }
    errors, evaluations = {}, {}
    start = time.perf_counter()
    for name, owner in contenders.items():
        for budget in args.budgets:
            if owner == "ours":
                out, used = ours(name, mixture, schedule, z, budget, args.seed + 1)
            else:
                out, used = theirs(name, diffusers, mixture, schedule, z, budget, args.seed + 1)
            errors[name, budget] = distance(out)
            evaluations[name, budget] = used

    headers = ["sampler", *(f"E={b}" for b in args.budgets), "evals used"]
    rows = []
    for name in contenders:
        used = "/".join(str(evaluations[name, b]) for b in args.budgets)
        rows.append([name, *(errors[name, b] for b in args.budgets), used])
    print(
        f"Sliced W2 of {args.n} samples to {args.n} exact samples (lower is better); "
        f"noise floor {floor:.4f}."
    )
    print(table(headers, rows, ["s", *([".5f"] * len(args.budgets)), "s"]))
    print()
    for budget in (b for b in (10, 20) if b in args.budgets):
        best_ours = min((errors[n, budget], n) for n, o in contenders.items() if o == "ours")
        best_theirs = min((errors[n, budget], n) for n, o in contenders.items() if o == "diffusers")
        print(
            f"E={budget}: best of ours {best_ours[1]} {best_ours[0]:.6f}, best of diffusers "
            f"{best_theirs[1]} {best_theirs[0]:.6f}: target {verdict(best_ours[0], best_theirs[0])}"
        )
    print()
    pathwise(args, mixture, schedule, z, contenders, diffusers)
    print(f"({time.perf_counter() - start:.0f} s)")


def pathwise(args, mixture, schedule, z, contenders, diffusers) -> None:
    """The table of RMS distances to the exact probability-flow solution from the same z."""
    exact, check = (exact_flow(mixture, schedule, z, steps) for steps in (2000, 1000))
    deterministic = [name for name in contenders if name not in STOCHASTIC]
    rows = []
    for name in deterministic:
        row = [name]
        for budget in args.budgets:
            if contenders[name] == "ours":
                out, _ = ours(name, mixture, schedule, z, budget, 0)
            else:
                out, _ = theirs(name, diffusers, mixture, schedule, z, budget, 0)
            row.append(float(rms_distance(out, exact)))
        rows.append(row)
    print(
        "Pathwise error: RMS distance to the exact probability-flow solution from the same "
        f"start (reference error {float(rms_distance(check, exact)):.1e})."
    )
    headers = ["sampler", *(f"E={b}" for b in args.budgets)]
    print(table(headers, rows, ["s", *([".2e"] * len(args.budgets))]))
    print()
    for budget in (b for b in (10, 20) if b in args.budgets):
        column = 1 + list(args.budgets).index(budget)
        best_ours = min((row[column], row[0]) for row in rows if contenders[row[0]] == "ours")
        best_theirs = min((row[column], row[0]) for row in rows if contenders[row[0]] != "ours")
        outcome = verdict(best_ours[0], best_theirs[0])
        print(
            f"E={budget} (pathwise): best of ours {best_ours[1]} {best_ours[0]:.2e}, best of "
            f"diffusers {best_theirs[1]} {best_theirs[0]:.2e}: {outcome}"
        )


def exact_flow(mixture, schedule, z, steps: int) -> torch.Tensor:
    """The probability-flow solution at t = 0 from x_T = std_T z (``samplers.flow_endpoint``)."""
    std_T = schedule.grid(1)[0].std
    return samplers.flow_endpoint(exact_denoiser(mixture), std_T * z, schedule, schedule.T, steps)


# ------------------------------------------------------------------- few steps, pathwise

FAST = {  # diffusers' fast schedulers and the settings each offers: (class, options)
    "DPM-Solver++(2M)": ("DPMSolverMultistepScheduler", {"solver_order": 2}),
    "DPM-Solver++(3M)": ("DPMSolverMultistepScheduler", {"solver_order": 3}),
    "UniPC bh1-2": ("UniPCMultistepScheduler", {"solver_order": 2, "solver_type": "bh1"}),
    "UniPC bh1-3": ("UniPCMultistepScheduler", {"solver_order": 3, "solver_type": "bh1"}),
    "UniPC bh2-2": ("UniPCMultistepScheduler", {"solver_order": 2, "solver_type": "bh2"}),
    "UniPC bh2-3": ("UniPCMultistepScheduler", {"solver_order": 3, "solver_type": "bh2"}),
    "DEIS-3": ("DEISMultistepScheduler", {"solver_order": 3}),
    "LMS": ("LMSDiscreteScheduler", {}),
}
SPACINGS = {  # diffusers' spacing choices: name -> constructor options
    "trailing": {"timestep_spacing": "trailing"},
    "linspace": {"timestep_spacing": "linspace"},
    "karras": {"timestep_spacing": "trailing", "use_karras_sigmas": True},
    "lu lambdas": {"timestep_spacing": "trailing", "use_lu_lambdas": True},
}
OUR_FAST = ("unipc", "dpm_solver_pp_3m", "unipc_3", "ipndm")
FITTED = ("unipc_3", "dpm_solver_pp_3m")
FITS = {  # how a grid is fitted: fit_grid's options
    "free": {"family": "free", "statistic": "mean", "pilot": 256},
    "power": {"family": "power", "statistic": "mean", "pilot": 1024},
    "power, median": {"family": "power", "statistic": "median", "pilot": 1024},
    "window": {"family": "window", "statistic": "mean", "pilot": 8192, "max_trials": 60},
}
PROBLEMS = ("2-D", "16-D")


def anisotropic_mixture_16d(seed: int = 0):
    """A 16-dimensional mixture of four Gaussians whose covariances have eigenvalues from 1e-3
    to 1 along random directions: curved flows on several scales at once."""
    from diffusion_core.analytic import GaussianMixture

    generator = torch.Generator().manual_seed(seed)
    d, k = 16, 4
    means = 2.0 * torch.randn(k, d, generator=generator, dtype=torch.float64)
    eigenvalues = torch.logspace(-3, 0, d, dtype=torch.float64)
    covs = []
    for _ in range(k):
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))
        covs.append(q @ torch.diag(eigenvalues) @ q.T)
    covs = torch.stack(covs)
    covs = (covs + covs.transpose(1, 2)) / 2
    return GaussianMixture(torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64), means, covs)


def ratio_interval(ours_sq, theirs_sq, draws: int = 2000, seed: int = 0) -> tuple:
    """A 95% paired-bootstrap interval of RMS(ours) / RMS(theirs) from per-start squared
    distances measured on the same starts: the starts are resampled together, so what the two
    share (the same hard paths) cancels in the ratio and what they do not is its uncertainty."""
    generator = torch.Generator().manual_seed(seed)
    index = torch.randint(len(ours_sq), (draws, len(ours_sq)), generator=generator)
    ratios = (ours_sq[index].mean(1) / theirs_sq[index].mean(1)).sqrt()
    low, high = torch.quantile(ratios, torch.tensor([0.025, 0.975], dtype=ratios.dtype))
    return float(low), float(high)


def switched(squared: torch.Tensor, mixture) -> int:
    """How many paths end farther from the exact end than half the smallest distance between
    two of the mixture's means: the paths that landed near another component."""
    distances = torch.cdist(mixture.means, mixture.means)
    half_gap = float(distances[distances > 0].min()) / 2
    return int((squared > half_gap**2).sum())


def median_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """The median over samples of |x_i - y_i|: the pathwise error of a typical path, blind to
    the few that change mixture component (which dominate the RMS)."""
    return float((x - y).norm(dim=1).median())


def theirs_fast(diffusers, name, spacing, mixture, schedule, z, steps):
    """Drive one of diffusers' fast schedulers with the exact eps at the noise level it
    steps at (its ``sigmas``, which differ from the alpha-bar table's with Karras sigmas);
    return the samples, or None where diffusers refuses the combination."""
    class_name, options = FAST[name]
    try:
        scheduler = getattr(diffusers, class_name)(
            num_train_timesteps=schedule.T,
            trained_betas=schedule.betas.numpy(),
            prediction_type="epsilon",
            **options,
            **SPACINGS[spacing],
        )
        scheduler.set_timesteps(steps)
    except (ValueError, TypeError, NotImplementedError):
        return None
    sigmas = scheduler.sigmas.double()
    sigma_T = float(schedule.grid(1)[0].sigma)
    if abs(float(sigmas[0]) / sigma_T - 1) > 1e-4:
        return None  # a spacing that does not start at t = T is another problem
    in_sigma = class_name == "LMSDiscreteScheduler"
    scale_T = 1 / math.sqrt(1 + sigma_T**2)
    x = sigma_T * z if in_sigma else sigma_T * scale_T * z
    for i, t in enumerate(scheduler.timesteps):
        sigma = float(sigmas[i])
        scale = 1 / math.sqrt(1 + sigma**2)
        model_input = scheduler.scale_model_input(x, t)
        eps = mixture.eps_pred(model_input.double(), scale, sigma * scale)
        x = scheduler.step(eps, t, x).prev_sample
    return x.double()


def few_step(
    diffusers, budgets=(10, 20), n=10_000, seed=0, problems=PROBLEMS, fit_kinds=tuple(FITS)
) -> None:
    """Our best pathwise error against diffusers' best, on the 2-D and the 16-D mixture; the
    RMS error decides, the median is printed beside it."""
    from diffusion_core import grids

    schedule = linear_schedule(1000)
    mixtures = {"2-D": default_mixture_2d, "16-D": anisotropic_mixture_16d}
    for problem, mixture in ((f"{p} mixture", mixtures[p]()) for p in problems):
        d = mixture.means.shape[1]
        z = torch.randn(
            n, d, generator=torch.Generator().manual_seed(seed + 7), dtype=torch.float64
        )
        start = time.perf_counter()
        exact, check = (exact_flow(mixture, schedule, z, steps) for steps in (1000, 500))
        print(
            f"{problem}: {n} starts, reference solved in {time.perf_counter() - start:.0f} s "
            f"(its error, bounded by the distance to half the steps, "
            f"{float(rms_distance(check, exact)):.1e})"
        )
        model = exact_denoiser(mixture)
        rows, best, medians, squared = [], {}, {}, {}
        for name in FAST:
            for spacing in SPACINGS:
                row = [f"diffusers {name}, {spacing}"]
                for budget in budgets:
                    out = theirs_fast(diffusers, name, spacing, mixture, schedule, z, budget)
                    finite = out is not None and bool(torch.isfinite(out).all())
                    error = float(rms_distance(out, exact)) if finite else float("nan")
                    row.append(error)
                    medians[row[0], budget] = median_distance(out, exact) if finite else math.nan
                    if finite:
                        squared[row[0], budget] = (out - exact).square().sum(1)
                    if error == error:
                        best["diffusers", budget] = min(
                            best.get(("diffusers", budget), (math.inf, "")), (error, row[0])
                        )
                rows.append(row)
        x_T = schedule.grid(1)[0].std * z
        for name in OUR_FAST:
            sampler = samplers.SAMPLERS.get(name) or samplers.HIGH_ORDER_SAMPLERS[name]
            for spacing in ("trailing", "log_snr", "karras"):
                row = [f"ours {name}, {spacing}"]
                for budget in budgets:
                    out = sampler(model, x_T, schedule.grid(budget, spacing))
                    error = float(rms_distance(out, exact))
                    row.append(error)
                    medians[row[0], budget] = median_distance(out, exact)
                    squared[row[0], budget] = (out - exact).square().sum(1)
                    best["ours", budget] = min(
                        best.get(("ours", budget), (math.inf, "")), (error, row[0])
                    )
                rows.append(row)
        fits = []
        for name, how in ((name, how) for how in fit_kinds for name in FITTED):
            sampler = samplers.HIGH_ORDER_SAMPLERS[name]
            row = [f"ours {name}, fitted {how} (pilot {FITS[how]['pilot']})"]
            for budget in budgets:
                fit = grids.fit_grid(
                    model, schedule, budget, sampler=sampler, shape=(d,), seed=seed + 1, **FITS[how]
                )
                out = sampler(model, x_T, fit.grid)
                error = float(rms_distance(out, exact))
                row.append(error)
                medians[row[0], budget] = median_distance(out, exact)
                squared[row[0], budget] = (out - exact).square().sum(1)
                fits.append(
                    f"{name} {how} E={budget}: {fit.seconds:.1f} s, {fit.trials} trials, "
                    f"pilot error {fit.error:.2e} (start {fit.start_error:.2e})"
                )
                best["ours", budget] = min(
                    best.get(("ours", budget), (math.inf, "")), (error, row[0])
                )
            rows.append(row)
        rows = [[*row, *(medians[row[0], b] for b in budgets)] for row in rows]
        print(
            table(
                [
                    "sampler, grid",
                    *(f"E={b}" for b in budgets),
                    *(f"median E={b}" for b in budgets),
                ],
                rows,
                ["s", *([".2e"] * (2 * len(budgets)))],
            )
        )
        print("Grid fits (pilot starts drawn apart from the measured ones): " + "; ".join(fits))
        for budget in budgets:
            (ours_error, ours_name), (their_error, their_name) = (
                best["ours", budget],
                best["diffusers", budget],
            )
            ratio = ours_error / their_error
            ours_sq, theirs_sq = squared[ours_name, budget], squared[their_name, budget]
            low, high = ratio_interval(ours_sq, theirs_sq)
            outcome = "met" if ratio <= 0.8 else "NOT met"
            print(
                f"{problem} E={budget}: best of ours {ours_name} {ours_error:.2e}, best of "
                f"diffusers {their_name} {their_error:.2e}: ratio {ratio:.3f}, 95% paired "
                f"bootstrap interval [{low:.3f}, {high:.3f}] (target <= 0.8: {outcome}); "
                f"medians {medians[ours_name, budget]:.2e} and "
                f"{medians[their_name, budget]:.2e}; paths that switched component "
                f"{switched(ours_sq, mixture)} and {switched(theirs_sq, mixture)} of {n}"
            )
        print()


if __name__ == "__main__":
    main()
