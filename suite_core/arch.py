"""CPU architecture names: one spelling (Go/OCI style, as Apptainer and SIF use) everywhere."""

from __future__ import annotations

import platform

from suite_core.errors import UserError

_ALIASES = {
    "x86_64": "amd64", "amd64": "amd64", "x64": "amd64",
    "aarch64": "arm64", "arm64": "arm64", "armv8": "arm64",
    "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64",
}

# uname -m spelling, used for wheels and uv's --python-platform
UNAME = {"amd64": "x86_64", "arm64": "aarch64"}


def normalize(name: str) -> str:
    """Map any common spelling (x86_64, aarch64, ...) to amd64/arm64."""
    key = str(name).strip().lower()
    if key not in _ALIASES:
        raise UserError(f"unknown CPU architecture '{name}'",
                        fix="use amd64 (x86_64) or arm64 (aarch64)")
    return _ALIASES[key]


def host_arch() -> str:
    return normalize(platform.machine())
