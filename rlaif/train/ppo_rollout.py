"""PPO's models and rollouts: loading in the right precision, sampling, scoring the samples.

Precision. The trainable weights (the policy and its value head) are always loaded in fp32,
whatever dtype the checkpoint was saved in (transformers loads a checkpoint's own dtype by
default, so a bf16 checkpoint would otherwise train in pure bf16, where an update of 1e-6 on a
weight of 0.5 rounds back to the same weight). ``bf16: true`` adds bf16 autocast for the compute,
with fp32 master weights in the optimizer. The frozen reference is loaded in fp32 as well and
every forward pass that yields a log-prob -- the sampler, the rollout's old log-probs, the
reference's, and the optimisation's new ones -- runs under the same ``accelerator.autocast()``:
autocast only changes matmul-like ops, and the ops it leaves alone (embeddings, norm scaling,
residual adds) run in the weights' dtype, so a bf16 reference would differ from an fp32 policy
with equal weights. The same weights under the same context give the same log-probs, so the KL
is exactly 0 while the policy equals the reference. The reward model only scores; it is loaded
in bf16 when ``bf16`` is on.

Sampling. Rollouts use an explicit ``GenerationConfig`` (temperature, ``top_k=0``, ``top_p``,
nothing else), and the checkpoint's own generation config is set aside while generating: many
checkpoints ship ``repetition_penalty``, ``top_k`` or ``min_p``, and generate() merges them into
any setting left unset. A sampler that differs from the forward pass that scores its tokens
draws from some q != pi, and the KL estimate ``E_q[log pi - log ref]`` is then biased (it can
go negative). With ``top_p < 1`` the same is true by design; the default is 1.

Dropout. The policy stays in ``eval()`` mode for the rollout and for the optimisation: PPO's
ratio ``pi / pi_old`` must be exactly 1 on the first mini-batch, and with dropout on in one
pass and off in the other it would not be (nor would a sampled token's log-prob be the one it
was sampled with). Nothing in a causal LM needs train mode to get gradients (no batch norm).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from rlaif.train.ppo_core import token_logprobs

# (prompts, completion texts, completion token ids) -> one score per completion
RewardFn = Callable[[list[str], list[str], list[list[int]]], torch.Tensor]


class PolicyWithValue(nn.Module):
    """A causal LM and a scalar value head on its last hidden state (one shared body)."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy
        hidden = policy.config.get_text_config().hidden_size
        self.value_head = nn.Linear(hidden, 1, dtype=torch.float32)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, keep: int = 0, **inputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and values at the last ``keep`` positions (0: every position).

        The logits come from the model's own forward with ``logits_to_keep``, so the LM head
        (and any final scaling or soft-capping the model applies) runs on those positions only.
        The value head reads the body's last hidden state, caught by a forward hook on the body:
        ``output_hidden_states`` would keep every layer's states for the whole sequence."""
        body = getattr(self.policy, "base_model", self.policy)
        if body is self.policy:  # no separate body to hook: fall back to the hidden states
            out = self.policy(**inputs, output_hidden_states=True, use_cache=False)
            logits, hidden = out.logits, out.hidden_states[-1]
            if keep:
                logits, hidden = logits[:, -keep:], hidden[:, -keep:]
        else:
            caught: list[torch.Tensor] = []
            hook = body.register_forward_hook(lambda _m, _a, out: caught.append(out[0]))
            try:
                logits = self.policy(**inputs, logits_to_keep=keep, use_cache=False).logits
            finally:
                hook.remove()
            hidden = caught[-1][:, -keep:] if keep else caught[-1]
        values = self.value_head(hidden.float()).squeeze(-1)
        return logits, values


