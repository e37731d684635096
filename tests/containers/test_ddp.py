"""The DDP template's rules without Slurm: task shapes, the memory preflight with the status quo's
numbers, Lightning's port rule, a rank started without srun, and the hand-written script check."""

from __future__ import annotations

import pytest

from containers.ddp import (
    Loader,
    Shape,
    check_shape,
    launched_without_srun,
    lint_script,
    master_addr,
    master_port,
    memory_check,
    parse_mem_gb,
)
from suite_core.errors import UserError
from tests.helpers import assert_one_line_error, cli

# the status quo: 4 nodes x 4 L40S, one rank per GPU, 8 loader workers per rank at ~2 GB each
STATUS_QUO = dict(nodes=4, ntasks_per_node=4, gpus_per_node=4, cpus_per_task=9)
LOADER = Loader(num_workers=8, worker_rss="2G", rank_rss="4G")


def test_memory_units_are_slurms():
    assert parse_mem_gb("256G") == 256 and parse_mem_gb("1T") == 1024 and parse_mem_gb("512M") == 0.5
    assert parse_mem_gb("64000") == pytest.approx(62.5) and parse_mem_gb(2048) == 2
    with pytest.raises(UserError, match="not a Slurm memory size"):
        parse_mem_gb("lots")


def test_status_quo_oom_is_refused_with_the_numbers():
    """256 GB for the job (64 GB per node x 4): 128 workers x 2 GB alone fill it."""
    v = memory_check(Shape(**STATUS_QUO, mem_per_node="64G"), LOADER)
    assert not v.ok
    assert ("16 ranks x 8 workers x ~2 GB = 256 GB of data-loader workers + 16 ranks x ~4 GB = 320 GB"
            in v.line)
    assert "> 230.4 GB usable for the job (64 GB per node x 4)" in v.line
    assert "per node 4 ranks need 80 GB > 57.6 GB usable of 64 GB (--mem=64G" in v.line
    assert v.line.endswith("fix: num_workers=5 or mem=89G per node")
    # the same job asked per GPU is judged the same way
    assert not memory_check(Shape(**STATUS_QUO, mem_per_gpu="16G"), LOADER).ok


@pytest.mark.parametrize("fix", [dict(mem_per_node="64G", workers=5), dict(mem_per_node="89G", workers=8),
                                 dict(mem_per_node="256G", workers=8)])
def test_the_fixes_pass(fix):
    """Fewer workers, or the memory the message asks for; 256 GB per node fits 80 GB per node."""
    v = memory_check(Shape(**STATUS_QUO, mem_per_node=fix["mem_per_node"]),
                     Loader(fix["workers"], "2G", "4G"))
    assert v.ok, v.line
    assert "fits" in v.line


def test_cpu_oversubscription_is_a_warning():
    v = memory_check(Shape(4, 4, 4, cpus_per_task=4, mem_per_node="256G"), LOADER)
    assert v.ok and "36 busy processes per node on 16 CPUs" in v.warnings[0]


def test_no_memory_request_warns():
    v = memory_check(Shape(1, 1, 1, cpus_per_task=4), Loader(2, "1G", "1G"))
    assert v.ok and v.warnings == [v.warnings[0]] and "sets no memory" in v.warnings[0]


def test_more_tasks_than_gpus_hangs_and_is_refused():
    with pytest.raises(UserError) as err:
        check_shape(Shape(nodes=1, ntasks_per_node=8, gpus_per_node=4), where="job")
    assert "8 tasks per node but 4 GPUs per node" in err.value.line()
    assert "MEMBER: 4/8" in err.value.line() and "ntasks_per_node: 4" in err.value.line()


def test_fewer_tasks_than_gpus_and_torchrun_with_many_tasks_are_refused():
    with pytest.raises(UserError, match="Lightning's SLURM detection"):
        check_shape(Shape(nodes=2, ntasks_per_node=2, gpus_per_node=4), where="job")
    with pytest.raises(UserError, match="torchrun starts each node's ranks itself"):
        check_shape(Shape(nodes=2, ntasks_per_node=4, gpus_per_node=4, launcher="torchrun"), where="job")
    torchrun = Shape(nodes=4, ntasks_per_node=1, gpus_per_node=4, launcher="torchrun")
    assert check_shape(torchrun, where="j") == []
    assert check_shape(Shape(nodes=4, ntasks_per_node=4, gpus_per_node=4), where="j") == []


