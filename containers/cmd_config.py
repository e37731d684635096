"""``config``: print the composed config; ``sif``: read a SIF file's header and labels."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

COMMANDS = {
    "config": "print the composed configuration (Hydra overrides welcome)",
    "sif": "show a SIF file's arch, labels and descriptors (no Apptainer needed)",
}


def configure(parser: argparse.ArgumentParser, name: str) -> None:
    if name == "sif":
        parser.add_argument("path", help="a .sif file")
        parser.add_argument("--json", action="store_true", help="machine-readable output")
    else:
        parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. cluster=torch")


def main(args: argparse.Namespace) -> int:
    if args.command == "sif":
        from containers.sif import read_sif

        info = read_sif(args.path)
        if args.json:
            print(json.dumps(asdict(info), default=str, indent=2))
        else:
            print(f"{info.path}: arch {info.arch}, id {info.id}")
            for d in info.descriptors:
                extra = f" {d.fstype}/{d.parttype}/{d.arch}" if d.datatype == "FS" else ""
                print(f"  {d.id:>3} {d.datatype:<13} {d.size:>12} bytes{extra} {d.name}")
            for k, v in sorted(info.labels.items()):
                print(f"  label {k} = {v}")
        return 0
    from suite_core.config import compose, to_yaml

    print(to_yaml(compose(args.overrides)), end="")
    return 0
