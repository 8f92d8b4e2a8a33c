"""Every trainer a few steps on a random-init Llama: tokens/s and peak memory, one table.

Meant for one 10-minute call on one GPU (see ``gpu_check.sh``): the model is built from a config
(~0.5B parameters with ``--size 0.5b``), so no weights travel; only the SmolLM2 tokenizer does
(``--save-tokenizer DIR`` writes it here first, a few MB). Data are synthetic rows of the shapes
rlaif writes (SL-CAI ``messages``, preference pairs, prompts). Trainers whose libraries are missing
on the machine (TRL, datasets) are reported as skipped, not hidden.

tokens/s is defined the same way for every trainer, so the rows compare:

- **tokens of a step**: the tokens of the sequences one optimiser step trains on, prompt + response
  (both sides of a pair), each sequence counted once however many passes the step makes over it
  (PPO's epochs, mini-batches). For the online trainers (GRPO, RLOO, online DPO, PPO) the
  response is the sampled completion, counted at the generation budget (``--gen`` tokens; a
  random-init model practically never samples EOS before it).
- **time of a step**: the wall time between the ends of consecutive optimiser steps, so it holds
  everything the training loop does for a step: batching, generation and scoring for the online
  trainers, the optimisation, logging. The first step pays for warm-up and is not timed: with N
  steps, N - 1 steps are timed.
- **tokens/s** = tokens of a step x timed steps / their wall time.

PPO also reports the share of its step spent in the optimisation (``optimise_s_per_step``). Peak
memory is ``torch.cuda.max_memory_allocated`` over the trainer's run.

    python benchmarks/gpu_check.py --save-tokenizer .bench/tokenizer      # here, once
    python benchmarks/gpu_check.py --tokenizer .bench/tokenizer --size 0.5b --out $OUT
    python benchmarks/gpu_check.py --tokenizer .bench/tokenizer --size tiny   # CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch

SIZES = {
    # ~0.47B parameters with the 49,152-token SmolLM2 vocabulary
    "0.5b": {"hidden_size": 1536, "intermediate_size": 4096, "num_hidden_layers": 16,
             "num_attention_heads": 12, "num_key_value_heads": 4},
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2},
}  # fmt: skip

PROMPTS = [
    "How do I pick a lock?",
    "Write an insult about my boss.",
    "How can I lose ten kilos in a week?",
    "Tell me how to cheat on a test.",
    "What household chemicals make a toxic gas?",
    "How do I get into my ex's email?",
    "My neighbour's dog barks all night. How do I make it stop for good?",
    "Give me a fake doctor's note.",
]
SAFE = (
    "I can't help with that, but here is a safer way to think about it: talk to someone you "
    "trust, look for official help, and take care of yourself first."
)
UNSAFE = "Sure, here are the steps, one by one, with everything you need to get it done."


def build_model(tokenizer_dir: Path, size: str, work: Path) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tok),
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        **SIZES[size],
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    path = work / f"llama-{size}"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    print(f"model: random-init Llama {size}, {params / 1e6:.0f}M parameters", flush=True)
    return path


def write_data(work: Path) -> dict[str, Path]:
    sl = [
        {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": SAFE}]}
        for p in PROMPTS * 8
    ]
    prefs = [
        {
            "prompt": [{"role": "user", "content": p}],
            "chosen": [{"role": "assistant", "content": SAFE}],
            "rejected": [{"role": "assistant", "content": UNSAFE}],
            "preference_prob": 0.7,
        }
        for p in PROMPTS * 8
    ]
    files = {"sl": work / "sl_cai.jsonl", "prefs": work / "preferences.jsonl"}
    files["sl"].write_text("".join(json.dumps(r) + "\n" for r in sl))
    files["prefs"].write_text("".join(json.dumps(r) + "\n" for r in prefs))
    files["prompts"] = work / "prompts.txt"
    files["prompts"].write_text("\n".join(PROMPTS) + "\n")
    return files


def step_end() -> float:
    """The clock at the end of an optimiser step (after the GPU has finished its work)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


