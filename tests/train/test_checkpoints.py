"""The TRL trainers' precision, checkpoints, resume and NaN stop, on the tiny random Llama."""

from __future__ import annotations

import json

import pytest
import torch

from rlaif.errors import TrainingDivergedError
from rlaif.train import common, sft
from rlaif.train.common import load_recipe, read_metrics


def sft_cfg(tiny_llama_dir, sl_cai_file, out, **extra):
    settings = {"model": str(tiny_llama_dir), "dataset": str(sl_cai_file), "output_dir": str(out),
                "max_steps": 2, "per_device_train_batch_size": 2, "use_cpu": True,
                "report_to": [], "bf16": False, **extra}  # fmt: skip
    return load_recipe(sft.SFTRunConfig, None, **settings)


def safetensors_dtypes(folder):
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)


def test_bf16_checkpoint_trains_fp32_master_weights_under_autocast(
    tiny_llama_dir, sl_cai_file, tmp_path, monkeypatch
):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    bf16_dir = tmp_path / "bf16-model"
    AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.bfloat16).save_pretrained(
        bf16_dir
    )
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(bf16_dir)
    assert safetensors_dtypes(bf16_dir) == {"BF16"}
    cfg = sft_cfg(bf16_dir, sl_cai_file, tmp_path / "out", max_steps=1, bf16=True,
                  learning_rate=1e-5)  # fmt: skip
    seen = {}
    finish = sft.finish_training

    def spy(trainer, *args):
        seen["params"] = {p.dtype for p in trainer.model.parameters()}
        layer = trainer.model.model.layers[0].mlp.down_proj
        hook = layer.register_forward_hook(lambda m, i, o: seen.update(out=o.dtype))
        try:
            return finish(trainer, *args)
        finally:
            hook.remove()

    monkeypatch.setattr(sft, "finish_training", spy)
    out = sft.main(cfg)
    assert seen == {"params": {torch.float32}, "out": torch.bfloat16}  # fp32 weights, autocast
    assert safetensors_dtypes(out) == {"F32"}  # the optimizer updated fp32 weights
    before = AutoModelForCausalLM.from_pretrained(bf16_dir, dtype=torch.float32).state_dict()
    after = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).state_dict()
    key = "model.layers.0.mlp.down_proj.weight"
    change = (after[key] - before[key]).abs()
    assert change.max().item() > 0  # the step moved the weights ...
    # ... by about lr (Adam's first step), far below bf16's resolution at these magnitudes:
    # in pure bf16 almost every one of these updates would have rounded back to the old weight
    assert change.max().item() < 2e-5
    lost = (after[key].to(torch.bfloat16) == before[key].to(torch.bfloat16)).float().mean()
    assert lost.item() > 0.75  # 0.85 with this seed
    assert json.loads((out / "rlaif_train.json").read_text())["config"]["bf16"] is True


def stopping_metrics_callback(step):
    """The metrics callback, plus a kill (an exception) right after checkpoint ``step`` is saved."""
    original = common.metrics_callback

    def make(out_dir):
        base = original(out_dir)

        class Stop(type(base)):
            def on_save(self, args, state, control, **_):
                if state.global_step == step:
                    raise KeyboardInterrupt

        return Stop()

    return make


