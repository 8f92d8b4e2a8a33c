"""Current provider models, as a user runs them, against the fake servers in strict mode: every
request body must be one the model accepts (the fake answers 400 otherwise)."""

from __future__ import annotations

import json
import time

import pytest

from rlaif.cli import main
from rlaif.data.provenance import read_rows

from ..labelers.fake_openai_server import FakeOpenAIServer

pytest.importorskip("openai")
pytest.importorskip("anthropic")

RETRY = "retry={max_retries: 1, base_delay: 0.01, max_delay: 0.05, timeout: 5}"
CURRENT = ["anthropic:claude-sonnet-4-5", "anthropic:claude-opus-4-7", "openai:gpt-5"]


def prompts(tmp_path, n=3):
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(f"prompt number {i}" for i in range(n)))
    return path


def labeler(server, spec, *extra):
    url = server.root_url if spec.startswith("anthropic") else server.url
    sets = [f"base_url={url}", RETRY, *extra]
    return ["--labeler", spec, *[x for s in sets for x in ("--labeler-set", s)]]


def policy(server):
    """A policy whose two samples differ (the fake Anthropic's would be equal)."""
    return ["--policy", "openai:policy-model", "--policy-set", f"base_url={server.url}"]


def rows(path):
    return read_rows(path) if path.exists() else []


@pytest.mark.parametrize("spec", CURRENT)
def test_sl_cai_and_prefs_run_on_current_models(spec, tmp_path, caplog):
    with FakeOpenAIServer(strict=True) as server:
        sl = ["generate", "sl-cai", "--prompts", str(prompts(tmp_path)), *labeler(server, spec),
              "--rounds", "1", "--max-tokens", "16", "--out", str(tmp_path / "sl")]  # fmt: skip
        assert main(sl) == 0
        prefs = ["generate", "prefs", "--prompts", str(prompts(tmp_path)),
                 *labeler(server, spec), *policy(server), "--max-tokens", "16",
                 "--out", str(tmp_path / "prefs")]  # fmt: skip
        assert main(prefs) == 0
    assert server.refused == []
    assert len(rows(tmp_path / "sl" / "sl_cai.jsonl")) == 3
    labeled = rows(tmp_path / "prefs" / "preferences.jsonl")
    assert len(labeled) == 3
    asked = [r for r in server.requests if r["model"] == spec.split(":")[1]]
    assert asked
    card = (tmp_path / "prefs" / "README.md").read_text()
    if spec == "anthropic:claude-sonnet-4-5":  # one of temperature and top_p, prefill kept
        assert all("temperature" in r and "top_p" not in r for r in asked)
        assert any(r["messages"][-1]["role"] == "assistant" for r in asked)
    if spec == "anthropic:claude-opus-4-7":  # no sampling settings, no prefill
        assert all("temperature" not in r and "top_p" not in r for r in asked)
        assert all(r["messages"][-1]["role"] == "user" for r in asked)
        moved = [r for r in asked if "Begin your reply with" in r["messages"][-1]["content"]]
        assert moved and moved[-1]["messages"][-1]["content"].endswith(
            'Begin your reply with "The answer is:" and continue from there.'
        )
        assert "not reproducible by rerunning" in card
    if spec == "openai:gpt-5":  # max_completion_tokens, no log-probs: votes, said
        assert all("max_completion_tokens" in r and "max_tokens" not in r for r in asked)
        assert not any(r.get("logprobs") for r in asked)
        assert "votes mode: the labeler gives no log-probs" in card
        assert "not reproducible by rerunning" in card
        for row in labeled:  # the fake names the "#1" response in every vote, in both orders
            assert row["chosen"][0]["content"].endswith("#1")
            assert row["preference_prob"] == 1.0 and row["position_consistent"] is True
            assert row["provenance"]["feedback"]["mode"] == "votes"
        assert "feedback in votes mode: the labeler openai:gpt-5 gives no log-probs" in caplog.text


