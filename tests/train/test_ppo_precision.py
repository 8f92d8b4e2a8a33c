"""PPO's precision and sampling: a bf16 checkpoint trains with fp32 weights under bf16 autocast,
the KL is exactly 0 while the policy is the reference, the sampler ignores the checkpoint's own
generation settings, and a NaN loss stops the run naming its step."""

from __future__ import annotations

import pytest
import torch

from rlaif.train import ppo
from rlaif.train.common import load_recipe, read_metrics

from ..conftest import REPO

TINY_RECIPE = REPO / "recipes" / "train" / "ppo-tiny.yaml"


@pytest.fixture(scope="module")
def bf16_dir(tiny_llama_dir, tmp_path_factory):
    """The tiny random Llama saved in bf16 (its config says dtype bfloat16)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tmp_path_factory.mktemp("tiny-bf16")
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.bfloat16)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(path)
    return path


def sets(**kw):
    return [f"{k}={v}" for k, v in kw.items()]


@pytest.mark.parametrize("saved", ["bf16", "fp32"])
def test_bf16_lr_0_has_zero_kl(saved, bf16_dir, tiny_llama_dir, prompts_file, tmp_path, capsys):
    """With either checkpoint dtype: before, an fp32 reference outside autocast against the
    policy under it gave a KL of 1e-3 at step 1."""
    from safetensors.torch import load_file

    from rlaif.cli import main as cli

    out = tmp_path / "ppo"
    model = bf16_dir if saved == "bf16" else tiny_llama_dir
    args = sets(model=model, prompts=prompts_file, output_dir=out, learning_rate=0, bf16="true",
                steps=2, max_new_tokens=6)  # fmt: skip
    code = cli(["train", "ppo", "--config", str(TINY_RECIPE), *(f"--set={a}" for a in args)])
    assert code == 0
    assert "mixed precision bf16" in capsys.readouterr().out
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:  # old, new and reference log-probs under the same autocast: equal
        assert abs(r["kl"]) < 1e-4 and abs(r["kl_k3"]) < 1e-4
        assert r["approx_kl"] < 1e-8 and r["clipfrac"] == 0.0
    weights = load_file(out / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.float32}


def test_bf16_checkpoint_trains_fp32_weights(bf16_dir, prompts_file, tmp_path):
    """lr 1e-6 moves the weights (in bf16, w + 1e-6 == w for most w); the optimizer's state is
    fp32 and has two groups (no decay on the value head, biases and norms)."""
    from safetensors.torch import load_file

    calls = {"n": 0}

    def stops_at_step_2(prompts, completions, ids):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return torch.tensor([float(i[0] % 5) if i else 0.0 for i in ids])

    cfg = load_recipe(ppo.PPORunConfig, TINY_RECIPE, sets(
        model=bf16_dir, prompts=prompts_file, output_dir=tmp_path / "ppo", learning_rate=1e-6,
        bf16="true", steps=3, max_new_tokens=6))  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        ppo.main(cfg, reward_fn=stops_at_step_2)
    checkpoint = tmp_path / "ppo" / "checkpoint"
    optim = torch.load(checkpoint / "optimizer.pt")
    assert [g["weight_decay"] for g in optim["param_groups"]] == [0.01, 0.0]
    moments = [t for s in optim["state"].values() for k, t in s.items() if k != "step"]
    assert moments and {t.dtype for t in moments} == {torch.float32}
    before = load_file(bf16_dir / "model.safetensors")
    after = load_file(checkpoint / "policy" / "model.safetensors")
    key = "model.layers.0.self_attn.q_proj.weight"
    assert before[key].dtype == torch.bfloat16 and after[key].dtype == torch.float32
    changed = (after[key] != before[key].float()).float().mean().item()
    assert changed > 0.5  # in bf16 almost none would: the update is far below half an ulp
    delta = (after[key] - before[key].float()).abs().max().item()
    assert delta < 1e-5  # one AdamW step of lr 1e-6


def test_nan_loss_stops_the_run_naming_the_step(tiny_llama_dir, prompts_file, tmp_path):
    from rlaif.errors import TrainingDivergedError

    calls = {"n": 0}

    def nan_at_step_2(prompts, completions, ids):
        calls["n"] += 1
        value = float("nan") if calls["n"] == 2 else 1.0
        return torch.full((len(completions),), value)

    cfg = load_recipe(ppo.PPORunConfig, TINY_RECIPE, sets(
        model=tiny_llama_dir, prompts=prompts_file, output_dir=tmp_path / "ppo", steps=3,
        max_new_tokens=4))  # fmt: skip
    with pytest.raises(TrainingDivergedError, match="diverged at step 2: loss/policy"):
        ppo.main(cfg, reward_fn=nan_at_step_2)
    assert [r["step"] for r in read_metrics(tmp_path / "ppo")] == [1]
    assert not (tmp_path / "ppo" / "model.safetensors").exists()  # no model trained on NaNs


def test_rollout_ignores_the_checkpoint_generation_config(bf16_dir):
    """A checkpoint's generation_config (repetition_penalty, no_repeat_ngram_size, min_p) must
    not reach the sampler: the same seed draws the same tokens from a clean and a "poisoned"
    copy of the same weights. Under bf16 autocast the policy's and the reference's log-probs of
    the samples are equal, bit for bit."""
    from types import SimpleNamespace

    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from transformers import AutoTokenizer

    from rlaif.train.ppo_rollout import chat_batch, load_causal_lm, rollout

    AcceleratorState._reset_state()
    accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    tok = AutoTokenizer.from_pretrained(bf16_dir, padding_side="left")
    cfg = SimpleNamespace(max_new_tokens=12, temperature=1.0, top_p=1.0)
    prompts = ["How do I pick a lock?", "Write a poem.", "Hi", "What is 2 + 2?"]
    ref = load_causal_lm(bf16_dir)
    clean = ppo.PolicyWithValue(load_causal_lm(bf16_dir))
    poisoned = ppo.PolicyWithValue(load_causal_lm(bf16_dir))
    gen = poisoned.policy.generation_config
    gen.repetition_penalty, gen.no_repeat_ngram_size, gen.min_p = 50.0, 1, 0.99
    rolls = []
    for model in (clean, poisoned):
        torch.manual_seed(3)
        rolls.append(rollout(accelerator, model, ref, tok, prompts, cfg, tok.eos_token_id))
    assert torch.equal(rolls[0]["completion"], rolls[1]["completion"])
    assert poisoned.policy.generation_config.repetition_penalty == 50.0  # set back after
    for roll in rolls:
        assert torch.equal(roll["logp"], roll["ref_logp"])
    # the old call, settings as keyword arguments: generate() merges the checkpoint's
    # min_p and penalties in, and draws other tokens from the same seed
    enc = chat_batch(tok, prompts, accelerator.device)
    torch.manual_seed(3)
    with accelerator.autocast():
        merged = poisoned.policy.generate(
            **enc, do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=12,
            pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        )  # fmt: skip
    width = enc["input_ids"].size(1)
    assert merged[:, width:].shape == rolls[0]["completion"].shape
    assert not torch.equal(merged[:, width:], rolls[0]["completion"])


def test_dropout_is_off_in_rollout_and_optimisation(tiny_llama_dir, prompts_file, tmp_path):
    """A checkpoint with attention dropout 0.5: at lr 0 the new log-probs of the optimisation
    equal the rollout's old ones (ratio 1, nothing clipped) only when dropout is off in both."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tmp_path / "dropout"
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attention_dropout=0.5)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(path)
    cfg = load_recipe(ppo.PPORunConfig, TINY_RECIPE, sets(
        model=path, prompts=prompts_file, output_dir=tmp_path / "ppo", learning_rate=0,
        max_new_tokens=6))  # fmt: skip
    rows = read_metrics(ppo.main(cfg))
    assert [(r["approx_kl"], r["clipfrac"]) for r in rows] == [(0.0, 0.0), (0.0, 0.0)]
