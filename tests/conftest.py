"""Shared pytest configuration: one Hypothesis profile for the whole suite."""

from hypothesis import settings

# No per-example deadline (the first call of a torch op can be slow on a cold 2-core CPU) and a
# modest number of examples, so that property tests stay within the suite's time budget.
settings.register_profile("diffusion_core", deadline=None, max_examples=40)
settings.load_profile("diffusion_core")
