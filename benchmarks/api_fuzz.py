"""How the public API answers bad input: one-argument mutations of valid calls, classified.

For each public function and constructor listed in ``CASES`` below, a valid call is built, and
then each of its arguments in turn is replaced by values of the wrong kind or out of range
(None, a string, a bool, NaN, +-inf, a negative, zero or huge number, an empty, wrong-shape,
integer or non-finite tensor, ...). Each mutated call is run under a time limit and classified:

- ``clear``: a ``ValueError`` or ``TypeError`` whose message names the mutated argument;
- ``unnamed``: a ``ValueError`` or ``TypeError`` that does not name it;
- ``foreign``: any other exception (``RuntimeError`` from torch, ``IndexError``, ...);
- ``non-finite``: the call returned, and its result holds NaN or infinity (a silent bad answer);
- ``propagated``: a tensor of NaN or infinity went in and NaN or infinity came out, from a
  function that documents that it does not inspect tensor values (a host read per call, which
  a sampling loop cannot afford); not silent, since the output shows it;
- ``accepted``: the call returned a finite result. Many mutations are valid input (a zero
  where zero is allowed, a float where an int was given), so this count is not an error count;
- ``hang``: the call did not return within the time limit.

The contract the library keeps is that no mutation is ``unnamed``, ``foreign``,
``non-finite`` or ``hang``. The script prints the counts per module and lists every call in
those four classes. It measures; it asserts nothing (the tests check the contract on
property-based examples).

Run:  .venv/bin/python benchmarks/api_fuzz.py [--timeout 3] [--list]
"""

from __future__ import annotations

import argparse
import collections
import math
import resource
import signal
import sys
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from diffusion_core import (  # noqa: E402
    analytic,
    audio,
    autoencoder,
    consistency,
    device,
    discrete,
    distill,
    flow,
    forward,
    grids,
    images,
    languages,
    latent,
    likelihood,
    losses,
    metrics,
    nets,
    parameterization,
    plotting,
    samplers,
    schedules,
    stability,
    text,
    train,
)

F64 = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def x2(n: int = 8) -> torch.Tensor:
    return torch.randn(n, 2, generator=gen(1), dtype=F64)


LIN = schedules.linear_schedule(100)
GRID = LIN.grid(5)
MIX = analytic.default_mixture_2d()
EXACT = parameterization.exact_denoiser(MIX)
TOKENS = torch.tensor([[0, 1, 2, 3, 0], [3, 2, 1, 0, 1], [1, 1, 2, 2, 3]])
ABSORBING = discrete.DiscreteProcess.linear("absorbing", 4, 5)
MARKOV = languages.random_markov_language(4, 1, 5, 4, gen())
with torch.random.fork_rng(devices=[]):
    torch.manual_seed(0)
    TOKEN_NET = discrete.TokenTransformer(4, 5, dim=8, layers=1, heads=2).eval()


def tone(seconds: float = 0.8, f0: float = 150.0) -> torch.Tensor:
    """A harmonic tone at audio.SAMPLE_RATE, float32: valid speech-like audio input."""
    t = torch.arange(int(seconds * audio.SAMPLE_RATE), dtype=F64) / audio.SAMPLE_RATE
    return (0.2 * sum(torch.sin(2 * math.pi * f0 * k * t) / k for k in range(1, 8))).float()


def tone_clips(n: int = 2) -> torch.Tensor:
    """n copies of the tone's clip (n, 1, N_MELS, FRAMES) in [-1, 1]."""
    spectrogram = torch.as_tensor(audio.log_mel(tone()))[:, : audio.FRAMES]
    return audio.to_unit(spectrogram)[None, None].repeat(n, 1, 1, 1)


SOUND_JUDGE = audio.load_classifier()
SOUND_NET = audio.build_sound_net({"patch": 4, "channels": [8, 16], "blocks": 1})


def exact_eps(x, t):
    return MIX.eps_pred(x, *LIN.marginal(t))


def conditional(x, point, labels):
    return samplers.exact_conditional_denoiser(MIX)(x, point, labels)


AX = plt.subplots()[1]
TINY = nets.MLPDenoiser(hidden=8, depth=1, time_dim=4)
CLASSIFIER = images.DigitsClassifier()
VAE = autoencoder.ConvVAE(channels=8)
LATENT = latent.LatentDiffusion(
    latent.LatentConfig(channels=(16, 16), text_dim=8, heads=2, T=100, steps=10, batch_size=4)
)
AFFINE = stability.affine_map("ddim", GRID, *stability.gaussian_denoiser_coefficients(GRID, 0, 1))
RF = schedules.RectifiedFlow()
RF_GRID = RF.grid(4)
RF_FIELD = flow.exact_velocity(MIX, RF)
RF_DENOISER = flow.flow_denoiser(RF_FIELD, RF)
PATH = dict(scale=0.5, std=0.5, d_scale=-1.0, d_std=1.0)

