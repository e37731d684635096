"""The `apptainer` the tests put on PATH: the REAL /usr/bin/apptainer, run inside the sid root.

Why a launcher and not a package: Debian 12 has no Apptainer and sid's needs sid's glibc, so the
binary runs in its own root (see rootfs.py). The launcher never answers for Apptainer: every
argument goes to the real binary unchanged; it only makes the caller's paths visible there.

What it binds, at the same paths (recursive binds: a FUSE mount below one comes along):
the paths given when it is written (the checkout, pytest's temporary base, the world cache), and at
each call the CONTAINERS_* roots and Apptainer's cache/tmp dirs from the environment, the working
directory, every absolute path argument that exists, and the sources of ``--bind``/``-B`` specs.
System directories (/, /usr, /etc, /proc ...) are never bound over the sid root's own.

It is a bash script (bash is in every Debian root) that uses only the root it is started from, so
it also works from inside another pivot_root'ed root (the arm64 node) as long as the sid root,
enter.sh and the bound paths are visible there at the same paths. The caller's environment
reaches Apptainer unchanged (PATH aside): hostile APPTAINERENV_* variables are Apptainer's to handle.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterable
from pathlib import Path

from tests.world.rootfs import ENTER_SH

TEMPLATE = r"""#!/bin/bash
# The test world's `apptainer` (written by tests/world/launcher.py; see docs/testing.md): it runs the
# real /usr/bin/apptainer inside the sid root, with the caller's paths bound at the same paths.
set -euo pipefail
ENTER=@ENTER@
ROOT=@ROOT@
STATIC=(@STATIC@)
binds=()
seen=()
add() {
  local p=$1 q
  [ -n "$p" ] && [ -e "$p" ] || return 0
  p=$(realpath -e -- "$p" 2>/dev/null) || return 0
  case $p in
    *:*|*,*) return 0;;  # enter.sh splits SRC:DST at ':'
    /|/bin|/boot|/dev|/dev/*|/etc|/home|/lib|/lib32|/lib64|/media|/mnt|/opt|/proc|/proc/*|/root|/run|\
    /sbin|/srv|/sys|/sys/*|/tmp|/usr|/var|/var/lib|/var/cache|/var/tmp) return 0;;
  esac
  for q in "${seen[@]+"${seen[@]}"}"; do
    [ "$p" = "$q" ] && return 0
  done
  seen+=("$p")
  binds+=(--bind "$p")
}
for p in "${STATIC[@]+"${STATIC[@]}"}"; do add "$p"; done
for v in CONTAINERS_SCRATCH CONTAINERS_NODE_LOCAL CONTAINERS_SHARED_ROOT CONTAINERS_IMAGES \
         CONTAINERS_MODELS CONTAINERS_REPO APPTAINER_CACHEDIR APPTAINER_TMPDIR; do
  add "${!v:-}"
done
add "$PWD"
prev=
for a in "$@"; do
  case $prev in
    --bind|-B)
      IFS=, read -r -a specs <<< "$a"
      for s in "${specs[@]+"${specs[@]}"}"; do add "${s%%:*}"; done;;
  esac
  case $a in /*) add "$a";; esac
  prev=$a
done
exec /bin/sh "$ENTER" "$ROOT" "${binds[@]+"${binds[@]}"}" --cwd "$PWD" -- /usr/bin/apptainer "$@"
"""


def render(sid_root: str | os.PathLike[str], static_binds: Iterable[str | os.PathLike[str]] = ()) -> str:
    """The launcher's text for ``sid_root`` (paths shell-quoted: they are data, not code)."""
    return (TEMPLATE.replace("@ENTER@", shlex.quote(str(ENTER_SH)))
            .replace("@ROOT@", shlex.quote(str(sid_root)))
            .replace("@STATIC@", " ".join(shlex.quote(str(b)) for b in static_binds)))


def write_launcher(bin_dir: str | os.PathLike[str], sid_root: str | os.PathLike[str],
                   static_binds: Iterable[str | os.PathLike[str]] = ()) -> Path:
    """Write ``bin_dir/apptainer`` (executable) and return its path."""
    bin_dir = Path(bin_dir)
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / "apptainer"
    tmp = bin_dir / ".apptainer.part"
    tmp.write_text(render(sid_root, static_binds))
    tmp.chmod(0o755)
    tmp.replace(path)
    return path
