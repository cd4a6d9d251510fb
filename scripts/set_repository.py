"""Point the book at its repository: one URL, set in _config.yml and used everywhere.

    python scripts/set_repository.py OWNER/NAME        (or https://github.com/OWNER/NAME)
    python scripts/set_repository.py --check

The book's repository is ``repository.url`` in _config.yml. The launch buttons (Colab, Binder)
and the repository button are built from it, and three other places must agree with it:

- every chapter notebook's set-up cell, whose line ``REPOSITORY = "..."`` is the URL that the
  cell pip-installs the library from when it is missing (on Colab);
- the clone command of README.md and book/*.md (``git clone URL.git`` and the ``cd NAME`` after
  it) and any ``pip install ... @ git+URL`` they show.

Given a repository, the script rewrites all of them; it edits the lines that hold the URL and
nothing else (nbformat finds the set-up cell; the line's JSON string is then replaced in the
file's text, and the result, read back as data, must differ in that line alone). Running it
twice changes nothing the second time. With ``--check`` it changes nothing and exits with
status 1, listing each disagreement, when a notebook or a page does not use the URL of
_config.yml (or a notebook has no set-up cell). The book's publishing workflow runs it with
``$GITHUB_REPOSITORY``, so a fork publishes a book whose buttons open the fork's notebooks.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys
import warnings

import nbformat

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = ROOT / "_config.yml"
NOTEBOOKS = "notebooks/*.ipynb"
PAGES = ("README.md", "book/*.md")

URL = r"https://github\.com/[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+?"
CONFIG_LINE = re.compile(r"^(repository:\n(?:[ \t]+.*\n)*?[ \t]+url:[ \t]*)(\S+)[ \t]*$", re.M)
SETUP_LINE = re.compile(r'^REPOSITORY = "([^"]*)"$')
CLONE = re.compile(rf"(git clone )({URL})(\.git)?([ \t]*\n[ \t]*cd )([A-Za-z0-9_.-]+)")
PIP_GIT = re.compile(rf"(@ git\+)({URL})(?=[\s\"'`@#]|$)", re.M)
OWNER_NAME = re.compile(
    r"(?:https://github\.com/)?([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+?)(?:\.git)?/?"
)


def repository_url(text: str) -> str:
    """``OWNER/NAME`` or a GitHub URL of the repository, as ``https://github.com/OWNER/NAME``."""
    match = OWNER_NAME.fullmatch(text.strip())
    if not match:
        raise ValueError(
            f"repository must be OWNER/NAME or https://github.com/OWNER/NAME, got {text!r}"
        )
    return f"https://github.com/{match[1]}/{match[2]}"


def configured_url() -> str:
    match = CONFIG_LINE.search(CONFIG.read_text())
    if not match:
        raise SystemExit(f"{CONFIG.name}: no `url:` under `repository:`")
    return match[2]


def read_notebook(text: str) -> nbformat.NotebookNode:
    # Reading is all this script asks of nbformat: a notebook saved without cell ids is another
    # tool's business (nbformat would warn, and make up ids that this script never writes).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nbformat.validator.MissingIDFieldWarning)
        return nbformat.reads(text, as_version=4)


def setup_lines(notebook: nbformat.NotebookNode) -> list[tuple[int, str]]:
    """(cell index, URL) of each ``REPOSITORY = "..."`` line in the notebook's code cells."""
    found = []
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            for line in cell.source.splitlines():
                if match := SETUP_LINE.match(line):
                    found.append((index, match[1]))
    return found


def notebook_problems(path: pathlib.Path, url: str) -> list[str]:
    found = setup_lines(read_notebook(path.read_text()))
    if len(found) != 1:
        return [f"{path.relative_to(ROOT)}: {len(found)} set-up lines `REPOSITORY = ...`, want 1"]
    index, value = found[0]
    if value != url:
        return [f"{path.relative_to(ROOT)}: cell {index} has REPOSITORY = {value!r}, want {url!r}"]
    return []


def page_problems(path: pathlib.Path, url: str) -> list[str]:
    text, name = path.read_text(), url.rsplit("/", 1)[1]
    problems = []
    for match in CLONE.finditer(text):
        if match[2] != url or match[5] != name:
            problems.append(f"{path.relative_to(ROOT)}: `git clone {match[2]}` / `cd {match[5]}`")
    for match in PIP_GIT.finditer(text):
        if match[2] != url:
            problems.append(f"{path.relative_to(ROOT)}: `git+{match[2]}`")
    return [f"{problem}, want {url}" for problem in problems]


def notebook_text(path: pathlib.Path, url: str) -> str:
    """The notebook's JSON text with the set-up line's string rewritten, nothing else."""
    text = path.read_text()
    found = setup_lines(read_notebook(text))
    if len(found) != 1:
        raise SystemExit(notebook_problems(path, url)[0])
    index, old = found[0]
    old_json, new_json = (json.dumps(f'REPOSITORY = "{u}"')[1:-1] for u in (old, url))
    if text.count(old_json) != 1:
        raise SystemExit(f"{path.relative_to(ROOT)}: the set-up line is not one JSON string")
    new_text = text.replace(old_json, new_json)
    # The JSON, compared as data: the set-up cell's source is the only thing that changes.
    expected = json.loads(text)
    cell = expected["cells"][index]
    lines = cell["source"] if isinstance(cell["source"], list) else [cell["source"]]
    lines = [line.replace(f'REPOSITORY = "{old}"', f'REPOSITORY = "{url}"') for line in lines]
    cell["source"] = lines if isinstance(cell["source"], list) else lines[0]
    if json.loads(new_text) != expected:
        raise SystemExit(f"{path.relative_to(ROOT)}: more than the set-up line would change")
    return new_text


def page_text(path: pathlib.Path, url: str) -> str:
    name = url.rsplit("/", 1)[1]
    text = CLONE.sub(lambda m: f"{m[1]}{url}{m[3] or ''}{m[4]}{name}", path.read_text())
    return PIP_GIT.sub(lambda m: f"{m[1]}{url}", text)


def config_text(url: str) -> str:
    return CONFIG_LINE.sub(lambda m: m[1] + url, CONFIG.read_text(), count=1)


def files(*patterns: str) -> list[pathlib.Path]:
    return sorted(path for pattern in patterns for path in ROOT.glob(pattern))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("repository", nargs="?", help="OWNER/NAME or https://github.com/OWNER/NAME")
    group.add_argument("--check", action="store_true", help="only report disagreements")
    args = parser.parse_args(argv)

    if args.check:
        url = configured_url()
        problems = [p for path in files(NOTEBOOKS) for p in notebook_problems(path, url)]
        problems += [p for path in files(*PAGES) for p in page_problems(path, url)]
        for problem in problems:
            print(problem, file=sys.stderr)
        if not problems:
            print(f"every notebook and page uses {url}")
        return 1 if problems else 0

    try:
        url = repository_url(args.repository)
    except ValueError as error:
        parser.error(str(error))
    # Everything is computed first and written only if every file could be rewritten.
    texts = {CONFIG: config_text(url)}
    texts |= {path: notebook_text(path, url) for path in files(NOTEBOOKS)}
    texts |= {path: page_text(path, url) for path in files(*PAGES)}
    changed = [path for path, text in texts.items() if text != path.read_text()]
    for path in changed:
        path.write_text(texts[path])
        print(f"{path.relative_to(ROOT)}: repository {url}")
    if not changed:
        print(f"already {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
