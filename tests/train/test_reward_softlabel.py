"""The reward model's data and loss on toy inputs: the held-out split keeps each prompt on one
side, and soft labels move the reward margin toward logit(p)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rlaif.train import reward
from rlaif.train.common import load_recipe

from .conftest import PROMPTS

SOFT_LOSS = reward.soft_bradley_terry_loss


def _pairs(path, k, with_ids=True, prompt_ids=False):
    rows = []
    for n, p in enumerate(PROMPTS):
        for i in range(k):
            for j in range(i + 1, k):
                row = {
                    "prompt": [{"role": "user", "content": p}],
                    "chosen": [{"role": "assistant", "content": f"answer {i} to {p}"}],
                    "rejected": [{"role": "assistant", "content": f"answer {j} to {p}"}],
                    "preference_prob": 0.7,
                }
                if with_ids:
                    row["id"] = f"r{n}/{i}-{j}"
                if prompt_ids:
                    row["prompt_id"] = f"r{n}"
                rows.append(row)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _prompts(ds):
    return {r["prompt"][0]["content"] for r in ds}


@pytest.mark.parametrize("with_ids,prompt_ids", [(True, False), (True, True), (False, False)])
def test_held_out_split_keeps_each_prompt_on_one_side(tmp_path, with_ids, prompt_ids):
    # K = 3 responses per prompt: three pairs share each prompt
    data = _pairs(tmp_path / "prefs.jsonl", 3, with_ids, prompt_ids)
    for seed in range(5):
        cfg = reward.RewardRunConfig(
            dataset=str(data),
            eval_split=0.34,
            seed=seed,
            output_dir=str(tmp_path / "rm"),
            use_cpu=True,
            bf16=False,
            report_to=[],
        )
        train, held_out = reward.split_dataset(cfg)
        assert len(train) + len(held_out) == 18
        assert not _prompts(train) & _prompts(held_out), seed
        assert len(_prompts(held_out)) == 3  # ceil(0.34 * 6) prompts, all three pairs each
        assert len(held_out) == 9
        assert set(train.column_names) == {"prompt", "chosen", "rejected", "preference_prob"}


def _margins_while_training(tiny_llama_dir, tmp_path, monkeypatch, p):
    """Train the RM on one pair repeated, every label ``p``; the mean r_c - r_r the loss saw at
    each step (the first is before any update)."""
    data = tmp_path / f"p{p}.jsonl"
    row = {
        "id": "r0/0-1",
        "prompt": [{"role": "user", "content": "How do I pick a lock?"}],
        "chosen": [{"role": "assistant", "content": "Call a locksmith."}],
        "rejected": [{"role": "assistant", "content": "Rake the pins with a wrench."}],
        "preference_prob": p,
    }
    data.write_text((json.dumps(row) + "\n") * 4)
    margins = []

    def spy(chosen, rejected, prob):
        assert prob.tolist() == pytest.approx([p] * len(prob))
        margins.append((chosen - rejected).mean().item())
        return SOFT_LOSS(chosen, rejected, prob)

    monkeypatch.setattr(reward, "soft_bradley_terry_loss", spy)
    cfg = load_recipe(
        reward.RewardRunConfig, None, model=str(tiny_llama_dir), dataset=str(data),
        output_dir=str(tmp_path / f"rm{p}"), max_steps=6, per_device_train_batch_size=2,
        learning_rate=5e-4, warmup_steps=0, lr_scheduler_type="constant", eval_split=0.0,
        use_cpu=True, report_to=[], bf16=False, save_strategy="no",
    )  # fmt: skip
    torch.manual_seed(0)  # the fresh scalar head: the same start for every p
    reward.main(cfg)
    return margins


def test_soft_labels_move_the_margin_toward_logit_p(tiny_llama_dir, tmp_path, monkeypatch):
    # the soft Bradley-Terry loss is minimised at sigma(d) = p, i.e. d = logit(p): a label of
    # 0.8 (logit 1.386) and one of 0.3 (logit -0.847) pull the same starting margin apart
    moved = {}
    for p in (0.8, 0.3):
        margins = _margins_while_training(tiny_llama_dir, tmp_path, monkeypatch, p)
        assert len(margins) == 6
        target = math.log(p / (1 - p))
        first, last = margins[0], margins[-1]
        assert abs(last - target) < abs(first - target), (p, margins)
        moved[p] = (first, last)
    assert moved[0.8][0] == pytest.approx(moved[0.3][0], abs=1e-5)  # same model, same start
    assert moved[0.8][1] > moved[0.8][0] + 0.1  # pulled up toward 1.386
    assert moved[0.3][1] < moved[0.3][0] - 0.1  # pulled down toward -0.847
