"""Counting the tokens of chat requests without sending them: the tokenizer a model bills by.

``--estimate`` (``engine.estimate``) counts every request of a run before it runs, so the count
has to come from the model's own tokenizer where there is one, offline, and fast enough for
10^5 prompts:

- **OpenAI models**: tiktoken's encoding for the model id (``o200k_base`` for gpt-4o, gpt-4.1,
  gpt-5 and the o-series, ``cl100k_base`` for gpt-4 and gpt-3.5; an id tiktoken does not know,
  such as a model on a local OpenAI-compatible server, is counted with ``o200k_base``). tiktoken
  downloads its BPE files on first use, which an offline machine cannot do, so the files are
  read from the ``bpe-openai`` package (the ``cost`` extra), which ships them, and checked
  against the SHA-256 that tiktoken itself checks its downloads against; then tiktoken's own
  encoder counts. Without that package, tiktoken's own download cache is used when the file is
  there; never a download from here (an offline machine could hang on it).
- **Local models** (transformers, vllm, the embedded model): the model's Hugging Face tokenizer,
  read from local files only.
- **Anthropic models**, and anything the above cannot load: an approximation, 4 characters a
  token (Anthropic publishes no offline tokenizer; its token-counting endpoint is an API call).
  The estimate says which counter it used, and when it is an approximation.

Chat formatting adds tokens per message: OpenAI's documented rule of thumb is 3 per message and 3
to prime the reply; a local model's overhead is measured once from its chat template; the
approximation adds 4 per message, as ``labelers.reliability.estimate_tokens`` does for rate
limits. Each distinct text is counted once (``engine.estimate`` keeps the counts), by
tiktoken's Rust encoder or a fast tokenizer's batch call.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

log = logging.getLogger(__name__)

# the SHA-256 of each BPE file, as tiktoken (tiktoken_ext.openai_public) checks its downloads
BPE_SHA256 = {
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
}
BPE_URL = "https://openaipublic.blob.core.windows.net/encodings/{}.tiktoken"
CHARS_PER_TOKEN = 4
BATCH = 4096  # texts per tokenizer call


@dataclass
class TokenCounter:
    """Counts tokens of texts and of chat requests for one model."""

    name: str  # what counts, as the estimate prints it
    exact: bool  # the model's own tokenizer (False: an approximation)
    per_message: int  # chat formatting tokens per message
    per_request: int  # tokens that prime the reply, once per request
    _encode: Any = None  # texts -> token counts (None: the character approximation)

    def count(self, texts: Sequence[str]) -> list[int]:
        if self._encode is None:
            return [math.ceil(len(t) / CHARS_PER_TOKEN) for t in texts]
        out: list[int] = []
        for start in range(0, len(texts), BATCH):
            out.extend(self._encode(list(texts[start : start + BATCH])))
        return out

    def overhead(self, messages: int) -> int:
        """Formatting tokens of a request of ``messages`` messages."""
        return self.per_message * messages + self.per_request


def approximate(reason: str) -> TokenCounter:
    return TokenCounter(
        f"approximation, {CHARS_PER_TOKEN} characters a token ({reason})", False, 4, 0
    )


def counter_for(backend: str, model: str) -> TokenCounter:
    """The counter for a labeler (``backend`` as in its spec, ``model`` its model name/path)."""
    if backend == "openai":
        return _openai_counter(model)
    if backend == "anthropic":
        return approximate("Anthropic publishes no offline tokenizer")
    return _local_counter(model)


def encoding_name(model: str) -> str:
    """tiktoken's encoding for an OpenAI model id; ``o200k_base`` for ids it does not know."""
    try:
        from tiktoken.model import encoding_name_for_model

        return encoding_name_for_model(model)
    except (ImportError, KeyError):
        return "o200k_base"


