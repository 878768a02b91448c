"""A sandbox for model-generated Python: the only place such code ever runs.

``run_python(code)`` runs a program in a fresh ``python -I`` child of this interpreter;
``check_program(program, tests)`` runs a program and its tests (asserts) and is ``ok``
only if the tests ran to their end. Nothing is ever executed in this process.

``check_program`` runs the program and the tests in two children joined by pipes: the
tests call the program's functions through stubs, and each result crosses as exact-typed
plain data (None, bool, int, float, str, bytes; list, tuple, dict, set, frozenset of them),
decoded in the tests' process into fresh built-in objects. So no object the program
defines decides a test (``__eq__`` overrides, subclasses of ``int``: the call fails), its
patched builtins stay in its own process, and the names it defines never shadow a
built-in for the tests. A pass is proven by the tests' process alone: each call and the
final acknowledgement carry a fresh token the program must echo, and the tests' stderr
ends with a per-run secret the program's process never has.

Layers, each of which alone stops the common accidents, applied where the machine allows
(``isolation()`` reports which ones did; they are probed once per process):

- **process**: a separate interpreter in its own session and process group, killed as a
  group (and, with its own uid, every process of that uid) when it ends or runs over;
  ``PR_SET_PDEATHSIG`` so that it dies with its parent; ``no_new_privs``.
- **limits** (rlimits, hard = soft so the program cannot raise them): address space and
  data (memory), CPU time, file size, open files, no core dumps; processes (``NPROC``).
- **wall clock**: the whole run, startup included, within ``timeout_s``.
- **output**: stdout and stderr read in chunks and capped at ``max_output_bytes`` each;
  the program is killed on overflow, nothing is buffered beyond the cap.
- **files and environment**: a private working directory (also ``HOME`` and ``TMPDIR``),
  removed afterwards; an empty environment.
- **unprivileged uid**: as root (where ``RLIMIT_NPROC`` is not enforced) the child drops
  to a uid of its own, so the kernel enforces the process limit and refuses writes to
  the host's files. Where the interpreter lives in a directory that uid cannot reach
  (e.g. ``/root/.pyenv``), the child keeps ``CAP_DAC_READ_SEARCH`` (read and search
  only, never write) so that it can start.
- **network namespace**: a new network namespace (only a downed loopback): as root with
  ``unshare(CLONE_NEWNET)``, else in a new user namespace where unprivileged ones exist.
- **audit hook** (``sys.addaudithook``, which Python code cannot remove), installed by a
  bootstrap before the program runs: it refuses network use (connect, bind, sendto, name
  lookups), process creation (fork, exec, spawn, ``subprocess``, ``os.system``) unless
  ``max_processes > 1``, native code (``ctypes``, sub-interpreters, test modules),
  signals to other processes, reading other processes' ``/proc`` entries, and writing,
  creating, renaming, linking or removing anything outside the private directory. A
  refused action ends the program at once (exit code ``BLOCKED_EXIT``) with a marker
  line on stderr, and the result's ``reason`` names it (``"blocked: network"``, ...).

The audit hook is defence in depth, not a boundary on its own (CPython says as much);
the kernel layers are what a hostile program meets next. ``reason`` values: ``None``
(ok), ``"timeout"``, ``"memory"``, ``"output_limit"``, ``"file_size"``, ``"syntax"``,
``"exit_code"``, ``"early_exit"`` (``check_program``: the program's process ended, or
stopped answering, before its tests finished), ``"blocked: <what>"``, ``"signal: <NAME>"``.
Limits apply to each of ``check_program``'s two children, within one wall clock.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import math
import os
import resource
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

BLOCKED_EXIT = 113  # the audit hook refused an action
MEMORY_EXIT = 114  # the program raised MemoryError
SYNTAX_EXIT = 115  # the program (or its tests) does not compile
ENDED_EXIT = 116  # check_program's judge: the program's process ended before the tests did
MARKER = "creditbench-sandbox: "  # starts the bootstrap's own lines on stderr

_CHUNK = 1 << 16
_EXIT_GRACE_S = 1.0  # after the program exits, how long to drain pipes held by strays
_MESSAGE_CAP = 64 << 20  # check_program: the largest call or result between the children


@dataclass(frozen=True)
class SandboxResult:
    ok: bool  # exited 0 within every limit
    returncode: int | None
    stdout: str  # truncated to the limit (invalid UTF-8 replaced)
    stderr: str
    reason: str | None  # None when ok; see the module docstring
    seconds: float


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 10.0  # wall clock, interpreter startup included
    memory_mb: int = 1024  # address space (RLIMIT_AS) and data (RLIMIT_DATA)
    max_output_bytes: int = 1 << 16  # per stream
    max_processes: int = 1  # 1: no subprocesses (nor threads, where NPROC is enforced)
    max_file_mb: int = 16  # largest file the program may write (RLIMIT_FSIZE)

    def __post_init__(self):
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        for name in ("memory_mb", "max_output_bytes", "max_processes", "max_file_mb"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


class SandboxError(RuntimeError):
    """The sandbox itself failed (not the program): it could not start a child."""


# ----------------------------------------------------------------------- the child
# Runs as ``python -I -B -c _BOOTSTRAP CONFIG`` in the private directory. Everything it
# needs is imported before the hook goes in; then the program's units (program.py, and
# tests.py for check_program) are compiled and executed in one ``__main__`` namespace.
_BOOTSTRAP = r"""
import builtins, importlib, json, keyword, os, re, sys, traceback


