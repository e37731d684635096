"""Bad input and shared-filesystem rules: binds, manifest names/modes/regeneration, claims, bash helpers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from entrypoints.flowportal import claims
from entrypoints.flowportal import manifest as mf
from entrypoints.flowportal.binds import bind_args, declared
from suite_core.config import compose
from suite_core.errors import UserError
from tests.entrypoints.flowportal.conftest import CHECKOUT, REPO, entry, make_manifest, make_mp4, mpath

LIB = REPO / "slurm" / "lib" / "flowportal.sh"


def bash(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", f"set -euo pipefail; source {LIB}; {script}"],
        capture_output=True,
        text=True,
        timeout=30,
    )


# ------------------------------------------------------------------ item 1: inputs bound read-only


def test_declared_inputs_resolve_to_the_paths_the_run_reads(tmp_path):
    videos, batch, bg = tmp_path / "raw videos", tmp_path / "batch", tmp_path / "bg.png"
    videos.mkdir()
    batch.mkdir()
    bg.write_bytes(b"x")
    cfg = compose(
        [
            "app=flowportal_batch",
            f"video_dir={videos}",
            f"batch_dir={batch}",
            f"flowportal.checkout={CHECKOUT}",
            f"video.bg_path={bg}",
        ]
    )
    assert declared(cfg) == [(str(videos), True), (str(bg), True), (str(CHECKOUT), True), (str(batch), False)]
    video = make_mp4(tmp_path / "dog.mp4", 20)
    one = compose(["app=flowportal", f"video.input={video}", f"flowportal.checkout={CHECKOUT}"])
    assert declared(one) == [(str(video), True), (str(CHECKOUT), True)]  # bg_path null: nothing to bind
    assert bind_args(one) == ["--bind", f"{video}:{video}:ro", "--bind", f"{CHECKOUT}:{CHECKOUT}:ro"]
    res = subprocess.run(
        [
            os.sys.executable,
            "-m",
            "entrypoints.flowportal.binds",
            "flowportal_manifest",
            f"video_dir={videos}",
            f"batch_dir={batch}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0 and res.stdout.splitlines() == [
        "--bind",
        f"{videos}:{videos}:ro",
        "--bind",
        f"{batch}:{batch}",
    ]
    comma = tmp_path / "a,b"
    comma.mkdir()
    with pytest.raises(UserError, match="contains ':' or ','"):
        bind_args(compose(["app=flowportal_manifest", f"video_dir='{comma}'"]))


# --------------------------------------------------------- manifest: names, enumerations, bounds, switch


def test_manifest_mode_is_an_enumeration_and_never_a_path(tmp_path):
    videos = tmp_path / "v"
    make_mp4(videos / "a.mp4", 40)
    batch = tmp_path / "deep" / "er" / "batch"
    for mode in ("../../../x", "bogus"):
        res = entry("flowportal_manifest", f"video_dir={videos}", f"batch_dir={batch}", f"mode={mode}")
        assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert f"mode='{mode}' is not one of selected, unselected" in res.stderr
    assert not (tmp_path / "x.csv").exists() and not list(tmp_path.rglob("*.csv"))


def test_num_chunks_is_bounded_by_the_rows_and_upper_case_suffix_and_fps_are_honoured(tmp_path):
    videos = tmp_path / "v"
    make_mp4(videos / "a.mp4", 64)
    make_mp4(videos / "B.MP4", 64)
    make_mp4(videos / "c.mp4", 64, fps=30.0)  # 24 fps rule: 21 frames; at its real 30 fps only 17 -> 13
    res = entry(
        "flowportal_manifest",
        f"video_dir={videos}",
        f"batch_dir={tmp_path / 'b'}",
        "num_select=0",
        "num_chunks=100000",
    )
    assert res.returncode == 0, res.stderr
    assert "num_chunks=100000 bounded by the 3 rows" in res.stdout
    man = mf.load(tmp_path / "b")
    assert man.num_chunks == 3 and len(list(man.gen_dir.glob("chunk*.csv"))) == 3
    rows = {r["video_name"]: r for i in range(3) for r in mf.read_manifest(man.chunk(i))}
    assert set(rows) == {"a", "B", "c"} and rows["a"]["k_frames"] == "21" and rows["c"]["k_frames"] == "13"
    assert mf.resolve_input(videos, "B") == videos / "B.MP4"
    assert man.info["original_names"]["chunk<i>.csv"] == "h2s_unselected_chunk<i>.csv"


def test_regeneration_switches_atomically_and_readers_verify(tmp_path):
    videos = tmp_path / "v"
    for i in range(4):
        make_mp4(videos / f"v{i}.mp4", 40)
    batch = make_manifest(videos, tmp_path / "b", num_select=0, num_chunks=2)
    old = mf.load(batch)
    old_rows = mf.read_manifest(old.chunk(0))

    class Killed(Exception):
        pass

    class Boom(dict):  # the regeneration dies after writing one new file, as a kill would leave it
        def items(self):
            yield "chunk0.csv", "video_name,n_frames,k_frames,prompt_id\nzzz,40,13,0\n"
            raise Killed

    with pytest.raises(Killed):
        mf.write_generation(batch, Boom(), {"chunks": [1]})
    now = mf.load(batch)
    assert now.info["generation"] == old.info["generation"] and mf.read_manifest(now.chunk(0)) == old_rows
    orphans = [p for p in (batch / "manifest").glob("gen-*") if p.name != old.info["generation"]]
    assert len(orphans) == 1  # the killed one, never pointed at
    make_manifest(videos, tmp_path / "b", num_select=0, num_chunks=3)
    again = mf.load(batch)
    gens = sorted(p.name for p in (batch / "manifest").glob("gen-*"))
    assert gens == sorted([again.info["generation"], old.info["generation"]]) and again.num_chunks == 3
    # a chunk edited behind the manifest's back is refused by the driver and by status
    path = again.chunk(1)
    path.write_text(path.read_text() + "ghost,40,13,0\n")
    for app in ("flowportal_batch", "flowportal_status"):
        args = [f"batch_dir={batch}", f"video_dir={videos}"] + (
            ["chunk=1"] if app == "flowportal_batch" else []
        )
        res = entry(app, *args)
        assert res.returncode == 2, res.stdout
        assert "chunk1.csv does not match manifest.json" in res.stderr and "regenerate" in res.stderr


def test_unsafe_video_name_in_a_chunk_is_refused(tmp_path):
    p = tmp_path / "chunk0.csv"
    p.write_text("video_name,n_frames,k_frames,prompt_id\n../../etc,40,13,0\n")
    with pytest.raises(UserError, match="is not a plain file name"):
        mf.read_manifest(p)


# ------------------------------------------------------------------ claims


def test_claim_names_a_live_holder_and_takes_over_a_dead_one(tmp_path):
    path = tmp_path / "claims" / "chunk" / "chunk3.json"
    child = subprocess.Popen(["sleep", "60"])
    try:
        path.parent.mkdir(parents=True)
        path.write_text(
            json.dumps(
                {
                    "host": socket.gethostname(),
                    "pid": str(child.pid),
                    "job": "",
                    "since": "2026-01-01T00:00:00",
                }
            )
        )
        with pytest.raises(UserError) as err:
            claims.acquire(path, "chunk 3")
        assert (
            f"chunk 3 is already being processed by host {socket.gethostname()} pid {child.pid}"
            in err.value.line()
        )
    finally:
        child.kill()
        child.wait()
    mine = claims.acquire(path, "chunk 3")  # the holder is dead on this host: taken over
    assert json.loads(path.read_text())["pid"] == str(os.getpid())
    claims.release(path, mine)
    assert not path.exists() and not list(path.parent.glob("*.stale-*"))
    path.write_text(json.dumps({"host": "another-node", "pid": "1", "job": "", "since": "x"}))
    with pytest.raises(UserError) as err:
        claims.acquire(path, "chunk 3")
    assert (
        "cannot tell from here whether it runs" in err.value.line() and f"delete {path}" in err.value.line()
    )


# ------------------------------------------------------------------ item 3: the bash helpers, under bash


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1-02:03:04", "93784"),
        ("02:03:04", "7384"),
        ("03:04", "184"),
        ("5", "300"),
        ("UNLIMITED", ""),
        ("1-02", "93600"),
        ("NOT_SET", ""),
        ("", ""),
    ],
)
def test_to_seconds_under_bash_with_slurm_time_formats(value, seconds):
    res = bash(f"flowportal_to_seconds '{value}'")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == seconds


def test_continuation_options_come_from_the_task_itself():
    line = (
        "JobId=7 ArrayJobId=6 ArrayTaskId=0 JobName=fp-1a2b3c4d-o0 UserId=root(0) Account=lab QOS=(null) "
        "JobState=RUNNING TimeLimit=1-00:00:00 Partition=spark CPUs/Task=16 MinMemoryNode=100G "
        "Features=(null) Reservation=(null) StdErr=/scratch/logs/fp-6_0.err StdIn=/dev/null "
        "StdOut=/scratch/logs/fp-6_0.out TresPerNode=gres:gpu:gb10:1 "
    )
    res = bash(f"FLOWPORTAL_SIGNAL=B:USR1@300 flowportal_sbatch_opts_from_job '{line}'")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[:-1] == [
        "--job-name=fp-1a2b3c4d-o0",
        "--partition=spark",
        "--account=lab",
        "--time=1-00:00:00",
        "--mem=100G",
        "--cpus-per-task=16",
        "--gres=gpu:gb10:1",
        "--output=/scratch/logs/fp-%A_%a.out",
        "--error=/scratch/logs/fp-%A_%a.err",
        "--signal=B:USR1@300",
    ]


def test_batch_script_never_inherits_a_deadline_and_keeps_its_arguments():
    text = (REPO / "slurm" / "flowportal_batch.sbatch").read_text()
    head = text.split("suite_init", 1)[0]
    assert "unset FLOWPORTAL_DEADLINE" in head  # before anything reads it
    assert 'script_args=("$@")' in text and "trap on_usr1 USR1" in text
    res = subprocess.run(
        ["shellcheck", "-x", "slurm/flowportal_batch.sbatch", "slurm/lib/flowportal.sh"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stdout


def test_bad_batch_values_are_one_line(tmp_path):
    videos = tmp_path / "v"
    make_mp4(videos / "a.mp4", 40)
    batch = make_manifest(videos, tmp_path / "b", num_select=0, num_chunks=1)
    base = [f"batch_dir={batch}", f"video_dir={videos}", f"flowportal.checkout={CHECKOUT}"]
    for bad, msg in (
        ("chunk=abc", "chunk='abc' is not valid: it must be an integer"),
        ("chunk=0 settings=maybe", "settings='maybe' is not one of"),
        ("chunk=5", "chunk 5 is out of range"),
    ):
        res = entry("flowportal_batch", *base, *bad.split())
        assert res.returncode == 2 and msg in res.stderr and len(res.stderr.strip().splitlines()) == 1, (
            res.stderr
        )
    assert Path(mpath(batch, "prompts.txt")).is_file()
