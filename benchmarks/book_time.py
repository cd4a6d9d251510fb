"""The whole book's execution time, notebook by notebook.

Copies ``notebooks/`` into a temporary folder (the image chapters find their trained weights
inside the package, ``diffusion_core.checkpoints.packaged``), executes each chapter there with
nbclient in a fresh kernel (the stored notebooks are not touched), and prints a table of wall
times, with the kernel's start-up timed separately. The book's budget is two minutes per
chapter and ten for the whole book on a 2-core CPU (its execution report,
``book/execution_report.md``).

Run:  .venv/bin/python benchmarks/book_time.py [--only 02] [--timeout 900]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import tempfile
import time

import nbformat
from common import header, table
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHAPTER_BUDGET_S, BOOK_BUDGET_S = 120, 600


def execute(path: pathlib.Path, timeout: int) -> tuple[float, float, int]:
    """Execute one notebook in place (a copy); return (kernel start s, cells s, code cells)."""
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    with client.setup_kernel():
        started = time.perf_counter()
        for index, cell in enumerate(notebook.cells):
            client.execute_cell(cell, index)
        finished = time.perf_counter()
    cells = sum(cell.cell_type == "code" for cell in notebook.cells)
    return started - start, finished - started, cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="", help="run the notebooks whose name contains this")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per cell")
    args = parser.parse_args()
    os.environ.setdefault("DIFFUSION_PROGRESS", "0")
    header("Book execution time")

    rows, total = [], 0.0
    with tempfile.TemporaryDirectory() as folder:
        copy = pathlib.Path(folder) / "notebooks"
        shutil.copytree(ROOT / "notebooks", copy)
        for path in sorted(copy.glob("*.ipynb")):
            if args.only not in path.name:
                continue
            kernel, cells, count = execute(path, args.timeout)
            total += kernel + cells
            verdict = "ok" if kernel + cells <= CHAPTER_BUDGET_S else "over budget"
            rows.append([path.name, count, kernel, cells, kernel + cells, verdict])
    rows.append(["whole book", sum(r[1] for r in rows), sum(r[2] for r in rows), 0.0, total, ""])
    rows[-1][3] = sum(r[3] for r in rows[:-1])
    rows[-1][5] = "ok" if total <= BOOK_BUDGET_S else "over budget"
    headers = ["notebook", "code cells", "kernel start (s)", "cells (s)", "total (s)", "budget"]
    print(table(headers, rows, ["s", "d", ".1f", ".1f", ".1f", "s"]))
    print(f"Budgets: {CHAPTER_BUDGET_S} s per chapter, {BOOK_BUDGET_S} s for the book.")


if __name__ == "__main__":
    main()
