"""Strip run-dependent metadata from notebooks so that re-running them gives small diffs.

Keeps the kernelspec and language info the book needs; drops execution timings, widget state
and per-cell ``execution`` records. Usage: python scripts/clean_notebooks.py notebooks/*.ipynb
"""

import json
import pathlib
import sys

KEEP_NOTEBOOK_METADATA = ("kernelspec", "language_info")


def clean(path: pathlib.Path) -> None:
    notebook = json.loads(path.read_text())
    notebook["metadata"] = {
        key: notebook["metadata"][key]
        for key in KEEP_NOTEBOOK_METADATA
        if key in notebook["metadata"]
    }
    notebook["metadata"].get("language_info", {}).pop("version", None)
    for cell in notebook["cells"]:
        cell.get("metadata", {}).pop("execution", None)
    path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    for name in sys.argv[1:]:
        clean(pathlib.Path(name))
