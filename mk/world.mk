# The test world (tests/world/, docs/testing.md): real Apptainer in a Debian sid root, real SIFs for
# amd64 and arm64 (qemu-user), cached machine-wide (CONTAINERS_WORLD overrides where).

.PHONY: world world-status world-shell test-world

world: $(STAMP) ## build or reuse the test world (root; debootstrap + apptainer build; ~10 min the first time)
	$(PY) -m tests.world build $(ARGS)

world-status: $(STAMP) ## what the test world cache holds, with build times
	$(PY) -m tests.world status

world-shell: $(STAMP) ## a shell in the world's test image via the real Apptainer: ARGS='--arch arm64' or '--root sid-apptainer'
	$(PY) -m tests.world shell $(ARGS)

test-world: $(STAMP) ## only the tests on the real Apptainer / arm64 / SMB-like share
	$(PY) -m pytest -q -m "apptainer or arm64 or smb" $(ARGS)