def _sandbox_main(cfg):
    import json, traceback  # noqa: F401  (before the hook: the program may not import)

    marker = cfg["marker"]
    root = os.path.realpath(os.getcwd())
    nonce = b""
    if cfg["nonce_fd"] >= 0:
        nonce = os.read(cfg["nonce_fd"], 256)
        os.close(cfg["nonce_fd"])
    processes = cfg["processes"]
    own_pid = os.getpid()
    devices = frozenset(("/dev/null", "/dev/stdout", "/dev/stderr", "/dev/fd/1", "/dev/fd/2",
                         "/proc/self/fd/1", "/proc/self/fd/2"))
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC

    def deny(kind, event, args):
        try:
            detail = repr(args)[:200]
        except Exception:
            detail = "?"
        try:
            os.write(2, f"\n{marker}blocked: {kind} ({event} {detail})\n".encode("utf-8", "replace"))
        finally:
            os._exit(cfg["blocked_exit"])

    def resolve(path, dir_fd=None):
        if isinstance(path, int):
            if path in (0, 1, 2):
                return None
            try:
                target = os.readlink(f"/proc/self/fd/{path}")
            except OSError:
                return None
            return target if target.startswith("/") else None  # pipes, sockets: no path
        try:
            p = os.fsdecode(os.fspath(path))
        except TypeError:
            return "/"
        if p in devices:
            return None
        if isinstance(dir_fd, int) and dir_fd >= 0 and not os.path.isabs(p):
            try:
                p = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), p)
            except OSError:
                return "/"
        return os.path.realpath(p)

    def outside(path, dir_fd=None):
        p = resolve(path, dir_fd)
        return p is not None and p != root and not p.startswith(root + os.sep)

    def other_process(path):
        p = resolve(path)
        parts = p.split("/") if p else []
        return len(parts) > 2 and parts[1] == "proc" and parts[2].isdigit() and int(parts[2]) != own_pid

    # event -> ((path arg, dir_fd arg or None), ...) for events that change the file system
    changes = {
        "os.mkdir": ((0, 2),), "os.remove": ((0, 1),), "os.rmdir": ((0, 1),),
        "os.rename": ((0, 2), (1, 3)), "os.link": ((0, 2), (1, 3)), "os.symlink": ((1, 2),),
        "os.chmod": ((0, 2),), "os.chown": ((0, 3),), "os.utime": ((0, 3),),
        "os.truncate": ((0, None),), "os.setxattr": ((0, None),), "os.removexattr": ((0, None),),
        "shutil.rmtree": ((0, 1),), "sqlite3.connect": ((0, None),),
    }
    process_events = frozenset(("os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn",
                                "os.system", "subprocess.Popen", "pty.spawn"))
    network_events = frozenset(("socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg",
                                "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr",
                                "socket.getnameinfo", "socket.sethostname"))
    native = ("ctypes", "_ctypes", "_cffi_backend", "_xxsubinterpreters", "_xxinterpchannels",
              "_testcapi", "_testinternalcapi", "_testmultiphase", "_testsinglephase")
    killing_imports = {name: "native code" for name in native}

    if not processes:
        killing_imports["_posixsubprocess"] = "process"
    refused_imports = frozenset(("_gdbm", "_dbm"))  # native file access: dbm falls back to dumb

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            if isinstance(mode, str):
                writes = any(c in mode for c in "wax+")
            else:
                writes = not isinstance(flags, int) or bool(flags & write_flags)
            if writes:
                if outside(path):
                    deny("write outside sandbox", event, args)
            elif other_process(path):
                deny("host process", event, args)
            elif mode is None and outside(path) and os.path.isdir(resolve(path)):
                deny("directory outside sandbox", event, args)  # no dir_fd escapes
        elif event in changes:
            for i, j in changes[event]:
                if event == "sqlite3.connect" and args[0] in (":memory:", "", b""):
                    continue
                if outside(args[i], args[j] if j is not None and j < len(args) else None):
                    deny("write outside sandbox", event, args)
            if event == "os.symlink":  # a link must point inside too
                src, dst, dir_fd = args
                base = os.path.dirname(resolve(dst, dir_fd) or root)
                target = src if isinstance(src, int) else os.fsdecode(os.fspath(src))
                if outside(os.path.join(base, target)):
                    deny("write outside sandbox", event, args)
        elif event in network_events:
            deny("network", event, args)
        elif event in process_events:
            if not processes:
                deny("process", event, args)
        elif event.startswith("ctypes."):  # importing ctypes already loads a library
            deny("native code", event, args)
        elif event == "import":
            name = args[0]
            if name in killing_imports:
                deny(killing_imports[name], event, args[:1])
            if name in refused_imports:
                raise ImportError(f"{name} is not available in the sandbox")
        elif event in ("os.kill", "os.killpg"):
            if event == "os.killpg" or args[0] not in (0, own_pid):
                deny("signal", event, args)
        elif event == "resource.prlimit":
            if args[0] not in (0, own_pid):
                deny("process", event, args)

    # ------------------------------------------------------------ plain data
    # check_program's two processes exchange values as JSON of tagged, exact-typed plain
    # data: the program's process encodes its results, the judge decodes them into fresh
    # built-in objects. The builtins used here are taken before any program code runs.
    _type, _len, _str, _int, _format = type, len, str, int, format
    _fhex, _ffromhex, _bhex, _bfromhex = float.hex, float.fromhex, bytes.hex, bytes.fromhex
    _dumps, _loads = json.dumps, json.loads
    _read, _write, _exit = os.read, os.write, os._exit
    max_depth = 100
    seq_tags = {list: "L", tuple: "T", set: "E", frozenset: "Z"}
    seq_types = {"L": list, "T": tuple, "E": set, "Z": frozenset}

    def encode(x, depth=0):
        if depth > max_depth:
            raise ValueError("the value is nested too deeply")
        t = _type(x)
        if x is None:
            return ["N"]
        if t is bool:
            return ["B", x]
        if t is int:
            return ["I", _format(x, "x")]
        if t is float:
            return ["F", _fhex(x)]
        if t is str:
            return ["S", x]
        if t is bytes:
            return ["Y", _bhex(x)]
        if t is dict:
            return ["D", [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in dict.items(x)]]
        tag = seq_tags.get(t)
        if tag is not None:
            return [tag, [encode(v, depth + 1) for v in x]]
        raise TypeError(f"not plain data: {t.__qualname__!s}")

    def decode(v, depth=0):
        if depth > max_depth or _type(v) is not list or not v or _type(v[0]) is not str:
            raise ValueError("malformed value")
        tag = v[0]
        if tag == "N" and _len(v) == 1:
            return None
        if _len(v) != 2:
            raise ValueError("malformed value")
        x = v[1]
        if tag == "B" and _type(x) is bool:
            return x
        if tag == "I" and _type(x) is str:
            return _int(x, 16)
        if tag == "F" and _type(x) is str:
            return _ffromhex(x)
        if tag == "S" and _type(x) is str:
            return x
        if tag == "Y" and _type(x) is str:
            return _bfromhex(x)
        if tag == "D" and _type(x) is list:
            out = {}
            for pair in x:
                if _type(pair) is not list or _len(pair) != 2:
                    raise ValueError("malformed value")
                out[decode(pair[0], depth + 1)] = decode(pair[1], depth + 1)
            return out
        if tag in seq_types and _type(x) is list:
            return seq_types[tag](decode(e, depth + 1) for e in x)
        raise ValueError("malformed value")

    def line_reader(fd, cap):
        buf = bytearray()

        def read_line():
            while True:
                k = buf.find(b"\n")
                if k >= 0:
                    line = bytes(buf[:k])
                    del buf[: k + 1]
                    return line
                if _len(buf) > cap:
                    return None
                chunk = _read(fd, 1 << 16)
                if not chunk:
                    return None
                buf.extend(chunk)

        return read_line

    def send(fd, message):
        data = (_dumps(message) + "\n").encode("utf-8", "surrogatepass")
        while data:
            data = data[_write(fd, data):]

    if cfg["audit"]:
        sys.addaudithook(hook)
    sys.argv = [cfg["units"][0]]
    codes = []
    for name in cfg["units"]:
        with open(name, encoding="utf-8") as f:
            source = f.read()
        try:
            codes.append(compile(source, name, "exec", dont_inherit=True))
        except (SyntaxError, ValueError) as e:
            traceback.print_exception(e)
            sys.stderr.flush()
            os.write(2, f"\n{marker}syntax\n".encode())
            os._exit(cfg["syntax_exit"])

    kit = {"encode": encode, "decode": decode, "line_reader": line_reader, "send": send,
           "loads": _loads}

    def out_of_memory(e):
        traceback.print_exception(e)
        sys.stderr.flush()
        _write(2, f"\n{marker}memory\n".encode())
        _exit(cfg["memory_exit"])

    role = cfg["role"]
    if role == "judge":  # check_program's tests: no program code ever runs in this process
        _judge(cfg, codes[0], source, kit, nonce)
        return
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        for name, code in zip(cfg["units"], codes):
            namespace["__file__"] = name
            exec(code, namespace)
    except MemoryError as e:
        out_of_memory(e)
    if role == "serve":  # check_program's program: answer the judge's calls
        _serve(cfg, namespace, kit, out_of_memory)
        return
    sys.stdout.flush()
    if nonce:
        os.write(2, b"\n" + marker.encode() + b"done " + nonce + b"\n")