def test_master_port_follows_lightning():
    assert master_port("12") == 15012 and master_port("4123456") == 18456 and master_port("100000") == 15000


def test_master_addr_falls_back_to_slurms_node_address():
    said = {("scontrol", "show", "hostnames", "gpu[01-04]"): "gpu01\ngpu02\ngpu03\ngpu04\n",
            ("scontrol", "-o", "show", "node", "gpu01"): "NodeName=gpu01 NodeAddr=10.0.0.1 Foo=1\n"}

    def scontrol(argv):
        return said[tuple(argv)]

    assert master_addr("gpu[01-04]", scontrol, resolves=lambda h: True) == "gpu01"
    assert master_addr("gpu[01-04]", scontrol, resolves=lambda h: h[0].isdigit()) == "10.0.0.1"
    with pytest.raises(UserError, match="does not resolve"):
        master_addr("gpu[01-04]", scontrol, resolves=lambda h: False)


def test_a_rank_started_without_srun_knows_it():
    batch = {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16", "SLURM_PROCID": "0", "SLURM_NTASKS_PER_NODE": "4"}
    why = launched_without_srun(batch)
    assert why and "1 of 16 ranks would join" in why and "1/16 clients joined" in why
    assert launched_without_srun({**batch, "SLURM_STEP_NUM_TASKS": "16"}) is None
    assert launched_without_srun({"SLURM_NTASKS": "1"}) is None


def _script(tmp_path, body: str, *directives: str):
    p = tmp_path / "job.sbatch"
    p.write_text("#!/bin/bash\n" + "".join(f"#SBATCH {d}\n" for d in directives) + body)
    return p


def test_lint_finds_the_status_quos_shapes(tmp_path):
    one_node = _script(tmp_path, "srun python train.py\n", "--nodes=1", "--ntasks=8", "--gres=gpu:l40s:4")
    errors, _ = lint_script(one_node)
    assert "--ntasks=8 on 1 node(s) with 4 GPU(s) per node" in errors[0]
    no_srun = _script(tmp_path, "module load x\npython train.py --devices 4\n", "--nodes=4",
                      "--ntasks-per-node=4", "--gres=gpu:l40s:4")
    errors, _ = lint_script(no_srun)
    assert "job.sbatch:6" in errors[0] and "without srun" in errors[0] and "1/16 clients joined" in errors[0]
    good = _script(tmp_path, "srun python train.py\n", "--nodes=4", "--ntasks-per-node=4",
                   "--gres=gpu:l40s:4", "--mem=64G", "--cpus-per-task=9")
    assert lint_script(good) == ([], [])
    errors, _ = lint_script(good, loader=LOADER)
    assert "256 GB of data-loader workers" in errors[0]


def test_ddp_check_command_is_one_line(tmp_path):
    script = _script(tmp_path, "python train.py\n", "--ntasks-per-node=4", "--gres=gpu:l40s:4")
    out = cli("ddp-check", str(script), "--", "--nodes=4")
    assert_one_line_error(out, "without srun", "1/16 clients joined")
    good = _script(tmp_path, "srun python train.py\n", "--ntasks-per-node=4", "--gres=gpu:l40s:4",
                   "--mem=256G")
    out = cli("ddp-check", str(good), "--num-workers", "8", "--", "--nodes=4", "--cpus-per-task=9")
    assert out.returncode == 0 and out.stdout.startswith("ok: "), out.stderr


def test_ddp_env_outside_a_job_is_one_line():
    env = {"SLURM_JOB_ID": "", "SLURM_JOB_NODELIST": ""}
    out = cli("ddp-env", env=env)
    assert_one_line_error(out, "not inside a Slurm job")
