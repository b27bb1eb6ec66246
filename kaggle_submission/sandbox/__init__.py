"""Code-execution sandbox: runs the model's ```python blocks in forked, limited interpreters.

Why: the kernel runs many rollouts at once and feeds each block's output back to the model, so a
block must keep state like a notebook, answer in milliseconds, and never hurt the kernel process
whatever it does (endless loops, huge allocations, ``sys.exit``, fork loops). Model code never runs
in the kernel process.

How:
- ``Sandbox.start()`` launches a *template* process (``python -m
  kaggle_submission.sandbox.worker``, fork+exec, never a bare fork of the kernel) that imports
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

Layout (imports point down; all stdlib only in the kernel process):
- ``session``: the public API, ``Sandbox`` and ``Session``; outcomes become the model's text.
- ``processes``: the template and worker handles, deadlines, kills, spares, the memory watchdog.
- ``procfs``: /proc sweeping (process trees, marked leftovers, memory of a tree).
- ``output``: bounded head+tail capture of a block's output.
- ``messages``: every sentence the model reads, shared with the worker.
- ``config``: ``SandboxConfig``, ``ExecResult``, ``SandboxError``.
- ``worker``: the template and worker processes themselves (run, not imported, by the kernel).

Example::

    with Sandbox(SandboxConfig(timeout_s=5)) as sandbox, sandbox.session() as session:
        session.run("x = 2\\nx**10").output  # '1024\\n'
"""

from __future__ import annotations

from .config import DEFAULT_WARMUP, ExecResult, SandboxConfig, SandboxError
from .messages import (
    CRASH_EXIT_MESSAGE,
    CRASH_SIGNAL_MESSAGE,
    CRASH_UNKNOWN_MESSAGE,
    LOST_MESSAGE,
    MEMORY_MESSAGE,
    NOT_RESTARTED_MESSAGE,
    OMITTED_MARKER,
    OUTPUT_BROKEN_MESSAGE,
    RESTARTED_MESSAGE,
    RESTORED_MESSAGE,
    STREAM_REOPENED_MESSAGE,
    THREADS_MESSAGE,
    TIMEOUT_MESSAGE,
    crash_message,
    format_memory,
    format_seconds,
    memory_message,
    timeout_message,
)
from .output import _OutputBuffer as _OutputBuffer  # re-exported for the tests
from .processes import describe_status, memory_limit_bytes
from .procfs import host_memory_bytes, kill_marked_processes, kill_process_tree
from .session import Sandbox, Session

__all__ = [
    "CRASH_EXIT_MESSAGE",
    "CRASH_SIGNAL_MESSAGE",
    "CRASH_UNKNOWN_MESSAGE",
    "DEFAULT_WARMUP",
    "LOST_MESSAGE",
    "MEMORY_MESSAGE",
    "NOT_RESTARTED_MESSAGE",
    "OMITTED_MARKER",
    "OUTPUT_BROKEN_MESSAGE",
    "RESTARTED_MESSAGE",
    "RESTORED_MESSAGE",
    "STREAM_REOPENED_MESSAGE",
    "THREADS_MESSAGE",
    "TIMEOUT_MESSAGE",
    "ExecResult",
    "Sandbox",
    "SandboxConfig",
    "SandboxError",
    "Session",
    "crash_message",
    "describe_status",
    "format_memory",
    "format_seconds",
    "host_memory_bytes",
    "kill_marked_processes",
    "kill_process_tree",
    "memory_limit_bytes",
    "memory_message",
    "timeout_message",
]
