"""Every sentence the model reads from the sandbox, in one place (tests assert them byte for byte).

Why one stdlib-only module: the kernel process (timeouts, restarts, memory, truncation) and the
worker process (tracebacks, refused actions) both write text into the model's context; keeping it
here means one file to read or change, and the worker can import it without pulling in anything.
"""

from __future__ import annotations

# Written by the kernel process after a block.
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

# Written by the worker process: tracebacks (Python's format, only frames of the model's code).
CODE_FILENAME = "<code>"
TRACEBACK_HEADER = "Traceback (most recent call last):\n"
TRACEBACK_FRAME = '  File "{filename}", line {lineno}, in {name}\n'
TRACEBACK_LINE = "    {line}\n"
CAUSE_SEPARATOR = "\nThe above exception was the direct cause of the following exception:\n\n"
CONTEXT_SEPARATOR = "\nDuring handling of the above exception, another exception occurred:\n\n"
STR_FAILED_MESSAGE = "{name}: <exception str() failed>\n"

# Refusals of the worker's audit hook (raised as PermissionError inside the model's code).
SIGNAL_REFUSED_MESSAGE = "the sandbox does not allow signalling processes outside this interpreter"
EXEC_REFUSED_MESSAGE = "the sandbox does not allow replacing the interpreter (os.exec)"
WRITE_REFUSED_MESSAGE = "the sandbox allows writing only in the working directory, not {path!r}"
NESTED_FORK_MESSAGE = "the sandbox does not allow a forked child to fork again"
FORK_LIMIT_MESSAGE = "the sandbox allows at most {limit} forks per code block"


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


def crash_message(description: str | None) -> str:
    """The sentence the model reads when its interpreter died."""
    if description is None:
        return CRASH_UNKNOWN_MESSAGE
    kind, _, value = description.partition(" ")
    if kind == "signal":
        return CRASH_SIGNAL_MESSAGE.format(name=value)
    return CRASH_EXIT_MESSAGE.format(status=value)


def join_lines(output: str, *lines: str) -> str:
    """Append sentences after the output, each on its own line."""
    extra = "\n".join(line for line in lines if line)
    if not extra:
        return output
    if output and not output.endswith("\n"):
        output += "\n"
    return output + extra + "\n"


def repeated_frames(count: int) -> str:
    """The line that folds a recursion's repeated frames, as Python words it."""
    return f"  [Previous line repeated {count} more time{'s' if count > 1 else ''}]\n"


def system_exit_message(code: object) -> str:
    """The line a non-zero ``sys.exit(code)`` leaves (Python prints a non-int code as is)."""
    return f"SystemExit: {code}" if isinstance(code, int) else str(code)
