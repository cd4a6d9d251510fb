"""Shared pytest configuration: one Hypothesis profile for the whole suite, a fixture that
runs a module's tests with one torch thread, and one that imports a script of scripts/."""

import importlib.util
import pathlib

import pytest
import torch
from hypothesis import settings

# No per-example deadline (the first call of a torch op can be slow on a cold 2-core CPU) and a
# modest number of examples, so that property tests stay within the suite's time budget.
settings.register_profile("diffusion_core", deadline=None, max_examples=40)
settings.load_profile("diffusion_core")


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests, as the book runs and its bitwise claims are made:
    float sums round differently with two threads, and two threads on a busy two-core machine
    slow small convolutions down many times. The previous count is restored after. A module
    asks for it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def load_script():
    """``load_script(name)`` imports ``scripts/NAME.py`` (the scripts are not a package) and
    returns it as a module, for the tests that run a training or data script."""

    def load(name: str):
        path = pathlib.Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
