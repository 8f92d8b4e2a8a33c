"""The reward model's data and loss on toy inputs: the held-out split keeps each prompt on one
side, and soft labels move the reward margin toward logit(p)."""

from __future__ import annotations

import json

import pytest

from rlaif.train import reward

from .conftest import PROMPTS


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
