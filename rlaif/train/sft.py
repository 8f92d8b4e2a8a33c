"""SFT on SL-CAI revisions with TRL's SFTTrainer (optionally LoRA, optionally mixed data).

``train_on: completion`` (the default, the paper's choice) trains on the SL-CAI file's
conversational ``prompt``/``completion`` columns: TRL masks the prompt, so the loss is on the
final revision alone. ``train_on: conversation`` trains on ``messages``, prompt tokens included.
Only those columns go to TRL (it tells the formats apart by column name). Files with ``messages``
alone (older SL-CAI files, other SFT data) are split into prompt (all but the last turn) and
completion (the last turn) for the default. The Constitutional AI paper
fine-tuned on revisions *and* on helpfulness samples so the model does not drift into evasive
refusals; ``mix_dataset`` + ``mix_ratio`` add such rows (any JSONL/dataset with ``messages``).

The policy is trained in fp32 (master weights) whatever its checkpoint's dtype; ``bf16: true``
adds bf16 autocast (``rlaif.train.common``). Checkpoints every ``save_steps``; a rerun resumes.

Run: ``rlaif train sft --config train/sft`` (a shipped recipe, or your own YAML); on several
processes ``python -m torch.distributed.run --nproc_per_node N -m rlaif.train.sft --config ...``
(CPUs too) or ``accelerate launch --config_file ddp.yaml -m rlaif.train.sft ...`` (accelerate
configs are in ``recipes/accelerate/`` of the source tree).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trl import SFTConfig

from rlaif.errors import ConfigError
from rlaif.train.common import (
    RunOptions,
    causal_lm_loader,
    finish_training,
    load_jsonl_dataset,
    metrics_callback,
    model_path,
    peft_config,
    run_main,
)


@dataclass
class SFTRunConfig(RunOptions, SFTConfig):
    model: str = field(default="smollm2", metadata={"help": "smollm2 or a local model folder"})
    dataset: str = field(
        default="outputs/sl-cai/sl_cai.jsonl", metadata={"help": "SL-CAI rows with `messages`"}
    )
    output_dir: str | None = field(default="outputs/run/sft")
    mix_dataset: str | None = field(default=None, metadata={"help": "extra rows with `messages`"})
    mix_ratio: float = field(default=0.0, metadata={"help": "extra rows per SL-CAI row"})
    train_on: str = field(
        default="completion",
        metadata={
            "help": "completion: loss on the revision only (prompt/completion); conversation: "
            "loss on the whole `messages` conversation",
            "choices": ["completion", "conversation"],
        },
    )


def sft_columns(ds: Any, train_on: str, source: str) -> Any:
    """``ds`` reduced to the columns TRL should read for ``train_on``."""
    cols = set(ds.column_names)
    if train_on == "conversation":
        if "messages" not in cols:
            raise ConfigError(f"{source}: no `messages` column (columns: {ds.column_names})")
        return ds.select_columns(["messages"])
    if train_on != "completion":
        raise ConfigError(f"train_on must be completion or conversation, not {train_on!r}")
    if {"prompt", "completion"} <= cols:
        return ds.select_columns(["prompt", "completion"])
    if "messages" not in cols:
        raise ConfigError(
            f"{source}: no `prompt`/`completion` or `messages` columns (columns: {ds.column_names})"
        )
    return ds.select_columns(["messages"]).map(
        lambda row: {"prompt": row["messages"][:-1], "completion": row["messages"][-1:]},
        remove_columns=["messages"],
    )


def build_dataset(cfg: SFTRunConfig) -> Any:
    from datasets import concatenate_datasets

    ds = sft_columns(load_jsonl_dataset(cfg.dataset), cfg.train_on, cfg.dataset)
    if cfg.mix_dataset and cfg.mix_ratio > 0:
        extra = sft_columns(load_jsonl_dataset(cfg.mix_dataset), cfg.train_on, cfg.mix_dataset)
        n = min(len(extra), round(cfg.mix_ratio * len(ds)))
        extra = extra.shuffle(seed=cfg.seed).select(range(n))
        ds = concatenate_datasets([ds, extra]).shuffle(seed=cfg.seed)
    return ds


def main(cfg: SFTRunConfig) -> Path:
    from transformers import AutoTokenizer
    from trl import SFTTrainer

    path = model_path(cfg.model)
    out = Path(cfg.output_dir or "outputs/run/sft")
    load = causal_lm_loader(path)

    trainer = SFTTrainer(
        model=load(),
        processing_class=AutoTokenizer.from_pretrained(path),
        train_dataset=build_dataset(cfg),
        args=cfg,
        peft_config=peft_config(cfg),
        callbacks=[metrics_callback(out)],
    )
    return finish_training(trainer, cfg, out, trainer.processing_class, "sft", "SFT", load)


if __name__ == "__main__":
    sys.exit(run_main(SFTRunConfig, main, sys.argv[1:]))
