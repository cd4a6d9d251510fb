# The two commands of the README:
#   make book   set up .venv, execute every notebook afresh and build the HTML into _build/html
#   make test   ruff, a strict build of the book, the whole-book PDF, unit tests and every
#               notebook under nbval
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
JOBS ?= 2

.PHONY: book test setup lint strict-build pdf test-pdf pytest execute lock clean

book: setup
	$(BIN)/jupyter-book build . --all

test: setup lint strict-build test-pdf pytest

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

# The whole book as one PDF, _build/latex/diffusion-models-executable.pdf: the outputs stored in
# the notebooks (execution off, as in the strict build), typeset by XeLaTeX (Debian:
# texlive-xetex texlive-lang-cjk texlive-fonts-recommended fonts-cmu fonts-noto-cjk latexmk,
# as .ci/run installs). An HTML build made after it serves it and links it from every page's
# download menu.
pdf: setup
	@command -v xelatex >/dev/null || { echo "make pdf needs XeLaTeX and latexmk (see README.md)"; exit 1; }
	mkdir -p _build
	$(BIN)/python scripts/strict_config.py > _build/_config_strict.yml
	rm -rf _build/latex
	LATEXOPTS="-interaction=nonstopmode -halt-on-error" $(BIN)/jupyter-book build . \
	  --builder pdflatex -W -n --keep-going --config _build/_config_strict.yml

# In `make test`: the PDF where XeLaTeX is installed (tests/test_pdf.py skips, saying so, where not).
test-pdf: setup
	@if command -v xelatex >/dev/null; then $(MAKE) pdf; \
	else echo "xelatex not installed: no PDF built, tests/test_pdf.py will be skipped"; fi

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
