"""The named pieces of the test world: which roots exist and what goes into them.

Kept apart from rootfs.py (the mechanism) so that a recipe change is a one-line diff here, and the
recipe's digest (its cache stamp) changes with it.
"""

from __future__ import annotations

from tests.world.rootfs import Recipe

BUILDER = ("worldbuild", 4242)  # the unprivileged user `apptainer build --userns` runs as

# Debian 12 has no apptainer; sid's 1.4.5 needs sid's glibc, so it runs inside a sid root.
SID_APPTAINER = Recipe(name="sid-apptainer", suite="sid",
                       include=("apptainer", "ca-certificates", "uidmap"), users=(BUILDER,))


def bookworm(arch: str) -> Recipe:
    """Debian 12 with Python 3.11: the base of the test images (no device nodes: see Recipe)."""
    return Recipe(name=f"bookworm-{arch}", suite="bookworm", arch=arch,
                  include=("python3", "python3-venv"), strip_dev=True)
