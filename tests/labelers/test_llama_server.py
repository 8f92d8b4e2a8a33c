"""Both API backends against a real llama.cpp server running the embedded SmolLM2."""

from __future__ import annotations

import math

import pytest

from rlaif.data.provenance import read_rows
from rlaif.labelers.base import GenerateParams, create_labeler, run_sync

pytestmark = pytest.mark.slow

ASK = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
CHOICE = [
    {
        "role": "user",
        "content": "Which reply is kinder?\n(A) Thank you, that was helpful.\n"
        "(B) Go away, you idiot.\nAnswer with (A) or (B).",
    },
    {"role": "assistant", "content": "The answer is:"},
]


def test_openai_sdk_generates_and_scores_options(llama_server):
    lab = create_labeler("openai:smollm2", base_url=f"{llama_server}/v1")
    out = run_sync(lab.generate([ASK], GenerateParams(temperature=0.0, max_tokens=16)))[0][0]
    assert "Paris" in out.text and out.prompt_tokens > 0 and out.completion_tokens > 0
    scores = run_sync(lab.option_logprobs([CHOICE], [" (A)", " (B)"]))[0]
    assert all(math.isfinite(s) and s <= 0 for s in scores)
    probs = [math.exp(s) for s in scores]
    assert 0.0 < probs[0] / sum(probs) < 1.0  # a real, soft label
    assert lab.retries == 0


def test_anthropic_sdk_generates_and_votes(llama_server):
    lab = create_labeler("anthropic:smollm2", base_url=llama_server, votes=6)
    out = run_sync(lab.generate([ASK], GenerateParams(temperature=0.0, max_tokens=16)))[0][0]
    assert "Paris" in out.text and out.completion_tokens > 0
    scores = run_sync(lab.option_logprobs([CHOICE], [" (A)", " (B)"]))[0]
    shares = [math.exp(s) for s in scores]
    assert sum(shares) == pytest.approx(1.0)
    parsed = 6 - lab.unparsed_votes  # k=6 votes; answers naming no option do not vote
    assert 1 <= parsed <= 6
    assert all(parsed * share == pytest.approx(round(parsed * share)) for share in shares)


@pytest.mark.parametrize(
    ("spec", "base", "mode"),
    [("openai:smollm2", "/v1", "logprobs"), ("anthropic:smollm2", "", "votes")],
)
def test_generate_prefs_through_the_server(llama_server, tmp_path, spec, base, mode):
    import json

    from rlaif.cli import main

    from ..conftest import FIXTURES

    out = tmp_path / "prefs"
    code = main([
        "generate", "prefs", "--prompts", str(FIXTURES / "prompts.txt"), "--limit", "2",
        "--labeler", spec, "--labeler-set", f"base_url={llama_server}{base}",
        "--max-tokens", "24", "--votes", "4", "--out", str(out),
    ])  # fmt: skip
    assert code == 0
    rows = read_rows(out / "preferences.jsonl")
    unlabeled = out / "preferences.unlabeled.jsonl"
    kept = [json.loads(x) for x in unlabeled.read_text().splitlines()] if unlabeled.exists() else []
    assert len(rows) + len(kept) == 2  # every pair is either labeled or kept with a reason
    for r in rows:
        assert r["provenance"]["feedback"]["mode"] == mode
        assert 0.5 <= r["preference_prob"] <= 1.0 and len(r["judgements"]) == 2
        key = "logprobs" if mode == "logprobs" else "votes"
        assert all(j[key] is not None for j in r["judgements"])
    for r in kept:
        assert r["unlabeled"]["reason"]
