"""Placement of concurrent local jobs on the machine's GPUs and rendezvous ports.

``creditbench-place --gpus N -- COMMAND ...`` claims N of the machine's visible GPUs and
one rendezvous port, then replaces itself with COMMAND, which runs with
``CUDA_VISIBLE_DEVICES`` set to the claimed devices (so ``cuda`` / ``cuda:0`` inside it
is the first claimed one) and ``MASTER_PORT`` set to the port; an ``accelerate launch``
command also gets ``--main_process_port PORT``. The workflow's training, warm start and
evaluation rules start their commands this way: Snakemake's ``--resources gpu=K``
bounds how many GPUs its jobs take at once, the pool decides which ones.

The pool is a folder of lock files (``$CREDITBENCH_GPU_POOL``, default
``<tmp>/creditbench-gpu-pool-<uid>``: one per user and machine, so concurrent
Snakemake runs of any experiment or checkout share it). A claim is an exclusive
``flock`` on ``gpu-<device>.lock`` per device and ``port-<port>.lock`` for the port,
taken together under the pool's own lock and kept open across the exec: the job holds
them for its lifetime, and the kernel releases them when it exits however it ends
(SIGKILL included), so no claim outlives its job. A job that finds too few free devices
waits (``--timeout`` bounds the wait) and says whom it waits for.

The devices: ``$CREDITBENCH_GPUS`` (a count; the first that many of
``$CUDA_VISIBLE_DEVICES`` when that is set, else indices 0..N-1), else the entries of
``$CUDA_VISIBLE_DEVICES``, else the GPUs ``nvidia-smi -L`` lists: the local-gpu
profile's count. A job that asks for no GPU on a machine that shows some gets
``CUDA_VISIBLE_DEVICES=""`` (the testbed's CPU jobs stay off the GPUs, and its results
do not depend on the machine). A machine that shows none leaves the environment as it
is. Under a scheduler (``$SLURM_JOB_ID`` set) the scheduler has placed the job: its
devices are left alone and only the port is claimed.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

POOL_ENV = "CREDITBENCH_GPU_POOL"
PORT_BASE = 29500  # accelerate's and torchrun's default port, the first one tried
PORT_SPAN = 1000  # ports tried from PORT_BASE
REPORT_EVERY_S = 600.0  # a waiting job repeats whom it waits for


class PlacementError(RuntimeError):
    """A job's claim cannot be met (more GPUs than the machine shows, a timeout)."""


def visible_devices(env: Mapping[str, str] | None = None) -> list[str]:
    """The device ids (indices or UUIDs) of the machine's GPUs a job may claim."""
    env = os.environ if env is None else env
    listed = env.get("CUDA_VISIBLE_DEVICES")
    devices = None
    if listed is not None:
        devices = [d.strip() for d in listed.split(",") if d.strip() not in ("", "-1")]
    if env.get("CREDITBENCH_GPUS"):
        count = int(env["CREDITBENCH_GPUS"])
        return devices[:count] if devices is not None else [str(i) for i in range(count)]
    if devices is not None:
        return devices
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listing = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return []
    count = sum(line.startswith("GPU ") for line in listing.stdout.splitlines())
    return [str(i) for i in range(count)]


def default_pool(env: Mapping[str, str] | None = None) -> Path:
    """``$CREDITBENCH_GPU_POOL``, else one folder per user in the machine's temp folder."""
    env = os.environ if env is None else env
    if env.get(POOL_ENV):
        return Path(env[POOL_ENV])
    return Path(tempfile.gettempdir()) / f"creditbench-gpu-pool-{os.getuid()}"


@dataclass
class Placement:
    """A job's claim: its devices (None: left as the environment has them), its port, the
    environment variables to set, and the open lock files that hold the claim."""

    devices: list[str] | None
    port: int
    env: dict[str, str]
    fds: list[int] = field(default_factory=list, repr=False)


def _lock_name(kind: str, key: str) -> str:
    return f"{kind}-{re.sub(r'[^A-Za-z0-9._-]', '_', key)}.lock"


