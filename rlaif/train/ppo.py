"""RL-CAI with PPO and a KL penalty to the SFT policy: our own, small, on transformers + accelerate.

TRL removed its PPO trainer (1.13), so this is ours. It follows the recipe of the RLHF papers
(Ziegler et al. 2019; Stiennon et al. 2020; Ouyang et al. 2022) that Constitutional AI used:

1. **Rollout.** Sample a completion for each prompt of the batch from the policy (initialised from
   the SFT checkpoint), with ``generate`` or (``rollout_engine: vllm``) a vLLM engine in the
   same process that gets the policy's weights after every optimisation phase (``ppo_vllm``).
   Tokens after the first EOS are padding.
2. **Score.** The reward model (our soft-label RM, a sequence classifier) scores prompt +
   completion; optional rule-based penalties (no EOS, length) are added. A Python reward function
   can stand in for the RM (tests use a toy reward with a known optimum). The score lands on the
   last valid token (the EOS, when there is one).
3. **KL penalty in the reward.** With log-probs of the sampled tokens under the policy (pi) and the
   frozen SFT reference (pi_SFT), each token's reward is ``-beta * (log pi - log pi_SFT)`` (the k1
   estimator; the non-negative k3 is logged beside it as ``kl_k3``, see ``ppo_core``). ``beta``
   is fixed, or adapted by the proportional controller of Ziegler et al. towards ``target_kl``.
4. **Advantages.** A value head on the policy's last hidden state estimates each state's return;
   GAE(gamma, lambda) gives advantages (whitened over the global batch, across processes) and
   returns.
5. **PPO epochs.** Over shuffled mini-batches: the clipped surrogate
   ``max(-A r, -A clip(r, 1 - eps, 1 + eps))`` with ``r = pi / pi_old`` and ``eps = 0.2``, plus a
   clipped value loss weighted by ``vf_coef``. AdamW decays the body's weight matrices only.

The trainer is split where its parts meet: ``ppo_core`` holds the tensor arithmetic (GAE,
whitening, KL estimators, losses), ``ppo_rollout`` the models, their precision and the sampling,
and ``rlaif.eval.hacking`` the reward-hacking monitors; this file is the loop, the optimisation
and the checkpoints. Names used elsewhere (``gae``, ``ppo_losses``, ``rollout``...) are
re-exported here.

Precision: fp32 weights always, bf16 autocast for the compute with ``bf16: true``, the same
context for every log-prob (details in ``ppo_rollout``). Processes: ``accelerate`` handles the
devices -- one CPU, one GPU, or DDP across many, each process rolling out its own prompts. Two
processes on a CPU (gloo), and the same on GPUs::

    python -m torch.distributed.run --standalone --nproc_per_node 2 -m rlaif.train.ppo \\
        --config recipes/train/ppo-tiny.yaml
    accelerate launch --config_file recipes/accelerate/ddp.yaml -m rlaif.train.ppo \\
        --config recipes/train/ppo.yaml

The weights are gathered with ``accelerator.get_state_dict`` on every process and written once,
by the main process. The rollout's ``generate`` and the optimizer checkpoint assume each process
holds whole parameters (one device or DDP), not ZeRO-3/FSDP shards.

Every step appends reward, KL (k1 and k3), beta, response length, losses, clip fraction and
approximate KL to ``metrics.jsonl``; a non-finite loss stops the run with
``TrainingDivergedError`` naming the step. Plots are drawn at the end; the policy (with its
tokenizer) and the value head are saved in ``output_dir``.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlaif.errors import ConfigError
from rlaif.eval.hacking import LabelerJudges
from rlaif.train.common import (
    METRICS_FILE,
    append_metrics,
    keep_metrics_until,
    model_path,
    raise_if_nonfinite,
    run_main,
    save_run_config,
    write_plots,
)
from rlaif.train.ppo_core import (
    AdaptiveKL,
    gae,
    kl_estimates,
    masked_mean,
    param_groups,
    ppo_losses,
    token_logprobs,
    token_rewards,
    whiten,
)
from rlaif.train.ppo_rollout import (
    PolicyWithValue,
    RewardFn,
    generate_greedy,
    load_causal_lm,
    read_probes,
    read_prompt_texts,
    rm_reward,
    rollout,
)
from rlaif.train.ppo_vllm import VLLMSampler

WARNINGS_FILE = "warnings.jsonl"

__all__ = [
    "AdaptiveKL",
    "PPORunConfig",
    "PolicyWithValue",
    "RewardFn",
    "gae",
    "kl_estimates",
    "main",
    "masked_mean",
    "optimise",
    "ppo_losses",
    "rollout",
    "token_logprobs",
    "token_rewards",
    "whiten",
]


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
    top_p: float = field(
        default=1.0, metadata={"help": "< 1 samples from a truncated pi: the KL estimate is biased"}
    )
    rollout_engine: str = field(
        default="hf", metadata={"help": "hf (generate) or vllm (a colocated vLLM engine)"}
    )
    vllm_gpu_memory_utilization: float = field(
        default=0.3, metadata={"help": "share of the device the vLLM engine takes (weights + KV)"}
    )
    vllm_max_model_len: int | None = field(
        default=None, metadata={"help": "prompt + completion tokens vLLM plans for (null: model's)"}
    )
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
    weight_decay: float = field(
        default=0.01, metadata={"help": "AdamW decay of the body's weight matrices only"}
    )
    bf16: bool = field(default=False, metadata={"help": "bf16 autocast; weights stay fp32"})
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
        if self.rollout_engine not in ("hf", "vllm"):
            raise ValueError(f"rollout_engine must be hf or vllm, not '{self.rollout_engine}'")


CHECKPOINT = "checkpoint"


def has_accelerator() -> bool:
    """A GPU (or another accelerator torch knows) on this machine."""
    if hasattr(torch, "accelerator"):  # torch >= 2.6
        return torch.accelerator.is_available()
    return torch.cuda.is_available() or torch.backends.mps.is_available()


def gathered_weights(accelerator: Any, model: Any) -> tuple[dict, dict]:
    """The policy's and the value head's full state dicts. Every process must call this:
    under ZeRO-3 or FSDP ``get_state_dict`` gathers the shards with a collective."""
    state = accelerator.get_state_dict(model)
    if state is None:  # processes other than the main one may get nothing back
        return {}, {}

    def part(prefix: str) -> dict:
        return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}

    return part("policy."), part("value_head.")


def save_weights(accelerator: Any, model: Any, policy_dir: Path, head_file: Path) -> None:
    """The policy (``save_pretrained``, fp32) and the value head: gathered on every process,
    written by the main one."""
    policy_state, head_state = gathered_weights(accelerator, model)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.policy.save_pretrained(policy_dir, state_dict=policy_state)
        torch.save(head_state, head_file)


def save_checkpoint(accelerator: Any, model: Any, optimizer: Any, out: Path, state: dict) -> None:
    """Policy, value head, optimizer and loop state; written to a temporary folder and renamed,
    so a kill mid-save leaves the previous checkpoint intact. Called on every process."""
    tmp = out / f".{CHECKPOINT}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    save_weights(accelerator, model, tmp / "policy", tmp / "value_head.pt")
    optim_state = optimizer.state_dict()  # with DDP every process holds the same full state
    if accelerator.is_main_process:
        torch.save(optim_state, tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps(state))
        final = out / CHECKPOINT
        old = out / f".{CHECKPOINT}.old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def load_checkpoint(out: Path, steps: int) -> dict | None:
    state_file = out / CHECKPOINT / "state.json"
    if not state_file.exists():
        return None
    state = json.loads(state_file.read_text())
    return state if 0 < state["step"] < steps else None


def shaped_scores(
    scores: torch.Tensor,
    ended: torch.Tensor,
    lengths: torch.Tensor,
    texts: list[str],
    cfg: PPORunConfig,
) -> torch.Tensor:
    """The sequence scores after the rule-based penalties: ``missing_eos_penalty`` for a
    completion that never ended, ``length_penalty`` per token, and the repetition penalty."""
    from rlaif.eval.hacking import repetition_penalties

    if cfg.missing_eos_penalty is not None:
        scores = scores - cfg.missing_eos_penalty * (~ended).float()
    scores = scores - cfg.length_penalty * lengths
    if cfg.repetition_penalty:
        penalty = repetition_penalties(texts, cfg.repetition_penalty)
        scores = scores - torch.tensor(penalty, device=scores.device)
    return scores


def main(
    cfg: PPORunConfig, reward_fn: RewardFn | None = None, sampler: VLLMSampler | None = None
) -> Path:
    """Train; ``sampler``: a started vLLM engine to roll out with (``rollout_engine: vllm``)
    instead of starting one (an engine is slow to start and keeps its memory)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import set_seed
    from transformers import AutoTokenizer

    from rlaif.eval.hacking import Monitor, Thresholds

    # a run before this one in the same process (``rlaif run``: SFT, then PPO) leaves accelerate's
    # global state at its own precision; the process group itself is kept
    AcceleratorState._reset_state()
    accelerator = Accelerator(
        mixed_precision="bf16" if cfg.bf16 else "no",
        # without an accelerator, accelerate runs torchrun's processes as a gloo group only when
        # told cpu=True (else each process would train alone, as if it were the only one)
        cpu=cfg.use_cpu or not has_accelerator(),
        log_with=cfg.report_to or None,
        project_dir=cfg.output_dir,
    )
    if accelerator.is_main_process:
        print(f"ppo: {accelerator.num_processes} process(es) on {accelerator.device.type}, "
              f"mixed precision {accelerator.mixed_precision}", flush=True)  # fmt: skip
    out = Path(cfg.output_dir)
    resumed = load_checkpoint(out, cfg.steps) if cfg.resume else None
    start = resumed["step"] + 1 if resumed else 1
    set_seed(cfg.seed * 7919 + start + accelerator.process_index)
    if accelerator.is_main_process:
        # metrics and warnings of steps after the checkpoint belong to the run that stopped
        keep_metrics_until(out, resumed["step"] if resumed else 0, (METRICS_FILE, WARNINGS_FILE))
    if cfg.report_to:
        accelerator.init_trackers("rlaif-ppo")
    path = model_path(cfg.model)
    tok = AutoTokenizer.from_pretrained(path, padding_side="left")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    device = accelerator.device
    own_sampler = cfg.rollout_engine == "vllm" and sampler is None
    if own_sampler:  # before the models: vLLM checks that its share of the device is free
        sampler = VLLMSampler.start(accelerator, path, cfg, tok.eos_token_id)
    owned = sampler if own_sampler else None  # closed here, whether the run ends or fails
    try:
        model = PolicyWithValue(load_causal_lm(out / CHECKPOINT / "policy" if resumed else path))
        if resumed:
            model.value_head.load_state_dict(torch.load(out / CHECKPOINT / "value_head.pt"))
            if accelerator.is_main_process:
                print(
                    f"ppo: resuming after step {resumed['step']} from {out / CHECKPOINT}",
                    flush=True,
                )
        ref = load_causal_lm(model_path(cfg.ref_model) if cfg.ref_model else path).to(device)
        ref.requires_grad_(False)
        if reward_fn is None:
            if cfg.reward_model is None and cfg.missing_eos_penalty is None:
                raise ConfigError("PPO needs a reward_model (or a reward function)")
            reward_fn = (
                rm_reward(model_path(cfg.reward_model), device, cfg.bf16)
                if cfg.reward_model
                else (lambda p, c, ids: torch.zeros(len(c)))
            )
        groups = param_groups(model.named_parameters(), cfg.weight_decay)
        optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate, eps=1e-5)
        if resumed:
            optimizer.load_state_dict(torch.load(out / CHECKPOINT / "optimizer.pt"))
        model, optimizer = accelerator.prepare(model, optimizer)
        model.eval()  # no dropout, in the rollout and the optimisation: see ppo_rollout
        if cfg.rollout_engine == "hf":
            sampler = None
        elif sampler is not None and (resumed or not own_sampler):
            sampler.sync(accelerator.unwrap_model(model).policy)  # it may hold other weights
        prompts = read_prompt_texts(cfg)
        probes = read_probes(cfg) if cfg.probe_every else []
        rng = random.Random(cfg.seed * 1000 + accelerator.process_index)
        for _ in range((start - 1) * cfg.batch_size):  # the same prompt sequence as without a stop
            rng.choice(prompts)
        kl_ctl = AdaptiveKL(
            resumed["beta"] if resumed else cfg.kl_coef, cfg.target_kl, cfg.kl_horizon
        )
        monitor = Monitor(Thresholds(length_ratio=cfg.warn_length_ratio,
                                     distinct_2=cfg.warn_distinct_2, kl=cfg.warn_kl))  # fmt: skip
        if resumed:
            monitor._lengths = resumed.get("baseline_lengths", [])
        judges = LabelerJudges(cfg.judge_labeler)
        eos = tok.eos_token_id

        def total(t: torch.Tensor) -> torch.Tensor:
            return accelerator.reduce(t, "sum")

        for step in range(start, cfg.steps + 1):
            batch_prompts = [rng.choice(prompts) for _ in range(cfg.batch_size)]
            roll = rollout(accelerator, model, ref, tok, batch_prompts, cfg, eos, sampler)
            scores = reward_fn(batch_prompts, roll["texts"], roll["ids"]).to(device).float()
            raw_scores = scores.clone()
            scores = shaped_scores(scores, roll["ended"], roll["mask"].sum(1), roll["texts"], cfg)
            kl, kl_k3 = kl_estimates(roll["logp"], roll["ref_logp"], roll["mask"])
            rewards = token_rewards(kl, scores, roll["mask"], kl_ctl.beta)
            advantages, returns = gae(rewards, roll["values"], roll["mask"], cfg.gamma, cfg.lam)
            advantages = whiten(advantages, roll["mask"], reduce=total)
            stats = optimise(accelerator, model, optimizer, roll, advantages, returns, cfg)
            raise_if_nonfinite(stats, step)  # every process sees the same averaged losses
            if sampler is not None and (step < cfg.steps or probes):
                sampler.sync(accelerator.unwrap_model(model).policy)  # the next samples: new pi
            mean_kl = accelerator.gather(kl.sum(1)).mean().item()
            if cfg.adaptive_kl:
                kl_ctl.update(mean_kl, cfg.batch_size * accelerator.num_processes)
            extra: dict[str, Any] = {}
            if cfg.judge_every and step % cfg.judge_every == 0:
                extra["monitor/rm_judge_spearman"] = judges.rm_judge_correlation(
                    batch_prompts, roll["texts"], raw_scores.tolist()
                )
            if probes and step % cfg.probe_every == 0:
                answers = generate_greedy(
                    accelerator, model, tok, probes, cfg.max_new_tokens, eos, sampler
                )
                extra["monitor/sycophancy"] = judges.sycophancy(probes, answers)
            lengths = roll["mask"].sum(1).tolist()
            n_warn = len(monitor.warnings)
            watched = monitor.check(step, roll["texts"], lengths, mean_kl, extra)
            record = {
                "step": step,
                "reward": accelerator.gather(scores).mean().item(),
                "reward/model": accelerator.gather(raw_scores).mean().item(),
                "kl": mean_kl,
                "kl_k3": accelerator.gather(kl_k3.sum(1)).mean().item(),
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
                        f"kl {record['kl']:.3f} (k3 {record['kl_k3']:.3f}) "
                        f"beta {record['beta']:.4f} "
                        f"len {record['response_length']:.1f}",
                        flush=True,
                    )
                for w in monitor.warnings[n_warn:]:
                    append_metrics(out, {"warning": w["monitor"], **w}, WARNINGS_FILE)
                    print(f"ppo warning at step {step}: {w['monitor']} {w['value']} is "
                          f"{w['side']} {w['threshold']}", flush=True)  # fmt: skip
            if cfg.report_to:
                accelerator.log(record, step=step)
            if cfg.save_steps and step % cfg.save_steps == 0 and step < cfg.steps:
                state = {"step": step, "beta": kl_ctl.beta, "baseline_lengths": monitor._lengths}
                save_checkpoint(accelerator, model, optimizer, out, state)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            out.mkdir(parents=True, exist_ok=True)
        save_weights(accelerator, model, out, out / "value_head.pt")
        if accelerator.is_main_process:
            tok.save_pretrained(out)
            save_run_config(out, cfg, "ppo")
            write_plots(out, "PPO")
            shutil.rmtree(out / CHECKPOINT, ignore_errors=True)  # finished: nothing to resume
        accelerator.wait_for_everyone()
    finally:
        if owned is not None:
            owned.close()
    accelerator.end_training()
    return out


