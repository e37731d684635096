"""The single-video app: exact commands per preset (golden), layout, traps, bad input."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.entrypoints.flowportal.conftest import CHECKOUT, REPO, entry, upstream_checkout

GOLDEN = REPO / "tests" / "golden" / "flowportal"


def normalize(text: str, roots: Path) -> str:
    text = text.replace(sys.executable, "$PYTHON").replace(str(CHECKOUT), "$CHECKOUT")
    text = text.replace(str(roots / "nvme"), "$NVME")
    return re.sub(r"/work/\d{8}-\d{6}/", "/work/$RUN/", text)


@pytest.mark.parametrize("preset", ["quality", "dgx_fast"])
def test_dry_run_prints_exact_commands(preset, isolated_roots, staged):
    res = entry(
        "flowportal",
        f"preset={preset}",
        "dry_run=true",
        f"flowportal.checkout={CHECKOUT}",
        "video.input=/data/cat.mp4",
    )
    assert res.returncode == 0, res.stderr
    got = normalize(res.stdout, isolated_roots)
    golden = GOLDEN / f"cat_{preset}.txt"
    if os.environ.get("UPDATE_GOLDEN") == "1":  # regenerate deliberately, then review the diff
        golden.write_text(got)
    assert got == golden.read_text()
    assert got.count("\n$PYTHON ") == 5
    assert "--partial_edit True" in got and "--partial_edit False" not in got


def test_partial_edit_false_omits_flag(isolated_roots, staged):
    res = entry(
        "flowportal",
        "preset=dgx_fast",
        "dry_run=true",
        f"flowportal.checkout={CHECKOUT}",
        "video.partial_edit=false",
    )
    assert res.returncode == 0, res.stderr
    assert "--partial_edit" not in res.stdout


def test_renamed_wan_dir_is_refused_when_teacache_is_asked_for(isolated_roots, staged):
    """The old check compared the Wan setting with itself and never fired; TeaCache then silently ran off."""
    staged.joinpath("Wan2.1-Fun-V1.1-1.3B-Control").rename(staged / "wan")
    args = [
        "flowportal",
        "preset=dgx_fast",
        "dry_run=true",
        f"flowportal.checkout={CHECKOUT}",
        "flowportal.wan=wan",
    ]
    res = entry(*args)
    assert res.returncode == 2, res.stdout
    assert "TeaCache is requested but would be off: model_name 'wan' contains none" in res.stderr
    assert "Wan2.1-Fun-V1.1-1.3B-Control" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    off = entry(*args, "preset.flowportal.enable_teacache=false")
    assert off.returncode == 0, off.stderr
    assert "# TeaCache inactive: enable_teacache is false" in off.stdout


def test_upstream_refuses_fork_flags_before_running(tmp_path, isolated_roots, staged):
    up = upstream_checkout(tmp_path / "upstream")
    res = entry("flowportal", "preset=dgx_fast", "dry_run=true", f"flowportal.checkout={up}")
    assert res.returncode == 2
    assert (
        "--edge_mode canny is not accepted by run-preprocess-flow-portal.py of the upstream checkout"
        in res.stderr
    )
    ok = entry("flowportal", "preset=quality", "dry_run=true", f"flowportal.checkout={up}")
    assert ok.returncode == 0, ok.stderr
    for flag in (
        "--edge_mode",
        "--num_inference_steps",
        "--sampler_name",
        "--enable_teacache",
        "--highres_denoise",
    ):
        assert flag not in ok.stdout
    wrong = entry("flowportal", "dry_run=true", f"flowportal.checkout={up}", "flowportal.flavor=fork")
    assert wrong.returncode == 2 and "flowportal.flavor=fork but the checkout" in wrong.stderr


def test_missing_checkout_is_one_line(isolated_roots):
    res = entry("flowportal", "dry_run=true", "flowportal.checkout=/nonexistent/FlowPortal")
    assert res.returncode == 2
    assert (
        res.stderr.strip().count("\n") == 0
        and "does not exist" in res.stderr
        and "Traceback" not in res.stderr
    )


def test_missing_model_named_with_how_to_stage(isolated_roots, staged, small):
    (staged / "MatAnyone" / "matanyone.pth").unlink()
    res = entry("flowportal", "preset=dgx_fast", *small)
    assert res.returncode == 2
    assert (
        "missing model file for stage matanyone: MatAnyone checkpoint" in res.stderr
        and "python -m containers stage" in res.stderr
    )


def test_full_run_layout_outputs_marker_and_timing(isolated_roots, staged, small):
    res = entry("flowportal", "preset=dgx_fast", *small)
    assert res.returncode == 0, res.stderr + res.stdout
    for stage in ("preprocess", "matanyone", "preprocess_masks", "iclight", "flowportal"):
        assert re.search(rf"^{stage}\s+ok\s+\d", res.stdout, re.M), res.stdout
    run_dir = next((isolated_roots / "scratch" / "runs" / "flowportal").iterdir())
    out = run_dir / "outputs" / "cat_ic"
    marker = json.loads((out / ".complete.json").read_text())
    assert marker["teacache_active"] is True
    assert set(marker["files"]) == {"output_video.mp4", "compare_output_video.mp4", "cat_ic_reference.png"}
    assert not list(out.glob(".*.part*"))
    report = json.loads((run_dir / "jobs" / "flowportal" / "run_report.json").read_text())
    assert [s["name"] for s in report["steps"]] == [
        "preprocess",
        "matanyone",
        "preprocess_masks",
        "iclight",
        "flowportal",
    ]
    assert report["flowportal"]["teacache_active"] is True and report["exit_status"] == 0
    work = Path(report["flowportal"]["workdir"])
    assert (work / "config" / "wan2.1" / "wan_civitai.yaml").is_file()
    assert (work / "pretrained_models" / "matanyone.pth").exists()
    assert (work / "pretrained_models" / "Wan2.1-Fun-V1.1-1.3B-Control").is_dir()
    assert not (work / "datasets" / "cat_ic").exists()  # intermediates cleaned


def test_failed_stage_leaves_no_output(isolated_roots, staged, small):
    res = entry(
        "flowportal",
        "preset=dgx_fast",
        *small,
        env_extra={"CONTAINERS_TEST_FLOWPORTAL_FAIL": "iclight:cat_ic"},
    )
    assert res.returncode == 1
    assert "failed at stage iclight" in res.stderr
    run_dir = next((isolated_roots / "scratch" / "runs" / "flowportal").iterdir())
    assert not (run_dir / "outputs" / "cat_ic").exists()


def test_background_image_uses_fbc_script(isolated_roots, staged, tmp_path):
    res = entry(
        "flowportal",
        "preset=quality",
        "dry_run=true",
        f"flowportal.checkout={CHECKOUT}",
        f"video.bg_path={tmp_path / 'bg.png'}",
    )
    assert res.returncode == 0, res.stderr
    line = next(ln for ln in res.stdout.splitlines() if "run-iclight-" in ln)
    assert "run-iclight-fbc.py" in line and f"--bg_path {tmp_path / 'bg.png'}" in line
    assert "iclight_sd15_fbc.safetensors" in line and "--highres" not in line


def test_checkout_of_another_version_is_refused(tmp_path, isolated_roots, staged):
    odd = upstream_checkout(tmp_path / "odd")
    script = odd / "run-flow-portal.py"  # upstream plus one fork flag: neither flavor
    script.write_text(
        script.read_text().replace(
            'parser.add_argument("--compile_dit"',
            'parser.add_argument("--cfg_skip_ratio", type=float)\nparser.add_argument("--compile_dit"',
        )
    )
    res = entry("flowportal", "dry_run=true", f"flowportal.checkout={odd}")
    assert res.returncode == 2 and "is neither the fork nor upstream" in res.stderr
    (odd / "run-iclight-fc.py").unlink()
    res = entry("flowportal", "dry_run=true", f"flowportal.checkout={odd}")
    assert res.returncode == 2 and "has no run-iclight-fc.py" in res.stderr


def test_unknown_flag_is_rejected_by_the_fixture_like_argparse(tmp_path):
    argv = [
        sys.executable,
        str(CHECKOUT / "run-iclight-fc.py"),
        "--base_path",
        ".",
        "--video_name",
        "x",
        "--prompt",
        "p",
        "--width",
        "8",
        "--height",
        "8",
        "--no_such_flag",
        "1",
    ]
    res = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert res.returncode == 2 and "unrecognized arguments: --no_such_flag" in res.stderr


def test_too_short_video_is_a_clear_error(isolated_roots, staged, tmp_path):
    from tests.entrypoints.flowportal.conftest import make_mp4

    short = make_mp4(tmp_path / "short.mp4", 20)  # 20 frames at 24 fps -> 6 at 8 fps
    res = entry(
        "flowportal",
        "preset=dgx_fast",
        f"flowportal.checkout={CHECKOUT}",
        f"video.input={short}",
        "video.k_frames=9",
    )
    assert res.returncode == 2
    assert "has 20 frames: too short for k_frames=9 at 8 fps" in res.stderr
    assert "Traceback" not in res.stderr
