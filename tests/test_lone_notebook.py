"""A chapter notebook opened on its own, as a launch button opens it on Colab.

Colab receives one notebook and nothing else of the repository: no ``checkpoints`` folder beside
it, no ``diffusion_core`` on the path. Each chapter therefore starts with a set-up cell that
pip-installs the library, trained weights included, from the book's repository when it is
missing, and loads its weights through ``diffusion_core.checkpoints.packaged``.

The chapters on digits, guidance and latent diffusion (04 to 06) are each copied alone into an
empty directory and run there, from their first cell up to and including the cell that loads
the checkpoint: this proves that nothing they need lies next to them in the repository. Here
the library is installed, so the set-up cell does nothing. Every checkpoint that any chapter
names is also loaded, and verified, by a process started in an empty directory (a cheap check
for chapters whose checkpoint comes late, where running up to it would cost the whole chapter).
The set-up cell's install branch, in every chapter, is run with ``find_spec`` answering "not
installed" and ``subprocess.run`` replaced by a recorder, to check the pip command it would run:
the library with its ``book`` extra from ``repository.url`` of _config.yml; and with the library
installed, to check that it runs no pip at all.
"""

from __future__ import annotations

import importlib.util
import pathlib
import re
import shutil
import subprocess
import sys
import tomllib

import nbformat
import pytest
import yaml
from nbclient import NotebookClient
from packaging.requirements import Requirement

ROOT = pathlib.Path(__file__).resolve().parents[1]
LOADS_CHECKPOINT = re.compile(r"\bpackaged\(")
CHECKPOINT_NAME = re.compile(r"\bpackaged\(\s*[\"']([^\"']+)[\"']\s*\)")
RUN_ALONE = ("04", "05", "06")  # chapters run up to their checkpoint, by number
SETUP_LINE = re.compile(r'^REPOSITORY = "([^"]*)"$', re.M)


def chapters_with_checkpoints() -> list[str]:
    names = []
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = nbformat.read(path, as_version=4).cells
        if any(c.cell_type == "code" and LOADS_CHECKPOINT.search(c.source) for c in cells):
            names.append(path.name)
    return names


def setup_cell(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The first code cell, which must be the set-up cell."""
    first = next(cell for cell in notebook.cells if cell.cell_type == "code")
    assert SETUP_LINE.search(first.source), "the first code cell is not the set-up cell"
    return first


def configured_repository() -> str:
    return yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]


def test_the_chapters_that_load_checkpoints_are_found():
    # The chapters on digits and latent diffusion load trained weights; if the way they load
    # them changes, the tests below must not quietly run on nothing.
    assert {name[:2] for name in chapters_with_checkpoints()} >= set(RUN_ALONE)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", [name for name in chapters_with_checkpoints() if name.startswith(RUN_ALONE)]
)
def test_chapter_runs_alone_up_to_its_checkpoint(name, tmp_path):
    lone = tmp_path / name
    shutil.copy(ROOT / "notebooks" / name, lone)
    assert [path.name for path in tmp_path.iterdir()] == [name]
    notebook = nbformat.read(lone, as_version=4)
    setup = setup_cell(notebook)
    last = next(
        index
        for index, cell in enumerate(notebook.cells)
        if cell.cell_type == "code" and LOADS_CHECKPOINT.search(cell.source)
    )
    notebook.cells = notebook.cells[: last + 1]
    assert setup in notebook.cells
    client = NotebookClient(
        notebook,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error
    outputs = [output for cell in notebook.cells for output in cell.get("outputs", [])]
    assert not [output for output in outputs if output.output_type == "error"]
    assert not [output for output in setup.outputs if output.get("name") == "stderr"], (
        "the set-up cell printed to stderr where the library is installed"
    )


def test_every_checkpoint_a_chapter_names_loads_from_an_empty_directory(tmp_path):
    names = sorted(
        {
            match
            for name in chapters_with_checkpoints()
            for cell in nbformat.read(ROOT / "notebooks" / name, as_version=4).cells
            if cell.cell_type == "code"
            for match in CHECKPOINT_NAME.findall(cell.source)
        }
    )
    assert names, "no chapter names a packaged checkpoint"
    load_each = (
        "import sys, safetensors\n"
        "from diffusion_core import checkpoints\n"
        "for name in sys.argv[1:]:\n"
        "    path = checkpoints.packaged(name)\n"
        "    with safetensors.safe_open(path, 'pt') as file:\n"
        "        kind = file.metadata()['kind']\n"
        "    checkpoints.load(path, kind)  # verifies the recorded SHA-256\n"
        "    print(name, kind)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", load_each, *names],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert [line.split()[0] for line in result.stdout.splitlines()] == names


@pytest.mark.parametrize("name", [path.name for path in sorted(ROOT.glob("notebooks/*.ipynb"))])
def test_setup_cell_installs_the_library_from_the_configured_repository(name, monkeypatch):
    source = setup_cell(nbformat.read(ROOT / "notebooks" / name, as_version=4)).source
    calls, asked = [], []

    def record_run(command, *args, **kwargs):
        calls.append(command)
        return subprocess.CompletedProcess(command, 0)

    def not_installed(module, *args, **kwargs):
        asked.append(module)
        return None

    monkeypatch.setattr(subprocess, "run", record_run)
    exec(compile(source, f"{name}: set-up cell", "exec"), {})
    assert calls == [], "the set-up cell runs pip although diffusion_core is installed"

    monkeypatch.setattr(importlib.util, "find_spec", not_installed)
    exec(compile(source, f"{name}: set-up cell", "exec"), {})
    assert asked == ["diffusion_core"]
    assert len(calls) == 1, f"expected one pip command, got {calls}"
    command = calls[0]
    assert command[:4] == [sys.executable, "-m", "pip", "install"]
    requirement = Requirement(command[-1])
    assert requirement.name == "diffusion-core"
    assert requirement.url == f"git+{configured_repository()}"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert requirement.extras == {"book"} and "book" in extras
