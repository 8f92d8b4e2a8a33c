"""GRPO and RLOO through TRL, rewarded by our reward model and/or the constitution itself.

Both sample a group of completions per prompt and use the group as the baseline (no value model).
Rewards (summed, weighted by TRL's ``reward_weights``):

- ``reward_model``: the soft-label RM (a sequence classifier) from ``rlaif train rm``;
- ``constitution_reward: true``: d-RLAIF, the labeler scores each completion under sampled
  feedback principles (``ConstitutionScorer``: expected 1-9 rating, in [0, 1]), cached.

The KL penalty to the reference (the SFT model) is on by default here (``beta = 0.04``; TRL's
GRPO default is 0). With vllm installed, ``use_vllm: true`` generates with vLLM (TRL's option).

Precision: the policy is loaded in fp32 (master weights) and ``bf16: true`` means autocast
(``rlaif.train.common``). The frozen reference is TRL's copy of the policy in the policy's dtype
under the same autocast, so KL is exactly 0 while the policy equals it (``lora: true``: the base
with the adapter disabled, no copy). The frozen reward model only scores, so on a ``bf16`` run it
is loaded in bf16 (half the memory), otherwise in fp32.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trl import GRPOConfig, RLOOConfig

from rlaif.errors import ConfigError
from rlaif.train.common import (
    RunOptions,
    causal_lm_loader,
    finish_training,
    metrics_callback,
    model_path,
    peft_config,
    run_main,
)


@dataclass
class _Rewards:
    """Fields both configs add to TRL's."""

    model: str = field(default="outputs/run/sft", metadata={"help": "policy init and reference"})
    prompts: str = field(default="rlaif/data/demo_prompts.txt", metadata={"help": "prompt data"})
    prompt_format: str = "auto"
    prompt_field: str = "prompt"
    prompt_limit: int | None = None
    reward_model: str | None = field(default="outputs/run/rm", metadata={"help": "RM folder"})
    constitution_reward: bool = field(default=False, metadata={"help": "d-RLAIF labeler score"})
    labeler: str = "smollm2"
    constitution: str | None = None
    reward_principles: int = 1
    reward_cache: str | None = None


@dataclass
class GRPORunConfig(_Rewards, RunOptions, GRPOConfig):
    output_dir: str | None = field(default="outputs/run/grpo")
    beta: float = 0.04


@dataclass
class RLOORunConfig(_Rewards, RunOptions, RLOOConfig):
    output_dir: str | None = field(default="outputs/run/rloo")
    beta: float = 0.05


def prompt_dataset(cfg: Any) -> Any:
    """Conversational prompts (``[{"role": "user", ...}]``, every turn of a multi-turn prompt)
    from any prompt data rlaif reads."""
    from datasets import Dataset

    from rlaif.data.sources import read_prompts

    rows = read_prompts(cfg.prompts, cfg.prompt_format, cfg.prompt_field)[: cfg.prompt_limit]
    return Dataset.from_dict({"prompt": [r.messages for r in rows]})


def reward_functions(cfg: Any) -> tuple[list[Any], list[Any]]:
    """The reward functions and their tokenizers (None for plain callables)."""
    funcs: list[Any] = []
    tokenizers: list[Any] = []
    if cfg.reward_model:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = model_path(cfg.reward_model)
        dtype = "bfloat16" if getattr(cfg, "bf16", False) else "float32"  # frozen: scores only
        rm = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=dtype)
        tok = AutoTokenizer.from_pretrained(path)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        rm.config.pad_token_id = tok.pad_token_id
        funcs.append(rm)
        tokenizers.append(tok)
    if cfg.constitution_reward:
        from rlaif.engine.feedback import FeedbackSettings
        from rlaif.engine.judge import ConstitutionScorer

        funcs.append(
            ConstitutionScorer(
                cfg.labeler,
                constitution=cfg.constitution,
                settings=FeedbackSettings(principles=cfg.reward_principles),
                cache=cfg.reward_cache,
                seed=cfg.seed,
            )
        )
        tokenizers.append(None)
    if not funcs:
        raise ConfigError("set reward_model and/or constitution_reward: true")
    return funcs, tokenizers


def _train(cfg: Any, trainer_cls: Any, kind: str, title: str) -> Path:
    from transformers import AutoTokenizer

    path = model_path(cfg.model)
    out = Path(cfg.output_dir or f"outputs/run/{kind}")
    load = causal_lm_loader(path)

    funcs, tokenizers = reward_functions(cfg)
    tok = AutoTokenizer.from_pretrained(path, padding_side="left")
    trainer = trainer_cls(
        model=load(),
        reward_funcs=funcs,
        args=cfg,
        train_dataset=prompt_dataset(cfg),
        processing_class=tok,
        reward_processing_classes=tokenizers,
        peft_config=peft_config(cfg),
        callbacks=[metrics_callback(out)],
    )
    return finish_training(trainer, cfg, out, tok, kind, title, load)


def main(cfg: GRPORunConfig) -> Path:
    from trl import GRPOTrainer

    return _train(cfg, GRPOTrainer, "grpo", "GRPO")


def main_rloo(cfg: RLOORunConfig) -> Path:
    from trl import RLOOTrainer

    return _train(cfg, RLOOTrainer, "rloo", "RLOO")


if __name__ == "__main__":
    rloo = "--rloo" in sys.argv
    argv = [a for a in sys.argv[1:] if a != "--rloo"]
    sys.exit(
        run_main(RLOORunConfig, main_rloo, argv) if rloo else run_main(GRPORunConfig, main, argv)
    )
