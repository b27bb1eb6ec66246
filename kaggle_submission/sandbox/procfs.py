"""/proc sweeping in the kernel process: kill worker trees, find marked leftovers, weigh memory.

Why /proc and not the process group alone: fork loops race with killpg and children that call
setsid leave the group, so trees are followed by parentage (start times guard against pid reuse);
memory is read from /proc/PID/statm because it is cheap enough to poll 48 workers every 0.1 s.
Linux only; stdlib only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

MARKER_ENV = "AIMO_SANDBOX_ID"  # in the environment of every process a sandbox starts


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
    needle = f"{MARKER_ENV}={marker}".encode()
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
