"""OpenAI-compatible completions servers (vLLM's api_server, SGLang) behind the async protocol.

Why: one machine's engine is the Kaggle path, but dry runs over hundreds of problems and the
training side's sampling want several engines, possibly on other machines. Each server is started
on its own (`python -m vllm.entrypoints.openai.api_server --model DIR ...`); this backend spreads
the engine's requests over them and keeps the protocol's promises.

Requests. POST /v1/completions with the whole context as `prompt` (the kit renders the chat
template itself, as for the in-process backends, so every engine sees the same text), `stream:
true`, max_tokens (capped at the server's max_model_len), temperature, top_p, seed and the stop
list, keeping the stop string: vLLM's `include_stop_str_in_output`, SGLang's `no_stop_trim`
(chosen by the server's `owned_by` in GET /v1/models; both for an unknown server). A server that
trimmed the stop anyway gets it appended again from the final chunk's `stop_reason` (vLLM) or
`matched_stop` (SGLang). Finish reasons: "stop" with a stop string -> "stop", without (EOS or a
stop token) -> "eos", "length" -> "length". Token counts come from the final `usage` chunk
(stream_options.include_usage), or the number of text chunks when a server sends none. With
`SamplingParams.logprobs` = k the request asks `logprobs: k` and each streamed token's
`top_logprobs` entry gives its top-k entropy (`base.topk_entropy`), summed into the Completion.

Cancelling. The stream is read inside the awaiting task: cancelling it closes the connection,
and vLLM aborts a request whose client went away (checked by the tests through /metrics).

Spreading and failures. Each server has a semaphore (max_concurrency_per_server); a request goes
to the server with the fewest requests in flight, and a rollout's next call goes back to the
server that served its previous one (its prefix cache holds the context) unless that server is
`affinity_slack` requests busier. Connection errors, timeouts and HTTP 5xx/429 are retried with
exponential backoff, on another server when there is one; a connection that dies mid-stream
(the server was killed) is resubmitted elsewhere from scratch, the partial text discarded. A
server that fails that way leaves the rotation and is probed again (GET /v1/models) after
`probe_interval_s`; when every server is down they are all probed at once. After `retries`
retries the request ends with finish_reason "error" naming each failure; other HTTP errors
(400: prompt too long, 404: unknown model) end it at once with the status and the server's
message. `generate` never raises except CancelledError, and never waits longer than
`timeout_s` for a server's next byte.

Start-up (`await backend.start()`, or the first `generate`) asks every server for its models:
an unreachable URL is named (all unreachable raises `ServerConfigError`, some unreachable are
left out and probed later), and a server that serves another model than the expected one raises
`ServerConfigError` naming both. `ServerConfigError` is a ValueError, so the CLI prints it.

httpx is imported lazily (on start), so importing this module stays cheap. Starting a local
server is an offline tool's job (`kaggle_submission.offline.servers`), not this client's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .base import (
    Backend,
    Completion,
    FinishReason,
    GenerationRequest,
    apply_stop,
    failure_from_message,
    topk_entropy,
)

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

_PROBE_TIMEOUT_S = 5.0
_ERROR_BODY_CHARS = 500


class ServerConfigError(ValueError):
    """The servers cannot be used as configured: unreachable, or serving another model."""


def normalize_url(url: str) -> str:
    """A server's API root ending in /v1: "127.0.0.1:8000" -> "http://127.0.0.1:8000/v1"."""
    text = url.strip().rstrip("/")
    if not text:
        raise ValueError("empty server URL")
    if "://" not in text:
        text = "http://" + text
    for suffix in ("/completions", "/models"):
        if text.endswith("/v1" + suffix):
            text = text[: -len(suffix)]
    return text if text.endswith("/v1") else text + "/v1"


def parse_servers(servers: str | Sequence[str]) -> list[str]:
    """Comma-separated or a sequence; normalised, duplicates dropped, at least one."""
    items = servers.split(",") if isinstance(servers, str) else list(servers)
    urls: list[str] = []
    for item in items:
        if item.strip():
            url = normalize_url(item)
            if url not in urls:
                urls.append(url)
    if not urls:
        raise ValueError(f"no server URL in {servers!r}")
    return urls


