"""The reward model and DPO on AI pairs mixed with human pairs: two steps each on a tiny random
Llama, the RM's held-out accuracy per source, and DPO's training counts per source."""

from __future__ import annotations

import json

import pytest

from rlaif.eval.stats import wilson
from rlaif.train import dpo, reward
from rlaif.train.common import load_recipe, read_metrics

from ..conftest import FIXTURES

HH = FIXTURES / "hh_helpful_small.jsonl"
PAIRS = FIXTURES / "human_prefs.jsonl"
TINY = {"max_steps": 2, "per_device_train_batch_size": 2, "use_cpu": True, "report_to": [],
        "bf16": False, "save_strategy": "no"}  # fmt: skip


@pytest.fixture
def ai_prefs(prefs_file):
    """The AI pairs with the provenance ``rlaif generate prefs`` gives every row."""
    rows = [json.loads(x) for x in prefs_file.read_text().splitlines()]
    labeler = {"backend": "fake", "model": "fake-labeler", "temperature": 0.0}
    prefs_file.write_text("".join(json.dumps({**r, "provenance": {"labeler": labeler}}) + "\n"
                                  for r in rows))  # fmt: skip
    return prefs_file


def test_rm_reports_held_out_accuracy_per_source(tiny_llama_dir, ai_prefs, tmp_path, monkeypatch):
    seen = {}
    original = reward.score_pairs

    def spy(trainer, dataset):
        seen.update(trainer=trainer, dataset=dataset)
        return original(trainer, dataset)

    monkeypatch.setattr(reward, "score_pairs", spy)
    mix = [{"path": str(HH), "weight": 1.0}, {"path": str(PAIRS), "weight": 0.5,
                                               "preference_prob": 0.9}]  # fmt: skip
    cfg = load_recipe(reward.RewardRunConfig, None, model=str(tiny_llama_dir),
                      dataset=str(ai_prefs), output_dir=str(tmp_path / "rm"), eval_split=0.34,
                      mix=mix, **TINY)  # fmt: skip
    train, _, _ = reward.prepare_data(cfg)
    # 6 AI prompts: 3 held out (0.34 x 6, rounded up), 3 train; 1.0 x 3 pairs from hh-rlhf,
    # 0.5 x 3 = 1.5 -> 2 from the pairs file
    assert len(train) == 3 + 3 + 2
    human = [p for p in train["preference_prob"] if p >= 0.9]
    assert sorted(human) == [0.9, 0.9, 1.0, 1.0, 1.0]  # AI labels here are 0.6 to 0.85
    out = reward.main(cfg)
    report = json.loads((out / reward.BY_SOURCE_FILE).read_text())
    sources = report["sources"]
    assert list(sources) == ["ai:fake:fake-labeler", "human:hh_helpful_small", "human:human_prefs"]
    expected_n = {"ai:fake:fake-labeler": 3, "human:hh_helpful_small": 5, "human:human_prefs": 3}
    for label, s in sources.items():
        assert s["n"] == s["held_out_pairs"] == expected_n[label], label
        assert s["accuracy"] == s["correct"] / s["n"]
        assert s["ci95"] == list(wilson(s["correct"], s["n"]))
    assert sources["human:human_prefs"]["train_pairs"] == 2
    overall = report["overall"]
    assert overall["n"] == 11 and overall["correct"] == sum(s["correct"] for s in sources.values())
    # the held-out pairs scored are the tokenized ones, each with its source
    assert seen["dataset"]["source"].count("human:hh_helpful_small") == 5
    # scoring reads chosen as chosen: swapping the responses flips every verdict
    swapped = seen["dataset"].rename_columns({"chosen_ids": "rejected_ids",
                                              "rejected_ids": "chosen_ids"})  # fmt: skip
    wins, flipped = original(seen["trainer"], seen["dataset"]), original(seen["trainer"], swapped)
    assert sum(wins) == overall["correct"]
    assert all(a != b for a, b in zip(wins, flipped, strict=True))
    assert any("eval_accuracy" in r for r in read_metrics(out))
    train_cfg = json.loads((out / "rlaif_train.json").read_text())["config"]
    assert train_cfg["mix"] == mix  # the mixed-in data is part of the recorded settings


def test_rm_without_a_held_out_split_still_writes_its_sources(tiny_llama_dir, ai_prefs, tmp_path):
    cfg = load_recipe(reward.RewardRunConfig, None, model=str(tiny_llama_dir),
                      dataset=str(ai_prefs), output_dir=str(tmp_path / "rm"), eval_split=0.0,
                      mix=[str(PAIRS)], **TINY)  # fmt: skip
    out = reward.main(cfg)
    report = json.loads((out / reward.BY_SOURCE_FILE).read_text())
    assert report["overall"] == {"correct": 0, "n": 0, "accuracy": None, "ci95": None}
    assert report["sources"]["human:human_prefs"]["train_pairs"] == 6


def test_dpo_trains_on_the_mix(tiny_llama_dir, ai_prefs, tmp_path, monkeypatch):
    import trl

    given = {}

    class Spy(trl.DPOTrainer):
        def __init__(self, *a, train_dataset=None, **k):
            given["rows"] = train_dataset.to_list()
            super().__init__(*a, train_dataset=train_dataset, **k)

    monkeypatch.setattr(trl, "DPOTrainer", Spy)  # dpo.main imports it when it runs
    cfg = load_recipe(dpo.DPORunConfig, None, model=str(tiny_llama_dir), dataset=str(ai_prefs),
                      output_dir=str(tmp_path / "dpo"), mix=[{"path": str(HH), "weight": 0.5}],
                      **{**TINY, "per_device_train_batch_size": 3})  # fmt: skip
    out = dpo.main(cfg)
    counts = json.loads((out / dpo.TRAIN_BY_SOURCE_FILE).read_text())["sources"]
    assert {k: v["train_pairs"] for k, v in counts.items()} == {
        "ai:fake:fake-labeler": 6, "human:hh_helpful_small": 3}  # fmt: skip
    assert len(given["rows"]) == 9 and set(given["rows"][0]) == {"prompt", "chosen", "rejected"}
    assert all(r["prompt"][-1]["role"] == "user" for r in given["rows"])
    assert [r["step"] for r in read_metrics(out) if "loss" in r] == [1, 2]
