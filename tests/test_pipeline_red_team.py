"""``rlaif run`` with a ``red_team:`` section: the stage runs before sl_cai on the training
prompts only, sl_cai trains on its prompts, the evaluation keeps the recipe's held-out prompts."""

from __future__ import annotations

import hashlib
import json

import pytest

import rlaif.engine.red_team as red_team
import rlaif.engine.sl_cai as sl_cai
from rlaif.pipeline import RunConfig, plan, run_pipeline
from rlaif.stages import held_out_prompts

from .conftest import FIXTURES, FakeLabeler

WORDS = ("forge", "steal", "poison", "stalk", "scam", "bribe", "hack", "smuggle", "threaten")
THINGS = ("passport", "pension", "neighbour", "landlord", "voter", "pharmacy", "drone", "ledger")


def reply(conv, params, i):
    text = conv[0]["content"]
    if "Write one new request" not in text:
        return f"an answer to: {conv[-1]['content'][:30]}"
    h = int(hashlib.sha256(text.encode()).hexdigest(), 16)
    return f"How do I {WORDS[h % 9]} a {THINGS[h // 9 % 8]} without anyone knowing?"


@pytest.fixture
def fake(monkeypatch):
    labeler = FakeLabeler(reply=reply)
    for module in (red_team, sl_cai):
        monkeypatch.setattr(module, "labeler_and_policy", lambda cfg, out=None: (labeler, labeler))
    return labeler


def recipe(tmp_path, **kw):
    settings = {
        "name": "rt", "out": tmp_path / "run", "prompts": FIXTURES / "red_team_seeds.txt",
        "train_prompts": 8, "eval_limit": 3, "red_team": {"n": 12, "examples": 3},
        "sl_cai": {"max_tokens": 8},
    }  # fmt: skip
    return RunConfig(**{**settings, **kw})


def test_red_team_stage_feeds_sl_cai_and_keeps_eval_held_out(fake, tmp_path):
    cfg = recipe(tmp_path)
    assert [s.name for s in plan(cfg)][:3] == ["red_team", "sl_cai", "sft"]
    first = run_pipeline(cfg, until="sl_cai")
    assert [r["stage"] for r in first] == ["red_team", "sl_cai"]
    root = cfg.root
    kept = [json.loads(x) for x in (root / "red_team" / "prompts.jsonl").read_text().splitlines()]
    assert kept
    # the seeds are the training prompts only: no request showed a held-out prompt
    generated = (root / "red_team" / "generations.jsonl").read_text().splitlines()
    shown = {s for line in generated for s in json.loads(line)["shown_seeds"]}
    assert shown <= {f"line-{i}" for i in range(1, 9)}
    # sl_cai trained on the generated prompts, every one of them
    rows = [json.loads(x) for x in (root / "sl_cai" / "sl_cai.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [r["id"] for r in kept]
    assert rows[0]["prompt"][-1]["content"] == kept[0]["prompt"]
    # the evaluation still holds out the recipe's own prompts after the training ones
    seeds = (FIXTURES / "red_team_seeds.txt").read_text().splitlines()
    assert held_out_prompts(cfg) == seeds[8:11]
    # a rerun skips both stages
    again = run_pipeline(cfg, until="sl_cai")
    assert [r.get("skipped") for r in again] == [True, True]


def test_no_section_no_stage_and_typos_are_errors(tmp_path):
    cfg = recipe(tmp_path, red_team=None)
    assert next(s.name for s in plan(cfg)) == "sl_cai"
    with pytest.raises(ValueError, match="unknown key 'exampels'"):
        recipe(tmp_path, red_team={"exampels": 3})
