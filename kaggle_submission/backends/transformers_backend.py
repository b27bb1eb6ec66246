"""Hugging Face transformers backend: batched decoding in a worker thread, no vLLM needed.

It is the fallback when vLLM is unavailable (or for small models and tests). One worker thread
owns the model; the asyncio side only queues requests and awaits futures, so the event loop
never blocks on torch.

Batching design (continuous batching at step boundaries):

* The worker keeps one running batch: a left-padded `DynamicCache`, one row per request.
* Before every decoding step it admits whatever is waiting (up to `max_batch_size` rows):
  new rows are prefilled on their own (left-padded, in groups bounded by `max_prefill_tokens`,
  long prompts in chunks), and their cache is left-padded to the running cache's length and
  concatenated on the batch dimension. A request that arrives mid-batch therefore waits one
  step, not the whole batch.
* Rows leave as soon as they finish or are cancelled (their cache rows are dropped with
  `index_select`), and the cache's all-padding left columns are trimmed, so a finished or
  cancelled row costs nothing afterwards and the padded length tracks the longest live row.
* Positions are passed explicitly (`position_ids` = the row's own token count), so padding never
  shifts RoPE; the 2D attention mask hides the padding.

This needs the cache to be a plain `DynamicCache` of full-attention layers (the worker passes
`DynamicCache()` itself, which is what decoder-only transformers models use); a model that
returns another cache type fails its requests with finish_reason "error".

Sampling is per row: temperature 0 is greedy; otherwise softmax(logits / T), top-p filtering and
inverse-CDF sampling with one uniform number per step drawn from the row's own CPU
`torch.Generator` (seeded by the request's seed). The same request with the same seed therefore
gives the same text whatever else shares the batch, up to float effects: batch shape and padding
can change kernels and reduction order, so logits differ in the last bits. On the CPU in float32
the tests see identical text; on a GPU in bfloat16 expect texts to diverge after a while (a
random 1.1B Llama on an H200: greedy rows alone vs. in a 48-row batch agreed on their first
16-97 characters; peaked real-model distributions flip less often). Seeds give reproducible
sampling, not bit-exact replay across batch compositions.

Confidence: with `SamplingParams.logprobs` = k, each sampled token's entropy is taken over the
k largest logits of its step, renormalised (`_topk_entropies`, the same quantity as
`base.topk_entropy` on vLLM's top-k log-probabilities). Like vLLM's default "raw_logprobs", the
distribution is the model's own, before temperature and top-p; the sums go to the Completion.

Text is detokenized incrementally (a window of a few tokens, vLLM/TGI style, holding back
incomplete UTF-8); stop strings are matched on the text, kept, and the text is cut right after
the earliest one (`apply_stop`), like vLLM's include_stop_str_in_output.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import queue
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .base import (
    Backend,
    Completion,
    FailureKind,
    FinishReason,
    GenerationRequest,
    apply_stop,
    classify_exception,
)

if TYPE_CHECKING:
    import torch

# Prompt tokens kept in front of the generated ones when detokenizing, so the first generated
# token decodes in context (sentencepiece drops a leading space on a lone first token).
_DETOK_CONTEXT = 5
_CLOSE = object()


@dataclass(eq=False)
class _Request:
    """A submitted request: shared between the event loop (submit, cancel) and the worker."""

    request: GenerationRequest
    future: asyncio.Future[Completion]
    loop: asyncio.AbstractEventLoop
    submitted: float
    seed: int
    cancelled: bool = False  # set by the awaiting task, read by the worker
    resolved: bool = False  # worker-only: a completion was handed to the loop


@dataclass(eq=False)
class _Row:
    """Worker-only decoding state of one admitted request."""

    req: _Request
    prompt_tokens: int
    max_new: int
    temperature: float
    top_p: float
    stops: tuple[str, ...]
    max_stop_len: int
    generator: Any  # torch.Generator on the CPU, None when greedy
    detok_ids: list[int]  # a few prompt tokens (context), then the generated ones
    prefix_offset: int = 0
    read_offset: int = 0
    prefix_text: str | None = None
    text: str = ""
    completion_tokens: int = 0
    length: int = 0  # real tokens of this row in the KV cache
    next_token: int = -1  # sampled, not yet fed to the model
    done: bool = False
    logprobs: int | None = None  # top-k for the entropy (None: not measured)
    entropy_sum: float = 0.0
    entropy_tokens: int = 0


class TransformersBackend(Backend):
    """A transformers causal LM behind the async `Backend` protocol (see the module docstring).

    model: a local model directory (loaded with local_files_only, never downloaded).
    device: "auto" (cuda if available, else cpu), "cpu", "cuda", "cuda:1", ...
    dtype: "auto" (float16 on CUDA before compute 8.0 such as T4, bfloat16 on newer CUDA,
        float32 on CPU) or a name such as "bfloat16", "float16", "float32".
    max_batch_size: most rows decoded together.
    max_model_len: prompt + completion token limit (default: the config's
        max_position_embeddings); longer prompts fail with finish_reason "error", completions
        end with "length" at the limit.
    seed: base seed for requests that carry none (mixed with a per-backend request counter).
    max_prefill_tokens: padded prompt tokens per prefill forward (bounds activation memory).
    attn_implementation: passed to from_pretrained when set ("sdpa", "eager", ...).
    """

    name = "transformers"

    def __init__(
        self,
        model: str | os.PathLike[str],
        device: str = "auto",
        dtype: str = "auto",
        max_batch_size: int = 64,
        max_model_len: int | None = None,
        seed: int = 0,
        *,
        max_prefill_tokens: int = 8192,
        attn_implementation: str | None = None,
    ) -> None:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.model_path = os.fspath(model)
        self.device = _resolve_device(device)
        self.dtype = _resolve_dtype(dtype, self.device)
        self.max_batch_size = int(max_batch_size)
        self.max_prefill_tokens = max(1, int(max_prefill_tokens))
        self.seed = int(seed)

        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path, local_files_only=True)
        self.model = _load_model(
            AutoModelForCausalLM,
            self.model_path,
            self.device,
            self.dtype,
            attn_implementation,
            transformers.__version__,
        )
        self.model.eval()

        text_config = self.model.config
        if hasattr(text_config, "get_text_config"):
            text_config = text_config.get_text_config()
        if max_model_len is None:
            max_model_len = getattr(text_config, "max_position_embeddings", None)
        self.max_model_len: int | None = int(max_model_len) if max_model_len else None

        self._eos_ids = _eos_ids(self.model, self.tokenizer)
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = min(self._eos_ids) if self._eos_ids else 0
        self._pad_id = int(pad)
        self._attention_backends = _attention_backends(self.device)
        params = inspect.signature(self.model.forward).parameters
        self._keep_kw = next(
            (k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None
        )

        self._stats = {
            "requests": 0,
            "batches": 0,  # prefill forwards (groups of admitted rows)
            "admitted": 0,  # rows that entered the running batch
            "steps": 0,  # decoding steps of the running batch
            "row_steps": 0,  # sum over steps of the rows decoded
            "max_rows": 0,  # most rows in one decoding step
            "joined_running": 0,  # rows admitted while other rows were mid-decoding
            "finished": 0,
            "cancelled": 0,
            "errors": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
        }
        self._stats_lock = threading.Lock()
        self._counter = 0
        self._closed = False
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # Worker-only state.
        self._waiting: deque[_Request] = deque()
        self._rows: list[_Row] = []
        self._cache: Any = None
        self._thread = threading.Thread(
            target=self._worker, name="transformers-backend", daemon=True
        )
        self._torch = torch
        self._thread.start()

    # ----------------------------------------------------------------- public API

    async def generate(self, request: GenerationRequest) -> Completion:
        """Queue the request for the worker and await it; cancelling the task drops the row."""
        if self._closed:
            raise RuntimeError("TransformersBackend is closed")
        problem = _check_params(request)
        t0 = time.perf_counter()
        if problem is not None:
            self._bump("errors")
            return Completion.failed(request.request_id, problem, t0, "request")
        loop = asyncio.get_running_loop()
        self._counter += 1
        seed = request.params.seed
        if seed is None:
            seed = (self.seed * 1_000_003 + self._counter) % (2**63)
        req = _Request(request, loop.create_future(), loop, t0, int(seed))
        self._bump("requests")
        self._inbox.put(req)
        try:
            return await req.future
        except asyncio.CancelledError:
            req.cancelled = True  # the worker drops the row at its next step boundary
            raise

    async def aclose(self) -> None:
        """Stop the worker (pending requests end with "abort") and free the model."""
        if self._closed:
            return
        self._closed = True
        self._inbox.put(_CLOSE)
        await asyncio.to_thread(self._thread.join)
        self._release()

    def close(self) -> None:
        """Synchronous `aclose`, for code without an event loop."""
        if self._closed:
            return
        self._closed = True
        self._inbox.put(_CLOSE)
        self._thread.join()
        self._release()

    def kill(self, timeout: float = 10.0) -> None:
        """Free the model from any thread without waiting on an event loop (a rebuild after a
        stuck loop): stop the worker, wait for it at most `timeout`, drop the weights."""
        if not self._closed:
            self._closed = True
            self._inbox.put(_CLOSE)
        self._thread.join(timeout)
        self._release()

    def progress(self) -> int:
        """Forwards run so far (prefills and decoding steps): the silence watchdog's signal."""
        with self._stats_lock:
            return self._stats["batches"] + self._stats["steps"]

    def describe(self) -> dict[str, Any]:
        """Engine, model, device, dtype, limits and library versions, for logs and traces."""
        import tokenizers
        import torch
        import transformers

        return {
            "engine": self.name,
            "model": self.model_path,
            "model_type": getattr(getattr(self.model, "config", None), "model_type", None),
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "max_batch_size": self.max_batch_size,
            "max_model_len": self.max_model_len,
            "max_prefill_tokens": self.max_prefill_tokens,
            "seed": self.seed,
            "batching": "continuous: rows join and leave at decoding-step boundaries",
            "versions": {
                "python": sys.version.split()[0],
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "tokenizers": tokenizers.__version__,
            },
        }

    @property
    def worker_alive(self) -> bool:
        """Whether the decoding thread still runs (it ends with `aclose`/`kill`)."""
        return self._thread.is_alive()

    @property
    def stats(self) -> dict[str, int]:
        """Counters of the worker (batches, steps, max_rows, ...): a snapshot copy."""
        with self._stats_lock:
            return dict(self._stats)

    # ----------------------------------------------------------------- worker thread

    def _worker(self) -> None:
        """Admit waiting requests, decode one step, repeat; never dies on a request's error."""
        torch = self._torch
        with torch.inference_mode():
            while True:
                try:
                    if not self._rows and not self._waiting:
                        item = self._inbox.get()
                        if item is _CLOSE:
                            break
                        self._waiting.append(item)
                    if self._drain_inbox():
                        break
                    self._admit()
                    if self._rows:
                        self._step()
                except Exception as exc:  # keep serving: fail what was running, go on
                    self._fail_running(exc)
            self._abort_all()

    def _drain_inbox(self) -> bool:
        """Move queued requests to the waiting list; True when asked to close."""
        closing = False
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return closing
            if item is _CLOSE:
                closing = True
            else:
                self._waiting.append(item)

    def _admit(self) -> None:
        """Prefill waiting requests into free batch slots, in groups bounded in tokens."""
        new: list[tuple[_Request, list[int]]] = []
        free = self.max_batch_size - len(self._rows)
        while self._waiting and len(new) < free:
            req = self._waiting.popleft()
            if req.cancelled:
                self._bump("cancelled")
                continue
            try:
                ids = list(self.tokenizer(req.request.prompt)["input_ids"])
            except Exception as exc:
                self._finish_error(
                    req, f"tokenization failed: {type(exc).__name__}: {exc}", "request"
                )
                continue
            new.append((req, ids))
        if not new:
            return
        running = bool(self._rows)
        new.sort(key=lambda item: len(item[1]))
        group: list[tuple[_Request, list[int]]] = []
        for item in new:
            longest = max(len(item[1]), *(len(ids) for _, ids in group)) if group else len(item[1])
            if group and longest * (len(group) + 1) > self.max_prefill_tokens:
                self._prefill(group, running)
                group = []
            group.append(item)
        self._prefill(group, running)

    def _prefill(self, group: list[tuple[_Request, list[int]]], running: bool) -> None:
        """Run the group's prompts, merge the group into the batch, sample each first token."""
        torch = self._torch
        rows: list[_Row] = []
        merging = False
        try:
            pairs: list[tuple[_Row, list[int]]] = []
            for req, ids in group:
                row = self._new_row(req, ids)
                if row is not None:
                    pairs.append((row, ids))
            if not pairs:
                return
            rows = [row for row, _ in pairs]
            n = len(pairs)
            width = max(len(ids) for _, ids in pairs)
            input_ids = torch.full((n, width), self._pad_id, dtype=torch.long)
            mask = torch.zeros((n, width), dtype=torch.long)
            for i, (_, ids) in enumerate(pairs):
                input_ids[i, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                mask[i, width - len(ids) :] = 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            input_ids, mask, positions = (t.to(self.device) for t in (input_ids, mask, positions))
            # Without logits_to_keep every position's logits come back: keep chunks small.
            budget = (
                self.max_prefill_tokens if self._keep_kw else min(self.max_prefill_tokens, 1024)
            )
            chunk = max(1, budget // n)
            cache = _new_cache()
            logits = None
            for start in range(0, width, chunk):
                end = min(width, start + chunk)
                out = self._forward(
                    input_ids=input_ids[:, start:end],
                    attention_mask=mask[:, :end],
                    position_ids=positions[:, start:end],
                    past_key_values=cache,
                    use_cache=True,
                )
                cache = out.past_key_values
                logits = out.logits[:, -1, :]
            if not _cache_supported(cache):
                raise RuntimeError(
                    f"unsupported KV cache {type(cache).__name__}: this backend needs a "
                    "DynamicCache of full-attention layers"
                )
            for row, ids in pairs:
                row.length = len(ids)
            merging = True
            self._merge(rows, cache)
            merging = False
            self._bump("batches")
            self._bump("admitted", n)
            if running:
                self._bump("joined_running", n)
            assert logits is not None
            self._sample_and_advance(rows, logits)
        except Exception as exc:
            if merging:  # the running cache may be half-merged: start the batch afresh
                self._fail_running(exc)
            for row in rows:
                row.done = True  # dropped from the batch at the next step boundary
            for req, _ in group:
                if not req.resolved and not req.cancelled:
                    self._finish_error(
                        req, f"prefill failed: {type(exc).__name__}: {exc}", classify_exception(exc)
                    )

    def _new_row(self, req: _Request, ids: list[int]) -> _Row | None:
        """Validate lengths and build the row's state; errors resolve the request."""
        torch = self._torch
        params = req.request.params
        if not ids:
            self._finish_error(req, "empty prompt: no tokens to condition on", "request")
            return None
        max_new = params.max_tokens
        if self.max_model_len is not None:
            room = self.max_model_len - len(ids)
            if room < 1:
                self._finish_error(
                    req,
                    f"prompt is {len(ids)} tokens, max_model_len is {self.max_model_len}",
                    "context",
                )
                return None
            max_new = min(max_new, room)
        generator = None
        if params.temperature > 0:
            generator = torch.Generator(device="cpu")
            generator.manual_seed(req.seed)
        context = ids[-_DETOK_CONTEXT:]
        stops = tuple(s for s in params.stop if s)
        return _Row(
            req=req,
            prompt_tokens=len(ids),
            max_new=max_new,
            temperature=float(params.temperature),
            top_p=float(params.top_p),
            stops=stops,
            max_stop_len=max((len(s) for s in stops), default=0),
            generator=generator,
            detok_ids=list(context),
            prefix_offset=0,
            read_offset=len(context),
            logprobs=params.logprobs,
        )

    def _merge(self, rows: list[_Row], cache: Any) -> None:
        """Append a prefilled group to the running batch (left-padding the shorter cache)."""
        if not self._rows:
            self._rows, self._cache = rows, cache
            return
        have, got = _cache_len(self._cache), _cache_len(cache)
        if have < got:
            _cache_map(self._cache, lambda t: _pad_left(t, got - have))
        elif got < have:
            _cache_map(cache, lambda t: _pad_left(t, have - got))
        _cache_concat(self._cache, cache)
        self._rows = self._rows + rows

    def _step(self) -> None:
        """One decoding step of every live row, then drop finished and cancelled rows."""
        self._drop_dead()
        if not self._rows:
            return
        torch = self._torch
        rows = self._rows
        width = _cache_len(self._cache)
        lengths = torch.tensor([r.length for r in rows], dtype=torch.long)
        mask = (torch.arange(width + 1)[None, :] >= (width - lengths)[:, None]).long()
        positions = lengths[:, None]
        tokens = torch.tensor([[r.next_token] for r in rows], dtype=torch.long)
        out = self._forward(
            input_ids=tokens.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device),
            past_key_values=self._cache,
            use_cache=True,
        )
        self._cache = out.past_key_values
        for r in rows:
            r.length += 1
        with self._stats_lock:
            self._stats["steps"] += 1
            self._stats["row_steps"] += len(rows)
            self._stats["max_rows"] = max(self._stats["max_rows"], len(rows))
        self._sample_and_advance(rows, out.logits[:, -1, :])
        self._drop_dead()

    def _drop_dead(self) -> None:
        """Remove finished/cancelled rows from the batch and trim all-padding cache columns."""
        keep = []
        for i, r in enumerate(self._rows):
            if r.done:
                continue
            if r.req.cancelled:
                r.done = True
                self._bump("cancelled")
                continue
            keep.append(i)
        if len(keep) == len(self._rows):
            return
        if not keep:
            self._rows, self._cache = [], None
            return
        torch = self._torch
        index = torch.tensor(keep, dtype=torch.long)
        by_device: dict[Any, Any] = {}

        def select(t: torch.Tensor) -> torch.Tensor:
            idx = by_device.get(t.device)
            if idx is None:
                idx = by_device[t.device] = index.to(t.device)
            return t.index_select(0, idx)

        _cache_map(self._cache, select)
        self._rows = [self._rows[i] for i in keep]
        spare = _cache_len(self._cache) - max(r.length for r in self._rows)
        if spare > 0:
            _cache_map(self._cache, lambda t: t[..., spare:, :])

    def _sample_and_advance(self, rows: list[_Row], logits: torch.Tensor) -> None:
        """Pick each row's next token and update its text and finish state."""
        torch = self._torch
        live = [i for i, r in enumerate(rows) if not r.done]
        if not live:
            return
        if len(live) < len(rows):
            logits = logits[torch.tensor(live, device=logits.device)]
            rows = [rows[i] for i in live]
        chosen = _sample(torch, logits, rows).tolist()
        measured = [i for i, r in enumerate(rows) if r.logprobs]
        if measured:
            sub = logits.index_select(0, torch.tensor(measured, device=logits.device))
            ks = [int(rows[i].logprobs or 0) for i in measured]
            for i, entropy in zip(measured, _topk_entropies(torch, sub, ks), strict=True):
                rows[i].entropy_sum += entropy
                rows[i].entropy_tokens += 1
        for row, token in zip(rows, chosen, strict=True):
            self._advance(row, int(token))

    def _advance(self, row: _Row, token: int) -> None:
        """Account one sampled token: EOS, text and stop strings, the length limit."""
        row.completion_tokens += 1
        if token in self._eos_ids:
            self._flush(row)
            self._finish(row, "eos")
            return
        row.detok_ids.append(token)
        delta = self._detok(row)
        if delta:
            start = max(0, len(row.text) - row.max_stop_len + 1)
            row.text += delta
            if row.stops:
                cut, stop = apply_stop(row.text[start:], row.stops)
                if stop is not None:
                    row.text = row.text[:start] + cut
                    self._finish(row, "stop", stop)
                    return
        if row.completion_tokens >= row.max_new:
            self._flush(row)
            self._finish(row, "length")
            return
        row.next_token = token

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(
            ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )

    def _detok(self, row: _Row) -> str:
        """New text of the row (incremental; incomplete UTF-8 is held back)."""
        if row.prefix_text is None:
            row.prefix_text = self._decode(row.detok_ids[row.prefix_offset : row.read_offset])
        full = self._decode(row.detok_ids[row.prefix_offset :])
        if len(full) <= len(row.prefix_text) or full.endswith("\ufffd"):
            return ""
        delta = full[len(row.prefix_text) :]
        row.prefix_offset = row.read_offset
        row.read_offset = len(row.detok_ids)
        row.prefix_text = None
        return delta

    def _flush(self, row: _Row) -> None:
        """Append text held back by `_detok` (at the end even an incomplete character)."""
        if row.read_offset >= len(row.detok_ids):
            return
        prefix = self._decode(row.detok_ids[row.prefix_offset : row.read_offset])
        full = self._decode(row.detok_ids[row.prefix_offset :])
        row.text += full[len(prefix) :]
        row.read_offset = len(row.detok_ids)

    # ----------------------------------------------------------------- resolution

    def _finish(self, row: _Row, reason: FinishReason, stop: str | None = None) -> None:
        row.done = True
        req = row.req
        with self._stats_lock:
            self._stats["finished"] += 1
            self._stats["prompt_tokens"] += row.prompt_tokens
            self._stats["completion_tokens"] += row.completion_tokens
        self._resolve(
            req,
            Completion(
                request_id=req.request.request_id,
                text=row.text,
                finish_reason=reason,
                stop=stop,
                prompt_tokens=row.prompt_tokens,
                completion_tokens=row.completion_tokens,
                seconds=time.perf_counter() - req.submitted,
                entropy_sum=row.entropy_sum,
                entropy_tokens=row.entropy_tokens,
            ),
        )

    def _finish_error(
        self, req: _Request, message: str, failure: FailureKind | None = "request"
    ) -> None:
        self._bump("errors")
        completion = Completion.failed(req.request.request_id, message, req.submitted, failure)
        self._resolve(req, completion)

    def _resolve(self, req: _Request, completion: Completion) -> None:
        """Hand the result to the request's event loop (thread-safe)."""
        req.resolved = True

        def deliver() -> None:
            if not req.future.done():
                req.future.set_result(completion)

        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            req.loop.call_soon_threadsafe(deliver)

    def _fail_running(self, exc: BaseException) -> None:
        """A step failed (e.g. out of memory): fail the running rows, start afresh."""
        message = f"{type(exc).__name__}: {exc}"
        failure = classify_exception(exc)
        for row in self._rows:
            if not row.done:
                row.done = True
                if row.req.cancelled:
                    self._bump("cancelled")
                elif not row.req.resolved:
                    self._finish_error(row.req, message, failure)
        self._rows, self._cache = [], None
        torch = self._torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _abort_all(self) -> None:
        """On close: resolve every running and waiting request with "abort"."""
        self._drain_inbox()
        pending = [r.req for r in self._rows if not r.done] + list(self._waiting)
        for req in pending:
            if req.resolved:
                continue
            self._resolve(
                req,
                Completion(
                    req.request.request_id,
                    "",
                    "abort",
                    seconds=time.perf_counter() - req.submitted,
                ),
            )
        self._rows, self._cache = [], None
        self._waiting.clear()

    def _release(self) -> None:
        self.model = None
        torch = self._torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _forward(self, **inputs: Any) -> Any:
        """One model call: last-position logits only, and no cuDNN attention on CUDA.

        cuDNN attention (preferred by recent torch on Hopper) builds an execution plan for
        every new shape, and the KV length changes at every step: measured on an H200 with
        torch 2.11, about 3 ms of CPU per layer and step. Flash/mem-efficient/math have no such
        cost. The switch is process-global in torch, so it is held only around the call.
        """
        if self._keep_kw:
            inputs[self._keep_kw] = 1
        with self._attention_backends():
            return self.model(**inputs)

    def _bump(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self._stats[key] += n


# --------------------------------------------------------------------- helpers


def _check_params(request: GenerationRequest) -> str | None:
    """Why the sampling params are unusable, or None."""
    p = request.params
    if p.max_tokens < 1:
        return f"max_tokens must be at least 1, got {p.max_tokens}"
    if p.temperature < 0:
        return f"temperature must be >= 0, got {p.temperature}"
    if not 0 < p.top_p <= 1:
        return f"top_p must be in (0, 1], got {p.top_p}"
    return None


def _sample(torch: Any, logits: torch.Tensor, rows: list[_Row]) -> torch.Tensor:
    """Next token per row: argmax for temperature 0, else top-p inverse-CDF sampling.

    One uniform number per sampling row comes from that row's own CPU generator, so a row's
    draws do not depend on its batch; the rest is vectorised on the logits' device.
    """
    greedy = logits.argmax(dim=-1)
    sampled_rows = [i for i, r in enumerate(rows) if r.temperature > 0]
    if not sampled_rows:
        return greedy.cpu()
    device = logits.device
    idx = torch.tensor(sampled_rows, device=device)
    sub = logits.index_select(0, idx).float()
    temps = torch.tensor([rows[i].temperature for i in sampled_rows], device=device)
    probs = torch.softmax(sub / temps[:, None], dim=-1)
    top_p = [rows[i].top_p for i in sampled_rows]
    if any(p < 1.0 for p in top_p):
        probs, order = probs.sort(dim=-1, descending=True)
        before = probs.cumsum(dim=-1) - probs
        probs = probs.masked_fill(before >= torch.tensor(top_p, device=device)[:, None], 0.0)
    else:
        order = None
    cdf = probs.cumsum(dim=-1)
    uniforms = torch.stack(
        [torch.rand((), generator=rows[i].generator, dtype=torch.float64) for i in sampled_rows]
    )
    target = (uniforms.to(device=device, dtype=cdf.dtype) * cdf[:, -1])[:, None]
    pick = torch.searchsorted(cdf, target, right=True).clamp(max=cdf.shape[-1] - 1)
    if order is not None:
        pick = order.gather(1, pick)
    out = greedy.clone()
    out[idx] = pick.squeeze(1)
    return out.cpu()


def _topk_entropies(torch: Any, logits: torch.Tensor, ks: list[int]) -> list[float]:
    """Per row, the entropy (nats) of the softmax over its k largest logits (k per row).

    Softmax is shift-invariant, so renormalising the top-k probabilities is the softmax of
    the top-k logits: no full log-softmax over the vocabulary is needed.
    """
    kmax = min(max(ks), logits.shape[-1])
    top = logits.float().topk(kmax, dim=-1).values  # descending
    keep = (
        torch.arange(kmax, device=top.device)[None, :]
        < torch.tensor(ks, device=top.device)[:, None]
    )
    top = top.masked_fill(~keep, float("-inf"))
    logp = torch.log_softmax(top, dim=-1)
    terms = torch.where(keep & torch.isfinite(logp), logp.exp() * logp, torch.zeros_like(logp))
    return (-terms.sum(dim=-1)).clamp(min=0.0).tolist()


def _resolve_device(device: str) -> torch.device:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype for "auto": fp16 before Ampere (a T4 has no bf16), bf16 on newer, fp32 on CPU."""
    import torch

    if not isinstance(dtype, str):
        return dtype
    name = dtype.lower().removeprefix("torch.")
    if name == "auto":
        if device.type == "cuda":
            major, _ = torch.cuda.get_device_capability(device)
            return torch.bfloat16 if major >= 8 else torch.float16
        return torch.float32
    names = {
        "float16": torch.float16,
        "fp16": torch.float16,
        "half": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float32": torch.float32,
        "fp32": torch.float32,
        "float": torch.float32,
    }
    if name not in names:
        raise ValueError(f"unknown dtype {dtype!r}: choose auto, float16, bfloat16 or float32")
    return names[name]


def _load_model(
    auto_cls: Any,
    path: str,
    device: torch.device,
    dtype: torch.dtype,
    attn_implementation: str | None,
    version: str,
) -> Any:
    """from_pretrained without network; straight onto the GPU when device_map is usable."""
    # transformers 5 renamed torch_dtype to dtype (4.56+ accept both, 4.4x only torch_dtype).
    major = int(version.split(".")[0])
    kwargs: dict[str, Any] = {
        "local_files_only": True,
        ("dtype" if major >= 5 else "torch_dtype"): dtype,
    }
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if device.type != "cpu":
        try:  # loads the weights directly on the device (needs accelerate on 4.x)
            return auto_cls.from_pretrained(path, device_map={"": str(device)}, **kwargs)
        except ImportError:
            pass
    return auto_cls.from_pretrained(path, **kwargs).to(device)


def _attention_backends(device: torch.device) -> Any:
    """A context factory that keeps SDPA off cuDNN attention on CUDA (see `_forward`)."""
    if device.type != "cuda":
        return contextlib.nullcontext
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3: no cuDNN attention backend to avoid
        return contextlib.nullcontext
    backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    return lambda: sdpa_kernel(backends)


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """End-of-sequence ids from the generation config and the tokenizer."""
    ids: set[int] = set()
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None) if gen is not None else None
    for value in (eos, tokenizer.eos_token_id):
        if value is None:
            continue
        if isinstance(value, int):
            ids.add(value)
        else:
            ids.update(int(v) for v in value)
    return frozenset(ids)


def _new_cache() -> Any:
    """An empty DynamicCache: plain full-attention layers, which the batch surgery needs."""
    from transformers import DynamicCache

    return DynamicCache()


def _cache_supported(cache: Any) -> bool:
    """Whether the cache is a DynamicCache of plain full layers (5.x layers or 4.x lists)."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return all(
            type(layer).__name__ == "DynamicLayer" and getattr(layer, "keys", None) is not None
            for layer in layers
        )
    return type(cache).__name__ == "DynamicCache" and hasattr(cache, "key_cache")


def _cache_len(cache: Any) -> int:
    return int(cache.get_seq_length())


def _cache_map(cache: Any, fn: Any) -> None:
    """Replace every key/value tensor t (batch, heads, seq, dim) with fn(t)."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        for layer in layers:
            layer.keys = fn(layer.keys)
            layer.values = fn(layer.values)
        return
    cache.key_cache[:] = [fn(t) for t in cache.key_cache]
    cache.value_cache[:] = [fn(t) for t in cache.value_cache]
    if hasattr(cache, "_seen_tokens"):
        cache._seen_tokens = cache.key_cache[0].shape[-2]


def _cache_concat(cache: Any, other: Any) -> None:
    """Append `other`'s rows to `cache` (same sequence length) on the batch dimension."""
    import torch

    layers = getattr(cache, "layers", None)
    if layers is not None:
        for layer, extra in zip(layers, other.layers, strict=True):
            layer.keys = torch.cat([layer.keys, extra.keys], dim=0)
            layer.values = torch.cat([layer.values, extra.values], dim=0)
        return
    for i, (k, v) in enumerate(zip(other.key_cache, other.value_cache, strict=True)):
        cache.key_cache[i] = torch.cat([cache.key_cache[i], k], dim=0)
        cache.value_cache[i] = torch.cat([cache.value_cache[i], v], dim=0)


def _pad_left(t: torch.Tensor, n: int) -> torch.Tensor:
    import torch

    pad = t.new_zeros((*t.shape[:-2], n, t.shape[-1]))
    return torch.cat([pad, t], dim=-2)
