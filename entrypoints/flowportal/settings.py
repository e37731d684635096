"""Types and ranges of the FlowPortal apps' settings (structured configs the framework validates).

``video.k_frames=abc``, ``input_fps=0``, ``workers=0`` or ``prompts_tar=[]`` used to surface as a
traceback (a ZeroDivisionError, a ThreadPoolExecutor ValueError, a modulo by zero) after the
videos were probed; here each is one line naming the key, before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FPS = {"gt": 0, "fix": "pass input_fps=<frames per second > 0>"}


@dataclass
class Video:
    k_frames: int = field(default=49, metadata={"ge": 9, "fix": "pass video.k_frames=N (N >= 9)"})
    fps: float = field(default=8.0, metadata={"gt": 0})
    height: int = field(default=480, metadata={"ge": 16})
    width: int = field(default=720, metadata={"ge": 16})
    transfer_blurring: float = field(default=0.2, metadata={"ge": 0})


@dataclass
class FlowPortal:
    dry_run: bool = False
    video: Video = field(default_factory=Video)


@dataclass
class BatchVideo:
    height: int = field(default=480, metadata={"ge": 16})
    width: int = field(default=848, metadata={"ge": 16})
    transfer_blurring: float = field(default=0.4, metadata={"ge": 0})


@dataclass
class Batch:
    input_fps: float = field(default=24.0, metadata=FPS)
    chunk: int | None = field(default=None, metadata={"ge": 0})
    chunk_offset: int = field(default=0, metadata={"ge": 0})
    deadline_margin_s: float = field(default=120.0, metadata={"ge": 0})
    video: BatchVideo = field(default_factory=BatchVideo)


@dataclass
class Manifest:
    input_fps: float = field(default=24.0, metadata=FPS)
    target_fps: float = field(default=8.0, metadata={"gt": 0})
    num_select: int = field(default=8000, metadata={"ge": 0})
    num_chunks: int = field(default=10, metadata={"ge": 1})
    seed: int = 42
    workers: int = field(default=8, metadata={"ge": 1, "fix": "pass workers=N threads (N >= 1)"})
    prompt_src: str = ""
    prompts_tar: list[str] = field(default_factory=list, metadata={
        "min_items": 1, "fix": "give at least one target prompt: prompts_tar=['a person is signing ...']"})


@dataclass
class Status:
    parallel: int | None = field(default=None, metadata={"ge": 1})
    max_parallel: int | None = field(default=None, metadata={"ge": 1})
    show_failures: int = field(default=5, metadata={"ge": 0})
    dry_run: bool = False


SCHEMAS: dict[str, type] = {
    "flowportal": FlowPortal,
    "flowportal_batch": Batch,
    "flowportal_manifest": Manifest,
    "flowportal_status": Status,
}
