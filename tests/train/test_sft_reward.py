"""SFT and the soft-label reward model: two steps each on a tiny random Llama."""

from __future__ import annotations

import json

import pytest
import torch

from rlaif.train import reward, sft
from rlaif.train.common import load_recipe, read_metrics


def common(tmp_path, name):
    return {"output_dir": str(tmp_path / name), "max_steps": 2, "per_device_train_batch_size": 2,
            "use_cpu": True, "report_to": [], "bf16": False}  # fmt: skip


def test_sft_two_steps_writes_model_metrics_and_plots(tiny_llama_dir, sl_cai_file, tmp_path):
    cfg = load_recipe(
        sft.SFTRunConfig, None, model=str(tiny_llama_dir), dataset=str(sl_cai_file),
        **common(tmp_path, "sft"),
    )  # fmt: skip
    out = sft.main(cfg)
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    rows = read_metrics(out)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    assert all(r["loss"] > 0 for r in rows if "loss" in r)
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "rlaif_train.json").read_text())["trainer"] == "sft"


def test_sft_with_lora_and_mixed_data(tiny_llama_dir, sl_cai_file, tmp_path):
    pytest.importorskip("peft")
    cfg = load_recipe(
        sft.SFTRunConfig, None, model=str(tiny_llama_dir), dataset=str(sl_cai_file),
        mix_dataset=str(sl_cai_file), mix_ratio=0.5, lora=True, lora_r=4,
        **common(tmp_path, "lora"),
    )  # fmt: skip
    assert len(sft.build_dataset(cfg)) == 6 + 3
    out = sft.main(cfg)
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(out)  # a plain model, adapters merged
    assert not any("lora" in n for n, _ in merged.named_parameters())


def test_soft_label_loss_equals_bce_with_logits():
    # a worked example: d = 1.5 - 0.5 = 1, p = 0.8
    chosen, rejected, p = torch.tensor([1.5]), torch.tensor([0.5]), torch.tensor([0.8])
    loss = reward.soft_bradley_terry_loss(chosen, rejected, p)
    by_hand = -(0.8 * torch.log(torch.sigmoid(torch.tensor(1.0)))
                + 0.2 * torch.log(1 - torch.sigmoid(torch.tensor(1.0))))  # fmt: skip
    assert loss.item() == pytest.approx(by_hand.item(), abs=1e-6)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(chosen - rejected, p)
    assert loss.item() == pytest.approx(bce.item(), abs=1e-6)
    assert loss.item() == pytest.approx(0.5132617, abs=1e-6)
    # p = 1 is TRL's hard Bradley-Terry loss
    hard = reward.soft_bradley_terry_loss(chosen, rejected, torch.tensor([1.0]))
    assert hard.item() == pytest.approx(-torch.nn.functional.logsigmoid(torch.tensor(1.0)).item())
    # p = 0.5 is minimised by equal rewards
    x = torch.tensor([0.3], requires_grad=True)
    reward.soft_bradley_terry_loss(x, torch.tensor([0.0]), torch.tensor([0.5])).backward()
    assert x.grad.item() > 0  # pushes the gap back towards zero


def test_reward_model_trains_on_soft_labels(tiny_llama_dir, prefs_file, tmp_path, monkeypatch):
    seen = []
    original = reward.soft_bradley_terry_loss

    def spy(chosen, rejected, prob):
        seen.append(prob.tolist())
        return original(chosen, rejected, prob)

    monkeypatch.setattr(reward, "soft_bradley_terry_loss", spy)
    cfg = load_recipe(
        reward.RewardRunConfig, None, model=str(tiny_llama_dir), dataset=str(prefs_file),
        eval_split=0.34, **common(tmp_path, "rm"),
    )  # fmt: skip
    out = reward.main(cfg)
    labels = {round(0.6 + 0.05 * i, 4) for i in range(6)}
    assert seen and all(round(p, 4) in labels for batch in seen for p in batch)
    rows = read_metrics(out)
    assert any("eval_accuracy" in r for r in rows)  # pairwise accuracy on the held-out split
    from transformers import AutoModelForSequenceClassification

    rm = AutoModelForSequenceClassification.from_pretrained(out)
    assert rm.config.num_labels == 1


def test_recipe_typo_names_the_line(tmp_path):
    from rlaif.errors import ConfigError, ConfigFileError

    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: smollm2\nlearning_rat: 1e-5\n")
    with pytest.raises(ConfigFileError, match=r"r.yaml:2: unknown key 'learning_rat' \(did you"):
        load_recipe(sft.SFTRunConfig, recipe)
    with pytest.raises(ConfigError, match="--set unknown key 'max_step'"):
        load_recipe(sft.SFTRunConfig, None, ["max_step=3"])
    cfg = load_recipe(sft.SFTRunConfig, None, ["max_steps=3", "learning_rate=0.001"])
    assert cfg.max_steps == 3 and cfg.learning_rate == 0.001
    assert cfg.bf16 is False  # no GPU here: fp32


def test_reward_model_with_lora_keeps_its_trained_head(
    tiny_llama_dir, prefs_file, tmp_path, monkeypatch
):
    """The merge loads a fresh base (whose scalar head is random) and the adapter: the head the
    run trained must be the one written."""
    pytest.importorskip("peft")
    trained = {}
    original = reward.finish_training

    def spy(trainer, *args):
        out = original(trainer, *args)
        trained.update({n: p.detach().clone() for n, p in trainer.model.named_parameters()})
        return out

    monkeypatch.setattr(reward, "finish_training", spy)
    cfg = load_recipe(
        reward.RewardRunConfig, None, model=str(tiny_llama_dir), dataset=str(prefs_file),
        eval_split=0, lora=True, lora_r=4, learning_rate=1e-2, **common(tmp_path, "rm-lora"),
    )  # fmt: skip
    out = reward.main(cfg)
    from transformers import AutoModelForSequenceClassification

    rm = AutoModelForSequenceClassification.from_pretrained(out)
    head = trained["base_model.model.score.modules_to_save.default.weight"]
    assert not torch.equal(head, trained["base_model.model.score.original_module.weight"])
    assert torch.equal(rm.score.weight, head)
    assert not (out / "adapter").exists() and not any("lora" in n for n, _ in rm.named_parameters())