def _serve(cfg, namespace, kit, out_of_memory):
    # The program's side of check_program: its names, then each call's plain result.
    encode, decode, send, loads = kit["encode"], kit["decode"], kit["send"], kit["loads"]
    _type, _callable, _str, module = type, callable, str, type(os)
    flush_out, flush_err, _exit = sys.stdout.flush, sys.stderr.flush, os._exit
    read_line = kit["line_reader"](cfg["req_fd"], cfg["message_cap"])
    resp_fd = cfg["resp_fd"]
    callables, modules, values = [], {}, {}
    for name, obj in list(namespace.items()):
        if _type(name) is not str or name.startswith("__"):
            continue
        if _type(obj) is module:
            if _type(getattr(obj, "__name__", None)) is str:
                modules[name] = obj.__name__
        elif _callable(obj):
            callables.append(name)
        else:
            try:
                values[name] = encode(obj)
            except Exception:
                pass  # not plain data: the tests cannot use it
    send(resp_fd, ["names", {"callables": callables, "modules": modules, "values": values}])
    while True:
        line = read_line()
        if line is None:
            break
        try:
            request = loads(line)
            kind, token = request[0], request[1]
        except Exception:
            break
        if kind != "call":  # "quit": acknowledged, then nothing more of the program runs
            send(resp_fd, ["bye", token])
            break
        try:
            _, _, name, args, kwargs = request
            result = namespace[name](*decode(args), **decode(kwargs))
            reply = ["ok", token, encode(result)]
        except MemoryError as e:
            out_of_memory(e)
        except Exception as e:
            traceback.print_exception(e)
            try:
                message = _str(e)[:2000]
            except Exception:
                message = ""
            reply = ["err", token, _type(e).__name__, message]
        send(resp_fd, reply)
    flush_out()
    flush_err()
    _exit(0)  # not sys.exit: nothing of the program runs after the judge's last call


