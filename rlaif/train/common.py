"""What the trainers share: recipes, model paths, precision, metrics and plots. Not a base class.

Each trainer is a config dataclass (extending TRL's config where one exists) plus ``main(cfg)``.
This module only holds the plumbing they would otherwise repeat:

- ``load_recipe``: a YAML recipe plus ``--set key=value`` overrides into the trainer's config
  dataclass. Unknown keys are errors that name the file and line (with a did-you-mean), exactly
  like rlaif's pydantic configs; values are checked by ``transformers.HfArgumentParser``.
- ``model_path``: ``smollm2`` means the embedded model (converted once, offline); anything else
  is a local folder. Nothing is downloaded.
- precision: bf16 on a GPU that supports it, fp32 elsewhere, unless the recipe says.
- ``MetricsCallback`` / ``write_plots``: every logged step goes to ``metrics.jsonl`` in the output
  folder, and PNG plots of loss, reward, KL and length are drawn from it at the end.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from rlaif.errors import ConfigError, ConfigFileError

C = TypeVar("C")

METRICS_FILE = "metrics.jsonl"


def load_recipe(
    cls: type[C], path: str | Path | None, overrides: Sequence[str] = (), **defaults: Any
) -> C:
    """Build ``cls`` from a YAML recipe, then ``--set`` overrides, then keyword defaults for
    keys neither sets."""
    from transformers import HfArgumentParser

    # ruamel: only where recipes are read (the GPU check imports this module without it)
    from rlaif.yamlio import line_of, parse_key_values, parse_yaml, plain

    values: dict[str, Any] = {}
    root: Any = None
    if path is not None:
        root, _ = parse_yaml(Path(path), ConfigFileError)
        if root is None:
            root = {}
        if not hasattr(root, "items"):
            raise ConfigFileError(path, [(1, "expected a YAML mapping of settings")])
        values = plain(root)
    sets = parse_key_values(overrides, "--set")
    names = {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    problems = []
    for key in [*values, *sets]:
        if key not in names:
            near = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            where = "--set" if key in sets and key not in values else None
            problems.append((key, where, f"unknown key '{key}'{hint}"))
    if problems:
        if path is not None and any(where is None for _, where, _ in problems):
            raise ConfigFileError(
                path, [(line_of(root, [k]), msg) for k, where, msg in problems if where is None]
            )
        raise ConfigError("; ".join(f"--set {msg}" for _, _, msg in problems))
    merged = {**{k: v for k, v in defaults.items() if k in names}, **values, **sets}
    if "bf16" in names and "bf16" not in merged and "fp16" not in merged:
        merged["bf16"] = gpu_bf16()  # bf16 on a GPU that supports it, fp32 elsewhere
    if "output_dir" in names and merged.get("output_dir") is not None:
        merged["output_dir"] = str(merged["output_dir"])
    try:
        (cfg,) = HfArgumentParser(cls).parse_dict(merged, allow_extra_keys=False)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"bad training settings{f' in {path}' if path else ''}: {e}") from None
    return cfg


def model_path(name: str) -> str:
    """The embedded model's converted folder for ``smollm2``, else the local folder given."""
    from rlaif.models import resolve_model

    return str(resolve_model(name))


def gpu_bf16() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def load_jsonl_dataset(path: str | Path) -> Any:
    from datasets import load_dataset

    path = Path(path)
    if path.is_dir():
        from datasets import load_from_disk

        return load_from_disk(str(path))
    if not path.is_file():
        raise ConfigError(f"dataset not found: {path}")
    return load_dataset("json", data_files=str(path), split="train")


# --------------------------------------------------------------------------- metrics and plots


def append_metrics(out_dir: str | Path, record: dict[str, Any], name: str = METRICS_FILE) -> None:
    path = Path(out_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = {
        k: (v if not isinstance(v, float) or math.isfinite(v) else None)
        for k, v in record.items()
        if isinstance(v, int | float | str | bool) or v is None
    }
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(clean) + "\n")


# logged keys whose non-finite value means the run is broken, not a metric to leave blank
LOSS_KEYS = ("loss", "train_loss", "loss/policy", "loss/value", "loss/total", "eval_loss")


def raise_if_nonfinite(record: dict[str, Any], step: int) -> None:
    """Stop a run whose loss went NaN/inf: ``TrainingDivergedError`` naming the step and keys."""
    from rlaif.errors import TrainingDivergedError

    bad = [
        k
        for k in LOSS_KEYS
        if isinstance(record.get(k), float | int) and not math.isfinite(record[k])
    ]
    if bad:
        raise TrainingDivergedError(step, bad)


