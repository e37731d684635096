# FlowPortal: the cat demo, the How2Sign-style batch, its status. See docs/flowportal.md.
FP_PRESET ?= dgx_fast
FP_ARGS ?=
FP_BATCH_DIR ?=
FP_VIDEO_DIR ?=
FP_RESULTS ?=

.PHONY: flowportal-dry-run flowportal-cat flowportal-manifest flowportal-status flowportal-resubmit flowportal-adopt flowportal-test

flowportal-dry-run: $(STAMP) ## print the 5 FlowPortal stage commands + workdir layout: make flowportal-dry-run FP_PRESET=quality
	$(PY) -m entrypoints flowportal preset=$(FP_PRESET) dry_run=true $(FP_ARGS)

flowportal-cat: $(STAMP) ## submit the FlowPortal cat demo (DGX Spark defaults): sbatch slurm/flowportal_cat.sbatch
	sbatch --export=ALL,FLOWPORTAL_PRESET=$(FP_PRESET) slurm/flowportal_cat.sbatch $(FP_ARGS)

flowportal-manifest: $(STAMP) ## FlowPortal batch manifest (CPU): make flowportal-manifest FP_VIDEO_DIR=... FP_BATCH_DIR=...
	@test -n "$(FP_VIDEO_DIR)" -a -n "$(FP_BATCH_DIR)" || { echo "error: FP_VIDEO_DIR and FP_BATCH_DIR must be set; fix: make flowportal-manifest FP_VIDEO_DIR=/data FP_BATCH_DIR=/scratch/h2s" >&2; exit 2; }
	$(PY) -m entrypoints flowportal_manifest video_dir=$(FP_VIDEO_DIR) batch_dir=$(FP_BATCH_DIR) $(FP_ARGS)

flowportal-status: $(STAMP) ## FlowPortal batch progress per chunk + ETA: make flowportal-status FP_BATCH_DIR=...
	@test -n "$(FP_BATCH_DIR)" || { echo "error: FP_BATCH_DIR is not set; fix: make flowportal-status FP_BATCH_DIR=/scratch/h2s" >&2; exit 2; }
	$(PY) -m entrypoints flowportal_status batch_dir=$(FP_BATCH_DIR) $(FP_ARGS)

flowportal-resubmit: $(STAMP) ## resubmit only FlowPortal chunks with missing videos, with the batch's recorded preset: FP_BATCH_DIR=... FP_VIDEO_DIR=...
	@test -n "$(FP_VIDEO_DIR)" -a -n "$(FP_BATCH_DIR)" || { echo "error: FP_VIDEO_DIR and FP_BATCH_DIR must be set; fix: make flowportal-resubmit FP_VIDEO_DIR=/data FP_BATCH_DIR=/scratch/h2s" >&2; exit 2; }
	$(PY) -m entrypoints flowportal_status action=resubmit batch_dir=$(FP_BATCH_DIR) video_dir=$(FP_VIDEO_DIR) $(FP_ARGS)

flowportal-adopt: $(STAMP) ## mark the status quo's finished results/flow-edit-* outputs: FP_BATCH_DIR=... FP_VIDEO_DIR=... FP_RESULTS=<FlowPortal>/results
	@test -n "$(FP_VIDEO_DIR)" -a -n "$(FP_BATCH_DIR)" -a -n "$(FP_RESULTS)" || { echo "error: FP_VIDEO_DIR, FP_BATCH_DIR and FP_RESULTS must be set; fix: make flowportal-adopt FP_VIDEO_DIR=/data FP_BATCH_DIR=/scratch/h2s FP_RESULTS=/shared/FlowPortal/results" >&2; exit 2; }
	$(PY) -m entrypoints flowportal_adopt preset=$(FP_PRESET) batch_dir=$(FP_BATCH_DIR) video_dir=$(FP_VIDEO_DIR) results_dir=$(FP_RESULTS) $(FP_ARGS)

flowportal-test: $(STAMP) ## FlowPortal tests (the local-Slurm ones need root)
	$(PY) -m pytest -q tests/entrypoints/flowportal tests/slurm/test_flowportal_slurm.py $(ARGS)
