"""SFT on SL-CAI revisions with TRL's SFTTrainer (optionally LoRA, optionally mixed data).

The SL-CAI file's ``messages`` column is the training data (only that column: with a ``prompt``
column present TRL would read rows as prompt/completion pairs). The Constitutional AI paper
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


def build_dataset(cfg: SFTRunConfig) -> Any:
    from datasets import concatenate_datasets

    ds = load_jsonl_dataset(cfg.dataset)
    if "messages" not in ds.column_names:
        raise ConfigError(f"{cfg.dataset}: no `messages` column (columns: {ds.column_names})")
    ds = ds.select_columns(["messages"])
    if cfg.mix_dataset and cfg.mix_ratio > 0:
        extra = load_jsonl_dataset(cfg.mix_dataset)
        if "messages" not in extra.column_names:
            raise ConfigError(f"{cfg.mix_dataset}: no `messages` column")
        n = min(len(extra), round(cfg.mix_ratio * len(ds)))
        extra = extra.shuffle(seed=cfg.seed).select(range(n)).select_columns(["messages"])
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
