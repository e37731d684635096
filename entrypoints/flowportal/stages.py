"""The five stage command lines, built from config and checked against the checkout's flags.

Traps of the status-quo scripts handled here (workloads.md):
``--partial_edit`` is ``type=bool`` (any value, even ``False``, is true), so it is passed only
when true; ``--enable_teacache`` is compared to ``'true'``, so it gets ``True``/``False``;
TeaCache picks its coefficients from a substring of ``--model_name``, so the Wan directory must
keep its basename and the report states whether TeaCache will really be active; a flag the
checkout does not accept is refused here, before any stage runs.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from entrypoints.flowportal.checkout import FORK_ONLY, Checkout
from suite_core.errors import UserError
from suite_core.runner import quote

# The fork matches these (lower-cased) substrings of --model_name to choose TeaCache
# coefficients (videox_fun/models/cache_utils.py); anything else silently disables TeaCache.
TEACACHE_MODELS = (
    "wan2.1-t2v-1.3b",
    "wan2.1-fun-1.3b",
    "wan2.1-fun-v1.1-1.3b",
    "wan2.1-t2v-14b",
    "wan2.1-i2v-14b-480p",
    "wan2.1-i2v-14b-720p",
    "wan2.1-fun-14b",
    "wan2.1-fun-v1.1-14b",
)
EDGE_MODES = ("combined", "canny", "hed", "depth")


@dataclass
class Video:
    """One video to process: its name inside datasets/, input file, frames and prompts."""

    name: str
    input: str
    k_frames: int
    prompt_tar: str
    prompt_src: str
    negative_prompt: str


@dataclass
class Stage:
    """One stage: its name, the exact argv and whether it needs the GPU."""

    name: str
    argv: list[str]
    gpu: bool
    expects: list[str] = field(default_factory=list)  # files (relative to workdir) it must produce
    script_key: str = ""  # preprocess | matanyone | iclight | flowportal (resident worker cache key)

    def shell(self) -> str:
        return quote(self.argv)


def teacache_active(cfg: Any) -> tuple[bool, str]:
    """Whether the fork will really enable TeaCache for the staged ``--model_name`` (and why not)."""
    if not bool(cfg.preset.flowportal.enable_teacache):
        return False, "enable_teacache is false"
    model_dir = model_paths(cfg)["wan"]
    low = model_dir.lower()
    hit = next((s for s in TEACACHE_MODELS if s in low), None)
    if hit:
        return True, f"model_name contains '{hit}'"
    return False, (
        f"model_name {Path(model_dir).name!r} contains none of the TeaCache model names "
        "(the fork then prints 'not supported by TeaCache' and runs without it)"
    )


class Builder:
    """Collects ``--flag value`` pairs per script, refusing what the checkout does not accept."""

    def __init__(self, checkout: Checkout) -> None:
        self.checkout = checkout

    def flags(self, key: str, pairs: list[tuple[str, Any]]) -> list[str]:
        out: list[str] = []
        fork_only = FORK_ONLY.get(key, {})
        for flag, value in pairs:
            if value is None:
                continue  # unset: the script's own default
            if not self.checkout.accepts(key, flag):
                if flag in fork_only and fork_only[flag] is not None and _same(value, fork_only[flag]):
                    continue  # upstream behaves like the fork's default: nothing to pass
                raise UserError(
                    f"--{flag} {value} is not accepted by {self.checkout.script(key).name} of the "
                    f"{self.checkout.flavor} checkout at {self.checkout.root}",
                    where="preset / flowportal settings",
                    fix=f"drop it (set it to null) or use a checkout with --{flag} (the MyFlowPortal fork)",
                )
            if value is True and flag in ("skip_edge_detection", "skip_frame_extraction"):
                out.append(f"--{flag}")
            elif isinstance(value, bool):
                out += [f"--{flag}", "True" if value else "False"]
            else:
                out += [f"--{flag}", _fmt(value)]
        return out


def _same(a: Any, b: Any) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return repr(value) if value != int(value) else f"{value:.1f}"
    return str(value)


def model_paths(cfg: Any) -> dict[str, str]:
    """Staged model locations (node-local), keyed as in ``flowportal.*`` (per ``flowportal.layout``)."""
    from entrypoints.flowportal.modelset import paths

    return {k: str(v) for k, v in paths(cfg).items()}


def check_teacache(cfg: Any) -> None:
    """Refuse a preset that asks for TeaCache when the Wan directory name would silently disable it."""
    active, why = teacache_active(cfg)
    if bool(cfg.preset.flowportal.enable_teacache) and not active:
        raise UserError(
            f"TeaCache is requested but would be off: {why}",
            where=str(model_paths(cfg)["wan"]),
            fix="stage the Wan model under its original basename (Wan2.1-Fun-V1.1-1.3B-Control), "
            "or pass preset.flowportal.enable_teacache=false",
        )


def build(cfg: Any, checkout: Checkout, video: Video) -> list[Stage]:
    """The five stage commands for ``video``, to run with the per-run working dir as cwd."""
    p, fp = cfg.preset, cfg.flowportal
    py = str(fp.python) if fp.get("python") else sys.executable
    v = video
    edge = str(p.edge_mode)
    if edge not in EDGE_MODES:
        raise UserError(f"unknown preset.edge_mode '{edge}'", fix=f"choose one of: {', '.join(EDGE_MODES)}")
    if int(v.k_frames) < 1 or (int(v.k_frames) - 1) % 4:
        raise UserError(
            f"k_frames={v.k_frames} is not 4n+1",
            where=f"video {v.name}",
            fix="use one of 49, 41, 21, 13, 9 (Wan needs 4n+1 frames)",
        )
    models = model_paths(cfg)
    wan = models["wan"]
    check_teacache(cfg)
    b = Builder(checkout)
    common = [
        ("video_name", v.name),
        ("k_frames", int(v.k_frames)),
        ("fps", int(cfg.video.fps)),
        ("height", int(cfg.video.height)),
        ("width", int(cfg.video.width)),
    ]
    annotators = None
    if edge != "canny":
        if checkout.accepts("preprocess", "annotators_path"):
            annotators = models["annotators"]
        elif not (checkout.root / "pretrained_models" / "Annotators").is_dir():
            raise UserError(
                f"edge_mode={edge} needs the HED/Midas Annotators but this checkout's preprocess has no "
                "--annotators_path and no pretrained_models/Annotators next to the script",
                where=str(checkout.root),
                fix="use preset.edge_mode=canny or the fork checkout",
            )
    d = f"datasets/{v.name}"

    def preprocess(extra: list[tuple[str, Any]]) -> list[str]:
        """Stages 1 and 3 run the same script with the same leading flags."""
        head = [("video_input", v.input), *common, ("batch_size", int(p.batch_size))]
        return [py, str(checkout.script("preprocess")), *b.flags("preprocess", [*head, *extra])]

    s1 = Stage(
        "preprocess",
        preprocess([("edge_mode", edge), ("annotators_path", annotators)]),
        gpu=True,
        expects=[f"{d}/{v.name}.mp4", f"{d}/masks/mask_0000.png", f"{d}/video_frames/frame_0000.png"],
        script_key="preprocess",
    )
    s2 = Stage(
        "matanyone",
        [
            py,
            str(checkout.script("matanyone")),
            "-i",
            f"{d}/{v.name}.mp4",
            "-m",
            f"{d}/masks/mask_0000.png",
            "-o",
            f"{d}/matanyone",
        ],
        gpu=True,
        expects=[f"{d}/matanyone/{v.name}_pha.mp4"],
        script_key="matanyone",
    )
    skip = checkout.accepts("preprocess", "skip_edge_detection")
    s3 = Stage(
        "preprocess_masks",
        preprocess(
            [
                ("using_existing_masks", f"{d}/matanyone/{v.name}_pha.mp4"),
                ("skip_edge_detection", True if skip else None),
                (
                    "skip_frame_extraction",
                    True if checkout.accepts("preprocess", "skip_frame_extraction") else None,
                ),
                *([] if skip else [("edge_mode", edge), ("annotators_path", annotators)]),
            ]
        ),
        gpu=False,
        expects=[f"{d}/masks/mask_video.mp4", f"{d}/masked_canny/masked_canny_video.mp4"],
        script_key="preprocess",
    )
    partial = True if bool(cfg.video.partial_edit) else None
    ic = p.iclight
    bg = cfg.video.get("bg_path")
    if bg:
        key, model = "iclight_fbc", models["iclight_fbc"]
        extra: list[tuple[str, Any]] = [("bg_path", str(bg))]
        hires: list[tuple[str, Any]] = []
    else:
        key, model = "iclight_fc", models["iclight_fc"]
        extra = []
        hires = [("highres_scale", ic.highres_scale), ("highres_denoise", ic.highres_denoise)]
    s4 = Stage(
        "iclight",
        [
            py,
            str(checkout.script(key)),
            *b.flags(
                key,
                [
                    ("model_path", model),
                    ("base_path", "."),
                    *extra,
                    ("video_name", v.name),
                    ("prompt", v.prompt_tar),
                    ("height", int(cfg.video.height)),
                    ("width", int(cfg.video.width)),
                    ("seed", int(ic.seed)),
                    ("steps", int(ic.steps)),
                    *hires,
                    ("partial_edit", partial),
                ],
            ),
        ],
        gpu=True,
        expects=[f"{d}/{v.name}_reference.png"],
        script_key="iclight",
    )
    f = p.flowportal
    s5 = Stage(
        "flowportal",
        [
            py,
            str(checkout.script("flowportal")),
            *b.flags(
                "flowportal",
                [
                    *common,
                    ("prompt_tar", v.prompt_tar),
                    ("prompt_src", v.prompt_src),
                    ("negative_prompt", v.negative_prompt),
                    ("src_guidance_scale", float(f.src_guidance_scale)),
                    ("tar_guidance_scale", float(f.tar_guidance_scale)),
                    ("gpu_memory_mode", f.gpu_memory_mode),
                    ("seed", int(f.seed)),
                    ("edit_amplifier", float(f.edit_amplifier)),
                    ("cache_times", int(f.cache_times)),
                    ("n_avg", int(f.n_avg)),
                    ("partial_edit", partial),
                    ("accuracy", int(f.accuracy)),
                    ("src_blurring", float(f.src_blurring)),
                    ("transfer_blurring", float(cfg.video.transfer_blurring)),
                    ("model_name", wan),
                    ("num_inference_steps", f.num_inference_steps),
                    ("sampler_name", f.sampler_name),
                    ("enable_teacache", None if f.enable_teacache is None else bool(f.enable_teacache)),
                    ("teacache_threshold", f.teacache_threshold),
                    ("cfg_skip_ratio", f.cfg_skip_ratio),
                ],
            ),
        ],
        gpu=True,
        expects=[f"results/flow-edit-{v.name}/output_video.mp4"],
        script_key="flowportal",
    )
    return [s1, s2, s3, s4, s5]
