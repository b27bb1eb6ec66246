"""Template ("zygote") and worker processes of the code sandbox; see the package docstring.

Started by the kernel process as ``python -m kaggle_submission.sandbox.worker <fd> <parent pid>``;
the kernel process imports it only for its module name. This module uses the standard library only
at import time (the text it writes for the model comes from ``messages``, stdlib only too); numpy,
sympy and mpmath are imported by the template (``preload``), once, so that every worker forked from
it starts warm (~5 ms) and shares those pages copy-on-write.

Protocol (all JSON):
- kernel <-> template: a SOCK_SEQPACKET socket, one message per request. ``init`` (config) ->
  ``ready``; ``fork`` (+ two fds by SCM_RIGHTS: the worker's socket end and the output pipe's write
  end) -> ``forked`` with the pid; ``reap`` (pid) -> the wait status. EOF: the template kills every
  worker and exits.
- kernel <-> worker: a SOCK_STREAM socketpair, 4-byte length + JSON. ``run`` (code) -> result;
  the worker's fds 1 and 2 are the pipe, which the kernel drains. The kernel never waits on the
  worker without a deadline: timeouts are enforced there, by SIGKILL.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import gc
import io
import json
import os
import resource
import select
import signal
import socket
import struct
import sys
import time
import traceback
import types
from typing import Any

from .messages import (
    CAUSE_SEPARATOR,
    CODE_FILENAME,
    CONTEXT_SEPARATOR,
    EXEC_REFUSED_MESSAGE,
    FORK_LIMIT_MESSAGE,
    NESTED_FORK_MESSAGE,
    SIGNAL_REFUSED_MESSAGE,
    STR_FAILED_MESSAGE,
    TRACEBACK_FRAME,
    TRACEBACK_HEADER,
    TRACEBACK_LINE,
    WRITE_REFUSED_MESSAGE,
    repeated_frames,
    system_exit_message,
)

_HEADER = struct.Struct("!I")
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_RECURSIVE_CUTOFF = 3  # same as the traceback module: repeated frames beyond this are counted
_STRAY_SCAN_S = 1.0  # how often the template looks for orphans reparented to it
# After a block, threads it started get this long to finish before the kernel is told they are
# still running (a thread started without join() that prints one line should not cost a restart).
_THREAD_GRACE_S = 0.05

# Audit events that change the file system, with the positions of their path arguments.
_PATH_EVENTS: dict[str, tuple[int, ...]] = {
    "os.remove": (0,),
    "os.rmdir": (0,),
    "os.mkdir": (0,),
    "os.chmod": (0,),
    "os.chown": (0,),
    "os.chflags": (0,),
    "os.lchflags": (0,),
    "os.truncate": (0,),
    "os.utime": (0,),
    "os.setxattr": (0,),
    "os.removexattr": (0,),
    "os.rename": (0, 1),
    "os.link": (1,),
    "os.symlink": (1,),
    "shutil.rmtree": (0,),
}
_SPAWN_EVENTS = frozenset(
    {"os.fork", "os.forkpty", "subprocess.Popen", "os.system", "os.posix_spawn", "os.spawn"}
)
_DEV_WRITABLE = frozenset({"/dev/null", "/dev/stdout", "/dev/stderr", "/dev/tty"})


# --------------------------------------------------------------------------- small helpers


def _prctl(option: int, value: int) -> bool:
    """Best-effort prctl(2) through ctypes (Linux only); False where it is unavailable."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _send_msg(sock: socket.socket, obj: dict[str, Any]) -> None:
    """Write one length-prefixed JSON message on a stream socket."""
    data = json.dumps(obj).encode()
    sock.sendall(_HEADER.pack(len(data)) + data)


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    """Read exactly n bytes, or None at EOF."""
    chunks = bytearray()
    while len(chunks) < n:
        part = sock.recv(n - len(chunks))
        if not part:
            return None
        chunks += part
    return bytes(chunks)


def _recv_msg(sock: socket.socket) -> dict[str, Any] | None:
    """Read one length-prefixed JSON message, or None at EOF."""
    head = _recv_exact(sock, _HEADER.size)
    if head is None:
        return None
    body = _recv_exact(sock, _HEADER.unpack(head)[0])
    return None if body is None else json.loads(body)


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(ppid, pgid) of a live process from /proc, or None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[1]), int(fields[2])