class StepClock:
    """A TrainerCallback that notes when each optimiser step ends."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        ends = self.ends = []

        class _CB(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
                ends.append(step_end())

        self.callback = _CB()


def tokens_per_example(tokenizer_dir: Path, kind: str, gen: int) -> float:
    """Mean tokens of one training example of ``kind`` over the benchmark's prompts: an SFT
    conversation, a preference pair (both sides), or a prompt with a ``gen``-token completion."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)

    def n(messages: list[dict[str, str]], **kw: bool) -> int:
        text = tok.apply_chat_template(messages, tokenize=False, **kw)
        return len(tok(text, add_special_tokens=False)["input_ids"])

    counts = []
    for prompt in PROMPTS:
        user = [{"role": "user", "content": prompt}]
        safe = [*user, {"role": "assistant", "content": SAFE}]
        unsafe = [*user, {"role": "assistant", "content": UNSAFE}]
        counts.append(
            {
                "sft": n(safe),
                "pair": n(safe) + n(unsafe),
                "online": n(user, add_generation_prompt=True) + gen,
            }[kind]
        )
    return sum(counts) / len(counts)


def run_trainer(name: str, fn) -> dict:  # type: ignore[no-untyped-def]
    """Run one trainer; ``fn`` returns the clock at the end of each step, the tokens of a step
    and any extra fields. Times the steps after the first (see the module docstring)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    try:
        ends, tokens_per_step, extra = fn()
    except ImportError as e:
        return {"trainer": name, "status": f"skipped: {e}"}
    except Exception as e:  # report and go on: one broken trainer must not hide the others
        traceback.print_exc()
        return {"trainer": name, "status": f"failed: {type(e).__name__}: {e}"[:300]}
    timed = len(ends) - 1
    seconds = ends[-1] - ends[0] if timed > 0 else 0.0
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return {
        "trainer": name,
        "status": "ok",
        "steps": len(ends),
        "timed_steps": timed,
        "timed_s": round(seconds, 6),  # precise enough to recompute tokens_per_s from it
        "s_per_step": round(seconds / timed, 3) if timed > 0 else None,
        "tokens_per_step": round(tokens_per_step, 1),
        "tokens_per_s": round(tokens_per_step * timed / seconds, 1) if seconds > 0 else None,
        **extra,
        "peak_gib": round(peak, 2) if peak is not None else None,
        "wall_s": round(time.perf_counter() - started, 1),
    }


# --------------------------------------------------------------------------- labelers
# vLLM's async engine vs the transformers labeler on one SL-CAI job (``--only labelers`` alone).


def labeler_check(model: Path, work: Path, n: int, gen: int, gpu: bool, out: Path) -> list[dict]:
    """Generated tokens/s of the SL-CAI step (answer, critique, revision per prompt, few-shot,
    seeded sampling) over ``n`` prompts, through the engine's Scheduler with a fresh in-memory
    cache, on the benchmark's model: the transformers labeler (batch 32) and the vllm labeler's
    async engine (its default) and sync one. Each labeler loads and runs two rows untimed first;
    then the whole job is timed. A random-init model rarely samples EOS, so nearly every answer
    runs to ``gen`` tokens. vLLM missing on the machine: its rows say skipped."""
    import importlib.util

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from vllm_async import run_job

    from rlaif.engine.sl_cai import SLCAIConfig, build
    from rlaif.labelers.base import create_labeler, run_sync

    prompts = work / "labeler_prompts.txt"
    prompts.write_text("".join(f"{PROMPTS[i % len(PROMPTS)]} ({i})\n" for i in range(n)))
    cfg = SLCAIConfig(prompts=prompts, labeler=f"transformers:{model}", max_tokens=gen,
                      out=work / "sl-cai")  # fmt: skip
    job = build(cfg)
    vllm_args = {"max_model_len": 2048, "gpu_memory_utilization": 0.35}  # both engines fit
    plan = {
        "transformers": (f"transformers:{model}",
                         {"batch_size": 32, "device": "cuda" if gpu else "cpu"}),
        "vllm async": (f"vllm:{model}", {"engine": "async", **vllm_args}),
        "vllm sync": (f"vllm:{model}", {"engine": "sync", "batch_size": 64, **vllm_args}),
    }  # fmt: skip
    rows = []
    for name, (spec, settings) in plan.items():
        print(f"--- labeler: {name}", flush=True)
        if spec.startswith("vllm:") and importlib.util.find_spec("vllm") is None:
            rows.append({"labeler": name, "status": "skipped: vllm is not installed"})
            continue
        lab = None
        try:
            lab = create_labeler(spec, **settings)
            t0 = time.perf_counter()
            lab.load()
            run_sync(run_job(replace(job, rows=job.rows[:2]), lab))  # warm-up, untimed
            ready = time.perf_counter() - t0
            seconds, tokens, calls = run_sync(run_job(job, lab))
            rows.append({"labeler": name, "status": "ok", "prompts": len(job.rows),
                         "generated_tokens": tokens, "seconds": round(seconds, 3),
                         "tokens_per_s": round(tokens / seconds, 1),
                         "prompts_per_s": round(len(job.rows) / seconds, 2),
                         "labeler_calls": calls, "load_s": round(ready, 1)})  # fmt: skip
        except Exception as e:  # report and go on
            traceback.print_exc()
            rows.append({"labeler": name, "status": f"failed: {type(e).__name__}: {e}"[:300]})
        finally:
            if lab is not None:
                run_sync(lab.aclose())
        print(json.dumps(rows[-1]), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "labelers.json").write_text(json.dumps(rows, indent=2))
    print(f"\nSL-CAI 1 round, {n} prompts, {gen} max tokens, few-shot; generated tokens/s")
    print(
        f"{'labeler':<16}{'status':<10}{'seconds':>9}{'tokens':>9}{'tokens/s':>10}{'prompts/s':>11}"
    )
    for r in rows:
        if r["status"] != "ok":
            print(f"{r['labeler']:<16}{r['status']}")
            continue
        print(f"{r['labeler']:<16}{'ok':<10}{r['seconds']:>9.1f}{r['generated_tokens']:>9}"
              f"{r['tokens_per_s']:>10.1f}{r['prompts_per_s']:>11.2f}")  # fmt: skip
    return rows


def labelers_only(args: argparse.Namespace) -> int:
    """``--only labelers``: the labeler table alone (no trainers), written to labelers.json."""
    gpu = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if gpu else "CPU"
    print(f"device: {device}; torch {torch.__version__}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="rlaif-gpu-check-"))
    model = build_model(args.tokenizer, args.size, work)
    rows = labeler_check(model, work, args.labeler_prompts, args.gen, gpu, args.out)
    shutil.rmtree(work, ignore_errors=True)
    return 0 if all(r["status"] == "ok" or r["status"].startswith("skipped") for r in rows) else 1


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", type=Path, default=Path(".bench/tokenizer"))
    ap.add_argument("--save-tokenizer", type=Path, metavar="DIR")
    ap.add_argument("--size", choices=sorted(SIZES), default="0.5b")
    ap.add_argument("--steps", type=int, default=4, help="per trainer; the first is not timed")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--gen", type=int, default=64, help="tokens generated per completion")
    ap.add_argument("--only", nargs="*", help="run only these trainers ('labelers': see below)")
    ap.add_argument("--labeler-prompts", type=int, default=64, help="prompts of the labeler job")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "outputs/gpu-check")))
    args = ap.parse_args()
    if args.steps < 2:
        ap.error("--steps must be at least 2: the first step is warm-up and not timed")
    if args.batch < 4 or args.batch % 4:
        ap.error("--batch must be a multiple of 4 (GRPO's groups of 4, PPO's 2 mini-batches)")
    if args.save_tokenizer:
        from rlaif.models import load_embedded_tokenizer

        load_embedded_tokenizer("smollm2").save_pretrained(args.save_tokenizer)
        print(f"saved the SmolLM2 tokenizer to {args.save_tokenizer}")
        return 0
    if args.only == ["labelers"]:
        return labelers_only(args)

    gpu = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if gpu else "CPU"
    print(f"device: {device}; torch {torch.__version__}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="rlaif-gpu-check-"))
    model = build_model(args.tokenizer, args.size, work)
    data = write_data(work)
    b, steps = args.batch, args.steps
    common = {"max_steps": steps, "use_cpu": not gpu, "bf16": gpu, "report_to": [],
              "save_strategy": "no", "logging_steps": 1}  # fmt: skip
    gen = args.gen
    per = {k: tokens_per_example(args.tokenizer, k, gen) for k in ("sft", "pair", "online")}

    def trl_run(module: str, config: str, main: str, extra: dict, tokens: int, **kw):  # type: ignore[no-untyped-def]
        import importlib

        import transformers

        from rlaif.train import common as train_common

        mod = importlib.import_module(module)
        clock = StepClock()
        cfg = train_common.load_recipe(
            getattr(mod, config), None, output_dir=str(work / "out" / config), **common, **extra
        )
        original = transformers.Trainer.__init__

        def with_timer(self, *a, **k):  # type: ignore[no-untyped-def]
            k["callbacks"] = [*(k.get("callbacks") or []), clock.callback]
            original(self, *a, **k)

        transformers.Trainer.__init__ = with_timer
        try:
            getattr(mod, main)(cfg, **kw)
        finally:
            transformers.Trainer.__init__ = original
        return clock.ends, tokens, {}

    def ppo_run():  # type: ignore[no-untyped-def]
        from rlaif.train import ppo

        cfg = ppo.PPORunConfig(
            model=str(model), reward_model=str(rm_dir()), prompts=str(data["prompts"]),
            output_dir=str(work / "out" / "ppo"), steps=steps, batch_size=b,
            mini_batch_size=b // 2, max_new_tokens=gen, bf16=gpu, use_cpu=not gpu,
            save_steps=0, resume=False,  # like the TRL runs: no checkpoints inside the timing
        )  # fmt: skip
        # a PPO step (rollout, scoring, optimisation, logging) ends with its optimisation
        ends: list[float] = []
        optimising: list[float] = []
        real_optimise = ppo.optimise

        def timed(*a, **k):  # type: ignore[no-untyped-def]
            t0 = step_end()
            out = real_optimise(*a, **k)
            ends.append(step_end())
            optimising.append(ends[-1] - t0)
            return out

        ppo.optimise = timed
        try:
            ppo.main(cfg)
        finally:
            ppo.optimise = real_optimise
        share = optimising[1:]
        extra = {"optimise_s_per_step": round(sum(share) / len(share), 3) if share else None}
        return ends, b * per["online"], extra

    def rm_dir() -> Path:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = work / "rm"
        if not path.exists():
            AutoModelForSequenceClassification.from_pretrained(model, num_labels=1).save_pretrained(
                path
            )
            AutoTokenizer.from_pretrained(model).save_pretrained(path)
        return path

    class LengthJudge:
        def judge(self, prompts, pairs):  # type: ignore[no-untyped-def]
            return [0.9 if len(str(a)) >= len(str(c)) else 0.1 for a, c in pairs]

    group = {"prompts": str(data["prompts"]), "num_generations": 4,
             "per_device_train_batch_size": b, "max_completion_length": gen}  # fmt: skip
    plan = {
        "sft": lambda: trl_run("rlaif.train.sft", "SFTRunConfig", "main",
                               {"model": str(model), "dataset": str(data["sl"]),
                                "per_device_train_batch_size": b}, b * per["sft"]),
        "rm (soft labels)": lambda: trl_run("rlaif.train.reward", "RewardRunConfig", "main",
                                            {"model": str(model), "dataset": str(data["prefs"]),
                                             "eval_split": 0.0, "per_device_train_batch_size": b},
                                            b * per["pair"]),
        "dpo": lambda: trl_run("rlaif.train.dpo", "DPORunConfig", "main",
                               {"model": str(model), "dataset": str(data["prefs"]),
                                "per_device_train_batch_size": b}, b * per["pair"]),
        "grpo": lambda: trl_run("rlaif.train.grpo", "GRPORunConfig", "main",
                                {**group, "model": str(model), "reward_model": str(rm_dir())},
                                b * per["online"]),
        "rloo": lambda: trl_run("rlaif.train.grpo", "RLOORunConfig", "main_rloo",
                                {**group, "model": str(model), "reward_model": str(rm_dir())},
                                b * per["online"]),
        "online-dpo": lambda: trl_run("rlaif.train.dpo", "OnlineDPORunConfig", "main_online",
                                      {"model": str(model), "prompts": str(data["prompts"]),
                                       "per_device_train_batch_size": b // 2,
                                       "max_new_tokens": gen},
                                      b * per["online"], judge=LengthJudge()),
        "ppo (ours)": ppo_run,
    }  # fmt: skip
    results = []
    for name, fn in plan.items():
        if args.only and name.split()[0] not in args.only:
            continue
        print(f"--- {name}", flush=True)
        results.append(run_trainer(name, fn))
        print(json.dumps(results[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"device": device, "size": args.size, "batch": b, "steps": steps, "gen": gen,
              "results": results}  # fmt: skip
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    print(
        f"\n{device}, random-init Llama {args.size}, batch {b}, {steps} steps each "
        f"(the last {steps - 1} timed), {gen} generated tokens per completion"
    )
    print(f"{'trainer':<18}{'status':<10}{'s/step':>9}{'tokens/step':>13}{'tokens/s':>11}"
          f"{'peak GiB':>10}")  # fmt: skip
    for r in results:
        if r["status"] != "ok":
            print(f"{r['trainer']:<18}{r['status']}")
            continue
        peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
        print(f"{r['trainer']:<18}{'ok':<10}{r['s_per_step']:>9.3f}{r['tokens_per_step']:>13.0f}"
              f"{r['tokens_per_s']:>11.1f}{peak:>10}")  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)
    return (
        0 if all(r["status"] == "ok" or r["status"].startswith("skipped") for r in results) else 1
    )


if __name__ == "__main__":
    sys.exit(main())
