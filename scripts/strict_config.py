"""Print the book's configuration with notebook execution switched off.

The strict test build renders the outputs stored in the notebooks (which nbval has just proven
to be what the code produces) instead of executing every notebook a second time. Jupyter Book
resolves the paths of local Sphinx extensions against the folder of the configuration file, and
this one is written elsewhere (into _build/), so those paths are made absolute.
"""

import pathlib
import sys

import yaml

root = pathlib.Path(__file__).resolve().parents[1]
config = yaml.safe_load((root / "_config.yml").read_text())
config.setdefault("execute", {})["execute_notebooks"] = "off"
extensions = config.get("sphinx", {}).get("local_extensions") or {}
for name, path in extensions.items():
    extensions[name] = str((root / path).resolve())
yaml.safe_dump(config, sys.stdout, sort_keys=False, allow_unicode=True)