def _live_pids() -> list[int]:
    """Every pid in /proc."""
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _set_limit(which: int, value: int) -> None:
    """Lower a resource limit (never above the hard limit)."""
    with contextlib.suppress(ValueError, OSError):
        _soft, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(which, (value, hard))


def _task_count() -> int:
    """OS threads of this process (threading's count misses ``_thread`` and C threads)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


def _fd_identity(fd: int) -> tuple[int, int] | None:
    """(device, inode) of an open fd, or None if it is closed."""
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _write_oom_score(value: int) -> None:
    """Make the OOM killer pick sandbox processes before the kernel process (best-effort)."""
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as f:
        f.write(str(value))


# --------------------------------------------------------------------------- tracebacks


def format_exception(exc: BaseException, sources: dict[int, tuple[Any, list[str]]]) -> str:
    """Python-style traceback text showing only frames of the model's code (``<code>``).

    Frames are walked by hand (no linecache, no caret lines) so the text is the same on Python
    3.10-3.13 and a 10**6-deep RecursionError formats in well under a second.
    """
    parts: list[str] = []
    _format_chain(exc, sources, parts, set())
    return "".join(parts)


def _format_chain(
    exc: BaseException,
    sources: dict[int, tuple[Any, list[str]]],
    parts: list[str],
    seen: set[int],
) -> None:
    """Append one exception with its cause/context first, like Python does."""
    seen.add(id(exc))
    cause, context = exc.__cause__, exc.__context__
    if cause is not None and id(cause) not in seen:
        _format_chain(cause, sources, parts, seen)
        parts.append(CAUSE_SEPARATOR)
    elif context is not None and not exc.__suppress_context__ and id(context) not in seen:
        _format_chain(context, sources, parts, seen)
        parts.append(CONTEXT_SEPARATOR)
    frames: list[tuple[int, str, str | None]] = []
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_filename == CODE_FILENAME:
            lineno = tb.tb_lineno
            entry = sources.get(id(code))
            line = None
            if entry is not None and entry[0] is code and 0 < lineno <= len(entry[1]):
                line = entry[1][lineno - 1].strip() or None
            frames.append((lineno, code.co_name, line))
        tb = tb.tb_next
    if frames:
        parts.append(TRACEBACK_HEADER)
        parts.extend(_format_frames(frames))
    parts.extend(traceback.format_exception_only(type(exc), exc))


def _format_frames(frames: list[tuple[int, str, str | None]]) -> list[str]:
    """Render frames, folding runs of the same frame as '[Previous line repeated N more times]'."""
    out: list[str] = []
    last: tuple[int, str, str | None] | None = None
    count = 0

    def flush_repeats() -> None:
        if count > _RECURSIVE_CUTOFF:
            out.append(repeated_frames(count - _RECURSIVE_CUTOFF))

    for frame in frames:
        if frame != last:
            flush_repeats()
            last, count = frame, 0
        count += 1
        if count > _RECURSIVE_CUTOFF:
            continue
        lineno, name, line = frame
        out.append(TRACEBACK_FRAME.format(filename=CODE_FILENAME, lineno=lineno, name=name))
        if line:
            out.append(TRACEBACK_LINE.format(line=line))
    flush_repeats()
    return out


# --------------------------------------------------------------------------- the worker


class _Guard:
    """Audit-hook state of one worker: refuses common accidents, NOT a security boundary.

    It refuses: signals to processes outside the worker's process group (``os.kill(os.getppid(),
    9)``), file-system changes outside the private directory and /dev/null, ``os.fork`` in a
    forked child (fork loops) or beyond ``max_forks`` per block, and ``os.exec*`` replacing the
    worker itself. Code can still escape it (ctypes, exec'd programs); it only stops accidents.
    """

    def __init__(self, root: str, max_forks: int) -> None:
        self.root = os.path.realpath(root)
        self.pid = os.getpid()
        self.pgid = os.getpgid(0)
        self.max_forks = max_forks
        self.forks = 0
        self.spawned = False

    def hook(self, event: str, args: tuple[Any, ...]) -> None:
        """sys.addaudithook callback: cheap for every event, raises PermissionError to refuse."""
        if event == "open":
            flags = args[2]
            if isinstance(flags, int) and flags & _WRITE_FLAGS and not isinstance(args[0], int):
                self._check_write(args[0])
        elif event in _PATH_EVENTS:
            for i in _PATH_EVENTS[event]:
                if i < len(args) and not isinstance(args[i], int) and args[i] is not None:
                    self._check_write(args[i])
        elif event in _SPAWN_EVENTS:
            self.spawned = True
            if event in ("os.fork", "os.forkpty"):
                self._check_fork()
        elif event == "os.kill":
            if args[1] != 0:  # signal 0 only probes whether a process exists
                self._check_kill(args[0])
        elif event == "os.killpg":
            if args[0] not in (0, self.pgid):
                raise PermissionError(SIGNAL_REFUSED_MESSAGE)
        elif event == "os.exec" and os.getpid() == self.pid:
            raise PermissionError(EXEC_REFUSED_MESSAGE)

    def _check_write(self, path: Any) -> None:
        try:
            p = os.fsdecode(os.fspath(path))
        except TypeError:
            return
        if p in _DEV_WRITABLE or p.startswith(("/dev/fd/", "/proc/self/fd/")):
            return
        try:
            full = os.path.realpath(os.path.join(os.getcwd(), p))
        except OSError:
            full = os.path.realpath(p)
        if full != self.root and not full.startswith(self.root + os.sep):
            raise PermissionError(WRITE_REFUSED_MESSAGE.format(path=p))

    def _check_fork(self) -> None:
        if os.getpid() != self.pid:
            raise PermissionError(NESTED_FORK_MESSAGE)
        self.forks += 1
        if self.forks > self.max_forks:
            raise PermissionError(FORK_LIMIT_MESSAGE.format(limit=self.max_forks))

    def _check_kill(self, pid: int) -> None:
        me = os.getpid()
        if pid in (0, me, -self.pgid):
            return
        if pid > 0:
            try:
                if os.getpgid(pid) == self.pgid:
                    return
            except OSError:
                return  # no such process: let os.kill raise its own error
            stat = _proc_stat(pid)
            if stat is not None and stat[0] == me:
                return  # our own child that left the group (start_new_session)
        raise PermissionError(SIGNAL_REFUSED_MESSAGE)


class _Worker:
    """One persistent interpreter: runs blocks sent by the kernel process, REPL-style."""

    def __init__(
        self,
        sock: socket.socket,
        out_fd: int,
        null_fd: int,
        namespace: dict[str, Any],
        guard: _Guard | None,
    ) -> None:
        self.sock = sock
        self.out_fd = out_fd  # private copies, to restore fds 0-2 before each block
        self.null_fd = null_fd
        self.ns = namespace
        self.guard = guard
        self.pid = os.getpid()
        self.sources: dict[int, tuple[Any, list[str]]] = {}
        self.pipe = _fd_identity(out_fd)  # the output pipe, to notice when code breaks it
        self.stdout = _text_stream(1, write_through=False)
        self.stderr = _text_stream(2, write_through=True)
        self.stdin = open(os.devnull, encoding="utf-8")  # noqa: SIM115 - lives as long as the worker
        self.reopened: list[str] = []  # streams the current block closed (reported, then reset)
        self._send = _send_msg
        self._exit = os._exit

    def serve(self) -> None:
        """Answer requests until the kernel process closes the socket."""
        self._send(self.sock, {"op": "hello", "pid": self.pid})
        while True:
            try:
                msg = _recv_msg(self.sock)
            except OSError:
                msg = None
            if msg is None:
                self._exit(0)
            if msg.get("op") == "run":
                reply = self.run_block(msg["code"], bool(msg.get("echo", True)))
                try:
                    self._send(self.sock, reply)
                except OSError:
                    self._exit(0)

    def run_block(self, code: str, echo: bool) -> dict[str, Any]:
        """Execute one block; output goes to fds 1/2, the reply says how it ended."""
        self._restore_stdio()
        self.reopened = []
        threads_before = _task_count()
        if self.guard is not None:
            self.guard.forks = 0
            self.guard.spawned = False
        ok, error, exit_code = True, None, None
        try:
            self._execute(code, echo)
        except SystemExit as exc:
            error = "SystemExit"
            exit_code = exc.code
            ok = exc.code is None or exc.code == 0
            if not ok:
                self._print_error(system_exit_message(exc.code) + "\n")
        except BaseException as exc:
            ok, error = False, type(exc).__name__
            try:
                text = format_exception(exc, self.sources)
            except BaseException:  # a broken __str__ must not take the worker down
                text = STR_FAILED_MESSAGE.format(name=type(exc).__name__)
            self._print_error(text)
        finally:
            self._flush()
        if os.getpid() != self.pid:  # a child forked by the block finished it: just leave
            self._exit(0 if ok else (exit_code if isinstance(exit_code, int) else 1))
        if self.guard is not None and self.guard.spawned:
            _kill_group_members(os.getpgid(0), os.getpid())
        self._reopen_closed()
        return {
            "ok": ok,
            "error": error,
            "exit_code": exit_code if isinstance(exit_code, int) else None,
            "reopened": self.reopened,
            "threads": self._threads_left(threads_before),
            "output_broken": _fd_identity(self.out_fd) != self.pipe,
        }

    def _threads_left(self, before: int) -> int:
        """Threads the block left running (after a short grace for ones about to finish)."""
        if _task_count() <= before:
            return 0
        deadline = time.monotonic() + _THREAD_GRACE_S
        threading = sys.modules.get("threading")
        if threading is not None:
            with contextlib.suppress(BaseException):
                for thread in threading.enumerate():
                    if thread is not threading.main_thread():
                        thread.join(max(0.0, deadline - time.monotonic()))
        while _task_count() > before and time.monotonic() < deadline:
            time.sleep(0.001)
        return max(0, _task_count() - before)

    def _reopen_closed(self) -> None:
        """Replace the worker's own stdout/stderr objects if the block closed them.

        ``sys.stdout.close()`` closes the object every later block would print to; restoring
        ``sys.stdout`` alone would hand back the closed object. The fds stay open (closefd=False).
        """
        if self.stdout.closed:
            self.stdout = _text_stream(1, write_through=False)
            self.reopened.append("sys.stdout")
        if self.stderr.closed:
            self.stderr = _text_stream(2, write_through=True)
            self.reopened.append("sys.stderr")

    def _restore_stdio(self) -> None:
        """Undo what an earlier block did to fds 0-2 or sys.std* (closing fd 1, say)."""
        with contextlib.suppress(OSError):
            os.dup2(self.out_fd, 1)
            os.dup2(self.out_fd, 2)
            os.dup2(self.null_fd, 0)
        sys.stdout, sys.stderr, sys.stdin = self.stdout, self.stderr, self.stdin
        sys.__stdout__, sys.__stderr__, sys.__stdin__ = self.stdout, self.stderr, self.stdin

    def _execute(self, code: str, echo: bool) -> None:
        tree = ast.parse(code, CODE_FILENAME, "exec")
        lines = code.splitlines()
        last: ast.expr | None = None
        if echo and tree.body and isinstance(tree.body[-1], ast.Expr):
            last = tree.body.pop().value
        if tree.body:
            module = compile(tree, CODE_FILENAME, "exec")
            self._register(module, lines)
            exec(module, self.ns)
        if last is not None:
            expr = compile(ast.Expression(body=last), CODE_FILENAME, "eval")
            self._register(expr, lines)
            value = eval(expr, self.ns)
            if value is not None:
                sys.displayhook(value)

    def _register(self, code: types.CodeType, lines: list[str]) -> None:
        """Remember the source of every code object of a block, for tracebacks in later blocks."""
        stack = [code]
        while stack:
            c = stack.pop()
            self.sources[id(c)] = (c, lines)
            stack.extend(k for k in c.co_consts if isinstance(k, types.CodeType))

    def _print_error(self, text: str) -> None:
        with contextlib.suppress(BaseException):
            self.stdout.flush()
        self._reopen_closed()  # the traceback must not be lost because the code closed stderr
        with contextlib.suppress(BaseException):
            self.stderr.write(text)

    def _flush(self) -> None:
        for stream in (sys.stdout, sys.stderr, self.stdout, self.stderr):
            with contextlib.suppress(BaseException):
                stream.flush()


def _text_stream(fd: int, write_through: bool) -> io.TextIOWrapper:
    """A line-buffered UTF-8 text stream on fd 1 or 2 that never closes the fd itself."""
    return io.TextIOWrapper(
        io.FileIO(fd, "w", closefd=False),
        encoding="utf-8",
        errors="backslashreplace",
        line_buffering=True,
        write_through=write_through,
    )


def _kill_group_members(pgid: int, keep: int) -> None:
    """SIGKILL what the block started (our group, our children), then reap.

    Bounded by time, not by rounds: on a loaded machine a killed process can take a while to
    leave /proc, and the block must not return while one is still there.
    """
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        found = False
        for pid in _live_pids():
            if pid == keep:
                continue
            stat = _proc_stat(pid)
            if stat is not None and (stat[1] == pgid or stat[0] == keep):
                found = True
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        _reap_own_children()
        if not found:
            return
        time.sleep(0.001)


def _reap_own_children() -> None:
    """Collect exit statuses of finished children so no zombie lingers."""
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _worker_main(
    sock_fd: int, out_fd: int, tmpdir: str, cfg: dict[str, Any], base: dict[str, Any]
) -> None:
    """Set up a freshly forked worker (limits, fds, cwd, hook), then serve the kernel process."""
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    template_pid = os.getppid()
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != template_pid:
        os._exit(0)
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # too-big writes fail with EFBIG, no kill
    mb = 1024 * 1024
    _set_limit(resource.RLIMIT_AS, int(cfg["memory_limit_mb"]) * mb)
    _set_limit(resource.RLIMIT_FSIZE, int(cfg["file_size_limit_mb"]) * mb)
    _set_limit(resource.RLIMIT_CORE, 0)
    _write_oom_score(1000)

    os.dup2(out_fd, 1)
    os.dup2(out_fd, 2)
    os.set_inheritable(out_fd, False)
    null_fd = os.open(os.devnull, os.O_RDONLY)  # non-inheritable, like out_fd now
    os.dup2(null_fd, 0)
    sock = socket.socket(fileno=sock_fd)
    sock.setblocking(True)
    sock.set_inheritable(False)

    def close_in_child() -> None:  # children of the block must not hold the kernel's socket
        with contextlib.suppress(OSError):
            os.close(sock.detach())

    os.register_at_fork(after_in_child=close_in_child)

    os.chdir(tmpdir)
    os.environ["TMPDIR"] = tmpdir
    os.environ["MPLCONFIGDIR"] = tmpdir
    import tempfile

    tempfile.tempdir = tmpdir
    sys.dont_write_bytecode = True
    np_random = sys.modules.get("numpy.random")
    if np_random is not None:
        with contextlib.suppress(Exception):
            np_random.seed()  # type: ignore[attr-defined]

    main = types.ModuleType("__main__")
    main.__dict__.update(base)
    main.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = main
    guard = None
    if cfg["audit_hook"]:
        guard = _Guard(tmpdir, int(cfg["max_forks_per_block"]))
        sys.addaudithook(guard.hook)
    _Worker(sock, out_fd, null_fd, main.__dict__, guard).serve()


# --------------------------------------------------------------------------- the template


class _Template:
    """The warm process that forks workers on request and reaps them (a child subreaper)."""

    def __init__(self, ctrl: socket.socket, cfg: dict[str, Any]) -> None:
        self.ctrl = ctrl
        self.cfg = cfg
        self.base: dict[str, Any] = {}
        self.workers: set[int] = set()
        self.statuses: dict[int, int] = {}
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.last_scan = 0.0

    def prepare(self) -> None:
        """Import the heavy modules, run the prelude and warm-up, freeze the heap for COW."""
        for name in self.cfg["preload"]:
            __import__(name)
        self.base = {"__name__": "__main__", "__doc__": None, "__builtins__": builtins}
        exec(compile(self.cfg["prelude"], "<prelude>", "exec"), self.base)
        if self.cfg["warmup"]:
            scratch = dict(self.base)
            with contextlib.suppress(Exception):
                exec(compile(self.cfg["warmup"], "<warmup>", "exec"), scratch)
        gc.collect()
        gc.freeze()

    def serve(self) -> None:
        """Handle requests until the kernel's socket reaches EOF."""
        signal.signal(signal.SIGCHLD, lambda _s, _f: None)
        signal.set_wakeup_fd(self.wake_w)
        while True:
            ready, _, _ = select.select([self.ctrl, self.wake_r], [], [], _STRAY_SCAN_S)
            if self.wake_r in ready:
                with contextlib.suppress(OSError):
                    while os.read(self.wake_r, 512):
                        pass
            self.reap()
            now = time.monotonic()
            if now - self.last_scan >= _STRAY_SCAN_S:
                self.last_scan = now
                self.kill_strays()
            if self.ctrl in ready:
                try:
                    data, fds, _flags, _addr = socket.recv_fds(self.ctrl, 1 << 20, 4)
                except OSError:
                    return
                if not data:
                    return
                self.handle(json.loads(data), fds)

    def handle(self, msg: dict[str, Any], fds: list[int]) -> None:
        """Dispatch one request; every request gets exactly one reply."""
        op = msg.get("op")
        if op == "fork" and len(fds) == 2:
            reply = {"op": "forked", "pid": self.fork(fds[0], fds[1], msg["tmpdir"])}
        elif op == "reap":
            reply = {"op": "reaped", "status": self.wait_for(int(msg["pid"]), msg["timeout"])}
        elif op == "ping":
            reply = {"op": "pong", "pid": os.getpid()}
        else:
            reply = {"op": "error", "message": f"bad request {op!r}"}
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.ctrl.sendall(json.dumps(reply).encode())

    def fork(self, sock_fd: int, out_fd: int, tmpdir: str) -> int:
        """Fork one worker that keeps sock_fd/out_fd; the parent side closes them."""
        pid = os.fork()
        if pid == 0:
            try:
                for fd in (self.ctrl.detach(), self.wake_r, self.wake_w):
                    with contextlib.suppress(OSError):
                        os.close(fd)
                _worker_main(sock_fd, out_fd, tmpdir, self.cfg, self.base)
            except BaseException:
                with contextlib.suppress(BaseException):
                    traceback.print_exc()
            finally:
                os._exit(70)
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)
        self.workers.add(pid)
        return pid

    def reap(self) -> None:
        """Collect every finished child; keep the statuses of workers for ``reap`` requests."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.workers:
                self.workers.discard(pid)
                self.statuses[pid] = status
                while len(self.statuses) > 4096:
                    self.statuses.pop(next(iter(self.statuses)))

    def wait_for(self, pid: int, timeout: float) -> int | None:
        """Wait status of one worker (the kernel process has already killed or lost it)."""
        deadline = time.monotonic() + timeout
        while True:
            self.reap()
            if pid in self.statuses:
                return self.statuses.pop(pid)
            if pid not in self.workers or time.monotonic() >= deadline:
                return None
            time.sleep(0.002)

    def kill_strays(self) -> None:
        """SIGKILL orphans reparented to us (we are a subreaper) that are not workers."""
        me = os.getpid()
        for pid in _live_pids():
            if pid in self.workers:
                continue
            stat = _proc_stat(pid)
            if stat is not None and stat[0] == me:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)

    def shutdown(self) -> None:
        """Kill every worker's process group and every other child, reap them all."""
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        me = os.getpid()
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            for pid in list(self.workers):
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGKILL)
            children = [p for p in _live_pids() if (_proc_stat(p) or (0, 0))[0] == me]
            for pid in children:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            self.reap()
            if not children and not self.workers:
                return
            time.sleep(0.005)