def test_soft_labels_follow_the_content_in_both_orders(tmp_path):
    """The fake prefers the '#1' response with P = 0.8 in its top log-probs, whatever position it
    is shown in: each order gives P(response a better) = 0.2, so #1 is chosen with 0.8."""
    with FakeOpenAIServer(strict=True) as server:
        args = ["generate", "prefs", "--prompts", str(prompts(tmp_path)),
                *labeler(server, "openai:fake-model"), "--out", str(tmp_path / "out")]  # fmt: skip
        assert main(args) == 0
    got = rows(tmp_path / "out" / "preferences.jsonl")
    assert len(got) == 3
    for row in got:
        assert row["response_b"].endswith("#1") and row["chosen"][0]["content"].endswith("#1")
        assert row["preference_prob"] == pytest.approx(0.8)
        assert [j["order"] for j in row["judgements"]] == ["ab", "ba"]
        assert [j["prob_first"] for j in row["judgements"]] == pytest.approx([0.2, 0.8])
        assert [j["prob_a"] for j in row["judgements"]] == pytest.approx([0.2, 0.2])


def test_an_answer_without_an_option_label_fails_its_row_only(tmp_path, capsys):
    """No option label among the top log-probs for one question: that pair is a failed row with
    the reason, exit 3; the other pairs are written (the same command used to exit 2 on it)."""
    with FakeOpenAIServer() as server:
        server.no_option_if = lambda r: (
            bool(r.get("logprobs")) and "prompt number 1" in json.dumps(r["messages"])
        )
        out = tmp_path / "out"
        args = ["generate", "prefs", "--prompts", str(prompts(tmp_path)),
                *labeler(server, "openai:fake-model"), "--out", str(out)]  # fmt: skip
        assert main(args) == 3
        assert [r["id"] for r in rows(out / "preferences.jsonl")] == ["line-1/0-1", "line-3/0-1"]
        failed = rows(out / "preferences.failed.jsonl")
        assert [r["id"] for r in failed] == ["line-2/0-1"]
        assert failed[0]["failed"]["reason"].startswith("unusable answer: none of the options")
        assert "1 rows failed" in " ".join(capsys.readouterr().out.split())
        # the server answers properly now: the rerun fills exactly that row
        server.no_option_if = None
        assert main(args) == 0
    assert len(rows(out / "preferences.jsonl")) == 3


def test_a_refused_parameter_stops_the_run_in_seconds_with_one_line(tmp_path, capsys):
    """A body the model refuses (here: max_tokens to gpt-5, forced by an override) is a 400
    for every row: the run stops at the first, exit 4, naming the parameter and the message."""
    with FakeOpenAIServer(strict=True) as server:
        args = ["generate", "sl-cai", "--prompts", str(prompts(tmp_path, 40)),
                *labeler(server, "openai:gpt-5", "model_rules={max_tokens_field: max_tokens}"),
                "--out", str(tmp_path / "out")]  # fmt: skip
        started = time.perf_counter()
        assert main(args) == 4
        seconds = time.perf_counter() - started
    err = capsys.readouterr().err
    line = " ".join(err.split())
    assert seconds < 10 and len(server.requests) < 40
    assert "the model refuses 'max_tokens'" in line
    assert "Use 'max_completion_tokens' instead." in line
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("spec", "stop", "flag"),
    [("openai:fake-model", "content_filter", "filtered"),
     ("anthropic:claude-sonnet-4-5", "refusal", "refused")],
)  # fmt: skip
def test_a_refused_or_filtered_revision_is_flagged_not_passed_as_a_stop(spec, stop, flag, tmp_path):
    def stopped(request):  # the revision of the second prompt
        text = request["messages"][-1]["content"]
        return stop if "prompt number 1" in text and "Write only the improved" in text else None

    with FakeOpenAIServer(strict=True) as server:
        server.stop_reason_if = stopped
        out = tmp_path / "sl"
        args = ["generate", "sl-cai", "--prompts", str(prompts(tmp_path)), *labeler(server, spec),
                "--rounds", "1", "--cleanup", "off", "--out", str(out)]  # fmt: skip
        assert main(args) == 0
    got = {r["id"]: r for r in rows(out / "sl_cai.jsonl")}
    assert got["line-2"]["flags"] == [flag] and got["line-2"]["rounds"][0]["flags"] == [flag]
    assert got["line-1"]["flags"] == [] and got["line-3"]["flags"] == []
    assert f"| `{flag}` |" in (out / "README.md").read_text()
