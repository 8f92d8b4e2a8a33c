"""Our PPO: the pieces by hand, and a toy task with a known reward (reward up, KL bounded)."""

from __future__ import annotations

import pytest
import torch

from rlaif.train import ppo
from rlaif.train.common import load_recipe, read_metrics


def test_gae_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.5, 0.5]])
    mask = torch.ones(1, 3)
    adv, ret = ppo.gae(rewards, values, mask, gamma=1.0, lam=1.0)
    # lambda = 1, gamma = 1: advantage = total future reward - value
    assert adv[0].tolist() == pytest.approx([0.5, 0.5, 0.5])
    assert ret[0].tolist() == pytest.approx([1.0, 1.0, 1.0])
    # a padded last token contributes nothing
    adv, _ = ppo.gae(rewards, values, torch.tensor([[1.0, 1.0, 0.0]]), 1.0, 1.0)
    assert adv[0, 2] == 0 and adv[0, 1] == pytest.approx(-0.5)


def test_clipped_surrogate():
    old = torch.zeros(1, 2)
    new = torch.log(torch.tensor([[1.5, 0.5]]))  # ratios 1.5 and 0.5
    adv = torch.tensor([[1.0, -1.0]])
    zeros = torch.zeros(1, 2)
    pg, vf, stats = ppo.ppo_losses(new, old, adv, zeros, zeros, zeros, torch.ones(1, 2), 0.2, 0.2)
    # token 1: max(-1.5, -1.2) = -1.2; token 2: max(0.5, 0.8) = 0.8
    assert pg.item() == pytest.approx((-1.2 + 0.8) / 2)
    assert vf.item() == 0 and stats["clipfrac"] == 1.0


def test_adaptive_kl_controller():
    ctl = ppo.AdaptiveKL(0.1, target=6.0, horizon=100)
    ctl.update(kl=12.0, n_samples=10)  # error clipped to +0.2
    assert ctl.beta == pytest.approx(0.1 * 1.02)
    ctl.update(kl=0.0, n_samples=10)
    assert ctl.beta == pytest.approx(0.1 * 1.02 * 0.98)


def starts_with_i(prompts, completions, ids):
    """Toy reward with a known optimum (1.0): the completion starts with "I"."""
    return torch.tensor([1.0 if c.lstrip().startswith("I") else 0.0 for c in completions])


@pytest.fixture(scope="module")
def toy_policy(tiny_llama_dir, tmp_path_factory):
    """The tiny random Llama after a few SFT steps on answers that start with "I" or "Sure":
    a policy that puts some, not all, of its mass on "I" first."""
    import json

    from rlaif.train import sft

    from .conftest import PROMPTS

    tmp = tmp_path_factory.mktemp("toy")
    rows = [
        {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a}]}
        for p in PROMPTS
        for a in ("I can't help with that.", "Sure, here it is.")
    ]
    data = tmp / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_recipe(
        sft.SFTRunConfig, None, model=str(tiny_llama_dir), dataset=str(data),
        output_dir=str(tmp / "sft"), max_steps=40, per_device_train_batch_size=12,
        learning_rate=5e-3, lr_scheduler_type="constant", use_cpu=True, report_to=[],
    )  # fmt: skip
    return sft.main(cfg)


def train(policy, prompts_file, out, **kw):
    settings = {"model": str(policy), "reward_model": None, "prompts": str(prompts_file),
                "output_dir": str(out), "steps": 12, "batch_size": 16, "mini_batch_size": 8,
                "ppo_epochs": 2, "learning_rate": 5e-4, "max_new_tokens": 3, "use_cpu": True,
                "seed": 1, **kw}  # fmt: skip
    cfg = load_recipe(ppo.PPORunConfig, None, **settings)
    out = ppo.main(cfg, reward_fn=starts_with_i)
    return out, read_metrics(out)


def mean(rows, key, part):
    values = [r[key] for r in rows]
    k = len(values) // 3
    return sum(values[:k]) / k if part == "first" else sum(values[-k:]) / k


def test_toy_task_reward_rises_and_kl_stays_bounded(toy_policy, prompts_file, tmp_path):
    out, rows = train(toy_policy, prompts_file, tmp_path / "ppo", kl_coef=0.02)
    assert len(rows) == 12
    assert mean(rows, "reward", "last") > mean(rows, "reward", "first") + 0.15
    assert max(r["kl"] for r in rows) < 10.0  # nats over a 3-token completion
    assert (out / "model.safetensors").is_file() and (out / "value_head.pt").is_file()
    assert (out / "reward.png").is_file() and (out / "kl.png").is_file()

    _, held = train(toy_policy, prompts_file, tmp_path / "held", kl_coef=50.0)
    # a huge beta holds the policy near the SFT reference: small KL, no reward hacking
    assert mean(held, "kl", "last") < 1.0
    assert mean(held, "kl", "last") < mean(rows, "kl", "last")
    assert mean(held, "reward", "last") < mean(rows, "reward", "last")


