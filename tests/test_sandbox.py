"""Tests of the code sandbox: what the model reads (exact strings) and containment of hostile code.

One module-scoped sandbox with a 1 s timeout serves most tests; every hostile case runs in its own
session and must leave that session able to answer ``print(1+1)`` afterwards.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from kaggle_submission.sandbox import (
    OMITTED_MARKER,
    ExecResult,
    Sandbox,
    SandboxConfig,
    Session,
    _OutputBuffer,
    format_memory,
    format_seconds,
    host_memory_bytes,
    memory_limit_bytes,
)

TIMEOUT = 1.0
CONTAINED_S = 5.0  # generous bound: a 1 s timeout must come back well within this
TIMEOUT_LINE = "TimeoutError: the code ran longer than 1 second and was stopped."
RESTORED_LINE = "The interpreter was restarted; variables from earlier blocks were restored."
LOST_LINE = "The interpreter was restarted; variables from earlier blocks are lost."
RESTARTED_LINE = "The interpreter was restarted."
THREADS_LINE = "This code left threads running after it ended; they were stopped."
STDOUT_REOPENED_LINE = "This code closed sys.stdout; it was reopened for later blocks."
STDERR_REOPENED_LINE = "This code closed sys.stderr; it was reopened for later blocks."
OUTPUT_BROKEN_LINE = "This code disconnected the interpreter's output."
MEMORY_LINE = (
    "MemoryError: the interpreter was stopped for using too much memory "
    "(all interpreters together may use 300 MB)."
)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(SandboxConfig(timeout_s=TIMEOUT)) as sb:
        yield sb


@pytest.fixture
def session(sandbox: Sandbox) -> Iterator[Session]:
    with sandbox.session() as s:
        yield s


def descendants(pid: int) -> list[psutil.Process]:
    """Live (non-zombie) descendants of a process."""
    try:
        procs = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    alive = []
    for p in procs:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.NoSuchProcess:
            pass
    return alive


def processes_with_cmdline(cmdline: list[str]) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        if p.info["cmdline"] == cmdline and p.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(p)
    return found


def assert_recovers(s: Session) -> None:
    assert s.run("print(1+1)").output == "2\n"


# --------------------------------------------------------------------------- what the model reads


def test_state_persists_across_blocks(session: Session) -> None:
    assert session.run("x = 5").output == ""
    r = session.run("print(x)")
    assert (r.output, r.ok, r.timed_out, r.reset) == ("5\n", True, False, False)


def test_prelude_names_available(session: Session) -> None:
    code = "x = sp.symbols('x')\nprint(sp.factor(x**2 - 1), np.arange(3).sum(), math.gcd(12, 18))"
    assert session.run(code).output == "(x - 1)*(x + 1) 3 6\n"


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("1+1", "2\n"),
        ("y = 5", ""),
        ("x = 3\nx*2", "6\n"),
        ("(1 +\n 2 +\n 3)", "6\n"),
        ("sum(\n    i * i\n    for i in range(4)\n)", "14\n"),
        ("None", ""),
        ("print('hi')", "hi\n"),
        ("[].append(1)", ""),
        ("'abc'", "'abc'\n"),
        ("x = 2\nif x:\n    x += 1\nx", "3\n"),
        ("def f():\n    return 7", ""),
        ("import math\nmath.pi", "3.141592653589793\n"),
    ],
)
def test_repl_echo_of_last_expression(session: Session, code: str, expected: str) -> None:
    r = session.run(code)
    assert r.ok
    assert r.output == expected


def test_traceback_shows_only_model_frames(session: Session) -> None:
    r = session.run("a = 1\nb = 0\nprint(a / b)")
    assert r.output == (
        "Traceback (most recent call last):\n"
        '  File "<code>", line 3, in <module>\n'
        "    print(a / b)\n"
        "ZeroDivisionError: division by zero\n"
    )
    assert (r.ok, r.error, r.reset) == (False, "ZeroDivisionError", False)


def test_traceback_through_function_defined_in_earlier_block(session: Session) -> None:
    session.run("def f(n):\n    return 10 // n")
    r = session.run("print('start')\nf(0)")
    assert r.output == (
        "start\n"
        "Traceback (most recent call last):\n"
        '  File "<code>", line 2, in <module>\n'
        "    f(0)\n"
        '  File "<code>", line 2, in f\n'
        "    return 10 // n\n"
        "ZeroDivisionError: integer division or modulo by zero\n"
    )


def test_library_frames_hidden(session: Session) -> None:
    r = session.run("import fractions\nfractions.Fraction(1, 0)")
    assert r.output == (
        "Traceback (most recent call last):\n"
        '  File "<code>", line 2, in <module>\n'
        "    fractions.Fraction(1, 0)\n"
        "ZeroDivisionError: Fraction(1, 0)\n"
    )
    assert "site-packages" not in r.output and "sandbox" not in r.output


def test_syntax_error_text(session: Session) -> None:
    r = session.run("x = = 2")
    assert (
        r.output == '  File "<code>", line 1\n    x = = 2\n        ^\nSyntaxError: invalid syntax\n'
    )
    assert (r.ok, r.error) == (False, "SyntaxError")


def test_output_before_exception_kept_in_order(session: Session) -> None:
    code = (
        "import sys\nprint('out')\nprint('err', file=sys.stderr)\nprint('out2')\nraise KeyError(3)"
    )
    r = session.run(code)
    assert r.output.startswith("out\nerr\nout2\nTraceback (most recent call last):\n")
    assert r.output.endswith("KeyError: 3\n")


def test_subprocess_and_c_level_output_interleaved(session: Session) -> None:
    code = (
        "import os, subprocess\n"
        "print('a')\n"
        "os.write(1, b'b\\n')\n"
        "subprocess.run(['echo', 'c'])\n"
        "print('d')"
    )
    assert session.run(code).output == "a\nb\nc\nd\n"


def test_output_truncation_exact(session: Session) -> None:
    r = session.run("print('a' * 600 + 'b' * 600)")
    expected = "a" * 500 + OMITTED_MARKER.format(count=201) + "b" * 499 + "\n"
    assert r.output == expected
    assert "\n... [201 characters omitted] ...\n" in r.output


@pytest.mark.parametrize("chunk", [1, 7, 1000, 5000])
def test_output_buffer_streaming_matches_whole(chunk: int) -> None:
    text = "".join(f"line {i} é∑\n" for i in range(3000))
    data = text.encode()
    buf = _OutputBuffer(100)
    for i in range(0, len(data), chunk):
        buf.feed(data[i : i + chunk])
    omitted = len(text) - 100
    assert buf.text() == text[:50] + OMITTED_MARKER.format(count=omitted) + text[-50:]


def test_output_buffer_short_output_untouched() -> None:
    buf = _OutputBuffer(10)
    buf.feed(b"0123456789")
    assert buf.text() == "0123456789"


def test_format_seconds() -> None:
    assert [format_seconds(t) for t in (1.0, 5.0, 0.5, 2.5)] == [
        "1 second",
        "5 seconds",
        "0.5 seconds",
        "2.5 seconds",
    ]


def test_sys_exit_is_reported_and_worker_survives(session: Session) -> None:
    pid = session.pid
    r = session.run("import sys\nprint('bye')\nsys.exit(3)")
    assert (r.output, r.ok, r.error, r.reset) == (
        "bye\nSystemExit: 3\n",
        False,
        "SystemExit",
        False,
    )
    assert session.pid == pid
    r = session.run("import sys; sys.exit(0)")
    assert (r.output, r.ok) == ("", True)
    assert_recovers(session)


def test_input_gets_eof(session: Session) -> None:
    r = session.run("input()")
    assert r.output == (
        "Traceback (most recent call last):\n"
        '  File "<code>", line 1, in <module>\n'
        "    input()\n"
        "EOFError: EOF when reading a line\n"
    )


# --------------------------------------------------------------------------- timeouts and resets


def test_timeout_restores_earlier_variables(session: Session) -> None:
    session.run("x = 41")
    session.run("y = 1 / 0")  # failed blocks are not replayed
    before = session.pid
    r = session.run("print('partial', flush=True)\nsum(range(10**12))")
    assert r.output == f"partial\n{TIMEOUT_LINE}\n{RESTORED_LINE}\n"
    assert (r.ok, r.timed_out, r.reset, r.restored, r.error) == (
        False,
        True,
        True,
        True,
        "TimeoutError",
    )
    assert r.seconds < CONTAINED_S
    assert session.pid != before
    assert session.run("print(x + 1)").output == "42\n"


def test_timeout_without_earlier_blocks(session: Session) -> None:
    r = session.run("while True: pass")
    assert r.output == f"{TIMEOUT_LINE}\n{RESTARTED_LINE}\n"
    assert (r.reset, r.restored) == (True, False)
    assert_recovers(session)


def test_timeout_without_replay_loses_variables() -> None:
    config = SandboxConfig(timeout_s=TIMEOUT, replay_on_reset=False, max_concurrent=1)
    with Sandbox(config) as sb, sb.session() as s:
        s.run("x = 1")
        r = s.run("while True: pass")
        assert r.output == f"{TIMEOUT_LINE}\n{LOST_LINE}\n"
        assert (r.reset, r.restored) == (True, False)
        assert s.run("print('x' in dir())").output == "False\n"


def test_exit_status_crash_message(session: Session) -> None:
    session.run("z = 9")
    r = session.run("import os\nos._exit(0)")
    assert r.output == f"The interpreter exited with status 0.\n{RESTORED_LINE}\n"
    assert (r.ok, r.timed_out, r.reset, r.restored, r.error, r.crash) == (
        False,
        False,
        True,
        True,
        "Crash",
        "status 0",
    )
    assert session.run("z").output == "9\n"


def test_segfault_crash_message(session: Session) -> None:
    r = session.run("import ctypes\nctypes.string_at(0)")
    assert r.output == f"The interpreter crashed (signal SIGSEGV).\n{RESTARTED_LINE}\n"
    assert r.crash == "signal SIGSEGV"
    assert_recovers(session)


# ------------------------------------------------------------------------- limits code cannot undo


@pytest.mark.parametrize("stream", ["sys.stdout", "sys.__stdout__"])
def test_closed_stdout_does_not_silence_later_blocks(session: Session, stream: str) -> None:
    pid = session.pid
    r = session.run(f"import sys\n{stream}.close()")
    assert (r.output, r.ok, r.reset) == (f"{STDOUT_REOPENED_LINE}\n", True, False)
    r = session.run("print(1+1)")
    assert (r.output, r.ok, r.error) == ("2\n", True, None)
    assert session.pid == pid  # reopened in place: no restart needed


def test_closed_stdout_and_stderr_keep_the_traceback(session: Session) -> None:
    r = session.run("import sys\nsys.stderr.close()\nsys.stdout.close()\nprint('lost')")
    assert r.output == (
        "Traceback (most recent call last):\n"
        '  File "<code>", line 4, in <module>\n'
        "    print('lost')\n"
        "ValueError: I/O operation on closed file.\n"
        f"{STDOUT_REOPENED_LINE}\n{STDERR_REOPENED_LINE}\n"
    )
    assert session.run("import sys\nprint('e', file=sys.stderr)\n1+1").output == "e\n2\n"


# Closes every fd of the output pipe, the worker's private copy included: dup2 cannot repair it.
CUT_OUTPUT = (
    "import os\n"
    "pipe = os.readlink('/proc/self/fd/1')\n"
    "for fd in sorted(int(f) for f in os.listdir('/proc/self/fd')):\n"
    "    try:\n"
    "        same = os.readlink(f'/proc/self/fd/{fd}') == pipe\n"
    "    except OSError:\n"
    "        same = False\n"
    "    if same and fd > 2:\n"
    "        os.close(fd)\n"
    "os.close(1)\n"
    "os.close(2)\n"
)


def test_broken_output_pipe_replaces_the_worker(session: Session) -> None:
    session.run("keep = 7")
    pid = session.pid
    r = session.run(CUT_OUTPUT)
    assert r.output == f"{OUTPUT_BROKEN_LINE}\n{RESTORED_LINE}\n"
    assert (r.ok, r.reset, r.restored) == (True, True, True)
    assert session.pid != pid
    assert session.run("print(keep)").output == "7\n"


BUSY_THREAD = (
    "import threading\n"
    "threading.Thread(target=lambda: [0 for _ in iter(int, 1)], daemon={daemon}).start()\n"
    "print('started')"
)


@pytest.mark.parametrize("daemon", [False, True])
def test_thread_left_running_is_stopped_with_its_worker(session: Session, daemon: bool) -> None:
    session.run("keep = 7")
    pid = session.pid
    assert pid is not None
    r = session.run(BUSY_THREAD.format(daemon=daemon))
    assert r.output == f"started\n{THREADS_LINE}\n{RESTORED_LINE}\n"
    assert (r.ok, r.reset, r.restored, r.error) == (True, True, True, None)
    assert _gone_within([pid], 5)  # the old worker and its busy thread no longer exist
    fresh = session.pid
    assert fresh is not None and fresh != pid
    assert psutil.Process(fresh).num_threads() == 1
    r = session.run("import threading\nprint(threading.active_count(), keep)")
    assert (r.output, r.reset) == ("1 7\n", False)


def test_thread_that_finishes_right_away_keeps_the_worker(session: Session) -> None:
    pid = session.pid
    r = session.run("import threading\nthreading.Thread(target=print, args=('hi',)).start()")
    assert (r.output, r.reset) == ("hi\n", False)
    assert session.pid == pid


RAISE_RLIMIT = (
    "import resource\n"
    "resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))\n"
)


@pytest.fixture(scope="module")
def small_memory_sandbox() -> Iterator[Sandbox]:
    """300 MB for the template and every worker together: a 600 MB block must be stopped."""
    config = SandboxConfig(timeout_s=30.0, memory_total_mb=300, memory_share=None)
    with Sandbox(config) as sb:
        yield sb


def test_memory_limit_kills_a_block_that_lifted_its_rlimit(small_memory_sandbox: Sandbox) -> None:
    with small_memory_sandbox.session() as s, small_memory_sandbox.session() as bystander:
        s.run("keep = 7")
        bystander.run("other = 8")
        pid = s.pid
        # Without the shared limit this block would run until its 30 s timeout.
        r = s.run(
            RAISE_RLIMIT + "x = b'1' * (600 << 20)\nimport time\nwhile True: time.sleep(0.01)"
        )
        assert r.output == f"{MEMORY_LINE}\n{RESTORED_LINE}\n"
        assert (r.ok, r.timed_out, r.reset, r.restored, r.error, r.crash) == (
            False,
            False,
            True,
            True,
            "MemoryError",
            None,
        )
        assert _gone_within([pid], 5)
        assert s.run("print(keep)").output == "7\n"
        assert bystander.run("print(other)").output == "8\n"  # only the largest was killed


WAIT_UNTIL_GONE = (
    "import time\n"
    "def alive(pid):\n"
    "    try:\n"
    "        return open(f'/proc/{{pid}}/stat').read().rsplit(')', 1)[1].split()[0] != 'Z'\n"
    "    except OSError:\n"
    "        return False\n"
    "b = b'1' * (120 << 20)\n"
    "while alive({pid}):\n"
    "    time.sleep(0.01)\n"
    "del b\n"
    "print('gone')"
)


def test_memory_limit_kills_the_largest_idle_worker(small_memory_sandbox: Sandbox) -> None:
    with small_memory_sandbox.session() as idle, small_memory_sandbox.session() as busy:
        pid = idle.pid
        assert pid is not None
        # 180 MB alone fits in 300 MB; it fails after allocating, so it is not replayed later.
        r = idle.run("x = b'1' * (180 << 20)\nraise ValueError('kept x')")
        assert r.error == "ValueError"
        # 120 MB more goes over: the idle worker holds more, so it is the one killed, and this
        # block ends when it sees that (its own 30 s timeout would fail the test).
        r = busy.run(WAIT_UNTIL_GONE.format(pid=pid))
        assert (r.output, r.reset) == ("gone\n", False)
        r = idle.run("print(1+1)")
        assert r.output == f"{MEMORY_LINE}\n{RESTARTED_LINE}\n"
        assert (r.error, r.reset) == ("MemoryError", True)
        assert_recovers(idle)


def test_memory_limit_config() -> None:
    with pytest.raises(ValueError, match="memory_share"):
        SandboxConfig(memory_share=1.5)
    with pytest.raises(ValueError, match="memory_total_mb"):
        SandboxConfig(memory_total_mb=0)
    assert memory_limit_bytes(SandboxConfig(memory_share=None)) is None
    assert memory_limit_bytes(SandboxConfig(memory_share=None, memory_total_mb=300)) == 300 << 20
    host = host_memory_bytes()
    assert host is not None
    both = SandboxConfig(memory_share=0.5, memory_total_mb=300)
    assert memory_limit_bytes(both) == min(300 << 20, int(host * 0.5))
    assert [format_memory(n) for n in (300 << 20, 31 << 29, 1 << 30)] == [
        "300 MB",
        "15.5 GB",
        "1.0 GB",
    ]


# --------------------------------------------------------------------------- hostile code


def _timed_out(r: ExecResult) -> None:
    assert r.timed_out and r.reset
    assert TIMEOUT_LINE in r.output


def _memory_error(r: ExecResult) -> None:
    assert (r.error, r.reset) == ("MemoryError", False)
    assert r.output.endswith("MemoryError\n")


def _fork_loop(r: ExecResult) -> None:
    assert not r.ok
    assert r.output.endswith("\n") and ("PermissionError" in r.output or r.timed_out)


def _recursion(r: ExecResult) -> None:
    assert not r.ok
    assert r.error in ("RecursionError", "Crash", "TimeoutError")


def _permission(r: ExecResult) -> None:
    assert (r.ok, r.error, r.reset) == (False, "PermissionError", False)


def _ok(r: ExecResult) -> None:
    assert r.ok, r.output


def _threads_stopped(r: ExecResult) -> None:
    assert (r.ok, r.reset) == (True, True), r.output
    assert r.output == f"started\n{THREADS_LINE}\n{RESTARTED_LINE}\n"


HOSTILE: list[tuple[str, str, Callable[[ExecResult], None]]] = [
    ("busy_loop", "while True: pass", _timed_out),
    ("c_level_loop", "sum(range(10**12))", _timed_out),
    ("huge_allocation", "bytearray(10**11)", _memory_error),
    ("fork_loop", "import os\nwhile True: os.fork()", _fork_loop),
    (
        "deep_recursion",
        "import sys\nsys.setrecursionlimit(10**6)\ndef f(n):\n    return f(n + 1)\nf(0)",
        _recursion,
    ),
    ("kill_template", "import os\nos.kill(os.getppid(), 9)", _permission),
    (
        "ignore_signals",
        "import signal\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "while True: pass",
        _timed_out,
    ),
    (
        "endless_thread",
        "import threading\n"
        "threading.Thread(target=lambda: [0 for _ in iter(int, 1)]).start()\n"
        "print('started')",
        _threads_stopped,
    ),
    (
        "background_child",
        "import os, time\nif os.fork() == 0:\n    time.sleep(100)\nprint('parent')",
        _ok,
    ),
]


@pytest.mark.parametrize(
    ("code", "check"), [(c, k) for _, c, k in HOSTILE], ids=[n for n, _, _ in HOSTILE]
)
def test_hostile_code_is_contained(
    sandbox: Sandbox, session: Session, code: str, check: Callable[[ExecResult], None]
) -> None:
    template = sandbox.template_pid
    started = time.monotonic()
    r = session.run(code)
    assert time.monotonic() - started < CONTAINED_S
    check(r)
    assert_recovers(session)
    assert sandbox.template_pid == template and psutil.pid_exists(template)


def test_huge_print_is_truncated_quickly() -> None:
    # A roomier timeout than the hostile cases: the point is the bounded output, not the clock.
    with Sandbox(SandboxConfig(timeout_s=10.0)) as sb, sb.session() as s:
        started = time.monotonic()
        r = s.run("print('x' * 10**8)")
        assert time.monotonic() - started < CONTAINED_S
        assert r.ok
        omitted = 10**8 + 1 - 1000
        assert r.output == "x" * 500 + OMITTED_MARKER.format(count=omitted) + "x" * 499 + "\n"
        assert_recovers(s)


def test_subprocess_sleep_is_killed_at_timeout(session: Session) -> None:
    cmd = ["sleep", f"100.{os.getpid()}"]  # unique: other test runs may sleep too
    r = session.run(f"import subprocess\nsubprocess.run({cmd!r})")
    _timed_out(r)
    assert processes_with_cmdline(cmd) == []
    assert_recovers(session)


def test_background_children_do_not_outlive_block(session: Session) -> None:
    cmd = ["sleep", f"101.{os.getpid()}"]
    r = session.run(f"import subprocess\np = subprocess.Popen({cmd!r})\nprint('ok')")
    assert r.output == "ok\n"
    assert processes_with_cmdline(cmd) == []


def test_write_outside_workdir_refused(session: Session, tmp_path: Path) -> None:
    target = tmp_path / "escaped.txt"
    r = session.run(f"open({str(target)!r}, 'w').write('x')")
    assert r.output.endswith(
        "PermissionError: the sandbox allows writing only in the working directory, "
        f"not {str(target)!r}\n"
    )
    assert not target.exists()
    r = session.run(f"import os\nos.remove({str(tmp_path)!r})")
    assert r.error == "PermissionError" and tmp_path.exists()
    assert_recovers(session)


def test_write_inside_workdir_allowed(session: Session) -> None:
    code = (
        "import os, tempfile\n"
        "open('a.txt', 'w').write('hi')\n"
        "with tempfile.NamedTemporaryFile('w') as f:\n"
        "    f.write('x')\n"
        "print(open('a.txt').read(), os.path.exists('a.txt'))"
    )
    assert session.run(code).output == "hi True\n"


# --------------------------------------------------------------------------- modes and concurrency


def test_isolated_mode_has_no_state() -> None:
    with Sandbox(SandboxConfig(mode="isolated", timeout_s=TIMEOUT)) as sb, sb.session() as s:
        assert s.run("x = 5\nx").output == "5\n"
        r = s.run("print(x)")
        assert r.error == "NameError"
        assert r.output.endswith("NameError: name 'x' is not defined\n")
        assert s.run("print(np.int64(2) + sp.Integer(3))").output == "5\n"
        r = s.run("while True: pass")
        assert r.output == f"{TIMEOUT_LINE}\n"
        assert (r.timed_out, r.reset) == (True, False)
        assert s.run("print(1+1)").output == "2\n"


def test_queue_wait_not_counted_against_timeout() -> None:
    with Sandbox(SandboxConfig(timeout_s=TIMEOUT, max_concurrent=1)) as sb:
        sessions = [sb.session(), sb.session()]
        results: list[ExecResult] = []
        lock = threading.Lock()

        def work(s: Session) -> None:
            r = s.run("import time\ntime.sleep(0.6)\nprint('done')")
            with lock:
                results.append(r)

        threads = [threading.Thread(target=work, args=(s,)) for s in sessions]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [r.output for r in results] == ["done\n", "done\n"]
        assert not any(r.timed_out for r in results)
        assert max(r.queued_seconds for r in results) > 0.3
        assert all(r.seconds < TIMEOUT for r in results)


def test_sixteen_threads_sixteen_sessions(sandbox: Sandbox) -> None:
    n = 16
    sessions = [sandbox.session() for _ in range(n)]
    outputs: dict[int, list[str]] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            s = sessions[i]
            got = [s.run(f"k = {i}").output]
            got.append(s.run("x = sp.symbols('x')\nsp.expand((x + k)**2)").output)
            got.append(s.run("k * 3").output)
            outputs[i] = got
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in sessions:
        s.close()
    assert errors == []
    for i in range(n):
        expected = "x**2\n" if i == 0 else f"x**2 + {2 * i}*x + {i * i}\n"
        assert outputs[i] == ["", expected, f"{3 * i}\n"]


# --------------------------------------------------------------------------- lifecycle


def test_start_refused_after_cuda_initialised(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("torch")
    fake.cuda = types.SimpleNamespace(is_initialized=lambda: True)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch", fake)
    sb = Sandbox()
    with pytest.raises(RuntimeError, match="before the LLM engine"):
        sb.start()
    assert sb.template_pid is None
    sb.close()


def test_template_restarted_after_being_killed() -> None:
    with Sandbox(SandboxConfig(timeout_s=TIMEOUT)) as sb:
        s = sb.session()
        s.run("x = 3")
        old = sb.template_pid
        assert old is not None
        os.kill(old, signal.SIGKILL)
        fresh = sb.session()
        assert fresh.run("print(1+1)").output == "2\n"
        assert sb.template_pid not in (None, old)
        r = s.run("print(x)")  # its worker died with the old template
        assert r.reset
        assert s.run("print(x)").output == "3\n"


def test_close_leaves_no_process() -> None:
    sb = Sandbox(SandboxConfig(timeout_s=TIMEOUT)).start()
    sessions = [sb.session() for _ in range(3)]
    sessions[0].run(
        "import threading, time\nthreading.Thread(target=time.sleep, args=(100,)).start()"
    )
    sessions[1].run("x = 1")
    template = sb.template_pid
    assert template is not None
    pids = [template] + [p.pid for p in descendants(template)]
    assert len(pids) >= 4
    sb.close()
    assert _gone_within(pids, 5)
    with pytest.raises(RuntimeError):
        sessions[2].run("print(1)")


def _not_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_dropped_session_worker_is_killed(sandbox: Sandbox) -> None:
    s = sandbox.session()
    pid = s.pid
    assert pid is not None and _not_zombie(pid)
    del s
    gc.collect()
    assert _gone_within([pid], 5)


EXIT_SCRIPT = """
import sys
from kaggle_submission.sandbox import Sandbox, SandboxConfig
sb = Sandbox(SandboxConfig(timeout_s=5)).start()
s = sb.session()
s.run("import threading, time\\nthreading.Thread(target=time.sleep, args=(100,)).start()")
print(sb.template_pid, s.pid, flush=True)
"""


def test_interpreter_exit_without_close_leaves_no_process() -> None:
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root))
    proc = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    pids = [int(p) for p in proc.stdout.split()]
    assert len(pids) == 2
    assert _gone_within(pids, 5)


def _gone_within(pids: list[int], seconds: float) -> bool:
    return _true_within(lambda: not any(_not_zombie(p) for p in pids), seconds)


def _true_within(condition: Callable[[], bool], seconds: float) -> bool:
    """Poll an observable condition until it holds or the bound passes."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_close_during_a_running_block(sandbox: Sandbox) -> None:
    s = sandbox.session()
    pid = s.pid
    assert pid is not None
    results: list[ExecResult] = []
    block = "open('started', 'w').close()\nwhile True: pass"
    t = threading.Thread(target=lambda: results.append(s.run(block)))
    t.start()
    marker = Path(psutil.Process(pid).cwd()) / "started"  # the worker's private directory
    assert _true_within(marker.exists, 5)  # the block is running
    started = time.monotonic()
    s.close()
    t.join()
    assert time.monotonic() - started < TIMEOUT  # not waiting for the timeout
    assert results[0].reset and not results[0].ok
    assert _gone_within([pid], 5)
    assert s.pid is None
    with pytest.raises(RuntimeError):
        s.run("print(1)")


