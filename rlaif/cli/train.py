"""``rlaif train KIND --config RECIPE [--set key=value ...]``: the trainers from the command line.

The trainer modules are imported only when a kind is run (torch, TRL), so ``rlaif --help`` stays
fast. The same recipes run on many devices with
``accelerate launch -m rlaif.train.KIND --config RECIPE``.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from rich.console import Console

# kind -> (module, config class, main function, what it does)
KINDS: dict[str, tuple[str, str, str, str]] = {
    "sft": ("rlaif.train.sft", "SFTRunConfig", "main", "SFT on SL-CAI revisions (TRL)"),
    "rm": ("rlaif.train.reward", "RewardRunConfig", "main",
           "reward model on AI preferences, soft-label Bradley-Terry"),
    "ppo": ("rlaif.train.ppo", "PPORunConfig", "main",
            "RL-CAI: PPO against the RM with a KL penalty to the SFT policy (ours)"),
    "grpo": ("rlaif.train.grpo", "GRPORunConfig", "main",
             "GRPO with the RM and/or the constitution as reward (TRL)"),
    "rloo": ("rlaif.train.grpo", "RLOORunConfig", "main_rloo",
             "RLOO with the RM and/or the constitution as reward (TRL)"),
    "dpo": ("rlaif.train.dpo", "DPORunConfig", "main", "DPO on the AI preference pairs (TRL)"),
    "online-dpo": ("rlaif.train.dpo", "OnlineDPORunConfig", "main_online",
                   "online DPO judged by the constitution (TRL experimental)"),
}  # fmt: skip


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train: sft, rm, ppo, grpo, rloo, dpo, online-dpo")
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    for kind, (_, _, _, what) in KINDS.items():
        k = kinds.add_parser(
            kind,
            help=what,
            description=f"{what}. Settings come from a YAML recipe (the shipped `--config "
            f"train/{kind}` is a starting point) and --set overrides; every key of the trainer's "
            "config is accepted (TRL's TrainingArguments included) and an unknown key is an error "
            "naming the file and line. Writes the model, metrics.jsonl, PNG plots of loss, "
            "reward, KL and length, and rlaif_train.json (the resolved settings) to output_dir.",
        )
        k.add_argument("--config", type=Path, metavar="RECIPE", help="YAML recipe")
        k.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a setting, repeatable (values are YAML): --set max_steps=2",
        )
        k.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rlaif.train.common import load_recipe

    module_name, config_name, main_name, what = KINDS[args.kind]
    module = importlib.import_module(module_name)
    cfg = load_recipe(getattr(module, config_name), args.config, args.overrides)
    console = Console()
    console.print(f"[bold]rlaif train {args.kind}[/]: {what} -> {cfg.output_dir}")
    out = getattr(module, main_name)(cfg)
    console.print(f"[green]done[/]: model, metrics.jsonl and plots in {out}")
    for png in sorted(Path(out).glob("*.png")):
        console.print(f"  wrote {png}")
    return 0
