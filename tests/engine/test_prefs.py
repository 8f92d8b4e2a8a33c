"""The RL-CAI preference job end to end on a tiny random Llama, and TRL's trainers on its file."""

from __future__ import annotations

import asyncio

import pytest

from rlaif.constitution import load_constitution
from rlaif.data.provenance import read_rows
from rlaif.engine.cache import Cache
from rlaif.engine.feedback import Feedback, FeedbackSettings
from rlaif.engine.prefs import PrefsConfig, PrefsJob, pair_rows, run_prefs
from rlaif.engine.scheduler import Scheduler
from rlaif.labelers.base import GenerateParams
from rlaif.templates import Templates

from ..conftest import FIXTURES, REPO


def config(tiny_llama_dir, out, **kw):
    settings = {
        "prompts": FIXTURES / "hh_small.jsonl.gz",
        "labeler": f"transformers:{tiny_llama_dir}",
        "responses": 3,
        "max_tokens": 8,
        "out": out,
    }
    return PrefsConfig(**{**settings, **kw})


def run(cfg):
    return asyncio.run(run_prefs(cfg, "rlaif generate prefs ..."))


def test_pairs_soft_labels_card_and_rerun(tiny_llama_dir, tmp_path):
    first = run(config(tiny_llama_dir, tmp_path / "out"))
    rows = read_rows(first.dataset)
    assert [r["id"] for r in rows] == [
        f"{p}/{i}-{j}" for p in ("row-1", "row-2", "row-3") for i, j in ((0, 1), (0, 2), (1, 2))
    ]
    for r in rows:
        assert 0.5 <= r["preference_prob"] <= 1.0
        assert r["prompt"][0]["role"] == "user" and r["chosen"][0]["role"] == "assistant"
        a_wins = r["prob_a"] >= 0.5
        assert r["chosen"][0]["content"] == (r["response_a"] if a_wins else r["response_b"])
        assert r["preference_prob"] == pytest.approx(max(r["prob_a"], 1 - r["prob_a"]))
        ab, ba = r["judgements"]  # both orders, each with its own probability
        assert (ab["order"], ba["order"]) == ("ab", "ba")
        assert len(ab["logprobs"]) == 2 and all(x < 0 for x in ab["logprobs"] + ba["logprobs"])
        assert ab["principle_id"] == ba["principle_id"]
        assert r["prob_a"] == pytest.approx((ab["prob_a"] + ba["prob_a"]) / 2)
        assert isinstance(r["position_consistent"], bool)
    # the three pairs of a prompt come from one sample of three responses
    by_prompt = {}
    for r in rows:
        by_prompt.setdefault(r["prompt_id"], set()).update([r["response_a"], r["response_b"]])
    assert all(len(texts) <= 3 for texts in by_prompt.values())
    prov = rows[0]["provenance"]
    assert prov["feedback"]["mode"] == "logprobs" and prov["params"]["n"] == 3
    card = first.card.read_text()
    assert "| labeled pairs | 9 |" in card and "position bias" in card
    assert "![preference_prob histogram](preference_prob.png)" in card
    assert (tmp_path / "out" / "preference_prob.png").read_bytes()[:4] == b"\x89PNG"

    again = run(config(tiny_llama_dir, tmp_path / "out"))
    assert again.stats.labeler_calls == 0 and again.resumed == 9
    assert again.dataset.read_bytes() == first.dataset.read_bytes()


def test_more_principles_and_one_order(tiny_llama_dir, tmp_path):
    cfg = config(
        tiny_llama_dir,
        tmp_path / "out",
        responses=2,
        feedback=FeedbackSettings(principles=3, both_orders=False),
    )
    rows = run(cfg).rows
    for r in rows:
        assert len(r["judgements"]) == 3
        assert {j["order"] for j in r["judgements"]} == {"ab"}
        assert len({j["principle_id"] for j in r["judgements"]}) == 3
        assert r["principle_agreement"] is not None and r["position_consistent"] is None


