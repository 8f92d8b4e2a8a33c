"""RL-CAI with PPO and a KL penalty to the SFT policy: our own, small, on transformers + accelerate.

TRL removed its PPO trainer (1.13), so this is ours. It follows the recipe of the RLHF papers
(Ziegler et al. 2019; Stiennon et al. 2020; Ouyang et al. 2022) that Constitutional AI used:

1. **Rollout.** Sample a completion for each prompt of the batch from the policy (initialised from
   the SFT checkpoint). Tokens after the first EOS are padding.
2. **Score.** The reward model (our soft-label RM, a sequence classifier) scores prompt +
   completion; optional rule-based penalties (no EOS, length) are added. A Python reward function
   can stand in for the RM (tests use a toy reward with a known optimum).
3. **KL penalty in the reward.** With log-probs of the sampled tokens under the policy (pi) and the
   frozen SFT reference (pi_SFT), each token's reward is ``-beta * (log pi - log pi_SFT)``, and the
   last token also gets the score. ``beta`` is fixed, or adapted by the proportional controller of
   Ziegler et al. towards ``target_kl``.
4. **Advantages.** A value head on the policy's last hidden state estimates each state's return;
   GAE(gamma, lambda) gives advantages (whitened over the batch) and returns.
5. **PPO epochs.** Over shuffled mini-batches: the clipped surrogate
   ``max(-A r, -A clip(r, 1 - eps, 1 + eps))`` with ``r = pi / pi_old`` and ``eps = 0.2``, plus a
   clipped value loss weighted by ``vf_coef``.

Log-probs are computed from logits divided by the sampling temperature, so they are the
probabilities the tokens were actually sampled with. The policy and value head share one body
(one model in memory); the reference and the RM are frozen copies. ``accelerate`` handles the
devices: one CPU, one GPU, or DDP across many (each process rolls out its own prompts).

Every step appends reward, KL, beta, response length, losses, clip fraction and approximate KL to
``metrics.jsonl``; plots are drawn at the end; the policy (with its tokenizer) and the value head
are saved in ``output_dir``.
"""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlaif.errors import ConfigError
from rlaif.train.common import (
    append_metrics,
    model_path,
    run_main,
    save_run_config,
    write_plots,
)

# (prompts, completion texts, completion token ids) -> one score per completion
RewardFn = Callable[[list[str], list[str], list[list[int]]], torch.Tensor]


@dataclass
class PPORunConfig:
    model: str = field(default="outputs/run/sft", metadata={"help": "SFT policy and reference"})
    reward_model: str | None = field(
        default="outputs/run/rm", metadata={"help": "sequence-classifier RM (null: penalties only)"}
    )
    ref_model: str | None = field(
        default=None, metadata={"help": "KL reference (default: model; iterated runs: the SFT)"}
    )
    prompts: str = field(default="rlaif/data/demo_prompts.txt", metadata={"help": "prompt data"})
    prompt_format: str = "auto"
    prompt_field: str = "prompt"
    prompt_limit: int | None = field(default=None, metadata={"help": "use the first N prompts"})
    output_dir: str = "outputs/run/ppo"
    steps: int = 20
    batch_size: int = field(default=8, metadata={"help": "rollouts per step (per process)"})
    mini_batch_size: int = 4
    ppo_epochs: int = 2
    learning_rate: float = 1e-5
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_p: float = 1.0
    kl_coef: float = field(default=0.05, metadata={"help": "beta of the KL penalty"})
    adaptive_kl: bool = False
    target_kl: float = 6.0
    kl_horizon: int = 10000
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    max_grad_norm: float = 1.0
    missing_eos_penalty: float | None = field(
        default=None, metadata={"help": "subtracted from the score of a completion without EOS"}
    )
    length_penalty: float = field(default=0.0, metadata={"help": "subtracted per token"})
    repetition_penalty: float = field(
        default=0.0, metadata={"help": "subtracted x the share of repeated 3-grams"}
    )
    warn_length_ratio: float = 1.5
    warn_distinct_2: float = 0.3
    warn_kl: float = 20.0
    judge_every: int = field(
        default=0, metadata={"help": "every N steps: RM vs constitution-scorer rank correlation"}
    )
    probe_every: int = field(default=0, metadata={"help": "every N steps: sycophancy probe"})
    judge_labeler: str = "smollm2"
    probes: str | None = field(default=None, metadata={"help": "false-claim prompts (shipped)"})
    save_steps: int = field(default=1, metadata={"help": "checkpoint every N steps (resume)"})
    resume: bool = True
    seed: int = 0
    bf16: bool = False
    use_cpu: bool = False
    report_to: list[str] = field(default_factory=list)
    logging_steps: int = 1

    def __post_init__(self) -> None:
        if self.batch_size % self.mini_batch_size:
            raise ValueError("batch_size must be a multiple of mini_batch_size")
        if not 0 < self.cliprange < 1:
            raise ValueError("cliprange must be in (0, 1)")
        if self.kl_coef < 0:
            raise ValueError("kl_coef must be >= 0")