def test_interrupted_sft_resumes_from_its_checkpoint(
    tiny_llama_dir, sl_cai_file, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "sft"
    cfg = sft_cfg(tiny_llama_dir, sl_cai_file, out, max_steps=4, save_steps=1)
    monkeypatch.setattr(sft, "metrics_callback", stopping_metrics_callback(2))
    with pytest.raises(KeyboardInterrupt):
        sft.main(cfg)
    # save_total_limit 1: only the newest checkpoint stays
    assert [s for s, _ in common.checkpoints(out)] == [2]
    assert [r["step"] for r in read_metrics(out) if "loss" in r] == [1, 2]
    assert not (out / "model.safetensors").exists()
    # a half-written later checkpoint (no trainer_state.json) is not resumed from
    (out / "checkpoint-3").mkdir()
    (out / "checkpoint-3" / "model.safetensors").write_bytes(b"partial")
    assert common.last_checkpoint(out) == out / "checkpoint-2"

    monkeypatch.undo()
    capsys.readouterr()
    sft.main(sft_cfg(tiny_llama_dir, sl_cai_file, out, max_steps=4, save_steps=1))
    assert "sft: resuming after step 2 from" in capsys.readouterr().out
    # steps 1-2 from the first run, 3-4 from the resumed one: no row twice
    assert [r["step"] for r in read_metrics(out) if "loss" in r] == [1, 2, 3, 4]
    assert common.checkpoints(out) == []  # finished: nothing left to resume
    assert (out / "model.safetensors").is_file()


def test_resume_false_starts_over(tiny_llama_dir, sl_cai_file, tmp_path, capsys):
    out = tmp_path / "sft"
    (out / "checkpoint-7").mkdir(parents=True)
    (out / "checkpoint-7" / "trainer_state.json").write_text("{}")
    (out / "metrics.jsonl").write_text(json.dumps({"step": 9, "loss": 1.0}) + "\n")
    sft.main(sft_cfg(tiny_llama_dir, sl_cai_file, out, resume=False))
    assert "resuming" not in capsys.readouterr().out
    assert [r["step"] for r in read_metrics(out) if "loss" in r] == [1, 2]
    assert common.checkpoints(out) == []


def test_nan_stops_sft_at_its_step_before_its_checkpoint(tiny_llama_dir, sl_cai_file, tmp_path):
    out = tmp_path / "sft"
    # Adam's first step moves every weight by ~lr = 1e30: the next step's gradients overflow
    # (the loss over the whole conversation, so step 1's gradient norm is the one measured here)
    cfg = sft_cfg(tiny_llama_dir, sl_cai_file, out, max_steps=4, save_steps=1, learning_rate=1e30,
                  train_on="conversation")  # fmt: skip
    with pytest.raises(TrainingDivergedError, match=r"diverged at step 2: grad_norm not finite"):
        sft.main(cfg)
    rows = [r for r in read_metrics(out) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["grad_norm"] == pytest.approx(2.19, abs=0.01)
    assert rows[1]["grad_norm"] is None  # written as null, not dropped
    assert [s for s, _ in common.checkpoints(out)] == [1]  # the last finite checkpoint stays
    assert not (out / "model.safetensors").exists()


def test_nan_loss_stops_the_run(tiny_llama_dir, sl_cai_file, tmp_path):
    # fp16 loss scaling skips steps with inf gradients: there only the loss itself is watched
    from transformers import TrainerControl, TrainerState, TrainingArguments

    callback = common.metrics_callback(tmp_path)
    state = TrainerState(global_step=7)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    callback.on_log(args, state, TrainerControl(), logs={"loss": 1.5, "grad_norm": 3.0})
    with pytest.raises(TrainingDivergedError, match=r"at step 7: loss not finite"):
        callback.on_log(args, state, TrainerControl(), logs={"loss": float("nan")})
    args.fp16 = True
    callback.on_log(args, state, TrainerControl(), logs={"loss": 1.5, "grad_norm": float("inf")})
    assert [r["loss"] for r in read_metrics(tmp_path)] == [1.5, None, 1.5]


def test_nan_loss_is_one_line_and_exit_2(tiny_llama_dir, sl_cai_file, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"model: {tiny_llama_dir}\ndataset: {sl_cai_file}\noutput_dir: {tmp_path / 'o'}\n"
        "max_steps: 3\nper_device_train_batch_size: 2\nuse_cpu: true\nbf16: false\n"
        "report_to: []\nlearning_rate: 1.0e+30\n"
    )
    assert common.run_main(sft.SFTRunConfig, sft.main, ["--config", str(recipe)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "rlaif: error: training diverged at step 2: grad_norm not finite "
        "(lower the learning rate, check the data, or train in fp32)"
    )


def test_defaults_checkpoint_and_resume():
    cfg = load_recipe(sft.SFTRunConfig, None)
    assert (cfg.save_strategy, cfg.save_steps, cfg.save_total_limit) == ("steps", 100, 1)
    assert cfg.resume is True and cfg.logging_nan_inf_filter is False


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["rm", "dpo", "grpo"])
def test_every_trl_trainer_resumes_after_a_kill(
    kind, tiny_llama_dir, prefs_file, prompts_file, tmp_path, monkeypatch, capsys
):
    from rlaif.train import dpo, grpo, reward

    base = {"max_steps": 3, "save_steps": 1, "use_cpu": True, "report_to": [], "bf16": False,
            "output_dir": str(tmp_path / kind), "model": str(tiny_llama_dir)}  # fmt: skip
    if kind == "rm":
        module, cls, main = reward, reward.RewardRunConfig, reward.main
        extra = {"dataset": str(prefs_file), "per_device_train_batch_size": 2, "eval_split": 0}
    elif kind == "dpo":
        module, cls, main = dpo, dpo.DPORunConfig, dpo.main
        extra = {"dataset": str(prefs_file), "per_device_train_batch_size": 2}
    else:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        rm = tmp_path / "rm"
        AutoModelForSequenceClassification.from_pretrained(
            tiny_llama_dir, num_labels=1
        ).save_pretrained(rm)
        AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(rm)
        module, cls, main = grpo, grpo.GRPORunConfig, grpo.main
        extra = {"prompts": str(prompts_file), "reward_model": str(rm),
                 "per_device_train_batch_size": 4, "num_generations": 2,
                 "max_completion_length": 4}  # fmt: skip
    monkeypatch.setattr(module, "metrics_callback", stopping_metrics_callback(2))
    with pytest.raises(KeyboardInterrupt):
        main(load_recipe(cls, None, **base, **extra))
    monkeypatch.undo()
    out = main(load_recipe(cls, None, **base, **extra))
    assert f"{kind}: resuming after step 2 from {out / 'checkpoint-2'}" in capsys.readouterr().out
    assert [r["step"] for r in read_metrics(out) if "loss" in r] == [1, 2, 3]
    assert common.checkpoints(out) == [] and (out / "model.safetensors").is_file()
