"""Types and ranges of the newsbag apps' settings (structured configs the framework validates).

Checked after composition, before an app starts (and by ``containers submit`` for every step),
so ``limit=abc`` or ``panel_width=0`` is one line naming the key instead of a traceback pages
later, and ``limit=-1`` is refused instead of silently meaning "all pages but the last". Only the
keys declared here are checked; the YAML under ``hydra_conf/app/`` keeps the defaults and comments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# source -> variant -> settings (a variant set to null is switched off)
Variants = dict[str, dict[str, dict[str, Any] | None] | None]


@dataclass
class PageSource:
    """newsbag_embedded, dell, mineru, paddle_layout, paddle_vl15: pages x variants."""

    limit: int | None = field(default=None, metadata={
        "ge": 1, "fix": "pass limit=N with N >= 1, or limit=null for all pages"})
    shard_index: int = field(default=0, metadata={"ge": 0})
    shard_count: int = field(default=1, metadata={"ge": 1})
    max_megapixels: float = field(default=80.0, metadata={"gt": 0})
    recursive: bool = False
    variants: Variants = field(default_factory=dict)


@dataclass
class Fusion:
    workers: int = field(default=0, metadata={"ge": 0, "fix": "pass workers=N (0 = min(8, CPUs))"})
    recursive: bool = False
    force: bool = False
    variants: Variants = field(default_factory=dict)


@dataclass
class Review:
    top_k: int = field(default=20, metadata={"ge": 0})
    panel_width: int = field(default=360, metadata={"ge": 32, "fix": "pass panel_width=N pixels (N >= 32)"})
    cols: int = field(default=4, metadata={"ge": 1})
    recursive: bool = False
    variants: Variants = field(default_factory=dict)


@dataclass
class Demo:
    workers: int = field(default=0, metadata={"ge": 0, "fix": "pass workers=N (0 = min(8, CPUs))"})
    top_k: int = field(default=20, metadata={"ge": 0})
    recursive: bool = False
    variants: Variants = field(default_factory=dict)


SCHEMAS: dict[str, type] = {
    **dict.fromkeys(("newsbag_embedded", "dell", "mineru", "paddle_layout", "paddle_vl15"), PageSource),
    "fusion": Fusion,
    "review": Review,
    "newsbag_demo": Demo,
}