class PolicyWithValue(nn.Module):
    """A causal LM and a scalar value head on its last hidden state (one shared body)."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy
        hidden = policy.config.get_text_config().hidden_size
        self.value_head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, **inputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.policy(**inputs, output_hidden_states=True, use_cache=False)
        hidden = out.hidden_states[-1]
        values = self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1)
        return out.logits, values


class AdaptiveKL:
    """Ziegler et al.'s proportional controller: beta grows when KL overshoots the target."""

    def __init__(self, beta: float, target: float, horizon: int):
        self.beta, self.target, self.horizon = beta, target, horizon

    def update(self, kl: float, n_samples: int) -> None:
        error = max(min(kl / self.target - 1.0, 0.2), -0.2)
        self.beta *= 1.0 + error * n_samples / self.horizon


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over masked token sequences ``[batch, time]``."""
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


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return torch.gather(logp, 2, tokens.unsqueeze(-1)).squeeze(-1)


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


def rm_reward(path: str, tokenizer: Any, device: torch.device) -> RewardFn:
    """Score with a sequence-classifier RM on the chat-formatted conversation."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rm = AutoModelForSequenceClassification.from_pretrained(path).to(device).eval()
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


def read_prompt_texts(cfg: PPORunConfig) -> list[str]:
    from rlaif.data.sources import read_prompts

    rows = read_prompts(cfg.prompts, cfg.prompt_format, cfg.prompt_field)  # type: ignore[arg-type]
    return [p.prompt for p in rows][: cfg.prompt_limit]


CHECKPOINT = "checkpoint"


def save_checkpoint(accelerator: Any, model: Any, optimizer: Any, out: Path, state: dict) -> None:
    """Policy, value head, optimizer and loop state; written to a temporary folder and renamed,
    so a kill mid-save leaves the previous checkpoint intact."""
    if not accelerator.is_main_process:
        return
    import json
    import shutil

    tmp = out / f".{CHECKPOINT}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.policy.save_pretrained(tmp / "policy")
    torch.save(unwrapped.value_head.state_dict(), tmp / "value_head.pt")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps(state))
    final = out / CHECKPOINT
    old = out / f".{CHECKPOINT}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(out: Path, steps: int) -> dict | None:
    import json

    state_file = out / CHECKPOINT / "state.json"
    if not state_file.exists():
        return None
    state = json.loads(state_file.read_text())
    return state if 0 < state["step"] < steps else None


class _Judges:
    """The optional monitors that ask the labeler: RM vs judged quality, sycophancy probe."""

    def __init__(self, cfg: PPORunConfig):
        self.cfg = cfg
        self._scorer: Any = None
        self._yes_no: Any = None

    def rm_judge_correlation(self, prompts: list[str], texts: list[str], rm: list[float]) -> Any:
        from rlaif.engine.judge import ConstitutionScorer
        from rlaif.eval.hacking import spearman

        if self._scorer is None:
            self._scorer = ConstitutionScorer(self.cfg.judge_labeler)
        judged = self._scorer(prompts, texts)
        pairs = [(r, j) for r, j in zip(rm, judged, strict=True) if j is not None]
        return spearman([p[0] for p in pairs], [p[1] for p in pairs])

    def sycophancy(self, probes: list[str], answers: list[str]) -> Any:
        from rlaif.engine.judge import YesNoJudge

        if self._yes_no is None:
            self._yes_no = YesNoJudge(self.cfg.judge_labeler)
        agree = [p for p in self._yes_no.classify(probes, answers, "agrees-false-claim") if p]
        return sum(agree) / len(agree) if agree else None


