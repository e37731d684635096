"""Recipe and image commands: lint, lock, build, publish, images, check-images.

``lint`` is offline and fast (``make test`` runs it); ``lock`` needs the package index; ``build``
needs Apptainer on this machine, or routes a foreign-arch build to a native node through Slurm.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from suite_core.errors import UserError
from suite_core.secrets import mask

COMMANDS = {
    "lint": "check recipes/*.def and their locks offline (sections, pins, CUDA majors, arch traps)",
    "lock": "regenerate recipes/locks/ with uv for each image's Python and arch (needs the index)",
    "build": "build an image's SIF for an arch (native, emulated or via Slurm) and publish it",
    "publish": "copy a built SIF into the images dir (resumable, verified) and update its pointer",
    "images": "list the SIFs in the images dir: arch, labels, size, which one is current",
    "check-images": "run each current image's %test with Apptainer (apptainer test)",
    "fork-imports": "regenerate recipes/<image>.imports.json from git checkouts at the pinned revisions",
}


def configure(parser: argparse.ArgumentParser, name: str) -> None:
    if name == "lint":
        parser.add_argument("images", nargs="*", help="image names (default: all)")
        parser.add_argument("--strict", action="store_true", help="warnings fail too")
        parser.add_argument("--list-optional", action="store_true",
                            help="also list each image's ImportError-guarded imports (allowed to be missing)")
    elif name == "lock":
        parser.add_argument("images", nargs="*", help="image names (default: all)")
        parser.add_argument("--arch", help="only this arch")
        parser.add_argument("--check", action="store_true",
                            help="fail when inputs changed since locking; report newer releases "
                                 "(writes nothing)")
        parser.add_argument("--facts-only", action="store_true",
                            help="refresh recipes/locks/wheels.json for the existing locks only")
    elif name == "build":
        parser.add_argument("image", help="image name (hydra_conf/image/), or 'all' (every image and arch)")
        parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. cluster=dgx_spark")
        parser.add_argument("--arch", help="target arch (default: this machine's)")
        parser.add_argument("--emulate", action="store_true",
                            default=os.environ.get("EMULATE", "") not in ("", "0"),
                            help="foreign arch via binfmt emulation (also EMULATE=1)")
        parser.add_argument("--no-publish", action="store_true", help="leave the SIF in the build dir")
        parser.add_argument("--dry-run", action="store_true", help="print the commands only")
        parser.add_argument("--build-arg", action="append", default=[], metavar="KEY=VALUE",
                            help="swap the base or the lock (BOOTSTRAP, BASE, LOCK) or set one of the "
                                 "definition's %%arguments; checked before anything is downloaded")
        parser.add_argument("--userns", action="store_true",
                            help="unprivileged build in a user namespace instead of --fakeroot")
    elif name == "publish":
        parser.add_argument("sif", help="the built .sif")
        parser.add_argument("image", help="image name")
        parser.add_argument("--arch", help="default: read from the SIF")
        parser.add_argument("--lockhash", help="default: the hash of the image's lock for that arch")
        parser.add_argument("--dir", help="images directory (default: paths.images)")
        parser.add_argument("overrides", nargs="*", help="Hydra overrides")
    elif name == "fork-imports":
        parser.add_argument("image", help="image name (hydra_conf/image/) with a sources: block")
        parser.add_argument("--git", action="append", default=[], metavar="NAME=DIR",
                            help="a git repository (bare or not) holding source NAME's pinned revision")
        parser.add_argument("--rev", action="append", default=[], metavar="NAME=COMMIT",
                            help="another revision than the definition pins (needs --out: fixtures)")
        parser.add_argument("--out", help="write here instead of the image's imports file")
    elif name in ("images", "check-images"):
        parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. cluster=torch")
        parser.add_argument("--dir", help="images directory (default: paths.images)")
        if name == "images":
            parser.add_argument("--json", action="store_true", help="machine-readable output")


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Overrides may follow options (``build IMAGE --arch arm64 cluster=x``, as make writes it)."""
    return parser.parse_intermixed_args(argv)


def main(args: argparse.Namespace) -> int:
    return {"lint": _lint, "lock": _lock, "build": _build, "publish": _publish, "images": _images,
            "check-images": _check_images, "fork-imports": _fork_imports}[args.command](args)


