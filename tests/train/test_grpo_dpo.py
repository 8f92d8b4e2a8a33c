"""GRPO, RLOO, DPO and online DPO through TRL: two steps each on a tiny random Llama."""

from __future__ import annotations

import json

import pytest

from rlaif.train import dpo, grpo
from rlaif.train.common import load_recipe, read_metrics

COMMON = {"max_steps": 2, "use_cpu": True, "report_to": [], "bf16": False}


@pytest.fixture(scope="module")
def tiny_rm(tiny_llama_dir, tmp_path_factory):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = tmp_path_factory.mktemp("rm")
    AutoModelForSequenceClassification.from_pretrained(
        tiny_llama_dir, num_labels=1
    ).save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(path)
    return path


def group(tiny_llama_dir, prompts_file, out, **kw):
    return {"model": str(tiny_llama_dir), "prompts": str(prompts_file), "output_dir": str(out),
            "per_device_train_batch_size": 4, "num_generations": 2, "max_completion_length": 4,
            **COMMON, **kw}  # fmt: skip


def test_grpo_with_rm_and_constitution_reward(tiny_llama_dir, tiny_rm, prompts_file, tmp_path):
    cfg = load_recipe(
        grpo.GRPORunConfig, None,
        **group(tiny_llama_dir, prompts_file, tmp_path / "grpo", reward_model=str(tiny_rm),
                constitution_reward=True, labeler=f"transformers:{tiny_llama_dir}"),
    )  # fmt: skip
    assert cfg.beta == 0.04  # a KL penalty by default
    out = grpo.main(cfg)
    rows = [r for r in read_metrics(out) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2]
    # both reward functions were called and logged (the RM and the d-RLAIF scorer)
    logged = set().union(*rows)
    assert any("constitution_score" in k for k in logged)
    assert any(k.startswith("rewards/") and "constitution" not in k for k in logged)
    assert (out / "model.safetensors").is_file()


def test_rloo_with_rm(tiny_llama_dir, tiny_rm, prompts_file, tmp_path):
    cfg = load_recipe(
        grpo.RLOORunConfig, None,
        **group(tiny_llama_dir, prompts_file, tmp_path / "rloo", reward_model=str(tiny_rm)),
    )  # fmt: skip
    out = grpo.main_rloo(cfg)
    assert [r["step"] for r in read_metrics(out) if "loss" in r] == [1, 2]


def test_grpo_needs_a_reward(tiny_llama_dir, prompts_file, tmp_path):
    from rlaif.errors import ConfigError

    cfg = load_recipe(
        grpo.GRPORunConfig, None,
        **group(tiny_llama_dir, prompts_file, tmp_path / "g", reward_model=None),
    )  # fmt: skip
    with pytest.raises(ConfigError, match="reward_model and/or constitution_reward"):
        grpo.main(cfg)


def test_dpo_on_preferences(tiny_llama_dir, prefs_file, tmp_path):
    cfg = load_recipe(
        dpo.DPORunConfig, None, model=str(tiny_llama_dir), dataset=str(prefs_file),
        output_dir=str(tmp_path / "dpo"), per_device_train_batch_size=3, **COMMON,
    )  # fmt: skip
    out = dpo.main(cfg)
    rows = [r for r in read_metrics(out) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2] and all(r["loss"] > 0 for r in rows)
    assert (out / "loss.png").is_file()


def test_dpo_on_a_bf16_checkpoint_starts_at_the_reference(tiny_llama_dir, prefs_file, tmp_path):
    """bf16 autocast, fp32 policy: the reference is built like the policy and runs under the same
    autocast, so before the first update the policy's log-probs equal the reference's exactly."""
    import math

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    bf16_dir = tmp_path / "bf16"
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.bfloat16)
    model.save_pretrained(bf16_dir)
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(bf16_dir)
    cfg = load_recipe(
        dpo.DPORunConfig, None, model=str(bf16_dir), dataset=str(prefs_file),
        output_dir=str(tmp_path / "dpo"), per_device_train_batch_size=3,
        **{**COMMON, "max_steps": 1, "bf16": True},
    )  # fmt: skip
    out = dpo.main(cfg)
    (row,) = [r for r in read_metrics(out) if "loss" in r]
    assert row["rewards/chosen"] == 0.0 and row["rewards/rejected"] == 0.0
    assert row["loss"] == pytest.approx(math.log(2), abs=1e-6)  # -log sigma(0)
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}  # noqa: SIM118


class ScriptedJudge:
    """Prefers the longer completion; records what it was asked."""

    def __init__(self):
        self.calls = []

    def judge(self, prompts, pairs):
        self.calls.append((list(prompts), list(pairs)))
        return [0.9 if len(str(a)) >= len(str(b)) else 0.1 for a, b in pairs]


def test_judge_reward_pairs_first_and_second_halves():
    judge = ScriptedJudge()
    rewards = dpo.JudgeReward(judge)(["p", "q", "p", "q"], ["long one", "a", "b", "longer"])
    assert judge.calls == [(["p", "q"], [("long one", "b"), ("a", "longer")])]
    assert rewards == pytest.approx([0.9, 0.1, 0.1, 0.9])
    with pytest.raises(ValueError):
        dpo.JudgeReward(judge)(["p"], ["a"])


def test_online_dpo_with_a_judge(tiny_llama_dir, prompts_file, tmp_path):
    judge = ScriptedJudge()
    cfg = load_recipe(
        dpo.OnlineDPORunConfig, None, model=str(tiny_llama_dir), prompts=str(prompts_file),
        output_dir=str(tmp_path / "odpo"), per_device_train_batch_size=2, max_new_tokens=4,
        **COMMON,
    )  # fmt: skip
    out = dpo.main_online(cfg, judge=judge)
    assert len(judge.calls) == 2  # one judged batch per step
    assert [r["step"] for r in read_metrics(out) if "loss" in r] == [1, 2]


def test_grpo_prompts_keep_a_conversation_as_its_messages(tmp_path):
    from types import SimpleNamespace

    from rlaif.train.grpo import prompt_dataset

    conversation = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Lockpicks?"},
    ]
    path = tmp_path / "p.jsonl"
    path.write_text(
        json.dumps({"prompt": conversation}) + "\n" + json.dumps({"prompt": "One turn?"}) + "\n"
    )
    cfg = SimpleNamespace(prompts=str(path), prompt_format="auto", prompt_field="prompt",
                          prompt_limit=None)  # fmt: skip
    ds = prompt_dataset(cfg)
    assert ds["prompt"] == [conversation, [{"role": "user", "content": "One turn?"}]]