def _judge(cfg, code, source, kit, nonce):
    # The tests' side of check_program: the program's functions are stubs whose results
    # are plain data decoded here, so no object the program makes reaches the tests.
    encode, decode, send = kit["encode"], kit["decode"], kit["send"]
    marker = cfg["marker"]
    read_line = kit["line_reader"](cfg["resp_fd"], cfg["message_cap"])
    req_fd = cfg["req_fd"]
    ended = []

    class ProgramEnded(BaseException):
        # The program's process is gone (or broke the protocol): no test can pass.
        pass

    class ProgramError(Exception):
        # The program raised an exception that is not a built-in one.
        pass

    def program_ended():
        sys.stdout.flush()
        sys.stderr.flush()
        os.write(2, f"\n{marker}program ended\n".encode())
        os._exit(cfg["ended_exit"])

    def receive():
        line = read_line()
        if line is None:
            ended.append(True)
            raise ProgramEnded("the program's process ended before the tests did")
        try:
            return json.loads(line)
        except ValueError:
            ended.append(True)
            raise ProgramEnded("the program's process sent a malformed message") from None

    exceptions = {
        n: e for n, e in vars(builtins).items()
        if isinstance(e, type) and issubclass(e, Exception)
    }

    def exchange(request):
        # a fresh token per message: only a process that read the request can answer it
        token = os.urandom(16).hex()
        send(req_fd, [request[0], token, *request[1:]])
        reply = receive()
        if not (isinstance(reply, list) and len(reply) >= 2 and reply[1] == token):
            ended.append(True)
            raise ProgramEnded("the program's process did not answer the request")
        return [reply[0], *reply[2:]]

    def stub(name):
        def call(*args, **kwargs):
            if ended:
                raise ProgramEnded("the program's process is gone")
            reply, error = exchange(["call", name, encode(list(args)), encode(kwargs)]), None
            try:
                if reply[0] == "ok" and len(reply) == 2:
                    return decode(reply[1])
                if reply[0] == "err" and len(reply) == 3:
                    kind, message = reply[1], reply[2]
                    if isinstance(kind, str) and isinstance(message, str):
                        try:
                            error = exceptions.get(kind, ProgramError)(message)
                        except Exception:
                            error = ProgramError(f"{kind}: {message}")
            except (ValueError, TypeError, IndexError, KeyError, RecursionError):
                pass
            if error is None:
                ended.append(True)
                raise ProgramEnded("the program's process sent a malformed message")
            raise error

        call.__name__ = call.__qualname__ = name
        return call

    try:
        names = receive()
        if not (isinstance(names, list) and len(names) == 2 and names[0] == "names"):
            raise ProgramEnded("the program's process sent a malformed message")
        listing = names[1]
        taken = set(dir(builtins))  # a program's name never shadows a built-in for the tests
        used = set(re.findall(r"[A-Za-z_]\w*", source))
        namespace = {"__name__": "__main__", "__builtins__": builtins, "__file__": "tests.py"}

        def usable(name):
            return (
                isinstance(name, str) and name.isidentifier() and not keyword.iskeyword(name)
                and not name.startswith("__") and name not in taken
            )

        for name in listing.get("callables", []):
            if usable(name):
                namespace[name] = stub(name)
        for name, value in listing.get("values", {}).items():
            if usable(name):
                try:
                    namespace[name] = decode(value)
                except Exception:
                    pass
        for name, module in listing.get("modules", {}).items():
            # a module the program imported that the tests use without importing it
            # (MBPP's tests call math.* after the solution's `import math`): stdlib only
            if usable(name) and name in used and isinstance(module, str):
                top = module.split(".")[0]
                if top in sys.stdlib_module_names and top not in _NO_IMPORT:
                    try:
                        namespace[name] = importlib.import_module(module)
                    except Exception:
                        pass
    except (ProgramEnded, AttributeError, TypeError, ValueError):
        program_ended()
    try:
        exec(code, namespace)
    except ProgramEnded:
        program_ended()
    if ended:  # a test caught the end of the program: still no pass
        program_ended()
    try:  # the program's process must still be there to acknowledge the end
        if exchange(["quit"]) != ["bye"]:
            program_ended()
    except (ProgramEnded, OSError):
        program_ended()
    sys.stdout.flush()
    sys.stderr.flush()
    os.write(2, b"\n" + marker.encode() + b"done " + nonce + b"\n")