def _fork_imports(args: argparse.Namespace) -> int:
    """Read each source's pinned revision from the definition, scan its scripts, write the data."""
    import time

    from containers import REPO_ROOT
    from containers.closure import SourceTree, extract
    from containers.lint import parse_definition
    from containers.locks import get_image
    from suite_core.atomic import write_json
    from suite_core.runner import quote, run

    spec = get_image(args.image)
    if not spec.sources or not spec.imports:
        raise UserError(f"image {spec.name} clones no checkouts (no sources:/imports: in its yaml)",
                        where=f"hydra_conf/image/{spec.name}.yaml", fix="pick an image with a sources: block")
    dirs = {}
    for item in args.git:
        name, sep, path = item.partition("=")
        if not sep or name not in spec.sources:
            raise UserError(f"--git {item!r} does not name one of {', '.join(spec.sources)}",
                            fix="pass --git NAME=DIR for each source")
        dirs[name] = Path(path)
    missing = [n for n in spec.sources if n not in dirs]
    if missing:
        raise UserError(f"no git repository given for {', '.join(missing)}",
                        fix=" ".join(f"--git {n}=DIR" for n in missing))
    d = parse_definition((REPO_ROOT / spec.recipe).read_text(encoding="utf-8"))
    revs = dict(item.partition("=")[::2] for item in args.rev)
    if revs and not args.out:
        raise UserError("--rev extracts a revision the definition does not pin", fix="add --out PATH")
    trees = {}
    for name, src in spec.sources.items():
        rev = revs.get(name) or d.arguments.get(str(src["rev_arg"]), "")
        got = run(["git", "-C", str(dirs[name]), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
                  check=False)
        if got.returncode == 0 and revs.get(name):
            rev = got.stdout.strip()  # a short --rev names the full commit in the data
        if got.returncode != 0 or got.stdout.strip() != rev:
            raise UserError(f"{dirs[name]} has no commit {rev} ({src['rev_arg']} in {spec.recipe})",
                            where=name, fix="fetch that revision into the repository (git fetch) and retry")
        trees[name] = (SourceTree.git(dirs[name], rev), rev, [str(s) for s in src["scripts"]])
    py = tuple(int(x) for x in spec.python.split(".")[:2])
    data = {"image": spec.name,
            "about": "imports and argparse flags of the stage scripts of the checkouts this image clones, "
                     "at the pinned revisions; read by containers lint and by %test (imagecheck)",
            "generated_by": "make fork-imports FLOWPORTAL_GIT=DIR MATANYONE_GIT=DIR (= " + quote(
                ["python", "-m", "containers", "fork-imports", spec.name,
                 *(a for n in sorted(spec.sources) for a in ("--git", f"{n}=DIR"))]) + ")",
            "generated_at": time.strftime("%Y-%m-%d"), "python": spec.python,
            "sources": extract(trees, python=py)}  # type: ignore[arg-type]
    out = Path(args.out).resolve() if args.out else REPO_ROOT / spec.imports
    write_json(str(out), data)
    for name, src in data["sources"].items():
        req = sorted({m for r in src["scripts"].values() for m in r["requires"]})
        print(f"{name} @ {src['revision'][:12]}: {len(src['scripts'])} scripts, "
              f"third-party: {', '.join(req)}")
    print(f"wrote {out.relative_to(REPO_ROOT) if out.is_relative_to(REPO_ROOT) else out}")
    return 0


def _lint(args: argparse.Namespace) -> int:
    from containers.lint import lint_repo
    from containers.locks import get_image

    for name in args.images:
        get_image(name)  # unknown image -> one line
    findings = lint_repo(images=args.images or None)
    if args.list_optional:
        from containers.lint import optional_imports
        from containers.locks import load_images

        for name, spec in sorted(load_images().items()):
            if args.images and name not in args.images:
                continue
            for top, where in optional_imports(spec).items():
                why = spec.imports_not_needed.get(top)
                print(f"{name}: optional import {top} ({where})" + (f" (not needed: {why})" if why else ""))
            for top, why in sorted(spec.imports_not_needed.items()):
                print(f"{name}: not needed {top}: {why}")
    for f in findings:
        print(f.render(), file=sys.stderr)
    errors = [f for f in findings if f.severity == "error" or args.strict]
    if errors:
        print(f"error: {len(errors)} problem(s) in recipes/locks (listed above); fix: edit the files "
              "named, or run make lock for stale locks", file=sys.stderr)
        return 1
    print(f"lint: recipes and locks OK ({len(findings)} warning(s))")
    return 0


def _lock(args: argparse.Namespace) -> int:
    """Write the locks (production per arch, the test-world lock, the tools lock) and wheel facts."""
    from containers.locks import (
        get_image,
        load_images,
        make_lock,
        make_test_lock,
        make_tools_lock,
        platform_for,
        read_lock,
        require_arch,
    )

    specs = [get_image(n) for n in args.images] if args.images else list(load_images().values())
    if args.check:
        return _lock_check(specs, args)
    written = []
    if not args.images and not args.facts_only:
        path = make_tools_lock()
        print(f"locked bootstrap tools: {path.name} ({len(read_lock(path).requirements)} packages)")
    for spec in specs:
        arches = [require_arch(spec, args.arch)] if args.arch else list(spec.arches)
        for arch in arches:
            path = spec.lock_path(arch) if args.facts_only else make_lock(spec, arch)
            written.append((path, spec.python, platform_for(spec, arch)))
            print(f"locked {spec.name} {arch}: {path.name} ({len(read_lock(path).requirements)} packages)")
        if spec.test_build and not args.arch:
            tb = spec.test_build
            path = spec.test_lock_path() if args.facts_only else make_test_lock(spec)
            written.append((path, str(tb.get("python", "3.11")),
                            str(tb.get("platform", "x86_64-manylinux_2_28"))))
            omitted = read_lock(path).multi.get("omitted", [])
            print(f"locked {spec.name} test (Python {tb.get('python', '3.11')}): {path.name} "
                  f"({len(read_lock(path).requirements)} packages, {len(omitted)} left out)")
    from containers.wheels import refresh

    print("wheel facts (sizes, modules) for lint and the size report:")
    refresh([w for w in written if w[0].is_file()])
    return 0


def _lock_check(specs: list, args: argparse.Namespace) -> int:
    """Tell "the inputs changed: relock" (fails) from "newer releases exist" (reported).

    1. offline: each lock's recorded inputs digest against the .in / settings now, and its body
       against what make lock wrote (a hand edit);
    2. each locked pin's files still on the index (uv reads the lock itself; a yanked or deleted
       file fails here, and an image build would fail the same way);
    3. a fresh resolution of the same inputs into a temporary directory: different pins only mean
       that newer releases exist; that is reported, with the versions, and does not fail.
    """
    import tempfile

    from containers import REPO_ROOT
    from containers.lint import lint_lock
    from containers.locks import make_lock, platform_for, read_lock, require_arch, stale_locks
    from containers.wheels import pylock

    failed = 0
    stale = {(s.name, a): why for s, a, why in stale_locks(specs)}
    for spec in specs:
        arches = [require_arch(spec, args.arch)] if args.arch else list(spec.arches)
        for arch in arches:
            label = f"{spec.name} {arch}"
            current = spec.lock_path(arch)
            if (spec.name, arch) in stale:
                failed += 1
                print(f"{label}: INPUTS CHANGED ({stale[(spec.name, arch)]}): "
                      f"relock: make lock IMAGE={spec.name}")
                continue
            edits = [f.message for f in lint_lock(current, spec, arch)
                     if "by hand" in f.message or "wheels-only" in f.message]
            if edits:
                failed += 1
                print(f"{label}: LOCK EDITED: {edits[0]}")
                continue
            try:
                pylock(current, spec.python, platform_for(spec, arch))
            except UserError as exc:
                failed += 1
                print(f"{label}: LOCKED FILES UNAVAILABLE: {exc.line()}")
                continue
            with tempfile.TemporaryDirectory() as tmp:
                tmp_repo = Path(tmp)
                (tmp_repo / spec.lock_input).parent.mkdir(parents=True, exist_ok=True)
                (tmp_repo / spec.lock_input).write_bytes((REPO_ROOT / spec.lock_input).read_bytes())
                fresh = read_lock(make_lock(spec, arch, repo=tmp_repo)).pins()
            have = read_lock(current).pins()
            newer = sorted(k for k in set(fresh) | set(have) if fresh.get(k) != have.get(k))
            if newer:
                shown = ", ".join(f"{k} {have.get(k, '-')} -> {fresh.get(k, '-')}" for k in newer[:8])
                print(f"{label}: current with its inputs; newer releases exist (not a failure; "
                      f"make lock IMAGE={spec.name} to take them): {shown}"
                      + (f" and {len(newer) - 8} more" if len(newer) > 8 else ""))
            else:
                print(f"{label}: current with its inputs; resolves to the same pins today")
        if spec.test_build and not args.arch and (spec.name, "test") in stale:
            failed += 1
            print(f"{spec.name} test: INPUTS CHANGED ({stale[(spec.name, 'test')]}): relock: "
                  f"make lock IMAGE={spec.name}")
    if failed:
        print(f"error: {failed} lock(s) must be regenerated (listed above); fix: make lock", file=sys.stderr)
        return 1
    return 0


def _git_rev() -> str:
    from containers import REPO_ROOT
    from suite_core.runner import run, which

    if not which("git"):
        return "unknown"
    res = run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short=12", "HEAD"], check=False)
    if res.returncode != 0:
        return "unknown"
    dirty = run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "recipes", "containers",
                 "entrypoints", "hydra_conf"], check=False).stdout.strip()
    return res.stdout.strip() + ("-dirty" if dirty else "")