def test_spare_workers_are_ready_and_cleaned_up():
    """Sessions adopt pre-forked interpreters; closing the sandbox kills the spares too."""
    import psutil

    box = Sandbox(SandboxConfig(spare_workers=3, timeout_s=2.0)).start()
    try:
        assert _true_within(lambda: len(box.spare_pids) == 3, 20)
        spare_pids = box.spare_pids
        session = box.session()
        assert session.pid == spare_pids[0]  # the oldest spare is adopted first
        assert session.run("x = 6 * 7\nx").output == "42\n"
        victim = box.spare_pids[0]  # the next one a session would adopt
        os.kill(victim, 9)  # a spare that died is skipped
        assert _gone_within([victim], 5)
        other = box.session()
        assert other.pid != victim
        assert other.run("print('ok')").output == "ok\n"
        template = box.template_pid
    finally:
        box.close()
    descendants = [p for p in psutil.process_iter(["pid"]) if p.info["pid"] in spare_pids]
    assert descendants == []
    assert template is not None and not psutil.pid_exists(template)


def test_check_memory_counts_the_template(sandbox: Sandbox) -> None:
    """The public poll counts at least the template's resident memory (numpy and sympy loaded)."""
    template = sandbox.template_pid
    assert template is not None
    assert sandbox.check_memory() >= psutil.Process(template).memory_info().rss // 2


