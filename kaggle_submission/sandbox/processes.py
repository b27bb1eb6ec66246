"""Process management in the kernel process: the template, its workers, limits enforced from here.

Why a separate layer: everything that forks, waits with a deadline, SIGKILLs or watches memory
lives here, below the ``Sandbox``/``Session`` API and above the /proc sweeping it uses. The
template and workers themselves run ``worker.py`` in their own processes.
"""

from __future__ import annotations

import collections
import contextlib
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
from collections import deque
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, TypeVar

from .config import SandboxConfig, SandboxError
from .output import _Discard, _OutputBuffer
from .procfs import (
    MARKER_ENV,
    _pid_alive,
    _rss_bytes,
    _tree_growth,
    host_memory_bytes,
    kill_marked_processes,
    kill_process_tree,
)

_T = TypeVar("_T")
_HEADER = struct.Struct("!I")
_F_SETPIPE_SZ = 1031
_F_GETPIPE_SZ = 1032
_PIPE_SIZE = 1 << 20
_READ_SIZE = 1 << 17  # per-worker read buffer in the kernel process: keep it small
_DRAIN_LIMIT = 2 * _PIPE_SIZE  # read after the reply (a background thread may never stop)
_COALESCE_S = 0.005  # after a small read, wait this long for the result before reading again


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


def _import_root() -> str:
    """The directory the kit's top package is imported from (the template's PYTHONPATH entry)."""
    path = os.path.dirname(os.path.abspath(__file__))
    for _ in range((__package__ or "").count(".") + 1):
        path = os.path.dirname(path)
    return path


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
        from . import worker  # only for its module name: it runs in the template, not here

        search_root = _import_root()
        module = worker.__name__
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
        env[MARKER_ENV] = self.marker
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
