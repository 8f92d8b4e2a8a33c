"""Local Hugging Face transformers backend: batched generation and exact option log-probs.

Generation renders each conversation with the tokenizer's own chat template and pads batches on
the left, so every row's new tokens start at the same column. A conversation that ends with an
assistant message is a prefill: the template is applied with ``continue_final_message`` and the
model continues that text.

Option log-probs are exact: the prefix and each option are tokenized separately and concatenated
(the same convention as lm-evaluation-harness), the full sequence is run through the model once,
and the log-probabilities of the option's tokens are summed. No top-k truncation, no sampling.

Sampling is seeded with ``torch.manual_seed(seed)`` before each batch. Results are reproducible for
the same batch composition; a different batch size changes padding and thus (slightly) the numbers.
Compute runs in a worker thread under a lock, so the async engine stays responsive.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field

from rlaif.errors import ConfigError
from rlaif.labelers.base import (
    BackendSettings,
    Completion,
    Conversation,
    GenerateParams,
    chat_prompt_text,
)


class TransformersSettings(BackendSettings):
    model: str = Field(default="smollm2", description="embedded model name or a local folder")
    device: str = Field(default="auto", description="auto, cpu, cuda, cuda:N or mps")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    batch_size: int = Field(default=8, ge=1, description="conversations per forward batch")


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class TransformersLabeler:
    backend: ClassVar[str] = "transformers"
    supports_logprobs: ClassVar[bool] = True
    Settings = TransformersSettings
    retries = 0  # a local model has nothing to retry
    cost = None  # and no price table

    def __init__(self, settings: TransformersSettings | None = None):
        self.settings = settings or TransformersSettings()
        self._lock = threading.Lock()
        self._model: Any = None
        self._tokenizer: Any = None
        self._device: Any = None

    # ------------------------------------------------------------------ loading

    @property
    def model_name(self) -> str:
        return self.settings.model

    @property
    def max_batch_size(self) -> int:
        return self.settings.batch_size

    @property
    def max_concurrency(self) -> int:
        return 1  # one model, one forward pass at a time; batching is where the speed is

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "model": self.model_name, **self.settings.model_dump()}

    def _pick_device_dtype(self) -> tuple[Any, Any]:
        import torch

        device = self.settings.device
        if device == "auto":
            if torch.cuda.is_available():
                device = "cuda"
            elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
                device = "mps"
            else:
                device = "cpu"
        dtype_name = self.settings.dtype
        if dtype_name == "auto":
            on_gpu = device.startswith("cuda")
            bf16 = on_gpu and torch.cuda.is_bf16_supported()
            dtype_name = "bfloat16" if bf16 else "float32"
        return torch.device(device), getattr(torch, dtype_name)

    def load(self) -> None:
        """Load tokenizer and weights (done lazily on first use)."""
        with self._lock:
            self._load_locked()

    def _load_locked(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from rlaif.models import resolve_model

        path = resolve_model(self.settings.model)
        self._device, dtype = self._pick_device_dtype()
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        if not tokenizer.chat_template:
            raise ConfigError(f"model '{self.settings.model}' has no chat template")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
        model.to(self._device).eval()
        self._tokenizer, self._model = tokenizer, model

    # ------------------------------------------------------------------ helpers

    def _prompt_text(self, conversation: Conversation) -> str:
        return chat_prompt_text(self._tokenizer, conversation)

    def _encode(self, text: str) -> list[int]:
        return self._tokenizer(text, add_special_tokens=False)["input_ids"]

    # ------------------------------------------------------------------ generate

    async def generate(
        self, conversations: Sequence[Conversation], params: GenerateParams
    ) -> list[list[Completion]]:
        return await asyncio.to_thread(self.generate_sync, conversations, params)

    def generate_sync(
        self, conversations: Sequence[Conversation], params: GenerateParams
    ) -> list[list[Completion]]:
        with self._lock:
            self._load_locked()
            out: list[list[Completion]] = []
            for chunk in _chunks(conversations, self.settings.batch_size):
                out.extend(self._generate_batch(chunk, params))
            return out

    def _generate_batch(
        self, conversations: Sequence[Conversation], params: GenerateParams
    ) -> list[list[Completion]]:
        import torch

        tok, model = self._tokenizer, self._model
        encoded = [self._encode(self._prompt_text(c)) for c in conversations]
        width = max(len(ids) for ids in encoded)
        pad = tok.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded])
        attention = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
        sample = params.temperature > 0
        kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_tokens,
            "num_return_sequences": params.n,
            "do_sample": sample,
            "pad_token_id": pad,
        }
        if sample:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if params.stop:
            kwargs.update(stop_strings=list(params.stop), tokenizer=tok)
        if params.seed is not None:
            torch.manual_seed(params.seed)
        with torch.inference_mode():
            generated = model.generate(
                input_ids=input_ids.to(self._device),
                attention_mask=attention.to(self._device),
                **kwargs,
            )
        new_tokens = generated[:, width:].tolist()
        eos_ids = set(_as_list(model.generation_config.eos_token_id) or [tok.eos_token_id])
        results: list[list[Completion]] = []
        for i, prompt_ids in enumerate(encoded):
            samples = []
            for j in range(params.n):
                samples.append(self._finish(new_tokens[i * params.n + j], eos_ids, params))
            results.append(
                [
                    Completion(text, reason, len(prompt_ids), n_tokens)
                    for text, reason, n_tokens in samples
                ]
            )
        return results

    def _finish(
        self, tokens: list[int], eos_ids: set[int], params: GenerateParams
    ) -> tuple[str, Literal["stop", "length"], int]:
        reason: Literal["stop", "length"] = "length"
        for k, t in enumerate(tokens):
            if t in eos_ids:
                tokens, reason = tokens[: k + 1], "stop"
                break
        text = self._tokenizer.decode(tokens, skip_special_tokens=True)
        for s in params.stop:
            cut = text.find(s)
            if cut >= 0:
                text, reason = text[:cut], "stop"
        return text.strip(), reason, len(tokens)

    # ------------------------------------------------------------------ option log-probs

    async def option_logprobs(
        self, conversations: Sequence[Conversation], options: Sequence[str]
    ) -> list[list[float]]:
        return await asyncio.to_thread(self.option_logprobs_sync, conversations, options)

    def option_logprobs_sync(
        self, conversations: Sequence[Conversation], options: Sequence[str]
    ) -> list[list[float]]:
        if not options:
            raise ValueError("option_logprobs needs at least one option")
        with self._lock:
            self._load_locked()
            option_ids = [self._encode(o) for o in options]
            if any(not ids for ids in option_ids):
                raise ValueError("every option must encode to at least one token")
            pairs = []  # (prefix ids, option ids) for every conversation x option
            for conv in conversations:
                prefix = self._encode(self._prompt_text(conv))
                pairs.extend((prefix, ids) for ids in option_ids)
            scores: list[float] = []
            for chunk in _chunks(pairs, self.settings.batch_size * len(options)):
                scores.extend(self._score_batch(chunk))
            k = len(options)
            return [scores[i : i + k] for i in range(0, len(scores), k)]

    def _score_batch(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[float]:
        import torch

        seqs = [p + o for p, o in pairs]
        width = max(len(s) for s in seqs)
        pad = self._tokenizer.pad_token_id
        input_ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
        attention = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
        with torch.inference_mode():
            logits = self._model(
                input_ids=input_ids.to(self._device), attention_mask=attention.to(self._device)
            ).logits.float()
        logprobs = torch.log_softmax(logits, dim=-1)
        out = []
        for row, (prefix, option) in enumerate(pairs):
            start = len(prefix)
            positions = torch.arange(start - 1, start - 1 + len(option), device=logprobs.device)
            targets = torch.tensor(option, device=logprobs.device)
            out.append(float(logprobs[row, positions, targets].sum()))
        return out

    async def aclose(self) -> None:
        self._model = None
        self._tokenizer = None


def _as_list(value: Any) -> list[int] | None:
    if value is None:
        return None
    return list(value) if isinstance(value, list | tuple) else [value]