def test_rm_reward_path_two_steps(toy_policy, tiny_llama_dir, prompts_file, tmp_path):
    """PPO scored by a reward model (a tiny sequence classifier), with the adaptive KL
    controller and the rule-based penalties on."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rm_dir = tmp_path / "rm"
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_llama_dir, num_labels=1)
    rm.save_pretrained(rm_dir)
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(rm_dir)
    cfg = load_recipe(
        ppo.PPORunConfig, None, model=str(toy_policy), reward_model=str(rm_dir),
        prompts=str(prompts_file), output_dir=str(tmp_path / "ppo"), steps=2, batch_size=4,
        mini_batch_size=2, max_new_tokens=4, use_cpu=True, adaptive_kl=True, target_kl=0.01,
        kl_horizon=10, missing_eos_penalty=1.0,
    )  # fmt: skip
    out = ppo.main(cfg)
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    # the controller's beta after each step, from the KL it saw: Ziegler et al.'s formula
    beta = 0.05  # kl_coef
    for r in rows:
        error = max(min(r["kl"] / 0.01 - 1.0, 0.2), -0.2)
        beta *= 1.0 + error * 4 / 10  # batch_size / kl_horizon
        assert r["beta"] == pytest.approx(beta, rel=1e-9)


def test_penalties_on_a_fixed_batch_by_hand(tmp_path):
    cfg = load_recipe(
        ppo.PPORunConfig, None, output_dir=str(tmp_path), missing_eos_penalty=1.0,
        length_penalty=0.1, repetition_penalty=2.0,
    )  # fmt: skip
    scores = torch.tensor([1.0, 0.5, 0.0])
    ended = torch.tensor([True, False, False])
    lengths = torch.tensor([3.0, 4.0, 4.0])
    # the third text's 3-grams: abc, bca, cab, abc: a repeated-3-gram share of 0.5, x 2.0
    texts = ["one two three", "four five six seven", "a b c a b c"]
    got = ppo.shaped_scores(scores, ended, lengths, texts, cfg)
    # ended: -0.1 x 3 tokens; never ended: -1.0 and -0.1 x 4 tokens; and the repetition's 1.0
    assert got.tolist() == pytest.approx([0.7, 0.5 - 1.0 - 0.4, 0.0 - 1.0 - 0.4 - 1.0])


def test_bad_settings(tmp_path):
    from rlaif.errors import ConfigError

    with pytest.raises(ConfigError, match="multiple of mini_batch_size"):
        load_recipe(ppo.PPORunConfig, None, ["batch_size=6", "mini_batch_size=4"])


def test_kill_then_rerun_resumes_from_the_checkpoint(toy_policy, prompts_file, tmp_path):
    calls = {"n": 0}

    def dies_at_step_3(prompts, completions, ids):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # what Ctrl-C (or a kill) does mid-run
        return starts_with_i(prompts, completions, ids)

    settings = {"model": str(toy_policy), "reward_model": None, "prompts": str(prompts_file),
                "output_dir": str(tmp_path / "ppo"), "steps": 4, "batch_size": 4,
                "mini_batch_size": 2, "max_new_tokens": 3, "use_cpu": True,
                "save_steps": 1}  # fmt: skip
    cfg = load_recipe(ppo.PPORunConfig, None, **settings)
    with pytest.raises(KeyboardInterrupt):
        ppo.main(cfg, reward_fn=dies_at_step_3)
    assert [r["step"] for r in read_metrics(tmp_path / "ppo")] == [1, 2]
    assert (tmp_path / "ppo" / "checkpoint" / "state.json").is_file()
    calls["n"] = 10  # the rerun survives
    out = ppo.main(cfg, reward_fn=dies_at_step_3)
    assert calls["n"] == 12  # only steps 3 and 4 ran again
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3, 4]
    assert not (out / "checkpoint").exists() and (out / "model.safetensors").is_file()


def test_monitors_are_logged_and_warn(toy_policy, prompts_file, tmp_path):
    out, rows = train(toy_policy, prompts_file, tmp_path / "m", steps=2, warn_kl=-1.0,
                      repetition_penalty=0.5)  # fmt: skip
    assert all("monitor/distinct_2" in r and "monitor/length_ratio" in r for r in rows)
    warnings = (out / "warnings.jsonl").read_text()
    assert "KL to the SFT policy" in warnings  # every step is past a threshold of -1
    assert (out / "monitors.png").is_file()


def test_a_failed_run_closes_the_vllm_engine_it_started(
    tiny_llama_dir, prompts_file, tmp_path, monkeypatch
):
    """The engine ``rollout_engine: vllm`` starts is shut down when the run fails too, not left
    to the interpreter's exit."""
    closed = []

    class Engine:
        def close(self):
            closed.append(True)

    def rollout_fails(*args, **kwargs):
        raise RuntimeError("rollout failed")

    monkeypatch.setattr(ppo.VLLMSampler, "start", classmethod(lambda cls, *a, **k: Engine()))
    monkeypatch.setattr(ppo, "rollout", rollout_fails)
    cfg = load_recipe(
        ppo.PPORunConfig, None, model=str(tiny_llama_dir), reward_model=None,
        prompts=str(prompts_file), output_dir=str(tmp_path / "ppo"), steps=2, batch_size=2,
        mini_batch_size=2, max_new_tokens=4, use_cpu=True, rollout_engine="vllm",
    )  # fmt: skip
    with pytest.raises(RuntimeError, match="rollout failed"):
        ppo.main(cfg, reward_fn=lambda p, c, ids: torch.zeros(len(c)))
    assert closed == [True]