def test_identical_and_unreadable_pairs_are_kept_apart(fake_labeler, tmp_path):
    harmless = load_constitution(REPO / "constitution" / "harmless.yaml")
    same = Scheduler(fake_labeler(reply=lambda c, p, i: "the same answer"), Cache(None))
    counter = iter(range(100))
    nothing = Scheduler(
        fake_labeler(
            logprobs=lambda c, o: [float("-inf")] * 2, reply=lambda c, p, i: f"r{next(counter)}"
        ),
        Cache(None),
    )
    rows = pair_rows([{"id": "p", "prompt": "How do I pick a lock?"}], 2)

    def job(sched):
        fb = Feedback(harmless, Templates(), sched, FeedbackSettings())
        params = GenerateParams(n=2)
        return PrefsJob(fb, sched, Templates(), params, rows, {}, [sched], Cache(None), None)

    identical = asyncio.run(job(same).run_row(rows[0]))
    assert identical["unlabeled"]["reason"] == "the two responses are identical"
    unreadable = asyncio.run(job(nothing).run_row(rows[0]))
    assert "no probability on either option" in unreadable["unlabeled"]["reason"]
    assert len(unreadable["unlabeled"]["judgements"]) == 2


def test_a_conversation_is_answered_and_judged_as_messages(fake_labeler):
    harmless = load_constitution(REPO / "constitution" / "harmless.yaml")
    conversation = [
        {"role": "user", "content": "My roommate ate my food again."},
        {"role": "assistant", "content": "That's annoying. Have you talked to them?"},
        {"role": "user", "content": "Should I put something in my leftovers?"},
    ]
    counter = iter(range(100))
    labeler = fake_labeler(
        reply=lambda c, p, i: f"answer {next(counter)}", logprobs=lambda c, o: [-0.2, -1.9]
    )
    sched = Scheduler(labeler, Cache(None))
    (row,) = pair_rows([{"id": "p", "prompt": conversation}], 2)
    fb = Feedback(harmless, Templates(), sched, FeedbackSettings(few_shot=False))
    job = PrefsJob(fb, sched, Templates(), GenerateParams(n=2), [row], {}, [sched], Cache(None),
                   None)  # fmt: skip
    out = asyncio.run(job.run_row(row))
    assert labeler.calls[0] == conversation  # the policy answered inside the conversation
    for asked in labeler.scored:  # the labeler was shown every turn
        question = asked[-2]["content"]
        assert "Person: My roommate ate my food again.\n\nAssistant: That's annoying." in question
        assert "Person: Should I put something in my leftovers?" in question
    assert out["prompt"] == conversation
    assert out["chosen"][0]["role"] == "assistant" and out["preference_prob"] == 0.5


def test_bad_feedback_setting_is_an_error():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="principels"):
        PrefsConfig(prompts=FIXTURES / "prompts.txt", feedback={"principels": 2})
    with pytest.raises(ValidationError, match="clamp_high"):
        FeedbackSettings(clamp_low=0.4, clamp_high=0.45)
    with pytest.raises(ValidationError, match="responses"):
        PrefsConfig(prompts=FIXTURES / "prompts.txt", responses=1)


@pytest.mark.slow
def test_trl_reward_and_dpo_trainers_accept_the_file(tiny_llama_dir, tmp_path):
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer

    result = run(config(tiny_llama_dir, tmp_path / "out"))
    ds = load_dataset("json", data_files=str(result.dataset), split="train")
    assert ds.num_rows == 9 and {"prompt", "chosen", "rejected"} <= set(ds.column_names)
    common = {"max_steps": 1, "per_device_train_batch_size": 3, "report_to": [],
              "use_cpu": True, "save_strategy": "no"}  # fmt: skip
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)

    rm = AutoModelForSequenceClassification.from_pretrained(tiny_llama_dir, num_labels=1)
    rm.config.pad_token_id = tok.pad_token_id
    reward = RewardTrainer(
        model=rm,
        processing_class=tok,
        train_dataset=ds,
        args=RewardConfig(output_dir=str(tmp_path / "rm"), **common),
    )
    out = reward.train()
    assert out.global_step == 1 and out.training_loss > 0

    dpo = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_llama_dir),
        processing_class=tok,
        train_dataset=ds,
        args=DPOConfig(output_dir=str(tmp_path / "dpo"), **common),
    )
    out = dpo.train()
    assert out.global_step == 1 and out.training_loss > 0


def test_crash_mid_run_resumes_without_gaps_or_duplicates(tiny_llama_dir, tmp_path):
    out = tmp_path / "out"
    first = run(config(tiny_llama_dir, out))
    lines = first.dataset.read_text().splitlines()
    # what a kill -9 after four rows leaves: a partial journal with a torn fifth line
    first.dataset.unlink()
    (out / ".preferences.jsonl.partial").write_text("\n".join(lines[:4]) + "\n" + lines[4][:30])
    again = run(config(tiny_llama_dir, out))
    assert again.resumed == 4 and again.stats.labeler_calls == 0  # the rest from the cache
    assert again.dataset.read_text().splitlines() == lines
    assert not (out / ".preferences.jsonl.partial").exists()
