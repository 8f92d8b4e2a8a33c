"""``rlaif run``: every stage on tiny models, skipping on rerun, resuming RL after a kill."""

from __future__ import annotations

import json

import pytest

from rlaif.cli import main
from rlaif.data.provenance import read_rows
from rlaif.pipeline import RunConfig, read_manifest, run_pipeline

from .conftest import FIXTURES

pytestmark = pytest.mark.slow


def recipe(tiny, tmp_path, **kw):
    spec = f"transformers:{tiny}"
    settings = {
        "name": "tiny", "out": tmp_path / "run", "base_model": str(tiny), "labeler": spec,
        "prompts": FIXTURES / "red_team.txt", "train_prompts": 3, "eval_limit": 2,
        "benign_limit": 2,
        "sl_cai": {"max_tokens": 6}, "sft": {"max_steps": 2, "per_device_train_batch_size": 2},
        "prefs": {"max_tokens": 6}, "rm": {"max_steps": 2, "per_device_train_batch_size": 2},
        "rl": {"algorithm": "ppo", "settings": {"steps": 3, "batch_size": 2,
               "mini_batch_size": 1, "max_new_tokens": 4, "save_steps": 1,
               "judge_every": 2, "probe_every": 3}},
        "eval": {"max_tokens": 6},
    }  # fmt: skip
    return RunConfig(**{**settings, **kw})


