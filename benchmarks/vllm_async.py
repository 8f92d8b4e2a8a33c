"""The vllm labeler's async engine (continuous batching) vs its synchronous one, on one SL-CAI job.

Both sides run the same job: the SL-CAI step of ``rlaif generate sl-cai`` (answer, critique and
revision for each prompt, with the constitution's few-shot examples), built by the job's own
``build``, over the same prompts and sampling settings (seeded, so both sample the same tokens
wherever vLLM's numerics agree), through the engine's ``Scheduler`` with a fresh in-memory cache,
so every request reaches vLLM. Only the labeler's ``engine`` setting differs:

- ``sync``: ``vllm.LLM`` gets the scheduler's batches whole (up to ``--batch`` conversations, one
  call at a time); a call returns when its slowest sequence ends;
- ``async``: ``AsyncLLM`` gets every conversation as its own request the moment a row asks, and
  returns each as soon as it ends.

Both engines start (and warm up) before anything is timed, then the two jobs alternate
``--repeat`` times (sync, async, sync, async, ...) so other load on the machine falls on both.
Printed per job: prompts/s (prompts / wall time of the job) and tokens/s (generated tokens /
wall time), and the ratio async / sync.

Then, on the sync engine, what one decode step costs with 1, 4, 16 and 64 sequences in it (each
batch decodes 65 tokens, ``ignore_eos``, minus a 1-token call of the same prompts, over 64): a
step's cost ``a + b * n`` says what continuous batching can save. It saves the steps a static
batch spends with few sequences left, each worth about ``a``; where ``b * n`` dominates, there is
little to save. The sync engine's timed runs count their decode steps (a call runs as many as its
longest completion), which gives the sequences it had in a step on average, ``n``: a token costs
it ``a/n + b`` and can cost no engine less than ``b``, so ``1 + a/(b*n)`` is the most that any
scheduling can gain over it on this machine (prefill, the same for both, only lowers that). A
row's answer, critique and revision run one after another, so no engine has more sequences in a
step than the job has rows, ``R``: ``(a/n + b) / (a/R + b)`` is the tighter ceiling.

    .venv/bin/python benchmarks/vllm_async.py [--prompts 32] [--max-tokens 64] [--repeat 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB of KV cache per engine on CPU
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

from rlaif.data.sources import read_prompts
from rlaif.engine.cache import Cache
from rlaif.engine.scheduler import Scheduler
from rlaif.engine.sl_cai import SLCAIConfig, build
from rlaif.labelers.base import create_labeler, run_sync
from rlaif.resources import demo_prompts


def prompt_file(n: int, folder: Path) -> Path:
    base = [r.prompt for r in read_prompts(demo_prompts())]
    lines = [base[i % len(base)] + ("" if i < len(base) else f" (variant {i})") for i in range(n)]
    path = folder / "prompts.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def count_steps(labeler) -> list[int]:  # type: ignore[no-untyped-def]
    """Wraps a sync labeler's ``generate``: the list gets, per call, the decode steps it ran (its
    longest completion, since a static batch runs until its last sequence ends)."""
    calls: list[int] = []
    inner = labeler.generate

    async def generate(conversations, params):  # type: ignore[no-untyped-def]
        out = await inner(conversations, params)
        calls.append(max((c.completion_tokens for cs in out for c in cs), default=0))
        return out

    labeler.generate = generate
    return calls


async def run_job(job, labeler) -> tuple[float, int, int]:  # type: ignore[no-untyped-def]
    """Every row of the job through one scheduler on ``labeler``: wall seconds, generated
    tokens, labeler calls."""
    sched = Scheduler(labeler, Cache(None))
    step = replace(job.step, policy=sched, critic=sched)
    started = time.perf_counter()
    rows = await asyncio.gather(*(step.run_row(r) for r in job.rows))
    seconds = time.perf_counter() - started
    await sched.aclose()
    assert len(rows) == len(job.rows)
    return seconds, sched.stats.generated_tokens, sched.stats.labeler_calls


def _timed(llm, prompts: list[str], tokens: int) -> float:  # type: ignore[no-untyped-def]
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=tokens, ignore_eos=True, temperature=0.7, seed=1)
    t = time.perf_counter()
    llm.generate(prompts, params, use_tqdm=False)
    return time.perf_counter() - t


def step_costs(llm) -> dict[int, float]:  # type: ignore[no-untyped-def]
    """ms per decode step with n sequences in it, on a ``vllm.LLM``."""
    text = "Tell me a long story about a lighthouse keeper and the sea. " * 8
    costs = {}
    for n in (1, 4, 16, 64):
        prompts = [f"{i}: {text}" for i in range(n)]
        first = _timed(llm, prompts, 1)  # prefill (cached from here on) and one token
        costs[n] = 1000 * (_timed(llm, prompts, 65) - first) / 64
    return costs


def fit(costs: dict[int, float]) -> tuple[float, float]:
    """Least-squares ``a`` and ``b`` of ``ms = a + b * n``."""
    ns, ms = list(costs), list(costs.values())
    mean_n, mean_ms = sum(ns) / len(ns), sum(ms) / len(ms)
    b = sum((n - mean_n) * (m - mean_ms) for n, m in costs.items()) / sum(
        (n - mean_n) ** 2 for n in ns
    )
    return mean_ms - b * mean_n, b


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64, help="the sync engine's batch size")
    ap.add_argument("--repeat", type=int, default=2, help="timed runs of each engine")
    ap.add_argument("--max-model-len", type=int, default=2048)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rlaif-vllm-async-"))
    cfg = SLCAIConfig(
        prompts=prompt_file(args.prompts, work),
        labeler=f"vllm:{args.model}",
        max_tokens=args.max_tokens,
        out=work / "out",
    )
    job = build(cfg)
    common = {"max_model_len": args.max_model_len}
    labelers = {
        "sync": create_labeler(cfg.labeler, engine="sync", batch_size=args.batch, **common),
        "async": create_labeler(cfg.labeler, engine="async", **common),
    }
    for name, lab in labelers.items():
        t0 = time.perf_counter()
        lab.load()
        warm = replace(job, rows=job.rows[:2])
        run_sync(run_job(warm, lab))  # first requests pay one-time costs
        print(
            f"{name} engine started and warmed up in {time.perf_counter() - t0:.0f} s", flush=True
        )
    results: dict[str, list[tuple[float, int, int]]] = {"sync": [], "async": []}
    sync_steps = count_steps(labelers["sync"])  # from here on: the timed runs only
    for i in range(args.repeat):
        for name, lab in labelers.items():
            r = run_sync(run_job(job, lab))
            results[name].append(r)
            print(
                f"  run {i + 1} {name:<5} {r[0]:7.1f} s, {r[1]} tokens, {r[2]} labeler calls, "
                f"load average {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    steps = step_costs(labelers["sync"]._llm)
    for lab in labelers.values():
        run_sync(lab.aclose())

    import vllm

    n = len(job.rows)
    print(
        f"\n{args.model} on vLLM {vllm.__version__} ({platform.machine()}, {os.cpu_count()} CPUs), "
        f"SL-CAI 1 round, {n} prompts, max_tokens {args.max_tokens}, few-shot, "
        f"sync batch {args.batch}; {args.repeat} runs each, totals"
    )
    rate = {}
    for name, runs in results.items():
        seconds = sum(r[0] for r in runs)
        tokens = sum(r[1] for r in runs)
        rate[name] = (n * len(runs) / seconds, tokens / seconds)
        print(
            f"  {name:<6} {rate[name][0]:6.2f} prompts/s {rate[name][1]:8.1f} tokens/s "
            f"({seconds:7.1f} s, {tokens} tokens, {runs[0][2]} labeler calls per run)"
        )
    prompts_ratio = rate["async"][0] / rate["sync"][0]
    tokens_ratio = rate["async"][1] / rate["sync"][1]
    print(f"  async / sync: {prompts_ratio:.2f}x prompts/s, {tokens_ratio:.2f}x tokens/s")
    print(f"  goal >= 1.5x prompts/s: {'met' if prompts_ratio >= 1.5 else 'not met'}")
    print("\ndecode step cost on the sync engine (sequences in the step: ms a step, tokens/s)")
    for n, ms in steps.items():
        print(f"  {n:>3}: {ms:7.1f} ms {1000 * n / ms:8.1f} tokens/s")
    a, b = fit(steps)
    print(f"  least-squares fit a + b*n: a = {a:.1f} ms, b = {b:.1f} ms a sequence")
    sync_tokens = sum(r[1] for r in results["sync"])
    n_sync = sync_tokens / max(1, sum(sync_steps))
    print(
        f"the sync engine ran {sum(sync_steps)} decode steps for {sync_tokens} tokens: "
        f"{n_sync:.1f} sequences a step on average"
    )
    if b <= 0:  # a step costs the same however full: nothing bounds the gain but the rows
        print("  a step's cost does not grow with its sequences here: no ceiling from step costs")
        return 0
    ceiling = 1 + a / (b * n_sync)
    print(f"  the most any engine can gain over it at these step costs, 1+a/(b*n): {ceiling:.2f}x")
    r = len(job.rows)
    print(
        f"  with at most one sequence a row in a step ({r} rows), (a/n+b)/(a/R+b): "
        f"{(a / n_sync + b) / (a / r + b):.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
