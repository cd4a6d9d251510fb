"""scripts/set_repository.py: one repository URL, in _config.yml, the notebooks and the pages."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import nbformat
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = "scripts/set_repository.py"


def run(root: pathlib.Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(root / SCRIPT), *args],
        capture_output=True,
        text=True,
        check=False,
    )


def copy_of_the_book(tmp_path: pathlib.Path) -> pathlib.Path:
    """The files the script reads and writes, copied; the script runs on its own copy's root."""
    root = tmp_path / "book-copy"
    for pattern in ("_config.yml", "README.md", SCRIPT, "book/*.md", "notebooks/*.ipynb"):
        for path in ROOT.glob(pattern):
            target = root / path.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target)
    return root


def snapshot(root: pathlib.Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): path.read_text()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def test_the_repository_agrees_with_its_config():
    result = run(ROOT, "--check")
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"] in result.stdout


def test_setting_a_fork_rewrites_only_the_url_lines_and_is_idempotent(tmp_path):
    root = copy_of_the_book(tmp_path)
    before = snapshot(root)
    old = yaml.safe_load((root / "_config.yml").read_text())["repository"]["url"]
    new = "https://github.com/someone/fork-of-the-book"

    result = run(root, "someone/fork-of-the-book")
    assert result.returncode == 0, result.stderr
    after = snapshot(root)
    assert yaml.safe_load(after["_config.yml"])["repository"]["url"] == new
    assert run(root, "--check").returncode == 0
    for name, text in before.items():
        changed = [
            (old_line, new_line)
            for old_line, new_line in zip(text.splitlines(), after[name].splitlines(), strict=True)
            if old_line != new_line
        ]
        for old_line, new_line in changed:  # each changed line only swaps the URL (and name)
            assert old in old_line or "cd " in old_line, (name, old_line)
            renamed = old_line.replace(old, new).replace("diffusion-core-book", "fork-of-the-book")
            assert renamed == new_line, (name, old_line, new_line)
        if name.endswith(".ipynb"):
            # Still a valid notebook; the set-up line, and nothing else, now names the fork.
            assert len(changed) == 1, name
            nbformat.validate(nbformat.reads(after[name], as_version=4))

    # Idempotent: the same repository again, given as a URL, changes nothing.
    assert run(root, f"{new}.git").returncode == 0
    assert snapshot(root) == after


def test_check_names_each_disagreement(tmp_path):
    root = copy_of_the_book(tmp_path)
    notebook_path = sorted((root / "notebooks").glob("*.ipynb"))[0]
    notebook = json.loads(notebook_path.read_text())
    old = yaml.safe_load((root / "_config.yml").read_text())["repository"]["url"]
    for cell in notebook["cells"]:
        cell["source"] = [line.replace(old, "https://github.com/x/y") for line in cell["source"]]
    notebook_path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")
    page = root / "book" / "run_locally.md"
    page.write_text(
        page.read_text().replace(f"git clone {old}", "git clone https://github.com/x/y")
    )

    result = run(root, "--check")
    assert result.returncode == 1
    assert notebook_path.name in result.stderr and "run_locally.md" in result.stderr


def test_bad_repository_is_refused_by_name(tmp_path):
    root = copy_of_the_book(tmp_path)
    result = run(root, "not a repository")
    assert result.returncode == 2
    assert "OWNER/NAME" in result.stderr
    assert snapshot(root) == snapshot(copy_of_the_book(tmp_path / "again"))


def test_nothing_is_written_when_a_notebook_has_no_setup_line(tmp_path):
    root = copy_of_the_book(tmp_path)
    notebook_path = sorted((root / "notebooks").glob("*.ipynb"))[-1]
    notebook = json.loads(notebook_path.read_text())
    for cell in notebook["cells"]:
        cell["source"] = [line for line in cell["source"] if not line.startswith("REPOSITORY =")]
    notebook_path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")
    before = snapshot(root)

    result = run(root, "someone/fork-of-the-book")
    assert result.returncode != 0
    assert notebook_path.name in result.stderr and "want 1" in result.stderr
    assert snapshot(root) == before
    assert run(root, "--check").returncode == 1
