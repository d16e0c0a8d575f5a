# The two commands of the README. Both create the virtual environment on first use.
#   make run    # the quickstart grid: snakemake --cores $(CORES) on config.yaml
#   make test   # the test suite
#   make readme # the quickstart grid, then the README's quickstart block rewritten from its results
PYTHON ?= python3
VENV ?= .venv
CORES ?= 4
# Test files run on this many pytest workers (pytest-xdist), longest files first
# (tests/conftest.py: LONGEST_FIRST); most of a test is single-threaded process start-up, so
# two workers fill two cores.
TEST_WORKERS ?= 2
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint report readme clean

# torch==2.14.1 and torchvision==0.29.1 are pinned in pyproject.toml.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[test]'
	touch $@

run: $(STAMP)
	$(BIN)/snakemake --cores $(CORES)

test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# snakemake --lint (its per-rule conda/container suggestion aside: no channel or registry is
# reachable here, the pinned pip environment is the stack), snakefmt, ruff: under a minute.
lint: $(STAMP)
	$(BIN)/python .ci/snakemake_lint.py
	$(BIN)/snakefmt --check Snakefile workflow
	$(BIN)/ruff check

report: $(STAMP)
	$(BIN)/snakemake --cores $(CORES)
	$(BIN)/snakemake --report results/report.html

# The README's quickstart block (between its quickstart markers: split sizes, the table, every
# number in its prose) from this run's results; tests/test_quickstart.py fails when they differ.
# `$(BIN)/python tools/quickstart_readme.py --check` compares without writing.
readme: $(STAMP)
	$(BIN)/snakemake --cores $(CORES)
	$(BIN)/python tools/quickstart_readme.py

clean:
	rm -rf results .snakemake
