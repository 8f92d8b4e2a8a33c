"""Token counts offline: tiktoken with the shipped, checked BPE files; approximations named."""

from __future__ import annotations

import pytest

from rlaif.engine import token_counts
from rlaif.engine.token_counts import counter_for, encoding_name

pytest.importorskip("tiktoken")
pytest.importorskip("bpe_openai")


def test_openai_models_count_with_their_tiktoken_encoding_without_the_network(monkeypatch):
    import tiktoken.load

    def no_download(*args, **kwargs):
        raise AssertionError("tiktoken tried to download an encoding")

    monkeypatch.setattr(tiktoken.load, "read_file", no_download)
    counter = counter_for("openai", "gpt-4o-mini")
    assert counter.exact and counter.name == "tiktoken o200k_base"
    # o200k_base: "hello", " world", ",", " how", " are", " you", "?"
    assert counter.count(["hello world, how are you?", ""]) == [7, 0]
    assert counter.overhead(2) == 2 * 3 + 3
    assert counter_for("openai", "gpt-4").name == "tiktoken cl100k_base"


def test_unknown_openai_compatible_models_use_o200k_and_anthropic_is_an_approximation():
    assert encoding_name("some-local-model") == "o200k_base"
    approx = counter_for("anthropic", "claude-sonnet-4-5")
    assert not approx.exact and "approximation" in approx.name
    assert approx.count(["x" * 9]) == [3]  # 4 characters a token, rounded up


def test_a_bpe_file_that_fails_its_checksum_is_not_used(monkeypatch):
    token_counts.tiktoken_encoding.cache_clear()
    monkeypatch.setattr(token_counts, "_shipped_bpe", lambda name: b"tampered 0\n")
    monkeypatch.setattr(token_counts, "_in_tiktoken_cache", lambda name: False)
    try:
        counter = counter_for("openai", "gpt-4o")
        assert not counter.exact and "pip install 'rlaif[cost]'" in counter.name
    finally:
        token_counts.tiktoken_encoding.cache_clear()
