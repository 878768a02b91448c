"""creditbench.placement: concurrent jobs get disjoint GPUs and ports from the pool, a job
waits while too few are free, and a killed job's claim goes with it. The jobs are real
processes started through the wrapper, on a fake count of GPUs (CREDITBENCH_GPUS: no GPU
needed); each reports the environment it received."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from creditbench.placement import (
    PlacementError,
    claim,
    visible_devices,
    with_accelerate_port,
)

# the job: write the placement it received, then hold it until told to go (or killed)
JOB = """
import json, os, sys, time
from pathlib import Path
out = Path(sys.argv[1])
env = {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "MASTER_PORT", "CUDA_DEVICE_ORDER")}
out.with_suffix(".tmp").write_text(json.dumps(env))
out.with_suffix(".tmp").replace(out)
while not out.with_suffix(".go").exists():
    time.sleep(0.05)
"""


def _env(tmp_path: Path, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}
    env.update(CREDITBENCH_GPU_POOL=str(tmp_path / "pool"), CREDITBENCH_GPUS="4")
    env.update(extra)
    return env


class Job:
    """A command run through ``python -m creditbench.placement``."""

    def __init__(self, tmp_path: Path, name: str, gpus: int, *options: str, **env):
        self.out = tmp_path / f"{name}.json"
        cmd = [sys.executable, "-m", "creditbench.placement", "--gpus", str(gpus)]
        cmd += ["--port-base", str(PORT_BASE), *options, "--"]
        cmd += [sys.executable, "-c", JOB, str(self.out)]
        self.proc = subprocess.Popen(
            cmd, env=_env(tmp_path, **env), stderr=subprocess.PIPE, text=True
        )

    def placed(self, timeout: float = 60) -> dict:
        """The environment the job received (waits until it has started)."""
        deadline = time.monotonic() + timeout
        while not self.out.exists():
            assert self.proc.poll() is None, self.proc.stderr.read()
            assert time.monotonic() < deadline, "the job did not start"
            time.sleep(0.05)
        return json.loads(self.out.read_text())

    def devices(self) -> set[str]:
        return set(self.placed()["CUDA_VISIBLE_DEVICES"].split(","))

    def finish(self) -> int:
        self.out.with_suffix(".go").touch()
        return self.proc.wait(timeout=60)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=60)


PORT_BASE = 20000 + os.getpid() % 20000  # away from other test runs' ports


@pytest.fixture
def jobs(tmp_path):
    started: list[Job] = []

    def start(name, gpus, *options, **env):
        started.append(Job(tmp_path, name, gpus, *options, **env))
        return started[-1]

    yield start
    for job in started:
        job.kill()
        job.proc.stderr.close()


def test_concurrent_jobs_get_disjoint_gpus_and_ports_and_a_third_waits_for_one(jobs):
    a, b = jobs("a", 2), jobs("b", 2)
    env_a, env_b = a.placed(), b.placed()
    assert len(a.devices()) == len(b.devices()) == 2
    assert a.devices() | b.devices() == {"0", "1", "2", "3"}  # disjoint, from the 4
    assert env_a["MASTER_PORT"] != env_b["MASTER_PORT"]
    assert env_a["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"

    c = jobs("c", 2)  # both hold all 4: it waits, saying for whom
    time.sleep(2)
    assert not c.out.exists() and c.proc.poll() is None
    assert a.finish() == 0
    assert c.devices() == a.devices()  # a's GPUs, freed when it ended
    assert c.placed()["MASTER_PORT"] != env_b["MASTER_PORT"]
    assert "waiting for 2 free GPU(s)" in c.proc.stderr.readline()
    assert b.finish() == 0 and c.finish() == 0


def test_a_job_killed_with_sigkill_releases_its_gpus(jobs):
    a = jobs("a", 3)
    held = a.devices()
    a.kill()  # no cleanup runs: the kernel drops its locks
    b = jobs("b", 3)
    assert b.devices() == held
    assert b.finish() == 0


def test_a_job_that_cannot_get_its_gpus_in_time_fails_naming_the_holder(jobs):
    a = jobs("a", 3)
    a.placed()
    b = jobs("b", 2, "--timeout", "1")
    assert b.proc.wait(timeout=60) == 3
    err = b.proc.stderr.read()
    assert "timed out" in err and "waiting for 2 free GPU(s)" in err
    assert f"pid {a.proc.pid}" in err  # the holder, as its lock file says
    assert not b.out.exists()


def test_a_job_that_asks_for_no_gpu_is_kept_off_them_but_gets_a_port(jobs):
    a, b = jobs("a", 0), jobs("b", 0)
    assert a.placed()["CUDA_VISIBLE_DEVICES"] == "" == b.placed()["CUDA_VISIBLE_DEVICES"]
    assert a.placed()["MASTER_PORT"] != b.placed()["MASTER_PORT"]


def test_under_slurm_the_devices_are_the_schedulers(jobs):
    a = jobs("a", 1, CUDA_VISIBLE_DEVICES="0", SLURM_JOB_ID="42")
    assert a.placed()["CUDA_VISIBLE_DEVICES"] == "0" and a.placed()["MASTER_PORT"]


def test_more_gpus_than_the_machine_shows_fail_at_once(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "creditbench.placement", "--gpus", "5", "--", "true"],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 3
    assert "needs 5 GPUs; this machine shows 4" in proc.stderr


def test_the_visible_devices_follow_the_local_gpu_profiles_count():
    assert visible_devices({"CREDITBENCH_GPUS": "3"}) == ["0", "1", "2"]
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "4,6, 7"}) == ["4", "6", "7"]
    # the count takes the first of the visible ones: physical ids, never renumbered
    assert visible_devices({"CREDITBENCH_GPUS": "2", "CUDA_VISIBLE_DEVICES": "5,3,1"}) == [
        "5",
        "3",
    ]
    assert visible_devices({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "-1"}) == []


def test_no_visible_gpu_leaves_the_environment_as_it_is(tmp_path):
    env = {"CUDA_VISIBLE_DEVICES": ""}
    with (
        open(os.devnull, "w") as quiet,
        claim(1, tmp_path / "pool", env=env, port_base=PORT_BASE, log=quiet) as p,
    ):
        assert p.devices is None and "CUDA_VISIBLE_DEVICES" not in p.env
        assert p.env["MASTER_PORT"] == str(p.port)


def test_claims_in_one_process_are_disjoint_and_released_on_exit(tmp_path):
    env, pool = {"CREDITBENCH_GPUS": "2"}, tmp_path / "pool"
    with (
        claim(1, pool, env=env, port_base=PORT_BASE) as a,
        claim(1, pool, env=env, port_base=PORT_BASE) as b,
    ):
        assert {*a.devices, *b.devices} == {"0", "1"} and a.port != b.port
        third = claim(1, pool, env=env, timeout=0.2, poll=0.05, port_base=PORT_BASE)
        with pytest.raises(PlacementError, match="timed out"), third:
            pass
    with claim(2, pool, env=env, port_base=PORT_BASE) as c:
        assert c.devices == ["0", "1"]


def test_accelerate_launch_gets_the_claimed_port():
    cmd = ["accelerate", "launch", "--num_processes", "2", "-m", "creditbench.cli"]
    assert with_accelerate_port(cmd, 29517) == [
        "accelerate",
        "launch",
        "--main_process_port",
        "29517",
        *cmd[2:],
    ]
    own = ["accelerate", "launch", "--main_process_port=1234", "x.py"]
    assert with_accelerate_port(own, 29517) == own
    assert with_accelerate_port(["creditbench", "train"], 29517) == ["creditbench", "train"]
