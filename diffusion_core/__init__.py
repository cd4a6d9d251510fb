"""diffusion_core: the library behind the executable textbook on diffusion models.

Modules, in the order data flows through them: :mod:`~diffusion_core.schedules`,
:mod:`~diffusion_core.forward`, :mod:`~diffusion_core.analytic`, :mod:`~diffusion_core.metrics`,
:mod:`~diffusion_core.device`.
"""

__version__ = "0.1.0"