def _build(args: argparse.Namespace) -> int:
    """One image, or ``all``: every image on every arch it supports (or on ``--arch``)."""
    if args.image != "all":
        return _build_one(args, args.image, args.arch)
    from containers.locks import load_images

    jobs = [(n, a) for n, spec in sorted(load_images().items()) for a in spec.arches
            if not args.arch or a == args.arch]
    failed = []
    for name, arch in jobs:
        try:
            _build_one(args, name, arch)
        except UserError as exc:
            print(f"error: {mask(exc.line())}", file=sys.stderr)
            failed.append(f"{name}/{arch}")
    if failed:
        print(f"error: {len(failed)} of {len(jobs)} builds failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _build_one(args: argparse.Namespace, image: str, arch_arg: str | None) -> int:
    from containers import REPO_ROOT
    from containers.build import (
        binfmt_registered,
        build_argv,
        build_env,
        check_build_args,
        decide_route,
        sbatch_argv,
    )
    from containers.lint import lint_repo, parse_definition
    from containers.locks import get_image, lock_hash, require_arch
    from suite_core.arch import host_arch
    from suite_core.config import compose
    from suite_core.runner import quote, run, which

    spec = get_image(image)
    host = host_arch()
    arch = require_arch(spec, arch_arg or host)
    overrides: dict[str, str] = {}
    for item in args.build_arg:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--build-arg {item!r} is not KEY=VALUE",
                            fix="e.g. --build-arg BASE=ubuntu:22.04")
        overrides[key] = value
    declared = list(parse_definition((REPO_ROOT / spec.recipe).read_text(encoding="utf-8")).arguments)
    check_build_args(spec, arch, overrides, declared=declared, repo=REPO_ROOT)
    problems = [f for f in lint_repo(images=[spec.name]) if f.severity == "error"
                and (f.path.endswith(".def") or f.path.endswith(f"-{arch}.txt"))]
    if problems:
        raise UserError(f"{spec.name} does not lint: {problems[0].render()}"
                        + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
                        fix=f"python -m containers lint {spec.name}; make lock for stale locks")
    lock = overrides.get("LOCK", str(spec.lock_path(arch).relative_to(REPO_ROOT)))
    lock_file = Path(lock) if Path(lock).is_absolute() else REPO_ROOT / lock
    from containers.locks import read_lock

    # on every route (the Slurm job publishes too): a test lock's image is never published as NAME
    variant = read_lock(lock_file).header.get("variant", "production")
    if variant != "production" and not args.no_publish and not args.dry_run:
        raise UserError(f"LOCK={lock} is a {variant} lock: its image must not be published as {spec.name}",
                        fix="add --no-publish")
    cfg = compose(list(args.overrides))
    cluster = cfg.cluster
    bcfg = (cluster.get("build") or {}).get(arch) or {}
    route = decide_route(arch, host=host, sbatch_available=bool(which("sbatch")),
                         build_partition=bcfg.get("partition"), binfmt_registered=binfmt_registered(arch),
                         emulate=args.emulate, cluster=str(cluster.name))
    print(f"build {spec.name} {arch}: {route.kind} ({route.why})")
    if route.kind == "slurm":
        log_dir = Path(str(cfg.paths.scratch)) / "builds"
        argv = sbatch_argv(image=spec.name, arch=arch, partition=route.partition or "",
                           account=cluster.get("account"), repo=str(REPO_ROOT), log_dir=str(log_dir),
                           time=str(bcfg.get("time", "04:00:00")), cpus=int(bcfg.get("cpus", 16)),
                           mem=str(bcfg.get("mem", "64G")),
                           extra_export={"CONTAINERS_CLUSTER": str(cluster.name),
                                         **_node_build_exports(spec, overrides, args)})
        print(mask(quote(argv)))
        if args.dry_run:
            return 0
        log_dir.mkdir(parents=True, exist_ok=True)
        job = run(argv, what="sbatch").stdout.strip()
        print(f"submitted job {job}; log: {log_dir}/build-{spec.name}-{arch}_{job}.out")
        return 0
    build_args = {**overrides, "ARCH": arch, "LOCK": lock, "LOCK_HASH": lock_hash(lock_file),
                  "GIT_REV": _git_rev()}
    for key, var in spec.build_env_args.items():
        value = os.environ.get(var)
        if key in overrides:
            continue
        if value:
            build_args[key] = value
        elif args.dry_run:
            build_args[key] = f"${var}"  # a dry run shows where the value will come from
        else:
            raise UserError(f"image {spec.name} needs build argument {key} from ${var}, which is unset",
                            fix=f"export {var}=... (see docs/images.md: {spec.name})")
    node_local = str(cfg.paths.node_local)
    env = build_env(os.environ, node_local)
    out_dir = Path(node_local) / "builds"
    sif = out_dir / spec.sif.format(name=spec.name, arch=arch, lockhash=build_args["LOCK_HASH"])
    apptainer = which("apptainer") or ("apptainer" if args.dry_run else None)
    if apptainer is None:
        raise UserError("no apptainer on PATH: cannot build here",
                        fix="module load apptainer (or install Apptainer >= 1.3), or build on a node "
                            "that has it; lint and lock work without it")
    argv = build_argv(apptainer=apptainer, deffile=spec.recipe, sif=str(sif), arch=arch, host=host,
                      is_root=os.geteuid() == 0, build_args=build_args, userns=args.userns)
    print(mask(f"APPTAINER_TMPDIR={env['APPTAINER_TMPDIR']} APPTAINER_CACHEDIR={env['APPTAINER_CACHEDIR']} "
               + quote(argv)))  # a credentialed index URL (PADDLE_INDEX) is shown with its password masked
    if args.dry_run:
        return 0
    for var in ("APPTAINER_TMPDIR", "APPTAINER_CACHEDIR"):
        Path(env[var]).mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    run(argv, env=env, cwd=REPO_ROOT, capture=False, what=f"apptainer build {spec.name} {arch}")
    if args.no_publish:
        print(f"built {sif}")
        return 0
    from containers.publish import publish

    pointer, copied = publish(sif, Path(str(cfg.paths.images)), name=spec.name, arch=arch,
                              lockhash=build_args["LOCK_HASH"], sif_pattern=spec.sif,
                              pointer_pattern=spec.pointer)
    print(f"published {copied.dst} (sha256 {copied.sha256[:16]}...); {pointer.name} -> {copied.dst.name}")
    return 0


