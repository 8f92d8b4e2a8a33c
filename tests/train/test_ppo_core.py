"""PPO's arithmetic against hand computations: GAE, whitening (one and two processes), the KL
estimators, where the score lands, value clipping, the AdamW groups, the sycophancy share."""

from __future__ import annotations

import math

import pytest
import torch

from rlaif.train import ppo


def test_gae_with_discount_and_lambda_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.4, 0.3], [0.5, 0.4, 9.0]])  # 9.0: a padded position
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv, ret = ppo.gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # row 0, gamma * lambda = 0.72:
    #   t=2: delta = 1 - 0.3 = 0.7                         A = 0.7
    #   t=1: delta = 0.9 * 0.3 - 0.4 = -0.13               A = -0.13 + 0.72 * 0.7 = 0.374
    #   t=0: delta = 0.9 * 0.4 - 0.5 = -0.14               A = -0.14 + 0.72 * 0.374 = 0.12928
    assert adv[0].tolist() == pytest.approx([0.12928, 0.374, 0.7])
    assert ret[0].tolist() == pytest.approx([0.62928, 0.774, 1.0])
    # row 1 ends at t=1: the padded value (9.0) is neither bootstrapped from nor given advantage
    #   t=1: delta = 1 - 0.4 = 0.6                         A = 0.6
    #   t=0: delta = 0.9 * 0.4 - 0.5 = -0.14               A = -0.14 + 0.72 * 0.6 = 0.292
    assert adv[1].tolist() == pytest.approx([0.292, 0.6, 0.0])
    assert ret[1, :2].tolist() == pytest.approx([0.792, 1.0])


def test_whiten_over_valid_tokens_only():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, -50.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    w = ppo.whiten(x, mask)
    # valid: 1..5, mean 3, population variance 2
    s = math.sqrt(2.0)
    assert w[0].tolist() == pytest.approx([-2 / s, -1 / s, 0.0, 0.0], abs=1e-6)
    assert w[1].tolist() == pytest.approx([1 / s, 2 / s, 0.0, 0.0], abs=1e-6)
    valid = w[mask.bool()]
    assert valid.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert valid.pow(2).mean().item() == pytest.approx(1.0, abs=1e-6)


def _whiten_on_rank(rank: int, port: int, x: torch.Tensor, mask: torch.Tensor, out) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)

    def total(t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t)
        return t

    out[rank] = ppo.whiten(x[rank : rank + 1], mask[rank : rank + 1], reduce=total)
    dist.destroy_process_group()


def test_whiten_across_two_processes_equals_the_whole_batch():
    """Each process holds one row; whitened with the global statistics, they are the rows of
    the whole batch whitened at once (and not each row whitened alone)."""
    import socket

    import torch.multiprocessing as mp

    x = torch.tensor([[1.0, 2.0, 3.0, 0.0], [10.0, 20.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    manager = ctx.Manager()
    out = manager.dict()
    procs = [ctx.Process(target=_whiten_on_rank, args=(r, port, x, mask, out)) for r in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    together = torch.cat([out[0], out[1]])
    assert torch.allclose(together, ppo.whiten(x, mask), atol=1e-6)
    assert not torch.allclose(out[0], ppo.whiten(x[:1], mask[:1]), atol=1e-3)


def test_kl_estimators_by_hand():
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.9]]))
    ref = torch.log(torch.tensor([[0.25, 0.5, 1e-30]]))  # the padded token's values are junk
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    k1, k3 = ppo.kl_estimates(logp, ref, mask)
    assert k1[0].tolist() == pytest.approx([math.log(2), -math.log(2), 0.0])
    # r = ref / pi: 0.5 -> (0.5 - 1) - log 0.5; 2 -> (2 - 1) - log 2
    assert k3[0].tolist() == pytest.approx([-0.5 + math.log(2), 1 - math.log(2), 0.0])


def test_post_eos_masking_and_the_score_on_the_last_valid_token():
    from rlaif.train.ppo_rollout import completion_mask

    eos = 2
    completion = torch.tensor([[5, eos, 7, eos], [5, 6, 7, 8], [eos, 9, 9, 9]])
    mask, ended = completion_mask(completion, eos)
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert ended.tolist() == [True, False, True]
    kl = torch.full((3, 4), 0.5)
    rewards = ppo.token_rewards(kl, torch.tensor([2.0, 3.0, -1.0]), mask, beta=0.1)
    expected = [[-0.05, 1.95, 0.0, 0.0], [-0.05, -0.05, -0.05, 2.95], [-1.05, 0.0, 0.0, 0.0]]
    assert torch.allclose(rewards, torch.tensor(expected))


