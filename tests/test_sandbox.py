"""The sandbox for model-generated code: every hostile program fails with the reason that
names it, within its limits, and leaves the host as it was (no process, file or memory).

Tests named ``..._kernel_...`` switch the audit hook off (``_execute(audit=False)``) to
check the kernel layer underneath on its own; they are skipped where that layer is not
available (``isolation()`` says which are).
"""

from __future__ import annotations

import os
import resource
import socket
import sys
import time

import pytest

from creditbench import sandbox
from creditbench.sandbox import SandboxLimits, check_program, isolation, run_python

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the sandbox's layers are Linux's"
)

FAST = SandboxLimits(timeout_s=3.0, memory_mb=256)
SLACK_S = 1.5  # startup and clean-up on a loaded 2-core machine


def _live_strays() -> list[tuple[int, str]]:
    """Live children of this process and live processes under this process's sandbox uids."""
    me = os.getpid()
    lo = sandbox._UID_BASE + (me % (1 << 22)) * 64
    strays = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        state = fields.get("State", "").strip()
        uid = int(fields.get("Uid", "0").split()[0])
        ppid = int(fields.get("PPid", "0").strip())
        if state.startswith(("Z", "X")):
            continue
        if ppid == me or lo <= uid < lo + 64:
            strays.append((int(name), fields.get("Name", "").strip()))
    return strays


@pytest.fixture(scope="module", autouse=True)
def no_idle_helpers():
    """Earlier tests may leave idle helper processes, children of this process kept for
    reuse: math-verify's workers, and multiprocessing's resource tracker, which any
    spawned process starts (the two-process decoding test does). End them, so that the
    stray check below sees only what a sandbox test leaves."""
    from multiprocessing import resource_tracker

    from creditbench.tasks import math as math_task

    math_task._end_workers()
    resource_tracker._resource_tracker._stop()  # a no-op when it is not running
    assert _live_strays() == [], "a process left by an earlier test is still running"
    yield


@pytest.fixture(autouse=True)
def host_is_fine():
    """After every test: no process left behind, this process still small."""
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield
    deadline = time.monotonic() + 2.0
    while _live_strays() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _live_strays() == []
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert grown_mb < 64, f"host peak memory grew by {grown_mb:.0f} MB"


# ------------------------------------------------------------------------ outcomes
def test_correct_program_passes_with_its_output():
    r = run_python("import sys\nprint(sum(range(10)))\nprint('err', file=sys.stderr)", limits=FAST)
    assert (r.ok, r.returncode, r.reason) == (True, 0, None)
    assert r.stdout == "45\n" and r.stderr == "err\n"
    assert 0 < r.seconds < FAST.timeout_s


def test_check_program_passes_when_every_test_passes():
    r = check_program("def add(a, b):\n    return a + b\n", "assert add(1, 2) == 3\n", FAST)
    assert (r.ok, r.reason, r.stderr) == (True, None, "")


def test_failing_assert_fails_with_exit_code():
    r = check_program("def add(a, b):\n    return a - b\n", "assert add(1, 2) == 3\n", FAST)
    assert (r.ok, r.reason, r.returncode) == (False, "exit_code", 1)
    assert "AssertionError" in r.stderr and "tests.py" in r.stderr


def test_program_that_exits_before_its_tests_fails():
    for exit_call in ("import sys; sys.exit(0)", "import os; os._exit(0)"):
        r = check_program(
            f"def add(a, b):\n    return 0\n{exit_call}\n", "assert add(1, 2) == 3", FAST
        )
        assert (r.ok, r.reason, r.returncode) == (False, "early_exit", 0)


def test_check_program_sees_plain_values_of_every_plain_type():
    """Results cross to the tests as exact-typed plain data, exceptions by their built-in
    type, modules the program imported (stdlib) by name; anything else fails the call."""
    program = (
        "import math\n"
        "def f(kind):\n"
        "    return {'none': None, 'bool': True, 'int': -(10 ** 5000), 'float': float('inf'),\n"
        "            'str': 'h\\u00e9\\ud800', 'bytes': b'\\x00\\xff', 'list': [1, [2.5, 'x']],\n"
        "            'tuple': (1, (2,)), 'dict': {'a': {1: (None,)}}, 'set': {1, 2},\n"
        "            'frozenset': frozenset({'a'})}[kind]\n"
        "def g(x, *, scale=1):\n"
        "    if x < 0:\n        raise ValueError('negative')\n"
        "    return math.sqrt(x) * scale\n"
        "LIMIT = 7\n"
    )
    tests = (
        "assert f('none') is None and f('bool') is True\n"
        "assert type(f('int')) is int and f('int') == -(10 ** 5000)\n"
        "assert f('float') == float('inf') and f('str') == 'h\\u00e9\\ud800'\n"
        "assert f('bytes') == b'\\x00\\xff' and f('list') == [1, [2.5, 'x']]\n"
        "assert type(f('tuple')) is tuple and f('tuple') == (1, (2,))\n"
        "assert f('dict') == {'a': {1: (None,)}}\n"
        "assert type(f('set')) is set and f('set') == {1, 2}\n"
        "assert type(f('frozenset')) is frozenset and f('frozenset') == frozenset({'a'})\n"
        "assert math.isclose(g(4, scale=2), 4.0) and LIMIT == 7\n"
        "try:\n    g(-1)\nexcept ValueError as e:\n    assert str(e) == 'negative'\n"
        "else:\n    raise AssertionError('no error')\n"
    )
    r = check_program(program, tests, FAST)
    assert (r.ok, r.reason) == (True, None), r.stderr
    # a value of a type the program defines never reaches the tests: the call fails
    r = check_program(
        "class Two(int):\n    pass\ndef f():\n    return Two(2)\n", "assert f() == 2\n", FAST
    )
    assert (r.ok, r.reason) == (False, "exit_code")
    assert "TypeError: not plain data: Two" in r.stderr


