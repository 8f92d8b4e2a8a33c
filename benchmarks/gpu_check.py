"""Every trainer a few steps on a random-init Llama: tokens/s and peak memory, one table.

Meant for one 10-minute call on one GPU (see ``gpu_check.sh``): the model is built from a config
(~0.5B parameters with ``--size 0.5b``), so no weights travel; only the SmolLM2 tokenizer does
(``--save-tokenizer DIR`` writes it here first, a few MB). Data are synthetic rows of the shapes
rlaif writes (SL-CAI ``messages``, preference pairs, prompts). Trainers whose libraries are missing
on the machine (TRL, datasets) are reported as skipped, not hidden.

tokens/s counts the tokens of the training batches (prompt + response, both sides of a pair) and,
for the RL trainers, the generated tokens, divided by the wall time of the steps after the first
(the first step pays for compilation and warm-up). Peak memory is
``torch.cuda.max_memory_allocated`` over the trainer's run.

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


class StepTimer:
    """A TrainerCallback that times each optimiser step."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        timer = self

        class _CB(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
                timer._t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                timer.times.append(time.perf_counter() - timer._t0)

        self.times: list[float] = []
        self._t0 = 0.0
        self.callback = _CB()


def tokens_per_example(tokenizer_dir: Path, kind: str) -> int:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)

    def n(messages: list[dict[str, str]]) -> int:
        return len(tok.apply_chat_template(messages, tokenize=True))

    user = [{"role": "user", "content": PROMPTS[0]}]
    safe = [*user, {"role": "assistant", "content": SAFE}]
    unsafe = [*user, {"role": "assistant", "content": UNSAFE}]
    return {"sft": n(safe), "pair": n(safe) + n(unsafe), "prompt": n(user)}[kind]


def run_trainer(name: str, fn, steps: int) -> dict:  # type: ignore[no-untyped-def]
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    try:
        times, tokens_per_step = fn()
    except ImportError as e:
        return {"trainer": name, "status": f"skipped: {e}"}
    except Exception as e:  # report and go on: one broken trainer must not hide the others
        traceback.print_exc()
        return {"trainer": name, "status": f"failed: {type(e).__name__}: {e}"[:300]}
    steady = times[1:] or times
    seconds = sum(steady)
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return {
        "trainer": name,
        "status": "ok",
        "steps": len(times),
        "s_per_step": round(seconds / len(steady), 3),
        "tokens_per_s": round(tokens_per_step * len(steady) / seconds, 1) if seconds else None,
        "peak_gib": round(peak, 2) if peak is not None else None,
        "wall_s": round(time.perf_counter() - started, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", type=Path, default=Path(".bench/tokenizer"))
    ap.add_argument("--save-tokenizer", type=Path, metavar="DIR")
    ap.add_argument("--size", choices=sorted(SIZES), default="0.5b")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--only", nargs="*", help="run only these trainers")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "outputs/gpu-check")))
    args = ap.parse_args()
    if args.save_tokenizer:
        from rlaif.models import load_embedded_tokenizer

        load_embedded_tokenizer("smollm2").save_pretrained(args.save_tokenizer)
        print(f"saved the SmolLM2 tokenizer to {args.save_tokenizer}")
        return 0

    gpu = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if gpu else "CPU"
    print(f"device: {device}; torch {torch.__version__}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="rlaif-gpu-check-"))
    model = build_model(args.tokenizer, args.size, work)
    data = write_data(work)
    b, steps = args.batch, args.steps
    common = {"max_steps": steps, "use_cpu": not gpu, "bf16": gpu, "report_to": [],
              "save_strategy": "no", "logging_steps": 1}  # fmt: skip
    per = {k: tokens_per_example(args.tokenizer, k) for k in ("sft", "pair", "prompt")}
    gen = 64

    def trl_run(module: str, config: str, main: str, extra: dict, tokens: int, **kw):  # type: ignore[no-untyped-def]
        import importlib

        import transformers

        from rlaif.train import common as train_common

        mod = importlib.import_module(module)
        timer = StepTimer()
        cfg = train_common.load_recipe(
            getattr(mod, config), None, output_dir=str(work / "out" / config), **common, **extra
        )
        original = transformers.Trainer.__init__

        def with_timer(self, *a, **k):  # type: ignore[no-untyped-def]
            k["callbacks"] = [*(k.get("callbacks") or []), timer.callback]
            original(self, *a, **k)

        transformers.Trainer.__init__ = with_timer
        try:
            getattr(mod, main)(cfg, **kw)
        finally:
            transformers.Trainer.__init__ = original
        return timer.times, tokens

    def ppo_run():  # type: ignore[no-untyped-def]
        from rlaif.train import ppo

        cfg = ppo.PPORunConfig(
            model=str(model), reward_model=str(rm_dir()), prompts=str(data["prompts"]),
            output_dir=str(work / "out" / "ppo"), steps=steps, batch_size=b,
            mini_batch_size=b // 2, max_new_tokens=gen, bf16=gpu, use_cpu=not gpu,
        )  # fmt: skip
        times = []
        real_optimise = ppo.optimise

        def timed(*a, **k):  # type: ignore[no-untyped-def]
            t0 = time.perf_counter()
            out = real_optimise(*a, **k)
            times.append(time.perf_counter() - t0)
            return out

        ppo.optimise = timed
        try:
            ppo.main(cfg)
        finally:
            ppo.optimise = real_optimise
        return times, b * (per["prompt"] + gen) * cfg.ppo_epochs

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
                                b * (per["prompt"] + gen)),
        "rloo": lambda: trl_run("rlaif.train.grpo", "RLOORunConfig", "main_rloo",
                                {**group, "model": str(model), "reward_model": str(rm_dir())},
                                b * (per["prompt"] + gen)),
        "online-dpo": lambda: trl_run("rlaif.train.dpo", "OnlineDPORunConfig", "main_online",
                                      {"model": str(model), "prompts": str(data["prompts"]),
                                       "per_device_train_batch_size": b // 2,
                                       "max_new_tokens": gen},
                                      b * (per["prompt"] + gen), judge=LengthJudge()),
        "ppo (ours)": ppo_run,
    }  # fmt: skip
    results = []
    for name, fn in plan.items():
        if args.only and name.split()[0] not in args.only:
            continue
        print(f"--- {name}", flush=True)
        results.append(run_trainer(name, fn, steps))
        print(json.dumps(results[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"device": device, "size": args.size, "batch": b, "steps": steps, "results": results}
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    print(f"\n{device}, random-init Llama {args.size}, batch {b}, {steps} steps each")
    print(f"{'trainer':<18}{'status':<10}{'s/step':>9}{'tokens/s':>11}{'peak GiB':>10}")
    for r in results:
        if r["status"] != "ok":
            print(f"{r['trainer']:<18}{r['status']}")
            continue
        peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
        print(f"{r['trainer']:<18}{'ok':<10}{r['s_per_step']:>9.3f}{r['tokens_per_s']:>11.1f}"
              f"{peak:>10}")  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)
    return (
        0 if all(r["status"] == "ok" or r["status"].startswith("skipped") for r in results) else 1
    )


if __name__ == "__main__":
    sys.exit(main())
