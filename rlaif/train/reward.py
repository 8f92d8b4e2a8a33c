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

``mix`` adds preference data of other sources to the AI pairs (``rlaif.data.mix``: the paper's
human helpfulness labels beside AI harmlessness labels, by weight). Every row carries its
``source``, the held-out split is by prompt within each source, and once trained the model
scores every held-out pair (r(chosen) > r(rejected), one forward pass per pair, no gradients):
``eval_by_source.json`` holds each source's accuracy with its 95% Wilson interval and n, its
training count and the rows it skipped, and the same table is printed. TRL's ``eval_accuracy``
(logged during training) is a mean of per-batch accuracies over all sources together.

The reward model being trained is loaded in fp32 (master weights) with ``bf16: true`` meaning
autocast, like every trainer here (``rlaif.train.common``); it has no frozen reference.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from trl import RewardConfig, RewardTrainer
from trl.trainer.reward_trainer import DataCollatorForPreference

from rlaif.data.mix import MixedPairs, mix_preferences
from rlaif.errors import ConfigError
from rlaif.eval.stats import wilson
from rlaif.train.common import (
    TRAINABLE_DTYPE,
    MixOptions,
    RunOptions,
    finish_training,
    metrics_callback,
    model_path,
    peft_config,
    run_main,
)

LABEL = "preference_prob"
BY_SOURCE_FILE = "eval_by_source.json"


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
class RewardRunConfig(MixOptions, RunOptions, RewardConfig):
    model: str = field(default="outputs/run/sft", metadata={"help": "the SFT checkpoint"})
    dataset: str = field(
        default="outputs/prefs/preferences.jsonl", metadata={"help": "AI preference pairs"}
    )
    output_dir: str | None = field(default="outputs/run/rm")
    soft_labels: bool = field(default=True, metadata={"help": "train on preference_prob"})
    eval_split: float = field(
        default=0.1, metadata={"help": "share of each source's prompts held out"}
    )


def prepare_data(cfg: RewardRunConfig) -> tuple[Any, Any, MixedPairs]:
    """Training pairs (the trainer's columns), held-out pairs (with ``source``; None when
    nothing is held out) and the per-source counts (``rlaif.data.mix``)."""
    mixed = mix_preferences(cfg.dataset, cfg.mix, cfg.eval_split, cfg.seed, cfg.soft_labels)
    columns = ["chosen", "prompt", "rejected", *([LABEL] if cfg.soft_labels else [])]
    train = mixed.dataset("train", sorted(columns))
    if not len(train):
        raise ConfigError(f"{cfg.dataset}: no pairs left to train on")
    held = mixed.dataset("held_out", sorted([*columns, "source"])) if mixed.held_out else None
    return train, held, mixed


def split_dataset(cfg: RewardRunConfig) -> tuple[Any, Any]:
    """Train and held-out pairs, split by prompt within each source (``rlaif.data.mix``)."""
    train, held, _ = prepare_data(cfg)
    return train, held


def score_pairs(trainer: Any, dataset: Any) -> list[bool]:
    """For each tokenized pair of ``dataset``: r(chosen) > r(rejected) under the trained model.
    Every process runs the same batches (sharded models need them all)."""
    if dataset is None or not len(dataset):
        return []
    model, device = trainer.model, trainer.accelerator.device
    collate = DataCollatorForPreference(pad_token_id=trainer.processing_class.pad_token_id)
    size = max(1, trainer.args.per_device_eval_batch_size)
    was_training = model.training
    model.eval()
    wins: list[bool] = []
    with torch.no_grad(), trainer.accelerator.autocast():
        for start in range(0, len(dataset), size):
            rows = dataset.select(range(start, min(start + size, len(dataset))))
            batch = collate([{"chosen_ids": r["chosen_ids"], "rejected_ids": r["rejected_ids"]}
                             for r in rows])  # fmt: skip
            logits = model(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
                use_cache=False,
            ).logits.squeeze(-1)
            chosen, rejected = torch.chunk(logits.float(), chunks=2)
            wins += (chosen > rejected).tolist()
    model.train(was_training)
    return wins


def accuracy_by_source(
    mixed: MixedPairs, scored_sources: list[str], wins: list[bool]
) -> dict[str, Any]:
    """Each source's held-out accuracy with its 95% Wilson interval and n, beside its counts;
    pairs TRL dropped (longer than ``max_length``) are counted apart."""

    def cell(k: int, n: int) -> dict[str, Any]:
        interval = wilson(k, n)
        return {"correct": k, "n": n, "accuracy": k / n if n else None,
                "ci95": list(interval) if interval else None}  # fmt: skip

    sources = {}
    for label, counts in mixed.sources.items():
        won = [w for s, w in zip(scored_sources, wins, strict=True) if s == label]
        dropped = counts["held_out_pairs"] - len(won)
        sources[label] = {**counts, **cell(sum(won), len(won)), "too_long": dropped}
    return {"sources": sources, "overall": cell(sum(wins), len(wins))}


def print_by_source(report: dict[str, Any]) -> None:
    print("rm: held-out accuracy by source (r(chosen) > r(rejected); 95% Wilson interval)")
    for label, s in [*report["sources"].items(), ("all sources", report["overall"])]:
        if s["n"]:
            lo, hi = s["ci95"]
            said = f"{s['accuracy']:.3f} (95% CI {lo:.3f}-{hi:.3f}, n={s['n']})"
        else:
            said = "n/a (n=0: nothing held out)"
        train = f", {s['train_pairs']} training pairs" if "train_pairs" in s else ""
        print(f"  {label:<40} {said}{train}", flush=True)


def main(cfg: RewardRunConfig) -> Path:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = model_path(cfg.model)
    out = Path(cfg.output_dir or "outputs/run/rm")
    train, held_out, mixed = prepare_data(cfg)
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
    result = finish_training(trainer, cfg, out, tok, "rm", "reward model", load)
    scored = trainer.eval_dataset if held_out is not None else None  # tokenized, as trained
    report = accuracy_by_source(
        mixed, scored["source"] if scored is not None else [], score_pairs(trainer, scored)
    )
    if trainer.is_world_process_zero():
        report.update(eval_split=cfg.eval_split, seed=cfg.seed)
        (out / BY_SOURCE_FILE).write_text(json.dumps(report, indent=2), encoding="utf-8")
        print_by_source(report)
    return result


if __name__ == "__main__":
    sys.exit(run_main(RewardRunConfig, main, sys.argv[1:]))