def read_metrics(out_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(out_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


# which logged keys go into which plot (every key of a group that was logged is drawn)
PLOT_GROUPS: dict[str, tuple[str, ...]] = {
    "loss": ("loss", "train_loss", "loss/total", "eval_loss", "loss/policy", "loss/value"),
    "reward": (
        "reward",
        "objective/scores",
        "rewards/chosen",
        "mean_reward",
        "eval_accuracy",
        "accuracy",
        "rewards/margins",
    ),
    "kl": ("kl", "objective/kl", "beta"),
    "length": ("completions/mean_length", "response_length", "num_tokens"),
    "monitors": (
        "monitor/length_ratio",
        "monitor/distinct_2",
        "monitor/repeated_3gram",
        "monitor/rm_judge_spearman",
        "monitor/sycophancy",
    ),
}


def write_plots(out_dir: str | Path, title: str) -> list[Path]:
    """One PNG per group of metrics that were logged, x = step."""
    rows = read_metrics(out_dir)
    if not rows:
        return []
    from rlaif.plots import line_plot

    written = []
    for group, keys in PLOT_GROUPS.items():
        series = {}
        for key in keys:
            points = [(r["step"], r[key]) for r in rows if r.get(key) is not None and "step" in r]
            if points:
                series[key] = points
        if series:
            path = Path(out_dir) / f"{group}.png"
            written.append(line_plot(series, path, f"{title}: {group}", "step"))
    return written


def metrics_callback(out_dir: str | Path) -> Any:
    """A transformers ``TrainerCallback`` writing every log record to ``metrics.jsonl``."""
    from transformers import TrainerCallback

    class MetricsCallback(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **_: Any) -> None:
            if logs and state.is_world_process_zero:
                append_metrics(out_dir, {"step": state.global_step, **logs})

    return MetricsCallback()


def fresh_metrics(out_dir: str | Path) -> None:
    (Path(out_dir) / METRICS_FILE).unlink(missing_ok=True)


def save_run_config(out_dir: str | Path, cfg: Any, kind: str) -> Path:
    """The resolved settings beside the checkpoint, for provenance."""
    values = {}
    for f in dataclasses.fields(cfg):
        if "token" in f.name and "hub" in f.name:  # never write credentials
            continue
        v = getattr(cfg, f.name)
        if isinstance(v, int | float | str | bool) or v is None:
            values[f.name] = v
        elif isinstance(v, list | tuple) and all(isinstance(x, int | float | str) for x in v):
            values[f.name] = list(v)
    path = Path(out_dir) / "rlaif_train.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"trainer": kind, "config": values}, indent=2), encoding="utf-8")
    return path


def run_main(cls: type[C], main: Any, argv: Sequence[str]) -> int:
    """``python -m rlaif.train.KIND --config RECIPE --set k=v``: the entry point that
    ``accelerate launch -m`` uses. Errors in the recipe exit 2 with one line, like the CLI."""
    import argparse
    import sys

    from rlaif.errors import RlaifError

    parser = argparse.ArgumentParser(prog=f"python -m {main.__module__}")
    parser.add_argument("--config", type=Path, metavar="RECIPE")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    args = parser.parse_args(list(argv))
    try:
        main(load_recipe(cls, args.config, args.overrides))
    except RlaifError as e:
        print(f"rlaif: error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


@dataclass
class RunOptions:
    """What every TRL-based trainer config adds: LoRA, and logging/saving defaults that suit
    short runs (a log line per step, the model saved once at the end)."""

    lora: bool = field(default=False, metadata={"help": "LoRA adapters (peft), merged at the end"})
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    logging_steps: float = 1
    save_strategy: str = "no"


def peft_config(cfg: Any, task_type: str = "CAUSAL_LM") -> Any:
    if not cfg.lora:
        return None
    try:
        from peft import LoraConfig
    except ImportError:
        raise ConfigError("lora: true needs peft: pip install 'rlaif[peft]'") from None
    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules="all-linear",
        task_type=task_type,
    )


def finish_training(
    trainer: Any, cfg: Any, out: Path, tokenizer: Any, kind: str, title: str
) -> Path:
    """Train, then save the model (LoRA merged, so it loads without peft), the tokenizer, the
    resolved settings and the plots in ``out``."""
    trainer.train()
    model = trainer.model
    if getattr(cfg, "lora", False):
        model = model.merge_and_unload()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    save_run_config(out, cfg, kind)
    write_plots(out, title)
    return out