def _openai_counter(model: str) -> TokenCounter:
    name = encoding_name(model)
    encoding = tiktoken_encoding(name)
    if encoding is None:
        return approximate(
            f"tiktoken's {name} file is not available offline: pip install 'rlaif[cost]'"
        )

    def encode(texts: list[str]) -> list[int]:
        # one call into tiktoken's Rust encoder per text: its threaded batch call costs more in
        # thread-pool bookkeeping than the encoding itself for short texts
        one = encoding.encode_ordinary
        return [len(one(t)) for t in texts]

    return TokenCounter(f"tiktoken {name}", True, 3, 3, encode)


@cache
def tiktoken_encoding(name: str) -> Any:
    """A tiktoken ``Encoding`` built from a local, checked copy of its BPE file, or None."""
    try:
        import tiktoken
    except ImportError:
        return None
    if name not in BPE_SHA256:
        return None
    shipped = _shipped_bpe(name)
    if shipped is not None:
        if hashlib.sha256(shipped).hexdigest() != BPE_SHA256[name]:
            log.warning("the shipped %s BPE file does not match tiktoken's checksum", name)
        else:  # the ranks, regex and special tokens of the same (checked) file, parsed once
            from bpe_openai import registry

            spec = getattr(registry, name)()
            return tiktoken.Encoding(
                name,
                pat_str=spec["pat_str"],
                mergeable_ranks=spec["mergeable_ranks"],
                special_tokens=spec["special_tokens"],
            )
    if _in_tiktoken_cache(name):  # tiktoken reads (and checks) its cached copy: no download
        return tiktoken.get_encoding(name)
    return None


def _shipped_bpe(name: str) -> bytes | None:
    try:
        from importlib import resources

        blob = resources.files("bpe_openai.data").joinpath(f"{name}.tiktoken.gz").read_bytes()
    except (ImportError, FileNotFoundError, OSError):
        return None
    return gzip.decompress(blob)


def _in_tiktoken_cache(name: str) -> bool:
    """Whether tiktoken's download cache holds the file (where an online run left it)."""
    cache_dir = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
    if cache_dir is None:
        cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    key = hashlib.sha1(BPE_URL.format(name).encode()).hexdigest()
    return os.path.isfile(os.path.join(cache_dir, key))


def _local_counter(model: str) -> TokenCounter:
    tokenizer = _hf_tokenizer(model)
    if tokenizer is None:
        return approximate(f"no local tokenizer found for {model}")

    def encode(texts: list[str]) -> list[int]:
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    one, two = (_template_tokens(tokenizer, n) for n in (1, 2))
    per_message = max(two - one, 0) if one is not None and two is not None else 0
    per_request = max((one or 0) - per_message, 0)
    return TokenCounter(f"the tokenizer of {model}", True, per_message, per_request, encode)


def _template_tokens(tokenizer: Any, messages: int) -> int | None:
    """Tokens the chat template adds around ``messages`` empty user turns."""
    conversation = [{"role": "user", "content": ""}] * messages
    try:
        ids = tokenizer.apply_chat_template(conversation, tokenize=True, add_generation_prompt=True)
    except Exception:  # no chat template: plain text, no overhead
        return None
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return len(ids)


def _hf_tokenizer(model: str) -> Any:
    """A local model's tokenizer from local files, or None (transformers is imported only when
    there is something to load: it takes seconds)."""
    from pathlib import Path

    from rlaif.models import EMBEDDED, parse_hub_id

    path = Path(model).expanduser()
    hub = None if path.exists() else parse_hub_id(model)
    if model not in EMBEDDED and not path.is_dir() and not (hub and _hub_cached(*hub)):
        return None
    try:
        from transformers import AutoTokenizer

        from rlaif.models import load_embedded_tokenizer

        if model in EMBEDDED:
            return load_embedded_tokenizer(model)
        if path.is_dir():
            return AutoTokenizer.from_pretrained(str(path))
        assert hub is not None
        return AutoTokenizer.from_pretrained(hub[0], revision=hub[1], local_files_only=True)
    except Exception:  # not a model folder, a damaged cache
        return None


def _hub_cached(repo_id: str, revision: str | None) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "tokenizer_config.json", revision=revision)
    except Exception:
        return False
    return isinstance(found, str)
