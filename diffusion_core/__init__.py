"""diffusion_core: the library behind the executable textbook on diffusion models.

Modules, in the order data flows through them:

- :mod:`~diffusion_core.schedules`: the process protocol (discrete schedules, the VP and VE
  SDEs, EDM, rectified flow) and the time grids every sampler walks, conversions, spacings;
- :mod:`~diffusion_core.forward`: the forward process in closed form and step by step (and the
  source article's scheme, for study);
- :mod:`~diffusion_core.analytic`: exact Gaussian and Gaussian-mixture reference models;
- :mod:`~diffusion_core.parameterization`: eps-, x0-, v- and score-prediction, denoisers;
- :mod:`~diffusion_core.nets`, :mod:`~diffusion_core.losses`, :mod:`~diffusion_core.train`:
  networks, training objectives and a reproducible training loop;
- :mod:`~diffusion_core.samplers`: samplers with one shared signature over an explicit time grid,
  each one step rule applied by one loop, the higher-order multistep solvers included;
- :mod:`~diffusion_core.grids`: the classical time grids and a grid fitted to a model for
  sampling in a few steps;
- :mod:`~diffusion_core.distill`: progressive distillation, a sampler taught to a network that
  takes half its steps;
- :mod:`~diffusion_core.flow`, :mod:`~diffusion_core.likelihood`: the same transport as a
  velocity field (flow matching, rectified flow, reflow, optimal-transport couplings) and the
  log-likelihood of data through the probability-flow ODE;
- :mod:`~diffusion_core.metrics`: distances between distributions, image-quality scores;
- :mod:`~diffusion_core.images`: the digits data, the classifier behind the image scores, and
  the book's trained digits denoisers;
- :mod:`~diffusion_core.stability`: exact variance and error propagation, precision studies,
  clipping and thresholding;
- :mod:`~diffusion_core.autoencoder`, :mod:`~diffusion_core.text`: the latent autoencoder and the
  tiny prompt encoder for latent, text-conditioned diffusion;
- :mod:`~diffusion_core.discrete`, :mod:`~diffusion_core.languages`: diffusion on tokens (D3PM's
  processes, the masked process, its ELBO and samplers, a token transformer) and the languages of
  known distribution it is measured against;
- :mod:`~diffusion_core.audio`: spoken digits as log-mel spectrograms, their inverse to sound,
  pitch, the judge that names the words and the conditional spectrogram denoiser;
- :mod:`~diffusion_core.device`: seeding and device choice;
- :mod:`~diffusion_core.plotting`: the book's figure helpers (needs matplotlib).
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