def test_stdin_reaches_the_program():
    r = run_python("print(input()[::-1])", stdin="olleh\n", limits=FAST)
    assert r.ok and r.stdout == "hello\n"


def test_syntax_error_fails_with_syntax():
    r = run_python("def f(:\n    pass\n", limits=FAST)
    assert (r.ok, r.reason) == (False, "syntax")
    assert "SyntaxError" in r.stderr
    r = check_program("def f():\n    return 1\n", "assert f( == 1\n", FAST)
    assert (r.ok, r.reason) == (False, "syntax")


def test_invalid_utf8_output_is_replaced():
    r = run_python("import sys\nsys.stdout.buffer.write(b'ok \\xff\\xfe!\\n')", limits=FAST)
    assert r.ok and r.stdout == "ok \ufffd\ufffd!\n"


# -------------------------------------------------------------------------- limits
def test_infinite_loop_times_out_on_the_wall_clock():
    limits = SandboxLimits(timeout_s=1.0)
    t = time.monotonic()
    r = run_python("while True:\n    pass\n", limits=limits)
    elapsed = time.monotonic() - t
    assert (r.ok, r.reason) == (False, "timeout")
    assert limits.timeout_s <= r.seconds < limits.timeout_s + SLACK_S
    assert elapsed < limits.timeout_s + SLACK_S
    r = run_python("import time\ntime.sleep(60)\n", limits=limits)  # idle, no CPU used
    assert (r.ok, r.reason) == (False, "timeout")


def test_huge_allocation_hits_the_memory_limit():
    r = run_python("x = bytearray(8 * 1024 ** 3)\n", limits=FAST)
    assert (r.ok, r.reason) == (False, "memory")
    r = run_python("x = [0] * 10 ** 9\n", limits=FAST)
    assert (r.ok, r.reason) == (False, "memory")


def test_stdout_flood_stops_at_the_output_limit():
    limits = SandboxLimits(timeout_s=3.0, max_output_bytes=1 << 14)
    t = time.monotonic()
    r = run_python(
        "import sys\nb = b'x' * (1 << 20)\nwhile True:\n    sys.stdout.buffer.write(b)\n",
        limits=limits,
    )
    assert (r.ok, r.reason) == (False, "output_limit")
    assert len(r.stdout) == limits.max_output_bytes
    assert time.monotonic() - t < 2.0  # killed on overflow, not at the timeout
    r = run_python("import sys\nwhile True:\n    sys.stderr.write('e' * 1000)\n", limits=limits)
    assert (r.ok, r.reason) == (False, "output_limit")
    assert len(r.stderr) <= limits.max_output_bytes


def test_big_file_hits_the_file_size_limit():
    r = run_python(
        "open('big', 'wb').write(b'x' * (3 << 20))\n", limits=SandboxLimits(max_file_mb=1)
    )
    assert (r.ok, r.reason) == (False, "file_size")


# -------------------------------------------------------------------- processes
def test_fork_storm_is_blocked():
    r = run_python("import os\nwhile True:\n    os.fork()\n", limits=FAST)
    assert (r.ok, r.reason, r.returncode) == (False, "blocked: process", sandbox.BLOCKED_EXIT)


def test_subprocess_spawn_is_blocked():
    for code in (
        "import subprocess\nsubprocess.run(['sleep', '30'])\n",
        "import os\nos.system('sleep 30')\n",
        "import os\nos.execv('/bin/sleep', ['sleep', '30'])\n",
        "import multiprocessing as mp\nmp.Pool(4).map(abs, [1, 2])\n",
    ):
        r = run_python(code, limits=FAST)
        assert (r.ok, r.reason) == (False, "blocked: process"), code


def test_kernel_refuses_fork_where_the_sandbox_has_its_own_uid():
    if not isolation()["process_limit_enforced_by_kernel"]:
        pytest.skip("RLIMIT_NPROC is not enforced here (root without a uid of its own)")
    r = sandbox._execute(
        [("program.py", "import os\nwhile True:\n    os.fork()\n")], "", FAST, audit=False
    )
    assert (r.ok, r.reason) == (False, "exit_code")
    assert "BlockingIOError" in r.stderr


