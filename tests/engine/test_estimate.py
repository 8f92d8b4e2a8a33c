"""``--estimate``: what it counts matches what a run sends; extrapolation, caching and cost."""

from __future__ import annotations

import pytest

from rlaif.cli import main
from rlaif.constitution import load_constitution
from rlaif.engine import estimate as est
from rlaif.engine.budget import Prices
from rlaif.engine.critique_revise import CritiqueRevise
from rlaif.engine.prefs import PrefsConfig
from rlaif.engine.red_team import RedTeamConfig
from rlaif.engine.sl_cai import SLCAIConfig
from rlaif.templates import Templates, prompt_variables

from ..labelers.fake_openai_server import FakeOpenAIServer

pytest.importorskip("openai")
pytest.importorskip("bpe_openai")


def prompts_file(tmp_path, n):
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(f"how do I bake bread number {i} at home" for i in range(n)))
    return path


def test_requests_and_first_stage_tokens_are_those_a_run_sends(tmp_path):
    prompts = prompts_file(tmp_path, 6)
    with FakeOpenAIServer() as server:
        args = ["generate", "sl-cai", "--prompts", str(prompts), "--labeler", "openai:gpt-4o",
                "--labeler-set", f"base_url={server.url}", "--rounds", "2",
                "--max-tokens", "256", "--out", str(tmp_path / "out")]  # fmt: skip
        assert main(args) == 0
        sent = [r["messages"] for r in server.requests]
    cfg = SLCAIConfig(prompts=prompts, labeler="openai:gpt-4o", rounds=2, max_tokens=256)
    got = est.estimate_sl_cai(cfg)
    first, critique, revision = got.lines
    assert got.total("requests") == len(sent) == 6 * (1 + 2 * 2)
    counter = first.role.counter

    def tokens(messages):
        return sum(counter.count([m["content"] for m in messages])) + counter.overhead(
            len(messages)
        )

    answers = [m for m in sent if len(m) == 1 and m[0]["content"].startswith("how do I bake")]
    assert first.rendered and first.requests == len(answers) == 6
    assert first.input_tokens == sum(tokens(m) for m in answers)  # counted as sent
    later = [m for m in sent if m not in answers]
    # later stages quote answers counted at max_tokens: an upper bound of what was sent
    assert critique.input_tokens + revision.input_tokens >= sum(tokens(m) for m in later)
    assert critique.output_tokens == revision.output_tokens == 12 * 256


def test_a_later_request_is_its_static_part_plus_its_varying_parts(tmp_path):
    templates = Templates()
    constitution = load_constitution(SLCAIConfig(prompts=prompts_file(tmp_path, 1)).constitution)
    step = CritiqueRevise(constitution=constitution, templates=templates, policy=None, critic=None)
    role = est.role_of("openai:gpt-4o-mini", {})
    principle = constitution.critique_revision[1]
    examples = step.examples_for(principle)
    static = est.static_part(
        templates, "critique", role,
        {**est._stand_in(), "principle": principle, "examples": examples,
         "response": est.VARYING["response"]},
    )  # fmt: skip
    prompt, response = "Why is the sky blue in the evening?", " word" * 40
    real = templates.render(
        "critique", **prompt_variables(prompt), response=response, principle=principle,
        examples=examples,
    )  # fmt: skip
    counted = sum(role.counter.count([m["content"] for m in real])) + role.counter.overhead(
        len(real)
    )
    parts = static.tokens + role.counter.count([prompt])[0] + 40
    assert abs(counted - parts) <= 3, (counted, parts)
    assert 0 < static.prefix < static.tokens  # the few-shot examples come before the prompt


def long_static_templates(tmp_path):
    folder = tmp_path / "templates"
    folder.mkdir()
    system = "You are a careful critic of answers. " * 300  # far over 1,024 tokens
    (folder / "critique.j2").write_text(
        f"<<<system>>>\n{system}\n<<<user>>>\n"
        "{{ prompt }}\n{{ response }}\n{{ principle.critique_request }}\n"
    )
    return folder