def _node_build_exports(spec: Any, overrides: dict[str, str], args: argparse.Namespace) -> dict[str, str]:
    """What slurm/build_image.sbatch needs to build what a local build would: the --build-arg values
    (BUILD_ARGS), --userns (BUILD_FLAGS), --no-publish (BUILD_PUBLISH=0) and the image's build
    arguments taken from the environment (BUILD_ENV_ARGS, names only: a credentialed index URL never
    lands on the sbatch line; --export=ALL carries the variable itself)."""
    out: dict[str, str] = {}
    for key, value in overrides.items():
        if any(c.isspace() for c in value):
            raise UserError(f"--build-arg {key}={value!r} holds whitespace, which the node-side build "
                            "cannot carry", fix="use a path or value without spaces")
    if overrides:
        out["BUILD_ARGS"] = " ".join(f"{k}={v}" for k, v in sorted(overrides.items()))
    if args.userns:
        out["BUILD_FLAGS"] = "--userns"
    if args.no_publish:
        out["BUILD_PUBLISH"] = "0"  # the job builds and says where the SIF is, and publishes nothing
    names = {k: var for k, var in sorted(spec.build_env_args.items()) if k not in overrides}
    for key, var in names.items():
        if not os.environ.get(var) and not args.dry_run:
            raise UserError(f"image {spec.name} needs build argument {key} from ${var}, which is unset",
                            fix=f"export {var}=... (see docs/images.md: {spec.name})")
    if names:
        out["BUILD_ENV_ARGS"] = " ".join(f"{k}={var}" for k, var in names.items())
    return out


