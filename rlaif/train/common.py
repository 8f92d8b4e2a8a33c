"""What the trainers share: recipes, model paths, precision, metrics, checkpoints, the final save.

Each trainer is a config dataclass (extending TRL's config where one exists) plus ``main(cfg)``.
This module only holds the plumbing they would otherwise repeat:

- ``load_recipe``: a YAML recipe plus ``--set key=value`` overrides into the trainer's config
  dataclass. Unknown keys are errors that name the file and line (with a did-you-mean), exactly
  like rlaif's pydantic configs; values are checked by ``transformers.HfArgumentParser``.
- ``model_path``: ``smollm2`` means the embedded model (converted once, offline); anything else
  is resolved by ``rlaif.models.resolve_model``.
- precision: every *trainable* model (SFT policy, the reward model being trained, the DPO / GRPO /
  RLOO / online-DPO policy) is loaded in fp32 (``TRAINABLE_DTYPE``), whatever dtype its
  checkpoint was saved in: transformers loads a checkpoint's own dtype by default, and a bf16
  checkpoint trained in bf16 has no fp32 master weights (an update below bf16's resolution,
  about 4e-3 relative, is lost). ``bf16: true`` (the default on a GPU that supports it) is then
  mixed precision: the optimizer keeps fp32 weights and the forward/backward run under bf16
  autocast. Frozen models follow the trainer: see each trainer's docstring.
- ``MetricsCallback``: every logged step goes to ``metrics.jsonl`` in the output folder (main
  process only), and a non-finite loss (or gradient norm, but under fp16 loss scaling) stops the
  run on every process with ``TrainingDivergedError`` naming the step, before that step's
  checkpoint is written (transformers' ``logging_nan_inf_filter``, which
  would hide it, is off). PNG plots of loss, reward, KL and length are drawn at the end.
- checkpoints and resume: a checkpoint every ``save_steps`` (``save_total_limit: 1`` keeps the
  newest *complete* one: a checkpoint counts once its ``trainer_state.json``, written last, is
  there). With ``resume: true`` (the default) a rerun of the same command continues from the
  newest complete checkpoint in ``output_dir`` and ``metrics.jsonl`` keeps only the rows up to its
  step; ``resume: false`` starts over and removes old checkpoints. Once the final model is saved
  the checkpoint folders are removed: a finished run has nothing to resume.
- ``finish_training``: the final model is saved once, through the trainer
  (``trainer.save_model`` gathers ZeRO-3 / FSDP shards and writes on the main process). With
  LoRA the trainer saves the adapter, then the main process merges it into a fresh fp32 copy of
  the base model and writes that, so the output loads without peft. Tokenizer, settings and
  plots are written by the main process only.
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
from rlaif.resources import locate

C = TypeVar("C")

METRICS_FILE = "metrics.jsonl"
TRAINABLE_DTYPE = "float32"  # see the module docstring: fp32 master weights, bf16 autocast


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
        path = locate(path, "recipe")  # a path, or a shipped recipe by name (train/sft)
        root, _ = parse_yaml(path, ConfigFileError)
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


def causal_lm_loader(path: str) -> Any:
    """A loader of the trainable causal LM at ``path`` in fp32 (see the module docstring): the
    trainer's model, and with LoRA the fresh base that ``finish_training`` merges into."""

    def load() -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(path, dtype=TRAINABLE_DTYPE)

    return load


def load_jsonl_dataset(path: str | Path) -> Any:
    from rlaif.data.datasets_io import load_local_dataset

    try:
        return load_local_dataset(path)
    except FileNotFoundError:
        raise ConfigError(f"dataset not found: {Path(path)}") from None


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


