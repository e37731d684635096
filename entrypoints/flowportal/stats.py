"""Where a video's wall time goes: per-stage and between-stage figures aggregated per chunk.

From each video's recorded timings (state file): every stage, the gaps between stages (driver
work and process start-up outside the scripts), time before the first stage, publishing,
cleaning, waiting for the prefetched input, the gap between videos, and per task the staging
time and the start-up before the first video. Median and p90 of each, so the difference
between the stages' sum and the wall time per video is a line of its own, not a guess.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Iterable
from typing import Any

STAGE_ORDER = ("preprocess", "matanyone", "preprocess_masks", "iclight", "flowportal")


def _p90(values: list[float]) -> float:
    s = sorted(values)
    return s[max(0, math.ceil(0.9 * len(s)) - 1)]


def summary(values: Iterable[float]) -> dict[str, float] | None:
    v = [float(x) for x in values if x is not None]
    if not v:
        return None
    return {
        "n": len(v),
        "median": round(statistics.median(v), 3),
        "p90": round(_p90(v), 3),
        "mean": round(sum(v) / len(v), 3),
        "total": round(sum(v), 3),
    }


def aggregate(entries: Iterable[dict[str, Any]], tasks: Iterable[dict[str, Any]] = ()) -> dict[str, Any]:
    """Aggregate the OK videos' timings (and the tasks' staging) into per-row summaries."""
    rows: dict[str, list[float]] = {}

    def add(key: str, value: Any) -> None:
        if value is not None:
            rows.setdefault(key, []).append(float(value))

    for e in entries:
        if e.get("status") != "OK" or not e.get("stages"):
            continue
        st = e["stages"]
        for s in st:
            add(f"stage {s['name']}", s.get("seconds"))
        for a, b in itertools.pairwise(st):
            if a.get("end") is not None and b.get("start") is not None:
                add("gap between stages", b["start"] - a["end"])
        if st[0].get("start") is not None:
            add("before first stage", st[0]["start"])
        add("stages sum", sum(float(s["seconds"]) for s in st))
        add("publish", e.get("publish"))
        add("cleanup", e.get("cleanup"))
        add("precheck", e.get("precheck"))
        pf = e.get("prefetch") or {}
        add("input wait (prefetch)" if pf.get("where") == "nvme" else "input from share", pf.get("wait"))
        add("prefetch copy (background)", pf.get("copy") if pf.get("ahead") else None)
        add("gap between videos", e.get("gap_before"))
        add("video wall", e.get("seconds"))
    for t in tasks:
        add("staging per task", t.get("staging_s"))
        add("task start-up (to first video)", t.get("startup_s"))
    out = {k: summary(v) for k, v in rows.items()}
    wall, stages = out.get("video wall"), out.get("stages sum")
    if wall and stages:
        out["_outside_stages_share"] = round(1 - stages["total"] / wall["total"], 4) if wall["total"] else 0.0
    return out


def _order(key: str) -> tuple[int, str]:
    if key.startswith("stage "):
        name = key[6:]
        return (STAGE_ORDER.index(name) if name in STAGE_ORDER else 9, key)
    fixed = [
        "stages sum",
        "before first stage",
        "gap between stages",
        "publish",
        "cleanup",
        "precheck",
        "input wait (prefetch)",
        "input from share",
        "prefetch copy (background)",
        "gap between videos",
        "video wall",
        "staging per task",
        "task start-up (to first video)",
    ]
    return (10 + (fixed.index(key) if key in fixed else 99), key)


def render(agg: dict[str, Any], title: str = "") -> str:
    keys = sorted((k for k in agg if not k.startswith("_") and agg[k]), key=_order)
    if not keys:
        return f"{title}no finished video yet: no timings" if title else "no finished video yet: no timings"
    lines = [f"{title}{'phase':<32} {'n':>6} {'median s':>9} {'p90 s':>8} {'total s':>9}"]
    for k in keys:
        s = agg[k]
        lines.append(
            f"{'':<{len(title)}}{k:<32} {s['n']:>6} {s['median']:>9.2f} {s['p90']:>8.2f} {s['total']:>9.1f}"
        )
    if "_outside_stages_share" in agg:
        lines.append(
            f"{'':<{len(title)}}time outside the five stage processes: {agg['_outside_stages_share']:.1%} "
            "of the video wall time"
        )
    return "\n".join(lines)