def test_processes_left_behind_are_killed_when_processes_are_allowed():
    code = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\nprint('parent')\n"
    r = run_python(code, limits=SandboxLimits(timeout_s=3.0, max_processes=4))
    assert r.ok and r.stdout == "parent\n"  # and the autouse check finds no live stray


# ---------------------------------------------------------------------- network
@pytest.fixture
def listener():
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.3)
    yield srv
    srv.close()


def _assert_no_connection(srv: socket.socket) -> None:
    with pytest.raises(TimeoutError):
        srv.accept()


def test_network_connections_are_blocked(listener):
    port = listener.getsockname()[1]
    for code in (
        f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n",
        f"import socket\ns = socket.socket()\ns.connect(('127.0.0.1', {port}))\n",
        "import socket\ns = socket.socket()\ns.settimeout(1)\ns.connect(('1.1.1.1', 80))\n",
        "import urllib.request\nurllib.request.urlopen('http://example.com', timeout=1)\n",
        "import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('8.8.8.8', 53))\n",
    ):
        r = run_python(code, limits=FAST)
        assert (r.ok, r.reason) == (False, "blocked: network"), code
    _assert_no_connection(listener)


def test_kernel_network_namespace_has_no_route(listener):
    if not isolation()["network_namespace"]:
        pytest.skip("no network namespace on this machine")
    port = listener.getsockname()[1]
    code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
    r = sandbox._execute([("program.py", code)], "", FAST, audit=False)
    assert (r.ok, r.reason) == (False, "exit_code")
    assert "OSError" in r.stderr
    _assert_no_connection(listener)


# ------------------------------------------------------------------ files, env
def test_writing_outside_the_sandbox_is_blocked(tmp_path):
    target = tmp_path / "pwned.txt"
    for code in (
        f"open({str(target)!r}, 'w').write('x')\n",
        f"import os\nos.close(os.open({str(target)!r}, os.O_CREAT | os.O_WRONLY))\n",
        f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')\n",
        f"import os\nos.symlink({str(target)!r}, 'link')\n",
        f"import os\nos.chdir({str(tmp_path)!r})\nopen('pwned.txt', 'w')\n",
        f"import shutil\nshutil.rmtree({str(tmp_path)!r})\n",
    ):
        r = run_python(code, limits=FAST)
        assert (r.ok, r.reason) == (False, "blocked: write outside sandbox"), code
    assert not target.exists() and tmp_path.is_dir()


def test_kernel_refuses_writes_where_the_sandbox_has_its_own_uid(tmp_path):
    if not isolation()["unprivileged_uid"]:
        pytest.skip("the sandbox runs under the host's uid here")
    target = tmp_path / "pwned.txt"
    r = sandbox._execute([("program.py", f"open({str(target)!r}, 'w')\n")], "", FAST, audit=False)
    assert (r.ok, r.reason) == (False, "exit_code")
    assert "PermissionError" in r.stderr and not target.exists()


def test_writing_inside_the_private_directory_works_and_it_is_removed():
    code = (
        "import os, tempfile\n"
        "open('out.txt', 'w').write('x')\n"
        "with tempfile.NamedTemporaryFile('w') as f:\n    f.write('y')\n"
        "print(os.getcwd())\nprint(os.environ['HOME'])\nprint(os.environ['TMPDIR'])\n"
    )
    r = run_python(code, limits=FAST)
    assert r.ok, r.stderr
    cwd, home, tmpdir = r.stdout.split()
    assert cwd == home == tmpdir and "creditbench-sandbox-" in cwd
    assert not os.path.exists(cwd)


def test_host_environment_is_not_readable(monkeypatch):
    secret = "s3cr3t-" + os.urandom(4).hex()
    monkeypatch.setenv("CREDITBENCH_TEST_SECRET", secret)
    r = run_python("import os\nprint(dict(os.environ))\n", limits=FAST)
    assert r.ok and secret not in r.stdout and "CREDITBENCH_TEST_SECRET" not in r.stdout
    r = run_python("import os\nprint(open(f'/proc/{os.getppid()}/environ').read())\n", limits=FAST)
    assert (r.ok, r.reason) == (False, "blocked: host process")
    assert secret not in r.stdout + r.stderr


def test_native_code_is_blocked():
    r = run_python("import ctypes\nctypes.CDLL(None).system(b'true')\n", limits=FAST)
    assert (r.ok, r.reason) == (False, "blocked: native code")


def test_isolation_reports_the_layers():
    layers = isolation()
    assert layers["separate_process"] and layers["audit_hook"] and layers["empty_environment"]
    assert set(layers["rlimits"]) >= {"AS", "DATA", "CPU", "FSIZE", "CORE=0"}
    assert layers["network_namespace"] in (None, "netns", "userns+netns")


def test_limits_are_validated():
    with pytest.raises(ValueError, match="timeout_s"):
        SandboxLimits(timeout_s=0)
    with pytest.raises(ValueError, match="max_processes"):
        SandboxLimits(max_processes=0)