@dataclass
class ServerState:
    """One server as the backend sees it; mutated only on the event loop."""

    url: str
    index: int
    up: bool = True
    probed: bool = False
    retry_at: float = 0.0
    in_flight: int = 0
    models: tuple[str, ...] = ()
    flavour: str = "unknown"
    max_model_len: int | None = None
    version: str | None = None
    last_error: str | None = None
    stats: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            ("requests", "completed", "failed", "resubmitted_mid_stream", "marked_down"), 0
        )
    )

    def facts(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "up": self.up,
            "models": list(self.models),
            "flavour": self.flavour,
            "version": self.version,
            "max_model_len": self.max_model_len,
            "in_flight": self.in_flight,
            "last_error": self.last_error,
            **self.stats,
        }


def pick_server(
    servers: Sequence[ServerState],
    exclude: set[int],
    home: int | None = None,
    slack: int = 2,
) -> ServerState | None:
    """The up server with the fewest requests in flight (ties: lowest index), preferring
    servers this request has not failed on, and its `home` unless that is `slack` busier."""
    up = [s for s in servers if s.up]
    if not up:
        return None
    fresh = [s for s in up if s.index not in exclude] or up
    least = min(fresh, key=lambda s: (s.in_flight, s.index))
    if home is not None:
        for s in fresh:
            if s.index == home and s.in_flight <= least.in_flight + slack:
                return s
    return least


@dataclass(frozen=True)
class _Failure:
    """Why one attempt failed, and whether another attempt may succeed."""

    message: str
    retry: bool


def map_finish(
    finish_reason: str | None, stop_reason: Any, text: str, stops: Sequence[str]
) -> tuple[str, FinishReason, str | None]:
    """The protocol's (text, finish_reason, stop) from a server's final chunk.

    `stop_reason` is vLLM's stop_reason or SGLang's matched_stop: the stop string, a stop token
    id, or None (EOS). A stop string the server trimmed is appended again.
    """
    stop: str | None = None
    reason: FinishReason
    if finish_reason == "length":
        reason = "length"
    elif finish_reason == "stop":
        if isinstance(stop_reason, str) and stop_reason:
            stop, reason = stop_reason, "stop"
            if not text.endswith(stop):
                text += stop
        else:  # EOS or a stop token; a server that names nothing may still have hit a string
            ends = [s for s in stops if s and text.endswith(s)]
            if ends:
                stop, reason = max(ends, key=len), "stop"
            else:
                reason = "eos"
    elif finish_reason == "abort":
        reason = "abort"
    else:
        return text, "error", None
    cut, hit = apply_stop(text, tuple(stops))
    if hit is not None and len(cut) < len(text):  # a server that ran past a stop string
        return cut, "stop", hit
    return text, reason, stop