def optimise(
    accelerator: Any,
    model: Any,
    optimizer: torch.optim.Optimizer,
    roll: dict[str, Any],
    advantages: torch.Tensor,
    returns: torch.Tensor,
    cfg: PPORunConfig,
) -> dict[str, float]:
    """PPO epochs over shuffled mini-batches; the mean of each statistic over the mini-batches
    and the processes (a NaN stays a NaN: the caller stops the run on it)."""
    n = roll["input_ids"].size(0)
    keep = roll["completion"].size(1) + 1  # the positions that predict the completion, and one
    totals: dict[str, list[float]] = {}
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(n)
        for start in range(0, n, cfg.mini_batch_size):
            idx = order[start : start + cfg.mini_batch_size].to(roll["input_ids"].device)
            with accelerator.autocast():
                logits, values = model(
                    input_ids=roll["input_ids"][idx],
                    attention_mask=roll["attention_mask"][idx],
                    position_ids=roll["position_ids"][idx],
                    keep=keep,
                )
            mask = roll["mask"][idx]
            new_logp = token_logprobs(logits[:, :-1], roll["completion"][idx], cfg.temperature)
            pg_loss, vf_loss, stats = ppo_losses(
                new_logp,
                roll["logp"][idx],
                advantages[idx],
                values[:, :-1].float(),
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
    means = torch.tensor([sum(v) / len(v) for v in totals.values()], device=accelerator.device)
    means = accelerator.reduce(means, "mean")
    return dict(zip(totals, means.tolist(), strict=True))


if __name__ == "__main__":
    sys.exit(run_main(PPORunConfig, main, sys.argv[1:]))
