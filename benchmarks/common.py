"""What the benchmark scripts share: the machine's description, tables, timing, diffusers.

Not a test helper and not part of the library: the scripts in this folder import it as
``common`` (Python puts a script's own folder first on its path).
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import torch


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """One line naming the CPU, its cores, torch's version and threads, and the GPU if any."""
    parts = [
        f"CPU: {cpu_model()}",
        f"{os.cpu_count()} cores",
        f"torch {torch.__version__} ({torch.get_num_threads()} threads)",
        f"Python {platform.python_version()}",
    ]
    if torch.cuda.is_available():
        parts.append(f"GPU: {torch.cuda.get_device_name()}")
    return ", ".join(parts)


def header(title: str) -> None:
    """Print the benchmark's title, the command that ran it and the machine."""
    print(f"# {title}")
    print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    print(f"machine: {machine()}")
    print()


def require_diffusers():
    """Import diffusers or exit with a message that says how to get it."""
    try:
        import diffusers
    except ImportError:
        sys.exit(
            "This benchmark compares with Hugging Face diffusers, which is not installed. "
            "Install the benchmark extra:  .venv/bin/pip install -e '.[bench]'  "
            "(diffusers is needed by the benchmarks only, never by the book or the tests)."
        )
    return diffusers


def table(headers: Sequence[str], rows: Sequence[Sequence], formats: Sequence[str]) -> str:
    """A plain-text table in Markdown syntax: right-aligned columns, one format per column."""
    cells = [
        [format(value, spec) for value, spec in zip(row, formats, strict=True)] for row in rows
    ]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = ["| " + " | ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|")
    lines += [
        "| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells
    ]
    return "\n".join(lines)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_medians(
    contenders: dict[str, Callable[[], None]], repeats: int, device: torch.device
) -> dict[str, float]:
    """Median wall time (seconds) of each callable, timed in turn, round after round.

    Interleaving puts every contender through the same spells of machine noise, so their
    ratios stay meaningful on a shared, noisy machine; the median ignores outliers.
    """
    times = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, run in contenders.items():
            synchronize(device)
            start = time.perf_counter()
            run()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}