def _try_lock(path: Path, holder: str) -> int | None:
    """An open descriptor holding ``path`` exclusively (the holder written in it), or
    None when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.pwrite(fd, holder.encode(), 0)
    return fd


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def _claim_port(pool: Path, base: int, holder: str) -> tuple[int, int]:
    """The first port from ``base`` that no pool job holds and nothing else has bound."""
    for port in range(base, base + PORT_SPAN):
        fd = _try_lock(pool / _lock_name("port", str(port)), holder)
        if fd is None:
            continue
        if _bindable(port):
            return port, fd
        os.close(fd)
    raise PlacementError(f"no free rendezvous port in {base}..{base + PORT_SPAN - 1}")


def _holder_of(pool: Path, device: str) -> str:
    """Who holds a device, as its lock file says."""
    try:
        text = (pool / _lock_name("gpu", device)).read_text().strip()
    except OSError:
        text = ""
    return f"GPU {device}: {text or 'a job'}"


@contextmanager
def _pool_mutex(pool: Path) -> Iterator[None]:
    fd = os.open(pool / "pool.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextmanager
def claim(
    gpus: int,
    pool: str | Path | None = None,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    port_base: int = PORT_BASE,
    poll: float = 0.5,
    holder: str = "",
    log=None,
) -> Iterator[Placement]:
    """Claim ``gpus`` of the visible devices and a port for as long as the block runs.

    Waits while too few devices are free, at most ``timeout`` seconds (None: as long as
    it takes), then raises :class:`PlacementError`. ``holder`` is written into the lock
    files (shown to jobs that wait for them).
    """
    if gpus < 0:
        raise PlacementError(f"--gpus must be 0 or more, not {gpus}")
    env = os.environ if env is None else env
    log = sys.stderr if log is None else log
    pool = Path(pool) if pool is not None else default_pool(env)
    pool.mkdir(parents=True, exist_ok=True)
    holder = f"pid {os.getpid()} {holder}".strip() + "\n"
    scheduled = bool(env.get("SLURM_JOB_ID"))
    devices = [] if scheduled else visible_devices(env)
    if gpus > len(devices) > 0:
        raise PlacementError(
            f"the job needs {gpus} GPUs; this machine shows {len(devices)} ({','.join(devices)})"
        )
    if gpus and not devices and not scheduled:
        print(
            f"creditbench-place: the job asks for {gpus} GPU(s) but none is visible "
            "(CREDITBENCH_GPUS, CUDA_VISIBLE_DEVICES, nvidia-smi): running it unplaced",
            file=log,
        )
    wanted = gpus if devices else 0
    start, reported = time.monotonic(), None
    held: dict[str, int] = {}  # device -> its lock file
    fds: list[int] = []
    try:
        while True:
            busy = []
            with _pool_mutex(pool):
                for d in devices:
                    if len(held) == wanted:
                        break
                    fd = _try_lock(pool / _lock_name("gpu", d), holder)
                    if fd is None:
                        busy.append(_holder_of(pool, d))
                    else:
                        held[d] = fd
                if len(held) == wanted:
                    port, port_fd = _claim_port(pool, port_base, holder)
                    fds = [*held.values(), port_fd]
                    break
                for fd in held.values():  # too few free: take none (all or nothing)
                    os.close(fd)
                held = {}
            waited = time.monotonic() - start
            if timeout is not None and waited >= timeout:
                raise PlacementError(
                    f"timed out after {waited:.0f} s waiting for {gpus} free GPU(s) of "
                    f"{','.join(devices)} (pool {pool}); held by {'; '.join(busy)}"
                )
            if reported is None or waited - reported >= REPORT_EVERY_S:
                print(
                    f"creditbench-place: waiting for {gpus} free GPU(s) of "
                    f"{','.join(devices)} (pool {pool}); held by {'; '.join(busy)}",
                    file=log,
                    flush=True,
                )
                reported = waited
            time.sleep(poll)
        placed = {"MASTER_PORT": str(port)}
        if devices:  # a job that asks for none is kept off the GPUs
            placed["CUDA_VISIBLE_DEVICES"] = ",".join(held)
            if "CUDA_DEVICE_ORDER" not in env:  # indices as nvidia-smi numbers the GPUs
                placed["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        yield Placement(list(held) if devices else None, port, placed, fds)
    finally:
        for fd in set(held.values()) | set(fds):
            with suppress(OSError):
                os.close(fd)


def with_accelerate_port(command: list[str], port: int) -> list[str]:
    """``accelerate launch ...`` with ``--main_process_port PORT`` unless it names one."""
    if (
        len(command) >= 2
        and Path(command[0]).name == "accelerate"
        and command[1] == "launch"
        and not any(a.split("=")[0] == "--main_process_port" for a in command[2:])
    ):
        return [command[0], "launch", "--main_process_port", str(port), *command[2:]]
    return list(command)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="creditbench-place",
        description="Run a command on GPUs claimed from the machine's pool (see "
        "creditbench/placement.py): creditbench-place --gpus N -- COMMAND ...",
    )
    parser.add_argument("--gpus", type=int, required=True, help="GPUs the job needs (0: none)")
    parser.add_argument("--pool", help=f"the pool's folder (default ${POOL_ENV} or a temp one)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=float(os.environ["CREDITBENCH_GPU_WAIT"])
        if os.environ.get("CREDITBENCH_GPU_WAIT")
        else None,
        help="give up after waiting this many seconds for free GPUs (default "
        "$CREDITBENCH_GPU_WAIT, else wait as long as it takes)",
    )
    parser.add_argument("--port-base", type=int, default=PORT_BASE, help="first port tried")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (creditbench-place --gpus N -- COMMAND ...)")
    try:
        with claim(
            args.gpus, args.pool, args.timeout, port_base=args.port_base, holder=" ".join(command)
        ) as placement:
            devices = "unchanged" if placement.devices is None else ",".join(placement.devices)
            print(
                f"creditbench-place: GPUs {devices or 'none'}, port {placement.port}",
                file=sys.stderr,
                flush=True,
            )
            for fd in placement.fds:  # the exec'd job holds the claim
                os.set_inheritable(fd, True)
            command = with_accelerate_port(command, placement.port)
            try:
                os.execvpe(command[0], command, {**os.environ, **placement.env})
            except OSError as e:
                print(f"creditbench-place: cannot run {command[0]!r}: {e}", file=sys.stderr)
                return 127
    except PlacementError as e:
        print(f"creditbench-place: error: {e}", file=sys.stderr)
        return 3
    return 0  # not reached: the exec replaced this process


if __name__ == "__main__":
    sys.exit(main())