def test_cacheable_prefixes_follow_the_provider_minimum_and_are_written_once_per_principle(
    tmp_path,
):
    cfg = SLCAIConfig(
        prompts=prompts_file(tmp_path, 40), labeler="openai:gpt-4o-mini", rounds=2,
        templates=long_static_templates(tmp_path),
        labeler_settings={"price_input_per_million": 1.0, "price_output_per_million": 1.0},
    )  # fmt: skip
    got = est.estimate_sl_cai(cfg)
    critique = got.lines[1]
    principles = {
        p.id
        for i in range(1, 41)
        for p in CritiqueRevise(
            constitution=load_constitution(cfg.constitution), templates=Templates(),
            policy=None, critic=None, rounds=2,
        ).principles_for(f"line-{i}")
    }  # fmt: skip
    role = critique.role
    prefix = est.static_part(
        Templates(cfg.templates), "critique", role,
        {**est._stand_in(), "principle": load_constitution(cfg.constitution).critique_revision[0],
         "examples": [], "response": est.VARYING["response"]},
    ).prefix  # fmt: skip
    assert prefix >= 1024
    cached = role.cacheable(prefix)
    assert cached % 128 == 0 and prefix - 128 < cached <= prefix  # OpenAI: steps of 128
    assert critique.cacheable_tokens == 80 * cached
    assert critique.cache_write_tokens == len(principles) * cached
    # below the minimum nothing is cacheable
    assert (
        role.cacheable(1000) == 0
        and est.role_of("anthropic:claude-3-5-haiku", {}).cacheable(1500) == 0
    )


def test_anthropic_cacheable_prefix_follows_the_labelers_own_minimum_and_settings():
    """The estimate asks the backend what it would mark: the same per-model minimum as the
    labeler (4,096 tokens for Opus 4.5), ``cache_min_tokens``, and nothing with caching off."""
    assert est.role_of("anthropic:claude-sonnet-4-5", {}).cacheable(3000) == 3000
    assert est.role_of("anthropic:claude-opus-4-5", {}).cacheable(3000) == 0
    assert est.role_of("anthropic:claude-opus-4-5", {}).cacheable(5000) == 5000
    assert (
        est.role_of("anthropic:claude-opus-4-5", {"cache_min_tokens": 2000}).cacheable(3000) == 3000
    )
    assert (
        est.role_of("anthropic:claude-sonnet-4-5", {"prompt_caching": False}).cacheable(3000) == 0
    )
    assert est.role_of("transformers:smollm2", {}).cacheable(300) == 300  # local: no price


def test_cost_prices_cached_reads_and_batch_mode(tmp_path):
    role = est.role_of("openai:gpt-4o-mini", {})
    role.prices = Prices(input=1.0, output=4.0)
    line = est.Line("s", "x", role, requests=10, input_tokens=1_000_000,
                    cacheable_tokens=600_000, cache_write_tokens=60_000,
                    output_tokens=500_000)  # fmt: skip
    assert line.cost() == pytest.approx(1.0 + 2.0)  # no cached price: all input at 1.0
    role.prices = Prices(input=1.0, output=4.0, cached_input=0.1, cache_write=1.25)
    expected = 0.4 + 0.54 * 0.1 + 0.06 * 1.25 + 2.0
    assert line.cost() == pytest.approx(expected)
    text = "\n".join(est.report_lines(est.Estimate([line])))
    assert f"{expected:,.2f}" in text and f"{expected / 2:,.2f}" in text  # batch: half


def test_prefs_counts_pairs_principles_and_orders(tmp_path):
    cfg = PrefsConfig(
        prompts=prompts_file(tmp_path, 3), labeler="openai:gpt-4o-mini", responses=3,
        max_tokens=100, feedback={"principles": 2},
    )  # fmt: skip
    first, judge = est.estimate_prefs(cfg).lines
    assert (first.requests, first.output_tokens) == (3, 3 * 3 * 100)  # one request, n = 3
    assert judge.requests == 3 * 3 * 2 * 2  # 3 pairs a prompt x 2 principles x 2 orders
    assert judge.output_tokens == judge.requests * 4  # an option score: up to 4 tokens
    votes = est.estimate_prefs(cfg.model_copy(update={"labeler": "anthropic:claude-x"}))
    assert votes.lines[1].step == "feedback (votes)"
    assert votes.lines[1].requests == 36 * 8  # Anthropic: one request a vote
    # option scores asked of a labeler without log-probs are answered by its own votes
    forced = cfg.model_copy(
        update={
            "labeler": "anthropic:claude-x",
            "labeler_settings": {"votes": 5, "vote_max_tokens": 3},
            "feedback": cfg.feedback.model_copy(update={"scoring": "logprobs"}),
        }
    )
    judge = est.estimate_prefs(forced).lines[1]
    assert (judge.requests, judge.output_tokens) == (36 * 5, 36 * 5 * 3)


def test_red_team_renders_every_request_and_classifier_doubles_them(tmp_path):
    seeds = prompts_file(tmp_path, 12)
    cfg = RedTeamConfig(prompts=seeds, labeler="openai:gpt-4o-mini", n=30, examples=4)
    (gen,) = est.estimate_red_team(cfg).lines
    assert gen.rendered and gen.requests == 30 and gen.output_tokens == 30 * 64
    assert gen.input_tokens > 30 * 4 * 8  # four seeds of ~9 tokens in every request
    with_classifier = est.estimate_red_team(cfg.model_copy(update={"classify": True}))
    assert with_classifier.lines[1].requests == 60
