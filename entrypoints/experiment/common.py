"""What every experiment stage shares: input checks, its output folder, the completion flag last.

The submit side (containers/experiment.py) puts an ``exp`` block in each stage's config: the
instance name, seed, output folder, the folders of the stages it reads, and which config keys are
settings and which name input files. The stage recomputes its fingerprint from those (with the
fingerprints its inputs' flags carry), so the flag it writes says exactly what made the outputs.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from containers.experiment import COMPLETE, input_files_of, instance_fingerprint, settings_of
from suite_core.errors import UserError


def log(stage: str, message: str) -> None:
    """One line on stderr (the job's Slurm log), prefixed with the stage instance."""
    print(f"[{stage}] {message}", file=sys.stderr, flush=True)


@dataclass
class Stage:
    name: str
    stage: str
    seed: int | None
    out_dir: Path
    inputs: dict[str, Path]
    upstream: dict[str, dict[str, Any]]
    fingerprint: str
    settings: dict[str, Any] = field(default_factory=dict)

    def input_dir(self, stage: str) -> Path:
        """The folder of the (single) instance of ``stage`` this one reads."""
        found = [d for n, d in self.inputs.items() if n.split(".s")[0] == stage]
        if len(found) != 1:
            raise UserError(f"stage {self.name} needs exactly one input from stage '{stage}', "
                            f"has {len(found)}",
                            where="the experiment pipeline", fix=f"add '{stage}' to this stage's after: list")
        return found[0]

    def input_dirs(self, stage: str) -> dict[int | None, Path]:
        """Seed -> folder of every instance of ``stage`` this one reads (an aggregation's fan-in)."""
        out: dict[int | None, Path] = {}
        for n, d in self.inputs.items():
            base, _, seed = n.partition(".s")
            if base == stage:
                out[int(seed) if seed else None] = d
        if not out:
            raise UserError(f"stage {self.name} reads no instance of stage '{stage}'",
                            where="the experiment pipeline", fix=f"add '{stage}' to this stage's after: list")
        return out


def open_stage(cfg: Any) -> Stage:
    """Check the inputs (upstream flags, input files) and compute this instance's fingerprint."""
    from omegaconf import OmegaConf

    from suite_core.markers import code_version, read_marker

    if cfg.get("exp") is None:
        raise UserError(f"app {cfg.get('app_name')} runs as a stage of an experiment pipeline",
                        fix="python -m containers submit tinyexp cluster=... data_file=...")
    doc: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    exp = doc["exp"]
    inputs: dict[str, Path] = {}
    upstream: dict[str, dict[str, Any]] = {}
    for item in exp.get("inputs") or []:
        d = Path(item["dir"])
        flag = read_marker(d / COMPLETE)
        if not flag or "fingerprint" not in flag:
            raise UserError(f"input stage {item['name']} is not complete: no completion flag in {d}",
                            where=f"stage {exp['instance']}",
                            fix="let it finish first, or resume: python -m containers submit "
                            f"{exp['pipeline']} resume={cfg.get('run_dir')}")
        inputs[item["name"]] = d
        upstream[item["name"]] = flag
    for key in exp.get("input_keys") or []:
        value = doc.get(key)
        if value not in (None, "") and not Path(str(value)).is_file():
            raise UserError(f"input file {key}={value} does not exist", where=f"stage {exp['instance']}",
                            fix=f"put the file there (or pass {key}=<path>), then resume the experiment")
    settings = settings_of(doc, exp["settings_keys"])
    fp = instance_fingerprint(settings, {n: f["fingerprint"] for n, f in upstream.items()},
                              input_files_of(doc, exp.get("input_keys") or []),
                              code_version(*exp["code_modules"]))
    return Stage(exp["instance"], str(cfg.get("stage")), exp.get("seed"), Path(exp["out_dir"]), inputs,
                 upstream, fp, settings)


@contextlib.contextmanager
def writing(stage: Stage, run: Any) -> Iterator[Path]:
    """Hold the output folder's writer lock; drop an old flag first; write the new flag last.

    The old flag goes first so a rerun that fails halfway never leaves outputs that look complete.
    """
    from suite_core.markers import write_marker
    from suite_core.rundir import writer_lock

    with writer_lock(stage.out_dir):
        flag = stage.out_dir / COMPLETE
        flag.unlink(missing_ok=True)
        yield stage.out_dir
        outputs = sorted(p.name for p in stage.out_dir.iterdir()
                         if p.is_file() and not p.name.startswith(".") and p.name != COMPLETE)
        write_marker(flag, stage.fingerprint, instance=stage.name, seed=stage.seed, outputs=outputs,
                     job=os.environ.get("SLURM_JOB_ID"),
                     finished=_dt.datetime.now().astimezone().isoformat(timespec="seconds"))
        run.output(flag)
        log(stage.name, f"complete: {flag}")


def read_json(path: Path, what: str, stage: Stage) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{what} {path} is missing", where=f"stage {stage.name}",
                        fix="resume the experiment so the stage that makes it reruns") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{what} {path} cannot be read: {exc}", where=f"stage {stage.name}",
                        fix="resume the experiment so the stage that makes it reruns") from None


def write_json(path: Path, obj: Any, run: Any) -> Path:
    from suite_core.atomic import write_json as _write

    _write(path, obj)
    run.output(path)
    return path


def read_points(path: Path, where: str, *,
                columns: list[str] | None = None) -> tuple[list[str], list[list[float]], list[int]]:
    """A CSV of numeric feature columns and an integer ``label`` column, checked row by row."""
    import csv

    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}", where=where, fix="pass a readable UTF-8 CSV") from None
    if not rows or "label" not in rows[0]:
        raise UserError(f"{path} has no header with a 'label' column", where=where,
                        fix="first line: x1,x2,...,label")
    header = [h.strip() for h in rows[0]]
    li = header.index("label")
    names = [h for i, h in enumerate(header) if i != li]
    if not names:
        raise UserError(f"{path} has no feature columns", where=where, fix="first line: x1,x2,...,label")
    if columns is not None and names != columns:
        raise UserError(f"{path} has columns {names}, the training data has {columns}", where=where,
                        fix="write the same feature columns as the training data")
    feats: list[list[float]] = []
    labels: list[int] = []
    for n, row in enumerate(rows[1:], 2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise UserError(f"line {n} of {path} has {len(row)} fields, the header has {len(header)}",
                            where=where, fix="fix that line")
        try:
            lab = int(row[li])
            vals = [float(c) for i, c in enumerate(row) if i != li]
        except ValueError:
            raise UserError(f"line {n} of {path} is not numeric: {','.join(row)[:80]}", where=where,
                            fix="every feature is a number and the label an integer") from None
        if lab < 0 or any(v != v or v in (float("inf"), float("-inf")) for v in vals):
            raise UserError(f"line {n} of {path} has a negative label or a non-finite value", where=where,
                            fix="labels are 0, 1, ...; features are finite numbers")
        feats.append(vals)
        labels.append(lab)
    return names, feats, labels
