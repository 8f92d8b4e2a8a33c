"""Tokens/s of the engine's batched generation vs one request at a time, on the same CPU.

Both sides go through the same Scheduler (fresh in-memory cache, so every request reaches the
model) with greedy decoding and the same prompts and max_tokens; only the batch size differs.
Run: .venv/bin/python benchmarks/local_batching.py [--prompts N] [--batch 16] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from rlaif.data.sources import read_prompts
from rlaif.engine.cache import Cache
from rlaif.engine.scheduler import Scheduler
from rlaif.labelers.base import GenerateParams, create_labeler
from rlaif.resources import demo_prompts


async def measure(labeler, prompts, batch, params):
    sched = Scheduler(labeler, Cache(None), max_batch=batch)
    started = time.perf_counter()
    results = await asyncio.gather(
        *(sched.generate([{"role": "user", "content": p}], params) for p in prompts)
    )
    seconds = time.perf_counter() - started
    await sched.aclose()
    tokens = sum(r[0].completion_tokens for r in results)
    return tokens, seconds, sched.stats.labeler_calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()
    base = [r.prompt for r in read_prompts(demo_prompts())]
    prompts = [
        base[i % len(base)] + ("" if i < len(base) else f" (variant {i})")
        for i in range(args.prompts)
    ]
    params = GenerateParams(temperature=0.0, max_tokens=args.max_tokens)
    labeler = create_labeler("smollm2", batch_size=args.batch, device="cpu")
    labeler.load()
    asyncio.run(measure(labeler, prompts[:2], 2, params))  # warm-up
    one = asyncio.run(measure(labeler, prompts, 1, params))
    many = asyncio.run(measure(labeler, prompts, args.batch, params))
    print(f"SmolLM2-135M on CPU, {args.prompts} prompts, greedy, max_tokens {args.max_tokens}")
    for name, (tok, sec, calls) in (("one at a time", one), (f"batched ({args.batch})", many)):
        print(
            f"  {name:<16} {tok:6d} tokens in {sec:7.1f} s = {tok / sec:7.1f} tok/s "
            f"({calls} model calls)"
        )
    ratio = (many[0] / many[1]) / (one[0] / one[1])
    print(f"  speed-up: {ratio:.1f}x tokens/s (goal >= 4x)")


if __name__ == "__main__":
    main()
