"""flowportal_adopt: take over the status quo's finished videos, so switching redoes nothing.

The fork's batch leaves ``results/flow-edit-<video>/output_video.mp4`` (+ ``compare_output_video.mp4``)
and ``datasets/<video>/<video>_reference.png``. Each one of this batch's manifest rows with
such an output is verified (it decodes, first and last frame; it has the row's ``k_frames``
frames at ``video.width`` x ``video.height``), copied into ``outputs/<video>/`` atomically and
marked with the batch's fingerprint (settings recorded in ``batch.json``, the row, the input),
marker last. A video that fails a check is listed with the reason and left to the batch.
The status quo's files are only read. Adopting asserts that those outputs were made with the
batch's settings (the DGX script's flags are ``preset=dgx_fast`` with ``video.transfer_blurring=0.4``
at 480x848): that cannot be read back from an MP4, so the command says which settings it records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from entrypoints.flowportal import manifest as mf
from entrypoints.flowportal import settings as st
from entrypoints.flowportal import workdir as wd
from entrypoints.flowportal.batch import batch_settings
from suite_core.errors import UserError
from suite_core.rundir import holder_facts


def verify(path: Path, k_frames: int, width: int, height: int) -> str | None:
    """Why ``path`` is not a complete output of the row (None when it is)."""
    import cv2

    if not path.is_file():
        return "no output_video.mp4"
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return "output_video.mp4 does not open (truncated?)"
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if n != k_frames:
            return f"output_video.mp4 has {n} frames, the row wants k_frames={k_frames}"
        if (w, h) != (width, height):
            return f"output_video.mp4 is {w}x{h}, the batch makes {width}x{height}"
        if not cap.read()[0]:
            return "output_video.mp4: the first frame does not decode"
        cap.set(cv2.CAP_PROP_POS_FRAMES, n - 1)
        if not cap.read()[0]:
            return "output_video.mp4: the last frame does not decode (truncated?)"
    finally:
        cap.release()
    return None


def run(cfg: Any, run: Any) -> int:
    batch_dir = Path(str(cfg.batch_dir))
    results = Path(str(cfg.results_dir))
    if not results.is_dir():
        raise UserError(
            f"results_dir {results} does not exist",
            where="results_dir",
            fix="pass the status quo's results/ folder (it holds flow-edit-<video>/)",
        )
    datasets = Path(str(cfg.datasets_dir)) if cfg.get("datasets_dir") else None
    man = mf.load(batch_dir)
    src_prompt, prompts = mf.read_prompts(man.prompts())
    video_dir = Path(str(cfg.video_dir))
    _, settings, mode = batch_settings(cfg, batch_dir)
    sdigest = st.record_or_check(batch_dir, settings, mode, holder_facts())
    width, height = int(cfg.video.width), int(cfg.video.height)
    print(
        f"adopting as preset {cfg.preset.name} at {width}x{height} "
        f"(transfer_blurring {cfg.video.transfer_blurring}, partial_edit {cfg.video.partial_edit})"
    )
    counts = {"adopted": 0, "present": 0, "absent": 0, "refused": 0}
    with run.step("adopt") as step:
        for i in range(man.num_chunks):
            for r in mf.read_manifest(man.chunk(i)):
                name = r["video_name"]
                out_dir = batch_dir / "outputs" / name
                src = mf.resolve_input(video_dir, name)
                fp = st.video_fingerprint(sdigest, r, prompts.get(str(r["prompt_id"]), ""), src_prompt, src)
                if wd.is_complete(out_dir, fp):
                    counts["present"] += 1
                    continue
                res = results / f"flow-edit-{name}"
                if not res.is_dir():
                    counts["absent"] += 1
                    continue
                why = verify(res / "output_video.mp4", int(r["k_frames"]), width, height)
                if why is None and src is None:
                    why = f"its input video is not in {video_dir}"
                if why is None and str(r["prompt_id"]) not in prompts:
                    why = f"prompt id {r['prompt_id']} is not in the prompts file"
                if why:
                    counts["refused"] += 1
                    run.skip(name, why)
                    print(f"  not adopted {name}: {why}")
                    continue
                wanted = {
                    "output_video.mp4": res / "output_video.mp4",
                    "compare_output_video.mp4": res / "compare_output_video.mp4",
                }
                if datasets is not None:
                    wanted[f"{name}_reference.png"] = datasets / name / f"{name}_reference.png"
                wd.publish_files(
                    out_dir,
                    name,
                    wanted,
                    {"preset": str(cfg.preset.name), "adopted_from": str(res), "stages": [], "seconds": None},
                    fp,
                )
                counts["adopted"] += 1
        step.update(**counts)
    run.report["adopt"] = counts
    print(
        f"{counts['adopted']} adopted, {counts['present']} already marked, {counts['refused']} refused "
        f"(see the run report), {counts['absent']} without a status-quo output"
    )
    return 0
