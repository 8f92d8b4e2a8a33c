"""DPO on the AI preference pairs, and online DPO judged by the constitution (both TRL).

DPO reads ``preferences.jsonl`` as it is (conversational prompt/chosen/rejected), plus the
``mix`` entries (``rlaif.data.mix``: human helpfulness pairs beside the AI harmlessness pairs,
drawn by weight; DPO uses which response is chosen, not ``preference_prob``); the pairs each
source gave are written to ``train_by_source.json``. Online DPO
(TRL's experimental ``OnlineDPOTrainer``) samples two completions per prompt during training and
needs to know which is better; TRL 1.16 dropped its judges and ranks the pair by reward
functions. ``JudgeReward`` turns our constitutional pairwise judge into such a function: TRL
passes the batch's prompts twice (``2 * prompts``: first completions, then second ones), the judge
gives P(first better) for each pair, and the rewards are ``p`` and ``1 - p``, so TRL prefers the
first completion exactly when the judge does.

Precision: the policy is loaded in fp32 (master weights) and ``bf16: true`` means autocast
(``rlaif.train.common``). The frozen reference is TRL's: a second copy of the policy built in the
policy's dtype (fp32) and run under the same autocast, so at step 0 the policy's and the
reference's log-probs are identical (DPO's implicit rewards and online DPO's KL are exactly 0);
it costs a second fp32 copy, which ``lora: true`` avoids (the reference is the base with the
adapter disabled).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trl import DPOConfig

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # we chose the experimental trainer
from trl.experimental.online_dpo import OnlineDPOConfig

from rlaif.data.mix import mix_preferences
from rlaif.train.common import (
    MixOptions,
    RunOptions,
    causal_lm_loader,
    finish_training,
    metrics_callback,
    model_path,
    peft_config,
    run_main,
)

TRAIN_BY_SOURCE_FILE = "train_by_source.json"


@dataclass
class DPORunConfig(MixOptions, RunOptions, DPOConfig):
    model: str = field(default="outputs/run/sft", metadata={"help": "policy init and reference"})
    dataset: str = field(default="outputs/prefs/preferences.jsonl")
    output_dir: str | None = field(default="outputs/run/dpo")


@dataclass
class OnlineDPORunConfig(RunOptions, OnlineDPOConfig):
    model: str = field(default="outputs/run/sft")
    prompts: str = field(default="rlaif/data/demo_prompts.txt")
    prompt_format: str = "auto"
    prompt_field: str = "prompt"
    prompt_limit: int | None = None
    labeler: str = field(default="smollm2", metadata={"help": "the constitutional judge"})
    constitution: str | None = None
    judge_principles: int = 1
    judge_cache: str | None = None
    output_dir: str | None = field(default="outputs/run/online-dpo")


class JudgeReward:
    """Online DPO's reward functions, from a pairwise judge (see the module docstring)."""

    __name__ = "constitution_judge"

    def __init__(self, judge: Any):
        self.judge = judge

    def __call__(self, prompts: list[Any], completions: list[Any], **_: Any) -> list[float | None]:
        """P(first better) and its complement; ``None`` for both completions of a pair that the
        judge could not judge (a failed call, no probability): TRL then gives neither a reward,
        instead of a made-up tie."""
        half = len(prompts) // 2
        if len(prompts) != 2 * half or len(completions) != len(prompts):
            raise ValueError("online DPO passes each prompt twice: first and second completions")
        pairs = list(zip(completions[:half], completions[half:], strict=True))
        probs = self.judge.judge(prompts[:half], pairs)
        return [*probs, *(None if p is None else 1.0 - p for p in probs)]


def main(cfg: DPORunConfig) -> Path:
    from transformers import AutoTokenizer
    from trl import DPOTrainer

    path = model_path(cfg.model)
    out = Path(cfg.output_dir or "outputs/run/dpo")
    load = causal_lm_loader(path)

    tok = AutoTokenizer.from_pretrained(path)
    mixed = mix_preferences(cfg.dataset, cfg.mix, seed=cfg.seed, soft_labels=False)
    ds = mixed.dataset("train", ["prompt", "chosen", "rejected"])
    trainer = DPOTrainer(
        model=load(),
        args=cfg,
        train_dataset=ds,
        processing_class=tok,
        peft_config=peft_config(cfg),
        callbacks=[metrics_callback(out)],
    )
    result = finish_training(trainer, cfg, out, tok, "dpo", "DPO", load)
    if trainer.is_world_process_zero():
        counts = {"sources": mixed.sources}
        (out / TRAIN_BY_SOURCE_FILE).write_text(json.dumps(counts, indent=2), encoding="utf-8")
    return result


def main_online(cfg: OnlineDPORunConfig, judge: Any = None) -> Path:
    from transformers import AutoTokenizer
    from trl.experimental.online_dpo import OnlineDPOTrainer

    from rlaif.train.grpo import prompt_dataset

    path = model_path(cfg.model)
    out = Path(cfg.output_dir or "outputs/run/online-dpo")
    load = causal_lm_loader(path)

    if judge is None:
        from rlaif.engine.feedback import FeedbackSettings
        from rlaif.engine.judge import PairwiseJudge

        judge = PairwiseJudge(
            cfg.labeler,
            constitution=cfg.constitution,
            settings=FeedbackSettings(principles=cfg.judge_principles),
            cache=cfg.judge_cache,
            seed=cfg.seed,
        )
    tok = AutoTokenizer.from_pretrained(path, padding_side="left")
    trainer = OnlineDPOTrainer(
        model=load(),
        reward_funcs=[JudgeReward(judge)],
        args=cfg,
        train_dataset=prompt_dataset(cfg),
        processing_class=tok,
        peft_config=peft_config(cfg),
        callbacks=[metrics_callback(out)],
    )
    return finish_training(trainer, cfg, out, tok, "online-dpo", "online DPO", load)


if __name__ == "__main__":
    online = "--online" in sys.argv
    argv = [a for a in sys.argv[1:] if a != "--online"]
    if online:
        sys.exit(run_main(OnlineDPORunConfig, main_online, argv))
    sys.exit(run_main(DPORunConfig, main, argv))
