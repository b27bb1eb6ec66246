"""Code-execution sandbox: runs the model's ```python blocks in forked, limited interpreters.

Why: the kernel runs many rollouts at once and feeds each block's output back to the model, so a
block must keep state like a notebook, answer in milliseconds, and never hurt the kernel process
whatever it does (endless loops, huge allocations, ``sys.exit``, fork loops). Model code never runs
in the kernel process.

How:
- ``Sandbox.start()`` launches a *template* process (``python -m
  kaggle_submission._sandbox_worker``, fork+exec, never a bare fork of the kernel) that imports
  math, numpy, sympy and mpmath once, with one BLAS/OpenMP thread, and runs the prelude. Each
  ``Session`` gets a *worker* forked from that warm template (~5 ms instead of ~350 ms for a fresh
  ``python``). The kernel process creates a socketpair (commands, results) and a pipe (the
  worker's fds 1 and 2) per worker and hands one end of each to the template with SCM_RIGHTS;
  afterwards it talks to the worker directly.
- The timeout is enforced here, in the kernel process: it waits for the result with a deadline,
  then SIGKILLs the worker's process group and sweeps /proc for leftover descendants, forks a
  fresh worker and (``replay_on_reset``) replays the session's earlier successful blocks, output
  discarded. Queue wait (``max_concurrent``, FIFO) does not count against the timeout.
- Workers run in their own process group with RLIMIT_AS (``memory_limit_mb``), RLIMIT_FSIZE, no
  core files, stdin on /dev/null, a private temporary cwd (removed with the worker), and die with
  the template (PR_SET_PDEATHSIG); the template dies with the kernel process (PR_SET_PDEATHSIG,
  EOF on its control socket) after killing its workers and, as a child subreaper, kills orphans.
- Limits model code cannot undo (it runs as root on Kaggle and can raise its own RLIMIT_AS): a
  thread in the kernel process sums the memory of the template and every worker tree every
  ``memory_poll_s`` (RSS above each worker's post-fork RSS, from /proc/PID/statm: ~1 ms for 48
  workers) and, over ``memory_share`` of the host's RAM, SIGKILLs the tree that grew most; its
  session reads ``MEMORY_MESSAGE`` and is replaced with replay like after a timeout. After each
  block the worker reports threads the block left running and a broken output pipe; the session
  then replaces the worker (replaying the earlier blocks, not this one) so no thread burns a core
  through later blocks. A block that closed ``sys.stdout``/``sys.stderr`` gets fresh stream
  objects in the same worker (fds are restored with dup2 before every block anyway).
- An audit hook in each worker (``audit_hook``) refuses signals to processes outside the worker's
  group (``os.kill(os.getppid(), 9)``), file-system writes outside its directory and /dev/null,
  forks from forked children and beyond ``max_forks_per_block``, and ``os.exec*`` of the worker
  itself. After a block that started processes, the worker kills what is left of them. This
  stops accidents; it is NOT a security boundary (ctypes or an exec'd program get around it).

Start-up order: call ``Sandbox.start()`` before the LLM engine is built. Forking after a CUDA
context exists is unsafe and the engine's memory makes every later start slower, so ``start()``
raises RuntimeError if ``torch.cuda.is_initialized()``. (A transparent restart of a dead template
later is still fork+exec, which never copies a CUDA context.)

Example::

    with Sandbox(SandboxConfig(timeout_s=5)) as sandbox, sandbox.session() as session:
        session.run("x = 2\\nx**10").output  # '1024\\n'
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fcntl
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal, TypeVar

__all__ = ["ExecResult", "Sandbox", "SandboxConfig", "SandboxError", "Session"]

_T = TypeVar("_T")
_HEADER = struct.Struct("!I")
_F_SETPIPE_SZ = 1031
_F_GETPIPE_SZ = 1032
_PIPE_SIZE = 1 << 20
_READ_SIZE = 1 << 17  # per-worker read buffer in the kernel process: keep it small
_DRAIN_LIMIT = 2 * _PIPE_SIZE  # read after the reply (a background thread may never stop)
_COALESCE_S = 0.005  # after a small read, wait this long for the result before reading again
_MARKER_ENV = "AIMO_SANDBOX_ID"
_CONT_BYTES = bytes(range(0x80, 0xC0))  # UTF-8 continuation bytes: not counted as characters

DEFAULT_WARMUP = (
    "_x = sp.symbols('x')\n"
    "sp.factor(_x**4 - 1); sp.expand((_x + 1)**3); sp.solve(_x**2 - 2, _x)\n"
    "sp.simplify(sp.sin(_x)**2 + sp.cos(_x)**2); sp.isprime(97); sp.factorint(360)\n"
    "sp.Rational(1, 3) + sp.Integer(2); sp.binomial(10, 3); np.arange(4).sum()\n"
)

# The exact sentences the model reads (tests assert them).
TIMEOUT_MESSAGE = "TimeoutError: the code ran longer than {seconds} and was stopped."
CRASH_SIGNAL_MESSAGE = "The interpreter crashed (signal {name})."
CRASH_EXIT_MESSAGE = "The interpreter exited with status {status}."
CRASH_UNKNOWN_MESSAGE = "The interpreter stopped unexpectedly."
RESTORED_MESSAGE = "The interpreter was restarted; variables from earlier blocks were restored."
LOST_MESSAGE = "The interpreter was restarted; variables from earlier blocks are lost."
RESTARTED_MESSAGE = "The interpreter was restarted."
NOT_RESTARTED_MESSAGE = "The interpreter could not be restarted."
MEMORY_MESSAGE = (
    "MemoryError: the interpreter was stopped for using too much memory "
    "(all interpreters together may use {limit})."
)
THREADS_MESSAGE = "This code left threads running after it ended; they were stopped."
STREAM_REOPENED_MESSAGE = "This code closed {name}; it was reopened for later blocks."
OUTPUT_BROKEN_MESSAGE = "This code disconnected the interpreter's output."
OMITTED_MARKER = "\n... [{count} characters omitted] ...\n"


class SandboxError(RuntimeError):
    """The sandbox itself failed (template will not start, or the sandbox is closed)."""


@dataclass(frozen=True)
class SandboxConfig:
    """How blocks are executed.

    Attributes:
        mode: "persistent" keeps one interpreter per session (state across blocks); "isolated"
            runs every block in a fresh worker with only the prelude (the AIMO-1 winner's way).
        timeout_s: per block, counted from when execution starts (not queue wait).
        max_output_chars: head + tail kept of a block's output; the middle is replaced by a marker.
        memory_limit_mb: RLIMIT_AS of each worker.
        max_concurrent: blocks executing at once (FIFO queue); None = usable CPU cores.
        replay_on_reset: after a kill, replay the session's earlier successful blocks.
        prelude: run once in the template; every worker starts with its names.
        preload: modules imported by the template before the prelude.
        warmup: code run once in the template in a scratch namespace, to fill lazy imports and
            caches that every worker then shares.
        file_size_limit_mb: RLIMIT_FSIZE of each worker.
        max_forks_per_block: os.fork calls allowed per block (forked children may not fork).
        audit_hook: install the accident-stopping audit hook in workers.
        echo_last_expression: print the repr of a final bare expression, like the REPL.
        tmp_root: parent directory of the private working directories (None: system default).
        start_timeout_s: how long the template may take to import and run the prelude.
        max_replay_s: total time a replay after a reset may take; beyond it state is lost.
        spare_workers: persistent workers forked ahead of time by a background thread, so a new
            session adopts a ready interpreter instead of waiting on a fork (the kernel keeps
            N ready between problems). 0 forks on demand.
        memory_share: fraction of the host's RAM (MemTotal) that the template and all workers
            together may hold, enforced from the kernel process, because model code can raise
            its own RLIMIT_AS (the kernel runs as root on Kaggle). Over it, the worker tree
            that grew most is SIGKILLed. None: no shared limit.
        memory_total_mb: the same limit in MiB; with both set, the smaller applies.
        memory_poll_s: how often the kernel process sums the workers' memory.
    """

    mode: Literal["persistent", "isolated"] = "persistent"
    timeout_s: float = 5.0
    max_output_chars: int = 1000
    memory_limit_mb: int = 2048
    max_concurrent: int | None = None
    replay_on_reset: bool = True
    prelude: str = "import math\nimport numpy as np\nimport sympy as sp\n"
    preload: tuple[str, ...] = ("math", "numpy", "sympy", "mpmath")
    warmup: str = DEFAULT_WARMUP
    file_size_limit_mb: int = 64
    max_forks_per_block: int = 32
    audit_hook: bool = True
    echo_last_expression: bool = True
    tmp_root: str | None = None
    start_timeout_s: float = 120.0
    max_replay_s: float = 30.0
    spare_workers: int = 0
    memory_share: float | None = 0.5
    memory_total_mb: int | None = None
    memory_poll_s: float = 0.1

    def __post_init__(self) -> None:
        if self.mode not in ("persistent", "isolated"):
            raise ValueError(f"mode must be 'persistent' or 'isolated', not {self.mode!r}")
        if self.timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        if self.max_output_chars < 2:
            raise ValueError("max_output_chars must be at least 2")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        if self.memory_share is not None and not 0 < self.memory_share <= 1:
            raise ValueError("memory_share must be in (0, 1]")
        if self.memory_total_mb is not None and self.memory_total_mb <= 0:
            raise ValueError("memory_total_mb must be positive")
        if self.memory_poll_s <= 0:
            raise ValueError("memory_poll_s must be positive")


@dataclass(frozen=True)
class ExecResult:
    """What one block did.

    Attributes:
        output: exactly the text the model reads (stdout+stderr interleaved, truncated, then the
            traceback or the timeout/crash sentences).
        ok: ran to completion without an exception (``sys.exit(0)`` counts as ok).
        timed_out: stopped at the timeout.
        seconds: execution time, excluding queue wait and replay.
        reset: the interpreter was replaced during this call (persistent mode only): after a
            timeout, a crash, the shared memory limit, or a block that left threads running or
            broke its output (then ``ok`` is the block's own result).
        restored: after the reset, the earlier blocks were replayed successfully.
        queued_seconds: time spent waiting for a free slot.
        error: exception class name ("ZeroDivisionError", "SystemExit", "TimeoutError"), "Crash"
            for a dead interpreter, "SandboxError" for a sandbox failure, "MemoryError" also
            when the shared memory limit killed the interpreter; None when ok.
        crash: how a dead interpreter ended ("signal SIGSEGV", "status 0"), else None.
        replay_seconds: time spent replaying earlier blocks after a reset.
    """

    output: str
    ok: bool
    timed_out: bool
    seconds: float
    reset: bool
    restored: bool
    queued_seconds: float
    error: str | None = None
    crash: str | None = None
    replay_seconds: float = 0.0


# --------------------------------------------------------------------------- helpers


def format_seconds(seconds: float) -> str:
    """'5 seconds', '1 second', '0.5 seconds' for the timeout sentence."""
    return f"{seconds:g} second{'' if seconds == 1 else 's'}"


def timeout_message(seconds: float) -> str:
    """The sentence the model reads when a block is stopped at the timeout."""
    return TIMEOUT_MESSAGE.format(seconds=format_seconds(seconds))


def format_memory(limit_bytes: int) -> str:
    """'300 MB', '15.5 GB' for the memory sentence (binary units, as RAM is counted)."""
    if limit_bytes >= 1 << 30:
        return f"{limit_bytes / (1 << 30):.1f} GB"
    return f"{round(limit_bytes / (1 << 20))} MB"


def memory_message(limit_bytes: int) -> str:
    """The sentence the model reads when its interpreter was killed by the shared memory limit."""
    return MEMORY_MESSAGE.format(limit=format_memory(limit_bytes))


def describe_status(status: int | None) -> str | None:
    """'signal SIGSEGV' / 'status 0' from a wait status; None when unknown."""
    if status is None:
        return None
    if os.WIFSIGNALED(status):
        num = os.WTERMSIG(status)
        try:
            return f"signal {signal.Signals(num).name}"
        except ValueError:
            return f"signal {num}"
    if os.WIFEXITED(status):
        return f"status {os.WEXITSTATUS(status)}"
    return None


def crash_message(description: str | None) -> str:
    """The sentence the model reads when its interpreter died."""
    if description is None:
        return CRASH_UNKNOWN_MESSAGE
    kind, _, value = description.partition(" ")
    if kind == "signal":
        return CRASH_SIGNAL_MESSAGE.format(name=value)
    return CRASH_EXIT_MESSAGE.format(status=value)


def _count_chars(data: bytes | bytearray | memoryview) -> int:
    """Characters in UTF-8 bytes (continuation bytes are not counted)."""
    raw = bytes(data)
    return len(raw) if raw.isascii() else len(raw.translate(None, _CONT_BYTES))


class _OutputBuffer:
    """Keeps the head and tail of a stream in bounded memory and counts what it drops."""

    def __init__(self, max_chars: int) -> None:
        self.head_chars = max_chars // 2
        self.tail_chars = max_chars - self.head_chars
        self._head_cap = 4 * self.head_chars  # bytes: enough for head_chars of any UTF-8
        self._tail_cap = 4 * self.tail_chars
        self.head = bytearray()
        self.tail = bytearray()
        self.dropped_chars = 0
        self.dropped = False

    def feed(self, data: bytes | memoryview) -> None:
        """Add a chunk of output."""
        data = memoryview(data)
        room = self._head_cap - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
            if not data:
                return
        keep = self._tail_cap
        if len(data) >= keep:
            self.dropped_chars += _count_chars(self.tail) + _count_chars(data[: len(data) - keep])
            self.tail = bytearray(data[len(data) - keep :])
            self.dropped = True
            return
        self.tail += data
        excess = len(self.tail) - keep
        if excess > 0:
            self.dropped_chars += _count_chars(self.tail[:excess])
            del self.tail[:excess]
            self.dropped = True

    def text(self) -> str:
        """Head + marker + tail, or everything when it fits."""
        hc, tc = self.head_chars, self.tail_chars
        if not self.dropped:
            full = (self.head + self.tail).decode("utf-8", "replace")
            if len(full) <= hc + tc:
                return full
            head, tail, omitted = full[:hc], full[len(full) - tc :], len(full) - hc - tc
        else:
            h = self.head.decode("utf-8", "replace")
            t = self.tail.decode("utf-8", "replace")
            head, tail = h[:hc], t[len(t) - tc :]
            omitted = self.dropped_chars + (len(h) - hc) + (len(t) - tc)
        return head + OMITTED_MARKER.format(count=omitted) + tail


class _Discard(_OutputBuffer):
    """Output sink for replayed blocks."""

    def __init__(self) -> None:
        super().__init__(2)

    def feed(self, data: bytes | memoryview) -> None:
        """Drop the chunk."""


def _join_lines(output: str, *lines: str) -> str:
    """Append sentences after the output, each on its own line."""
    extra = "\n".join(line for line in lines if line)
    if not extra:
        return output
    if output and not output.endswith("\n"):
        output += "\n"
    return output + extra + "\n"


def _scan_proc() -> dict[int, tuple[int, int, str, int]]:
    """pid -> (ppid, pgid, state, start time) for every process in /proc."""
    procs: dict[int, tuple[int, int, str, int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            procs[int(name)] = (int(fields[1]), int(fields[2]), fields[0].decode(), int(fields[19]))
        except (OSError, IndexError, ValueError):
            continue
    return procs


def kill_process_tree(pid: int, pgid: int) -> None:
    """SIGKILL a worker, its process group and every descendant, until none is left alive.

    Fork loops race with killpg, and children that called setsid leave the group, so the tree is
    snapshotted by parentage first (start times guard against pid reuse) and swept repeatedly.
    """
    procs = _scan_proc()
    tree: dict[int, int] = {}
    if pid in procs:
        tree[pid] = procs[pid][3]
    for _ in range(200):
        _extend_tree(tree, procs)
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGKILL)
        for p, start in tree.items():
            info = procs.get(p)
            if info is not None and info[3] == start and info[2] not in "ZX":
                with contextlib.suppress(OSError):
                    os.kill(p, signal.SIGKILL)
        procs = _scan_proc()
        _extend_tree(tree, procs)
        alive = [
            p
            for p, (_pp, pg, state, start) in procs.items()
            if state not in "ZX" and (pg == pgid or tree.get(p) == start)
        ]
        if not alive:
            return
        time.sleep(0.002)


def _extend_tree(tree: dict[int, int], procs: dict[int, tuple[int, int, str, int]]) -> None:
    """Add every live descendant of the tree's members (pid -> start time)."""
    children: dict[int, list[int]] = {}
    for p, (ppid, _pg, _state, _start) in procs.items():
        children.setdefault(ppid, []).append(p)
    stack = [p for p, start in tree.items() if p in procs and procs[p][3] == start]
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in tree:
                tree[child] = procs[child][3]
                stack.append(child)


def kill_marked_processes(marker: str) -> None:
    """SIGKILL every process whose environment carries this sandbox's marker (the last sweep)."""
    needle = f"{_MARKER_ENV}={marker}".encode()
    me = os.getpid()
    for _ in range(50):
        found = False
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == me:
                continue
            try:
                with open(f"/proc/{name}/environ", "rb") as f:
                    env = f.read()
            except OSError:
                continue
            if needle in env.split(b"\0"):
                found = True
                with contextlib.suppress(OSError):
                    os.kill(int(name), signal.SIGKILL)
        if not found:
            return
        time.sleep(0.005)


def _pid_alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie (a spare may have been killed meanwhile)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != b"Z"


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_MAX_TREE = 4096  # processes looked at per worker tree in one memory poll


def _rss_bytes(pid: int) -> int | None:
    """Resident set size of a process from /proc/PID/statm (cheap: no page-table walk)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return None


def _children(pid: int) -> list[int]:
    """Children of a process's main thread (/proc/PID/task/PID/children)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", "rb") as f:
            return [int(c) for c in f.read().split()]
    except (OSError, ValueError):
        return []


def _tree_growth(pid: int, base: int) -> int:
    """Memory a worker tree holds beyond what it shares with the template.

    RSS counts the template's copy-on-write pages again in every worker (~60 MB each, 48 x that
    is memory that does not exist), so each process is charged its RSS above the worker's RSS
    right after the fork. Pages the worker later copies on write are not counted (at most the
    template's size per worker); smaps' PSS would count them but costs ~1 ms per process.
    """
    total = 0
    stack, seen = [pid], set()
    while stack and len(seen) < _MAX_TREE:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        rss = _rss_bytes(p)
        if rss is None:
            continue
        total += max(0, rss - base)
        stack.extend(_children(p))
    return total


def host_memory_bytes() -> int | None:
    """MemTotal of this machine, from /proc/meminfo."""
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return None


def memory_limit_bytes(config: SandboxConfig) -> int | None:
    """The shared memory limit of a config in bytes (the smaller of share and MiB), or None."""
    limits = []
    if config.memory_share is not None:
        total = host_memory_bytes()
        if total is not None:
            limits.append(int(total * config.memory_share))
    if config.memory_total_mb is not None:
        limits.append(config.memory_total_mb * (1 << 20))
    return min(limits) if limits else None


def _cuda_initialized() -> bool:
    """True if this process already holds a CUDA context through torch."""
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    try:
        return bool(torch.cuda.is_initialized())
    except Exception:
        return False


def _usable_cpus() -> int:
    """CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class _FifoSlots:
    """A counting semaphore that hands free slots to waiters strictly first come, first served."""

    def __init__(self, slots: int) -> None:
        self._free = slots
        self._lock = threading.Lock()
        self._waiters: deque[threading.Event] = deque()

    def acquire(self) -> None:
        """Take a slot, waiting in line if none is free."""
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return
            event = threading.Event()
            self._waiters.append(event)
        event.wait()

    def release(self) -> None:
        """Give the slot to the longest waiter, or back to the pool."""
        with self._lock:
            if self._waiters:
                self._waiters.popleft().set()
            else:
                self._free += 1


class _Launcher:
    """A long-lived thread that starts the template.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, so the template must not
    be started from a short-lived rollout thread.
    """

    def __init__(self) -> None:
        self._jobs: deque[tuple[Callable[[], Any], list[Any], threading.Event]] = deque()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="sandbox-launcher", daemon=True)
        self._thread.start()

    def call(self, fn: Callable[[], _T]) -> _T:
        """Run fn on the launcher thread and return its result (or raise its exception)."""
        box: list[Any] = []
        done = threading.Event()
        with self._cond:
            if self._stopped:
                raise SandboxError("the sandbox is closed")
            self._jobs.append((fn, box, done))
            self._cond.notify()
        done.wait()
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]

    def stop(self) -> None:
        """Let the thread finish (after the template has been stopped)."""
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._stopped:
                    self._cond.wait()
                if not self._jobs:
                    return
                fn, box, done = self._jobs.popleft()
            try:
                box.append(fn())
            except BaseException as exc:
                box.append(exc)
            done.set()


# --------------------------------------------------------------------------- processes


class _TemplateProcess:
    """The kernel-side handle of the template: its process and control socket."""

    def __init__(self, proc: subprocess.Popen[bytes], sock: socket.socket, pid: int) -> None:
        self.proc = proc
        self.sock = sock
        self.pid = pid

    def alive(self) -> bool:
        """Whether the template process is still running."""
        return self.proc.poll() is None

    def request(self, msg: dict[str, Any], fds: list[int], timeout: float) -> dict[str, Any]:
        """One request/reply round trip (the caller holds the template lock)."""
        self.sock.settimeout(timeout)
        socket.send_fds(self.sock, [json.dumps(msg).encode()], fds)
        data = self.sock.recv(1 << 20)
        if not data:
            raise EOFError("the sandbox template closed its socket")
        return json.loads(data)

    def stop(self) -> None:
        """Close the socket (the template then kills its workers and exits), then make sure."""
        with contextlib.suppress(OSError):
            self.sock.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class _WorkerProcess:
    """The kernel-side handle of one worker: pid, command socket, output pipe, private dir."""

    def __init__(self, pid: int, sock: socket.socket, out_fd: int, tmpdir: str) -> None:
        self.pid = pid
        self.sock = sock
        self.out_fd = out_fd
        self.tmpdir = tmpdir
        try:
            pipe_size = fcntl.fcntl(out_fd, _F_GETPIPE_SZ)
        except OSError:
            pipe_size = 1 << 16
        # A read at least this big means the writer is streaming: read again without waiting.
        self._small_read = min(_READ_SIZE, pipe_size) // 2
        self.closed = False
        self.killed = False
        self.memory_killed = False  # killed by the shared memory limit (not by its session)
        self.base_rss = 0  # RSS right after the fork: pages shared with the template
        # Held while a thread waits on the fds: they are closed only under it, so a number
        # reused by a new fd is never polled by a stale waiter.
        self.lock = threading.Lock()
        self._chunk = bytearray(_READ_SIZE)

    def wait_hello(self, timeout: float) -> None:
        """Wait for the worker's first message, which says its set-up finished."""
        with self.lock:
            status = "died"
            if not self.closed:
                status, _reply, _secs = self._wait_reply(timeout, _Discard(), bytearray())
        if status != "done":
            raise SandboxError(f"a sandbox worker failed to start ({status})")

    def execute(
        self, code: str, timeout: float, out: _OutputBuffer, echo: bool
    ) -> tuple[str, Any, float]:
        """Run one block: ("done", reply, seconds) | ("timeout", None, s) | ("died", None, s)."""
        data = json.dumps({"op": "run", "code": code, "echo": echo}).encode()
        with self.lock:
            if self.closed:
                return "died", None, 0.0
            try:
                self.sock.settimeout(timeout)
                self.sock.sendall(_HEADER.pack(len(data)) + data)
            except TimeoutError:
                return "timeout", None, timeout
            except OSError:
                return "died", None, 0.0
            return self._wait_reply(timeout, out, bytearray())

    def _wait_reply(
        self, timeout: float, out: _OutputBuffer, buf: bytearray
    ) -> tuple[str, Any, float]:
        """Drain output until one reply arrives, the worker dies, or the deadline passes."""
        self.sock.setblocking(False)
        sock_fd = self.sock.fileno()
        both = select.poll()
        both.register(sock_fd, select.POLLIN)
        both.register(self.out_fd, select.POLLIN)
        sock_only = select.poll()
        sock_only.register(sock_fd, select.POLLIN)
        start = time.monotonic()
        deadline = start + timeout
        coalesce_until = 0.0
        pipe_open = True
        while True:
            now = time.monotonic()
            if now >= deadline:
                return "timeout", None, now - start
            use_both = pipe_open and now >= coalesce_until
            wait = (deadline if use_both else min(deadline, coalesce_until)) - now
            if not pipe_open:
                wait = deadline - now
            events = (both if use_both else sock_only).poll(max(0.0, wait) * 1000)
            for fd, _ev in events:
                if fd == self.out_fd:
                    n = self._read_output(out)
                    if n < 0:
                        pipe_open = False
                        both.unregister(self.out_fd)
                    elif n < self._small_read:
                        coalesce_until = time.monotonic() + _COALESCE_S
                    continue
                try:
                    chunk = self.sock.recv(1 << 16)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    return "died", None, time.monotonic() - start
                buf += chunk
                if len(buf) >= _HEADER.size:
                    size = _HEADER.unpack_from(buf)[0]
                    if len(buf) >= _HEADER.size + size:
                        elapsed = time.monotonic() - start
                        self.drain(out, limit=_DRAIN_LIMIT)
                        reply = json.loads(bytes(buf[_HEADER.size : _HEADER.size + size]))
                        return "done", reply, elapsed

    def _read_output(self, out: _OutputBuffer) -> int:
        """Read one chunk from the pipe into out: its size, or -1 at EOF."""
        try:
            n = os.readv(self.out_fd, [self._chunk])
        except BlockingIOError:
            return 0
        except OSError:
            return -1
        if n == 0:
            return -1
        with memoryview(self._chunk) as view:
            out.feed(view[:n])
        return n

    def drain(self, out: _OutputBuffer, limit: int) -> None:
        """Read what is already in the pipe (bounded: a background writer may never stop)."""
        if self.closed:
            return
        total = 0
        while total < limit:
            n = self._read_output(out)
            if n <= 0:
                return
            total += n

    def kill(self) -> None:
        """SIGKILL the worker's tree (any thread; a waiter then sees EOF at once)."""
        if not self.killed:
            self.killed = True
            kill_process_tree(self.pid, self.pid)

    def release(self, out: _OutputBuffer | None = None) -> None:
        """Kill, keep the last output, close the kernel-side ends (waits for a running waiter)."""
        self.kill()
        with self.lock:
            if self.closed:
                return
            if out is not None:
                self.drain(out, limit=_DRAIN_LIMIT)
            self.closed = True
            with contextlib.suppress(OSError):
                self.sock.close()
            with contextlib.suppress(OSError):
                os.close(self.out_fd)


class _Core:
    """All state of a sandbox; separate from ``Sandbox`` so a finalizer can close it."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.marker = uuid.uuid4().hex
        self.slots = _FifoSlots(config.max_concurrent or _usable_cpus())
        self.lock = threading.Lock()  # template channel and the fields below
        self.template: _TemplateProcess | None = None
        self.workers: dict[int, _WorkerProcess] = {}
        self.root: str | None = None
        self.launcher: _Launcher | None = None
        self.started = False
        self.closed = False
        self.spares: collections.deque[_WorkerProcess] = collections.deque()
        self.refill = threading.Event()
        self.refiller: threading.Thread | None = None
        self.memory_limit = memory_limit_bytes(config)
        self.stopping = threading.Event()
        self.watchdog: threading.Thread | None = None

    # -- template -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the template once (idempotent)."""
        if _cuda_initialized():
            raise RuntimeError(
                "Sandbox.start() must run before the LLM engine initialises CUDA (forking "
                "processes once a CUDA context exists is unsafe): start the sandbox first, then "
                "build the engine."
            )
        with self.lock:
            if self.closed:
                raise SandboxError("the sandbox is closed")
            if self.started:
                return
            self.root = tempfile.mkdtemp(prefix="aimo-sandbox-", dir=self.config.tmp_root)
            self.launcher = _Launcher()
            self.template = self._launch()
            self.started = True
            if self.config.spare_workers > 0 and self.config.mode == "persistent":
                self.refiller = threading.Thread(
                    target=self._refill_spares, name="sandbox-spares", daemon=True
                )
                self.refiller.start()
                self.refill.set()
            if self.memory_limit is not None:
                self.watchdog = threading.Thread(
                    target=self._watch_memory, name="sandbox-memory", daemon=True
                )
                self.watchdog.start()

    def _watch_memory(self) -> None:
        """Enforce the shared memory limit until the sandbox closes."""
        while not self.stopping.wait(self.config.memory_poll_s):
            with contextlib.suppress(Exception):  # a vanished process must not end the watch
                self.check_memory()

    def check_memory(self) -> int:
        """Sum the sandbox's memory; over the limit, SIGKILL the tree that grew most.

        Returns the bytes counted (template RSS + every worker tree's growth).
        """
        with self.lock:
            workers = [w for w in self.workers.values() if not w.killed]
            template = self.template
        total = (_rss_bytes(template.pid) or 0) if template is not None else 0
        charged = [(_tree_growth(w.pid, w.base_rss), w) for w in workers]
        total += sum(c for c, _ in charged)
        if self.memory_limit is None or total <= self.memory_limit or not charged:
            return total
        growth, worker = max(charged, key=lambda cw: cw[0])
        if growth <= 0:
            return total
        with self.lock:
            if self.workers.get(worker.pid) is not worker or worker.killed:
                return total
            worker.memory_killed = True
        worker.kill()  # its session's waiter sees EOF at once
        return total

    def take(self) -> _WorkerProcess:
        """A ready worker: a spare forked ahead of time if one is alive, else a fresh fork."""
        while True:
            with self.lock:
                worker = self.spares.popleft() if self.spares else None
            if worker is None:
                return self.spawn()
            self.refill.set()
            if _pid_alive(worker.pid):
                return worker
            self.discard(worker)

    def _refill_spares(self) -> None:
        """Keep `spare_workers` forked workers ready; runs until the sandbox closes."""
        while not self.closed:
            self.refill.wait()
            self.refill.clear()
            while not self.closed and len(self.spares) < self.config.spare_workers:
                try:
                    worker = self.spawn()
                except Exception:  # the template may be restarting; try on the next request
                    time.sleep(0.5)
                    break
                with self.lock:
                    if self.closed:
                        break
                    self.spares.append(worker)

    def _launch(self) -> _TemplateProcess:
        """Start a template on the launcher thread and wait until it has run the prelude."""
        assert self.launcher is not None
        return self.launcher.call(self._spawn_template)

    def _spawn_template(self) -> _TemplateProcess:
        package_dir = os.path.dirname(os.path.abspath(__file__))
        search_root = os.path.dirname(package_dir)
        module = f"{__package__ or 'kaggle_submission'}._sandbox_worker"
        env = dict(os.environ)
        original_pythonpath = env.get("PYTHONPATH")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (search_root, original_pythonpath) if p)
        for var in (
            "OMP_NUM_THREADS",
            "OPENBLAS_NUM_THREADS",
            "MKL_NUM_THREADS",
            "NUMEXPR_NUM_THREADS",
            "VECLIB_MAXIMUM_THREADS",
            "BLIS_NUM_THREADS",
        ):
            env[var] = "1"
        env["CUDA_VISIBLE_DEVICES"] = ""  # model code must not grab the GPU
        env["PYTHONUNBUFFERED"] = "1"
        env[_MARKER_ENV] = self.marker
        env.pop("PYTHONSTARTUP", None)
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", module, str(child_sock.fileno()), str(os.getpid())],
                pass_fds=[child_sock.fileno()],
                env=env,
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            parent_sock.close()
            raise SandboxError(f"cannot start the sandbox template: {exc}") from exc
        finally:
            child_sock.close()
        config = asdict(self.config)
        config.update(added_path=search_root, pythonpath=original_pythonpath)
        template = _TemplateProcess(proc, parent_sock, proc.pid)
        try:
            parent_sock.settimeout(self.config.start_timeout_s)
            parent_sock.sendall(json.dumps({"op": "init", "config": config}).encode())
            data = parent_sock.recv(1 << 20)
            reply = json.loads(data) if data else {"op": "error", "message": "no reply"}
        except (OSError, ValueError) as exc:
            reply = {"op": "error", "message": repr(exc)}
        if reply.get("op") != "ready":
            template.stop()
            raise SandboxError(f"the sandbox template failed to start:\n{reply.get('message')}")
        return template

    def _template_request(self, msg: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        """Send one request, restarting a dead template once (the lock is held by the caller)."""
        for attempt in range(2):
            if self.closed:
                raise SandboxError("the sandbox is closed")
            if self.template is None or not self.template.alive():
                if self.template is not None:
                    self.template.stop()
                    kill_marked_processes(self.marker)  # orphans of the dead template
                self.template = None
                self.template = self._launch()
            try:
                return self.template.request(msg, fds, timeout=30.0)
            except (OSError, EOFError, ValueError):
                self.template.stop()
                if attempt:
                    raise SandboxError("the sandbox template stopped answering") from None
        raise AssertionError("unreachable")

    # -- workers ------------------------------------------------------------------------------

    def spawn(self) -> _WorkerProcess:
        """Fork a fresh worker from the template and wait until it is ready."""
        if not self.started:
            self.start()
        assert self.root is not None
        tmpdir = tempfile.mkdtemp(prefix="w", dir=self.root)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        out_r, out_w = os.pipe()
        with contextlib.suppress(OSError):
            fcntl.fcntl(out_r, _F_SETPIPE_SZ, _PIPE_SIZE)
        os.set_blocking(out_r, False)
        try:
            with self.lock:
                reply = self._template_request(
                    {"op": "fork", "tmpdir": tmpdir}, [theirs.fileno(), out_w]
                )
                if reply.get("op") != "forked":
                    raise SandboxError(f"the sandbox template refused to fork: {reply}")
                worker = _WorkerProcess(int(reply["pid"]), ours, out_r, tmpdir)
                self.workers[worker.pid] = worker
        except BaseException:
            ours.close()
            os.close(out_r)
            shutil.rmtree(tmpdir, ignore_errors=True)
            raise
        finally:
            theirs.close()
            os.close(out_w)
        try:
            worker.wait_hello(timeout=30.0)
        except BaseException:
            self.discard(worker)
            raise
        worker.base_rss = _rss_bytes(worker.pid) or 0
        return worker

    def discard(self, worker: _WorkerProcess, out: _OutputBuffer | None = None) -> None:
        """Kill a worker's whole tree, keep its last output, remove its directory."""
        with self.lock:
            self.workers.pop(worker.pid, None)
        worker.release(out)
        shutil.rmtree(worker.tmpdir, ignore_errors=True)

    def exit_status(self, pid: int) -> int | None:
        """The wait status of a dead worker, asked of the template that reaped it."""
        with self.lock:
            if self.template is None or not self.template.alive():
                return None
            try:
                reply = self.template.request({"op": "reap", "pid": pid, "timeout": 2.0}, [], 10.0)
            except (OSError, EOFError, ValueError):
                return None
        status = reply.get("status")
        return status if isinstance(status, int) else None

    def close(self) -> None:
        """Kill every worker and the template; sweep for anything carrying our marker."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            self.stopping.set()
            self.refill.set()
            self.spares.clear()
            workers = list(self.workers.values())
            self.workers.clear()
            template, self.template = self.template, None
        for worker in workers:
            worker.kill()
        for worker in workers:
            worker.release()
        if template is not None:
            template.stop()
        if self.started:
            kill_marked_processes(self.marker)
        if self.launcher is not None:
            self.launcher.stop()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)


# --------------------------------------------------------------------------- public API


class Sandbox:
    """Executes model code for one kernel process; thread-safe; a context manager.

    Call ``start()`` (or enter the context) before the LLM engine initialises CUDA.
    """

    def __init__(self, config: SandboxConfig = SandboxConfig()) -> None:
        self.config = config
        self._core = _Core(config)
        self._finalizer = weakref.finalize(self, self._core.close)

    def start(self) -> Sandbox:
        """Start the template (imports numpy/sympy once); raises if CUDA is already initialised."""
        self._core.start()
        return self

    def session(self) -> Session:
        """A new interpreter for one rollout (forked now in persistent mode)."""
        return Session(self._core)

    def close(self) -> None:
        """Kill every worker and the template; no process started by the sandbox survives."""
        self._finalizer()

    @property
    def template_pid(self) -> int | None:
        """Pid of the running template (for monitoring and tests)."""
        template = self._core.template
        return template.pid if template is not None else None

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Session:
    """One rollout's interpreter: state persists across ``run`` calls (persistent mode)."""

    def __init__(self, core: _Core) -> None:
        self._core = core
        self._config = core.config
        self._lock = threading.Lock()  # one block in flight per session
        self._history: list[str] = []
        self._holder: list[_WorkerProcess | None] = [None]  # shared with the finalizer
        self._closed = False
        self._adopt_lock = threading.Lock()  # orders close() against adopting a new worker
        # A session dropped without close() still kills its worker when garbage-collected.
        self._finalizer = weakref.finalize(self, _release_worker, core, self._holder)
        if self._config.mode == "persistent":
            self._adopt(core.take())

    @property
    def _worker(self) -> _WorkerProcess | None:
        return self._holder[0]

    @_worker.setter
    def _worker(self, worker: _WorkerProcess | None) -> None:
        self._holder[0] = worker

    @property
    def pid(self) -> int | None:
        """Pid of the current worker (persistent mode), for monitoring and tests."""
        return self._worker.pid if self._worker is not None else None

    def run(self, code: str) -> ExecResult:
        """Execute one block and return what the model should read. Safe to call from any thread."""
        if not isinstance(code, str):
            raise TypeError("code must be a str")
        queued_from = time.monotonic()
        with self._lock:
            if self._closed or self._core.closed:
                raise SandboxError("the session is closed")
            self._core.slots.acquire()
            try:
                queued = time.monotonic() - queued_from
                if self._config.mode == "isolated":
                    return self._run_isolated(code, queued)
                return self._run_persistent(code, queued)
            finally:
                self._core.slots.release()

    def close(self) -> None:
        """Kill this session's worker now (even mid-block) and remove its directory."""
        with self._adopt_lock:
            self._closed = True
        self._finalizer()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------------

    def _adopt(self, worker: _WorkerProcess) -> bool:
        """Make worker this session's interpreter, unless the session was closed meanwhile."""
        with self._adopt_lock:
            if not self._closed:
                self._worker = worker
                return True
        self._core.discard(worker)
        return False

    def _execute(
        self, worker: _WorkerProcess, code: str, out: _OutputBuffer
    ) -> tuple[str, Any, float]:
        return worker.execute(code, self._config.timeout_s, out, self._config.echo_last_expression)

    def _failure(
        self, status: str, worker: _WorkerProcess, out: _OutputBuffer
    ) -> tuple[str, str, str | None]:
        """Kill the worker after a timeout or death: (sentence for the model, error, crash)."""
        self._core.discard(worker, out)
        if worker.memory_killed and self._core.memory_limit is not None:
            return memory_message(self._core.memory_limit), "MemoryError", None
        if status == "timeout":
            return timeout_message(self._config.timeout_s), "TimeoutError", None
        description = describe_status(self._core.exit_status(worker.pid))
        return crash_message(description), "Crash", description

    def _run_isolated(self, code: str, queued: float) -> ExecResult:
        out = _OutputBuffer(self._config.max_output_chars)
        try:
            worker = self._core.spawn()
        except SandboxError as exc:
            return _sandbox_failure(exc, queued)
        try:
            status, reply, seconds = self._execute(worker, code, out)
        except BaseException:
            self._core.discard(worker)
            raise
        if status == "done":
            self._core.discard(worker)
            return _finished(out, reply, seconds, queued)
        sentence, error, crash = self._failure(status, worker, out)
        return ExecResult(
            output=_join_lines(out.text(), sentence),
            ok=False,
            timed_out=error == "TimeoutError",
            seconds=seconds,
            reset=False,
            restored=False,
            queued_seconds=queued,
            error=error,
            crash=crash,
        )

    def _run_persistent(self, code: str, queued: float) -> ExecResult:
        out = _OutputBuffer(self._config.max_output_chars)
        if self._worker is None:
            try:
                self._adopt(self._core.spawn())
            except SandboxError as exc:
                return _sandbox_failure(exc, queued)
        worker = self._worker
        if worker is None:
            raise SandboxError("the session is closed")
        status, reply, seconds = self._execute(worker, code, out)
        if status == "done":
            notes = [STREAM_REOPENED_MESSAGE.format(name=n) for n in reply.get("reopened") or ()]
            # A thread left running would burn a core through later blocks, and a broken output
            # pipe would silence them: the block ran, but its interpreter cannot be kept. It is
            # replaced without this block (replaying it would start the thread again).
            if reply.get("threads"):
                notes.append(THREADS_MESSAGE)
            if reply.get("output_broken"):
                notes.append(OUTPUT_BROKEN_MESSAGE)
            if not reply.get("threads") and not reply.get("output_broken"):
                if reply.get("ok"):
                    self._history.append(code)
                return _finished(out, reply, seconds, queued, notes)
            self._worker = None
            self._core.discard(worker, out)
            restart, restored, replay_seconds = self._restart()
            result = _finished(out, reply, seconds, queued, [*notes, restart])
            return dataclasses.replace(
                result, reset=True, restored=restored, replay_seconds=replay_seconds
            )
        self._worker = None
        sentence, error, crash = self._failure(status, worker, out)
        restart, restored, replay_seconds = self._restart()
        return ExecResult(
            output=_join_lines(out.text(), sentence, restart),
            ok=False,
            timed_out=error == "TimeoutError",
            seconds=seconds,
            reset=True,
            restored=restored,
            queued_seconds=queued,
            error=error,
            crash=crash,
            replay_seconds=replay_seconds,
        )

    def _restart(self) -> tuple[str, bool, float]:
        """Fork a fresh worker and replay earlier blocks: (sentence, restored, replay seconds)."""
        started = time.monotonic()
        try:
            worker = self._core.spawn()
        except SandboxError:
            return NOT_RESTARTED_MESSAGE, False, 0.0
        if not self._adopt(worker):
            return NOT_RESTARTED_MESSAGE, False, 0.0
        if not self._history:
            return RESTARTED_MESSAGE, False, 0.0
        if not self._config.replay_on_reset:
            self._history.clear()
            return LOST_MESSAGE, False, 0.0
        budget_end = started + self._config.max_replay_s
        for i, block in enumerate(self._history):
            budget = min(self._config.timeout_s, budget_end - time.monotonic())
            status, reply, _secs = "timeout", None, 0.0
            if budget > 0:
                status, reply, _secs = worker.execute(
                    block, budget, _Discard(), self._config.echo_last_expression
                )
            if status == "done" and reply.get("ok"):
                continue
            del self._history[i:]
            if status != "done":  # the replay itself hung or crashed: start clean
                self._history.clear()
                self._worker = None
                self._core.discard(worker)
                with contextlib.suppress(SandboxError):
                    self._adopt(self._core.spawn())
            return LOST_MESSAGE, False, time.monotonic() - started
        return RESTORED_MESSAGE, True, time.monotonic() - started


def _release_worker(core: _Core, holder: list[_WorkerProcess | None]) -> None:
    """Kill a session's worker (at close() or when the session is garbage-collected)."""
    worker, holder[0] = holder[0], None
    if worker is not None:
        core.discard(worker)


def _finished(
    out: _OutputBuffer,
    reply: dict[str, Any],
    seconds: float,
    queued: float,
    notes: list[str] | tuple[str, ...] = (),
) -> ExecResult:
    """ExecResult of a block that ran to its end (with or without an exception)."""
    ok = bool(reply.get("ok"))
    return ExecResult(
        output=_join_lines(out.text(), *notes),
        ok=ok,
        timed_out=False,
        seconds=seconds,
        reset=False,
        restored=False,
        queued_seconds=queued,
        error=None if ok else reply.get("error"),
    )


def _sandbox_failure(exc: SandboxError, queued: float) -> ExecResult:
    """ExecResult when no interpreter could be started at all."""
    return ExecResult(
        output=_join_lines("", NOT_RESTARTED_MESSAGE),
        ok=False,
        timed_out=False,
        seconds=0.0,
        reset=True,
        restored=False,
        queued_seconds=queued,
        error="SandboxError",
        crash=str(exc),
    )