def test_value_clipping_with_nonzero_old_values():
    old_values = torch.tensor([[1.0, -1.0]])
    values = torch.tensor([[2.0, -1.1]], requires_grad=True)
    returns = torch.tensor([[2.1, 0.0]])
    zeros = torch.zeros(1, 2)
    _, vf, _ = ppo.ppo_losses(zeros, zeros, zeros, values, old_values, returns,
                              torch.ones(1, 2), 0.2, 0.2)  # fmt: skip
    # token 1: unclipped (2.0 - 2.1)^2 = 0.01; clipped to 1.2: (1.2 - 2.1)^2 = 0.81 -> the max
    # token 2: -1.1 is within 0.2 of -1.0, both branches (-1.1)^2 = 1.21
    assert vf.item() == pytest.approx((0.5 * 0.81 + 0.5 * 1.21) / 2)
    vf.backward()
    # the clipped branch is a constant in the value: no gradient through token 1
    assert values.grad[0].tolist() == pytest.approx([0.0, 0.5 * (-1.1)])


def test_no_weight_decay_on_value_head_biases_and_norms(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    model = ppo.PolicyWithValue(AutoModelForCausalLM.from_pretrained(tiny_llama_dir))
    model.policy.model.layers[0].self_attn.q_proj.bias = torch.nn.Parameter(torch.zeros(64))
    decay, plain = ppo.param_groups(model.named_parameters(), 0.01)
    assert (decay["weight_decay"], plain["weight_decay"]) == (0.01, 0.0)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for p in plain["params"]}
    assert no_decay == {
        "value_head.weight",
        "value_head.bias",
        "policy.model.norm.weight",
        "policy.model.layers.0.self_attn.q_proj.bias",
        *(f"policy.model.layers.{i}.{n}.weight" for i in (0, 1)
          for n in ("input_layernorm", "post_attention_layernorm")),
    }  # fmt: skip
    decayed = {names[id(p)] for p in decay["params"]}
    assert "policy.model.embed_tokens.weight" in decayed
    assert "policy.model.layers.1.mlp.down_proj.weight" in decayed
    assert len(decayed) + len(no_decay) == len(names)


def test_sycophancy_is_the_share_of_probes_agreed_with(monkeypatch):
    from rlaif.engine import judge
    from rlaif.eval.hacking import LabelerJudges, sycophancy_share

    # 0.0 is a clear "does not agree" and counts; None (not judged) is left out
    assert sycophancy_share([0.0, 0.9, None, 0.2]) == pytest.approx(1 / 3)
    assert sycophancy_share([0.0, 0.0]) == 0.0
    assert sycophancy_share([None]) is None

    class ScriptedYesNo:
        def __init__(self, labeler):
            pass

        def classify(self, prompts, responses, question):
            assert question == "agrees-false-claim"
            return [0.0, 0.0, 0.6, 0.0]

    monkeypatch.setattr(judge, "YesNoJudge", ScriptedYesNo)
    assert LabelerJudges("x").sycophancy(["p"] * 4, ["a"] * 4) == 0.25


def full_log_softmax_logprobs(logits, tokens, temperature):
    """The former token_logprobs: a log-softmax over the whole batch, then a gather."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return torch.gather(logp, 2, tokens.unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_selective_logprobs_match_the_full_log_softmax(temperature, dtype):
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 5, 1000, generator=gen) * 6).to(dtype)
    tokens = torch.randint(0, 1000, (3, 5), generator=gen)
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    got = ppo.token_logprobs(a, tokens, temperature)
    want = full_log_softmax_logprobs(b, tokens, temperature)
    assert got.dtype == torch.float32 and got.shape == (3, 5)
    assert torch.allclose(got, want, atol=1e-5, rtol=0)
    assert (got < 0).all()
    weights = torch.randn(3, 5, generator=gen)
    (got * weights).sum().backward()
    (want * weights).sum().backward()
    assert torch.allclose(a.grad.float(), b.grad.float(), atol=1e-5, rtol=0)


def test_policy_forward_on_the_kept_positions_matches_the_full_pass(tiny_llama_dir):
    """Logits through logits_to_keep and values from the hooked last hidden state equal the
    last positions of a full pass with every hidden state, and the hook is gone after."""
    from transformers import AutoModelForCausalLM

    model = ppo.PolicyWithValue(AutoModelForCausalLM.from_pretrained(tiny_llama_dir)).eval()
    torch.nn.init.normal_(model.value_head.weight, std=1.0)
    ids = torch.randint(3, 1000, (2, 9), generator=torch.Generator().manual_seed(1))
    attention = torch.ones_like(ids)
    attention[0, :3] = 0  # a left-padded row
    inputs = {"input_ids": ids, "attention_mask": attention,
              "position_ids": (attention.cumsum(1) - 1).clamp(min=0)}  # fmt: skip
    with torch.no_grad():
        out = model.policy(**inputs, output_hidden_states=True, use_cache=False)
        old_values = model.value_head(out.hidden_states[-1]).squeeze(-1)
        logits, values = model(**inputs, keep=4)
        all_logits, all_values = model(**inputs)
    assert logits.shape == (2, 4, out.logits.size(-1)) and values.shape == (2, 4)
    assert torch.allclose(logits, out.logits[:, -4:], atol=1e-5)
    assert torch.allclose(values, old_values[:, -4:], atol=1e-5)
    assert torch.allclose(all_logits, out.logits, atol=1e-5)
    assert torch.allclose(all_values, old_values, atol=1e-5)
    assert not model.policy.base_model._forward_hooks
