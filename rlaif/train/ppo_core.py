"""The arithmetic of PPO on token sequences: GAE, whitening, log-probs, KL estimators, losses.

Pure tensor functions on ``[batch, time]`` completions with a 0/1 ``mask`` of valid tokens (the
first EOS is valid, everything after it is padding), so each can be checked against a hand
computation. Nothing here knows about models, devices or processes, with one exception kept
explicit: ``whiten`` takes a ``reduce`` function (a sum across processes), because advantages
must be normalised with the statistics of the whole global batch, not of each process's share.

KL to the reference: with samples from the policy pi, ``k1 = log pi - log ref`` per token is the
unbiased estimator of KL(pi || ref) and it is what the reward penalty uses (it is the per-token
term whose sum over the sequence is the sequence's log-ratio, so the penalised objective is
exactly ``E[score] - beta KL``). Its sample mean can be negative on a small batch: for a policy
close to the reference its spread is far larger than its mean. ``k3 = (r - 1) - log r`` with
``r = ref / pi`` has the same expectation, is never negative and has a lower variance near the
reference (Schulman, "Approximating KL divergence", 2020); it is logged beside k1 as ``kl_k3``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over masked token sequences ``[batch, time]``.

    ``delta_t = r_t + gamma V_{t+1} - V_t`` (``V`` after the last valid token is 0) and
    ``A_t = delta_t + gamma lambda A_{t+1}``; returns are ``A + V``. Padding gets 0."""
    advantages = torch.zeros_like(rewards)
    running = torch.zeros(rewards.size(0), device=rewards.device, dtype=rewards.dtype)
    steps = rewards.size(1)
    for t in reversed(range(steps)):
        next_value = values[:, t + 1] * mask[:, t + 1] if t + 1 < steps else 0.0
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        running = running * mask[:, t]
        advantages[:, t] = running
    return advantages, advantages + values


def _no_reduce(t: torch.Tensor) -> torch.Tensor:
    return t


def whiten(
    x: torch.Tensor,
    mask: torch.Tensor,
    reduce: Callable[[torch.Tensor], torch.Tensor] = _no_reduce,
) -> torch.Tensor:
    """``(x - mean) / std`` over the valid tokens; padding stays 0.

    ``reduce`` sums a tensor over all processes (``accelerator.reduce(t, "sum")``): the mean and
    the (population) variance are then those of every process's valid tokens together, so each
    process's advantages are on the same scale as with the whole batch on one process."""
    mask = mask.to(x.dtype)
    totals = reduce(torch.stack([(x * mask).sum(), mask.sum()]))
    count = totals[1].clamp(min=1)
    mean = totals[0] / count
    var = reduce(((x - mean) ** 2 * mask).sum()) / count
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """Log-probabilities of ``tokens`` under ``softmax(logits / temperature)``, in fp32.

    Selective: the chosen token's logit minus the logsumexp of its row, one sequence at a time.
    A log-softmax of the whole batch would materialise a second ``[batch, time, vocab]`` tensor
    in fp32 (the largest tensor of a PPO step at a 150K vocabulary); here the only fp32
    temporary is one sequence's logits, and only the ``[batch, time]`` result is kept."""
    rows = []
    for row_logits, row_tokens in zip(logits, tokens, strict=True):
        row = row_logits.float()
        if temperature != 1.0:
            row = row / temperature
        chosen = row.gather(-1, row_tokens.unsqueeze(-1)).squeeze(-1)
        rows.append(chosen - torch.logsumexp(row, dim=-1))
    return torch.stack(rows)


def kl_estimates(
    logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token k1 (``log pi - log ref``, the penalty's) and k3 (``(r - 1) - log r``,
    ``r = ref / pi``, never negative), both 0 on padding."""
    log_r = (ref_logp - logp).masked_fill(mask == 0, 0.0)
    k1 = -log_r * mask
    k3 = (torch.expm1(log_r) - log_r) * mask
    return k1, k3


def token_rewards(
    kl: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor, beta: float
) -> torch.Tensor:
    """Per-token rewards: ``-beta * kl`` on every valid token, plus the sequence's score on its
    last valid token (the EOS when it ended; the last sampled token when it ran out)."""
    rewards = -beta * kl * mask
    last = (mask.sum(1).long() - 1).clamp(min=0)
    rewards[torch.arange(len(last), device=rewards.device), last] += scores
    return rewards


def ppo_losses(
    new_logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
    cliprange_value: float,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """The clipped surrogate and the clipped value loss, averaged over valid tokens."""
    # padding after EOS must not reach exp(): an overflow there would turn the masked mean into NaN
    ratio = torch.exp((new_logp - old_logp).masked_fill(mask == 0, 0.0))
    pg = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - cliprange, 1 + cliprange))
    pg_loss = masked_mean(pg, mask)
    clipped = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    vf = 0.5 * torch.max((values - returns) ** 2, (clipped - returns) ** 2)
    vf_loss = masked_mean(vf, mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean(((ratio - 1).abs() > cliprange).float(), mask).item(),
            "approx_kl": masked_mean(0.5 * (new_logp - old_logp) ** 2, mask).item(),
        }
    return pg_loss, vf_loss, stats


class AdaptiveKL:
    """Ziegler et al.'s proportional controller: beta grows when KL overshoots the target."""

    def __init__(self, beta: float, target: float, horizon: int):
        self.beta, self.target, self.horizon = beta, target, horizon

    def update(self, kl: float, n_samples: int) -> None:
        error = max(min(kl / self.target - 1.0, 0.2), -0.2)
        self.beta *= 1.0 + error * n_samples / self.horizon


def param_groups(
    named: Iterable[tuple[str, nn.Parameter]],
    weight_decay: float,
    no_decay_prefixes: tuple[str, ...] = ("value_head",),
) -> list[dict]:
    """Two AdamW groups: weight decay on the body's weight matrices only. Biases and norm
    weights (every 1-D parameter) and the value head (a regression on fresh features, decaying
    it only pulls the value estimates towards 0) get none."""
    decay, plain = [], []
    for name, p in named:
        if not p.requires_grad:
            continue
        if p.ndim < 2 or name.startswith(no_decay_prefixes):
            plain.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": plain, "weight_decay": 0.0},
    ]