# name: (callable, valid keyword arguments as a factory)
CASES = {
    # schedules
    "schedules.linear_schedule": (schedules.linear_schedule, lambda: dict(T=50)),
    "schedules.cosine_schedule": (schedules.cosine_schedule, lambda: dict(T=50)),
    "schedules.scaled_linear_schedule": (schedules.scaled_linear_schedule, lambda: dict(T=50)),
    "schedules.sigmoid_schedule": (schedules.sigmoid_schedule, lambda: dict(T=50)),
    "schedules.Schedule": (schedules.Schedule, lambda: dict(betas=torch.full((10,), 0.1))),
    "schedules.rescale_zero_terminal_snr": (
        schedules.rescale_zero_terminal_snr,
        lambda: dict(schedule=LIN),
    ),
    "schedules.betas_from_alpha_bar_fn": (
        schedules.betas_from_alpha_bar_fn,
        lambda: dict(alpha_bar_fn=lambda t: torch.cos(t * math.pi / 2) ** 2, T=20),
    ),
    "schedules.karras_sigmas": (schedules.karras_sigmas, lambda: dict(n=10)),
    "schedules.timestep_spacing": (
        schedules.timestep_spacing,
        lambda: dict(T=100, k=10, spacing="trailing"),
    ),
    "schedules.VPSDE": (schedules.VPSDE, lambda: dict(beta_min=0.1, beta_max=20.0)),
    "schedules.VESDE": (schedules.VESDE, lambda: dict(sigma_min=0.01, sigma_max=50.0)),
    "schedules.EDM": (schedules.EDM, lambda: dict(sigma_min=0.002, sigma_max=80.0)),
    "schedules.RectifiedFlow": (schedules.RectifiedFlow, lambda: dict(t_min=0.001)),
    "schedules.Schedule.grid": (
        LIN.grid,
        lambda: dict(steps=10, spacing="karras", rho=7.0),
    ),
    "schedules.VPSDE.grid": (schedules.VPSDE().grid, lambda: dict(steps=10, t_max=0.9)),
    "schedules.Schedule.marginal": (LIN.marginal, lambda: dict(t=torch.tensor([3, 50]))),
    "schedules.VPSDE.marginal": (schedules.VPSDE().marginal, lambda: dict(t=torch.rand(4))),
    "schedules.Schedule.time_at": (LIN.time_at, lambda: dict(sigma=torch.tensor([0.5, 1.0]))),
    "schedules.TimeGrid": (
        schedules.TimeGrid,
        lambda: dict(t=GRID.t.clone(), scale=GRID.scale.clone(), std=GRID.std.clone()),
    ),
    "schedules.alpha_bar_to_snr": (
        schedules.alpha_bar_to_snr,
        lambda: dict(alpha_bar=torch.tensor([0.5, 0.9])),
    ),
    "schedules.sigma_to_alpha_bar": (
        schedules.sigma_to_alpha_bar,
        lambda: dict(sigma=torch.tensor([0.5, 2.0])),
    ),
    "schedules.log_snr_to_sigma": (
        schedules.log_snr_to_sigma,
        lambda: dict(log_snr=torch.tensor([-1.0, 2.0])),
    ),
    # forward
    "forward.q_sample": (
        forward.q_sample,
        lambda: dict(schedule=LIN, x0=x2(), t=torch.full((8,), 10), noise=x2()),
    ),
    "forward.q_step": (
        forward.q_step,
        lambda: dict(schedule=LIN, x_prev=x2(), t=torch.full((8,), 10), noise=x2()),
    ),
    "forward.q_posterior": (
        forward.q_posterior,
        lambda: dict(schedule=LIN, x0=x2(), x_t=x2(), t=torch.full((8,), 10)),
    ),
    "forward.posterior_coefficients": (
        forward.posterior_coefficients,
        lambda: dict(scale_t=0.5, std_t=0.8, scale_s=0.7, std_s=0.6),
    ),
    "forward.seed_article_diffuse": (
        forward.seed_article_diffuse,
        lambda: dict(x0=x2(), steps=5, generator=gen()),
    ),
    "forward.seed_article_reverse": (
        forward.seed_article_reverse,
        lambda: dict(x_T=x2(), steps=5, generator=gen()),
    ),
    "forward.seed_article_variance": (
        forward.seed_article_variance,
        lambda: dict(steps=5, data_variance=1.0),
    ),
    "forward.seed_article_equation_moments": (
        forward.seed_article_equation_moments,
        lambda: dict(schedule=LIN, data_variance=1.0),
    ),
    "forward.simulate_chain": (
        forward.simulate_chain,
        lambda: dict(schedule=LIN, x0=x2(), generator=gen(), keep=5),
    ),
    "forward.simulate_sde": (
        forward.simulate_sde,
        lambda: dict(sde=schedules.VPSDE(), x0=x2(), n_steps=10, generator=gen(), t_end=1.0),
    ),
    # analytic
    "analytic.GaussianMixture": (
        analytic.GaussianMixture,
        lambda: dict(
            weights=torch.tensor([0.3, 0.7]),
            means=torch.tensor([[0.0, 0.0], [2.0, 1.0]]),
            covs=torch.eye(2).repeat(2, 1, 1),
        ),
    ),
    "analytic.gaussian": (
        analytic.gaussian,
        lambda: dict(mean=torch.zeros(2), cov=torch.eye(2)),
    ),
    "analytic.ring_mixture": (
        analytic.ring_mixture,
        lambda: dict(n_components=4, radius=2.0, std=0.3),
    ),
    "analytic.GaussianMixture.sample": (MIX.sample, lambda: dict(n=10, generator=gen())),
    "analytic.GaussianMixture.x0_pred": (
        MIX.x0_pred,
        lambda: dict(x=x2(), scale=0.5, std=0.8),
    ),
    "analytic.GaussianMixture.score": (
        MIX.score,
        lambda: dict(x=x2(), scale=0.5, std=0.8),
    ),
    "analytic.GaussianMixture.log_prob": (MIX.log_prob, lambda: dict(x=x2())),
    "analytic.mixture_velocity": (
        analytic.mixture_velocity,
        lambda: dict(mixture=MIX, x=x2(), **PATH),
    ),
    # parameterization
    "parameterization.as_denoiser": (
        parameterization.as_denoiser,
        lambda: dict(net=exact_eps, prediction="eps"),
    ),
    "parameterization.x0_from_eps": (
        parameterization.x0_from_eps,
        lambda: dict(x=x2(), eps=x2(), scale=0.5, std=0.8),
    ),
    "parameterization.eps_from_x0": (
        parameterization.eps_from_x0,
        lambda: dict(x=x2(), x0=x2(), scale=0.5, std=0.8),
    ),
    "parameterization.x0_from_v": (
        parameterization.x0_from_v,
        lambda: dict(x=x2(), v=x2(), scale=0.5, std=0.8),
    ),
    "parameterization.v_from_eps_x0": (
        parameterization.v_from_eps_x0,
        lambda: dict(eps=x2(), x0=x2(), scale=0.5, std=0.8),
    ),
    "parameterization.score_from_eps": (
        parameterization.score_from_eps,
        lambda: dict(eps=x2(), std=0.8),
    ),
    "parameterization.exact_denoiser": (
        parameterization.exact_denoiser,
        lambda: dict(mixture=MIX),
    ),
    "parameterization.velocity_from_x0": (
        parameterization.velocity_from_x0,
        lambda: dict(x=x2(), x0=x2(), **PATH),
    ),
    "parameterization.velocity_from_eps": (
        parameterization.velocity_from_eps,
        lambda: dict(x=x2(), eps=x2(), **PATH),
    ),
    "parameterization.x0_from_velocity": (
        parameterization.x0_from_velocity,
        lambda: dict(x=x2(), u=x2(), **PATH),
    ),
    "parameterization.eps_from_velocity": (
        parameterization.eps_from_velocity,
        lambda: dict(x=x2(), u=x2(), **PATH),
    ),
    # samplers (the shared signature, and the options)
    **{
        f"samplers.{name}": (
            sampler,
            lambda: dict(model=EXACT, x=x2(), grid=GRID, generator=gen(), callback=None),
        )
        for name, sampler in (samplers.SAMPLERS | samplers.HIGH_ORDER_SAMPLERS).items()
    },
    "samplers.unipc_3(options)": (
        samplers.unipc_3,
        lambda: dict(model=EXACT, x=x2(), grid=GRID, variant="bh1", order=2),
    ),
    "samplers.ipndm(order)": (
        samplers.ipndm,
        lambda: dict(model=EXACT, x=x2(), grid=GRID, order=3),
    ),
    "grids.fit_grid": (
        grids.fit_grid,
        lambda: dict(model=EXACT, process=LIN, steps=3, pilot=4, max_trials=5, reference_steps=20),
    ),
    "grids.fixed_grids": (grids.fixed_grids, lambda: dict(process=LIN, steps=4)),
    "audio.log_mel": (audio.log_mel, lambda: dict(waveform=tone())),
    "audio.to_waveform": (
        audio.to_waveform,
        lambda: dict(spectrogram=audio.log_mel(tone())[:, :8], iterations=2, seed=0),
    ),
    "audio.mel_pitch": (
        audio.mel_pitch,
        lambda: dict(
            spectrogram=audio.log_mel(tone()), fmin=60.0, fmax=320.0, voiced_db=30.0, min_match=0.6
        ),
    ),
    "audio.clip_pitches": (audio.clip_pitches, lambda: dict(clips=tone_clips())),
    "audio.to_unit": (audio.to_unit, lambda: dict(spectrogram=-40 * torch.rand(64, 48))),
    "audio.from_unit": (audio.from_unit, lambda: dict(x=torch.rand(64, 48) * 2 - 1)),
    "audio.condition_label": (audio.condition_label, lambda: dict(word=3, pitch_level=1)),
    "audio.word_accuracy": (
        audio.word_accuracy,
        lambda: dict(classifier=SOUND_JUDGE, clips=tone_clips(), words=torch.tensor([1, 2])),
    ),
    "audio.frechet_distance": (
        audio.frechet_distance,
        lambda: dict(classifier=SOUND_JUDGE, clips=tone_clips(3), reference=tone_clips(3) * 0.9),
    ),
    "audio.generate": (
        audio.generate,
        lambda: dict(
            net=SOUND_NET, labels=torch.tensor([0, 5]), guidance=2.0, steps=2, generator=gen()
        ),
    ),
    "distill.halve": (distill.halve, lambda: dict(grid=LIN.grid(4))),
    "distill.ProgressiveDistillationLoss": (
        distill.ProgressiveDistillationLoss,
        lambda: dict(teacher=EXACT, grid=LIN.grid(4), prediction="v"),
    ),
    "distill.ProgressiveDistillationLoss(call)": (
        distill.ProgressiveDistillationLoss(EXACT, LIN.grid(4)),
        lambda: dict(net=TINY, batch=x2().float(), labels=None, generator=gen()),
    ),
    "distill.student_sampler": (distill.student_sampler, lambda: dict(net=TINY, prediction="x0")),
    "consistency.boundary_coefficients": (
        consistency.boundary_coefficients,
        lambda: dict(sigma=1.0, sigma_min=0.01, sigma_data=0.5),
    ),
    "consistency.ConsistencyFunction": (
        consistency.ConsistencyFunction,
        lambda: dict(net=TINY, sigma_min=0.01, sigma_data=0.5),
    ),
    "consistency.ConsistencyFunction(call)": (
        consistency.ConsistencyFunction(TINY, sigma_min=0.01),
        lambda: dict(x=x2().float(), point=GRID[1]),
    ),
    "consistency.ConsistencyDistillationLoss": (
        consistency.ConsistencyDistillationLoss,
        lambda: dict(
            teacher=EXACT, grid=GRID[:-1], sigma_data=0.5, target_decay=0.9, distance="l2"
        ),
    ),
    "consistency.consistency_sample": (
        consistency.consistency_sample,
        lambda: dict(
            model=consistency.ConsistencyFunction(TINY, sigma_min=float(GRID[-2].sigma)),
            x=x2().float(),
            grid=GRID,
            generator=gen(),
        ),
    ),
    "consistency.levels_grid": (
        consistency.levels_grid,
        lambda: dict(candidates=GRID[:-1], indices=[0, 2]),
    ),
    "consistency.choose_levels": (
        consistency.choose_levels,
        lambda: dict(
            model=consistency.ConsistencyFunction(TINY, sigma_min=float(GRID[-2].sigma)),
            candidates=GRID[:-1],
            steps=2,
            score=lambda samples: float(samples.square().mean()),
            start=x2().float(),
            seed=0,
        ),
    ),
    "grids.power_grid": (
        grids.power_grid,
        lambda: dict(process=LIN, steps=4, power=2.0, t_end=3.0),
    ),
    "grids.window_grid": (
        grids.window_grid,
        lambda: dict(process=LIN, steps=6, height=3.0, sigma_center=2.0, width=1.0, sigma_end=0.1),
    ),
    "grids.grid_from_sigmas": (
        grids.grid_from_sigmas,
        lambda: dict(process=LIN, sigmas=torch.tensor([1.0, 0.5, 0.1], dtype=F64)),
    ),
    "samplers.ddim(eta)": (
        samplers.ddim,
        lambda: dict(model=EXACT, x=x2(), grid=GRID, eta=0.5),
    ),
    "samplers.ddpm(variance)": (
        samplers.ddpm,
        lambda: dict(model=EXACT, x=x2(), grid=GRID, variance="beta"),
    ),
    "samplers.predictor_corrector(options)": (
        samplers.predictor_corrector,
        lambda: dict(model=EXACT, x=x2(), grid=GRID, corrector_steps=1, snr=0.16),
    ),
    "samplers.prior_sample": (
        samplers.prior_sample,
        lambda: dict(grid=GRID, shape=(4, 2), generator=gen()),
    ),
    "samplers.flow_endpoint": (
        samplers.flow_endpoint,
        lambda: dict(model=EXACT, x=x2(), process=LIN, t=50, steps=20, sigma_min=1e-3),
    ),
    "samplers.evaluations": (
        samplers.evaluations,
        lambda: dict(sampler=samplers.heun, grid=GRID),
    ),
    "samplers.classifier_free_guidance": (
        samplers.classifier_free_guidance,
        lambda: dict(model=conditional, weight=2.0, label=1, null_label=MIX.n_components),
    ),
    "samplers.exact_conditional_denoiser": (
        samplers.exact_conditional_denoiser,
        lambda: dict(mixture=MIX),
    ),
    "samplers.exact_conditional_denoiser(call)": (
        samplers.exact_conditional_denoiser(MIX),
        lambda: dict(x=x2(), point=GRID[2], labels=torch.zeros(8, dtype=torch.long)),
    ),
    # flow matching and the likelihood through the flow
    "flow.path_coefficients": (
        flow.path_coefficients,
        lambda: dict(process=RF, t=torch.tensor([0.2, 0.5])),
    ),
    "flow.velocity_field": (flow.velocity_field, lambda: dict(model=EXACT, process=RF)),
    "flow.velocity_field(call)": (flow.velocity_field(EXACT, RF), lambda: dict(x=x2(), t=0.5)),
    "flow.flow_denoiser": (flow.flow_denoiser, lambda: dict(field=RF_FIELD, process=RF)),
    "flow.flow_denoiser(call)": (RF_DENOISER, lambda: dict(x=x2(), point=RF_GRID[2])),
    "flow.network_velocity": (
        flow.network_velocity,
        lambda: dict(net=TINY, time_scale=1000.0),
    ),
    "flow.network_velocity(call)": (
        flow.network_velocity(TINY),
        lambda: dict(x=torch.randn(4, 2), t=0.5),
    ),
    "flow.exact_velocity": (flow.exact_velocity, lambda: dict(mixture=MIX, process=RF)),
    "flow.exact_velocity(call)": (RF_FIELD, lambda: dict(x=x2(), t=0.5)),
    "flow.ot_couple": (flow.ot_couple, lambda: dict(x0=x2(), noise=x2(8) * 2)),
    "flow.reflow_pairs": (
        flow.reflow_pairs,
        lambda: dict(sampler=samplers.euler, model=RF_DENOISER, noise=x2(), grid=RF_GRID),
    ),
    "flow.flow_path": (
        flow.flow_path,
        lambda: dict(sampler=samplers.euler, model=RF_DENOISER, x=x2(), grid=RF_GRID),
    ),
    "flow.straightness": (
        flow.straightness,
        lambda: dict(
            path=torch.randn(4, 8, 2, generator=gen(4), dtype=F64),
            t=torch.linspace(1, 0, 4, dtype=F64),
        ),
    ),
    "likelihood.divergence": (
        likelihood.divergence,
        lambda: dict(field=RF_FIELD, x=x2(), t=0.5),
    ),
    "likelihood.hutchinson_divergence": (
        likelihood.hutchinson_divergence,
        lambda: dict(field=RF_FIELD, x=x2(), t=0.5, probe=x2().sign()),
    ),
    "likelihood.rademacher": (
        likelihood.rademacher,
        lambda: dict(shape=(4, 2), generator=gen(), dtype=F64),
    ),
    "likelihood.log_likelihood": (
        likelihood.log_likelihood,
        lambda: dict(field=RF_FIELD, x=x2(4), process=RF, steps=4),
    ),
    "likelihood.log_likelihood(probe)": (
        likelihood.log_likelihood,
        lambda: dict(field=RF_FIELD, x=x2(4), process=RF, steps=4, probe=x2(4).sign()),
    ),
    "likelihood.dequantize": (
        likelihood.dequantize,
        lambda: dict(x=x2(), bin_width=0.1, generator=gen()),
    ),
    "likelihood.bits_per_dim": (
        likelihood.bits_per_dim,
        lambda: dict(log_likelihood=torch.tensor([-3.0, -2.0]), dim=2, bin_width=1 / 128),
    ),
    "losses.sample_flow_time": (
        losses.sample_flow_time,
        lambda: dict(n=8, generator=gen(), sampler="logit_normal", location=0.5, spread=1.0),
    ),
    "losses.flow_matching_target": (
        losses.flow_matching_target,
        lambda: dict(x0=x2(), noise=x2(), d_scale=-1.0, d_std=1.0),
    ),
    "losses.flow_matching_loss": (
        losses.flow_matching_loss,
        lambda: dict(
            net=TINY,
            x0=torch.randn(4, 2),
            noise=torch.randn(4, 2),
            t=torch.tensor([0.1, 0.4, 0.6, 0.9]),
            process=RF,
            time_scale=1000.0,
        ),
    ),
    "losses.flow_matching_eps_weight": (
        losses.flow_matching_eps_weight,
        lambda: dict(process=RF, t=torch.tensor([0.2, 0.5])),
    ),
    "losses.FlowMatchingLoss": (
        losses.FlowMatchingLoss,
        lambda: dict(
            process=RF,
            time_sampler="logit_normal",
            location=0.5,
            spread=1.0,
            coupling="ot",
            time_scale=1000.0,
        ),
    ),
    "losses.FlowMatchingLoss(call)": (
        losses.FlowMatchingLoss(coupling="ot"),
        lambda: dict(net=TINY, batch=torch.randn(4, 2), labels=None, generator=gen()),
    ),
    "losses.FlowMatchingLoss(given)": (
        losses.FlowMatchingLoss(coupling="given"),
        lambda: dict(net=TINY, batch=torch.randn(4, 2, 2), labels=None, generator=gen()),
    ),
    # metrics
    "metrics.sliced_wasserstein": (
        metrics.sliced_wasserstein,
        lambda: dict(x=x2(), y=x2(9), n_projections=16, generator=gen()),
    ),
    "metrics.sliced_wasserstein_floor": (
        metrics.sliced_wasserstein_floor,
        lambda: dict(sample_fn=MIX.sample, n=50, n_projections=16, repeats=3),
    ),
    "metrics.mmd_rbf": (metrics.mmd_rbf, lambda: dict(x=x2(), y=x2(9), bandwidth=1.0)),
    "metrics.gaussian_w2": (
        metrics.gaussian_w2,
        lambda: dict(
            mean1=torch.zeros(2), cov1=torch.eye(2), mean2=torch.ones(2), cov2=torch.eye(2)
        ),
    ),
    "metrics.gaussian_kl": (
        metrics.gaussian_kl,
        lambda: dict(
            mean1=torch.zeros(2), cov1=torch.eye(2), mean2=torch.ones(2), cov2=torch.eye(2)
        ),
    ),
    "metrics.frechet_distance": (
        metrics.frechet_distance,
        lambda: dict(
            x=torch.randn(20, 3, generator=gen(2)), y=torch.randn(20, 3, generator=gen(3))
        ),
    ),
    "metrics.mixture_weight_tv": (
        metrics.mixture_weight_tv,
        lambda: dict(x=x2(), mixture=MIX),
    ),
    "metrics.knn_precision_recall": (
        metrics.knn_precision_recall,
        lambda: dict(real=x2(12), fake=x2(10), k=3),
    ),
    "metrics.nearest_neighbour_distances": (
        metrics.nearest_neighbour_distances,
        lambda: dict(x=x2(5), reference=x2(12), k=1),
    ),
    "metrics.rms_distance": (metrics.rms_distance, lambda: dict(x=x2(), y=x2())),
    # stability
    "stability.affine_map": (
        stability.affine_map,
        lambda: dict(
            sampler="ddim",
            grid=GRID,
            **dict(
                zip("pq", stability.gaussian_denoiser_coefficients(GRID, 0.3, 0.8), strict=True)
            ),
        ),
    ),
    "stability.gaussian_denoiser_coefficients": (
        stability.gaussian_denoiser_coefficients,
        lambda: dict(grid=GRID, data_mean=0.3, data_std=0.8),
    ),
    "stability.gaussian_sampler_law": (
        stability.gaussian_sampler_law,
        lambda: dict(name="heun", grid=GRID, data_mean=0.3, data_std=0.8),
    ),
    "stability.gaussian_sampler_w2": (
        stability.gaussian_sampler_w2,
        lambda: dict(name="ddim", grid=GRID, data_mean=0.3, data_std=0.8),
    ),
    "stability.marginal_law": (
        stability.marginal_law,
        lambda: dict(grid=GRID, data_mean=0.3, data_std=0.8),
    ),
    "stability.output_law": (
        stability.output_law,
        lambda: dict(affine=AFFINE, start_mean=0.0, start_var=1.0),
    ),
    "stability.perturbation_gain": (stability.perturbation_gain, lambda: dict(affine=AFFINE)),
    "stability.gaussian_denoiser": (
        stability.gaussian_denoiser,
        lambda: dict(data_mean=0.3, data_std=0.8),
    ),
    "stability.clip_denoiser": (
        stability.clip_denoiser,
        lambda: dict(model=EXACT, low=-1.0, high=1.0),
    ),
    "stability.dynamic_threshold_denoiser": (
        stability.dynamic_threshold_denoiser,
        lambda: dict(model=EXACT, percentile=0.99),
    ),
    "stability.edm_input_scale": (
        stability.edm_input_scale,
        lambda: dict(sigma=torch.tensor([0.5, 2.0]), data_std=0.5),
    ),
    "stability.pf_ode_gain": (
        stability.pf_ode_gain,
        lambda: dict(scale=GRID.scale, std=GRID.std, data_std=0.5),
    ),
    "stability.reverse_sde_gain": (
        stability.reverse_sde_gain,
        lambda: dict(scale=GRID.scale, std=GRID.std, data_std=0.5),
    ),
    "stability.chain_moments": (
        stability.chain_moments,
        lambda: dict(factors=torch.full((5,), 0.9), noise_vars=torch.full((5,), 0.1)),
    ),
    "stability.simulate_linear_chain": (
        stability.simulate_linear_chain,
        lambda: dict(
            factors=torch.full((5,), 0.9),
            noise_vars=torch.full((5,), 0.1),
            x0=torch.zeros(10, dtype=F64),
            generator=gen(),
        ),
    ),
    "stability.article_chain": (stability.article_chain, lambda: dict(steps=5)),
    "stability.vp_chain": (stability.vp_chain, lambda: dict(schedule=LIN)),
    "stability.ve_chain": (stability.ve_chain, lambda: dict(sigmas=torch.tensor([0.1, 1.0, 5.0]))),
    "stability.observed_order": (
        stability.observed_order,
        lambda: dict(steps=[10, 20, 40], errors=[1e-2, 2.5e-3, 6.3e-4]),
    ),
    "stability.nonfinite_count": (stability.nonfinite_count, lambda: dict(x=x2())),
    "stability.terminal_leak": (
        stability.terminal_leak,
        lambda: dict(grid=GRID, data_mean=0.5),
    ),
    "stability.precision_study": (
        stability.precision_study,
        lambda: dict(sampler=samplers.ddim, model=EXACT, x=x2(), grid=GRID, seed=0),
    ),
    "stability.textbook_ddpm": (
        stability.textbook_ddpm,
        lambda: dict(
            eps_model=exact_eps, x=x2(), betas=LIN.betas, dtype=torch.float32, generator=gen()
        ),
    ),
    # nets
    "nets.MLPDenoiser": (
        nets.MLPDenoiser,
        lambda: dict(data_dim=2, hidden=16, depth=2, time_dim=8),
    ),
    "nets.UNet": (
        nets.UNet,
        lambda: dict(in_channels=1, channels=(8, 16), blocks=1, attention=False, groups=4),
    ),
    "nets.SinusoidalEmbedding": (nets.SinusoidalEmbedding, lambda: dict(dim=8)),
    "nets.CrossAttention": (
        nets.CrossAttention,
        lambda: dict(channels=8, context_dim=4, heads=2, groups=4),
    ),
    "nets.MLPDenoiser(call)": (
        nets.MLPDenoiser(hidden=16, depth=2, time_dim=8),
        lambda: dict(x=torch.randn(4, 2), t=torch.full((4,), 10)),
    ),
    # device
    "device.get_device": (device.get_device, lambda: dict(name="cpu")),
    "device.per_sample_generators": (
        device.per_sample_generators,
        lambda: dict(seeds=[1, 2, 3]),
    ),
    "device.sample_seeds": (device.sample_seeds, lambda: dict(base_seed=3, indices=[0, 1])),
    "device.per_sample_noise": (
        device.per_sample_noise,
        lambda: dict(shape=(3, 2), seeds=[1, 2, 3]),
    ),
    "device.standard_normal": (
        device.standard_normal,
        lambda: dict(shape=(3, 2), generator=gen(), dtype=F64),
    ),
    "device.seed_everything": (device.seed_everything, lambda: dict(seed=3, threads=1)),
    # the figure helpers
    "plotting.image_grid": (
        plotting.image_grid,
        lambda: dict(images=torch.zeros(2, 2, 4, 4), row_labels=["a", "b"], vmin=-1.0, vmax=1.0),
    ),
    "plotting.density_panel": (
        plotting.density_panel,
        lambda: dict(ax=AX, log_prob=MIX.log_prob, limit=3.0, resolution=20, levels=5),
    ),
    "plotting.animate_points": (
        plotting.animate_points,
        lambda: dict(frames=torch.zeros(2, 5, 2), interval=50, size=2.0, point_size=4.0),
    ),
    # training and the image, latent and text models
    "train.TrainConfig": (
        train.TrainConfig,
        lambda: dict(steps=10, batch_size=4, lr=1e-3, grad_clip=1.0, ema_decay=0.99),
    ),
    "train.RunConfig": (train.RunConfig, lambda: dict(log_every=5, checkpoint_every=0)),
    "train.update_ema": (
        train.update_ema,
        lambda: dict(ema=nets.MLPDenoiser(hidden=8, depth=1, time_dim=4), net=TINY, decay=0.9),
    ),
    "train.ema_decay_at": (train.ema_decay_at, lambda: dict(decay=0.999, step=10)),
    "images.accuracy": (
        images.accuracy,
        lambda: dict(
            classifier=CLASSIFIER,
            images=torch.zeros(4, 1, 8, 8),
            labels=torch.tensor([0, 1, 2, 3]),
        ),
    ),
    "autoencoder.ConvVAE": (
        autoencoder.ConvVAE,
        lambda: dict(image_channels=1, channels=8, latent_channels=2),
    ),
    "autoencoder.latent_scale_factor": (
        autoencoder.latent_scale_factor,
        lambda: dict(model=VAE, data=torch.rand(6, 1, 8, 8) * 2 - 1, generator=gen()),
    ),
    "autoencoder.reconstruction_metrics": (
        autoencoder.reconstruction_metrics,
        lambda: dict(model=VAE, data=torch.rand(6, 1, 8, 8) * 2 - 1),
    ),
    "autoencoder.kl_to_standard_normal": (
        autoencoder.kl_to_standard_normal,
        lambda: dict(mean=torch.zeros(3, 2, 4, 4), logvar=torch.zeros(3, 2, 4, 4)),
    ),
    "latent.LatentConfig": (
        latent.LatentConfig,
        lambda: dict(channels=(16, 16), text_dim=8, heads=2, T=100, steps=10, batch_size=4),
    ),
    "latent.generate": (
        latent.generate,
        lambda: dict(model=LATENT, prompts=["the digit 3"], guidance=2.0, steps=3, generator=gen()),
    ),
    "text.make_prompts": (text.make_prompts, lambda: dict(labels=[1, 2], generator=gen())),
    "text.drop_prompts": (
        text.drop_prompts,
        lambda: dict(prompts=["a 1", "a 2"], probability=0.5, generator=gen()),
    ),
    "text.Tokenizer.encode": (text.Tokenizer().encode, lambda: dict(prompts=["the digit 3"])),
    "text.TextEncoder": (
        text.TextEncoder,
        lambda: dict(vocab_size=20, max_length=8, dim=8, layers=1, heads=2),
    ),
    "discrete.DiscreteProcess.linear": (
        discrete.DiscreteProcess.linear,
        lambda: dict(kind="absorbing", vocab_size=4, T=5),
    ),
    "discrete.DiscreteProcess.q_probs": (
        ABSORBING.q_probs,
        lambda: dict(x0=TOKENS.clone(), t=3),
    ),
    "discrete.DiscreteProcess.posterior_probs": (
        ABSORBING.posterior_probs,
        lambda: dict(xt=TOKENS.clone(), x0=TOKENS.clone(), t=3),
    ),
    "discrete.d3pm_sample": (
        discrete.d3pm_sample,
        lambda: dict(denoiser=TOKEN_NET, process=ABSORBING, n=3, length=5, generator=gen()),
    ),
    "discrete.masked_nelbo": (
        discrete.masked_nelbo,
        lambda: dict(denoiser=TOKEN_NET, x0=TOKENS.clone(), vocab_size=4, generator=gen()),
    ),
    "discrete.masked_sample": (
        discrete.masked_sample,
        lambda: dict(
            denoiser=TOKEN_NET,
            prompt=torch.full((3, 5), 4),
            vocab_size=4,
            steps=3,
            generator=gen(),
        ),
    ),
    "discrete.mask_weight": (discrete.mask_weight, lambda: dict(t=torch.tensor([0.5]))),
    "discrete.TokenTransformer": (
        discrete.TokenTransformer,
        lambda: dict(vocab_size=4, length=5, dim=8, layers=1, heads=2),
    ),
    "languages.random_markov_language": (
        languages.random_markov_language,
        lambda: dict(vocab_size=4, order=2, length=5, allowed=2, generator=gen()),
    ),
    "languages.MarkovLanguage.log_prob": (MARKOV.log_prob, lambda: dict(x=TOKENS.clone())),
    "languages.ArithmeticLanguage.is_valid": (
        languages.ArithmeticLanguage(1).is_valid,
        lambda: dict(x=torch.zeros(2, 6, dtype=torch.int64)),
    ),
    "languages.distinct_ngrams": (languages.distinct_ngrams, lambda: dict(x=TOKENS.clone(), n=2)),
}