def test_whole_loop_then_skip_then_resume_rl(tiny_llama_dir, tmp_path, monkeypatch):
    cfg = recipe(tiny_llama_dir, tmp_path)
    first = run_pipeline(cfg)
    assert [r["stage"] for r in first] == ["sl_cai", "sft", "prefs", "rm", "rl", "eval", "report"]
    root = cfg.root
    assert all(read_manifest(root / r["stage"])["status"] == "done" for r in first)
    html = (root / "report.html").read_text()
    prefs = (root / "prefs" / "preferences.jsonl").read_text().splitlines()
    assert f"<td>preference pairs (unlabeled)</td><td>{len(prefs)} (" in html
    assert "harmless win rate vs base" in html and "data:image/png;base64," in html
    ev = json.loads((root / "eval" / "policy_eval.json").read_text())
    assert set(ev["policies"]) == {"base", "sft", "rl"} and ev["red_team"] == 2
    rl_rows = [json.loads(x) for x in (root / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert any("monitor/rm_judge_spearman" in r for r in rl_rows)
    assert any("monitor/sycophancy" in r for r in rl_rows)

    again = run_pipeline(cfg)
    assert [r.get("skipped", False) for r in again] == [True] * 6 + [False]  # report redrawn

    # a kill during RL: everything before RL is skipped, RL resumes from its checkpoint
    from rlaif.train import ppo

    calls = {"n": 0}
    real = ppo.optimise

    def dies_on_second(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(ppo, "optimise", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, start="rl")
    assert read_manifest(root / "rl")["status"] == "running"
    assert read_manifest(root / "eval")["status"] == "stale"  # it judged the old RL policy
    calls["n"] = 10
    resumed = run_pipeline(cfg)
    by_stage = {r["stage"]: r for r in resumed}
    assert all(by_stage[s].get("skipped") for s in ("sl_cai", "sft", "prefs", "rm"))
    assert by_stage["rl"]["resumed"] is True and calls["n"] == 12  # steps 2 and 3 only
    assert not by_stage["eval"].get("skipped") and by_stage["eval"]["status"] == "done"
    steps = [
        json.loads(x)["step"] for x in (root / "rl" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [1, 2, 3]


def test_changed_settings_rerun_that_stage_and_after(tiny_llama_dir, tmp_path):
    cfg = recipe(tiny_llama_dir, tmp_path, rl={"algorithm": "dpo",
                 "settings": {"max_steps": 1, "per_device_train_batch_size": 2}})  # fmt: skip
    first = run_pipeline(cfg, until="rl")
    assert [r["stage"] for r in first] == ["sl_cai", "sft", "prefs", "rl"]  # DPO needs no RM
    changed = cfg.model_copy(update={"sft": {"max_steps": 1, "per_device_train_batch_size": 2}})
    second = run_pipeline(changed, until="rl")
    assert [r.get("skipped", False) for r in second] == [True, False, False, False]


def test_cli_list_and_bad_stage(tiny_llama_dir, tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(
        f"name: t\nprompts: {FIXTURES / 'red_team.txt'}\ntrain_prompts: 3\nout: {tmp_path / 'o'}\n"
    )
    assert main(["run", str(path), "--list"]) == 0
    assert "sl_cai     not run" in capsys.readouterr().out
    assert main(["run", str(path), "--from", "nope"]) == 2
    assert "no such stage" in capsys.readouterr().err
    path.write_text("name: t\nprompts: x.txt\nrl:\n  algoritm: ppo\n")
    assert main(["run", str(path)]) == 2
    assert f"{path}:4: in rl: unknown key 'algoritm'" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["quickstart.yaml", "run-7b-gpu.yaml"])
def test_shipped_run_recipes_are_valid(name):
    from rlaif.errors import ConfigFileError
    from rlaif.yamlio import load_yaml_model

    from .conftest import REPO

    cfg = load_yaml_model(REPO / "recipes" / name, RunConfig, ConfigFileError)
    assert cfg.rl.algorithm == "ppo" and cfg.name


def test_iterated_rl_cai_relabels_the_current_policy(tiny_llama_dir, tmp_path):
    cfg = recipe(tiny_llama_dir, tmp_path, iterations=1,
                 rl={"algorithm": "ppo", "settings": {"steps": 1, "batch_size": 2,
                     "mini_batch_size": 1, "max_new_tokens": 4}})  # fmt: skip
    names = [r["stage"] for r in run_pipeline(cfg, until="rl_2")]
    assert names == ["sl_cai", "sft", "prefs", "rm", "rl", "prefs_2", "rm_2", "rl_2"]
    prov = read_rows(cfg.root / "prefs_2" / "preferences.jsonl")[0]
    from rlaif.models import weights_fingerprint

    policy = prov["provenance"]["policy"]  # the rl stage's folder, by name and weights
    assert policy["model"] == "rl"
    assert policy["weights_fingerprint"] == weights_fingerprint(str(cfg.root / "rl"))
    rl2 = json.loads((cfg.root / "rl_2" / "rlaif_train.json").read_text())["config"]
    assert rl2["model"] == str(cfg.root / "rl") and rl2["ref_model"] == str(cfg.root / "sft")
    assert rl2["reward_model"] == str(cfg.root / "rm_2")


def test_interrupted_sft_stage_resumes_from_its_checkpoint(tiny_llama_dir, tmp_path, monkeypatch):
    from rlaif.train import common, sft

    cfg = recipe(tiny_llama_dir, tmp_path, sft={"max_steps": 4, "save_steps": 1,
                 "per_device_train_batch_size": 2})  # fmt: skip
    original = common.metrics_callback

    def killed_after_checkpoint_2(out_dir):
        base = original(out_dir)

        class Kill(type(base)):
            def on_save(self, args, state, control, **_):
                if state.global_step == 2:
                    raise KeyboardInterrupt

        return Kill()

    monkeypatch.setattr(sft, "metrics_callback", killed_after_checkpoint_2)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, until="sft")
    root = cfg.root
    assert read_manifest(root / "sft")["status"] == "running"
    assert [s for s, _ in common.checkpoints(root / "sft")] == [2]
    monkeypatch.undo()
    resumed = {r["stage"]: r for r in run_pipeline(cfg, until="sft")}
    assert resumed["sl_cai"]["skipped"] is True
    assert resumed["sft"]["resumed"] is True and resumed["sft"]["status"] == "done"
    # kept, not wiped: steps 1-2 from before the kill, 3-4 after it
    steps = [r["step"] for r in common.read_metrics(root / "sft") if "loss" in r]
    assert steps == [1, 2, 3, 4]
    assert common.checkpoints(root / "sft") == [] and (root / "sft" / "model.safetensors").exists()
