# Slurm layer: a private local cluster for manual use, preflight and submission helpers.
SLURM_ROOT ?= /tmp/containers-slurm-$(shell id -u)
PIPELINE ?= selftest

.PHONY: slurm-up slurm-down slurm-status preflight submit submit-dry test-slurm

slurm-up: $(STAMP) ## start a private local Slurm (root; installs slurm+munge via apt); then export SLURM_CONF=...
	$(PY) -m tests.plugins.slurm_cluster up --root $(SLURM_ROOT) $(if $(ARM64),--arm64)

slurm-down: $(STAMP) ## stop the private local Slurm started by slurm-up (cancels its jobs)
	$(PY) -m tests.plugins.slurm_cluster down --root $(SLURM_ROOT)

slurm-status: $(STAMP) ## is the private local Slurm running?
	$(PY) -m tests.plugins.slurm_cluster status --root $(SLURM_ROOT)

preflight: $(STAMP) ## sbatch --test-only for every job: make preflight PIPELINE=newsbag ARGS='cluster=torch gpu=split'
	$(PY) -m containers preflight $(PIPELINE) $(ARGS)

submit: $(STAMP) ## submit a pipeline: make submit PIPELINE=newsbag ARGS='cluster=torch gpu=split'
	$(PY) -m containers submit $(PIPELINE) $(ARGS)

submit-dry: $(STAMP) ## render a pipeline's jobs with fake ids: make submit-dry PIPELINE=newsbag ARGS='cluster=torch'
	$(PY) -m containers submit $(PIPELINE) --dry-run $(ARGS)

test-slurm: $(STAMP) ## only the tests on the private local Slurm
	$(PY) -m pytest -q -m slurm $(ARGS)
