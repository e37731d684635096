# make help lists every target. Each target installs what it needs (.venv via `make venv`).
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
# The venv: .venv in the checkout, unless the checkout's filesystem refuses symlinks or chmod (an SMB
# share): then on local disk, ${XDG_CACHE_HOME:-$HOME/.cache}/gpu-image-suite/venvs/<checkout>-<hash>.
# SUITE_VENV=/path chooses it. Compute nodes never use it: jobs run in the images (docs/slurm.md).
VENV_PROBE := .venv-probe.$(shell echo $$$$)
VENV ?= $(or $(SUITE_VENV),$(shell \
  if [ -d .venv ]; then echo .venv; \
  elif ln -s x $(VENV_PROBE) 2>/dev/null && rm -f $(VENV_PROBE) && : > $(VENV_PROBE) && chmod 755 $(VENV_PROBE) 2>/dev/null; \
  then echo .venv; \
  else echo "$${XDG_CACHE_HOME:-$$HOME/.cache}/gpu-image-suite/venvs/$$(basename "$$PWD")-$$(pwd | cksum | cut -d' ' -f1)"; fi; \
  rm -f $(VENV_PROBE)))
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
IMAGE ?=
CMD ?= python -m entrypoints doctor
ARGS ?=

.PHONY: help venv demo test test-fast lint bench doctor shell exec config clean

help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | sort | \
	  awk 'BEGIN {FS = ":.*## "}; {printf "  \033[1m%-22s\033[0m %s\n", $$1, $$2}'

# install_extras,EXTRAS: the project's dependencies with EXTRAS; in the checkout a compat editable
# install, elsewhere (SMB) from a copy of pyproject.toml (the checkout goes on the path by a .pth).
install_extras = if [ "$(VENV)" = .venv ]; then $(PY) -m pip install -q -e '.[$(1)]' --config-settings editable_mode=compat; \
  else tmp=$$(mktemp -d) && cp pyproject.toml "$$tmp/" && $(PY) -m pip install -q "$$tmp[$(1)]" && rm -rf "$$tmp"; fi

# editable_mode=compat: the checkout goes on sys.path as a plain .pth entry instead of an import
# hook that every Python start runs (jobs run `containers stage` at each start; see bench/stage.py).
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || \
	  { echo "error: $(PYTHON) is older than 3.10; fix: make PYTHON=python3.11 ..." >&2; exit 2; }
	@if [ "$(VENV)" != .venv ]; then echo "note: this checkout's filesystem refuses symlinks or chmod" \
	  "(an SMB share?): the venv goes to local disk at $(VENV) (SUITE_VENV=/path to move it)"; fi
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# Outside the checkout (SMB: setuptools cannot write its egg-info there), the dependencies come
	@# from a copy of pyproject.toml and a .pth file puts the checkout itself on the venv's path.
	@$(call install_extras,dev)
	@if [ "$(VENV)" != .venv ]; then \
	  $(PY) -c 'import site, sys; open(site.getsitepackages()[0] + "/gpu-image-suite-checkout.pth", "w").write(sys.argv[1] + "\n")' "$$PWD" && \
	  echo "$(PY) -m pip install '.[dev]' done outside the checkout; $$PWD is on its path (gpu-image-suite-checkout.pth)"; fi
	@# paddlex as source files only (its numpy<2.4 pin would downgrade the venv): the Paddle
	@# label-map test reads its layout label lists with ast, never imports it.
	$(PY) -m pip install -q --no-deps paddlex==3.7.2
	@touch $@

venv: $(STAMP) ## create the venv (.venv, or on local disk when the checkout is on SMB) with the host toolkit
	@echo "venv: $(VENV) (make commands use it; or: $(VENV)/bin/python -m containers ...)"

doctor: $(STAMP) ## what this machine/image can do (GPU, torch, ORT, paddle, video, caches)
	$(PY) -m entrypoints doctor $(ARGS)

test: $(STAMP) ## the whole test suite (as root: builds or reuses the test world, a private Slurm)
	@if [ "$$(id -u)" = 0 ]; then $(PY) -m tests.world build || [ -z "$$CI" ]; fi
	$(PY) -m tests.shards $(ARGS)

test-fast: $(STAMP) ## tests without Slurm, the test world (Apptainer, arm64, SMB) and slow runs
	$(PY) -m pytest -q -m "not slurm and not slow and not apptainer and not arm64 and not smb" $(ARGS)

lint: $(STAMP) ## ruff and shellcheck
	$(VENV)/bin/ruff check suite_core containers entrypoints tests bench
	$(VENV)/bin/lint-imports
	$(PY) -m containers lint
	$(VENV)/bin/shellcheck -x $$(git ls-files '*.sh' '*.sbatch' .ci/run | grep -v '^tests/golden/')

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
