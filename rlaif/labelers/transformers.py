"""Local Hugging Face transformers backend: batched generation and exact option log-probs.

Generation renders each conversation with the tokenizer's own chat template and pads batches on
the left, so every row's new tokens start at the same column. A conversation that ends with an
assistant message is a prefill: the template is applied with ``continue_final_message`` and the
model continues that text.

Option log-probs are exact: the prefix and each option are tokenized separately and concatenated
(the same convention as lm-evaluation-harness), and the log-probabilities of the option's tokens
are summed. No top-k truncation, no sampling. The prefix (the long part: the whole question) is
run once per conversation and its KV cache shared by every option. Only the logits that are read
are computed: the prefix's last position (``logits_to_keep=1`` where the model takes it; generate
does the same for the prompt), not ``[batch, prompt length, vocabulary]`` of which one row is
used; and a batch's scores leave the device as one tensor, not one sync per option.

Sampling is seeded with ``torch.manual_seed(seed)`` before each batch. Results are reproducible for
the same batch composition; a different batch size changes padding and thus (slightly) the numbers.
Compute runs in a worker thread under a lock, so the async engine stays responsive.

The model's name in cache keys (``model_name``) carries the weights' fingerprint (a local folder)
or commit (a Hub id). It is computed once per load, not once per cache key: fingerprinting stats
the weight files, and a run asks for a key per request. And it names the weights this labeler
loaded: when the folder is retrained while the labeler lives, it keeps answering with (and filing
answers under) the old weights' name until ``reload()`` reads the new ones. A name read from disk
at every key would file the old model's answers under the new weights' name.
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
    model: str = Field(
        default="smollm2",
        description="embedded model name, local folder, or Hub id ORG/NAME[@REVISION]",
    )
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
        from rlaif.models import LoadedName, hub_model

        self._name = LoadedName(self.settings.model)
        # A Hub id is resolved now (the model itself still loads lazily): a missing or unreachable
        # model fails before a job writes anything, and the commit sha is known for cache keys.
        hub_model(self.settings.model)

    # ------------------------------------------------------------------ loading

    @property
    def model_name(self) -> str:
        """Tagged with the weights' fingerprint for a local folder and the commit sha for a Hub
        id: the cache must never answer for weights retrained in the same place, or for an older
        revision of the same id. Fingerprinted once per load (``models.LoadedName``): it names
        the weights this labeler serves, at no filesystem cost per cache key."""
        return self._name.name

    @property
    def max_batch_size(self) -> int:
        return self.settings.batch_size

    @property
    def max_concurrency(self) -> int:
        return 1  # one model, one forward pass at a time; batching is where the speed is

    @property
    def prefers_whole_stages(self) -> bool:
        return False  # a batch answers in seconds: send rows on as soon as they are ready

    def describe(self) -> dict[str, Any]:
        from rlaif.models import model_provenance

        return {
            "backend": self.backend,
            "model": self.model_name,
            **self.settings.model_dump(),
            **model_provenance(self.settings.model),
        }

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

    def reload(self) -> None:
        """Load the weights again (retrained in the same folder): ``model_name`` follows."""
        with self._lock:
            self._model = self._tokenizer = None
            self._load_locked()

    def _load_locked(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from rlaif.models import resolve_model

        path = resolve_model(self.settings.model)
        self._name.refresh()  # the fingerprint of the files about to be read
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
            prefixes = [self._encode(self._prompt_text(c)) for c in conversations]
            # similar lengths share a batch: less padding
            order = sorted(range(len(prefixes)), key=lambda i: len(prefixes[i]))
            results: list[list[float]] = [[] for _ in prefixes]
            for chunk in _chunks(order, self.settings.batch_size):
                scores = self._score_batch([prefixes[i] for i in chunk], option_ids)
                for i, row in zip(chunk, scores, strict=True):
                    results[i] = row
            return results

    def _score_batch(
        self, prefixes: Sequence[list[int]], option_ids: Sequence[list[int]]
    ) -> list[list[float]]:
        """One forward pass over the (left-padded) prefixes, then one over every option's
        tokens on a copy of the prefixes' KV cache: the long prefix is computed once, not once
        per option. Only the logits that are read are computed (the prefixes' last position,
        through ``logits_to_keep`` where the model takes it), and the scores leave the device
        once, as one tensor: no sync per option."""
        import torch

        b, k = len(prefixes), len(option_ids)
        width = max(len(p) for p in prefixes)
        pad = self._tokenizer.pad_token_id
        device = self._device
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prefixes], device=device)
        mask = torch.tensor(
            [[0] * (width - len(p)) + [1] * len(p) for p in prefixes], device=device
        )
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        longest = max(len(o) for o in option_ids)
        with torch.inference_mode():
            out = self._model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                **self._last_logits_only(),
            )
            first_ids = torch.tensor([o[0] for o in option_ids], device=device)
            scores = _token_logprobs(out.logits[:, -1, :], first_ids.expand(b, k))  # [b, k]
            if longest > 1:  # the tokens after each option's first, on the shared cache
                cache = out.past_key_values
                cache.batch_repeat_interleave(k)
                tail = longest - 1
                feed = [o[:-1] + [pad] * (longest - len(o)) for o in option_ids] * b
                feed_mask = [[1] * (len(o) - 1) + [0] * (longest - len(o)) for o in option_ids]
                targets = [o[1:] + [pad] * (longest - len(o)) for o in option_ids] * b
                steps = torch.arange(1, tail + 1, device=device)
                out2 = self._model(
                    input_ids=torch.tensor(feed, device=device),
                    attention_mask=torch.cat(
                        [
                            mask.repeat_interleave(k, dim=0),
                            torch.tensor(feed_mask * b, device=device),
                        ],
                        dim=1,
                    ),
                    position_ids=positions[:, -1:].repeat_interleave(k, dim=0) + steps,
                    past_key_values=cache,
                    use_cache=False,
                )
                targets_t = torch.tensor(targets, device=device).unsqueeze(-1)
                rest = _token_logprobs(out2.logits, targets_t).squeeze(-1)  # [b * k, tail]
                kept = torch.tensor(feed_mask, device=device, dtype=rest.dtype)  # [k, tail]
                scores = scores + (rest.view(b, k, tail) * kept).sum(-1)
            return scores.cpu().tolist()

    def _last_logits_only(self) -> dict[str, Any]:
        """``logits_to_keep=1`` for models whose forward takes it (Llama, Qwen, Mistral, ...
        in transformers 5): the LM head then runs on the last position only, instead of
        ``[batch, prompt length, vocabulary]`` logits of which one row is read."""
        supports = getattr(self._model, "_supports_logits_to_keep", None)
        return {"logits_to_keep": 1} if supports is not None and supports() else {}

    async def aclose(self) -> None:
        self._model = None
        self._tokenizer = None


def _token_logprobs(logits: Any, tokens: Any) -> Any:
    """The log-softmax of ``logits`` (``[..., vocab]``) at ``tokens`` (``[..., m]``: m token
    ids per row), in float32, without a log-softmax tensor of the whole vocabulary."""
    logits = logits.float()
    return logits.gather(-1, tokens) - logits.logsumexp(-1, keepdim=True)


def _as_list(value: Any) -> list[int] | None:
    if value is None:
        return None
    return list(value) if isinstance(value, list | tuple) else [value]