# --------------------------------------------------------------------------- package layout

SANDBOX_DIR = Path(__file__).resolve().parents[1] / "kaggle_submission" / "sandbox"


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(top-level absolute modules, sibling modules imported relatively) of one source file."""
    import ast

    absolute: set[str] = set()
    relative: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            absolute.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                names = [node.module] if node.module else [a.name for a in node.names]
                relative.update(n.partition(".")[0] for n in names)
            elif node.module:
                absolute.add(node.module.partition(".")[0])
    return absolute, relative


@pytest.mark.parametrize("module", ["messages", "worker"])
def test_model_text_and_worker_need_only_the_stdlib(module: str) -> None:
    """The worker runs beside model code: it imports the stdlib and the shared messages only."""
    absolute, relative = _imports(SANDBOX_DIR / f"{module}.py")
    assert absolute <= set(sys.stdlib_module_names) | {"__future__"}
    assert relative <= ({"messages"} if module == "worker" else set())


def test_kernel_side_reaches_the_worker_module() -> None:
    """The template is launched by the worker module's name, imported so an import walk finds it."""
    _absolute, relative = _imports(SANDBOX_DIR / "processes.py")
    assert "worker" in relative


MODEL_TEXT = ("The interpreter", "the sandbox allows", "the sandbox does not", "This code ")


def test_model_facing_sentences_live_in_messages() -> None:
    """Sentences the model reads are written in messages.py only (string literals elsewhere)."""
    import ast

    modules = [m for m in sorted(SANDBOX_DIR.glob("*.py")) if m.stem != "messages"]
    assert len(modules) > 1
    for module in modules:
        tree = ast.parse(module.read_text(encoding="utf-8"))
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and id(node) not in docstrings:
                text = node.value if isinstance(node.value, str) else ""
                assert not any(t in text for t in MODEL_TEXT), (module.name, text)
