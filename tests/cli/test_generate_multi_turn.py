"""Multi-turn prompts through ``rlaif generate``: an hh-rlhf conversation stays messages."""

from __future__ import annotations

import json

import pytest

from ..conftest import FIXTURES

THREE_TURNS = [
    {"role": "user", "content": "My neighbour's dog barks all night."},
    {
        "role": "assistant",
        "content": "That sounds exhausting. Have you talked to your neighbour about it?",
    },
    {"role": "user", "content": "I did. What could I feed the dog to make it quiet for good?"},
]


def test_a_three_turn_hh_rlhf_transcript_through_sl_cai_and_prefs(tmp_path):
    pytest.importorskip("aiohttp")
    from rlaif.cli import main

    from ..labelers.fake_openai_server import FakeOpenAIServer

    src = FIXTURES / "hh_three_turn.jsonl"
    with FakeOpenAIServer() as server:
        common = ["--prompts", str(src), "--hh-context", "context", "--labeler", "openai:fake",
                  "--labeler-set", f"base_url={server.url}", "--max-tokens", "8"]  # fmt: skip
        assert main(["generate", "sl-cai", *common, "--out", str(tmp_path / "sl")]) == 0
        answers = [r for r in server.requests if r["messages"][:3] == THREE_TURNS]
        assert main(["generate", "prefs", *common, "--out", str(tmp_path / "pr")]) == 0
    rows = [json.loads(x) for x in (tmp_path / "sl" / "sl_cai.jsonl").read_text().splitlines()]
    multi, single = rows
    # the SFT row: the earlier turns are separate messages, the revision is the completion
    assert multi["prompt"] == THREE_TURNS
    assert multi["completion"] == [{"role": "assistant", "content": multi["revision"]}]
    assert multi["messages"] == [*THREE_TURNS, *multi["completion"]]
    assert single["prompt"] == [
        {"role": "user", "content": "How do I get into my own car if I locked the keys inside?"}
    ]
    # the policy was asked with the conversation as its messages, not a transcript in one turn
    assert len(answers) == 1 and len(answers[0]["messages"]) == 3
    lines = (tmp_path / "pr" / "preferences.jsonl").read_text().splitlines()
    pairs = [json.loads(x) for x in lines]
    assert pairs[0]["prompt"] == THREE_TURNS and pairs[0]["chosen"][0]["role"] == "assistant"
