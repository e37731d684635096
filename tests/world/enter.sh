#!/bin/sh
# Enter a root filesystem with pivot_root in a private mount namespace and exec a command there.
#
#   enter.sh ROOT [--bind SRC[:DST]]... [--ro-bind SRC[:DST]]... [--cwd DIR] -- ARGV...
#
# Why pivot_root and not chroot: Apptainer refuses "a weak chrooted environment", and inside a chroot
# "/" is not a mount point, so a nested `unshare --propagation private` fails. Binds are recursive
# (a FUSE mount under a bound folder comes along) and land at DST (default: the same path as SRC).
# /proc, /sys, /dev, binfmt_misc (so foreign-arch programs and images run) and a fresh /tmp are
# mounted; /etc/hosts and /etc/resolv.conf are the caller's. Every mount lives only in the new
# namespace: when the command exits, nothing is left mounted. PATH is a plain system PATH (a
# caller's PATH with version-manager shims once broke the set-up). User data reaches this script
# only as arguments; it is never evaluated.
set -eu
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH

die() { echo "error: enter.sh: $*" >&2; exit 125; }

if [ "${1:-}" != "--in-namespace" ]; then
  [ "$(id -u)" = 0 ] || die "needs root (it mounts in a private namespace); fix: run as root"
  command -v unshare >/dev/null || die "unshare not found; fix: apt-get install util-linux"
  exec unshare --mount --propagation private -- /bin/sh "$0" --in-namespace "$@"
fi
shift
[ $# -ge 1 ] || die "usage: enter.sh ROOT [--bind SRC[:DST]]... [--ro-bind SRC[:DST]]... [--cwd DIR] -- ARGV..."
root=$1; shift
[ -x "$root/bin/sh" ] || die "$root is not a root filesystem (no /bin/sh); fix: rebuild it (make world)"

mount --bind "$root" "$root"
mount -t proc proc "$root/proc"
if [ -d /proc/sys/fs/binfmt_misc ] && [ -d "$root/proc/sys/fs/binfmt_misc" ]; then
  mount -t binfmt_misc binfmt_misc "$root/proc/sys/fs/binfmt_misc" 2>/dev/null || true
fi
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
for f in /etc/hosts /etc/resolv.conf; do
  if [ -f "$f" ]; then
    [ -e "$root$f" ] || [ -L "$root$f" ] || : > "$root$f"
    [ -L "$root$f" ] && { rm -f "$root$f"; : > "$root$f"; }
    mount --bind "$f" "$root$f"
  fi
done

cwd=/
bind_one() {  # $1=ro|rw $2=SRC[:DST]
  src=${2%%:*}; dst=${2#*:}
  [ "$dst" = "$2" ] && dst=$src
  [ -e "$src" ] || die "bind source $src does not exist"
  case $dst in /*) ;; *) die "bind target $dst is not an absolute path";; esac
  if [ -d "$src" ]; then mkdir -p "$root$dst"; else
    mkdir -p "$root$(dirname "$dst")"; [ -e "$root$dst" ] || : > "$root$dst"; fi
  mount --rbind "$src" "$root$dst"
  if [ "$1" = ro ]; then mount -o remount,bind,ro "$root$dst"; fi
}
while [ $# -gt 0 ]; do
  case $1 in
    --bind) [ $# -ge 2 ] || die "--bind needs SRC[:DST]"; bind_one rw "$2"; shift 2;;
    --ro-bind) [ $# -ge 2 ] || die "--ro-bind needs SRC[:DST]"; bind_one ro "$2"; shift 2;;
    --cwd) [ $# -ge 2 ] || die "--cwd needs DIR"; cwd=$2; shift 2;;
    --) shift; break;;
    *) die "unknown option $1 (options come before --)";;
  esac
done
[ $# -ge 1 ] || die "no command after --"

cd "$root"
mkdir -p .oldroot
pivot_root . .oldroot
cd /
umount -l /.oldroot
cd "$cwd" 2>/dev/null || cd /
exec "$@"
