"""PPO rollout tokens/s: HF ``generate`` vs a colocated vLLM engine, same prompts, same model.

Both sides sample one completion per prompt with PPO's sampler settings (temperature 1, no
top-k, ``max_new_tokens``, stop at EOS) into the same tensors, through ``ppo_rollout.rollout``
with and without the vLLM sampler. Two figures per side:

- **sampling**: the completion tokens (up to and including EOS) over the time of the sampling
  call alone (``generate``, or the engine's ``generate`` plus the padding into a tensor);
- **rollout**: the same tokens over the whole rollout, which adds the policy's and the
  reference's forward passes over prompt + completion (the same code for both samplers).

Each side gets one untimed warm-up batch, then ``--rounds`` timed batches of ``--prompts``
prompts. The vLLM engine's start (tens of seconds on a CPU) is reported, not timed in the rates.

    python benchmarks/ppo_rollout.py                          # embedded SmolLM2-135M, CPU or GPU
    python benchmarks/ppo_rollout.py --tokenizer .bench/tokenizer --size 0.5b   # random-init
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # gpu_check
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # rlaif


def model_dir(args: argparse.Namespace) -> Path:
    if args.size:  # a random-init Llama from the GPU check (no weights travel)
        from gpu_check import build_model

        return build_model(args.tokenizer, args.size, Path(tempfile.mkdtemp(prefix="rlaif-")))
    if args.model:
        from rlaif.models import resolve_model

        return resolve_model(args.model)
    from rlaif.models import EMBEDDED, ensure_converted

    return ensure_converted(EMBEDDED["smollm2"])


def timed_rollouts(accelerator, model, ref, tok, prompts, cfg, sampler, rounds):  # type: ignore[no-untyped-def]
    """(completion tokens, sampling seconds, rollout seconds) over ``rounds`` batches."""
    from rlaif.train import ppo_rollout

    sampling = [0.0]
    real = ppo_rollout.own_generation_config

    def sync() -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    # the sampling call sits between entering and leaving generate's context (HF) or inside
    # the sampler's complete (vLLM): time it there
    if sampler is None:
        import contextlib

        @contextlib.contextmanager
        def clocked(policy):  # type: ignore[no-untyped-def]
            t0 = sync()
            with real(policy):
                yield
            sampling[0] += sync() - t0

        ppo_rollout.own_generation_config = clocked
    else:
        complete = sampler.complete

        def clocked_complete(*a, **k):  # type: ignore[no-untyped-def]
            t0 = sync()
            out = complete(*a, **k)
            sampling[0] += sync() - t0
            return out

        sampler.complete = clocked_complete
    tokens, total = 0, 0.0
    try:
        ppo_rollout.rollout(accelerator, model, ref, tok, prompts, cfg, tok.eos_token_id, sampler)
        sampling[0] = 0.0  # the warm-up batch is not counted
        for _ in range(rounds):
            t0 = sync()
            roll = ppo_rollout.rollout(
                accelerator, model, ref, tok, prompts, cfg, tok.eos_token_id, sampler
            )
            total += sync() - t0
            tokens += int(roll["mask"].sum().item())
    finally:
        ppo_rollout.own_generation_config = real
        if sampler is not None:
            sampler.complete = complete
    return tokens, sampling[0], total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="local folder or Hub id (default: the embedded SmolLM2)")
    ap.add_argument("--tokenizer", type=Path, default=Path(".bench/tokenizer"))
    ap.add_argument("--size", help="a random-init Llama of this size (gpu_check's SIZES)")
    ap.add_argument("--prompts", type=int, default=16, help="prompts per rollout batch")
    ap.add_argument("--rounds", type=int, default=2, help="timed batches per side")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.3)
    ap.add_argument("--threads", type=int, help="torch CPU threads for both sides")
    ap.add_argument("--out", type=Path, help="write ppo_rollout.json here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from accelerate import Accelerator
    from transformers import AutoTokenizer

    from rlaif.resources import demo_prompts
    from rlaif.train.ppo_rollout import PolicyWithValue, load_causal_lm
    from rlaif.train.ppo_vllm import VLLMSampler

    gpu = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if gpu else "CPU"
    path = model_dir(args)
    accelerator = Accelerator(cpu=not gpu, mixed_precision="bf16" if gpu else "no")
    tok = AutoTokenizer.from_pretrained(path, padding_side="left")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    texts = [line.strip() for line in Path(demo_prompts()).read_text().splitlines() if line.strip()]
    prompts = (texts * (args.prompts // len(texts) + 1))[: args.prompts]
    model = PolicyWithValue(load_causal_lm(path)).to(accelerator.device)
    ref = load_causal_lm(path).to(accelerator.device)
    cfg = SimpleNamespace(max_new_tokens=args.max_new_tokens, temperature=1.0, top_p=1.0,
                          bf16=gpu, seed=0, vllm_gpu_memory_utilization=args.gpu_memory_utilization,
                          vllm_max_model_len=2048)  # fmt: skip
    print(f"device: {device}; model {path.name}; {args.prompts} prompts x {args.rounds} rounds, "
          f"up to {args.max_new_tokens} new tokens; torch threads {torch.get_num_threads()}",
          flush=True)  # fmt: skip
    torch.manual_seed(0)
    rows = {"hf generate": timed_rollouts(accelerator, model, ref, tok, prompts, cfg, None,
                                          args.rounds)}  # fmt: skip
    t0 = time.perf_counter()
    try:
        sampler = VLLMSampler.start(accelerator, path, cfg, tok.eos_token_id)
    except Exception as exc:  # report the reason, keep the HF row
        print(f"vllm: skipped ({type(exc).__name__}: {exc})")
        sampler = None
    start_s = time.perf_counter() - t0
    if sampler is not None:
        print(f"vllm engine started in {start_s:.1f} s", flush=True)
        sampler.sync(model.policy)
        torch.manual_seed(0)
        rows["vllm"] = timed_rollouts(accelerator, model, ref, tok, prompts, cfg, sampler,
                                      args.rounds)  # fmt: skip
        sampler.close()
    print(f"\n{'sampler':<14}{'tokens':>8}{'sampling s':>12}{'sampling tok/s':>16}"
          f"{'rollout s':>11}{'rollout tok/s':>15}")  # fmt: skip
    report = {"device": device, "model": path.name, "prompts": args.prompts,
              "rounds": args.rounds, "max_new_tokens": args.max_new_tokens,
              "vllm_start_s": round(start_s, 1) if sampler is not None else None,
              "results": {}}  # fmt: skip
    for name, (tokens, sampling, total) in rows.items():
        report["results"][name] = {"tokens": tokens, "sampling_s": round(sampling, 2),
                                   "sampling_tok_s": round(tokens / sampling, 1),
                                   "rollout_s": round(total, 2),
                                   "rollout_tok_s": round(tokens / total, 1)}  # fmt: skip
        print(f"{name:<14}{tokens:>8}{sampling:>12.2f}{tokens / sampling:>16.1f}"
              f"{total:>11.2f}{tokens / total:>15.1f}")  # fmt: skip
    if "vllm" in report["results"]:
        hf, vl = report["results"]["hf generate"], report["results"]["vllm"]
        report["sampling_ratio"] = round(vl["sampling_tok_s"] / hf["sampling_tok_s"], 2)
        report["rollout_ratio"] = round(vl["rollout_tok_s"] / hf["rollout_tok_s"], 2)
        print(f"vllm / hf generate: sampling {report['sampling_ratio']:.2f}x, "
              f"whole rollout {report['rollout_ratio']:.2f}x")  # fmt: skip
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "ppo_rollout.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
