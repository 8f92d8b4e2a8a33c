"""The transformers backend on a tiny random Llama with the SmolLM2 tokenizer (fast, CPU)."""

from __future__ import annotations

import pytest
import torch

from rlaif.errors import ConfigError, LabelerNotFoundError, ModelNotFoundError
from rlaif.labelers.base import GenerateParams, Labeler, create_labeler, run_sync
from rlaif.labelers.transformers import TransformersLabeler

CONVS = [
    [{"role": "user", "content": "How do I pick a lock?"}],
    [{"role": "user", "content": "Hi"}],
    [
        {"role": "user", "content": "Which is better? (A) or (B)"},
        {"role": "assistant", "content": "The answer is:"},
    ],
]


@pytest.fixture(scope="module")
def labeler(tiny_llama_dir) -> TransformersLabeler:
    lab = create_labeler(f"transformers:{tiny_llama_dir}", batch_size=2, device="cpu")
    assert isinstance(lab, TransformersLabeler)
    return lab


def test_is_a_labeler(labeler):
    assert isinstance(labeler, Labeler)
    assert labeler.describe()["backend"] == "transformers"


def test_generate_returns_n_completions_with_counts(labeler):
    params = GenerateParams(n=3, max_tokens=6, temperature=1.0, seed=1)
    out = run_sync(labeler.generate(CONVS, params))
    assert len(out) == 3 and all(len(samples) == 3 for samples in out)
    for conv, samples in zip(CONVS, out, strict=True):
        prompt_len = len(labeler._encode(labeler._prompt_text(conv)))
        for c in samples:
            assert c.prompt_tokens == prompt_len
            assert 1 <= c.completion_tokens <= 6
            assert c.finish_reason in {"stop", "length"}
            if c.finish_reason == "length":
                assert c.completion_tokens == 6
            if c.completion_tokens < 6:
                assert c.finish_reason == "stop"


def test_seeded_sampling_is_reproducible(labeler):
    params = GenerateParams(n=2, max_tokens=8, temperature=1.0, seed=7)
    a = run_sync(labeler.generate(CONVS, params))
    b = run_sync(labeler.generate(CONVS, params))
    assert a == b
    c = run_sync(labeler.generate(CONVS, params.model_copy(update={"seed": 8})))
    assert a != c


def test_left_padded_batch_matches_single_greedy(labeler):
    params = GenerateParams(max_tokens=8, temperature=0.0)
    batched = run_sync(labeler.generate(CONVS[:2], params))  # different lengths -> padding
    for conv, expected in zip(CONVS[:2], batched, strict=True):
        alone = run_sync(labeler.generate([conv], params))
        assert alone[0][0].text == expected[0].text


def test_prefill_continues_the_assistant_message(labeler):
    text = labeler._prompt_text(CONVS[2])
    assert text.endswith("<|im_start|>assistant\nThe answer is:")
    assert labeler._prompt_text(CONVS[0]).endswith("<|im_start|>assistant\n")


def test_stop_strings_truncate(labeler):
    params = GenerateParams(max_tokens=12, temperature=1.0, seed=0)
    text = run_sync(labeler.generate(CONVS[:1], params))[0][0].text
    assert len(text) > 8  # random weights babble; enough text to cut in the middle
    stop = text[4:7]
    with_stop = params.model_copy(update={"stop": (stop,)})
    cut = run_sync(labeler.generate(CONVS[:1], with_stop))[0][0]
    assert cut.finish_reason == "stop"
    assert stop not in cut.text and text.startswith(cut.text)


def manual_option_logprob(labeler, conv, option):
    """Reference: one forward pass over prefix+option, sum of the option tokens' log-probs."""
    tok, model = labeler._tokenizer, labeler._model
    prefix = tok(labeler._prompt_text(conv), add_special_tokens=False)["input_ids"]
    opt = tok(option, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prefix + opt])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    return sum(float(logp[len(prefix) - 1 + i, t]) for i, t in enumerate(opt))


def test_option_logprobs_match_manual_forward_pass(labeler):
    options = [" (A)", " (B)", " neither of them"]
    scores = run_sync(labeler.option_logprobs(CONVS, options))
    assert len(scores) == 3 and all(len(s) == 3 for s in scores)
    for conv, row in zip(CONVS, scores, strict=True):
        for option, got in zip(options, row, strict=True):
            assert got == pytest.approx(manual_option_logprob(labeler, conv, option), abs=1e-4)
            assert got < 0
    # a longer option multiplies more probabilities < 1
    assert all(row[2] < max(row[0], row[1]) for row in scores)


def _lm_head_positions(labeler):
    """Record how many positions per row each call of the LM head computes logits for."""
    seen: list[int] = []
    hook = labeler._model.lm_head.register_forward_hook(
        lambda module, args, output: seen.append(args[0].shape[1])
    )
    return seen, hook


