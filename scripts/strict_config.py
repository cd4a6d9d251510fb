"""Print the book's configuration with notebook execution switched off.

The strict test build renders the outputs stored in the notebooks (which nbval has just proven
to be what the code produces) instead of executing every notebook a second time.
"""

import pathlib
import sys

import yaml

config = yaml.safe_load(pathlib.Path("_config.yml").read_text())
config.setdefault("execute", {})["execute_notebooks"] = "off"
yaml.safe_dump(config, sys.stdout, sort_keys=False, allow_unicode=True)