_NO_IMPORT = frozenset(("antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo"))


_sandbox_main(__import__("json").loads(sys.argv[1]))
del _sandbox_main
"""


# ------------------------------------------------------------------ kernel layers
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
PR_SET_KEEPCAPS = 8
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
CAP_DAC_READ_SEARCH = 2
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _libc.unshare.argtypes = [ctypes.c_int]
    _libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
except (OSError, AttributeError):  # not glibc/Linux: the namespace and capability layers are off
    _libc = None


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


# built here, not in the forked child: the child only makes the calls
_CAP_HEADER = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
_CAP_READ_ONLY = (_CapData * 2)()
_CAP_READ_ONLY[0].effective = _CAP_READ_ONLY[0].permitted = _CAP_READ_ONLY[0].inheritable = (
    1 << CAP_DAC_READ_SEARCH
)


@dataclass(frozen=True)
class _Plan:
    """The kernel layers a child gets (chosen once per process by probing)."""

    drop_uid: bool = False  # run as a uid of its own (root only)
    read_cap: bool = False  # ... keeping CAP_DAC_READ_SEARCH to reach the interpreter
    netns: str | None = None  # "netns" (root), "userns" (unprivileged user + net ns) or None


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _preexec(plan: _Plan, limits: SandboxLimits, uid: int | None):
    """What the forked child does before it execs the interpreter."""
    memory = limits.memory_mb << 20
    cpu = math.ceil(limits.timeout_s) + 1  # the wall clock normally fires first
    rlimits = [
        (resource.RLIMIT_CPU, cpu, cpu + 1),
        (resource.RLIMIT_FSIZE, limits.max_file_mb << 20, limits.max_file_mb << 20),
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_NOFILE, 256, 256),
    ]
    if uid is not None:  # counts processes of the uid; the sandbox's uid is its own
        rlimits.append((resource.RLIMIT_NPROC, limits.max_processes, limits.max_processes))

    def run() -> None:
        if plan.netns == "netns":
            _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
        for res, soft, hard in rlimits:
            resource.setrlimit(res, (soft, hard))
        if uid is not None:
            if plan.read_cap:
                _check(_libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0), "PR_SET_KEEPCAPS")
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            if plan.read_cap:
                _check(_libc.capset(ctypes.byref(_CAP_HEADER), _CAP_READ_ONLY), "capset")
                _check(
                    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_DAC_READ_SEARCH, 0, 0),
                    "PR_CAP_AMBIENT_RAISE",
                )
        if plan.netns == "userns":
            _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNET), "unshare(CLONE_NEWUSER|NEWNET)")
        if _libc is not None:
            _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
            _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # after the uid change
        # last: the forked copy of this (possibly large) process may allocate nothing after
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_DATA, (memory, memory))

    return run


# a uid per child: concurrent sandboxes (threads, processes) never share a process count
_UID_BASE = 2_000_000_000
_uid_counter = itertools.count()


def _sandbox_uid() -> int:
    return _UID_BASE + (os.getpid() % (1 << 22)) * 64 + next(_uid_counter) % 64


def _pids_of_uid(uid: int) -> list[int]:
    """Live (not zombie) processes whose real uid is ``uid``."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            if int(fields["Uid"].split()[0]) == uid and not fields["State"].strip().startswith("Z"):
                pids.append(int(name))
        except (OSError, ValueError, KeyError):
            continue
    return pids


def _kill_uid(uid: int) -> None:
    for _ in range(10):
        pids = _pids_of_uid(uid)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


