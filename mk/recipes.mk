# Recipes and images (issue 3): locks, lint, builds, the images list. See docs/images.md.
# IMAGE=<name> picks an image (hydra_conf/image/); CLUSTER_ARGS passes Hydra overrides such as
# cluster=dgx_spark; EMULATE=1 allows a foreign-arch build under qemu binfmt emulation; BUILD_ARGS
# ("KEY=VALUE ...") becomes --build-arg KEY=VALUE each (BOOTSTRAP, BASE, LOCK or a %arguments key),
# also for a build that Slurm runs on a native node (slurm/build_image.sbatch reads the same list).
.PHONY: lock lock-check lint-recipes build build-arm64 build-amd64 build-all images check-images fork-imports
CLUSTER_ARGS ?=
EMULATE ?=
BUILD_ARGS ?=
_BUILD_FLAGS = $(if $(filter-out 0,$(EMULATE)),--emulate) $(foreach a,$(BUILD_ARGS),--build-arg $(a)) $(CLUSTER_ARGS)
_NEED_IMAGE = @test -n "$(IMAGE)" || { echo "error: IMAGE is not set; fix: make $@ IMAGE=<name> (see hydra_conf/image/)" >&2; exit 2; }

lock: $(STAMP) ## regenerate recipes/locks/ (per arch, test world, tools) and wheel facts with uv: make lock [IMAGE=x]
	UV_PYTHON_DOWNLOADS=never PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m containers lock $(IMAGE)

lock-check: $(STAMP) ## fail if inputs changed since locking; report (not fail) newer releases (network)
	UV_PYTHON_DOWNLOADS=never PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m containers lock --check $(IMAGE)

# FLOWPORTAL_GIT / MATANYONE_GIT: git repositories (bare or not) holding the pinned revisions
fork-imports: $(STAMP) ## re-extract recipes/flowportal-cu130.imports.json: make fork-imports FLOWPORTAL_GIT=DIR MATANYONE_GIT=DIR
	@test -n "$(FLOWPORTAL_GIT)" -a -n "$(MATANYONE_GIT)" || { echo "error: FLOWPORTAL_GIT and MATANYONE_GIT must name git repositories; fix: make fork-imports FLOWPORTAL_GIT=DIR MATANYONE_GIT=DIR" >&2; exit 2; }
	$(PY) -m containers fork-imports flowportal-cu130 --git "FlowPortal=$(FLOWPORTAL_GIT)" --git "MatAnyone=$(MATANYONE_GIT)"

lint-recipes: $(STAMP) ## offline checks of recipes/*.def and their locks (also run by make test)
	$(PY) -m containers lint $(IMAGE)

build: $(STAMP) ## build IMAGE for this machine's arch and publish it: make build IMAGE=x
	$(_NEED_IMAGE)
	$(PY) -m containers build $(IMAGE) $(_BUILD_FLAGS)

build-arm64: $(STAMP) ## build IMAGE for arm64: native, via Slurm on an aarch64 node, or EMULATE=1
	$(_NEED_IMAGE)
	$(PY) -m containers build $(IMAGE) --arch arm64 $(_BUILD_FLAGS)

build-amd64: $(STAMP) ## build IMAGE for amd64 (native on x86_64; elsewhere via Slurm or EMULATE=1)
	$(_NEED_IMAGE)
	$(PY) -m containers build $(IMAGE) --arch amd64 $(_BUILD_FLAGS)

build-all: $(STAMP) ## build every image for every arch it supports
	$(PY) -m containers build all $(_BUILD_FLAGS)

images: $(STAMP) ## list built SIFs: arch, labels, size, which one is current
	$(PY) -m containers images $(CLUSTER_ARGS)

check-images: $(STAMP) ## run each current image's %test (needs Apptainer)
	$(PY) -m containers check-images $(CLUSTER_ARGS)
