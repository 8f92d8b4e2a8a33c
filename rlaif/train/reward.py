"""The reward model: the SFT policy with a scalar head, trained on AI preferences' soft labels.

The Constitutional AI paper trained its preference model on the feedback model's probabilities,
not on hard labels. With p = ``preference_prob`` = P(chosen better) and d = r(chosen) - r(rejected)
the Bradley-Terry loss on a soft label is the binary cross-entropy of sigma(d) against p:

    loss = -[p log sigma(d) + (1 - p) log sigma(-d)]

TRL's RewardTrainer knows only hard labels (p = 1) and margins, so a small subclass keeps the
column through its collator and replaces the loss; everything else (tokenisation of
conversational pairs, metrics, saving) is TRL's. The model is
``AutoModelForSequenceClassification`` with ``num_labels=1`` loaded from the SFT checkpoint: the
policy's body with a fresh scalar head. A held-out share of the prompts (``eval_split``; all pairs
of a prompt fall on one side) reports pairwise accuracy (``eval_accuracy``: the share of held-out
pairs where r(chosen) > r(rejected)).

The reward model being trained is loaded in fp32 (master weights) with ``bf16: true`` meaning
autocast, like every trainer here (``rlaif.train.common``); it has no frozen reference.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from trl import RewardConfig, RewardTrainer
from trl.trainer.reward_trainer import DataCollatorForPreference

from rlaif.errors import ConfigError
from rlaif.train.common import (
    TRAINABLE_DTYPE,
    RunOptions,
    finish_training,
    load_jsonl_dataset,
    metrics_callback,
    model_path,
    peft_config,
    run_main,
)

LABEL = "preference_prob"


def soft_bradley_terry_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, prob: torch.Tensor
) -> torch.Tensor:
    """Mean of -[p log sigma(d) + (1 - p) log sigma(-d)], d = chosen - rejected."""
    d = chosen - rejected
    return -(prob * nn.functional.logsigmoid(d) + (1 - prob) * nn.functional.logsigmoid(-d)).mean()


@dataclass
class SoftPreferenceCollator(DataCollatorForPreference):
    """TRL's preference collator, plus the soft label of each pair."""

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        out = super().torch_call(examples)
        if LABEL in examples[0]:
            out[LABEL] = torch.tensor([float(e[LABEL]) for e in examples], dtype=torch.float)
        return out


class SoftLabelRewardTrainer(RewardTrainer):
    """RewardTrainer whose loss uses ``preference_prob`` when the batch has it."""

    def _set_signature_columns_if_needed(self) -> None:
        if self._signature_columns is None:
            self._signature_columns = ["chosen_ids", "rejected_ids", "margin", LABEL]

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        prob = inputs.pop(LABEL, None)
        loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        if prob is not None:
            chosen, rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
            loss = soft_bradley_terry_loss(chosen, rejected, prob.to(chosen.dtype))
            if self.args.center_rewards_coefficient is not None:
                loss = loss + self.args.center_rewards_coefficient * torch.mean(
                    (chosen + rejected) ** 2
                )
        return (loss, outputs) if return_outputs else loss


@dataclass
class RewardRunConfig(RunOptions, RewardConfig):
    model: str = field(default="outputs/run/sft", metadata={"help": "the SFT checkpoint"})
    dataset: str = field(
        default="outputs/prefs/preferences.jsonl", metadata={"help": "AI preference pairs"}
    )
    output_dir: str | None = field(default="outputs/run/rm")
    soft_labels: bool = field(default=True, metadata={"help": "train on preference_prob"})
    eval_split: float = field(default=0.1, metadata={"help": "prompts held out (share)"})


def prompt_groups(ds: Any) -> list[str]:
    """The prompt of each pair, as a key: ``prompt_id``, else the ``<prompt id>`` part of an
    ``id`` such as ``<prompt id>/<i>-<j>`` (``rlaif generate prefs``), else the prompt itself."""
    import json

    columns = set(ds.column_names)
    if "prompt_id" in columns:
        return [str(x) for x in ds["prompt_id"]]
    if "id" in columns:
        return [str(x).rsplit("/", 1)[0] for x in ds["id"]]
    return [json.dumps(p, sort_keys=True) for p in ds["prompt"]]


def split_dataset(cfg: RewardRunConfig) -> tuple[Any, Any]:
    """Train and held-out pairs, split by prompt: with K > 2 responses per prompt several pairs
    share a prompt, and a split per pair would score held-out pairs on prompts seen in training.
    A share ``eval_split`` of the prompts (rounded up, at least one, never all) is held out."""
    import math
    import random

    ds = load_jsonl_dataset(cfg.dataset)
    needed = {"prompt", "chosen", "rejected"} | ({LABEL} if cfg.soft_labels else set())
    if not needed <= set(ds.column_names):
        raise ConfigError(f"{cfg.dataset}: needs columns {sorted(needed)}; has {ds.column_names}")
    groups = prompt_groups(ds)
    ds = ds.select_columns(sorted(needed))
    prompts = sorted(set(groups))
    if cfg.eval_split <= 0 or len(ds) < 4 or len(prompts) < 2:
        return ds, None
    random.Random(cfg.seed).shuffle(prompts)
    n_held = math.ceil(round(cfg.eval_split * len(prompts), 9))  # 0.3 * 10 = 3.0000000000000004
    held = set(prompts[: min(n_held, len(prompts) - 1)])
    train = [i for i, g in enumerate(groups) if g not in held]
    test = [i for i, g in enumerate(groups) if g in held]
    return ds.select(train), ds.select(test)


def main(cfg: RewardRunConfig) -> Path:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = model_path(cfg.model)
    out = Path(cfg.output_dir or "outputs/run/rm")
    train, held_out = split_dataset(cfg)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token

    def load() -> Any:
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, dtype=TRAINABLE_DTYPE
        )
        model.config.pad_token_id = tok.pad_token_id
        return model

    model = load()
    if held_out is not None and cfg.eval_strategy == "no":
        cfg.eval_strategy = "steps" if cfg.max_steps > 0 else "epoch"
        cfg.eval_steps = cfg.eval_steps or max(1, cfg.max_steps)
    peft = peft_config(cfg, task_type="SEQ_CLS")
    trainer = SoftLabelRewardTrainer(
        model=model,
        processing_class=tok,
        train_dataset=train,
        eval_dataset=held_out,
        args=cfg,
        data_collator=SoftPreferenceCollator(pad_token_id=tok.pad_token_id),
        peft_config=peft,
        callbacks=[metrics_callback(out)],
    )
    # training evaluates the held-out split on its eval schedule (the last step included)
    return finish_training(trainer, cfg, out, tok, "rm", "reward model", load)


if __name__ == "__main__":
    sys.exit(run_main(RewardRunConfig, main, sys.argv[1:]))