# --------------------------------------------------------------------- the runner
def _has_exited(proc: subprocess.Popen) -> bool:
    """Whether the child exited, without reaping it (its pid keeps naming its group)."""
    if not hasattr(os, "waitid"):  # not Linux: reaps it
        return proc.poll() is not None
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _communicate(
    proc: subprocess.Popen, stdin: bytes, cap: int, deadline: float
) -> tuple[bytes, bytes, str | None]:
    """Feed stdin, read both streams up to ``cap`` bytes each, until exit or a limit."""
    sel = selectors.DefaultSelector()
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    bufs = {out_fd: bytearray(), err_fd: bytearray()}
    for fd in bufs:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ, "read")
    pending = memoryview(stdin)
    if pending:
        os.set_blocking(proc.stdin.fileno(), False)
        sel.register(proc.stdin.fileno(), selectors.EVENT_WRITE, "write")
    else:
        proc.stdin.close()
    pidfd = None
    if hasattr(os, "pidfd_open"):
        try:
            pidfd = os.pidfd_open(proc.pid)
            sel.register(pidfd, selectors.EVENT_READ, "exit")
        except OSError:
            pidfd = None
    reason, exited_at = None, None
    try:
        while True:
            now = time.monotonic()
            if exited_at is None and _has_exited(proc):
                exited_at = now
                if pidfd is not None:
                    sel.unregister(pidfd)
                with contextlib.suppress(OSError):  # strays in its group hold the pipes
                    os.killpg(proc.pid, signal.SIGKILL)
            if exited_at is not None and not any(fd in bufs for fd in _registered(sel)):
                break
            if now >= deadline:
                reason = "timeout"
                break
            if exited_at is not None and now >= exited_at + _EXIT_GRACE_S:
                break
            wait = deadline - now
            if exited_at is not None:
                wait = min(wait, exited_at + _EXIT_GRACE_S - now)
            elif pidfd is None:
                wait = min(wait, 0.02)
            for key, _ in sel.select(wait):
                if key.data == "exit":
                    continue  # handled at the top of the loop
                if key.data == "write":
                    try:
                        pending = pending[os.write(key.fd, pending[:_CHUNK]) :]
                    except BlockingIOError:
                        continue
                    except OSError:  # the program closed its stdin
                        pending = pending[:0]
                    if not pending:
                        sel.unregister(key.fd)
                        proc.stdin.close()
                    continue
                try:
                    chunk = os.read(key.fd, _CHUNK)
                except BlockingIOError:
                    continue
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                buf = bufs[key.fd]
                room = cap - len(buf)
                buf += chunk[:room]
                if len(chunk) > room:
                    reason = "output_limit"
                    break
            if reason:
                break
    finally:
        sel.close()
        if pidfd is not None:
            os.close(pidfd)
    return bytes(bufs[out_fd]), bytes(bufs[err_fd]), reason


def _registered(sel: selectors.BaseSelector) -> list[int]:
    return [key.fd for key in sel.get_map().values()]


def _end(proc: subprocess.Popen, uid: int | None) -> None:
    """Kill the child's group, reap the child, then kill any process left with its uid."""
    with contextlib.suppress(OSError):  # not reaped yet: its pid still names its group
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):  # stuck in the kernel: init reaps it
        proc.wait(timeout=5)
    if uid is not None:  # strays that left the group (possible with max_processes > 1)
        _kill_uid(uid)
    for f in (proc.stdin, proc.stdout, proc.stderr):
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()


def _remove_tree(path: str) -> None:
    def retry(func, p, _exc):  # a directory the program made unreadable
        try:
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=retry)


def _reason(rc: int, stderr: str) -> str | None:
    markers = [ln[len(MARKER) :] for ln in stderr.splitlines() if ln.startswith(MARKER)]
    if rc == 0:
        return None
    if rc == BLOCKED_EXIT:
        blocked = [m for m in markers if m.startswith("blocked: ")]
        return blocked[-1].split(" (", 1)[0] if blocked else "blocked"
    if rc == MEMORY_EXIT and "memory" in markers:
        return "memory"
    if rc == SYNTAX_EXIT and "syntax" in markers:
        return "syntax"
    if rc < 0:
        sig = -rc
        if sig == signal.SIGXCPU:
            return "timeout"
        if sig == signal.SIGXFSZ:
            return "file_size"
        return f"signal: {signal.Signals(sig).name}" if sig in signal.valid_signals() else "signal"
    if "MemoryError" in stderr or "Cannot allocate memory" in stderr:
        return "memory"
    if "File too large" in stderr:  # Python ignores SIGXFSZ: the write fails with EFBIG
        return "file_size"
    return "exit_code"


_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    # numeric libraries start no thread pools (threads count against NPROC)
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


@dataclass
class _Child:
    """One sandboxed interpreter: its process, uid and private directory."""

    proc: subprocess.Popen
    uid: int | None
    workdir: str