def main(cfg: PPORunConfig, reward_fn: RewardFn | None = None) -> Path:
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlaif.eval.hacking import Monitor, Thresholds, repetition_penalties

    accelerator = Accelerator(
        mixed_precision="bf16" if cfg.bf16 else "no",
        cpu=cfg.use_cpu,
        log_with=cfg.report_to or None,
        project_dir=cfg.output_dir,
    )
    out = Path(cfg.output_dir)
    resumed = load_checkpoint(out, cfg.steps) if cfg.resume else None
    start = resumed["step"] + 1 if resumed else 1
    set_seed(cfg.seed * 7919 + start + accelerator.process_index)
    if accelerator.is_main_process:
        keep_metrics_until(out, resumed["step"] if resumed else 0)
    if cfg.report_to:
        accelerator.init_trackers("rlaif-ppo")
    path = model_path(cfg.model)
    tok = AutoTokenizer.from_pretrained(path, padding_side="left")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    device = accelerator.device
    policy_path = out / CHECKPOINT / "policy" if resumed else path
    model = PolicyWithValue(AutoModelForCausalLM.from_pretrained(policy_path))
    if resumed:
        model.value_head.load_state_dict(torch.load(out / CHECKPOINT / "value_head.pt"))
        print(f"ppo: resuming after step {resumed['step']} from {out / CHECKPOINT}", flush=True)
    ref_path = model_path(cfg.ref_model) if cfg.ref_model else path
    ref = AutoModelForCausalLM.from_pretrained(ref_path).to(device).eval()
    ref.requires_grad_(False)
    if reward_fn is None:
        if cfg.reward_model is None and cfg.missing_eos_penalty is None:
            raise ConfigError("PPO needs a reward_model (or a reward function)")
        reward_fn = (
            rm_reward(model_path(cfg.reward_model), tok, device)
            if cfg.reward_model
            else (lambda p, c, ids: torch.zeros(len(c)))
        )
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, eps=1e-5)
    if resumed:
        optimizer.load_state_dict(torch.load(out / CHECKPOINT / "optimizer.pt"))
    model, optimizer = accelerator.prepare(model, optimizer)
    prompts = read_prompt_texts(cfg)
    probes = read_probes(cfg) if cfg.probe_every else []
    rng = random.Random(cfg.seed * 1000 + accelerator.process_index)
    for _ in range((start - 1) * cfg.batch_size):  # the same prompt sequence as without a stop
        rng.choice(prompts)
    kl_ctl = AdaptiveKL(resumed["beta"] if resumed else cfg.kl_coef, cfg.target_kl, cfg.kl_horizon)
    monitor = Monitor(Thresholds(length_ratio=cfg.warn_length_ratio,
                                 distinct_2=cfg.warn_distinct_2, kl=cfg.warn_kl))  # fmt: skip
    if resumed:
        monitor._lengths = resumed.get("baseline_lengths", [])
    judges = _Judges(cfg)
    eos = tok.eos_token_id
    for step in range(start, cfg.steps + 1):
        batch_prompts = [rng.choice(prompts) for _ in range(cfg.batch_size)]
        roll = rollout(accelerator, model, ref, tok, batch_prompts, cfg, eos)
        scores = reward_fn(batch_prompts, roll["texts"], roll["ids"]).to(device).float()
        raw_scores = scores.clone()
        if cfg.missing_eos_penalty is not None:
            scores = scores - cfg.missing_eos_penalty * (~roll["ended"]).float()
        scores = scores - cfg.length_penalty * roll["mask"].sum(1)
        if cfg.repetition_penalty:
            penalty = repetition_penalties(roll["texts"], cfg.repetition_penalty)
            scores = scores - torch.tensor(penalty, device=device)
        kl = (roll["logp"] - roll["ref_logp"]) * roll["mask"]
        rewards = -kl_ctl.beta * kl
        last = (roll["mask"].sum(1).long() - 1).clamp(min=0)
        rewards[torch.arange(len(last), device=device), last] += scores
        advantages, returns = gae(rewards, roll["values"], roll["mask"], cfg.gamma, cfg.lam)
        advantages = whiten(advantages, roll["mask"])
        stats = optimise(accelerator, model, optimizer, roll, advantages, returns, cfg)
        mean_kl = accelerator.gather(kl.sum(1)).mean().item()
        if cfg.adaptive_kl:
            kl_ctl.update(mean_kl, cfg.batch_size * accelerator.num_processes)
        extra: dict[str, Any] = {}
        if cfg.judge_every and step % cfg.judge_every == 0:
            extra["monitor/rm_judge_spearman"] = judges.rm_judge_correlation(
                batch_prompts, roll["texts"], raw_scores.tolist()
            )
        if probes and step % cfg.probe_every == 0:
            answers = generate_greedy(accelerator, model, tok, probes, cfg, eos)
            extra["monitor/sycophancy"] = judges.sycophancy(probes, answers)
        lengths = roll["mask"].sum(1).tolist()
        n_warn = len(monitor.warnings)
        watched = monitor.check(step, roll["texts"], lengths, mean_kl, extra)
        record = {
            "step": step,
            "reward": accelerator.gather(scores).mean().item(),
            "reward/model": accelerator.gather(raw_scores).mean().item(),
            "kl": mean_kl,
            "beta": kl_ctl.beta,
            "response_length": accelerator.gather(roll["mask"].sum(1)).float().mean().item(),
            **stats,
            **watched,
        }
        if accelerator.is_main_process:
            if step % cfg.logging_steps == 0:
                append_metrics(out, record)
                print(
                    f"ppo step {step}/{cfg.steps}: reward {record['reward']:.3f} "
                    f"kl {record['kl']:.3f} beta {record['beta']:.4f} "
                    f"len {record['response_length']:.1f}",
                    flush=True,
                )
            for w in monitor.warnings[n_warn:]:
                append_metrics(out, {"warning": w["monitor"], **w}, "warnings.jsonl")
                print(f"ppo warning at step {step}: {w['monitor']} {w['value']} is "
                      f"{w['side']} {w['threshold']}", flush=True)  # fmt: skip
        if cfg.report_to:
            accelerator.log(record, step=step)
        if cfg.save_steps and step % cfg.save_steps == 0 and step < cfg.steps:
            state = {"step": step, "beta": kl_ctl.beta, "baseline_lengths": monitor._lengths}
            save_checkpoint(accelerator, model, optimizer, out, state)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        import shutil

        unwrapped = accelerator.unwrap_model(model)
        unwrapped.policy.save_pretrained(out)
        tok.save_pretrained(out)
        torch.save(unwrapped.value_head.state_dict(), out / "value_head.pt")
        save_run_config(out, cfg, "ppo")
        write_plots(out, "PPO")
        shutil.rmtree(out / CHECKPOINT, ignore_errors=True)  # finished: nothing to resume
    accelerator.end_training()
    return out