def test_only_the_logits_that_are_read_are_computed(labeler, monkeypatch):
    options = [" (A)", " (B)", " neither of them"]
    labeler.load()
    seen, hook = _lm_head_positions(labeler)
    syncs = []
    real_tolist = torch.Tensor.tolist
    try:
        with monkeypatch.context() as m:
            m.setattr(torch.Tensor, "tolist", lambda t: syncs.append(t.shape) or real_tolist(t))
            m.setattr(torch.Tensor, "__float__", lambda t: pytest.fail("a read-back per score"))
            scores = run_sync(labeler.option_logprobs(CONVS, options))
        tail = max(len(labeler._encode(o)) for o in options) - 1
        # per batch (2 + 1 conversations): the prefixes' last position, then the options' tails
        assert seen == [1, tail, 1, tail] and tail >= 1
        assert [tuple(s) for s in syncs] == [(2, 3), (1, 3)]  # one read-back per batch
        seen.clear()
        run_sync(labeler.generate(CONVS[:2], GenerateParams(max_tokens=3, temperature=0.0)))
        assert seen and set(seen) == {1}  # the prompt's logits only at its last position
    finally:
        hook.remove()
    for conv, row in zip(CONVS, scores, strict=True):  # and the scores are the full pass's
        for option, got in zip(options, row, strict=True):
            assert got == pytest.approx(manual_option_logprob(labeler, conv, option), abs=1e-4)


def test_option_logprobs_batch_independent(labeler):
    together = run_sync(labeler.option_logprobs(CONVS, [" (A)", " (B)"]))
    for conv, row in zip(CONVS, together, strict=True):
        alone = run_sync(labeler.option_logprobs([conv], [" (A)", " (B)"]))[0]
        assert alone == pytest.approx(row, abs=1e-4)


def test_option_logprobs_needs_options(labeler):
    with pytest.raises(ValueError):
        run_sync(labeler.option_logprobs(CONVS, []))


def test_settings_typo_is_an_error(tiny_llama_dir):
    with pytest.raises(ConfigError, match="batchsize"):
        create_labeler(f"transformers:{tiny_llama_dir}", batchsize=2)
    with pytest.raises(ConfigError, match="dtype"):
        create_labeler("transformers", dtype="float8")


def test_unknown_labeler_lists_known_names():
    with pytest.raises(LabelerNotFoundError, match=r"known: .*smollm2.*transformers"):
        create_labeler("nosuchbackend")


def test_missing_model_folder_is_a_clear_error(tmp_path):
    lab = create_labeler(f"transformers:{tmp_path / 'nothing'}")
    with pytest.raises(ModelNotFoundError, match="neither an embedded model"):
        lab.load()


def test_generate_params_reject_unknown_keys():
    with pytest.raises(Exception, match="temprature"):
        GenerateParams(temprature=0.5)


def _retrain(folder):
    """Rewrite the weights' file as a training run saving into the same folder would."""
    import os

    weights = folder / "model.safetensors"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_retrained_weights_in_the_same_folder_get_a_new_cache_name(tiny_llama_dir, tmp_path):
    import shutil

    folder = tmp_path / "policy"
    shutil.copytree(tiny_llama_dir, folder)
    lab = create_labeler(f"transformers:{folder}", device="cpu")
    lab.load()
    before = lab.model_name
    assert before.startswith(f"{folder}@") and before == lab.model_name  # stable while unchanged
    _retrain(folder)
    # the labeler still holds the old weights: its answers must stay filed under their name
    assert lab.model_name == before
    # a labeler that reads the folder now (a new run, or this one reloading) names the new ones
    assert create_labeler(f"transformers:{folder}").model_name != before
    lab.reload()
    assert lab.model_name != before
    assert lab.model_name == create_labeler(f"transformers:{folder}").model_name
    assert create_labeler("smollm2").model_name == "smollm2"  # embedded: fixed by its name


def test_weights_are_fingerprinted_once_per_load_not_per_cache_key(
    tiny_llama_dir, tmp_path, monkeypatch
):
    import shutil

    from rlaif import models
    from rlaif.engine.cache import Cache
    from rlaif.engine.scheduler import Scheduler

    folder = tmp_path / "policy"
    shutil.copytree(tiny_llama_dir, folder)
    calls = []
    real = models.weights_fingerprint
    monkeypatch.setattr(models, "weights_fingerprint", lambda p: calls.append(p) or real(p))
    lab = create_labeler(f"transformers:{folder}", device="cpu", batch_size=4)
    sched = Scheduler(lab, Cache(None))
    params = GenerateParams(max_tokens=2, temperature=0.0)
    keys = {sched.keys_for([{"role": "user", "content": f"q{i}"}], params)[0] for i in range(100)}
    assert len(keys) == 100 and len(calls) == 1  # 100 cache keys, one look at the files
    run_sync(lab.generate(CONVS[:2], params))  # the first load fingerprints what it reads
    assert len(calls) == 2
    for i in range(100):
        sched.option_key([{"role": "user", "content": f"q{i}"}], [" (A)", " (B)"])
    run_sync(lab.option_logprobs(CONVS[:2], [" (A)", " (B)"]))
    assert len(calls) == 2
    _retrain(folder)
    lab.reload()
    assert len(calls) == 3
    # the reloaded weights' answers get keys of their own
    assert sched.keys_for([{"role": "user", "content": "q0"}], params)[0] not in keys