def main(argv: list[str] | None = None) -> None:
    """Template entry point: ``<control fd> <kernel pid>``."""
    argv = sys.argv[1:] if argv is None else argv
    ctrl_fd, parent_pid = int(argv[0]), int(argv[1])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _raise_exit)
    # SIGTERM, not SIGKILL: the template unwinds and kills every worker's process group first.
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:
        return
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    _write_oom_score(800)
    ctrl = socket.socket(fileno=ctrl_fd)
    ctrl.set_inheritable(False)
    data = ctrl.recv(1 << 22)
    if not data:
        return
    cfg = json.loads(data)["config"]
    _clean_path(cfg)
    template = _Template(ctrl, cfg)
    try:
        started = time.monotonic()
        try:
            template.prepare()
        except BaseException:
            ctrl.sendall(json.dumps({"op": "error", "message": traceback.format_exc()}).encode())
            return
        ready = {"op": "ready", "pid": os.getpid(), "seconds": time.monotonic() - started}
        ctrl.sendall(json.dumps(ready).encode())
        template.serve()
    finally:
        template.shutdown()


def _clean_path(cfg: dict[str, Any]) -> None:
    """Undo the PYTHONPATH entry that located this package, so model code does not see it."""
    added = cfg.get("added_path")
    if added:
        with contextlib.suppress(ValueError):
            sys.path.remove(added)
    original = cfg.get("pythonpath")
    if original is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = original


def _raise_exit(_signum: int, _frame: Any) -> None:
    """SIGTERM handler: unwind through ``finally`` so the workers are killed."""
    raise SystemExit(0)


if __name__ == "__main__":
    main()