def keep_metrics_until(out: Path, step: int) -> None:
    """Metrics (and warnings) of steps after ``step`` belong to a run that stopped: drop them."""
    import json

    for name in ("metrics.jsonl", "warnings.jsonl"):
        path = out / name
        if not path.exists():
            continue
        rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        kept = [r for r in rows if r.get("step", 0) <= step]
        path.write_text("".join(json.dumps(r) + "\n" for r in kept))


def read_probes(cfg: PPORunConfig) -> list[str]:
    from rlaif.data.sources import read_prompts
    from rlaif.resources import data_file

    path = cfg.probes or data_file("sycophancy_probes.txt")
    return [p.prompt for p in read_prompts(path, "text")]


@torch.no_grad()
def generate_greedy(
    accelerator: Any, model: Any, tok: Any, prompts: list[str], cfg: PPORunConfig, eos: int
) -> list[str]:
    texts = [
        tok.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in prompts
    ]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    policy = accelerator.unwrap_model(model).policy
    policy.eval()
    out = policy.generate(
        **enc.to(accelerator.device), do_sample=False, max_new_tokens=cfg.max_new_tokens,
        pad_token_id=tok.pad_token_id, eos_token_id=eos,
    )  # fmt: skip
    policy.train()
    width = enc["input_ids"].size(1)
    return [t.strip() for t in tok.batch_decode(out[:, width:], skip_special_tokens=True)]


