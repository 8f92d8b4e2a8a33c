"""The evaluation judge: its own labeler, recorded and checked for independence; intervals that
say "no measurable change" for identical policies and exclude 0.5 for a judge with a favourite."""

from __future__ import annotations

import json
import re

import pytest

from rlaif.cli import main
from rlaif.eval.independence import LabelerRef, judge_warnings, labeler_identity
from rlaif.eval.policy import PolicyEvalConfig, differences, generate_answers, run_policy_eval

from ..conftest import FIXTURES


def test_identical_policies_win_half_the_time_with_no_measurable_change(
    tiny_llama_dir, tmp_path, capsys
):
    """Two policies with the same weights answer the same greedy text; the judge sees two
    identical answers in both orders: exactly 0.5 each, and every judgement has a value (a judge
    that failed every comparison would give 0.5 by symmetry too, if failures counted as ties)."""
    out = tmp_path / "ev"
    tiny = str(tiny_llama_dir)
    code = main([
        "eval", "policy", "--policy", f"base={tiny}", "--policy", f"same={tiny}",
        "--red-team", str(FIXTURES / "red_team.txt"), "--limit", "3",
        "--benign", str(FIXTURES / "prompts.txt"), "--judge", f"transformers:{tiny}",
        "--trained-by", f"transformers:{tiny}/", "--max-tokens", "4", "--out", str(out),
    ])  # fmt: skip
    assert code == 0
    report = json.loads((out / "policy_eval.json").read_text())
    assert report["red_team"] == 3 and report["benign"] == 2 and report["baseline"] == "base"
    unscored = report["unscored_judgements"]
    assert (unscored["failed"], unscored["unscored"], unscored["warnings"]) == (0, 0, [])
    assert unscored["asked"] == 2 * 3 * 2 + 3 + 2  # yes/no x2 for both, then the two win rates
    same = report["policies"]["same"]
    assert report["policies"]["base"]["harmless_win_rate_vs_base"] is None
    assert same["harmless_win_rate_vs_base"] == 0.5 and same["helpful_win_rate_vs_base"] == 0.5
    assert same["harmless_win_rate_vs_base_unscored"] == 0
    lo, hi = same["harmless_win_rate_vs_base_ci95"]
    assert lo <= 0.5 <= hi and same["harmless_win_rate_vs_base_n"] == 3
    assert same["harmless_win_rate_vs_base_change"] == "no measurable change"
    # the paired differences of identical answers are exactly 0, and said to be no change
    diffs = {d["metric"]: d for d in report["differences"]}
    assert diffs["harmful_compliance_rate"]["ci95"] == [0.0, 0.0]
    assert diffs["harmful_compliance_rate"]["n"] == 3
    assert {d["change"] for d in report["differences"]} == {"no measurable change"}
    # the judge is recorded; it made the training data (spelt with a trailing slash) and it
    # is the policy itself: both are warned about
    judge = report["judge"]
    assert judge["spec"] == f"transformers:{tiny}" and judge["backend"] == "transformers"
    assert judge["model"] == tiny and judge["templates"] == "built-in"
    assert judge["constitution"].endswith("harmless.yaml")
    warnings = report["judge_warnings"]
    assert len(warnings) == 2
    assert "also labelled the training data (--trained-by)" in warnings[0]
    assert "is the model of the evaluated policies 'base', 'same'" in warnings[1]
    printed = " ".join(capsys.readouterr().out.split())
    assert "same: harmless win rate vs base 0.500 (95% CI 0.500 to 0.500, n=3): no measurable" in (
        printed
    )
    assert f"judge: transformers:{tiny} (transformers, model {tiny})" in printed
    assert "warning: the judge" in printed and "also labelled the training data" in printed
    assert "unscored" not in printed
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and set(rows[0]["answers"]) == {"base", "same"}
    assert rows[0]["answers"]["base"]["text"] == rows[0]["answers"]["same"]["text"]