# The values an argument is replaced by, chosen by the kind of its valid value.
NUMBER_MUTANTS = [None, "1", True, math.nan, math.inf, -math.inf, -1, 0, 10**12, 1e308, 2.5]
TENSOR_MUTANTS = [
    None,
    "x",
    3.0,
    [[0.0, 1.0]],
    "empty",
    "nan",
    "inf",
    "int",
    "flat",
    "extra axis",
    "huge",
]
OTHER_MUTANTS = [None, 3, "bogus", 2.5, [], True]


def mutants(value):
    if isinstance(value, bool):
        return [None, 2, "yes", 0.5]
    if isinstance(value, int | float):
        return NUMBER_MUTANTS
    if isinstance(value, torch.Tensor):
        return [_tensor_mutant(value, kind) for kind in TENSOR_MUTANTS]
    if isinstance(value, str):
        return [None, "bogus", "", 3, ["a"]]
    if isinstance(value, tuple | list):
        return [None, [], [-1] * len(value), ["a"] * len(value), [10**9] * len(value), "ab"]
    return OTHER_MUTANTS


def _tensor_mutant(value: torch.Tensor, kind):
    if not isinstance(kind, str) or kind == "x":
        return kind
    floating = value.to(F64) if not value.is_floating_point() else value
    return {
        "empty": value[:0],
        "nan": torch.full_like(floating, math.nan),
        "inf": torch.full_like(floating, math.inf),
        "int": value.to(torch.int64) if value.is_floating_point() else value.to(F64) + 0.5,
        "flat": value.reshape(-1),
        "extra axis": value.unsqueeze(-1),
        "huge": floating * 1e200 + 1e200,
    }[kind]


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang


def finite(result) -> bool:
    if isinstance(result, torch.Tensor):
        return not result.is_floating_point() or bool(torch.isfinite(result).all())
    if isinstance(result, float):
        return math.isfinite(result)
    if isinstance(result, tuple | list):
        return all(finite(item) for item in result)
    if isinstance(result, dict):
        return all(finite(item) for item in result.values())
    return True


def classify(function, kwargs, name, timeout) -> str:
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        result = function(**kwargs)
        if finite(result):
            return "accepted"
        given = kwargs.get(name)
        return (
            "propagated" if isinstance(given, torch.Tensor) and not finite(given) else "non-finite"
        )
    except Hang:
        return "hang"
    except (ValueError, TypeError) as error:
        return "clear" if name in str(error) else "unnamed"
    except Exception:  # noqa: BLE001 - every other exception is what is being counted
        return "foreign"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds per call")
    parser.add_argument("--list", action="store_true", help="list every bad outcome")
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        help="modules to leave out (a hang inside C code, "
        "as matplotlib's on absurd sizes, cannot be interrupted by the time limit)",
    )
    args = parser.parse_args()
    # A huge allocation fails at once instead of swapping the machine.
    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))
    signal.signal(signal.SIGALRM, _alarm)
    warnings.simplefilter("ignore")
    counts = collections.defaultdict(collections.Counter)
    bad = []
    for case, (function, valid) in CASES.items():
        module = case.split(".")[0]
        if module in args.skip:
            continue
        baseline = valid()
        outcome = classify(function, baseline, "", args.timeout)
        if outcome != "accepted":
            print(f"! the valid call of {case} gives {outcome}", file=sys.stderr)
            continue
        for argument, value in baseline.items():
            for mutant in mutants(value):
                kwargs = {**valid(), argument: mutant}
                outcome = classify(function, kwargs, argument, args.timeout)
                plt.close("all")
                counts[module][outcome] += 1
                if outcome in ("unnamed", "foreign", "non-finite", "hang"):
                    bad.append((case, argument, _show(mutant), outcome))
    kinds = ["clear", "accepted", "propagated", "unnamed", "foreign", "non-finite", "hang"]
    print(f"{'module':>16} {'tried':>6} " + " ".join(f"{kind:>10}" for kind in kinds))
    total = collections.Counter()
    for module, counter in counts.items():
        total.update(counter)
        row = " ".join(f"{counter[kind]:>10}" for kind in kinds)
        print(f"{module:>16} {sum(counter.values()):>6} {row}")
    row = " ".join(f"{total[kind]:>10}" for kind in kinds)
    print(f"{'all':>16} {sum(total.values()):>6} {row}")
    print(f"functions and constructors: {len(CASES)}")
    if args.list:
        for case, argument, mutant, outcome in bad:
            print(f"{outcome:>10}  {case}({argument}={mutant})")


def _show(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor{tuple(value.shape)}:{value.dtype}"
    return repr(value)[:40]


if __name__ == "__main__":
    main()
