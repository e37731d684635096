"""The named pieces of the test world: which roots exist and what goes into them.

Kept apart from rootfs.py (the mechanism) so that a recipe change is a one-line diff here, and the
recipe's digest (its cache stamp) changes with it.
"""

from __future__ import annotations

from dataclasses import dataclass

from suite_core.markers import fingerprint
from tests.world.rootfs import Recipe

BUILDER = ("worldbuild", 4242)  # the unprivileged user `apptainer build --userns` runs as

# Debian 12 has no apptainer; sid's 1.4.5 needs sid's glibc, so it runs inside a sid root.
# Root in the world gets the capabilities of capability.json (none by default), like a cluster user:
# `full` asks for every capability and this kind of VM withholds one (CAP_SYS_RESOURCE), so
# `apptainer exec` as root would stop with "Requesting capability set ...".
SID_APPTAINER = Recipe(
    name="sid-apptainer", suite="sid", include=("apptainer", "ca-certificates", "uidmap"),
    users=(BUILDER,),
    edits=(("/etc/apptainer/apptainer.conf", "root default capabilities = full",
            "root default capabilities = file"),))


def bookworm(arch: str) -> Recipe:
    """Debian 12 with Python 3.11: the base of the test images (no device nodes: see Recipe)."""
    return Recipe(name=f"bookworm-{arch}", suite="bookworm", arch=arch,
                  include=("python3", "python3-venv"), sif_ready=True)


@dataclass(frozen=True)
class Derived:
    """A root made from a copy of ``base`` plus apt-installed ``packages`` (tests/world/armnode.py).

    Cheaper than another debootstrap when the base is emulated (arm64): a copy and an apt-get
    install instead of a second emulated debootstrap (times: bench/results/world_arm64.txt).
    ``steps`` is the version of the derivation code; ``digest()`` covers the base's digest too, so
    a new base means a new derived root.
    """

    name: str
    base: Recipe
    packages: tuple[str, ...]
    steps: int = 1

    def digest(self) -> str:
        return fingerprint({"base": self.base.digest(), "packages": self.packages, "steps": self.steps})


# The DGX Spark node of the local Slurm: Debian's arm64 slurmd (22.05.8, as on the host) and munge.
SPARK_NODE = Derived(name="spark-node-arm64", base=bookworm("arm64"),
                     packages=("slurmd", "slurm-client", "munge"))

# Roots other parts of the world add register here so ``gc`` keeps them.
EXTRA_ROOTS: list[Recipe | Derived] = [SPARK_NODE]
