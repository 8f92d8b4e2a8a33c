"""What each model family accepts: the rules table, and the bodies both backends build from it."""

from __future__ import annotations

import pytest

from rlaif.labelers.anthropic import message_body
from rlaif.labelers.base import GenerateParams
from rlaif.labelers.openai import chat_body, score_body
from rlaif.labelers.reliability import refused_parameter
from rlaif.labelers.rules import RulesOverride, rules_for, without_prefill

PARAMS = GenerateParams(temperature=0.0, top_p=0.9, max_tokens=32, seed=3)
CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Which is better?"},
    {"role": "assistant", "content": "The answer is:"},
]


@pytest.mark.parametrize(
    ("provider", "model", "family"),
    [
        ("anthropic", "claude-3-5-sonnet-20241022", "claude"),
        ("anthropic", "claude-sonnet-4-20250514", "claude"),
        ("anthropic", "claude-opus-4-1-20250805", "claude-4.1"),
        ("anthropic", "claude-sonnet-4-5", "claude-4.1"),
        ("anthropic", "claude-haiku-4-5-20251001", "claude-4.1"),
        ("anthropic", "claude-sonnet-4-6", "claude-4.6"),
        ("anthropic", "claude-opus-4-7", "claude-opus-4.7"),
        ("anthropic", "claude-sonnet-5", "claude-5"),
        ("anthropic", "claude-opus-5-20270101", "claude-5"),
        ("openai", "gpt-4o-mini", "default"),
        ("openai", "o3-mini", "openai-o-series"),
        ("openai", "o1", "openai-o-series"),
        ("openai", "gpt-5", "openai-gpt-5"),
        ("openai", "gpt-5-mini-2025-08-07", "openai-gpt-5"),
        ("openai", "HuggingFaceTB/SmolLM2-135M-Instruct", "default"),  # a local vLLM server
        ("openai", "omni-7b", "default"),  # not an o-series id
    ],
)
def test_model_ids_find_their_family(provider, model, family):
    assert rules_for(provider, model).family == family


def test_local_servers_keep_todays_bodies():
    rules = rules_for("openai", "my-local-model")
    assert chat_body("my-local-model", CONV, PARAMS, rules) == {
        "model": "my-local-model",
        "messages": CONV,
        "n": 1,
        "temperature": 0.0,
        "top_p": 0.9,
        "max_tokens": 32,
        "seed": 3,
    }
    assert score_body("m", CONV, 20, rules) == {
        "model": "m",
        "messages": CONV,
        "max_tokens": 4,
        "temperature": 0.0,
        "logprobs": True,
        "top_logprobs": 20,
    }
    body = message_body("claude-3-5-sonnet", CONV, PARAMS, rules_for("anthropic", "claude-3-5"))
    assert body["temperature"] == 0.0 and body["top_p"] == 0.9
    assert body["messages"][-1] == CONV[-1] and body["system"] == "Be brief."


def test_reasoning_models_get_max_completion_tokens_and_no_sampling():
    rules = rules_for("openai", "gpt-5")
    body = chat_body("gpt-5", CONV[:2], PARAMS, rules)
    assert "max_tokens" not in body and "temperature" not in body and "top_p" not in body
    assert body["max_completion_tokens"] == 32 + rules.reasoning_tokens
    assert rules.logprobs is False


def test_claude_bodies_carry_only_what_the_model_takes():
    sonnet45 = message_body(
        "claude-sonnet-4-5", CONV, PARAMS, rules_for("anthropic", "claude-sonnet-4-5")
    )
    assert sonnet45["temperature"] == 0.0 and "top_p" not in sonnet45
    assert sonnet45["messages"][-1]["role"] == "assistant"  # 4.5 still takes a prefill
    opus47 = message_body(
        "claude-opus-4-7", CONV, PARAMS, rules_for("anthropic", "claude-opus-4-7")
    )
    assert "temperature" not in opus47 and "top_p" not in opus47
    assert [m["role"] for m in opus47["messages"]] == ["user"] and opus47["system"] == "Be brief."
    assert opus47["messages"][0]["content"] == (
        'Which is better?\n\nBegin your reply with "The answer is:" and continue from there.'
    )


def test_a_prefill_with_no_turn_before_it_becomes_a_turn_of_its_own():
    rules = rules_for("anthropic", "claude-sonnet-5")
    moved = without_prefill(rules, [CONV[0], CONV[2]])
    assert [m["role"] for m in moved] == ["system", "user"]
    assert moved[1]["content"] == 'Begin your reply with "The answer is:" and continue from there.'


def test_a_run_overrides_the_rules():
    rules = rules_for("anthropic", "claude-opus-4-7", RulesOverride(temperature=True))
    assert rules.temperature and not rules.prefill and rules.family == "claude-opus-4.7+override"
    assert rules_for("openai", "gpt-5", RulesOverride(logprobs=True)).logprobs


def test_provenance_says_what_is_refused_and_that_the_run_is_not_reproducible():
    from rlaif.labelers.rules import ModelRules, provenance_of

    assert provenance_of(ModelRules()) == {}
    said = provenance_of(rules_for("anthropic", "claude-opus-4-7"))
    assert said["model_rules"] == {
        "family": "claude-opus-4.7",
        "refused": ["temperature", "top_p", "prefill", "seed"],
    }
    assert "greedy decoding (temperature 0) cannot be asked for" in said["not_reproducible"]
    # any Claude: no seed in the API, so sampled answers cannot be reproduced
    sonnet = provenance_of(rules_for("anthropic", "claude-sonnet-4-6"))
    assert sonnet["not_reproducible"].startswith("the API (claude-4.6) takes no seed")
    assert "not_reproducible" not in provenance_of(rules_for("openai", "gpt-4o"))


@pytest.mark.parametrize(
    ("body", "refused"),
    [
        ({"message": "Unsupported parameter: 'max_tokens' is not supported with this model.",
          "param": "max_tokens", "code": "unsupported_parameter"}, "max_tokens"),
        ({"type": "error", "error": {"type": "invalid_request_error", "message":
          "`temperature` and `top_p` cannot both be specified for this model."}}, "temperature"),
        ({"type": "error", "error": {"type": "invalid_request_error", "message":
          "This model does not support assistant message prefill."}}, "prefill"),
        # about the row, not the request: a prompt too long fails its row only
        ({"message": "This model's maximum context length is 8192 tokens.", "param": "messages",
          "code": "context_length_exceeded"}, None),
        ({"message": "bad request"}, None),
    ],
)  # fmt: skip
def test_a_400_names_the_refused_parameter(body, refused):
    assert refused_parameter(400, body, "") == refused
    assert refused_parameter(500, body, "") is None