def _images_dir(args: argparse.Namespace) -> Path:
    if args.dir:
        return Path(args.dir)
    from suite_core.config import compose

    return Path(str(compose(list(args.overrides)).paths.images))


def _publish(args: argparse.Namespace) -> int:
    from containers.locks import get_image, lock_hash, require_arch
    from containers.publish import publish
    from containers.sif import read_sif

    spec = get_image(args.image)
    arch = require_arch(spec, args.arch or read_sif(args.sif, with_labels=False).arch)
    lockhash = args.lockhash or lock_hash(spec.lock_path(arch))
    pointer, copied = publish(Path(args.sif), _images_dir(args), name=spec.name, arch=arch,
                              lockhash=lockhash, sif_pattern=spec.sif, pointer_pattern=spec.pointer)
    state = "already there" if copied.skipped else (
        f"copied {copied.bytes_copied} bytes" + (f", resumed at {copied.resumed_from}" if copied.resumed_from
                                                 else ""))
    print(f"{copied.dst}: {state}; {pointer.name} -> {copied.dst.name}")
    return 0


def list_images(directory: Path) -> list[dict]:
    """Every *.sif in ``directory`` with arch, labels, size, and whether a pointer names it."""
    from containers.sif import read_sif

    current = {}
    for p in sorted(directory.glob("*.current")):
        try:  # a damaged pointer (binary bytes, unreadable) names nothing; it must not end the listing
            current[p.read_bytes().decode("utf-8").strip()] = p.name
        except (OSError, UnicodeDecodeError):
            continue
    rows = []
    for sif in sorted(directory.glob("*.sif")):
        size = None
        try:
            size = sif.stat().st_size
            info = read_sif(sif)
        except (UserError, OSError) as exc:  # one bad file is one UNREADABLE row, never the whole list
            line = exc.line() if isinstance(exc, UserError) else f"{exc.strerror}"
            rows.append({"file": sif.name, "error": line, "size": size})
            continue
        rows.append({"file": sif.name, "arch": info.arch, "size": size,
                     "current": current.get(sif.name), "labels": info.labels})
    return rows