def load_causal_lm(path: str | Any) -> nn.Module:
    """A causal LM in fp32 (policy or reference), in eval mode: see the module docstring."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def sampling_config(
    tok: Any, eos: int, max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
    sample: bool = True,
) -> Any:  # fmt: skip
    """Every setting that shapes the sampled distribution, explicitly (none inherited)."""
    from transformers import GenerationConfig

    settings: dict[str, Any] = (
        {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
        if sample
        else {"do_sample": False}
    )
    return GenerationConfig(
        **settings,
        max_new_tokens=max_new_tokens,
        min_new_tokens=0,
        num_beams=1,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        pad_token_id=tok.pad_token_id,
        eos_token_id=eos,
    )


@contextmanager
def own_generation_config(model: Any) -> Iterator[None]:
    """Set the checkpoint's generation config aside while we generate (restored after, so the
    saved model keeps its own)."""
    from transformers import GenerationConfig

    saved = model.generation_config
    model.generation_config = GenerationConfig()
    try:
        yield
    finally:
        model.generation_config = saved


def chat_batch(tok: Any, prompts: list[str], device: Any) -> Any:
    texts = [
        tok.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in prompts
    ]
    return tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)


@torch.no_grad()
def generate_greedy(
    accelerator: Any,
    model: Any,
    tok: Any,
    prompts: list[str],
    max_new_tokens: int,
    eos: int,
    sampler: Any = None,
) -> list[str]:
    """Greedy answers of the policy (the sycophancy probe), from the vLLM ``sampler`` when
    there is one (it holds the policy's current weights)."""
    enc = chat_batch(tok, prompts, accelerator.device)
    if sampler is not None:
        answers = sampler.complete(enc, max_new_tokens, temperature=0.0, pad=tok.pad_token_id)
    else:
        policy = accelerator.unwrap_model(model).policy
        config = sampling_config(tok, eos, max_new_tokens, sample=False)
        with own_generation_config(policy), accelerator.autocast():
            answers = policy.generate(**enc, generation_config=config)
        answers = answers[:, enc["input_ids"].size(1) :]
    return [t.strip() for t in tok.batch_decode(answers, skip_special_tokens=True)]


def completion_mask(completion: torch.Tensor, eos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Valid tokens (up to and including the first EOS) as a float mask, and whether each
    completion ended with an EOS."""
    is_eos = completion == eos
    after_eos = (is_eos.long().cumsum(1) - is_eos.long()) > 0
    return (~after_eos).float(), is_eos.any(1)


@torch.no_grad()
def rollout(
    accelerator: Any,
    model: Any,
    ref: nn.Module,
    tok: Any,
    prompts: list[str],
    cfg: Any,
    eos: int,
    sampler: Any = None,
) -> dict[str, Any]:
    """Sample one completion per prompt -- with ``generate``, or from the vLLM ``sampler``
    (``ppo_vllm``) into the same tensors -- then the policy's and the reference's log-probs of
    its tokens and the values, all under the same autocast as the optimisation. The log-probs
    always come from these forward passes, never from the sampler."""
    enc = chat_batch(tok, prompts, accelerator.device)
    width = enc["input_ids"].size(1)
    if sampler is not None:
        completion = sampler.complete(
            enc, cfg.max_new_tokens, cfg.temperature, cfg.top_p, pad=tok.pad_token_id
        )
    else:
        policy = accelerator.unwrap_model(model).policy
        config = sampling_config(tok, eos, cfg.max_new_tokens, cfg.temperature, cfg.top_p)
        with own_generation_config(policy), accelerator.autocast():
            generated = policy.generate(**enc, generation_config=config)
        completion = generated[:, width:]
    mask, ended = completion_mask(completion, eos)
    completion = completion.masked_fill(mask == 0, tok.pad_token_id)
    full = torch.cat([enc["input_ids"], completion], dim=1)
    attention = torch.cat([enc["attention_mask"], mask.long()], dim=1)
    positions = (attention.cumsum(1) - 1).clamp(min=0)
    inputs = {"input_ids": full, "attention_mask": attention, "position_ids": positions}
    # the logits of the positions that predict the completion tokens only: the last
    # len(completion) + 1 positions, less the last (it predicts past the end)
    keep = completion.size(1) + 1
    with accelerator.autocast():
        logits, values = model(**inputs, keep=keep)
        ref_logits = ref(**inputs, use_cache=False, logits_to_keep=keep).logits
    decoded = tok.batch_decode(completion, skip_special_tokens=True)
    return {
        **inputs,
        "width": width,
        "completion": completion,
        "mask": mask,
        "ended": ended,
        "logp": token_logprobs(logits[:, :-1], completion, cfg.temperature),
        "ref_logp": token_logprobs(ref_logits[:, :-1], completion, cfg.temperature),
        "values": values[:, :-1].float() * mask,
        "texts": [t.strip() for t in decoded],
        "ids": [row[: int(m.sum())].tolist() for row, m in zip(completion, mask, strict=True)],
    }


def rm_reward(path: str, device: torch.device, bf16: bool = False) -> RewardFn:
    """Score with a sequence-classifier RM on the chat-formatted conversation."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    dtype = torch.bfloat16 if bf16 else torch.float32
    rm = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype).to(device).eval()
    rm_tok = AutoTokenizer.from_pretrained(path)
    if rm_tok.pad_token is None:
        rm_tok.pad_token = rm_tok.eos_token
    rm.config.pad_token_id = rm_tok.pad_token_id

    def score(prompts: list[str], completions: list[str], _ids: Any = None) -> torch.Tensor:
        texts = [
            rm_tok.apply_chat_template(
                [{"role": "user", "content": p}, {"role": "assistant", "content": c}],
                tokenize=False,
            )
            for p, c in zip(prompts, completions, strict=True)
        ]
        batch = rm_tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            return rm(**{k: v.to(device) for k, v in batch.items()}).logits[:, 0].float()

    return score


def read_prompt_texts(cfg: Any) -> list[str]:
    from rlaif.data.sources import read_prompts

    rows = read_prompts(cfg.prompts, cfg.prompt_format, cfg.prompt_field)
    return [p.text for p in rows][: cfg.prompt_limit]


def read_probes(cfg: Any) -> list[str]:
    from rlaif.data.sources import read_prompts
    from rlaif.resources import data_file

    path = cfg.probes or data_file("sycophancy_probes.txt")
    return [p.text for p in read_prompts(path, "text")]