@pytest.fixture
def other_llama_dir(tiny_llama_dir, tmp_path_factory):
    """The tiny Llama with other random weights: a policy whose answers differ."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    path = tmp_path_factory.mktemp("other-llama")
    model = LlamaForCausalLM.from_pretrained(tiny_llama_dir)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(1)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(path)
    return path


OPTIONS = re.compile(r"\(A\) (.*)\n\n\(B\) (.*)\n\nAnswer with", re.S)


def test_a_judge_that_always_prefers_one_policy_excludes_half(
    tiny_llama_dir, other_llama_dir, fake_labeler, tmp_path
):
    cfg = PolicyEvalConfig(
        policies={"base": str(tiny_llama_dir), "other": str(other_llama_dir)},
        red_team=(FIXTURES / "red_team.txt").read_text().splitlines(),
        judge="fake:scripted", max_tokens=4, out=tmp_path / "ev",
    )  # fmt: skip
    from rlaif.engine.cache import Cache

    cache = Cache(tmp_path / "ev" / "cache.sqlite")  # the run reuses these answers
    favourite = {a.strip() for a in generate_answers(cfg.policies["other"], cfg.red_team, cfg,
                                                     cache)}  # fmt: skip
    base = {a.strip() for a in generate_answers(cfg.policies["base"], cfg.red_team, cfg, cache)}
    cache.close()
    assert not favourite & base  # the two policies answer every prompt differently

    def prefers_other(conv, options):
        asked = [m["content"] for m in conv if m["role"] == "user"][-1]  # before the prefill
        m = OPTIONS.search(asked)
        if m is None:  # a yes/no question: no opinion
            return [-1.0, -1.0]
        return [0.0, -6.0] if m.group(1).strip() in favourite else [-6.0, 0.0]

    result = run_policy_eval(cfg, judge=fake_labeler(logprobs=prefers_other, name="scripted"))
    other = result.metrics["other"]
    lo, hi = other["harmless_win_rate_vs_base_ci95"]
    assert 0.5 < lo <= other["harmless_win_rate_vs_base"] <= hi
    assert other["harmless_win_rate_vs_base"] > 0.99 and other["harmless_win_rate_vs_base_n"] == 6
    assert other["harmless_win_rate_vs_base_change"] == "better"
    diff = next(d for d in result.differences if d["metric"] == "harmless_win_rate_vs_base")
    assert diff["change"] == "higher" and diff["ci95"][0] > 0
    assert result.judge["backend"] == "fake" and result.judge["model"] == "scripted"
    assert result.warnings == []  # the judge is neither a policy nor a training labeler


def test_labeler_identity_sees_through_spellings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m").mkdir()
    same = [
        ("smollm2", "transformers:smollm2"),
        ("transformers:m", f"transformers:{tmp_path / 'm'}"),
        ("transformers:m", f"vllm:{tmp_path / 'm'}"),  # the same weights on another engine
        ("transformers:org/name", "transformers:org/name@main"),
        ("openai:gpt-x", "openai:gpt-x"),
    ]
    for a, b in same:
        assert labeler_identity(a) == labeler_identity(b), (a, b)
    differ = [
        ("smollm2", "tiny-random"),
        ("transformers:org/name", "transformers:org/name@v2"),
        ("openai:gpt-x", "openai:gpt-y"),
        ("openai:m", "anthropic:m"),
    ]
    for a, b in differ:
        assert labeler_identity(a) != labeler_identity(b), (a, b)
    # settings name the model too
    assert labeler_identity("transformers", {"model": "m"}) == labeler_identity("transformers:m")


def test_warnings_name_the_role_and_the_policy():
    training = [LabelerRef(role="preference labels", spec="smollm2"),
                LabelerRef(role="SL-CAI critiques", spec="openai:big")]  # fmt: skip
    got = judge_warnings(labeler_identity("transformers:smollm2"), {"base": "smollm2"},
                         training, "transformers:smollm2")  # fmt: skip
    assert len(got) == 2 and "(preference labels)" in got[0] and "'base'" in got[1]
    independent = labeler_identity("openai:judge")
    assert judge_warnings(independent, {"base": "smollm2"}, training, "j") == []


def test_labeler_is_the_old_name_of_judge():
    cfg = PolicyEvalConfig(policies={"a": "x"}, red_team=["p"], labeler="openai:j",
                           labeler_settings={"concurrency": 2})  # fmt: skip
    assert cfg.judge == "openai:j" and cfg.judge_settings == {"concurrency": 2}
    with pytest.raises(ValueError, match="old name of 'judge'"):
        PolicyEvalConfig(policies={"a": "x"}, red_team=["p"], labeler="a", judge="b")


def test_differences_pair_prompts_and_skip_unjudged_ones():
    per = {
        "base": {"harmful": [0.9, 0.9, 0.9, None], "evasive": [0.1] * 4,
                 "harm_win": [None] * 4, "help_win": []},
        "rl": {"harmful": [0.1, 0.1, 0.1, 0.1], "evasive": [0.1] * 4,
               "harm_win": [0.8, 0.9, 0.7, None], "help_win": []},
    }  # fmt: skip
    got = {d["metric"]: d for d in differences(["base", "rl"], per)}
    harmful = got["harmful_compliance_rate"]
    assert harmful["n"] == 3 and harmful["difference"] == -1.0  # the 4th prompt has no pair
    assert harmful["ci95"] == (-1.0, -1.0) and harmful["change"] == "lower"
    assert got["evasive_rate"]["change"] == "no measurable change"
    win = got["harmless_win_rate_vs_base"]
    assert win["n"] == 3 and abs(win["difference"] - 0.3) < 1e-9 and win["change"] == "higher"
    assert "helpful_win_rate_vs_base" not in got  # no benign prompts


def test_a_calibrated_judge_keeps_the_raw_answers_beside(tiny_llama_dir, tmp_path):
    tiny = str(tiny_llama_dir)
    out = tmp_path / "ev"
    code = main([
        "eval", "policy", "--policy", f"base={tiny}", "--policy", f"same={tiny}",
        "--red-team", str(FIXTURES / "red_team.txt"), "--limit", "2",
        "--benign", str(FIXTURES / "prompts.txt"), "--judge", f"transformers:{tiny}",
        "--calibrate", "--max-tokens", "4", "--out", str(out),
    ])  # fmt: skip
    assert code == 0
    report = json.loads((out / "policy_eval.json").read_text())
    assert report["judge"]["calibrate"] is True
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    answer = rows[0]["answers"]["same"]
    assert 0 <= answer["p_harmful_raw"] <= 1 and 0 <= answer["p_harmful"] <= 1
    assert answer["p_harmful"] != answer["p_harmful_raw"]  # the prior was divided out
    assert "p_harmful_raw" not in rows[-1]["answers"]["same"]  # benign rows ask no yes/no


def test_failed_comparisons_are_left_out_counted_and_warned_about(
    tiny_llama_dir, other_llama_dir, fake_labeler, tmp_path, capsys
):
    """A judge whose calls fail for half the red-team prompts: those comparisons are not 0.5
    ties, they are left out of n, counted beside it, and the run warns in capitals."""
    from rlaif.errors import LabelerCallError

    red = (FIXTURES / "red_team.txt").read_text().splitlines()
    cfg = PolicyEvalConfig(
        policies={"base": str(tiny_llama_dir), "other": str(other_llama_dir)},
        red_team=red, judge="fake:scripted", max_tokens=4, out=tmp_path / "ev",
    )  # fmt: skip
    broken = set(red[:3])

    class HalfBroken(fake_labeler):
        max_batch_size = 1

        async def option_logprobs(self, conversations, options):
            text = conversations[0][-2]["content"] if len(conversations[0]) > 1 else ""
            if OPTIONS.search(text) and any(f"Person: {p}\n" in text for p in broken):
                raise LabelerCallError("HTTP 500 from server: boom", 7, True)
            return [[0.0, -6.0] for _ in conversations]  # always the first option

    result = run_policy_eval(cfg, judge=HalfBroken(name="scripted"))
    other = result.metrics["other"]
    assert other["harmless_win_rate_vs_base_n"] == len(red) - 3
    assert other["harmless_win_rate_vs_base_unscored"] == 3
    # the judge always picks the option shown first: 0.5 per comparison, over the scored ones
    assert other["harmless_win_rate_vs_base"] == 0.5
    report = json.loads(result.report.read_text())
    unscored = report["unscored_judgements"]
    assert unscored["failed"] == 3 and unscored["failure_reasons"][0] == (
        "HTTP 500 from server: boom"
    )
    assert any("3 of 6 judgements for harmless win rate vs base" in w for w in unscored["warnings"])
    assert "eval: WARNING: other: 3 of 6 judgements" in capsys.readouterr().out
