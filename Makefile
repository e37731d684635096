# make help lists every target. Each target installs what it needs (.venv via `make venv`).
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
IMAGE ?=
CMD ?= python -m entrypoints doctor
ARGS ?=

.PHONY: help venv demo test test-fast lint bench doctor shell exec config clean

help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | sort | \
	  awk 'BEGIN {FS = ":.*## "}; {printf "  \033[1m%-22s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || \
	  { echo "error: $(PYTHON) is older than 3.10; fix: make PYTHON=python3.11 ..." >&2; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

venv: $(STAMP) ## create .venv with the host toolkit, demo and test dependencies

doctor: $(STAMP) ## what this machine/image can do (GPU, torch, ORT, paddle, video, caches)
	$(PY) -m entrypoints doctor $(ARGS)

test: $(STAMP) ## the whole test suite (as root: builds or reuses the test world, a private Slurm)
	@if [ "$$(id -u)" = 0 ]; then $(PY) -m tests.world build || [ -z "$$CI" ]; fi
	$(PY) -m pytest -q $(ARGS)

test-fast: $(STAMP) ## tests without Slurm, the test world (Apptainer, arm64, SMB) and slow runs
	$(PY) -m pytest -q -m "not slurm and not slow and not apptainer and not arm64 and not smb" $(ARGS)

lint: $(STAMP) ## ruff and shellcheck
	$(VENV)/bin/ruff check containers entrypoints tests bench
	$(PY) -m containers lint
	$(VENV)/bin/shellcheck -x $$(git ls-files '*.sh' '*.sbatch' .ci/run)

bench: $(STAMP) ## benchmarks; results go to bench/results/*.txt with the command that made them
	$(PY) -m bench $(ARGS)

shell: $(STAMP) ## interactive shell in an image: make shell IMAGE=flowportal-cu130
	@test -n "$(IMAGE)" || { echo "error: IMAGE is not set; fix: make shell IMAGE=<name>" >&2; exit 2; }
	$(PY) -m containers shell $(IMAGE) $(ARGS)

exec: $(STAMP) ## run CMD in an image: make exec IMAGE=x CMD='python -m entrypoints doctor'
	@test -n "$(IMAGE)" || { echo "error: IMAGE is not set; fix: make exec IMAGE=<name> CMD='...'" >&2; exit 2; }
	$(PY) -m containers exec $(IMAGE) $(ARGS) -- $(CMD)

config: $(STAMP) ## print the composed config: make config ARGS='cluster=torch'
	$(PY) -m containers config $(ARGS)

clean: ## remove caches (not .venv)
	rm -rf .pytest_cache .ruff_cache build
	find . -name __pycache__ -not -path './.venv/*' -prune -exec rm -rf {} +

# Areas add their targets in mk/*.mk (recipes, slurm, newsbag, flowportal).
-include mk/*.mk