def _spawn(
    units: list[tuple[str, str]],
    limits: SandboxLimits,
    plan: _Plan,
    extra_cfg: dict,
    pass_fds: tuple[int, ...] = (),
    nonce: bytes = b"",
    audit: bool = True,
) -> _Child:
    """Start ``python -I -B -c _BOOTSTRAP`` on ``units`` in a private directory, under
    every layer of ``plan``; the caller ends it with ``_end`` and ``_remove_tree``."""
    workdir = tempfile.mkdtemp(prefix="creditbench-sandbox-")
    uid = _sandbox_uid() if plan.drop_uid else None
    try:
        for name, source in units:
            with open(os.path.join(workdir, name), "w", encoding="utf-8") as f:
                f.write(source)
        if uid is not None:
            for name in [".", *(n for n, _ in units)]:
                os.chown(os.path.join(workdir, name), uid, uid)
        env = {**_ENV, "HOME": workdir, "TMPDIR": workdir}
        read_fd, write_fd = os.pipe()
        try:
            os.write(write_fd, nonce)
            os.close(write_fd)
            cfg = {
                "units": [n for n, _ in units],
                "nonce_fd": read_fd if nonce else -1,
                "processes": limits.max_processes > 1,
                "audit": audit,
                "marker": MARKER,
                "blocked_exit": BLOCKED_EXIT,
                "memory_exit": MEMORY_EXIT,
                "syntax_exit": SYNTAX_EXIT,
                "ended_exit": ENDED_EXIT,
                "message_cap": _MESSAGE_CAP,
                "role": "run",
                **extra_cfg,
            }
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-I", "-B", "-c", _BOOTSTRAP, json.dumps(cfg)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    cwd=workdir,
                    env=env,
                    start_new_session=True,
                    preexec_fn=_preexec(plan, limits, uid),
                    pass_fds=((read_fd,) if nonce else ()) + pass_fds,
                )
            except (OSError, subprocess.SubprocessError) as e:
                raise SandboxError(f"cannot start the sandboxed interpreter: {e}") from e
        finally:
            os.close(read_fd)
    except BaseException:
        _remove_tree(workdir)
        raise
    return _Child(proc, uid, workdir)


def _strip_done(stderr: str, nonce: bytes) -> tuple[str, bool]:
    """``stderr`` without the bootstrap's line after the tests, and whether it was there."""
    done = f"\n{MARKER}done {nonce.decode()}\n"
    k = stderr.rfind(done)
    if k < 0:
        return stderr, False
    return stderr[:k] + stderr[k + len(done) :], True


def _execute(
    units: list[tuple[str, str]],
    stdin: str,
    limits: SandboxLimits,
    *,
    audit: bool = True,
    plan: _Plan | None = None,
) -> SandboxResult:
    """Run the units (file name, source) in one child; ``audit=False`` only for tests of
    the kernel layers."""
    if plan is None:
        plan = _setup()[0]
    start = time.monotonic()
    child = _spawn(units, limits, plan, {}, audit=audit)
    try:
        try:
            out, err, reason = _communicate(
                child.proc, stdin.encode("utf-8"), limits.max_output_bytes, start + limits.timeout_s
            )
        finally:
            _end(child.proc, child.uid)
    finally:
        _remove_tree(child.workdir)
    rc = child.proc.returncode
    stderr = err.decode("utf-8", "replace")
    if reason is None:
        reason = "timeout" if rc is None else _reason(rc, stderr)
    return SandboxResult(
        ok=reason is None,
        returncode=rc,
        stdout=out.decode("utf-8", "replace"),
        stderr=stderr,
        reason=reason,
        seconds=time.monotonic() - start,
    )


def _check(program: str, tests: str, limits: SandboxLimits) -> SandboxResult:
    """``check_program``: the program and its tests in two sandboxed children (each under
    ``limits``, both within one wall clock) joined by two pipes.

    The program's child runs the program, sends the names it defined, then answers each
    call of the tests with the result encoded as exact-typed plain data (None, bool, int,
    float, str, bytes and list, tuple, dict, set, frozenset of them; anything else is an
    error of the call). The judge's child runs the tests with each of the program's
    functions replaced by a stub that sends the call and decodes the answer into fresh
    built-in objects, so every comparison is between values of plain types, made where
    the program has no code, no builtins and no file descriptor. The judge alone proves
    a pass: its stderr ends with a per-run secret only after the tests ran to their end,
    and the program's child never has that secret or that stream.
    """
    plan = _setup()[0]
    start = time.monotonic()
    deadline = start + limits.timeout_s
    nonce = secrets.token_hex(16).encode()
    req_r, req_w = os.pipe()  # judge -> program: calls
    resp_r, resp_w = os.pipe()  # program -> judge: names, results
    children: list[_Child] = []
    try:
        try:
            children.append(
                _spawn(
                    [("program.py", program)],
                    limits,
                    plan,
                    {"role": "serve", "req_fd": req_r, "resp_fd": resp_w},
                    pass_fds=(req_r, resp_w),
                )
            )
            children.append(
                _spawn(
                    [("tests.py", tests)],
                    limits,
                    plan,
                    {"role": "judge", "req_fd": req_w, "resp_fd": resp_r},
                    pass_fds=(req_w, resp_r),
                    nonce=nonce,
                )
            )
        finally:
            for fd in (req_r, req_w, resp_r, resp_w):
                os.close(fd)
        program, judge = children
        streams: dict[str, tuple[bytes, bytes, str | None]] = {}

        def communicate(key: str, child: _Child) -> None:
            try:
                streams[key] = _communicate(child.proc, b"", limits.max_output_bytes, deadline)
            finally:
                _end(child.proc, child.uid)

        side = threading.Thread(target=communicate, args=("program", program), daemon=True)
        side.start()
        try:
            communicate("judge", judge)
        finally:
            side.join()
    finally:
        for child in children:
            if child.proc.returncode is None:  # the other one failed to start
                _end(child.proc, child.uid)
            _remove_tree(child.workdir)
    p_out, p_err, p_limit = streams["program"]
    j_out, j_err, j_limit = streams["judge"]
    p_rc, j_rc = program.proc.returncode, judge.proc.returncode
    p_stderr = p_err.decode("utf-8", "replace")
    j_stderr, done = _strip_done(j_err.decode("utf-8", "replace"), nonce)
    reason, rc = p_limit, p_rc  # the program's own failure names the outcome first
    if reason is None and p_rc is None:
        reason = "timeout"
    if reason is None:
        reason = _reason(p_rc, p_stderr)
    if reason is None:
        reason, rc = j_limit, j_rc
        if reason is None and j_rc is None:
            reason = "timeout"
        if reason is None:
            if j_rc == ENDED_EXIT and f"{MARKER}program ended" in j_stderr:
                reason, rc = "early_exit", p_rc
            elif j_rc == 0 and not done:
                reason = "early_exit"
            else:
                reason = _reason(j_rc, j_stderr)
    return SandboxResult(
        ok=reason is None,
        returncode=rc,
        stdout=p_out.decode("utf-8", "replace") + j_out.decode("utf-8", "replace"),
        stderr=p_stderr + j_stderr,
        reason=reason,
        seconds=time.monotonic() - start,
    )


