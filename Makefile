# NØMADE — the two commands of the README: `make demo` and `make test`.
# Everything a fresh machine needs is installed from here.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-stamp
# The CPU build of torch on this workplace's local index; other versions download GBs.
TORCH   := torch==2.13.0

.PHONY: help install cluster cluster-stop lint test test-fast bench demo demo-check clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(STAMP)  ## create .venv and install nomade with its test extras

cluster:  ## start the project's real Slurm test cluster unless it is up (root only)
	@if [ "$$(id -u)" = 0 ]; then slurm-conf/start-test-cluster.sh --if-down; \
	 else echo "cluster: not root, the Slurm tests will be skipped"; fi

cluster-stop:  ## stop the test cluster
	slurm-conf/stop-test-cluster.sh

lint: install  ## ruff over the tree, mypy (strict where the logic lives); config in pyproject.toml
	$(BIN)/ruff check .
	$(BIN)/python -m mypy

test: install lint cluster  ## install, lint, start the test cluster, run every test
	$(BIN)/python -m pytest

test-fast: install  ## the tests that need no Slurm
	$(BIN)/python -m pytest -m 'not slurm and not slow'

bench: install cluster  ## benchmarks against the budgets in DESIGN
	$(BIN)/python -m bench

demo: install cluster  ## the main job, live, on this machine
	$(BIN)/python -m nomade.tools.demo

demo-check: install cluster  ## the demo's live phase 10 times (seeds 11-20): leak flagged, no other job commented
	NOMADE_DEMO_RUNS=10 $(BIN)/python -m pytest -v tests/test_demo_slurm.py

clean:  ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .hypothesis .ruff_cache .mypy_cache