class OpenAIBackend(Backend):
    """Requests spread over OpenAI-compatible completions servers (see the module docstring).

    servers: URLs ("http://host:port", "host:port", ".../v1"), a list or comma-separated.
    model: the model name sent with requests; None takes the one the first server serves.
    max_concurrency_per_server: requests in flight per server (more wait their turn).
    timeout_s: longest wait for a server's next byte (a hung server counts as failed).
    retries, backoff_s: retries after connection errors/5xx, waiting backoff_s * 2**k when no
        other server is free to take the request.
    api_key: sent as a bearer token (vLLM's --api-key).
    expected_model: the model every server must serve (checked at start); defaults to `model`.
    tokenizer_dir: the local copy of the served model's directory, recorded in `describe` (the
        prompt format is decided from it before the backend is built: `protocols.decide_protocol`).
    probe_interval_s: how long a failed server stays out before it is probed again.
    connect_timeout_s: connection (and start-up probe) timeout.
    affinity_slack: how much busier a rollout's previous server may be and still get its call.
    """

    name = "openai"

    def __init__(
        self,
        servers: str | Sequence[str],
        model: str | None = None,
        *,
        max_concurrency_per_server: int = 64,
        timeout_s: float = 600,
        retries: int = 3,
        backoff_s: float = 0.5,
        api_key: str | None = None,
        expected_model: str | None = None,
        tokenizer_dir: str | Path | None = None,
        probe_interval_s: float = 15.0,
        connect_timeout_s: float = 10.0,
        affinity_slack: int = 2,
    ) -> None:
        if max_concurrency_per_server < 1 or retries < 0 or timeout_s <= 0:
            raise ValueError("need max_concurrency_per_server >= 1, retries >= 0 and timeout_s > 0")
        self.servers = [ServerState(url, i) for i, url in enumerate(parse_servers(servers))]
        self.model = model
        self.expected_model = expected_model or model
        self.max_concurrency_per_server = max_concurrency_per_server
        self.timeout_s = float(timeout_s)
        self.retries = retries
        self.backoff_s = float(backoff_s)
        self.api_key = api_key
        self.probe_interval_s = float(probe_interval_s)
        self.connect_timeout_s = float(connect_timeout_s)
        self.affinity_slack = affinity_slack
        self.tokenizer_dir = str(tokenizer_dir) if tokenizer_dir is not None else None
        self._limits = [asyncio.Semaphore(max_concurrency_per_server) for _ in self.servers]
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._start_lock: asyncio.Lock | None = None
        self._fatal: str | None = None
        self._started = False
        self._closed = False
        self._probes: dict[int, asyncio.Task[None]] = {}
        self._all_probe: asyncio.Task[None] | None = None
        self._home: OrderedDict[Hashable, int] = OrderedDict()
        self._stats = dict.fromkeys(
            ("requests", "completed", "errors", "retries", "prompt_tokens", "completion_tokens"),
            0,
        )

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Open the connection pool and check every server (idempotent; generate calls it).

        Raises ServerConfigError when no server answers or one serves another model.
        """
        if self._closed:
            raise RuntimeError("OpenAIBackend is closed")
        if self._fatal is not None:
            raise ServerConfigError(self._fatal)
        if self._started:
            return
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop, self._start_lock = loop, asyncio.Lock()
        elif self._loop is not loop:
            raise RuntimeError("OpenAIBackend is bound to the event loop that first used it")
        assert self._start_lock is not None
        async with self._start_lock:
            if self._started:
                return
            if self._client is None:
                self._client = _make_client(
                    self.timeout_s,
                    self.connect_timeout_s,
                    len(self.servers) * self.max_concurrency_per_server + 2 * len(self.servers),
                    self.api_key,
                )
            reached = await asyncio.gather(*(self._fetch_models(s) for s in self.servers))
            problems = []
            for server, ok in zip(self.servers, reached, strict=True):
                if ok:  # in index order, so "the first server's model" is well defined
                    problem = self._check_model(server)
                    if problem is not None:
                        problems.append(problem)
            if problems:
                self._fatal = "; ".join(problems)
                raise ServerConfigError(self._fatal)
            if not any(reached):
                raise ServerConfigError(
                    "cannot reach any OpenAI-compatible server: "
                    + "; ".join(f"{s.url}: {s.last_error}" for s in self.servers)
                )
            for server, ok in zip(self.servers, reached, strict=True):
                if ok:
                    self._admit(server)
                else:
                    log.warning("server %s left out for now: %s", server.url, server.last_error)
            await asyncio.gather(*(self._read_version(s) for s in self.servers if s.up))
            self._started = True

    async def aclose(self) -> None:
        """Stop probing and close the connection pool (in-flight requests end with errors)."""
        if self._closed:
            return
        self._closed = True
        tasks = [*self._probes.values(), *([self._all_probe] if self._all_probe else [])]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    # ----------------------------------------------------------------- protocol

    async def generate(self, request: GenerationRequest) -> Completion:
        """Run one continuation on some server; cancelling the caller closes its stream."""
        t0 = time.perf_counter()
        self._stats["requests"] += 1
        if self._closed:
            return self._error(request, t0, "the openai backend is closed")
        try:
            await self.start()
        except (ServerConfigError, RuntimeError) as exc:
            return self._error(request, t0, str(exc))
        key = (request.problem_key, request.rollout)
        exclude: set[int] = set()
        failures: list[str] = []
        for attempt in range(self.retries + 1):
            if attempt:
                self._stats["retries"] += 1
                if not any(s.up and s.index not in exclude for s in self.servers):
                    await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
            server = await self._choose(key, exclude)
            if server is None:
                failures.append("no server is up (" + self._down_summary() + ")")
                continue
            outcome = await self._attempt(server, request, t0)
            if isinstance(outcome, Completion):
                if outcome.finish_reason == "error":
                    self._stats["errors"] += 1
                return outcome
            failures.append(outcome.message)
            if not outcome.retry:
                return self._error(request, t0, outcome.message)
            exclude.add(server.index)
        return self._error(
            request,
            t0,
            f"gave up after {self.retries + 1} attempts: " + "; ".join(failures),
        )

    def describe(self) -> dict[str, Any]:
        """Servers (URL, models, state, counters), the model, settings; for logs and traces."""
        return {
            "engine": self.name,
            "model": self.model,
            "expected_model": self.expected_model,
            "servers": [s.facts() for s in self.servers],
            "tokenizer_dir": self.tokenizer_dir,
            "max_concurrency_per_server": self.max_concurrency_per_server,
            "timeout_s": self.timeout_s,
            "retries": self.retries,
            "backoff_s": self.backoff_s,
            "probe_interval_s": self.probe_interval_s,
            "stats": dict(self._stats),
        }

    @property
    def stats(self) -> dict[str, int]:
        """Request and token counters (a copy)."""
        return dict(self._stats)

    # ----------------------------------------------------------------- choosing a server

    async def _choose(self, key: Hashable, exclude: set[int]) -> ServerState | None:
        now = time.monotonic()
        for s in self.servers:
            if not s.up and now >= s.retry_at and s.index not in self._probes:
                task = asyncio.create_task(self._probe(s))
                self._probes[s.index] = task
                task.add_done_callback(lambda _t, i=s.index: self._probes.pop(i, None))
        if not any(s.up for s in self.servers):
            # Everything is down: probe them all now (one shared probe for every waiter).
            if self._all_probe is None or self._all_probe.done():
                self._all_probe = asyncio.create_task(self._probe_all_down())
            await asyncio.shield(self._all_probe)
        server = pick_server(self.servers, exclude, self._home.get(key), self.affinity_slack)
        if server is None:
            return None
        self._home[key] = server.index
        self._home.move_to_end(key)
        while len(self._home) > 4096:
            self._home.popitem(last=False)
        server.in_flight += 1  # before any await, so concurrent choices see it
        return server

    async def _probe_all_down(self) -> None:
        await asyncio.gather(*(self._probe(s) for s in self.servers if not s.up))

    def _down_summary(self) -> str:
        return "; ".join(f"{s.url}: {s.last_error}" for s in self.servers)

    def _mark_down(self, server: ServerState, why: str) -> None:
        if server.up:
            server.stats["marked_down"] += 1
            log.warning(
                "server %s out of rotation for %.0f s: %s", server.url, self.probe_interval_s, why
            )
        server.up = False
        server.last_error = why
        server.retry_at = time.monotonic() + self.probe_interval_s

    async def _probe(self, server: ServerState) -> None:
        """Ask a server that left the rotation whether it is back (and serves the model)."""
        if await self._fetch_models(server):
            problem = self._check_model(server)
            if problem is None:
                self._admit(server)
                if server.version is None:
                    await self._read_version(server)
            else:
                self._mark_down(server, problem)

    def _admit(self, server: ServerState) -> None:
        if not server.up:
            log.warning("server %s is back in rotation", server.url)
        server.up = True
        server.last_error = None

    async def _fetch_models(self, server: ServerState) -> bool:
        """GET /v1/models: the server's models, flavour and context length; False (and the
        server marked down with the reason) when it does not answer properly."""
        import httpx

        assert self._client is not None
        url = server.url + "/models"
        try:
            resp = await self._client.get(url, timeout=min(_PROBE_TIMEOUT_S, self.timeout_s))
        except httpx.HTTPError as exc:
            self._mark_down(server, f"cannot reach {url}: {_describe_exc(exc)}")
            return False
        if resp.status_code != 200:
            self._mark_down(server, f"HTTP {resp.status_code} from {url}: {_error_text(resp)}")
            return False
        try:
            cards = [c for c in resp.json()["data"] if isinstance(c, dict)]
            models = tuple(str(c["id"]) for c in cards)
        except (ValueError, KeyError, TypeError) as exc:
            self._mark_down(server, f"{url} is not an OpenAI-compatible models list ({exc!r})")
            return False
        server.probed = True
        server.models = models
        owners = {str(c.get("owned_by", "")).lower() for c in cards}
        server.flavour = next((f for f in ("vllm", "sglang") if f in owners), "unknown")
        lengths = [c["max_model_len"] for c in cards if isinstance(c.get("max_model_len"), int)]
        server.max_model_len = min(lengths) if lengths else None
        return True

    def _check_model(self, server: ServerState) -> str | None:
        """None when the server serves the model; else a message naming both."""
        want = self.expected_model
        if want is None:
            if not server.models:
                return f"server {server.url} serves no model"
            self.model = self.model or server.models[0]
            self.expected_model = self.model
            want = self.model
        if want not in server.models:
            served = ", ".join(repr(m) for m in server.models) or "nothing"
            return f"server {server.url} serves {served}, not the expected model {want!r}"
        return None

    async def _read_version(self, server: ServerState) -> None:
        """vLLM's GET /version, best effort (SGLang has /get_server_info instead)."""
        assert self._client is not None
        try:
            resp = await self._client.get(server.url[: -len("/v1")] + "/version", timeout=2.0)
            if resp.status_code == 200:
                server.version = str(resp.json().get("version"))
        except Exception:  # a version is only for the record
            pass

    # ----------------------------------------------------------------- one attempt

    def _body(self, server: ServerState, request: GenerationRequest) -> dict[str, Any]:
        params = request.params
        max_tokens = params.max_tokens
        if server.max_model_len is not None:  # vLLM rejects max_tokens > max_model_len
            max_tokens = min(max_tokens, server.max_model_len)
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": request.prompt,
            "max_tokens": max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if params.seed is not None:
            body["seed"] = int(params.seed)
        if params.logprobs is not None:
            body["logprobs"] = int(params.logprobs)
        if params.stop:
            body["stop"] = list(params.stop)
            if server.flavour in ("vllm", "unknown"):
                body["include_stop_str_in_output"] = True
            if server.flavour in ("sglang", "unknown"):
                body["no_stop_trim"] = True
        return body

    async def _attempt(
        self, server: ServerState, request: GenerationRequest, t0: float
    ) -> Completion | _Failure:
        """One try on one server (its in_flight was counted by _choose)."""
        try:
            async with self._limits[server.index]:
                server.stats["requests"] += 1
                outcome = await self._stream(server, request, t0)
        finally:
            server.in_flight -= 1
        if isinstance(outcome, _Failure):
            server.stats["failed"] += 1
        else:
            server.stats["completed"] += 1
        return outcome

    async def _stream(
        self, server: ServerState, request: GenerationRequest, t0: float
    ) -> Completion | _Failure:
        import httpx

        assert self._client is not None
        url = server.url + "/completions"
        pieces: list[str] = []
        chunks = 0
        finish: str | None = None
        stop_reason: Any = None
        usage: dict[str, Any] | None = None
        k = request.params.logprobs
        entropy_sum, entropy_tokens = 0.0, 0
        try:
            async with self._client.stream("POST", url, json=self._body(server, request)) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    message = f"HTTP {resp.status_code} from {url}: {_error_text(resp)}"
                    status = resp.status_code
                    if status in (502, 503, 504):  # gateway or overload: let it recover
                        self._mark_down(server, message)
                    return _Failure(message, retry=status >= 500 or status == 429)
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    event = json.loads(data)
                    if not isinstance(event, dict):
                        continue
                    if "error" in event or event.get("object") == "error":
                        message = f"error event from {url}: {_event_error(event)}"
                        return _Failure(message, retry=False)
                    if event.get("usage"):
                        usage = event["usage"]
                    for choice in event.get("choices") or ():
                        piece = choice.get("text") or ""
                        if piece:
                            pieces.append(piece)
                            chunks += 1
                        if k is not None:
                            for top in (choice.get("logprobs") or {}).get("top_logprobs") or ():
                                if top:
                                    entropy_sum += topk_entropy(top.values(), k)
                                    entropy_tokens += 1
                        if choice.get("finish_reason"):
                            finish = choice["finish_reason"]
                            stop_reason = choice.get("stop_reason")
                            if stop_reason is None:
                                stop_reason = choice.get("matched_stop")
        except httpx.HTTPError as exc:
            message = f"{url}: {_describe_exc(exc)}"
            if pieces:
                server.stats["resubmitted_mid_stream"] += 1
                message += f" after {chunks} chunks (partial text discarded)"
            self._mark_down(server, message)
            return _Failure(message, retry=True)
        except json.JSONDecodeError as exc:
            return _Failure(f"{url} sent a malformed stream event: {exc}", retry=True)
        if finish is None:
            message = f"{url} ended the stream without a finish reason"
            self._mark_down(server, message)
            return _Failure(message, retry=True)
        text, reason, stop = map_finish(finish, stop_reason, "".join(pieces), request.params.stop)
        prompt_tokens = int((usage or {}).get("prompt_tokens") or 0)
        completion_tokens = int((usage or {}).get("completion_tokens") or chunks)
        self._stats["completed"] += 1
        self._stats["prompt_tokens"] += prompt_tokens
        self._stats["completion_tokens"] += completion_tokens
        return Completion(
            request_id=request.request_id,
            text=text,
            finish_reason=reason,
            stop=stop,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            seconds=time.perf_counter() - t0,
            error=None if reason != "error" else f"{url}: finish_reason {finish!r}",
            entropy_sum=entropy_sum,
            entropy_tokens=entropy_tokens,
        )

    def _error(self, request: GenerationRequest, t0: float, message: str) -> Completion:
        self._stats["errors"] += 1
        log.warning("request %s failed: %s", request.request_id, message)
        # the server's own message says when a prompt does not fit (HTTP 400 "maximum context
        # length"); down servers are the failover's business, not a rebuild's: unclassified
        return Completion.failed(request.request_id, message, t0, failure_from_message(message))


def _make_client(
    timeout_s: float, connect_timeout_s: float, connections: int, api_key: str | None
) -> httpx.AsyncClient:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout_s, connect=min(connect_timeout_s, timeout_s), pool=None),
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        headers=headers,
        trust_env=False,  # loopback and cluster URLs: never through a proxy from the env
    )


def _describe_exc(exc: BaseException) -> str:
    text = str(exc) or "no detail"
    return f"{type(exc).__name__}: {text}"


def _error_text(resp: httpx.Response) -> str:
    """The message of an OpenAI-style error body, else the start of the body."""
    try:
        return _event_error(resp.json())
    except ValueError:
        return resp.text[:_ERROR_BODY_CHARS] or resp.reason_phrase


def _event_error(event: Any) -> str:
    if isinstance(event, dict):
        error = event.get("error", event)
        if isinstance(error, dict):
            message = error.get("message") or error.get("detail")
            if message:
                return str(message)[:_ERROR_BODY_CHARS]
        elif isinstance(error, str):
            return error[:_ERROR_BODY_CHARS]
        if "detail" in event:
            return str(event["detail"])[:_ERROR_BODY_CHARS]
    return json.dumps(event)[:_ERROR_BODY_CHARS]