# ------------------------------------------------------------------ probing layers
_setup_lock = threading.Lock()
_setup_result: tuple[_Plan, dict] | None = None

_PROBE = """
import os
print(os.getuid())
print(os.readlink("/proc/self/ns/net"))
"""
_FORK_PROBE = """
import os
try:
    pid = os.fork()
except OSError:
    print("refused")
else:
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    print("allowed")
"""


def _candidates() -> list[_Plan]:
    nets = ["netns", "userns", None] if _libc is not None else [None]
    if os.geteuid() == 0:
        uids = [(True, False)] + ([(True, True)] if _libc is not None else []) + [(False, False)]
    else:
        uids = [(False, False)]
    return [_Plan(d, c, n) for d, c in uids for n in nets]


def _probe(plan: _Plan, host_net: str) -> bool:
    limits = SandboxLimits(timeout_s=10.0, memory_mb=512)
    try:
        r = _execute([("program.py", _PROBE)], "", limits, plan=plan)
    except SandboxError:
        return False
    lines = r.stdout.split()
    if not r.ok or len(lines) != 2:
        return False
    if plan.drop_uid and lines[0] == "0":
        return False
    return plan.netns is None or lines[1] != host_net


def _setup() -> tuple[_Plan, dict]:
    """The strongest layer set that works here (probed once per process) and its report."""
    global _setup_result
    with _setup_lock:
        if _setup_result is not None:
            return _setup_result
        try:
            host_net = os.readlink("/proc/self/ns/net")
        except OSError:
            host_net = "?"
        failures = []
        for plan in _candidates():
            if _probe(plan, host_net):
                break
            failures.append(plan)
        else:
            raise SandboxError(
                f"cannot start a sandboxed interpreter ({sys.executable}) with any layer set"
            )
        fork = _execute(
            [("program.py", _FORK_PROBE)], "", SandboxLimits(timeout_s=10.0), audit=False, plan=plan
        )
        info = {
            "separate_process": True,
            "process_group_kill": True,
            "rlimits": ["AS", "DATA", "CPU", "FSIZE", "CORE=0", "NOFILE"]
            + (["NPROC"] if plan.drop_uid else []),
            "empty_environment": True,
            "private_directory": True,
            "output_cap": True,
            "audit_hook": True,
            "unprivileged_uid": plan.drop_uid,
            "read_search_capability": plan.read_cap,
            "network_namespace": {"netns": "netns", "userns": "userns+netns"}.get(plan.netns),
            "process_limit_enforced_by_kernel": fork.stdout.strip() == "refused",
            "no_new_privs": _libc is not None,
            "pdeathsig": _libc is not None,
            "running_as_root": os.geteuid() == 0,
            "layer_sets_refused": [vars(p) for p in failures],
        }
        _setup_result = (plan, info)
        return _setup_result


def isolation() -> dict:
    """Which isolation layers apply on this machine (probed on first use, then cached)."""
    return dict(_setup()[1])


# ---------------------------------------------------------------------- public API
def run_python(
    code: str, stdin: str = "", limits: SandboxLimits = SandboxLimits()
) -> SandboxResult:
    """Run ``code`` as a program in the sandbox; ``ok`` iff it exits 0 within every limit."""
    return _execute([("program.py", code)], stdin, limits)


def check_program(
    program: str, tests: str, limits: SandboxLimits = SandboxLimits()
) -> SandboxResult:
    """Run ``program``, then ``tests`` (asserts) against it; ``ok`` iff every test passed,
    i.e. the tests ran to their end and both processes kept within every limit.

    The tests run in a second sandboxed process and see only plain data from the program
    (``_check``): a result that overrides comparison (``__eq__``, a subclass of ``int``)
    fails its call, patched builtins stay in the program's process, and a program that
    leaves early (``sys.exit(0)``, ``os._exit(0)``) fails with ``"early_exit"``.
    """
    return _check(program, tests, limits)
