# Experiment pipelines and multi-node DDP (README "Staged experiments", "Multi-node DDP").
# The tests' tiny trainings need torch (CPU build): the `ddp` extra, installed for make test.
DDP_STAMP := $(VENV)/.ddp-installed

# installed as the venv's own install is (Makefile's install_extras), so a plain editable finder
# never slows every Python start of `containers stage`
$(DDP_STAMP): $(STAMP)
	@$(call install_extras,ddp)
	@touch $@

test test-slurm: $(DDP_STAMP)

.PHONY: ddp-check
ddp-check: $(STAMP) ## check a multi-node batch script: make ddp-check SCRIPT=train.sbatch ARGS='--num-workers 8'
	@test -n "$(SCRIPT)" || { echo "error: SCRIPT is not set; fix: make ddp-check SCRIPT=path/to/job.sbatch" >&2; exit 2; }
	$(PY) -m containers ddp-check $(SCRIPT) $(ARGS)