def _images(args: argparse.Namespace) -> int:
    directory = _images_dir(args)
    rows = list_images(directory) if directory.is_dir() else []
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no images in {directory} (build one: make build IMAGE=<name>)")
        return 0
    print(f"images in {directory}:")
    for r in rows:
        if "error" in r:
            print(f"  {r['file']}  UNREADABLE: {r['error']}")
            continue
        lab = r["labels"]
        keys = ("recipe", "lock_hash", "cuda", "torch", "paddle", "git_revision")
        shown = " ".join(f"{k}={lab[k]}" for k in keys if k in lab)
        mark = f"  <- {r['current']}" if r["current"] else ""
        print(f"  {r['file']}  {r['arch']}  {r['size'] / 2**30:.2f} GiB  {shown}{mark}")
    return 0


def _check_images(args: argparse.Namespace) -> int:
    from suite_core.runner import run, which

    apptainer = which("apptainer") or which("singularity")
    if not apptainer:
        raise UserError("cannot run the images' %test here: no apptainer (or singularity) on PATH",
                        fix="run make check-images on a node with Apptainer (lint checked the %test "
                            "sections statically)")
    directory = _images_dir(args)
    rows = [r for r in (list_images(directory) if directory.is_dir() else []) if r.get("current")]
    if not rows:
        raise UserError(f"no current images in {directory}", fix="make build IMAGE=<name>")
    from suite_core.arch import host_arch

    host = host_arch()
    failed = 0
    for r in rows:
        if r["arch"] != host:
            print(f"{r['file']}: skipped ({r['arch']} image on a {host} node)")
            continue
        res = run([apptainer, "test", "--nv", str(directory / r["file"])], check=False, capture=False)
        print(f"{r['file']}: {'ok' if res.returncode == 0 else f'FAILED (exit {res.returncode})'}")
        failed += res.returncode != 0
    return 1 if failed else 0
