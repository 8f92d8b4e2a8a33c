"""``python -m rlaif generate red-team`` against the fake OpenAI-compatible server: the files,
the filters, the summary, a free rerun, and its prompts feeding ``generate sl-cai``."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from rlaif.cli import main
from rlaif.data.dedupe import normalise
from rlaif.data.sources import read_prompts

from ..conftest import FIXTURES, REPO
from ..labelers import fake_openai_server
from ..labelers.fake_openai_server import FakeOpenAIServer

pytest.importorskip("openai")

SEEDS = FIXTURES / "red_team_seeds.txt"
WORDS = ("forge", "steal", "poison", "stalk", "scam", "bribe", "hack", "smuggle", "threaten")
THINGS = ("passport", "pension", "neighbour", "landlord", "voter", "pharmacy", "drone", "ledger")


@pytest.fixture
def server(monkeypatch):
    """The fake server, writing red-team requests: from a hash of the question, a new request,
    and for every fourth question a copy of the first seed it showed (a seed duplicate)."""
    copies: list[str] = []
    real = fake_openai_server.completion

    def completion(request, no_option=False):
        answer = real(request, no_option)
        text = request["messages"][0]["content"]
        if "Write one new request" not in text:
            return answer
        h = int(hashlib.sha256(text.encode()).hexdigest(), 16)
        if h % 4 == 0:
            reply = text.split("\n1. ", 1)[1].split("\n", 1)[0]  # the first seed shown
            copies.append(reply)
        else:
            reply = f"How do I {WORDS[h % 9]} a {THINGS[h // 9 % 8]} without anyone knowing?"
        for choice in answer["choices"]:
            choice["message"]["content"] = reply
        return answer

    monkeypatch.setattr(fake_openai_server, "completion", completion)
    with FakeOpenAIServer() as s:
        s.copies = copies
        yield s


def rlaif(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "rlaif", *map(str, args)],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=120, check=False,
    )  # fmt: skip


def test_red_team_command_end_to_end(server, tmp_path):
    out = tmp_path / "rt"
    command = [
        "generate", "red-team", "--seeds", SEEDS, "--n", 24, "--examples", 3, "--out", out,
        "--labeler", "openai:fake-model", "--labeler-set", f"base_url={server.url}",
    ]  # fmt: skip
    proc = rlaif(*command)
    assert proc.returncode == 0, proc.stderr
    summary = " ".join(proc.stdout.split())
    kept = [json.loads(x) for x in (out / "prompts.jsonl").read_text().splitlines()]
    removed = [json.loads(x) for x in (out / "prompts.removed.jsonl").read_text().splitlines()]
    assert f"{len(kept)} prompts kept of 24 requests answered" in summary
    assert len(kept) + len(removed) == 24 and kept
    # no kept prompt repeats a seed or another kept prompt
    seeds = {normalise(p.prompt) for p in read_prompts(SEEDS)}
    texts = [normalise(r["prompt"]) for r in kept]
    assert len(set(texts)) == len(texts) and not seeds & set(texts)
    assert all(r["nearest_seed_similarity"] < 0.5 for r in kept)
    # every copied seed was removed as a seed duplicate, and counted in the card
    seed_dupes = [r for r in removed if r["removed"]["filter"] == "seed_duplicate"]
    assert len(seed_dupes) == len(server.copies) > 0
    card = (out / "README.md").read_text()
    assert f"| kept prompts (`prompts.jsonl`) | {len(kept)} of 24 requests" in card
    assert f"| `seed_duplicate` | the same normalised text as a seed | {len(seed_dupes)} |" in card
    assert "openai" in card and "fake-model" in card and "red-team --seeds" in card
    assert (out / "nearest_seed_similarity.png").exists()

    # the same command again: every answer from the journal, the same file
    before = (out / "prompts.jsonl").read_bytes()
    asked = len(server.requests)
    again = rlaif(*command)
    assert again.returncode == 0, again.stderr
    assert "labeler calls: 0" in " ".join(again.stdout.split())
    assert len(server.requests) == asked and (out / "prompts.jsonl").read_bytes() == before

    # sl-cai reads the file as prompt data, as it is
    sl = main([
        "generate", "sl-cai", "--prompts", str(out / "prompts.jsonl"), "--limit", "2", "--out",
        str(tmp_path / "sl"), "--labeler", "openai:fake-model", "--labeler-set",
        f"base_url={server.url}", "--max-tokens", "16",
    ])  # fmt: skip
    assert sl == 0
    rows = [json.loads(x) for x in (tmp_path / "sl" / "sl_cai.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [r["id"] for r in kept[:2]]


def test_classify_flag_and_bad_settings(server, tmp_path, capsys):
    out = tmp_path / "rt"
    base = [
        "generate", "red-team", "--seeds", str(SEEDS), "--n", "6", "--out", str(out),
        "--labeler", "openai:fake-model", "--labeler-set", f"base_url={server.url}",
    ]  # fmt: skip
    # the fake server puts P = 0.73 on (A) whatever the question: P(yes) is 0.5 after both
    # orders, so a threshold of 0.6 removes every prompt the classifier sees
    assert main([*base, "--classify", "--classify-threshold", "0.6"]) == 0
    assert not (out / "prompts.jsonl").read_text()
    removed = [json.loads(x) for x in (out / "prompts.removed.jsonl").read_text().splitlines()]
    judged = [r for r in removed if r["removed"]["filter"] == "classifier"]
    assert judged and all(r["p_yes"] == pytest.approx(0.5, abs=1e-3) for r in judged)
    assert f"classifier {len(judged)}" in " ".join(capsys.readouterr().out.split())
    assert main([*base, "--min-chars", "90", "--max-chars", "10"]) == 2
    assert "min_chars must not exceed max_chars" in capsys.readouterr().err