def raise_if_nonfinite(record: dict[str, Any], step: int, keys: Sequence[str] = LOSS_KEYS) -> None:
    """Stop a run whose loss went NaN/inf: ``TrainingDivergedError`` naming the step and keys."""
    from rlaif.errors import TrainingDivergedError

    bad = [
        k for k in keys if isinstance(record.get(k), float | int) and not math.isfinite(record[k])
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
    "kl": ("kl", "kl_k3", "objective/kl", "beta"),
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
            if not logs:
                return
            if state.is_world_process_zero:
                append_metrics(out_dir, {"step": state.global_step, **logs})
            # the logged loss is gathered over processes: every process stops at the same step.
            # A non-finite gradient norm has already made the weights NaN (clipping scales by
            # it), except under fp16 loss scaling, which skips such steps on purpose.
            keys = LOSS_KEYS if args.fp16 else (*LOSS_KEYS, "grad_norm")
            raise_if_nonfinite(logs, state.global_step, keys)

    return MetricsCallback()


def fresh_metrics(out_dir: str | Path) -> None:
    (Path(out_dir) / METRICS_FILE).unlink(missing_ok=True)


def keep_metrics_until(
    out_dir: str | Path, step: int, names: Sequence[str] = (METRICS_FILE,)
) -> None:
    """Rows of steps after ``step`` belong to the run that stopped after that checkpoint: each
    JSONL log in ``names`` keeps only the rows up to it."""
    for name in names:
        path = Path(out_dir) / name
        if not path.exists():
            continue
        rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
        kept = [r for r in rows if r.get("step", 0) <= step]
        path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")


# the settings of any trainer that name a model
MODEL_KEYS = ("model", "ref_model", "reward_model")


def hub_commits(names: Any) -> dict[str, str]:
    """``{hub id: commit sha}`` for the names that are Hub ids (resolved once per process)."""
    from rlaif.models import hub_model

    out = {}
    for name in names:
        hub = hub_model(name) if isinstance(name, str) else None
        if hub is not None:
            out[name] = hub.commit
    return out


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
        elif f.name == "mix" and isinstance(v, list):  # the mixed-in datasets, as given
            values[f.name] = json.loads(json.dumps(v, default=str))
    record: dict[str, Any] = {"trainer": kind, "config": values}
    hub = hub_commits(values.get(k) for k in MODEL_KEYS)
    if hub:
        record["hub_commits"] = hub  # the snapshot each Hub id was trained from
    path = Path(out_dir) / "rlaif_train.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2), encoding="utf-8")
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
    """What every TRL-based trainer config adds: LoRA, resume, and logging/saving defaults (a
    log line per step, a checkpoint every ``save_steps`` of which only the newest is kept)."""

    lora: bool = field(default=False, metadata={"help": "LoRA adapters (peft), merged at the end"})
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    resume: bool = field(
        default=True, metadata={"help": "continue from the newest checkpoint in output_dir"}
    )
    logging_steps: float = 1
    logging_nan_inf_filter: bool = False  # a NaN loss stops the run instead of being averaged away
    save_strategy: str = "steps"
    save_steps: float = 100
    save_total_limit: int | None = 1


@dataclass
class MixOptions:
    """The ``mix`` setting of the trainers that read preference pairs (reward model, DPO):
    other preference data mixed into the AI pairs (``rlaif.data.mix``), checked when the config
    is built so a bad entry fails before any model loads."""

    mix: list[dict[str, Any]] = field(
        default_factory=list,
        metadata={"help": "preference data mixed in: entries with path, weight, limit, "
                  "preference_prob (the reward model's soft label), source, split, data_dir "
                  "(rlaif.data.mix)"},
    )  # fmt: skip

    def __post_init__(self) -> None:
        from rlaif.data.mix import check_mix

        self.mix = check_mix(self.mix)
        super().__post_init__()  # type: ignore[misc]  # the TRL config's own checks


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


CHECKPOINT_PREFIX = "checkpoint-"


def checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of the ``checkpoint-N`` folders in ``out_dir``, oldest first."""
    found = []
    for d in Path(out_dir).glob(f"{CHECKPOINT_PREFIX}*"):
        tail = d.name[len(CHECKPOINT_PREFIX) :]
        if d.is_dir() and tail.isdigit():
            found.append((int(tail), d))
    return sorted(found)


def last_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete checkpoint: transformers writes ``trainer_state.json`` last, so a
    folder without it is a save that was killed half way."""
    complete = [d for _, d in checkpoints(out_dir) if (d / "trainer_state.json").is_file()]
    return complete[-1] if complete else None


def remove_checkpoints(out_dir: str | Path, keep: Path | None = None) -> None:
    import shutil

    for _, d in checkpoints(out_dir):
        if d != keep:
            shutil.rmtree(d, ignore_errors=True)


def start_or_resume(trainer: Any, cfg: Any, out: Path, kind: str) -> str | None:
    """The checkpoint to resume from (None: from scratch), with ``metrics.jsonl`` and the
    checkpoint folders made to match on the main process."""
    resume = last_checkpoint(out) if getattr(cfg, "resume", False) else None
    if trainer.is_world_process_zero():
        remove_checkpoints(out, keep=resume)  # half-written ones, or all of them from scratch
        if resume is None:
            fresh_metrics(out)
        else:
            step = int(resume.name[len(CHECKPOINT_PREFIX) :])
            keep_metrics_until(out, step)
            print(f"{kind}: resuming after step {step} from {resume}", flush=True)
    trainer.accelerator.wait_for_everyone()
    return str(resume) if resume else None


def finish_training(
    trainer: Any,
    cfg: Any,
    out: Path,
    tokenizer: Any,
    kind: str,
    title: str,
    load_base: Any = None,
) -> Path:
    """Train (resuming from the newest checkpoint), then save once (see the module docstring):
    the model (LoRA merged into ``load_base()``, the fp32 base model, so it loads without
    peft), the tokenizer, the resolved settings and the plots in ``out``."""
    import shutil

    trainer.train(resume_from_checkpoint=start_or_resume(trainer, cfg, out, kind))
    lora = getattr(cfg, "lora", False)
    adapter = out / "adapter"
    trainer.save_model(str(adapter if lora else out))  # every process: gathers sharded weights
    main_process = trainer.is_world_process_zero()
    if main_process:
        if lora:
            from peft import PeftModel

            if load_base is None:
                raise ValueError("finish_training: LoRA needs load_base to merge the adapter")
            merged = PeftModel.from_pretrained(load_base(), str(adapter)).merge_and_unload()
            merged.save_pretrained(out)
            shutil.rmtree(adapter, ignore_errors=True)
        tokenizer.save_pretrained(out)
        save_run_config(out, cfg, kind)
        write_plots(out, title)
        remove_checkpoints(out)  # finished: nothing to resume
    state = trainer.accelerator.state
    if state.num_processes > 1:
        print(f"{kind}: process {state.process_index} of {state.num_processes} done", flush=True)
    trainer.accelerator.wait_for_everyone()
    return out
