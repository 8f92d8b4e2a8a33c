"""``rlaif run`` with ``rm.mix``: the data stages and RL are faked (they have tests of their
own), the RM stage trains a tiny random Llama for real on AI pairs mixed with human pairs, and the
report shows the held-out accuracy of each source with its interval and n."""

from __future__ import annotations

import json
import re
import shutil

from rlaif.pipeline import RunConfig, run_pipeline
from rlaif.stages import StageBuilder

from .conftest import FIXTURES

HH = FIXTURES / "hh_helpful_small.jsonl"
LABELER = {"backend": "transformers", "model": "smollm2"}


def fake_stages(monkeypatch, tiny_dir):
    """Stand-ins for the expensive stages: SL-CAI and RL write nothing of note, SFT is the tiny
    model, prefs writes AI pairs as ``rlaif generate prefs`` does (with provenance)."""

    def sl_cai(self, out):
        out.mkdir(parents=True, exist_ok=True)
        (out / "sl_cai.jsonl").write_text('{"id": "a", "flags": []}\n')
        return [out / "sl_cai.jsonl"]

    def sft(self, out):
        shutil.copytree(tiny_dir, out, dirs_exist_ok=True)
        return [out]

    def prefs(self, policy):
        def run(out):
            out.mkdir(parents=True, exist_ok=True)
            rows = [
                {"id": f"p{i}/0-1", "prompt_id": f"p{i}",
                 "prompt": [{"role": "user", "content": f"How do I do harmful thing {i}?"}],
                 "chosen": [{"role": "assistant", "content": "I can't help with that."}],
                 "rejected": [{"role": "assistant", "content": f"Step one of thing {i}."}],
                 "preference_prob": 0.8, "position_consistent": True,
                 "provenance": {"labeler": LABELER}}
                for i in range(8)
            ]  # fmt: skip
            path = out / "preferences.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
            return [path]

        return run

    def nothing(self, *args):
        return lambda out: []

    for name, fake in (("sl_cai", sl_cai), ("sft", sft), ("prefs", prefs), ("rl", nothing),
                       ("evaluate", nothing)):  # fmt: skip
        monkeypatch.setattr(StageBuilder, name, fake)


def test_run_with_rm_mix_reports_accuracy_per_source(tiny_llama_dir, tmp_path, monkeypatch):
    fake_stages(monkeypatch, tiny_llama_dir)
    human = tmp_path / "helpful.jsonl"
    shutil.copy(HH, human)
    rm = {"max_steps": 2, "per_device_train_batch_size": 2, "eval_split": 0.25,
          "use_cpu": True, "report_to": [], "bf16": False, "save_strategy": "no",
          "mix": [{"path": str(human), "weight": 1.0}]}  # fmt: skip
    cfg = RunConfig(name="mix", out=tmp_path / "run", prompts=FIXTURES / "red_team.txt",
                    train_prompts=3, rm=rm)  # fmt: skip
    first = run_pipeline(cfg)
    assert [r["stage"] for r in first] == ["sl_cai", "sft", "prefs", "rm", "rl", "eval", "report"]
    root = cfg.root
    by = json.loads((root / "rm" / "eval_by_source.json").read_text())
    sources = by["sources"]
    assert list(sources) == ["ai:transformers:smollm2", "human:helpful"]
    assert sources["ai:transformers:smollm2"]["n"] == 2  # 0.25 x 8 prompts
    assert sources["human:helpful"]["n"] == 3  # 0.25 x 12 prompts
    assert sources["human:helpful"]["train_pairs"] == 6  # 1.0 x the 6 AI training pairs
    assert json.loads((root / "rm" / "held_out.json").read_text()) == {"pairs": 5}

    md = (root / "report.md").read_text()
    assert "## Reward model held-out accuracy by source" in md
    for label, s in sources.items():
        lo, hi = s["ci95"]
        cell = f"{s['accuracy']:.3f} (95% CI {lo:.3f}-{hi:.3f}, n={s['n']})"
        assert f"| {label} | {cell} | {s['train_pairs']} |" in md, label
    o = by["overall"]
    assert re.search(rf"\| reward model held-out accuracy \| {o['accuracy']:.3f} \(95% CI .*"
                     rf"n=5\) \|", md)  # fmt: skip
    html = (root / "report.html").read_text()
    assert "<td>human:helpful</td>" in html and "Reward model held-out accuracy by source" in html

    # the human file is an input of the RM stage: changing it reruns the RM and what follows
    again = {r["stage"]: r for r in run_pipeline(cfg)}
    assert again["rm"]["skipped"] and again["rl"]["skipped"]
    rows = HH.read_text().splitlines()
    human.write_text("\n".join(rows[:8]) + "\n")
    changed = {r["stage"]: r for r in run_pipeline(cfg)}
    assert changed["prefs"]["skipped"] and not changed["rm"]["skipped"]
    assert not changed["rl"]["skipped"]
    by = json.loads((root / "rm" / "eval_by_source.json").read_text())
    assert by["sources"]["human:helpful"]["n"] == 2  # 0.25 x 8 prompts
