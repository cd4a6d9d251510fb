"""The project's dependency lists agree with one another.

pyproject.toml is the source of truth; environment.yml (for conda users) must list the same
packages with the same ranges, and requirements/constraints.txt must pin a version of every
package that satisfies those ranges.
"""

import pathlib
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = pathlib.Path(__file__).resolve().parents[1]
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc")
CONDA_NAMES = {"torch": "pytorch"}  # conda-forge's name where it differs from PyPI's


def canonical(name: str) -> str:
    return name.lower().replace("_", "-")


def pyproject_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        lines += extra
    return {canonical(req.name): req for req in map(Requirement, lines)}


def conda_requirements() -> dict[str, Requirement]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    entries = [d for d in env["dependencies"] if isinstance(d, str)]
    reqs = {canonical(req.name): req for req in map(Requirement, entries)}
    reqs.pop("pip")
    reqs.pop("python")
    return reqs


def constraints() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "requirements/constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonical(name)] = Version(version)
    return pins


def test_environment_yml_lists_the_pyproject_dependencies_with_the_same_ranges():
    pyproject = pyproject_requirements()
    conda = conda_requirements()
    expected = {CONDA_NAMES.get(name, name): req.specifier for name, req in pyproject.items()}
    assert {name: req.specifier for name, req in conda.items()} == expected


@pytest.mark.parametrize("name", sorted(pyproject_requirements()))
def test_constraints_pin_a_version_inside_each_range(name):
    pins = constraints()
    assert name in pins, f"requirements/constraints.txt has no pin for {name}"
    assert pyproject_requirements()[name].specifier.contains(pins[name], prereleases=True)


def test_environment_yml_python_matches_requires_python():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert python == "python" + requires


def test_the_wheel_carries_every_file_of_the_package(tmp_path):
    """`pip install` from git (the chapters' set-up cell on Colab) gets the packaged weights and
    data files: every file under diffusion_core/, Python or not, is in the wheel, byte for byte.

    The wheel is built from a copy of the sources with setuptools' PEP 517 backend, in a fresh
    interpreter and without network access, as pip would build it.
    """
    source = tmp_path / "source"
    shutil.copytree(ROOT / "diffusion_core", source / "diffusion_core", ignore=IGNORED)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    build = "import sys, setuptools.build_meta as backend; print(backend.build_wheel(sys.argv[1]))"
    result = subprocess.run(
        [sys.executable, "-c", build, str(tmp_path)],
        cwd=source,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    wheel = tmp_path / result.stdout.strip().splitlines()[-1]
    package = source / "diffusion_core"
    files = sorted(path for path in package.rglob("*") if path.is_file())
    weights = [path for path in files if path.suffix == ".safetensors"]
    assert weights, "diffusion_core/weights holds no checkpoint"
    with zipfile.ZipFile(wheel) as archive:
        packed = set(archive.namelist())
        missing = [
            str(path.relative_to(source))
            for path in files
            if str(path.relative_to(source)) not in packed
        ]
        assert not missing, f"{wheel.name} lacks {missing}"
        for path in weights:
            assert archive.read(str(path.relative_to(source))) == path.read_bytes()
