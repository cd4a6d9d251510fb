"""The scripts of the book's scaling-out page run as printed, in one CPU process.

The page (book/scaling_out.md) prints a training script, a sampling script and a stochastic
sampling snippet. Here they are taken from the page itself, shortened (4 training steps instead
of 20,000, a 5-step sampling grid instead of 50) and run with plain ``python`` in a temporary
directory, so that a change of the library's API cannot leave the page behind. The
multi-process form is tested on smaller models by tests/test_distributed.py.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGE = ROOT / "book" / "scaling_out.md"


def page_scripts() -> list[str]:
    return re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)


def shortened(source: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        assert old in source, f"the page's script no longer contains {old!r}"
        source = source.replace(old, new)
    return source


def run(script: str, directory: pathlib.Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), DIFFUSION_PROGRESS="0", OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_the_page_scripts_train_save_and_sample(tmp_path):
    train, sample, stochastic = page_scripts()
    short = {"steps=20_000": "steps=4", "checkpoint_every=1000": "checkpoint_every=2"}
    run(shortened(train, short), tmp_path)
    assert (tmp_path / "checkpoints" / "digits.safetensors").is_file()
    assert (tmp_path / "checkpoints" / "digits_ema.safetensors").is_file()

    grid = {"schedule.grid(50)": "schedule.grid(5)"}
    run(shortened(sample, grid), tmp_path)
    samples = torch.load(tmp_path / "samples_0.pt")
    assert samples.shape == (1024, 1, 8, 8) and bool(samples.isfinite().all())

    # the stochastic snippet continues the sampling script, after the per-sample noise
    setup = shortened(sample, grid).split("z = per_sample_noise")[0]
    check = "\nassert x.shape == (n, 1, 8, 8) and bool(x.isfinite().all())\n"
    run(setup + stochastic + check, tmp_path)
