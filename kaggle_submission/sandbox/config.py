"""What the sandbox is asked to do and what it answers: its config, result and error types.

Stdlib only; the kernel's presets build ``SandboxConfig`` without starting any process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DEFAULT_WARMUP = (
    "_x = sp.symbols('x')\n"
    "sp.factor(_x**4 - 1); sp.expand((_x + 1)**3); sp.solve(_x**2 - 2, _x)\n"
    "sp.simplify(sp.sin(_x)**2 + sp.cos(_x)**2); sp.isprime(97); sp.factorint(360)\n"
    "sp.Rational(1, 3) + sp.Integer(2); sp.binomial(10, 3); np.arange(4).sum()\n"
)


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
