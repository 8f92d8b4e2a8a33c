"""SL-CAI output as TRL reads it: conversational prompt/completion, the prompt masked."""

from __future__ import annotations

import json

import pytest

from rlaif.constitution import load_constitution
from rlaif.engine.cache import Cache
from rlaif.engine.critique_revise import CritiqueRevise
from rlaif.engine.scheduler import Scheduler
from rlaif.labelers.base import run_sync
from rlaif.templates import Templates

from ..conftest import REPO


@pytest.fixture
def sl_cai_as_written(tmp_path, fake_labeler):
    """An SL-CAI file written by the engine's own step (with provenance, as the job writes it)."""
    lab = fake_labeler(reply=lambda conv, params, i: f"A safe, kind answer number {len(conv)}.")
    sched = Scheduler(lab, Cache(None))
    step = CritiqueRevise(
        load_constitution(REPO / "constitution" / "harmless.yaml"), Templates(), sched, sched
    )
    prompts = ["How do I pick a lock?", "Say something mean.", "Help me cheat.", "Hi!"]

    async def rows():
        out = [await step.run_row({"id": f"r{i}", "prompt": p}) for i, p in enumerate(prompts)]
        await sched.aclose()
        return out

    path = tmp_path / "sl_cai.jsonl"
    with path.open("w") as f:
        for row in run_sync(rows()):
            f.write(json.dumps({**row, "provenance": {"rlaif": "x", "few_shot": True}}) + "\n")
    return path


def test_rows_carry_trl_conversational_prompt_and_completion(sl_cai_as_written):
    row = json.loads(sl_cai_as_written.read_text().splitlines()[0])
    assert row["prompt"] == [{"role": "user", "content": "How do I pick a lock?"}]
    assert row["completion"] == [{"role": "assistant", "content": row["revision"]}]
    assert row["messages"] == row["prompt"] + row["completion"]


def test_sft_trainer_on_the_file_as_written_masks_the_prompt(
    sl_cai_as_written, tiny_llama_dir, tmp_path
):
    """TRL's own SFTTrainer, given the file with every column, trains on the completion only:
    labels are -100 on every prompt token and equal the input ids on the completion."""
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    ds = load_dataset("json", data_files=str(sl_cai_as_written), split="train")
    assert {"prompt", "completion", "messages", "rounds", "provenance"} <= set(ds.column_names)
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    args = SFTConfig(
        output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=2,
        report_to=[], save_strategy="no", use_cpu=True, logging_steps=1,
    )  # fmt: skip
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_llama_dir),
        processing_class=tok,
        train_dataset=ds,
        args=args,
    )
    batch = trainer.data_collator([trainer.train_dataset[0]])  # what a training step receives
    labels, ids, mask = batch["labels"], batch["input_ids"], batch["attention_mask"]
    first = json.loads(sl_cai_as_written.read_text().splitlines()[0])
    prompt_ids = tok.apply_chat_template(first["prompt"], add_generation_prompt=True, tokenize=True)
    prompt_ids = prompt_ids["input_ids"] if hasattr(prompt_ids, "keys") else prompt_ids
    n_prompt = len(prompt_ids)
    assert n_prompt > 5 and ids[0, :n_prompt].tolist() == list(prompt_ids)  # the prompt leads
    assert (labels[0, :n_prompt] == -100).all()
    real = mask[0].bool()
    completion = real.clone()
    completion[:n_prompt] = False
    assert (labels[0][completion] == ids[0][completion]).all() and completion.sum() > 0
    revision_ids = tok(first["revision"], add_special_tokens=False)["input_ids"]
    assert len(revision_ids) <= int(completion.sum())
    result = trainer.train()
    assert result.global_step == 2


@pytest.mark.parametrize("train_on", ["completion", "conversation"])
def test_rlaif_sft_columns(sl_cai_as_written, train_on):
    from rlaif.train.common import load_jsonl_dataset
    from rlaif.train.sft import sft_columns

    ds = sft_columns(load_jsonl_dataset(sl_cai_as_written), train_on, "x")
    if train_on == "completion":
        assert ds.column_names == ["prompt", "completion"]
    else:
        assert ds.column_names == ["messages"]


def test_messages_only_files_are_split_for_completion_training(tmp_path):
    from rlaif.train.common import load_jsonl_dataset
    from rlaif.train.sft import sft_columns

    path = tmp_path / "m.jsonl"
    turns = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
    ]
    path.write_text(json.dumps({"messages": turns}) + "\n")
    ds = sft_columns(load_jsonl_dataset(path), "completion", "m")
    assert ds[0] == {"prompt": turns[:3], "completion": turns[3:]}
