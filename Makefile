# The two commands of the README:
#   make book   set up .venv, execute every notebook afresh and build the HTML into _build/html
#   make test   ruff, a strict build of the book, unit tests and every notebook under nbval
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
JOBS ?= 2

.PHONY: book test setup lint strict-build pytest execute lock clean

book: setup
	$(BIN)/jupyter-book build . --all

test: setup lint strict-build pytest

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt scripts/setup.sh
	bash scripts/setup.sh
	touch $@

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Renders the stored outputs (nbval checks they are what the code produces), warnings are errors.
strict-build: setup
	mkdir -p _build
	$(BIN)/python scripts/strict_config.py > _build/_config_strict.yml
	$(BIN)/jupyter-book build . --all -W -n --keep-going --config _build/_config_strict.yml

pytest: setup
	$(BIN)/python -m pytest -n $(JOBS) --dist loadfile --nbval --nbval-current-env \
	  --nbval-sanitize-with tests/nbval_sanitize.cfg tests notebooks

# Re-execute every notebook in place (after a library change, so nbval's stored outputs match).
execute: setup
	for nb in notebooks/*.ipynb; do \
	  $(BIN)/jupyter nbconvert --to notebook --execute --inplace \
	    --ExecutePreprocessor.timeout=600 --ExecutePreprocessor.record_timing=False "$$nb" || exit 1; \
	done
	$(BIN)/python scripts/clean_notebooks.py notebooks/*.ipynb

lock:
	bash scripts/lock.sh

clean:
	rm -rf _build .jupyter_cache