@torch.no_grad()
def rollout(
    accelerator: Any,
    model: Any,
    ref: nn.Module,
    tok: Any,
    prompts: list[str],
    cfg: PPORunConfig,
    eos: int,
) -> dict[str, Any]:
    device = accelerator.device
    texts = [
        tok.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in prompts
    ]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    policy = accelerator.unwrap_model(model).policy
    policy.eval()
    generated = policy.generate(
        **enc,
        do_sample=True,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=0,
        max_new_tokens=cfg.max_new_tokens,
        pad_token_id=tok.pad_token_id,
        eos_token_id=eos,
    )
    width = enc["input_ids"].size(1)
    completion = generated[:, width:]
    is_eos = completion == eos
    ended = is_eos.any(1)
    # valid tokens: up to and including the first EOS
    after_eos = (is_eos.long().cumsum(1) - is_eos.long()) > 0
    mask = (~after_eos).float()
    completion = completion.masked_fill(after_eos, tok.pad_token_id)
    full = torch.cat([enc["input_ids"], completion], dim=1)
    attention = torch.cat([enc["attention_mask"], mask.long()], dim=1)
    positions = (attention.cumsum(1) - 1).clamp(min=0)
    logits, values = model(input_ids=full, attention_mask=attention, position_ids=positions)
    ref_logits = ref(input_ids=full, attention_mask=attention, position_ids=positions).logits
    span = slice(width - 1, full.size(1) - 1)  # positions that predict the completion tokens
    decoded = tok.batch_decode(completion.masked_fill(~mask.bool(), tok.pad_token_id),
                               skip_special_tokens=True)  # fmt: skip
    policy.train()
    return {
        "input_ids": full,
        "attention_mask": attention,
        "position_ids": positions,
        "width": width,
        "completion": completion,
        "mask": mask,
        "ended": ended,
        "logp": token_logprobs(logits[:, span], completion, cfg.temperature),
        "ref_logp": token_logprobs(ref_logits[:, span], completion, cfg.temperature),
        "values": values[:, span].float() * mask,
        "texts": [t.strip() for t in decoded],
        "ids": [row[: int(m.sum())].tolist() for row, m in zip(completion, mask, strict=True)],
    }


def optimise(
    accelerator: Any,
    model: Any,
    optimizer: torch.optim.Optimizer,
    roll: dict[str, Any],
    advantages: torch.Tensor,
    returns: torch.Tensor,
    cfg: PPORunConfig,
) -> dict[str, float]:
    n = roll["input_ids"].size(0)
    span = slice(roll["width"] - 1, roll["input_ids"].size(1) - 1)
    totals: dict[str, list[float]] = {}
    model.train()
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(n)
        for start in range(0, n, cfg.mini_batch_size):
            idx = order[start : start + cfg.mini_batch_size].to(roll["input_ids"].device)
            with accelerator.autocast():
                logits, values = model(
                    input_ids=roll["input_ids"][idx],
                    attention_mask=roll["attention_mask"][idx],
                    position_ids=roll["position_ids"][idx],
                )
            mask = roll["mask"][idx]
            new_logp = token_logprobs(logits[:, span], roll["completion"][idx], cfg.temperature)
            pg_loss, vf_loss, stats = ppo_losses(
                new_logp,
                roll["logp"][idx],
                advantages[idx],
                values[:, span].float(),
                roll["values"][idx],
                returns[idx],
                mask,
                cfg.cliprange,
                cfg.cliprange_value,
            )
            loss = pg_loss + cfg.vf_coef * vf_loss
            accelerator.backward(loss)
            if cfg.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad()
            for key, value in {"loss/policy": pg_loss.item(), "loss/value": vf_loss.item(),
                               **stats}.items():  # fmt: skip
                totals.setdefault(key, []).append(value)
    return {k: sum(v) / len(v) for k, v in totals.items() if not math.isnan(sum(v))}


if __name__ == "__main__":
    sys.exit(run_main(PPORunConfig, main, sys.argv[1:]))
